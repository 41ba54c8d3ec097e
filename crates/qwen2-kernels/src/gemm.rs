//! Prompt-row GEMM ([`crate::matmul_prompt`], any batch; [`crate::matmul`] sends batches >=
//! [`panel_min_batch`] here): weights are dequantized once per row chunk into an f32 panel
//! that stays in L2, and an f32 register-tile microkernel computes `TILE_R x TILE_C` dot
//! products per pass, so each weight load feeds `TILE_C` activations and each activation load
//! feeds `TILE_R` rows. The dequantization cost is amortized over the whole batch; the
//! activations are used unquantized (more accurate than the Q8 decode path).
//!
//! On AVX2, Q4_K, Q6_K and Q5_0 (also repacked) take the integer GEMM of `crate::qgemm`
//! instead: 8-bit activations, `vpmaddubsw` tiles on unpacked panels, ~1.3-1.5x the f32 panel
//! rate on these formats (llama.cpp's prompt path quantizes activations the same way).
//! BF16 weights on AVX-512 BF16 take `crate::bf16dot` (bf16 activations, `vdpbf16ps`).
//!
//! Batch invariance (issue 5): each output has its own 8-lane accumulator, reduced by a
//! horizontal sum that never mixes accumulators, then the scalar k-tail, per k-block of a
//! length fixed by `cols` alone; so a row's result is bitwise the same whatever the batch
//! size, its place in a tile (`C < TILE_C` tails included) or the thread count
//! (tests/batch_invariance.rs).
//!
//! Scalar twins: [`f32_tile_scalar`] (microkernel) and `scalar::dequantize` (panels).

use crate::isa::Isa;
use crate::matmul::{OutPtr, QMatRef};
use crate::{scalar, GgmlType};
use rayon::prelude::*;

/// Weight rows per microkernel tile.
pub(crate) const TILE_R: usize = 3;
/// Activation rows per microkernel tile.
pub(crate) const TILE_C: usize = 4;
/// `tile[r][c]`: dot of weight row `r` with activation row `c` of the tile.
pub(crate) type Tile = [[f32; TILE_C]; TILE_R];
/// Smallest batch that takes the panel path for `ty`: below it, per-row `vec_dot`s win,
/// because dequantizing the panel costs about as much as a few quantized dot products
/// (measured on Zen with `examples/matmul_bench`: Q5_0/Q8_0 break even near batch 4, the
/// k-quants, whose integer dots are cheaper, near 16).
pub(crate) fn panel_min_batch(ty: GgmlType) -> usize {
    if ty.block_size() == crate::types::QK_K {
        16
    } else {
        4
    }
}

pub(crate) type TileFn = fn(usize, [&[f32]; TILE_R], &[&[f32]]) -> Tile;
/// Dequantize whole blocks: `(src bytes, dst values)`, lengths matching.
pub(crate) type DequantFn = fn(&[u8], &mut [f32]);

/// Reference microkernel: `out[r][c] = sum_k w[r][k] * x[c][k]` (f32, sequential).
pub(crate) fn f32_tile_scalar(k: usize, w: [&[f32]; TILE_R], x: &[&[f32]]) -> Tile {
    let mut out = [[0.0f32; TILE_C]; TILE_R];
    for (r, o) in out.iter_mut().enumerate() {
        for (c, xc) in x.iter().take(TILE_C).enumerate() {
            o[c] = w[r][..k].iter().zip(&xc[..k]).map(|(a, b)| a * b).sum();
        }
    }
    out
}

fn kernels(isa: Isa, ty: GgmlType) -> (TileFn, DequantFn) {
    #[cfg(target_arch = "x86_64")]
    {
        if isa >= Isa::Avx2 {
            use crate::x86::avx2_gemm;
            let deq = avx2_gemm::dequantize_fn(ty).unwrap_or(scalar_dequant(ty));
            return (avx2_gemm::f32_tile, deq);
        }
    }
    let _ = isa;
    (f32_tile_scalar, scalar_dequant(ty))
}

