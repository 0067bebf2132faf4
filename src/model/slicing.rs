//! Slicing along one axis as a single MLX op. mlx-rs's indexing (`try_index`,
//! `try_index_mut`) also squeezes and reshapes the update or the result, which adds nodes to
//! every decode step's graph (four per layer for the KV cache alone); these call mlx-c's
//! `slice` / `slice_update` directly.

use mlx_rs::{Array, Stream};

use super::error::{ModelError, Result};

/// Start/stop/stride vectors selecting `start..stop` of `axis`, everything of the others.
fn bounds(shape: &[i32], axis: usize, start: i32, stop: i32) -> (Vec<i32>, Vec<i32>, Vec<i32>) {
    let mut starts = vec![0; shape.len()];
    let mut stops = shape.to_vec();
    starts[axis] = start;
    stops[axis] = stop;
    (starts, stops, vec![1; shape.len()])
}

/// Runs one mlx-c op writing its result through the pointer it is given.
fn run_op(
    what: &str,
    op: impl FnOnce(&mut mlx_sys::mlx_array, mlx_sys::mlx_stream) -> i32,
) -> Result<Array> {
    let stream = Stream::thread_local_or_default();
    // SAFETY: `res` starts empty and the op sets it on success; `Array` takes ownership.
    unsafe {
        let mut res = mlx_sys::mlx_array_new();
        let status = op(&mut res, stream.as_ptr());
        let out = Array::from_ptr(res);
        match status {
            0 => Ok(out),
            _ => Err(ModelError::Mlx(format!("{what} failed"))),
        }
    }
}

/// `a[.., start..stop, ..]` on `axis` (a view where MLX can make one).
pub fn slice_axis(a: &Array, axis: usize, start: i32, stop: i32) -> Result<Array> {
    let (starts, stops, strides) = bounds(a.shape(), axis, start, stop);
    // SAFETY: plain mlx-c call on live arrays; the vectors outlive it.
    run_op("slice", |res, stream| unsafe {
        mlx_sys::mlx_slice(
            res,
            a.as_ptr(),
            starts.as_ptr(),
            starts.len(),
            stops.as_ptr(),
            stops.len(),
            strides.as_ptr(),
            strides.len(),
            stream,
        )
    })
}

/// `dst[.., start..stop, ..] = update` on `axis`, as a new array (MLX updates in place when
/// `dst` has no other reader).
pub fn slice_update_axis(
    dst: &Array,
    update: &Array,
    axis: usize,
    start: i32,
    stop: i32,
) -> Result<Array> {
    let (starts, stops, strides) = bounds(dst.shape(), axis, start, stop);
    // SAFETY: as above.
    run_op("slice_update", |res, stream| unsafe {
        mlx_sys::mlx_slice_update(
            res,
            dst.as_ptr(),
            update.as_ptr(),
            starts.as_ptr(),
            starts.len(),
            stops.as_ptr(),
            stops.len(),
            strides.as_ptr(),
            strides.len(),
            stream,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlx_rs::ops::indexing::{TryIndexMutOp, TryIndexOp};

    fn host(a: &Array) -> (Vec<i32>, Vec<f32>) {
        let a = a.add(Array::from_f32(0.0)).unwrap(); // a contiguous copy of a view
        a.eval().unwrap();
        (a.shape().to_vec(), a.as_slice::<f32>().to_vec())
    }

    #[test]
    fn matches_mlx_rs_indexing() {
        let a = Array::from_iter((0..2 * 3 * 5 * 4).map(|x| x as f32), &[2, 3, 5, 4]);
        let expected = a.try_index((.., .., 1..4, ..)).unwrap();
        assert_eq!(host(&slice_axis(&a, 2, 1, 4).unwrap()), host(&expected));

        let update = Array::from_iter((0..2 * 3 * 2 * 4).map(|x| -(x as f32)), &[2, 3, 2, 4]);
        let mut expected = a.clone();
        expected.try_index_mut((.., .., 2..4, ..), &update).unwrap();
        let got = slice_update_axis(&a, &update, 2, 2, 4).unwrap();
        assert_eq!(host(&got), host(&expected));
        // the source is left as it was
        assert_eq!(host(&a).1[0..4], [0.0, 1.0, 2.0, 3.0]);
    }
}
