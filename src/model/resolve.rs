//! `--model` accepts a folder or a Hugging Face repo id (`org/name`) already in the local
//! Hugging Face cache. Serving never downloads (only `kooka models pull` does, see
//! [`super::pull`]): this only reads the cache.
//!
//! Cache layout (what `huggingface_hub` writes): `<cache>/models--ORG--NAME/refs/main` holds a
//! revision hash, and `<cache>/models--ORG--NAME/snapshots/<hash>/` the files. `<cache>` is
//! `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`. (Three rules; the
//! hf-hub crate's default features bring an HTTP client we do not want for this.)

use std::path::{Path, PathBuf};

use super::{ModelError, Result};

/// The Hugging Face hub cache folder from the environment.
pub fn hf_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(home) = std::env::var_os("HF_HOME") {
        return PathBuf::from(home).join("hub");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache/huggingface/hub")
}

/// A model folder for `spec`: the path itself if it is a folder, else the cached snapshot of
/// the repo id `spec` in `cache`.
pub fn resolve_model(spec: &Path, cache: &Path) -> Result<PathBuf> {
    if spec.is_dir() {
        return Ok(spec.to_path_buf());
    }
    let text = spec.to_string_lossy();
    let not_found = |why: &str| {
        ModelError::ModelNotFound(format!(
            "model {text:?} not found: it is not a folder{why} (serving does not download \
             models; fetch it with `kooka models pull ORG/NAME` or pass a model folder)"
        ))
    };
    let Some((org, name)) = text
        .split_once('/')
        .filter(|(o, n)| !o.is_empty() && !n.is_empty() && !n.contains('/'))
    else {
        return Err(not_found(""));
    };
    let repo = cache.join(format!("models--{org}--{name}"));
    let snapshots = repo.join("snapshots");
    let revision = std::fs::read_to_string(repo.join("refs/main"))
        .ok()
        .map(|r| r.trim().to_string());
    let snapshot = match revision {
        Some(rev) if snapshots.join(&rev).is_dir() => Some(snapshots.join(rev)),
        _ => newest_dir(&snapshots),
    };
    snapshot.ok_or_else(|| {
        not_found(&format!(
            ", and not in the Hugging Face cache at {}",
            cache.display()
        ))
    })
}

/// The id a server of folder `dir` lists at `/v1/models`: `ORG/NAME` for a snapshot of the
/// Hugging Face cache (`.../models--ORG--NAME/snapshots/<hash>`), the folder's name otherwise.
/// `kooka models` shows the same id.
pub fn served_id(dir: &Path) -> String {
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    let repo = dir
        .parent()
        .filter(|p| name(p).as_deref() == Some("snapshots"))
        .and_then(Path::parent)
        .and_then(name)
        .and_then(|n| n.strip_prefix("models--").map(|r| r.replacen("--", "/", 1)));
    repo.or_else(|| name(dir))
        .unwrap_or_else(|| dir.display().to_string())
}

fn newest_dir(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kooka-resolve-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_folder_is_used_as_is() {
        let dir = scratch("folder");
        assert_eq!(resolve_model(&dir, Path::new("/nonexistent")).unwrap(), dir);
    }

    #[test]
    fn a_repo_id_resolves_through_refs_main() {
        let cache = scratch("cache");
        let repo = cache.join("models--org--tiny");
        std::fs::create_dir_all(repo.join("snapshots/abc123")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots/old999")).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123\n").unwrap();
        let got = resolve_model(Path::new("org/tiny"), &cache).unwrap();
        assert_eq!(got, repo.join("snapshots/abc123"));
    }

    #[test]
    fn served_ids_name_cached_repos_by_repo_id() {
        let snapshot = Path::new("/c/hub/models--mlx-community--Qwen3-4B-4bit/snapshots/abc");
        assert_eq!(served_id(snapshot), "mlx-community/Qwen3-4B-4bit");
        assert_eq!(
            served_id(Path::new("models/SmolLM2-135M-Instruct")),
            "SmolLM2-135M-Instruct"
        );
        assert_eq!(served_id(Path::new("/x/snapshots/abc")), "abc");
    }

    #[test]
    fn a_missing_model_says_where_it_looked() {
        let cache = scratch("empty");
        let err = resolve_model(Path::new("org/absent"), &cache)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not in the Hugging Face cache") && err.contains("kooka models pull"),
            "{err}"
        );
        let err = resolve_model(Path::new("no/such/path"), &cache)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a folder"), "{err}");
    }
}
