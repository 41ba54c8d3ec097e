//! Decode-row path (`matmul_decode`): batch invariance (issue 5) and accuracy.
//!
//! - Bitwise: every activation row's outputs are identical computed alone (batch 1), inside
//!   any batch of 2..=16 decode rows at any position, under 1..=3 rayon threads, and equal to
//!   `vec_dot` of the row's quantized activations (the single-row kernel), on every ISA.
//! - SIMD vs scalar twin: `2e-5 * S + 1e-6` with `S = sum_k |w_k * q(x)_k|` (same integer block
//!   sums, different float order).
//! - vs `matmul_reference` (f32 activations, f64 sums): activation-quantization error actually
//!   incurred plus `2e-5 * S + 1e-5`, as in `kernels.rs`.

mod common;
use common::randn;
use qwen2_kernels::{
    available_isas, dequantize_row, matmul_decode_with_isa, matmul_reference, quantize_row,
    vec_dot_with_isa, GgmlType, Isa, QMatRef,
};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// The default model's decode types first, then ones served by the per-pair fallback, and BF16
/// (safetensors checkpoints; `vdpbf16ps` where the CPU has AVX-512 BF16, for widths of a
/// multiple of 16).
const TYPES: [GgmlType; 8] = [
    GgmlType::Q5_0,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q6K,
    GgmlType::Q4_0,
    GgmlType::F16,
    GgmlType::Q5K,
    GgmlType::BF16,
];

/// Whether `ty` rows of `cols` values round their activations to bf16 on `isa`
/// (`qwen2_kernels::bf16`).
fn bf16_acts(isa: Isa, ty: GgmlType, cols: usize) -> bool {
    ty == GgmlType::BF16 && isa >= Isa::Avx2 && qwen2_kernels::bf16() && cols.is_multiple_of(16)
}

fn weights(rng: &mut StdRng, ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let rb = ty.row_bytes(cols).unwrap();
    let mut data = vec![0u8; rows * rb];
    for row in data.chunks_mut(rb) {
        quantize_row(ty, &randn(rng, cols, 1.0), row).unwrap();
    }
    data
}

fn cols_for(ty: GgmlType) -> [usize; 2] {
    match ty.block_size() {
        1 => [96, 67],
        // 28 blocks (the model's 896) and an odd block count (the FMA-chain tail).
        32 => [896, 224],
        _ => [512, 768],
    }
}

fn decode(isa: Isa, w: &QMatRef, x: &[f32], batch: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; batch * w.rows];
    matmul_decode_with_isa(isa, w, x, batch, &mut out).unwrap();
    out
}

