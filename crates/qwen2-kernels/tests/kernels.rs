//! Dot products, SIMD-vs-scalar twins, matmul and error handling.
//!
//! Tolerances (all relative to `S = sum_k |w_k * a_k|`, the magnitude that float reordering can
//! perturb):
//! - scalar `vec_dot` vs f64 dot of the dequantized operands: `1e-5 * S + 1e-6` (f32 accumulation
//!   of exact integer block sums).
//! - every SIMD `vec_dot` vs its scalar twin: `2e-5 * S + 1e-6` (same integer sums, different
//!   float summation order / FMA).
//! - `matmul` vs `matmul_reference` (f32 activations, dequantized weights, f64 sums):
//!   `sum_k |w_k| * |x_k - q(x)_k| + 2e-5 * S + 1e-5`, i.e. exactly the activation-quantization
//!   error plus float noise.

use qwen2_kernels::{
    available_isas, dequantize_row, matmul_prompt_with_isa, matmul_reference, matmul_with_isa,
    quantize_row, vec_dot, vec_dot_with_isa, GgmlType, Isa, KernelError, QMatRef,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn normal(rng: &mut StdRng) -> f32 {
    // Box-Muller; rand's distributions crate is not a dependency.
    let u1: f32 = rng.random_range(1e-7f32..1.0);
    let u2: f32 = rng.random::<f32>();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

fn randn(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| normal(rng) * scale).collect()
}

fn put_f16(b: &mut [u8], off: usize, v: f32) {
    b[off..off + 2].copy_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes());
}

/// A random weight row: quantized from Gaussian values where we have a quantizer, otherwise
/// random bytes with sane f16 scale fields (as the fixture script does).
fn random_weights(rng: &mut StdRng, ty: GgmlType, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; ty.row_bytes(n).unwrap()];
    let x = randn(rng, n, 1.0);
    if quantize_row(ty, &x, &mut out).is_ok() {
        return out;
    }
    rng.fill(&mut out[..]);
    let scales: &[usize] = match ty {
        GgmlType::Q2K => &[80, 82],
        GgmlType::Q3K => &[108],
        GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q6K => &[208],
        _ => unreachable!("{ty} should be quantizable"),
    };
    for blk in out.chunks_mut(ty.type_size()) {
        for &off in scales {
            let v = rng.random_range(-1.0f32..1.0) * 0.05;
            put_f16(blk, off, v);
        }
    }
    out
}

fn dequant(ty: GgmlType, b: &[u8], n: usize) -> Vec<f32> {
    let mut v = vec![0.0; n];
    dequantize_row(ty, b, &mut v).unwrap();
    v
}

fn lengths(ty: GgmlType) -> Vec<usize> {
    match ty.block_size() {
        1 => vec![
            1, 7, 15, 16, 17, 31, 33, 63, 64, 65, 255, 256, 257, 1000, 4864,
        ],
        32 => [1, 2, 3, 7, 8, 9, 16, 17, 28, 31, 63, 152, 255]
            .iter()
            .map(|b| b * 32)
            .collect(),
        _ => [1, 2, 3, 7, 8, 16, 19, 33]
            .iter()
            .map(|b| b * 256)
            .collect(),
    }
}

#[test]
fn scalar_vec_dot_matches_dequantized_dot() {
    let mut rng = StdRng::seed_from_u64(7);
    for ty in GgmlType::ALL {
        let vdt = ty.vec_dot_type();
        for n in lengths(ty) {
            let w = random_weights(&mut rng, ty, n);
            let mut a = vec![0u8; vdt.row_bytes(n).unwrap()];
            quantize_row(vdt, &randn(&mut rng, n, 1.0), &mut a).unwrap();
            let (wd, ad) = (dequant(ty, &w, n), dequant(vdt, &a, n));
            let exact: f64 = wd.iter().zip(&ad).map(|(&p, &q)| p as f64 * q as f64).sum();
            let s: f64 = wd
                .iter()
                .zip(&ad)
                .map(|(&p, &q)| (p as f64 * q as f64).abs())
                .sum();
            let got = vec_dot_with_isa(Isa::Scalar, ty, n, &w, &a).unwrap() as f64;
            let mut tol = 1e-5 * s + 1e-6;
            if vdt == GgmlType::Q8_1 {
                // ggml's Q8_1 stores s = d * sum(q) rounded to f16: the `m * s` term carries that
                // rounding (relative 2^-11), so budget it per block.
                for (wb, ab) in w.chunks(ty.type_size()).zip(ad.chunks(32)) {
                    let m = half::f16::from_bits(u16::from_le_bytes([wb[2], wb[3]])).to_f64();
                    let sum: f64 = ab.iter().map(|&v| v as f64).sum();
                    tol += (m * sum).abs() / 1024.0;
                }
            }
            assert!(
                (got - exact).abs() <= tol,
                "{ty} n={n}: scalar {got} vs exact {exact} (tol {tol})"
            );
        }
    }
}

