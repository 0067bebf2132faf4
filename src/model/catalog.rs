//! What `kooka models` lists: model folders (given, or `./models/*`) and the repos of the
//! local Hugging Face cache, each with the id `kooka serve --model X` would list it under at
//! `/v1/models` ([`served_id`]), its size on disk, architecture, quantization and context
//! length, read from `config.json`. Folders that cannot be read or are not models are listed
//! with the reason; nothing here panics on what it finds on disk.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::resolve::{resolve_model, served_id};
use super::SUPPORTED_MODEL_TYPES;

/// One listed model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelEntry {
    /// The id `/v1/models` lists when this model is served.
    pub id: String,
    /// What to pass as `kooka serve --model` (a folder, or `ORG/NAME` for a cached repo).
    pub spec: String,
    /// The folder the files are read from (a cached repo's snapshot).
    pub path: PathBuf,
    pub size_bytes: u64,
    /// `model_type` (and the first of `architectures` when it differs).
    pub architecture: Option<String>,
    /// e.g. `4-bit, group 64`, or the float dtype.
    pub quantization: Option<String>,
    pub context_length: Option<u64>,
    /// Why this folder cannot be served (no config.json, an unsupported architecture, ...).
    pub problem: Option<String>,
}

/// Every model under `folders` (each a model folder, a folder of model folders, or a repo id
/// in `cache`), then every model repo in `cache`, in that order.
pub fn list(folders: &[PathBuf], cache: &Path) -> Vec<ModelEntry> {
    let mut out = Vec::new();
    for folder in folders {
        if folder.join("config.json").exists() || !folder.is_dir() {
            out.push(describe_spec(folder, cache));
            continue;
        }
        let children = match sorted_children(folder) {
            Ok(c) => c,
            Err(e) => {
                out.push(unreadable(folder, &e));
                continue;
            }
        };
        out.extend(
            children
                .iter()
                .filter(|c| c.is_dir())
                .map(|c| describe(c, c.display().to_string())),
        );
    }
    out.extend(cached(cache));
    out
}

/// The model repos (`models--ORG--NAME`) of the Hugging Face cache at `cache`.
pub fn cached(cache: &Path) -> Vec<ModelEntry> {
    let Ok(children) = sorted_children(cache) else {
        return Vec::new();
    };
    children
        .iter()
        .filter_map(|repo| {
            let name = repo.file_name()?.to_string_lossy().into_owned();
            let id = name.strip_prefix("models--")?.replacen("--", "/", 1);
            Some(describe_spec(Path::new(&id), cache))
        })
        .collect()
}

fn describe_spec(spec: &Path, cache: &Path) -> ModelEntry {
    match resolve_model(spec, cache) {
        Ok(dir) => describe(&dir, spec.display().to_string()),
        // Not found: listed under what was asked for (a cached repo's `ORG/NAME`).
        Err(e) => ModelEntry {
            id: spec.display().to_string(),
            problem: Some(e.to_string()),
            ..empty(spec, &spec.display().to_string())
        },
    }
}

fn unreadable(path: &Path, e: &std::io::Error) -> ModelEntry {
    ModelEntry {
        problem: Some(format!("cannot read {}: {e}", path.display())),
        ..empty(path, &path.display().to_string())
    }
}

fn empty(path: &Path, spec: &str) -> ModelEntry {
    ModelEntry {
        id: served_id(path),
        spec: spec.to_string(),
        path: path.to_path_buf(),
        size_bytes: 0,
        architecture: None,
        quantization: None,
        context_length: None,
        problem: None,
    }
}

/// The entry of model folder `dir`, served as `--model spec`.
pub fn describe(dir: &Path, spec: String) -> ModelEntry {
    let mut entry = empty(dir, &spec);
    entry.size_bytes = disk_size(dir, 4);
    let config_path = dir.join("config.json");
    let config = std::fs::read_to_string(&config_path)
        .map_err(|e| format!("cannot read {}: {e}", config_path.display()))
        .and_then(|t| {
            serde_json::from_str::<Value>(&t)
                .map_err(|e| format!("{} is not JSON: {e}", config_path.display()))
        });
    let config = match config {
        Ok(c) if c.is_object() => c,
        Ok(_) => {
            entry.problem = Some(format!("{} is not an object", config_path.display()));
            return entry;
        }
        Err(problem) => {
            entry.problem = Some(problem);
            return entry;
        }
    };
    let model_type = config["model_type"].as_str();
    let arch = config["architectures"][0].as_str();
    entry.architecture = match (model_type, arch) {
        (Some(t), Some(a)) => Some(format!("{t} ({a})")),
        (t, a) => t.or(a).map(str::to_string),
    };
    entry.quantization = quantization(&config);
    entry.context_length = context_length(&config);
    entry.problem = match model_type {
        None => Some("config.json has no model_type".into()),
        Some(t) if !SUPPORTED_MODEL_TYPES.contains(&t) => {
            Some(format!("model_type {t:?} is not supported"))
        }
        Some(_) => None,
    };
    entry
}