#[test]
fn decode_rows_are_bitwise_batch_and_thread_invariant() {
    let mut rng = StdRng::seed_from_u64(51);
    for ty in TYPES {
        for cols in cols_for(ty) {
            let rows = 301; // several row chunks, not a multiple of the 4-row GEMV tile
            let data = weights(&mut rng, ty, rows, cols);
            let w = QMatRef::new(ty, rows, cols, &data).unwrap();
            let x = randn(&mut rng, 16 * cols, 0.7);
            let vdt = ty.vec_dot_type();
            for isa in available_isas() {
                // Each row alone, and its single-row vec_dot.
                let alone: Vec<Vec<f32>> = (0..16)
                    .map(|b| decode(isa, &w, &x[b * cols..(b + 1) * cols], 1))
                    .collect();
                for (b, want) in alone.iter().enumerate() {
                    let mut q = vec![0u8; vdt.row_bytes(cols).unwrap()];
                    quantize_row(vdt, &x[b * cols..(b + 1) * cols], &mut q).unwrap();
                    for (r, &v) in want.iter().enumerate() {
                        let d = vec_dot_with_isa(isa, ty, cols, w.row(r), &q).unwrap();
                        assert_eq!(
                            v.to_bits(),
                            d.to_bits(),
                            "{ty} {isa:?} cols={cols} b={b} r={r}: decode vs vec_dot"
                        );
                    }
                }
                // Every batch size, at two offsets in the activation list.
                for batch in 1..=16 {
                    for start in [0, 16 - batch] {
                        let xs = &x[start * cols..(start + batch) * cols];
                        let got = decode(isa, &w, xs, batch);
                        for b in 0..batch {
                            let g = &got[b * rows..(b + 1) * rows];
                            let want = &alone[start + b];
                            for (r, (gv, wv)) in g.iter().zip(want).enumerate() {
                                assert_eq!(
                                    gv.to_bits(),
                                    wv.to_bits(),
                                    "{ty} {isa:?} cols={cols} batch={batch} start={start} b={b} r={r}"
                                );
                            }
                        }
                    }
                }
                // Thread counts change the row split, never a row's arithmetic.
                for threads in 1..=3 {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    for batch in [1, 5, 16] {
                        let got = pool.install(|| decode(isa, &w, &x[..batch * cols], batch));
                        for (b, (g, want)) in got.chunks(rows).zip(&alone).enumerate() {
                            for (r, (gv, wv)) in g.iter().zip(want).enumerate() {
                                assert_eq!(
                                    gv.to_bits(),
                                    wv.to_bits(),
                                    "{ty} {isa:?} threads={threads} batch={batch} b={b} r={r}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn decode_rows_simd_match_scalar_twin_and_reference() {
    let mut rng = StdRng::seed_from_u64(52);
    for ty in TYPES {
        for cols in cols_for(ty) {
            let (rows, batch) = (37, 7);
            let data = weights(&mut rng, ty, rows, cols);
            let w = QMatRef::new(ty, rows, cols, &data).unwrap();
            let x = randn(&mut rng, batch * cols, 0.7);
            let vdt = ty.vec_dot_type();
            let mut wd = vec![vec![0.0f32; cols]; rows];
            for (r, v) in wd.iter_mut().enumerate() {
                dequantize_row(ty, w.row(r), v).unwrap();
            }
            let xq: Vec<Vec<f32>> = (0..batch)
                .map(|b| {
                    let mut q = vec![0u8; vdt.row_bytes(cols).unwrap()];
                    quantize_row(vdt, &x[b * cols..(b + 1) * cols], &mut q).unwrap();
                    let mut v = vec![0.0f32; cols];
                    dequantize_row(vdt, &q, &mut v).unwrap();
                    v
                })
                .collect();
            let mut reference = vec![0.0f32; batch * rows];
            matmul_reference(&w, &x, batch, &mut reference).unwrap();
            let scalar = decode(Isa::Scalar, &w, &x, batch);
            for isa in available_isas() {
                let got = decode(isa, &w, &x, batch);
                let bf16 = bf16_acts(isa, ty, cols);
                for b in 0..batch {
                    let xb = &x[b * cols..(b + 1) * cols];
                    for (r, wr) in wd.iter().enumerate() {
                        let (mut qerr, mut s, mut sq, mut bf) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
                        for ((&wk, &xk), &qk) in wr.iter().zip(xb).zip(&xq[b]) {
                            let wk = wk as f64;
                            // The bf16 path's activations: x rounded to bf16, not `vdt`'s.
                            let qk = if bf16 {
                                let q = half::bf16::from_f32(xk).to_f32();
                                bf += (wk * (qk - q) as f64).abs();
                                q
                            } else {
                                qk
                            };
                            qerr += (wk * (xk - qk) as f64).abs();
                            s += (wk * xk as f64).abs();
                            sq += (wk * qk as f64).abs();
                        }
                        let i = b * rows + r;
                        let (g, sc, e) = (got[i] as f64, scalar[i] as f64, reference[i] as f64);
                        let tol_twin = 2e-5 * sq + 1e-6 + bf;
                        assert!(
                            (g - sc).abs() <= tol_twin,
                            "{ty} {isa:?} cols={cols} [b={b}, r={r}]: {g} vs scalar {sc} (tol {tol_twin})"
                        );
                        let tol_ref = qerr + 2e-5 * s + 1e-5;
                        assert!(
                            (g - e).abs() <= tol_ref,
                            "{ty} {isa:?} cols={cols} [b={b}, r={r}]: {g} vs reference {e} (tol {tol_ref})"
                        );
                    }
                }
            }
        }
    }
}

/// `matmul_decode_many` (a layer's q/k/v or gate/up in one call) gives each matrix's outputs
/// bitwise as its own `matmul_decode` call, for every type (Q5_0 repacked as at load, too),
/// batch size and thread count; mixed types take the one-at-a-time path, and a wrong number
/// of outputs is an error.
#[test]
fn decode_many_is_bitwise_the_separate_calls() {
    let mut rng = StdRng::seed_from_u64(77);
    let mut types: Vec<GgmlType> = vec![GgmlType::Q5_0R8, GgmlType::Q4KR];
    types.extend([
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q6K,
        GgmlType::F16,
        GgmlType::BF16,
    ]);
    for ty in types {
        let src_ty = match ty {
            GgmlType::Q5_0R8 => GgmlType::Q5_0,
            GgmlType::Q4KR => GgmlType::Q4K,
            _ => ty,
        };
        let cols = cols_for(src_ty)[0];
        // Row counts of a q, a k/v and a tiny matrix: different chunkings in one section.
        let shapes = [301usize, 64, 17];
        let data: Vec<Vec<u8>> = shapes
            .iter()
            .map(|&rows| {
                let d = weights(&mut rng, src_ty, rows, cols);
                if ty != src_ty {
                    let rb = src_ty.row_bytes(cols).unwrap();
                    let mut p = vec![0u8; d.len()];
                    for (s, o) in d.chunks(rb).zip(p.chunks_mut(rb)) {
                        qwen2_kernels::repack_row(src_ty, cols, s, o).unwrap();
                    }
                    p
                } else {
                    d
                }
            })
            .collect();
        let ws: Vec<QMatRef> = shapes
            .iter()
            .zip(&data)
            .map(|(&rows, d)| QMatRef::new(ty, rows, cols, d).unwrap())
            .collect();
        let x = randn(&mut rng, 17 * cols, 0.7);
        for isa in available_isas() {
            for threads in 1..=3 {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                for batch in [1, 3, 8, 17] {
                    let xs = &x[..batch * cols];
                    let want: Vec<Vec<f32>> =
                        ws.iter().map(|w| decode(isa, w, xs, batch)).collect();
                    for n in 2..=3 {
                        let mut got: Vec<Vec<f32>> = ws[..n]
                            .iter()
                            .map(|w| vec![f32::NAN; batch * w.rows])
                            .collect();
                        let mut outs: Vec<&mut [f32]> =
                            got.iter_mut().map(|g| g.as_mut_slice()).collect();
                        pool.install(|| {
                            qwen2_kernels::matmul_decode_many_with_isa(
                                isa,
                                &ws[..n],
                                xs,
                                batch,
                                &mut outs,
                            )
                        })
                        .unwrap();
                        for (m, (g, w)) in got.iter().zip(&want).enumerate() {
                            let same = g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits());
                            assert!(
                                same,
                                "{ty} {isa:?} threads={threads} batch={batch} n={n} matrix {m}"
                            );
                        }
                    }
                }
            }
        }
    }
    // Mixed types: each matrix on its own, same results; a missing output is an error.
    let cols = 896;
    let (d5, d8) = (
        weights(&mut rng, GgmlType::Q5_0, 40, cols),
        weights(&mut rng, GgmlType::Q8_0, 24, cols),
    );
    let ws = [
        QMatRef::new(GgmlType::Q5_0, 40, cols, &d5).unwrap(),
        QMatRef::new(GgmlType::Q8_0, 24, cols, &d8).unwrap(),
    ];
    let x = randn(&mut rng, 2 * cols, 0.7);
    let isa = available_isas().into_iter().last().unwrap();
    let (mut a, mut b) = (vec![0f32; 80], vec![0f32; 48]);
    qwen2_kernels::matmul_decode_many_with_isa(isa, &ws, &x, 2, &mut [&mut a, &mut b]).unwrap();
    assert_eq!(a, decode(isa, &ws[0], &x, 2));
    assert_eq!(b, decode(isa, &ws[1], &x, 2));
    let err = qwen2_kernels::matmul_decode_many_with_isa(isa, &ws, &x, 2, &mut [&mut a]);
    assert!(err.is_err(), "one output for two matrices must be refused");
    let mut short = vec![0f32; 47];
    let err =
        qwen2_kernels::matmul_decode_many_with_isa(isa, &ws, &x, 2, &mut [&mut a, &mut short]);
    assert!(err.is_err(), "a short output must be refused");
}

/// Where BF16 rows take `vdpbf16ps` (`qwen2_kernels::bf16`) they have one arithmetic for every
/// role: prompt rows (the GEMM tiles) and decode rows (the decode tiles) give the same bits.
#[test]
fn bf16_prompt_and_decode_rows_agree_bitwise() {
    if !qwen2_kernels::bf16() {
        eprintln!("skipped: BF16 rows take the f32 paths on this CPU");
        return;
    }
    let mut rng = StdRng::seed_from_u64(53);
    for (rows, cols, batch) in [(301, 896, 9), (40, 4864, 3), (7, 16, 1)] {
        let data = weights(&mut rng, GgmlType::BF16, rows, cols);
        let w = QMatRef::new(GgmlType::BF16, rows, cols, &data).unwrap();
        let x = randn(&mut rng, batch * cols, 0.7);
        let mut prompt = vec![f32::NAN; batch * rows];
        qwen2_kernels::matmul_prompt_with_isa(Isa::Avx2, &w, &x, batch, &mut prompt).unwrap();
        let dec = decode(Isa::Avx2, &w, &x, batch);
        for (i, (p, d)) in prompt.iter().zip(&dec).enumerate() {
            assert_eq!(
                p.to_bits(),
                d.to_bits(),
                "{rows}x{cols} batch {batch}, output {i}"
            );
        }
    }
}