/// The error of rounding activations to bf16 (relative 2^-9 each) for a dot product of
/// magnitude `s`, where BF16 weights take `vdpbf16ps` on `isa` (`qwen2_kernels::bf16`), else 0.
fn bf16_act_budget(isa: Isa, ty: GgmlType, n: usize, s: f64) -> f64 {
    if ty == GgmlType::BF16 && isa >= Isa::Avx2 && qwen2_kernels::bf16() && n.is_multiple_of(16) {
        s / 512.0
    } else {
        0.0
    }
}

#[test]
fn simd_vec_dot_matches_scalar_twin_on_every_isa() {
    let isas = available_isas();
    eprintln!("testing ISAs {isas:?}");
    let mut rng = StdRng::seed_from_u64(11);
    for ty in GgmlType::ALL {
        let vdt = ty.vec_dot_type();
        for n in lengths(ty) {
            let w = random_weights(&mut rng, ty, n);
            let mut a = vec![0u8; vdt.row_bytes(n).unwrap()];
            quantize_row(vdt, &randn(&mut rng, n, 1.0), &mut a).unwrap();
            let (wd, ad) = (dequant(ty, &w, n), dequant(vdt, &a, n));
            let s: f64 = wd
                .iter()
                .zip(&ad)
                .map(|(&p, &q)| (p as f64 * q as f64).abs())
                .sum();
            let want = vec_dot_with_isa(Isa::Scalar, ty, n, &w, &a).unwrap() as f64;
            for &isa in &isas {
                let got = vec_dot_with_isa(isa, ty, n, &w, &a).unwrap() as f64;
                let tol = 2e-5 * s + 1e-6 + bf16_act_budget(isa, ty, n, s);
                assert!(
                    (got - want).abs() <= tol,
                    "{ty} n={n} {isa:?}: {got} vs scalar {want} (tol {tol})"
                );
            }
            // The default dispatch agrees too.
            let got = vec_dot(ty, n, &w, &a).unwrap() as f64;
            let tol = 2e-5 * s + 1e-6 + bf16_act_budget(qwen2_kernels::detected_isa(), ty, n, s);
            assert!((got - want).abs() <= tol);
        }
    }
}

#[test]
fn unavailable_isa_is_an_error_not_ub() {
    for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
        let w = vec![0u8; 34];
        let a = vec![0u8; 34];
        let r = vec_dot_with_isa(isa, GgmlType::Q8_0, 32, &w, &a);
        assert_eq!(r.is_ok(), isa.is_available(), "{isa:?}");
    }
}

fn check_matmul(ty: GgmlType, rows: usize, cols: usize, batch: usize, rng: &mut StdRng) {
    check_product(matmul_with_isa, ty, rows, cols, batch, rng);
}

type Product = fn(Isa, &QMatRef, &[f32], usize, &mut [f32]) -> Result<(), KernelError>;

