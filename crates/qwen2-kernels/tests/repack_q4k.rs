//! Q4_K -> Q4KR load-time repacking (`repack_row`, issue 4: lane-major nibbles for the decode
//! tiles, `repack_q4k` module docs).
//!
//! - Dequantizing a repacked row gives bitwise the f32 values of the source Q4_K row.
//! - Dot products: Q4KR has its own decode arithmetic (exact sub-block sums, one FMA per
//!   super-block and pair in fixed lanes), so on every ISA the repacked `vec_dot` equals its
//!   scalar twin bitwise, and the Q4_K `vec_dot` of the same ISA within rounding.
//! - Decode rows (`matmul_decode`, tiles of 1..=4 activation rows, any row count) equal the
//!   single-row `vec_dot` bitwise (a row's bits never depend on its batch); prompt rows
//!   (`matmul_prompt`) equal the Q4_K GEMM bitwise (the same panels).
//! - The repacked type is internal: never parsed from a ggml id, never quantized to directly.

mod common;
use common::randn;
use qwen2_kernels::{
    available_isas, dequantize_row, matmul_decode_with_isa, matmul_prompt_with_isa, quantize_row,
    repack_row, repacked_type, vec_dot_with_isa, GgmlType, QMatRef,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const Q4: GgmlType = GgmlType::Q4K;
const R: GgmlType = GgmlType::Q4KR;

/// `rows` Q4_K rows of `cols` values: quantized Gaussians, and every other row random bytes
/// with finite small scales (every nibble, scale and min pattern).
fn q4_rows(rng: &mut StdRng, rows: usize, cols: usize) -> Vec<u8> {
    let rb = Q4.row_bytes(cols).unwrap();
    let mut data = vec![0u8; rows * rb];
    for (r, row) in data.chunks_mut(rb).enumerate() {
        if r % 2 == 0 {
            quantize_row(Q4, &randn(rng, cols, 1.0), row).unwrap();
        } else {
            rng.fill(row);
            for b in row.chunks_mut(144) {
                for o in [0, 2] {
                    let d = half::f16::from_f32(rng.random_range(0.0f32..0.01));
                    b[o..o + 2].copy_from_slice(&d.to_bits().to_le_bytes());
                }
            }
        }
    }
    data
}

fn repack(cols: usize, q4: &[u8]) -> Vec<u8> {
    let rb = Q4.row_bytes(cols).unwrap();
    let mut out = vec![0xA5u8; q4.len()]; // garbage: the repack must overwrite every byte
    for (s, d) in q4.chunks(rb).zip(out.chunks_mut(rb)) {
        assert_eq!(repack_row(Q4, cols, s, d).unwrap(), R);
    }
    out
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// 1..=3 super-blocks, the 1.5B's 1536, the 0.5B's 4864 and the 7B's 3584 and 18944.
const WIDTHS: [usize; 7] = [256, 512, 768, 1536, 3584, 4864, 18944];

#[test]
fn repacked_rows_dequantize_bitwise_to_the_source_values() {
    let mut rng = StdRng::seed_from_u64(15);
    for cols in WIDTHS {
        let q4 = q4_rows(&mut rng, 4, cols);
        let r = repack(cols, &q4);
        assert_ne!(q4, r, "cols={cols}: the nibbles move");
        let rb = Q4.row_bytes(cols).unwrap();
        for (i, (a, b)) in q4.chunks(rb).zip(r.chunks(rb)).enumerate() {
            let mut want = vec![0f32; cols];
            let mut got = vec![0f32; cols];
            dequantize_row(Q4, a, &mut want).unwrap();
            dequantize_row(R, b, &mut got).unwrap();
            assert_eq!(bits(&got), bits(&want), "cols={cols} row {i}");
        }
    }
}

#[test]
fn repacked_vec_dot_equals_scalar_twin_bitwise_and_q4_k_within_rounding() {
    let mut rng = StdRng::seed_from_u64(16);
    for cols in WIDTHS {
        let q4 = q4_rows(&mut rng, 2, cols);
        let r = repack(cols, &q4);
        let rb = Q4.row_bytes(cols).unwrap();
        let x = randn(&mut rng, cols, 0.8);
        let mut qx = vec![0u8; GgmlType::Q8K.row_bytes(cols).unwrap()];
        quantize_row(GgmlType::Q8K, &x, &mut qx).unwrap();
        let mut xq = vec![0f32; cols];
        dequantize_row(GgmlType::Q8K, &qx, &mut xq).unwrap();
        for i in 0..2 {
            let (a, b) = (&q4[i * rb..(i + 1) * rb], &r[i * rb..(i + 1) * rb]);
            let mut wv = vec![0f32; cols];
            dequantize_row(Q4, a, &mut wv).unwrap();
            let s: f32 = wv.iter().zip(&xq).map(|(w, x)| (w * x).abs()).sum();
            let twin = vec_dot_with_isa(qwen2_kernels::Isa::Scalar, R, cols, b, &qx).unwrap();
            for isa in available_isas() {
                let q4 = vec_dot_with_isa(isa, Q4, cols, a, &qx).unwrap();
                let got = vec_dot_with_isa(isa, R, cols, b, &qx).unwrap();
                assert_eq!(got.to_bits(), twin.to_bits(), "{isa:?} cols={cols} row {i}");
                let tol = 2e-5 * s + 1e-6;
                assert!(
                    (got - q4).abs() <= tol,
                    "{isa:?} cols={cols}: {got} vs Q4_K {q4} (tol {tol})"
                );
            }
        }
    }
}

#[test]
fn decode_tiles_equal_single_row_vec_dot_bitwise() {
    let mut rng = StdRng::seed_from_u64(17);
    for cols in [256, 1536, 4864] {
        let rows = 37; // several 16-row tiles and a ragged last one
        let q4 = q4_rows(&mut rng, rows, cols);
        let r = repack(cols, &q4);
        let w4 = QMatRef::new(Q4, rows, cols, &q4).unwrap();
        let wr = QMatRef::new(R, rows, cols, &r).unwrap();
        let arb = GgmlType::Q8K.row_bytes(cols).unwrap();
        for batch in 1..=9 {
            let x = randn(&mut rng, batch * cols, 0.7);
            for isa in available_isas() {
                let mut got = vec![f32::NAN; batch * rows];
                matmul_decode_with_isa(isa, &wr, &x, batch, &mut got).unwrap();
                let mut old = vec![f32::NAN; batch * rows];
                matmul_decode_with_isa(isa, &w4, &x, batch, &mut old).unwrap();
                for (i, (g, o)) in got.iter().zip(&old).enumerate() {
                    let c = i / rows;
                    let s: f32 = x[c * cols..(c + 1) * cols].iter().map(|v| v.abs()).sum();
                    // |w| <= 15 * 63 * 0.01 + 63 * 0.01 per value: a loose rounding scale.
                    let tol = 2e-5 * 10.0 * s + 1e-5;
                    assert!(
                        (g - o).abs() <= tol,
                        "{isa:?} cols={cols} batch={batch} [{i}]: {g} vs Q4_K {o} (tol {tol})"
                    );
                }
                for c in 0..batch {
                    let mut qx = vec![0u8; arb];
                    quantize_row(GgmlType::Q8K, &x[c * cols..(c + 1) * cols], &mut qx).unwrap();
                    for row in 0..rows {
                        let want = vec_dot_with_isa(isa, R, cols, wr.row(row), &qx).unwrap();
                        assert_eq!(
                            got[c * rows + row].to_bits(),
                            want.to_bits(),
                            "{isa:?} cols={cols} batch={batch} [c={c}, r={row}]"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn prompt_panels_equal_q4_k_gemm_bitwise() {
    let mut rng = StdRng::seed_from_u64(18);
    // 18944 values: several 4096-value k-blocks and a partial one.
    for cols in [1536, 4864, 18944] {
        let rows = 20;
        let q4 = q4_rows(&mut rng, rows, cols);
        let r = repack(cols, &q4);
        let w4 = QMatRef::new(Q4, rows, cols, &q4).unwrap();
        let wr = QMatRef::new(R, rows, cols, &r).unwrap();
        for batch in [1, 3, 7, 33] {
            let x = randn(&mut rng, batch * cols, 0.7);
            for isa in available_isas() {
                let mut got = vec![f32::NAN; batch * rows];
                let mut want = vec![f32::NAN; batch * rows];
                matmul_prompt_with_isa(isa, &wr, &x, batch, &mut got).unwrap();
                matmul_prompt_with_isa(isa, &w4, &x, batch, &mut want).unwrap();
                assert_eq!(bits(&got), bits(&want), "{isa:?} cols={cols} batch={batch}");
            }
        }
    }
}

#[test]
fn repacked_type_is_internal() {
    assert_eq!(repacked_type(Q4), Some(R));
    assert!(R.is_internal());
    assert!(!GgmlType::ALL.contains(&R));
    assert!(GgmlType::from_u32(R.id()).is_err());
    assert!(quantize_row(R, &[0.5; 256], &mut [0u8; 144]).is_err());
    let mut dst = [0u8; 144];
    assert!(repack_row(Q4, 256, &[0u8; 143], &mut dst).is_err());
    assert!(repack_row(Q4, 255, &[0u8; 144], &mut dst).is_err());
}
