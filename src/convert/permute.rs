//! Undoing llama.cpp's row permutation of `attn_q` / `attn_k` for the `llama` architecture.
//!
//! llama.cpp's converter turned HF's "rotate half" RoPE layout into interleaved pairs with
//! `w.reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2).reshape(rows, cols)`, i.e. inside
//! each head, HF row `i*half + j` (i in 0..2, j in 0..half) went to GGUF row `2*j + i`.
//! Only whole rows move, so this works on any row-major buffer: float data, quantized words,
//! scales and biases alike (`row_len` elements per row).

/// GGUF row index holding HF row `r`, for `rows` rows split into `n_head` heads.
fn gguf_row(r: usize, rows: usize, n_head: usize) -> usize {
    let head_dim = rows / n_head;
    let half = head_dim / 2;
    let (h, within) = (r / head_dim, r % head_dim);
    let (i, j) = (within / half, within % half);
    h * head_dim + 2 * j + i
}

/// Checks that `rows` splits into `n_head` heads of even size.
pub fn check(rows: usize, n_head: usize) -> Result<(), String> {
    let head_dim = rows.checked_div(n_head).unwrap_or(0);
    if head_dim == 0 || head_dim * n_head != rows || head_dim & 1 == 1 {
        return Err(format!(
            "{rows} rows do not split into {n_head} heads of even size"
        ));
    }
    Ok(())
}

/// Returns the HF-ordered rows of a GGUF-ordered buffer (caller ran [`check`]).
pub fn unpermute_rows<T: Copy>(data: &[T], rows: usize, n_head: usize) -> Vec<T> {
    let row_len = data.len() / rows.max(1);
    let mut out = Vec::with_capacity(data.len());
    for r in 0..rows {
        let src = gguf_row(r, rows, n_head) * row_len;
        out.extend_from_slice(&data[src..src + row_len]);
    }
    out
}

/// llama.cpp's forward permutation (HF order -> GGUF order); used by tests.
pub fn permute_rows<T: Copy>(data: &[T], rows: usize, n_head: usize) -> Vec<T> {
    let row_len = data.len() / rows.max(1);
    let mut out = data.to_vec();
    for r in 0..rows {
        let dst = gguf_row(r, rows, n_head) * row_len;
        out[dst..dst + row_len].copy_from_slice(&data[r * row_len..(r + 1) * row_len]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_small_example() {
        // 2 heads of 4 rows, one column: HF rows [a0 a1 b0 b1 | c0 c1 d0 d1] interleave into
        // GGUF [a0 b0 a1 b1 | c0 d0 c1 d1].
        let hf = [0, 1, 2, 3, 10, 11, 12, 13];
        let gguf = permute_rows(&hf, 8, 2);
        assert_eq!(gguf, vec![0, 2, 1, 3, 10, 12, 11, 13]);
        assert_eq!(unpermute_rows(&gguf, 8, 2), hf.to_vec());
    }

    #[test]
    fn matches_reshape_swapaxes_definition() {
        // Direct transcription of reshape(n_head, 2, half, cols).swapaxes(1, 2) on row ids.
        let (n_head, rows) = (3usize, 24usize);
        let half = rows / n_head / 2;
        let hf: Vec<usize> = (0..rows).collect();
        let mut expected = Vec::new();
        for h in 0..n_head {
            for j in 0..half {
                for i in 0..2 {
                    expected.push(hf[h * 2 * half + i * half + j]);
                }
            }
        }
        assert_eq!(permute_rows(&hf, rows, n_head), expected);
    }

    #[test]
    fn unpermute_inverts_permute_with_wide_rows() {
        for (rows, n_head) in [(576usize, 9usize), (192, 3), (64, 1)] {
            assert!(check(rows, n_head).is_ok());
            let data: Vec<u32> = (0..(rows * 5) as u32).collect();
            let p = permute_rows(&data, rows, n_head);
            assert_ne!(p, data);
            assert_eq!(unpermute_rows(&p, rows, n_head), data);
        }
        assert!(check(10, 3).is_err() && check(6, 2).is_err());
    }
}