fn check_product(
    mm: Product,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    batch: usize,
    rng: &mut StdRng,
) {
    let vdt = ty.vec_dot_type();
    let mut data = Vec::new();
    for _ in 0..rows {
        data.extend(random_weights(rng, ty, cols));
    }
    let w = QMatRef::new(ty, rows, cols, &data).unwrap();
    let x = randn(rng, batch * cols, 0.7);
    let mut want = vec![0.0; batch * rows];
    matmul_reference(&w, &x, batch, &mut want).unwrap();

    // Per-(row, batch) error budget: the activation quantization error actually incurred.
    let wd: Vec<Vec<f32>> = (0..rows).map(|r| dequant(ty, w.row(r), cols)).collect();
    let xq: Vec<Vec<f32>> = (0..batch)
        .map(|b| {
            let xb = &x[b * cols..(b + 1) * cols];
            let mut q = vec![0u8; vdt.row_bytes(cols).unwrap()];
            quantize_row(vdt, xb, &mut q).unwrap();
            dequant(vdt, &q, cols)
        })
        .collect();
    for isa in available_isas() {
        let mut got = vec![f32::NAN; batch * rows];
        mm(isa, &w, &x, batch, &mut got).unwrap();
        // BF16 weights on AVX-512 BF16 round the activations to bf16 (qwen2_kernels::bf16).
        let bf16_act = bf16_act_budget(isa, ty, cols, 1.0) > 0.0;
        for b in 0..batch {
            let xb = &x[b * cols..(b + 1) * cols];
            for r in 0..rows {
                let (mut qerr, mut s) = (0.0f64, 0.0f64);
                for k in 0..cols {
                    let xk = if bf16_act {
                        half::bf16::from_f32(xb[k]).to_f32()
                    } else {
                        xq[b][k]
                    };
                    qerr += (wd[r][k] as f64 * (xb[k] - xk) as f64).abs();
                    s += (wd[r][k] as f64 * xb[k] as f64).abs();
                }
                let tol = qerr + 2e-5 * s + 1e-5;
                let (g, e) = (got[b * rows + r] as f64, want[b * rows + r] as f64);
                assert!(
                    (g - e).abs() <= tol,
                    "{ty} {isa:?} rows={rows} cols={cols} batch={batch} [b={b}, r={r}]: {g} vs {e} (tol {tol})"
                );
            }
        }
    }
}

#[test]
fn matmul_matches_reference() {
    let mut rng = StdRng::seed_from_u64(23);
    for ty in GgmlType::ALL {
        let cols = match ty.block_size() {
            1 => 96,
            32 => 224,
            _ => 768,
        };
        for (rows, batch) in [(1, 1), (37, 1), (67, 3), (33, 17), (5, 4)] {
            check_matmul(ty, rows, cols, batch, &mut rng);
        }
    }
}

#[test]
fn matmul_awkward_batches_and_rows() {
    // Batches on both sides of the GEMM threshold and partial register tiles (rows not a
    // multiple of the tile height, batches not a multiple of its width).
    let mut rng = StdRng::seed_from_u64(29);
    for ty in [
        GgmlType::Q4K,
        GgmlType::Q6K,
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::F32,
        GgmlType::F16,
    ] {
        let cols = match ty.block_size() {
            1 => 67,
            32 => 96,
            _ => 512,
        };
        for batch in 1..=19 {
            let rows = [1, 2, 4, 5, 7, 10][batch % 6];
            check_matmul(ty, rows, cols, batch, &mut rng);
        }
    }
    // k-blocked panels (cols > 1536; the k-quants' integer GEMM blocks past 8192 values, in
    // blocks of 4096: 8960 = 4096 + 4096 + 768).
    check_matmul(GgmlType::Q4K, 5, 8960, 7, &mut rng);
    check_matmul(GgmlType::Q4K, 7, 2560, 6, &mut rng);
    check_matmul(GgmlType::Q4K, 7, 2560, 17, &mut rng);
    check_matmul(GgmlType::Q6K, 5, 4864, 18, &mut rng);
    check_matmul(GgmlType::Q5_0, 4, 1600, 9, &mut rng);
    // Q5_0 k-blocks of 32 blocks, the last one odd (3 blocks: a zero pad block in its pair,
    // after full k-blocks used the same panel rows).
    check_matmul(GgmlType::Q5_0, 4, 2144, 9, &mut rng);
}

#[test]
fn prompt_rows_match_reference_at_every_batch() {
    // `matmul_prompt` takes the GEMM (the k-quants' integer GEMM) for any batch, 1 included.
    let mut rng = StdRng::seed_from_u64(31);
    for ty in [GgmlType::Q4K, GgmlType::Q6K, GgmlType::Q5_0, GgmlType::Q8_0] {
        let cols = if ty.block_size() == 32 { 96 } else { 512 };
        for batch in 1..=9 {
            check_product(
                matmul_prompt_with_isa,
                ty,
                1 + batch % 5,
                cols,
                batch,
                &mut rng,
            );
        }
    }
    check_product(matmul_prompt_with_isa, GgmlType::Q6K, 4, 3072, 3, &mut rng);
}

