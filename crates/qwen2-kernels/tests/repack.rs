//! Q5_0 -> Q5_0R8 load-time repacking (`repack_row`, issue 4).
//!
//! - Dequantizing a repacked row gives bitwise the f32 values of the source Q5_0 row (scalar
//!   and SIMD panel dequantizers), for widths 32..=4864 including every tail of 1..=7 blocks.
//! - Dot products: Q5_0R8 has its own decode arithmetic (exact block sums, one FMA per block
//!   and pair in a fixed lane order: `repack` module docs), so on every ISA the repacked
//!   `vec_dot` equals its scalar twin bitwise, and the Q5_0 `vec_dot` of the same ISA within
//!   the usual `2e-5 * S + 1e-6` (rounding only).
//! - Decode rows (`matmul_decode`, the `<1, C>` tile kernels, C = 1..=4 and any row count)
//!   equal the single-row `vec_dot` bitwise (a row's bits never depend on its batch) and the
//!   Q5_0 rows within rounding; prompt rows (`matmul_prompt`, dequantized panels) equal the
//!   Q5_0 GEMM bitwise.
//! - The repacked type is internal: never parsed from a ggml id, never quantized to directly.

mod common;
use common::randn;
use qwen2_kernels::{
    available_isas, dequantize_row, matmul_decode_with_isa, matmul_prompt_with_isa, quantize_row,
    repack_row, repacked_type, vec_dot_with_isa, GgmlType, QMatRef,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const Q5: GgmlType = GgmlType::Q5_0;
const R8: GgmlType = GgmlType::Q5_0R8;

/// `rows` Q5_0 rows of `cols` values: quantized Gaussians, and every other row random bytes
/// with finite scales (all 5th-bit patterns, not only the ones the quantizer emits).
fn q5_rows(rng: &mut StdRng, rows: usize, cols: usize) -> Vec<u8> {
    let rb = Q5.row_bytes(cols).unwrap();
    let mut data = vec![0u8; rows * rb];
    for (r, row) in data.chunks_mut(rb).enumerate() {
        if r % 2 == 0 {
            quantize_row(Q5, &randn(rng, cols, 1.0), row).unwrap();
        } else {
            rng.fill(row);
            for b in row.chunks_mut(22) {
                let d = half::f16::from_f32(rng.random_range(-0.05f32..0.05));
                b[..2].copy_from_slice(&d.to_bits().to_le_bytes());
            }
        }
    }
    data
}

fn repack(cols: usize, q5: &[u8]) -> Vec<u8> {
    let rb = Q5.row_bytes(cols).unwrap();
    let mut out = vec![0xA5u8; q5.len()]; // garbage: the repack must overwrite every byte
    for (s, d) in q5.chunks(rb).zip(out.chunks_mut(rb)) {
        assert_eq!(repack_row(Q5, cols, s, d).unwrap(), R8);
    }
    out
}

fn widths() -> Vec<usize> {
    // 1..=40 blocks (every tail 0..=7 after 0..=4 groups), the model's 896 and 4864, and
    // 4864 + 1..=7 blocks.
    let mut w: Vec<usize> = (1..=40).map(|b| 32 * b).collect();
    w.extend([896, 4864]);
    w.extend((1..=7).map(|t| 4864 + 32 * t));
    w
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn repacked_rows_dequantize_bitwise_to_the_source_values() {
    let mut rng = StdRng::seed_from_u64(5);
    for cols in widths() {
        let q5 = q5_rows(&mut rng, 4, cols);
        let r8 = repack(cols, &q5);
        // Rows of 1..=3 blocks stay plain Q5_0 blocks; longer ones are reordered.
        assert_eq!(q5 == r8, cols < 128, "cols={cols}");
        let rb = Q5.row_bytes(cols).unwrap();
        for (r, (a, b)) in q5.chunks(rb).zip(r8.chunks(rb)).enumerate() {
            let mut want = vec![0f32; cols];
            let mut got = vec![0f32; cols];
            dequantize_row(Q5, a, &mut want).unwrap();
            dequantize_row(R8, b, &mut got).unwrap();
            assert_eq!(bits(&got), bits(&want), "cols={cols} row {r}");
        }
    }
}

#[test]
fn repacked_vec_dot_equals_scalar_twin_bitwise_and_q5_0_within_rounding() {
    let mut rng = StdRng::seed_from_u64(6);
    for cols in widths() {
        let q5 = q5_rows(&mut rng, 2, cols);
        let r8 = repack(cols, &q5);
        let rb = Q5.row_bytes(cols).unwrap();
        let x = randn(&mut rng, cols, 0.8);
        let mut qx = vec![0u8; GgmlType::Q8_0.row_bytes(cols).unwrap()];
        quantize_row(GgmlType::Q8_0, &x, &mut qx).unwrap();
        let mut xq = vec![0f32; cols];
        dequantize_row(GgmlType::Q8_0, &qx, &mut xq).unwrap();
        for r in 0..2 {
            let (a, b) = (&q5[r * rb..(r + 1) * rb], &r8[r * rb..(r + 1) * rb]);
            let mut wv = vec![0f32; cols];
            dequantize_row(Q5, a, &mut wv).unwrap();
            let s: f32 = wv.iter().zip(&xq).map(|(w, x)| (w * x).abs()).sum();
            let twin = vec_dot_with_isa(qwen2_kernels::Isa::Scalar, R8, cols, b, &qx).unwrap();
            for isa in available_isas() {
                let q5 = vec_dot_with_isa(isa, Q5, cols, a, &qx).unwrap();
                let got = vec_dot_with_isa(isa, R8, cols, b, &qx).unwrap();
                assert_eq!(got.to_bits(), twin.to_bits(), "{isa:?} cols={cols} row {r}");
                let tol = 2e-5 * s + 1e-6;
                assert!(
                    (got - q5).abs() <= tol,
                    "{isa:?} cols={cols}: {got} vs Q5_0 {q5} (tol {tol})"
                );
            }
        }
    }
}

#[test]
fn decode_tiles_equal_single_row_vec_dot_bitwise() {
    let mut rng = StdRng::seed_from_u64(7);
    // 896: 3 groups + a group of 4; 4864 + 96: 19 groups + 3 plain blocks; 224: 7 blocks.
    for cols in [896, 4864 + 96, 224, 32 * 13] {
        let rows = 37; // several 16-row tiles and a ragged last one
        let q5 = q5_rows(&mut rng, rows, cols);
        let r8 = repack(cols, &q5);
        let w5 = QMatRef::new(Q5, rows, cols, &q5).unwrap();
        let w8 = QMatRef::new(R8, rows, cols, &r8).unwrap();
        let arb = GgmlType::Q8_0.row_bytes(cols).unwrap();
        for batch in 1..=9 {
            let x = randn(&mut rng, batch * cols, 0.7);
            for isa in available_isas() {
                let mut got = vec![f32::NAN; batch * rows];
                matmul_decode_with_isa(isa, &w8, &x, batch, &mut got).unwrap();
                let mut old = vec![f32::NAN; batch * rows];
                matmul_decode_with_isa(isa, &w5, &x, batch, &mut old).unwrap();
                for (i, (g, o)) in got.iter().zip(&old).enumerate() {
                    // |w . x| <= 16 * 0.05 * sum |x|, a loose scale for the rounding bound.
                    let c = i / rows;
                    let s: f32 = x[c * cols..(c + 1) * cols].iter().map(|v| v.abs()).sum();
                    let tol = 2e-5 * 16.0 * 0.05 * s + 1e-6;
                    assert!(
                        (g - o).abs() <= tol,
                        "{isa:?} cols={cols} batch={batch} [{i}]: {g} vs Q5_0 {o} (tol {tol})"
                    );
                }
                for c in 0..batch {
                    let mut qx = vec![0u8; arb];
                    quantize_row(GgmlType::Q8_0, &x[c * cols..(c + 1) * cols], &mut qx).unwrap();
                    for r in 0..rows {
                        let want = vec_dot_with_isa(isa, R8, cols, w8.row(r), &qx).unwrap();
                        assert_eq!(
                            got[c * rows + r].to_bits(),
                            want.to_bits(),
                            "{isa:?} cols={cols} batch={batch} [c={c}, r={r}]"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn prompt_panels_equal_q5_0_gemm_bitwise() {
    let mut rng = StdRng::seed_from_u64(8);
    // Rows longer than 1536 values are dequantized in 1024-value pieces: 4864 + 224 ends
    // with 19 groups, 1 group of 4 and 3 plain blocks across those pieces.
    for cols in [896, 4864 + 224, 32 * 5] {
        let rows = 20;
        let q5 = q5_rows(&mut rng, rows, cols);
        let r8 = repack(cols, &q5);
        let w5 = QMatRef::new(Q5, rows, cols, &q5).unwrap();
        let w8 = QMatRef::new(R8, rows, cols, &r8).unwrap();
        for batch in [1, 3, 7] {
            let x = randn(&mut rng, batch * cols, 0.7);
            for isa in available_isas() {
                let mut got = vec![f32::NAN; batch * rows];
                let mut want = vec![f32::NAN; batch * rows];
                matmul_prompt_with_isa(isa, &w8, &x, batch, &mut got).unwrap();
                matmul_prompt_with_isa(isa, &w5, &x, batch, &mut want).unwrap();
                assert_eq!(bits(&got), bits(&want), "{isa:?} cols={cols} batch={batch}");
            }
        }
    }
}

#[test]
fn repacked_type_is_internal() {
    assert_eq!(repacked_type(Q5), Some(R8));
    for ty in GgmlType::ALL {
        assert!(!ty.is_internal(), "{ty}");
        if ty != Q5 && ty != GgmlType::Q4K {
            assert_eq!(repacked_type(ty), None, "{ty}");
        }
    }
    assert!(R8.is_internal());
    assert!(!GgmlType::ALL.contains(&R8));
    assert!(GgmlType::from_u32(R8.id()).is_err());
    assert!(quantize_row(R8, &[0.5; 32], &mut [0u8; 22]).is_err());
    // Wrong lengths and types without a repack are errors, not panics.
    let mut dst = [0u8; 22];
    assert!(repack_row(Q5, 32, &[0u8; 21], &mut dst).is_err());
    assert!(repack_row(Q5, 33, &[0u8; 22], &mut dst).is_err());
    assert!(repack_row(GgmlType::Q8_0, 32, &[0u8; 34], &mut [0u8; 34]).is_err());
}
