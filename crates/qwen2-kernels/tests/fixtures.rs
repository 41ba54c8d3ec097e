//! Golden tests against fixtures written by `scripts/fixtures/quant.py` (gguf.quants, the
//! numpy mirror of ggml). Tolerance: exact f32 equality for dequantization (we perform the same
//! f32 operations in the same order as ggml) and bit-exact bytes for quantization.

use qwen2_kernels::{dequantize_row, quantize_row, GgmlType};
use std::path::PathBuf;

fn fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/quant")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| {
        panic!(
            "{}: {e}\nHINT: run /work/venv/bin/python scripts/fixtures/quant.py",
            p.display()
        )
    })
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn dequantize_matches_gguf_fixtures_exactly() {
    for ty in GgmlType::ALL {
        let blocks = fixture(&format!("{}.bin", ty.name()));
        let expected = f32s(&fixture(&format!("{}.f32", ty.name())));
        assert!(!expected.is_empty());
        let mut got = vec![f32::NAN; expected.len()];
        dequantize_row(ty, &blocks, &mut got).unwrap();
        let mut bad = 0;
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            if g != e {
                if bad < 5 {
                    eprintln!("{ty}: value {i}: got {g}, expected {e}");
                }
                bad += 1;
            }
        }
        assert_eq!(bad, 0, "{ty}: {bad} of {} values differ", expected.len());
    }
}

#[test]
fn quantize_matches_gguf_fixtures_bit_exactly() {
    let mut checked = 0;
    for ty in GgmlType::ALL {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/quant")
            .join(format!("{}.quant_src.f32", ty.name()));
        if !p.exists() {
            continue;
        }
        let src = f32s(&fixture(&format!("{}.quant_src.f32", ty.name())));
        let expected = fixture(&format!("{}.quant_expected.bin", ty.name()));
        let mut got = vec![0u8; ty.row_bytes(src.len()).unwrap()];
        quantize_row(ty, &src, &mut got).unwrap();
        let ts = ty.type_size();
        for (bi, (g, e)) in got.chunks(ts).zip(expected.chunks(ts)).enumerate() {
            assert_eq!(g, e, "{ty}: block {bi} differs");
        }
        assert_eq!(got.len(), expected.len());
        checked += 1;
    }
    assert_eq!(
        checked, 7,
        "expected quantization fixtures for F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0"
    );
}

/// Bytes from llama.cpp's own `quantize_row_*_ref` (scripts/fixtures/quants.py, through the
/// libggml-base.so bundled with llama-cpp-python) for one mixed input: every block must match.
#[test]
fn quantize_matches_llama_cpp_bytes() {
    let src = f32s(&fixture("kq_src.f32"));
    let types = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ];
    let mut failures = Vec::new();
    for ty in types {
        let expected = fixture(&format!("{}.kq_expected.bin", ty.name()));
        let mut got = vec![0u8; ty.row_bytes(src.len()).unwrap()];
        quantize_row(ty, &src, &mut got).unwrap();
        assert_eq!(got.len(), expected.len(), "{ty}");
        let ts = ty.type_size();
        let bad: Vec<usize> = got
            .chunks(ts)
            .zip(expected.chunks(ts))
            .enumerate()
            .filter(|(_, (g, e))| g != e)
            .map(|(i, _)| i)
            .collect();
        if !bad.is_empty() {
            failures.push(format!("{ty}: blocks {bad:?} differ"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