#[test]
fn matmul_large_shapes_for_the_default_model() {
    // Qwen2.5-0.5B Q4_K_M shapes: ffn_down (Q4_K/Q6_K 896x4864), attn (Q5_0/Q8_0 896x896).
    let mut rng = StdRng::seed_from_u64(29);
    check_matmul(GgmlType::Q4K, 300, 4864, 1, &mut rng);
    check_matmul(GgmlType::Q6K, 129, 4864, 5, &mut rng);
    check_matmul(GgmlType::Q5_0, 257, 896, 1, &mut rng);
    check_matmul(GgmlType::Q8_0, 130, 896, 19, &mut rng);
    check_matmul(GgmlType::F32, 70, 896, 2, &mut rng);
}

#[test]
fn q8_roundtrip_error_bounds() {
    let mut rng = StdRng::seed_from_u64(31);
    for ty in [GgmlType::Q8_0, GgmlType::Q8_1, GgmlType::Q8K] {
        let bs = ty.block_size();
        let n = bs * 40;
        let mut x = randn(&mut rng, n, 2.0);
        x[..bs].fill(0.0); // an all-zero block must roundtrip to zeros
        x[bs + 3] = 100.0; // an outlier block
        let mut q = vec![0u8; ty.row_bytes(n).unwrap()];
        quantize_row(ty, &x, &mut q).unwrap();
        let y = dequant(ty, &q, n);
        for (xb, yb) in x.chunks(bs).zip(y.chunks(bs)) {
            let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            // half a quantization step, plus the f16 rounding of the scale for Q8_0/Q8_1.
            let scale_err = if ty == GgmlType::Q8K {
                1e-6
            } else {
                1.0 / 1024.0
            };
            let bound = amax * (0.5 / 127.0 + scale_err) * 1.0001;
            for (a, b) in xb.iter().zip(yb) {
                assert!((a - b).abs() <= bound, "{ty}: {a} -> {b} (bound {bound})");
            }
        }
    }
    // Q8_K bsums are the group sums of the quants.
    let x = randn(&mut rng, 512, 1.0);
    let mut q = vec![0u8; GgmlType::Q8K.row_bytes(512).unwrap()];
    quantize_row(GgmlType::Q8K, &x, &mut q).unwrap();
    for blk in q.chunks(292) {
        for g in 0..16 {
            let s: i32 = blk[4 + 16 * g..20 + 16 * g]
                .iter()
                .map(|&v| v as i8 as i32)
                .sum();
            let b = i16::from_le_bytes([blk[260 + 2 * g], blk[261 + 2 * g]]) as i32;
            assert_eq!(s, b);
        }
    }
}

#[test]
fn type_table_matches_ggml() {
    let expect = [
        ("F32", 0, 1, 4),
        ("F16", 1, 1, 2),
        ("Q4_0", 2, 32, 18),
        ("Q4_1", 3, 32, 20),
        ("Q5_0", 6, 32, 22),
        ("Q5_1", 7, 32, 24),
        ("Q8_0", 8, 32, 34),
        ("Q8_1", 9, 32, 36),
        ("Q2_K", 10, 256, 84),
        ("Q3_K", 11, 256, 110),
        ("Q4_K", 12, 256, 144),
        ("Q5_K", 13, 256, 176),
        ("Q6_K", 14, 256, 210),
        ("Q8_K", 15, 256, 292),
        ("BF16", 30, 1, 2),
    ];
    for (name, id, bs, ts) in expect {
        let t = GgmlType::from_u32(id).unwrap();
        assert_eq!(
            (t.name(), t.id(), t.block_size(), t.type_size()),
            (name, id, bs, ts)
        );
    }
    assert_eq!(GgmlType::Q4K.row_bytes(4864).unwrap(), 19 * 144);
    assert_eq!(GgmlType::Q4K.vec_dot_type(), GgmlType::Q8K);
    assert_eq!(GgmlType::Q5_0.vec_dot_type(), GgmlType::Q8_0);
    assert_eq!(GgmlType::Q4_1.vec_dot_type(), GgmlType::Q8_1);
    assert_eq!(GgmlType::BF16.vec_dot_type(), GgmlType::F32);
}