fn scalar_dequant(ty: GgmlType) -> DequantFn {
    macro_rules! table {
        ($($t:ident),*) => {
            match ty {
                $(GgmlType::$t => |s, d| scalar::dequantize(GgmlType::$t, s, d),)*
            }
        };
    }
    table!(
        F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2K, Q3K, Q4K, Q5K, Q6K, Q8K, Q5_0R8,
        Q4KR
    )
}

/// `out[b * rows + r] = W[r] . x[b]` via dequantized panels. Shapes were validated by the
/// caller (`matmul_impl`): `x.len() == batch * cols`, `out.len() == batch * rows`, and
/// `w.data` holds `rows` rows of `cols` values; `rows, cols, batch > 0`.
pub(crate) fn panel_matmul(isa: Isa, w: &QMatRef, x: &[f32], batch: usize, out: &mut [f32]) {
    if crate::qgemm::supports(isa, w.ty) {
        crate::qgemm::matmul(isa, w, x, batch, out);
        return;
    }
    if crate::bf16dot::applies(isa, w.ty, w.cols) {
        crate::bf16dot::matmul(w, x, batch, out);
        return;
    }
    let (rows, cols) = (w.rows, w.cols);
    let (tile, deq) = kernels(isa, w.ty);
    let bs = w.ty.block_size();
    let ts = w.ty.type_size();
    // k-blocking keeps a tile's activation slices (TILE_C * kc floats) in L1.
    let kc = if cols <= 1536 {
        cols
    } else {
        (1024 / bs).max(1) * bs
    };
    // Q5_0R8 rows may only be cut at multiples of 8 blocks (`crate::repack`): 1024 values are.
    debug_assert!(kc == cols || kc % 256 == 0);
    // ~64 KiB of panel per chunk (L2), a multiple of TILE_R rows, and enough chunks to balance.
    let threads = rayon::current_num_threads().max(1);
    let by_cache = ((64 << 10) / (kc * 4)).max(TILE_R);
    let by_par = rows.div_ceil(threads * 4).max(TILE_R);
    let chunk = (by_cache.min(by_par) / TILE_R).max(1) * TILE_R;
    let n_chunks = rows.div_ceil(chunk);
    let optr = OutPtr(out.as_mut_ptr());
    let task = |ci: usize, panel: &mut Vec<f32>| {
        let r0 = ci * chunk;
        let r1 = (r0 + chunk).min(rows);
        let nr = r1 - r0;
        // Old contents are fine: each row's first `kl` values are dequantized before use.
        if panel.len() < nr * kc {
            panel.resize(nr * kc, 0.0);
        }
        let mut k0 = 0;
        while k0 < cols {
            let k1 = (k0 + kc).min(cols);
            let kl = k1 - k0;
            for r in 0..nr {
                let src = &w.row(r0 + r)[k0 / bs * ts..k1 / bs * ts];
                deq(src, &mut panel[r * kc..r * kc + kl]);
            }
            let mut c0 = 0;
            while c0 < batch {
                let c1 = (c0 + TILE_C).min(batch);
                let mut xs: [&[f32]; TILE_C] = [&[]; TILE_C];
                for c in c0..c1 {
                    xs[c - c0] = &x[c * cols + k0..c * cols + k1];
                }
                let mut rt = 0;
                while rt < nr {
                    // Rows past the chunk repeat its last row; their results are dropped.
                    let wr: [&[f32]; TILE_R] = std::array::from_fn(|i| {
                        let r = (rt + i).min(nr - 1);
                        &panel[r * kc..r * kc + kl]
                    });
                    let t = tile(kl, wr, &xs[..c1 - c0]);
                    for (i, tr) in t.iter().enumerate().take((nr - rt).min(TILE_R)) {
                        let r = r0 + rt + i;
                        for (c, &v) in tr.iter().enumerate().take(c1 - c0) {
                            let idx = (c0 + c) * rows + r;
                            // SAFETY: c0 + c < batch and r < rows, so idx < out.len()
                            // (== batch * rows, checked by the caller); row chunks are
                            // disjoint across tasks, and `out` is mutably borrowed for the
                            // whole parallel section.
                            unsafe {
                                let p = optr.get().add(idx);
                                if k0 == 0 {
                                    *p = v;
                                } else {
                                    *p += v;
                                }
                            }
                        }
                    }
                    rt += TILE_R;
                }
                c0 = c1;
            }
            k0 = k1;
        }
    };
    (0..n_chunks).into_par_iter().for_each(|ci| {
        // Reused: a fresh zeroed panel per task is a `memset` as large as the panel (the
        // LM head of a short prompt's last row: ~1% of MMLU). A nested call on a worker that
        // stole this task while inside one takes a fresh panel.
        PANEL.with(|cell| match cell.try_borrow_mut() {
            Ok(mut panel) => task(ci, &mut panel),
            Err(_) => task(ci, &mut Vec::new()),
        })
    });
}

