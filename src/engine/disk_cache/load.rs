//! A block file's bytes (read and checked) into MLX arrays through MLX's own safetensors
//! loading: each tensor becomes a `Load` node that copies its bytes when evaluated. On CUDA
//! that is a host-to-device copy into device memory; an array made from host data instead
//! lives in unified memory, which the host fills page fault by page fault and the GPU then
//! faults in again. On the CPU the bytes land in the array's buffer directly.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use mlx_rs::{Array, Stream};

use crate::dist::mlx_call;
use crate::model::{ModelError, Result};

/// The bytes MLX's reader reads: shared, immutable, freed with the last `Load` that needs them.
struct BytesReader {
    bytes: Arc<Vec<u8>>,
    pos: AtomicUsize,
    label: CString,
}

/// SAFETY (every callback): `desc` is the `BytesReader` boxed in [`arrays_of`], alive until
/// MLX calls `free`; `data` has room for `n` bytes.
unsafe fn reader<'a>(desc: *mut c_void) -> &'a BytesReader {
    &*(desc as *const BytesReader)
}

unsafe extern "C" fn is_open(_: *mut c_void) -> bool {
    true
}

unsafe extern "C" fn tell(desc: *mut c_void) -> usize {
    reader(desc).pos.load(Ordering::Relaxed)
}

unsafe extern "C" fn seek(desc: *mut c_void, off: i64, whence: c_int) -> c_int {
    let r = reader(desc);
    let base = match whence {
        libc::SEEK_SET => 0,
        libc::SEEK_CUR => r.pos.load(Ordering::Relaxed) as i64,
        libc::SEEK_END => r.bytes.len() as i64,
        _ => return -1,
    };
    match base.checked_add(off) {
        Some(p) if (0..=r.bytes.len() as i64).contains(&p) => {
            r.pos.store(p as usize, Ordering::Relaxed);
            0
        }
        _ => -1,
    }
}

/// Copies up to `n` bytes from `off`; how many (MLX errors on a short read).
unsafe fn copy_out(r: &BytesReader, data: *mut c_char, n: usize, off: usize) -> usize {
    let n = n.min(r.bytes.len().saturating_sub(off));
    std::ptr::copy_nonoverlapping(r.bytes.as_ptr().add(off), data as *mut u8, n);
    n
}

unsafe extern "C" fn read(desc: *mut c_void, data: *mut c_char, n: usize) -> usize {
    let r = reader(desc);
    let got = copy_out(r, data, n, r.pos.load(Ordering::Relaxed));
    r.pos.fetch_add(got, Ordering::Relaxed);
    got
}

unsafe extern "C" fn read_at_offset(
    desc: *mut c_void,
    data: *mut c_char,
    n: usize,
    off: usize,
) -> usize {
    copy_out(reader(desc), data, n, off)
}

unsafe extern "C" fn write(_: *mut c_void, _: *const c_char, _: usize) -> usize {
    0
}

unsafe extern "C" fn label_of(desc: *mut c_void) -> *const c_char {
    reader(desc).label.as_ptr()
}

unsafe extern "C" fn free(desc: *mut c_void) {
    drop(Box::from_raw(desc as *mut BytesReader));
}

/// The tensors of a safetensors file held in `bytes`, by name, as lazy arrays on this
/// thread's stream (`label` names the file in MLX's errors).
pub fn arrays_of(bytes: Arc<Vec<u8>>, label: &str) -> Result<HashMap<String, Array>> {
    let fail = |e: String| ModelError::Request(format!("prompt cache: reading {label}: {e}"));
    let desc = Box::into_raw(Box::new(BytesReader {
        bytes,
        pos: AtomicUsize::new(0),
        label: CString::new(label.replace('\0', "")).unwrap_or_default(),
    }));
    let vtable = mlx_sys::mlx_io_vtable {
        is_open: Some(is_open),
        good: Some(is_open),
        tell: Some(tell),
        seek: Some(seek),
        read: Some(read),
        read_at_offset: Some(read_at_offset),
        write: Some(write),
        label: Some(label_of),
        free: Some(free),
    };
    let stream = Stream::thread_local_or_default();
    let mut out = HashMap::new();
    // SAFETY: the reader owns `desc` from here (it calls `free` when MLX lets go of it); the
    // maps and iterator are freed below; keys are copied before the iterator moves on.
    unsafe {
        let reader = mlx_sys::mlx_io_reader_new(desc as *mut c_void, vtable);
        if reader.ctx.is_null() {
            drop(Box::from_raw(desc));
            return Err(fail("no reader".into()));
        }
        let mut arrays = mlx_sys::mlx_map_string_to_array_new();
        let mut meta = mlx_sys::mlx_map_string_to_string_new();
        let status = mlx_call(|| {
            mlx_sys::mlx_load_safetensors_reader(&mut arrays, &mut meta, reader, stream.as_ptr())
        });
        mlx_sys::mlx_io_reader_free(reader);
        if status.is_ok() {
            let it = mlx_sys::mlx_map_string_to_array_iterator_new(arrays);
            loop {
                let mut key: *const c_char = std::ptr::null();
                let mut value = mlx_sys::mlx_array_new();
                if mlx_sys::mlx_map_string_to_array_iterator_next(&mut key, &mut value, it) != 0 {
                    mlx_sys::mlx_array_free(value);
                    break;
                }
                let name = CStr::from_ptr(key).to_string_lossy().into_owned();
                out.insert(name, Array::from_ptr(value));
            }
            mlx_sys::mlx_map_string_to_array_iterator_free(it);
        }
        mlx_sys::mlx_map_string_to_array_free(arrays);
        mlx_sys::mlx_map_string_to_string_free(meta);
        status.map_err(fail)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_come_back_as_written() {
        let k: Vec<f32> = (0..24).map(|i| i as f32 * 0.5).collect();
        let v: Vec<u32> = (0..6).collect();
        let kb: Vec<u8> = k.iter().flat_map(|x| x.to_le_bytes()).collect();
        let vb: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let views = [
            (
                "0.k",
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    vec![1, 2, 3, 4],
                    &kb,
                )
                .unwrap(),
            ),
            (
                "1.s0",
                safetensors::tensor::TensorView::new(safetensors::Dtype::U32, vec![2, 3], &vb)
                    .unwrap(),
            ),
        ];
        let bytes = safetensors::serialize(views, None).unwrap();
        let arrays = arrays_of(Arc::new(bytes.clone()), "test").unwrap();
        assert_eq!(arrays.len(), 2);
        assert_eq!(arrays["0.k"].shape(), &[1, 2, 3, 4]);
        assert_eq!(arrays["0.k"].as_slice::<f32>(), &k[..]);
        assert_eq!(arrays["1.s0"].as_slice::<u32>(), &v[..]);
        // A cut file or garbage: MLX's error, not a crash (the cache reads only files whose
        // checksum holds; this is the last line).
        let cut = Arc::new(bytes[..bytes.len() - 8].to_vec());
        assert!(arrays_of(cut, "cut").is_err());
        assert!(arrays_of(Arc::new(vec![7; 40]), "garbage").is_err());
    }
}