#[test]
fn errors_not_panics() {
    for id in [4, 5, 16, 20, 29, 31, 1000, u32::MAX] {
        let e = GgmlType::from_u32(id).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&id.to_string()) && msg.contains("Q4_K"),
            "{msg}"
        );
    }
    assert!(matches!(
        GgmlType::Q4K.row_bytes(896),
        Err(KernelError::NotBlockMultiple {
            cols: 896,
            block: 256,
            ..
        })
    ));
    let mut out = vec![0.0; 32];
    assert!(dequantize_row(GgmlType::Q8_0, &[0u8; 33], &mut out).is_err());
    assert!(dequantize_row(GgmlType::Q8_0, &[0u8; 34], &mut out[..31]).is_err());
    assert!(quantize_row(GgmlType::Q8_0, &out, &mut [0u8; 35]).is_err());
    // k-quants quantize now (ggml's _ref algorithms); a wrong-size buffer is still an error.
    assert!(quantize_row(GgmlType::Q4K, &[0.0; 256], &mut [0u8; 144]).is_ok());
    assert!(matches!(
        quantize_row(GgmlType::Q4K, &[0.0; 256], &mut [0u8; 143]),
        Err(KernelError::BufferSize { .. })
    ));
    assert!(matches!(
        quantize_row(GgmlType::Q6K, &[0.0; 250], &mut [0u8; 210]),
        Err(KernelError::NotBlockMultiple { .. })
    ));
    assert!(vec_dot(GgmlType::Q8_0, 32, &[0u8; 34], &[0u8; 33]).is_err());
    assert!(vec_dot(GgmlType::Q8_0, 32, &[0u8; 30], &[0u8; 34]).is_err());
    assert!(vec_dot(GgmlType::Q4K, 32, &[0u8; 144], &[0u8; 292]).is_err());

    let data = vec![0u8; 2 * 34];
    assert!(QMatRef::new(GgmlType::Q8_0, 3, 32, &data).is_err());
    assert!(QMatRef::new(GgmlType::Q8_0, 2, 31, &data).is_err());
    let w = QMatRef::new(GgmlType::Q8_0, 2, 32, &data).unwrap();
    let mut out = vec![0.0; 2];
    assert!(qwen2_kernels::matmul(&w, &[0.0; 31], 1, &mut out).is_err());
    assert!(qwen2_kernels::matmul(&w, &[0.0; 32], 1, &mut out[..1]).is_err());
    assert!(qwen2_kernels::matmul(&w, &[0.0; 64], 1, &mut out).is_err());
    // A hand-built inconsistent QMatRef is rejected too.
    let bad = QMatRef {
        ty: GgmlType::Q8_0,
        rows: 3,
        cols: 32,
        data: &data,
    };
    assert!(qwen2_kernels::matmul(&bad, &[0.0; 32], 1, &mut [0.0; 3]).is_err());
    // Zero-sized shapes are fine.
    let empty = QMatRef::new(GgmlType::Q4K, 0, 256, &[]).unwrap();
    qwen2_kernels::matmul(&empty, &[0.0; 256], 1, &mut []).unwrap();
    qwen2_kernels::matmul(&w, &[], 0, &mut []).unwrap();
}

#[test]
fn isa_name_is_reported() {
    let name = qwen2_kernels::isa_name();
    assert!(
        [
            "scalar",
            "avx2",
            "avx2+vnni",
            "avx2+bf16",
            "avx2+vnni+bf16",
            "avx512vnni"
        ]
        .contains(&name),
        "{name}"
    );
    // The VNNI and BF16 forms are named where they run.
    let avx2 = qwen2_kernels::detected_isa() == Isa::Avx2;
    assert_eq!(name.contains("+vnni"), avx2 && qwen2_kernels::vnni());
    assert_eq!(name.contains("+bf16"), avx2 && qwen2_kernels::bf16());
}

#[test]
fn qwen2_isa_env_lowers_dispatch() {
    // Run e.g. `QWEN2_ISA=scalar cargo test -p qwen2-kernels` to route default dispatch through
    // the scalar kernels; this checks the override took effect.
    let isa = qwen2_kernels::detected_isa();
    assert!(isa.is_available());
    match std::env::var("QWEN2_ISA").as_deref() {
        Ok("scalar") => assert_eq!(isa, Isa::Scalar),
        Ok("avx2") => assert!(isa <= Isa::Avx2),
        _ => {}
    }
}