thread_local! {
    static PANEL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::available_isas;

    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed >> 33
    }

    fn randf(seed: &mut u64, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| (lcg(seed) % 20001) as f32 / 10000.0 - 1.0)
            .collect()
    }

    #[test]
    fn simd_tile_matches_scalar_twin() {
        let mut seed = 7;
        for isa in available_isas() {
            for k in [0usize, 1, 7, 8, 9, 31, 63, 255, 1024, 1031] {
                let w: Vec<Vec<f32>> = (0..TILE_R).map(|_| randf(&mut seed, k)).collect();
                let x: Vec<Vec<f32>> = (0..TILE_C).map(|_| randf(&mut seed, k)).collect();
                for nc in 1..=TILE_C {
                    let wr: [&[f32]; TILE_R] = std::array::from_fn(|r| &w[r][..]);
                    let xs: Vec<&[f32]> = x[..nc].iter().map(|v| &v[..]).collect();
                    let got = kernels(isa, GgmlType::F32).0(k, wr, &xs);
                    let want = f32_tile_scalar(k, wr, &xs);
                    for r in 0..TILE_R {
                        for c in 0..nc {
                            let tol = 1e-5 * (k as f32 + 1.0);
                            assert!(
                                (got[r][c] - want[r][c]).abs() <= tol,
                                "{isa:?} k={k} nc={nc} [{r}][{c}]: {} vs {}",
                                got[r][c],
                                want[r][c]
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn simd_dequantize_matches_scalar_twin() {
        let mut seed = 11;
        for isa in available_isas() {
            for ty in GgmlType::ALL {
                for nblocks in [0usize, 1, 3, 7] {
                    let n = nblocks * ty.block_size();
                    let mut src: Vec<u8> = (0..nblocks * ty.type_size())
                        .map(|_| lcg(&mut seed) as u8)
                        .collect();
                    // Finite f16/f32 scales wherever a block holds them.
                    let scale_offs: &[usize] = match ty {
                        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
                        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q8_1 => &[0, 2],
                        GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
                        GgmlType::Q2K => &[80, 82],
                        GgmlType::Q3K => &[108],
                        GgmlType::Q6K => &[208],
                        _ => &[],
                    };
                    for b in src.chunks_exact_mut(ty.type_size()) {
                        for &o in scale_offs {
                            let v = half::f16::from_f32((lcg(&mut seed) % 100) as f32 / 1000.0);
                            b[o..o + 2].copy_from_slice(&v.to_bits().to_le_bytes());
                        }
                        if matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
                            b.fill(0x3c);
                        }
                        if ty == GgmlType::Q8K {
                            b[..4].copy_from_slice(&0.01f32.to_le_bytes());
                        }
                    }
                    let mut got = vec![f32::NAN; n];
                    let mut want = vec![f32::NAN; n];
                    kernels(isa, ty).1(&src, &mut got);
                    scalar::dequantize(ty, &src, &mut want);
                    for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - e).abs() <= 1e-6 * e.abs().max(1.0),
                            "{ty} {isa:?} value {i}: {g} vs {e}"
                        );
                    }
                }
            }
        }
    }
}