/// MLX's `quantization` (or transformers' `quantization_config`): bits and group size; else
/// the checkpoint's float dtype.
fn quantization(config: &Value) -> Option<String> {
    let q = config
        .get("quantization")
        .or_else(|| config.get("quantization_config"))
        .filter(|q| q.is_object());
    if let Some(q) = q {
        let bits = q["bits"].as_u64();
        let group = q["group_size"].as_u64();
        let mode = q["mode"].as_str().or(q["quant_method"].as_str());
        let mut parts = Vec::new();
        if let Some(mode) = mode {
            parts.push(mode.to_string());
        }
        if let Some(bits) = bits {
            parts.push(format!("{bits}-bit"));
        }
        if let Some(group) = group {
            parts.push(format!("group {group}"));
        }
        if !parts.is_empty() {
            return Some(parts.join(", "));
        }
    }
    let dtype = config
        .get("torch_dtype")
        .or_else(|| config.get("dtype"))
        .or_else(|| config.get("text_config").and_then(|t| t.get("torch_dtype")))?
        .as_str()?;
    Some(
        match dtype {
            "bfloat16" => "bf16",
            "float16" => "f16",
            "float32" => "f32",
            other => other,
        }
        .to_string(),
    )
}

/// The longest context the config declares (`max_position_embeddings` and its other names,
/// also under `text_config`).
fn context_length(config: &Value) -> Option<u64> {
    const KEYS: [&str; 5] = [
        "max_position_embeddings",
        "max_sequence_length",
        "seq_length",
        "n_positions",
        "max_seq_len",
    ];
    [Some(config), config.get("text_config")]
        .into_iter()
        .flatten()
        .find_map(|c| KEYS.iter().find_map(|k| c.get(*k).and_then(Value::as_u64)))
}

fn sorted_children(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    out.sort();
    Ok(out)
}

/// Bytes of the files under `dir` (symlinks followed, as a cache snapshot's point at its
/// blobs), `depth` folders deep at most; what cannot be read counts 0.
fn disk_size(dir: &Path, depth: usize) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match std::fs::metadata(e.path()) {
            Ok(m) if m.is_file() => m.len(),
            Ok(m) if m.is_dir() && depth > 0 => disk_size(&e.path(), depth - 1),
            _ => 0,
        })
        .sum()
}

/// `1.23 GB`-style sizes (decimal, as Hugging Face shows them).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ => format!("{value:.2} {}", UNITS[unit]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kooka-catalog-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn reads_mlx_and_transformers_configs() {
        let mlx = json!({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"],
            "quantization": {"bits": 4, "group_size": 64}, "max_position_embeddings": 40960});
        assert_eq!(quantization(&mlx).as_deref(), Some("4-bit, group 64"));
        assert_eq!(context_length(&mlx), Some(40960));
        let hf = json!({"torch_dtype": "bfloat16", "text_config": {"max_position_embeddings": 8}});
        assert_eq!(quantization(&hf).as_deref(), Some("bf16"));
        assert_eq!(context_length(&hf), Some(8));
        assert_eq!(quantization(&json!({})), None);
    }

    #[test]
    fn odd_folders_are_listed_with_a_reason() {
        let root = scratch("odd");
        std::fs::create_dir_all(root.join("empty")).unwrap();
        std::fs::create_dir_all(root.join("broken")).unwrap();
        std::fs::write(root.join("broken/config.json"), "{not json").unwrap();
        std::fs::create_dir_all(root.join("alien")).unwrap();
        std::fs::write(root.join("alien/config.json"), r#"{"model_type": "bert"}"#).unwrap();
        std::fs::write(root.join("alien/model.safetensors"), [0u8; 1234]).unwrap();
        std::fs::write(root.join("stray-file"), "x").unwrap();
        let got = list(std::slice::from_ref(&root), &root.join("no-cache"));
        let by_id = |id: &str| got.iter().find(|e| e.id == id).unwrap();
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(by_id("empty")
            .problem
            .as_deref()
            .unwrap()
            .contains("cannot read"));
        assert!(by_id("broken")
            .problem
            .as_deref()
            .unwrap()
            .contains("not JSON"));
        let alien = by_id("alien");
        assert!(alien.problem.as_deref().unwrap().contains("\"bert\""));
        assert_eq!(alien.size_bytes, 1234 + 22);
        let missing = list(&[root.join("absent")], &root);
        assert!(missing[0].problem.is_some(), "{missing:?}");
    }

    #[test]
    fn sizes_read_as_on_the_hub() {
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(269_060_000), "269.06 MB");
    }
}
