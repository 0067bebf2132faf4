//! Tests for the GGUF reader: a small GGUF written here, and truncation at every offset.

use super::*;

/// Minimal GGUF v3 writer for tests: metadata as (key, type id, encoded value bytes).
pub(crate) fn write_gguf(
    kv: &[(&str, u32, Vec<u8>)],
    tensors: &[(&str, &[u64], u32, Vec<u8>)],
    alignment: usize,
) -> Vec<u8> {
    let s = |x: &str| {
        [
            (x.len() as u64).to_le_bytes().to_vec(),
            x.as_bytes().to_vec(),
        ]
        .concat()
    };
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((kv.len() as u64).to_le_bytes());
    for (k, ty, v) in kv {
        b.extend(s(k));
        b.extend(ty.to_le_bytes());
        b.extend(v);
    }
    let mut offset = 0usize;
    let mut offsets = Vec::new();
    for (name, dims, ty, data) in tensors {
        b.extend(s(name));
        b.extend((dims.len() as u32).to_le_bytes());
        dims.iter().for_each(|d| b.extend(d.to_le_bytes()));
        b.extend(ty.to_le_bytes());
        b.extend((offset as u64).to_le_bytes());
        offsets.push(offset);
        offset = (offset + data.len()).div_ceil(alignment) * alignment;
    }
    let start = b.len().div_ceil(alignment) * alignment;
    b.resize(start, 0);
    for ((_, _, _, data), off) in tensors.iter().zip(offsets) {
        b.resize(start + off, 0);
        b.extend(data);
    }
    b
}

fn str_val(x: &str) -> Vec<u8> {
    [
        (x.len() as u64).to_le_bytes().to_vec(),
        x.as_bytes().to_vec(),
    ]
    .concat()
}

fn sample() -> Vec<u8> {
    let mut arr = 8u32.to_le_bytes().to_vec(); // array of strings
    arr.extend(2u64.to_le_bytes());
    arr.extend(str_val("a"));
    arr.extend(str_val("bc"));
    let kv = vec![
        ("general.architecture", 8, str_val("llama")),
        ("general.alignment", 4, 64u32.to_le_bytes().to_vec()),
        ("x.f32", 6, 1.5f32.to_le_bytes().to_vec()),
        ("x.bool", 7, vec![1]),
        ("x.i64", 11, (-3i64).to_le_bytes().to_vec()),
        ("x.f64", 12, 2.25f64.to_le_bytes().to_vec()),
        ("x.arr", 9, arr),
    ];
    let f32s: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let q41 = vec![7u8; 20 * 2];
    write_gguf(
        &kv,
        &[
            ("a.weight", &[3, 2], 0, f32s),
            ("b.weight", &[32, 2], 3, q41),
        ],
        64,
    )
}

#[test]
fn reads_small_gguf() {
    let buf = sample();
    let (version, md, tensors, data_offset) = parse(&buf, Path::new("mem")).expect("parses");
    assert_eq!(version, 3);
    assert_eq!(md["general.architecture"].as_str(), Some("llama"));
    assert_eq!(md["x.f32"], Value::F32(1.5));
    assert_eq!(md["x.bool"].as_bool(), Some(true));
    assert_eq!(md["x.i64"], Value::I64(-3));
    assert_eq!(md["x.f64"].as_f64(), Some(2.25));
    assert_eq!(
        md["x.arr"],
        Value::Array(vec![Value::Str("a".into()), Value::Str("bc".into())])
    );
    assert_eq!(data_offset % 64, 0);
    assert_eq!(tensors.len(), 2);
    assert_eq!(
        (tensors[0].shape(), tensors[0].n_bytes, tensors[0].offset),
        (vec![2, 3], 24, data_offset)
    );
    assert_eq!(
        (tensors[1].ty, tensors[1].rows_cols(), tensors[1].offset),
        (GgmlType::Q4_1, (2, 32), data_offset + 64)
    );
    let t0 = &buf[tensors[0].offset as usize..][..24];
    assert_eq!(&t0[4..8], &2.0f32.to_le_bytes());
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let buf = sample();
    for cut in 0..buf.len() {
        let r = std::panic::catch_unwind(|| parse(&buf[..cut], Path::new("cut.gguf")).map(|_| ()));
        let err = r
            .unwrap_or_else(|_| panic!("panicked at cut {cut}"))
            .expect_err(&format!("cut {cut} parsed"));
        let msg = err.to_string();
        assert!(
            msg.contains("cut.gguf") && (msg.contains("truncated") || msg.contains("malformed")),
            "cut {cut}: {msg}"
        );
    }
}

#[test]
fn garbage_and_bad_fields_are_errors() {
    let p = Path::new("x");
    assert!(parse(b"GGML\x03\0\0\0", p)
        .unwrap_err()
        .to_string()
        .contains("magic"));
    let mut v1 = sample();
    v1[4] = 1;
    assert!(parse(&v1, p).unwrap_err().to_string().contains("version 1"));
    // Huge string length in the first key.
    let mut huge = sample();
    huge[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(parse(&huge, p).is_err());
    // Unknown tensor type id.
    let bad = write_gguf(&[], &[("t.weight", &[32], 16, vec![0; 64])], 32);
    assert!(matches!(
        parse(&bad, p),
        Err(ConvertError::UnsupportedType { type_id: 16, .. })
    ));
    // The same tensor name twice.
    let dup = write_gguf(
        &[],
        &[
            ("t.weight", &[1], 0, vec![0; 4]),
            ("t.weight", &[1], 0, vec![0; 4]),
        ],
        32,
    );
    assert!(parse(&dup, p).unwrap_err().to_string().contains("twice"));
    // Pseudo-random byte flips in the header must never panic.
    let base = sample();
    for i in 0..base.len().min(400) {
        for flip in [0xFFu8, 0x80, 0x01] {
            let mut m = base.clone();
            m[i] ^= flip;
            let _ = std::panic::catch_unwind(|| parse(&m, p).map(|_| ()))
                .unwrap_or_else(|_| panic!("panic at byte {i}"));
        }
    }
}

#[test]
fn real_file_truncations() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("third_party/gguf/SmolLM2-135M-Instruct.Q4_1.gguf");
    let buf = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh --tests)", path.display()));
    assert!(parse(&buf, &path).is_ok());
    let header_end = parse(&buf, &path).map(|r| r.3 as usize).unwrap_or(0);
    let step = (header_end / 97).max(1);
    let mut cuts: Vec<usize> = (0..header_end).step_by(step).collect();
    cuts.extend([header_end, header_end + 1000, buf.len() / 2, buf.len() - 1]);
    for cut in cuts {
        assert!(parse(&buf[..cut], &path).is_err(), "cut {cut} parsed");
    }
}
