//! GGUF reader: parses the header, metadata key/values and tensor infos of a GGUF v2/v3 file
//! (little-endian), memory-maps it and hands out each tensor's raw bytes. Every size and
//! offset read from the file is untrusted: reads are bounds-checked and a bad file yields a
//! [`ConvertError`] naming what was being read and where, never a panic.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::quant::GgmlType;
use super::ConvertError;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Sanity caps for counts read from the file (real files are far below these).
const MAX_COUNT: u64 = 1 << 32;
const MAX_DIMS: u32 = 4;

/// One metadata value (GGUF value types 0..=12).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    /// Any integer type (and non-negative) as u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A tensor's description from the header; `offset` is absolute in the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: innermost first (`dims[0]` is the number of columns).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub offset: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Row-major (MLX / HF) shape: the GGUF dims reversed.
    pub fn shape(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// (rows, columns) viewing every outer dimension as rows.
    pub fn rows_cols(&self) -> (u64, u64) {
        let cols = self.dims.first().copied().unwrap_or(1);
        (self.n_elements() / cols.max(1), cols)
    }
}

/// A parsed, memory-mapped GGUF file.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    pub data_offset: u64,
    mmap: Mmap,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, ConvertError> {
        let io = |source| ConvertError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the file is opened read-only; we assume it is not modified while we convert.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        let (version, metadata, tensors, data_offset) = parse(&mmap, path)?;
        Ok(Self {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            data_offset,
            mmap,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A metadata string, or an error naming the missing key.
    pub fn req_str(&self, key: &str) -> Result<&str, ConvertError> {
        self.get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| ConvertError::missing(key, "string"))
    }

    pub fn req_u64(&self, key: &str) -> Result<u64, ConvertError> {
        self.get(key)
            .and_then(Value::as_u64)
            .ok_or_else(|| ConvertError::missing(key, "integer"))
    }

    pub fn opt_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    pub fn opt_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }

    /// Raw bytes of one tensor (bounds were checked at parse time).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        &self.mmap[t.offset as usize..(t.offset + t.n_bytes) as usize]
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// Bounds-checked little-endian cursor over the file bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], ConvertError> {
        let end = (self.pos as u64)
            .checked_add(n)
            .filter(|&e| e <= self.buf.len() as u64);
        let Some(end) = end else {
            return Err(ConvertError::Truncated {
                path: self.path.to_path_buf(),
                what: what.to_string(),
                offset: self.pos as u64,
                needed: n,
                file_len: self.buf.len() as u64,
            });
        };
        let s = &self.buf[self.pos..end as usize];
        self.pos = end as usize;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self, what: &str) -> Result<[u8; N], ConvertError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N as u64, what)?);
        Ok(a)
    }
    fn u32(&mut self, what: &str) -> Result<u32, ConvertError> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, ConvertError> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }
    fn string(&mut self, what: &str) -> Result<String, ConvertError> {
        let len = self.u64(what)?;
        let at = self.pos as u64;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.malformed(format!("{what}: invalid UTF-8 at offset {at}")))
    }
    fn malformed(&self, msg: String) -> ConvertError {
        ConvertError::Malformed {
            path: self.path.to_path_buf(),
            msg,
        }
    }
    fn count(&mut self, what: &str) -> Result<u64, ConvertError> {
        let at = self.pos;
        let n = self.u64(what)?;
        // Every entry takes at least one byte, so a count beyond the remaining bytes is bogus.
        if n > MAX_COUNT || n > (self.buf.len() - self.pos) as u64 {
            return Err(self.malformed(format!("{what}: implausible count {n} at offset {at}")));
        }
        Ok(n)
    }

    fn value(&mut self, ty: u32, what: &str, depth: u32) -> Result<Value, ConvertError> {
        Ok(match ty {
            0 => Value::U8(self.arr::<1>(what)?[0]),
            1 => Value::I8(self.arr::<1>(what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.arr(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.arr(what)?)),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(i32::from_le_bytes(self.arr(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.arr(what)?)),
            7 => Value::Bool(self.arr::<1>(what)?[0] != 0),
            8 => Value::Str(self.string(what)?),
            9 if depth < 4 => {
                let item_ty = self.u32(what)?;
                let n = self.count(what)?;
                let mut items = Vec::with_capacity(n.min(1 << 20) as usize);
                for _ in 0..n {
                    items.push(self.value(item_ty, what, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(i64::from_le_bytes(self.arr(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.arr(what)?)),
            _ => return Err(self.malformed(format!("{what}: unknown value type {ty}"))),
        })
    }
}

type Parsed = (u32, BTreeMap<String, Value>, Vec<TensorInfo>, u64);

/// Parses everything up to the tensor data and checks each tensor lies inside the file.
pub fn parse(buf: &[u8], path: &Path) -> Result<Parsed, ConvertError> {
    let mut c = Cursor { buf, pos: 0, path };
    if &c.arr::<4>("magic")? != MAGIC {
        return Err(c.malformed("not a GGUF file (bad magic)".into()));
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(c.malformed(format!(
            "unsupported GGUF version {version} (expected 2 or 3)"
        )));
    }
    let n_tensors = c.count("tensor count")?;
    let n_kv = c.count("metadata count")?;
    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = c.string(&format!("metadata key #{i}"))?;
        let what = format!("metadata value '{key}'");
        let ty = c.u32(&what)?;
        let value = c.value(ty, &what, 0)?;
        metadata.insert(key, value);
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
            _ => return Err(c.malformed(format!("bad general.alignment {v:?}"))),
        },
    };
    let mut raw = Vec::with_capacity(n_tensors.min(1 << 16) as usize);
    for i in 0..n_tensors {
        let name = c.string(&format!("tensor #{i} name"))?;
        let what = format!("tensor '{name}' info");
        let n_dims = c.u32(&what)?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(c.malformed(format!("{what}: {n_dims} dimensions")));
        }
        let dims = (0..n_dims)
            .map(|_| c.u64(&what))
            .collect::<Result<Vec<_>, _>>()?;
        let ty_id = c.u32(&what)?;
        let offset = c.u64(&what)?;
        raw.push((name, dims, ty_id, offset));
    }
    let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
    let mut tensors = Vec::with_capacity(raw.len());
    let mut seen = std::collections::HashSet::new();
    for (name, dims, ty_id, rel) in raw {
        if !seen.insert(name.clone()) {
            return Err(c.malformed(format!("tensor '{name}' appears twice")));
        }
        let ty = GgmlType::from_id(ty_id).ok_or_else(|| ConvertError::UnsupportedType {
            tensor: name.clone(),
            type_id: ty_id,
        })?;
        let n_bytes = ty.bytes_for(&dims).ok_or_else(|| {
            c.malformed(format!(
                "tensor '{name}': dims {dims:?} do not fit {ty:?} blocks"
            ))
        })?;
        let offset = data_offset.checked_add(rel).filter(|o| o % alignment == 0);
        let Some(offset) = offset else {
            return Err(c.malformed(format!("tensor '{name}': bad data offset {rel}")));
        };
        if offset
            .checked_add(n_bytes)
            .is_none_or(|end| end > buf.len() as u64)
        {
            return Err(ConvertError::Truncated {
                path: path.to_path_buf(),
                what: format!("data of tensor '{name}'"),
                offset,
                needed: n_bytes,
                file_len: buf.len() as u64,
            });
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ty,
            offset,
            n_bytes,
        });
    }
    Ok((version, metadata, tensors, data_offset))
}

#[cfg(test)]
mod tests;
