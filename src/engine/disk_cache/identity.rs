//! Which model a cache folder belongs to: keys and values are only valid for the weights,
//! dtype, backend and split that computed them.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use xxhash_rust::xxh3::Xxh3;

/// Bytes read from each end of a weight file.
const SAMPLE: u64 = 1 << 20;

/// A hex fingerprint of the model folder `dir` (its `config.json`, and every weight file's
/// name, size, first and last MiB: the safetensors header with every tensor's dtype, shape
/// and offsets, and data at both ends) and of `setting`s (compute dtype, backend, shard).
/// Reads ~2 MiB per weight file, not the weights.
pub fn fingerprint(dir: &Path, settings: &[&str]) -> std::io::Result<String> {
    let mut h = Xxh3::new();
    h.update(super::block::FORMAT.as_bytes());
    h.update(&std::fs::read(dir.join("config.json"))?);
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "safetensors" || x == "gguf")
        })
        .collect();
    files.sort();
    for path in files {
        let mut f = std::fs::File::open(&path)?;
        let size = f.metadata()?.len();
        h.update(path.file_name().unwrap_or_default().as_encoded_bytes());
        h.update(&size.to_le_bytes());
        let mut buf = vec![0u8; SAMPLE.min(size) as usize];
        f.read_exact(&mut buf)?;
        h.update(&buf);
        if size > SAMPLE {
            f.seek(SeekFrom::Start(size - SAMPLE.min(size - SAMPLE)))?;
            let mut tail = vec![0u8; SAMPLE.min(size - SAMPLE) as usize];
            f.read_exact(&mut tail)?;
            h.update(&tail);
        }
    }
    for s in settings {
        h.update(s.as_bytes());
        h.update(&[0]);
    }
    Ok(format!("{:032x}", h.digest128()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_and_settings_change_the_fingerprint() {
        let dir = std::env::temp_dir().join(format!("kooka-identity-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), b"{}").unwrap();
        std::fs::write(dir.join("model.safetensors"), b"weights").unwrap();
        let a = fingerprint(&dir, &["f32", "cpu"]).unwrap();
        assert_eq!(a, fingerprint(&dir, &["f32", "cpu"]).unwrap());
        assert_ne!(a, fingerprint(&dir, &["bf16", "cpu"]).unwrap());
        std::fs::write(dir.join("model.safetensors"), b"weightz").unwrap();
        assert_ne!(a, fingerprint(&dir, &["f32", "cpu"]).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
