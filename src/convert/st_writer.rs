//! Streaming safetensors writer: the header (names, dtypes, shapes, offsets) is written from
//! the tensor plans up front, then each tensor's bytes are appended as they are converted, so
//! a model is never held in memory whole. Format: u64 LE header length, JSON header padded
//! with spaces to 8 bytes, then the data in header order.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::tensors::Part;
use super::ConvertError;

pub struct StWriter {
    out: BufWriter<File>,
    path: PathBuf,
    expected: Vec<(String, u64)>,
    next: usize,
}

impl StWriter {
    /// Creates `path` and writes the header for `parts` (data will follow in this order).
    pub fn create(path: &Path, parts: &[&Part]) -> Result<Self, ConvertError> {
        let io = |source| ConvertError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut header = Map::new();
        header.insert("__metadata__".into(), json!({"format": "mlx"}));
        let mut offset = 0u64;
        for p in parts {
            let end = offset + p.n_bytes;
            header.insert(
                p.name.clone(),
                json!({"dtype": p.dtype, "shape": p.shape, "data_offsets": [offset, end]}),
            );
            offset = end;
        }
        let mut text = Value::Object(header).to_string().into_bytes();
        text.resize(text.len().div_ceil(8) * 8, b' ');
        let mut out = BufWriter::with_capacity(1 << 20, File::create(path).map_err(io)?);
        out.write_all(&(text.len() as u64).to_le_bytes())
            .map_err(io)?;
        out.write_all(&text).map_err(io)?;
        let expected = parts.iter().map(|p| (p.name.clone(), p.n_bytes)).collect();
        Ok(Self {
            out,
            path: path.to_path_buf(),
            expected,
            next: 0,
        })
    }

    /// Appends the next tensor's bytes; its size must match the header.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), ConvertError> {
        let Some((name, n)) = self.expected.get(self.next) else {
            return Err(ConvertError::Internal(
                "more tensors written than planned".into(),
            ));
        };
        if *n != bytes.len() as u64 {
            return Err(ConvertError::Internal(format!(
                "{name}: {} bytes, header says {n}",
                bytes.len()
            )));
        }
        self.out
            .write_all(bytes)
            .map_err(|source| ConvertError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.next += 1;
        Ok(())
    }

    pub fn finish(mut self) -> Result<(), ConvertError> {
        if self.next != self.expected.len() {
            return Err(ConvertError::Internal(format!(
                "{} of {} tensors written",
                self.next,
                self.expected.len()
            )));
        }
        let io = |source| ConvertError::Io {
            path: self.path.clone(),
            source,
        };
        self.out.flush().map_err(io)?;
        self.out.get_ref().sync_all().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_crate_reads_our_file() {
        let dir = std::env::temp_dir().join(format!("kooka-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.safetensors");
        let a = Part {
            name: "b.x".into(),
            dtype: "F16",
            shape: vec![3],
            n_bytes: 6,
        };
        let b = Part {
            name: "a.w".into(),
            dtype: "U32",
            shape: vec![2, 1],
            n_bytes: 8,
        };
        let mut w = StWriter::create(&path, &[&a, &b]).unwrap();
        w.write(&[1, 0, 2, 0, 3, 0]).unwrap();
        assert!(w.write(&[0; 3]).is_err());
        w.write(&[7, 0, 0, 0, 9, 0, 0, 0]).unwrap();
        w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor("a.w").unwrap();
        assert_eq!(
            (t.shape(), t.data()),
            (&[2usize, 1][..], &[7u8, 0, 0, 0, 9, 0, 0, 0][..])
        );
        assert_eq!(st.tensor("b.x").unwrap().dtype(), safetensors::Dtype::F16);
        std::fs::remove_dir_all(&dir).ok();
    }
}
