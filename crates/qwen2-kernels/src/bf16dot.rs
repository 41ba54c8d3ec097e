//! BF16 weights (Hugging Face safetensors checkpoints) on AVX-512 BF16 (`vdpbf16ps`: AMD Zen 4,
//! Intel Cooper Lake / Sapphire Rapids): the activations are rounded to bf16 once per call
//! (round to nearest even, ggml's `GGML_FP32_TO_BF16`), and each instruction multiplies 16
//! value pairs into 8 f32 lanes, twice the products per cycle of the f32 FMA path, with no
//! widening of the weights. This is what llama.cpp does for BF16 weights, and what
//! transformers does when it runs a bf16 checkpoint in bf16 (its activations are bf16
//! throughout). `--exact` converts weights to f32 and never comes here.
//!
//! One arithmetic for every path, so prompt rows, decode rows (alone or batched), `vec_dot`
//! and any thread count give bitwise the same result for a (weight row, activation row) pair.
//! For a pair of `n` values (`n % 16 == 0`) in steps of 16: two accumulators of 8 f32 lanes,
//! step `s` into accumulator `s % 2`; in a step, lane `i` adds the product of values
//! `16 s + 2 i + 1` (first) and then of `16 s + 2 i`, each sum rounded to f32 once, with
//! bf16 subnormal inputs and f32 subnormal sums taken as zero (the instruction's DAZ/FTZ).
//! Then the two accumulators are added lane-wise and the 8 lanes summed as
//! `((v0 + v4) + (v2 + v6)) + ((v1 + v5) + (v3 + v7))`. [`dot_scalar`] is the twin; a test
//! checks that the CPU's `vdpbf16ps` agrees with it bit for bit (it does on Zen 4; Intel's
//! documented semantics are the same: odd product first, each sum rounded, DAZ and FTZ).
//!
//! Rows of other widths (`n % 16 != 0`) and CPUs without AVX-512 BF16 keep the f32 path
//! (`QWEN2_NO_BF16=1` forces it, for A/B runs).

use crate::decode::ActRows;
use crate::isa::{self, Isa};
use crate::matmul::{OutPtr, QMatRef};
use crate::GgmlType;
use rayon::prelude::*;
use std::cell::RefCell;

/// Values per step: one `vdpbf16ps` on 256 bits, 8 lanes of 2 products.
pub(crate) const STEP: usize = 16;
/// Activation rows per [`decode_tile`] call at most (`crate::decode`'s tile).
const MAX_DECODE_ROWS: usize = 16;

/// Whether `ty` rows of `cols` values take this path on `isa` (`isa::bf16` decides the CPU
/// side): prompt rows in `crate::gemm` ([`matmul`]), decode rows in `crate::decode`
/// ([`decode_tile`]), `vec_dot` in `crate::isa`.
pub(crate) fn applies(isa: Isa, ty: GgmlType, cols: usize) -> bool {
    ty == GgmlType::BF16 && cols.is_multiple_of(STEP) && isa >= Isa::Avx2 && isa::bf16()
}

/// ggml's `GGML_FP32_TO_BF16`: quiet NaNs, otherwise round to nearest even.
#[inline]
pub(crate) fn round_bf16(v: f32) -> u16 {
    crate::scalar::f32_to_bf16_bits(v)
}

/// `x` rounded to bf16 by [`round_bf16`] into `out` as little-endian bytes (`2 * x.len()`):
/// `scalar::quantize(BF16)`, bitwise.
pub(crate) fn round_row(x: &[f32], out: &mut [u8]) {
    assert_eq!(2 * x.len(), out.len(), "round_row lengths");
    #[cfg(target_arch = "x86_64")]
    if isa::bf16() {
        return crate::x86::avx512_bf16::round_row(x, out);
    }
    for (o, &v) in out.chunks_exact_mut(2).zip(x) {
        o.copy_from_slice(&round_bf16(v).to_le_bytes());
    }
}

/// A bf16 as the instruction reads it: subnormals are zero (DAZ).
fn daz(b: u16) -> f64 {
    if b & 0x7f80 == 0 {
        0.0
    } else {
        f32::from_bits((b as u32) << 16) as f64
    }
}

/// One rounded accumulation `acc + w * x`, the product exact, subnormal results flushed (FTZ).
/// In f64 the product of two bf16 is exact and the sum, rounded once more to f32, is the
/// correctly rounded f32 sum (a second rounding can only matter when the exact sum spans more
/// than 53 bits, and then the product is far below half an f32 ulp of `acc`).
fn step(acc: f32, w: u16, x: u16) -> f32 {
    let a = if acc.is_subnormal() { 0.0 } else { acc as f64 };
    let r = (a + daz(w) * daz(x)) as f32;
    if r.is_subnormal() {
        0.0f32.copysign(r)
    } else {
        r
    }
}

/// The 8-lane horizontal sum of the SIMD kernels, in their order.
pub(crate) fn hsum8(v: [f32; 8]) -> f32 {
    let s = [v[0] + v[4], v[1] + v[5], v[2] + v[6], v[3] + v[7]];
    (s[0] + s[2]) + (s[1] + s[3])
}

/// The scalar twin (see the module docs): `n` values of the little-endian bf16 rows `w` and
/// `x`, `n % 16 == 0`.
pub(crate) fn dot_scalar(n: usize, w: &[u8], x: &[u8]) -> f32 {
    assert!(n.is_multiple_of(STEP) && w.len() >= 2 * n && x.len() >= 2 * n);
    let at = |v: &[u8], j: usize| u16::from_le_bytes([v[2 * j], v[2 * j + 1]]);
    let mut acc = [[0.0f32; 8]; 2];
    for s in 0..n / STEP {
        let a = &mut acc[s % 2];
        for (i, lane) in a.iter_mut().enumerate() {
            let k = STEP * s + 2 * i;
            *lane = step(*lane, at(w, k + 1), at(x, k + 1));
            *lane = step(*lane, at(w, k), at(x, k));
        }
    }
    hsum8(std::array::from_fn(|i| acc[0][i] + acc[1][i]))
}

/// `vec_dot` for BF16 weights against f32 activation bytes (the type's `vec_dot_type`) on this
/// path: the activations rounded to bf16 as [`matmul`] rounds them, then the same arithmetic.
pub(crate) fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let x: Vec<f32> = a[..4 * n]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let mut xb = vec![0u8; 2 * n];
    round_row(&x, &mut xb);
    let mut out = [0.0f32];
    dots(n, w, &[&xb], 1, &mut out);
    out[0]
}

/// The decode-row tile of `crate::decode` (its `DotTileFn`), for BF16 weights whose activation
/// rows it rounded to bf16 (`round_row`): `out[r * nc + c]` for the `w.len() / rb` weight rows
/// and the `nc = acts.rows()` activation rows, one weight row at a time (one sequential stream:
/// decode reads the weights from memory once) against up to 4 activation rows.
pub(crate) fn decode_tile(n: usize, w: &[u8], rb: usize, acts: &ActRows, out: &mut [f32]) {
    let nc = acts.rows();
    assert!(rb == 2 * n && w.len().is_multiple_of(rb) && out.len() == w.len() / rb * nc);
    assert!(nc <= MAX_DECODE_ROWS, "decode tile of {nc} activation rows");
    let mut rows: [&[u8]; MAX_DECODE_ROWS] = [&[]; MAX_DECODE_ROWS];
    for (d, a) in rows.iter_mut().zip(acts.q.chunks_exact(acts.stride)) {
        *d = &a[..2 * n];
    }
    let mut t = [0.0f32; 4];
    for (r, wr) in w.chunks_exact(rb).enumerate() {
        for (g, xs) in rows[..nc].chunks(4).enumerate() {
            let m = xs.len();
            dots(n, wr, xs, 1, &mut t[..m]);
            out[r * nc + 4 * g..][..m].copy_from_slice(&t[..m]);
        }
    }
}

/// `out[r * xs.len() + c] = dot(w row r, xs[c])` for the `w.len() / (2 n)` rows in `w` (`xs`:
/// little-endian bf16 rows), up to 4 activation rows, `rows_per` (1 to 4) weight rows side by
/// side.
fn dots(n: usize, w: &[u8], xs: &[&[u8]], rows_per: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa::bf16() {
        return crate::x86::avx512_bf16::dots(n, w, xs, rows_per, out);
    }
    let _ = rows_per;
    let nc = xs.len();
    for (r, wr) in w.chunks_exact(2 * n).enumerate() {
        for (c, x) in xs.iter().enumerate() {
            out[r * nc + c] = dot_scalar(n, wr, x);
        }
    }
}

thread_local! {
    static ACT_BF16: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// `out[b * rows + r] = W[r] · x[b]` for prompt rows (decode rows: [`decode_tile`] through
/// `crate::decode`, the same arithmetic). Shapes were checked by the caller and [`applies`]
/// holds; `rows, cols, batch > 0`.
pub(crate) fn matmul(w: &QMatRef, x: &[f32], batch: usize, out: &mut [f32]) {
    ACT_BF16.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => run(w, x, batch, out, &mut buf),
        // A nested call on a rayon worker that stole this task while inside one.
        Err(_) => run(w, x, batch, out, &mut Vec::new()),
    });
}

fn run(w: &QMatRef, x: &[f32], batch: usize, out: &mut [f32], xb: &mut Vec<u8>) {
    let (rows, cols) = (w.rows, w.cols);
    xb.resize(2 * batch * cols, 0);
    if batch >= 8 {
        xb.par_chunks_mut(2 * cols)
            .zip(x.par_chunks(cols))
            .for_each(|(o, v)| round_row(v, o));
    } else {
        round_row(x, xb);
    }
    let xb: &[u8] = xb;
    let rb = 2 * cols;
    let threads = rayon::current_num_threads().max(1);
    // Row chunks: ~4 per thread for balance, at most ~256 KiB of weights (L2) so a chunk is
    // read from memory once and reused by every activation tile; at least 16 rows.
    let by_cache = ((256 << 10) / rb).max(16);
    let by_par = rows.div_ceil(threads * 4).max(16);
    let chunk = by_cache.min(by_par);
    // Activation rows per tile: 4 (the kernel's widest), fewer for small batches.
    const TC: usize = 4;
    let n_chunks = rows.div_ceil(chunk);
    let optr = OutPtr(out.as_mut_ptr());
    let task = |ci: usize| {
        let r0 = ci * chunk;
        let r1 = (r0 + chunk).min(rows);
        let wc = &w.data[r0 * rb..r1 * rb];
        let nr = r1 - r0;
        let mut tile = vec![0.0f32; nr * TC];
        let mut c0 = 0;
        while c0 < batch {
            let c1 = (c0 + TC).min(batch);
            let nc = c1 - c0;
            let xs: [&[u8]; TC] =
                std::array::from_fn(|i| &xb[2 * (c0 + i).min(c1 - 1) * cols..][..2 * cols]);
            let xs = &xs[..nc];
            // Four weight rows by four activation rows: 16 accumulators and the 8 operands of a
            // step fit the 32 registers; the chunk's rows are in L2 after the first tile.
            dots(cols, wc, xs, 4, &mut tile[..nr * nc]);
            for (r, tr) in tile[..nr * nc].chunks_exact(nc).enumerate() {
                for (c, &v) in tr.iter().enumerate() {
                    // SAFETY: c0 + c < batch and r0 + r < rows, so the index is inside `out`
                    // (len batch * rows, checked by the caller); row chunks are disjoint
                    // across tasks and `out` is mutably borrowed for the parallel section.
                    unsafe { *optr.get().add((c0 + c) * rows + r0 + r) = v };
                }
            }
            c0 = c1;
        }
    };
    if n_chunks == 1 {
        task(0);
    } else {
        (0..n_chunks).into_par_iter().for_each(task);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(s: &mut u64) -> u64 {
        *s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *s >> 33
    }

    #[test]
    fn twin_steps_round_once_and_flush_subnormals() {
        let one = round_bf16(1.0);
        // Odd product first: 1e8 + bf16(-1e8) (= -100139008) is exact, then + 1.
        assert_eq!(step(step(1e8, round_bf16(-1e8), one), one, one), -139007.0);
        // A subnormal input or accumulator is zero; a subnormal sum is flushed.
        assert_eq!(step(0.0, 0x0040, one), 0.0);
        assert_eq!(step(1e-39, 0, 0), 0.0);
        assert_eq!(step(1.5e-38, round_bf16(-1.4e-38), one), 0.0);
        // A subnormal product still counts against a normal accumulator.
        let p = round_bf16(1e-20);
        assert!(step(1.2e-38, p, p) > 1.2e-38);
    }

    #[test]
    fn round_row_is_ggml_rounding() {
        let mut s = 5u64;
        let mut x: Vec<f32> = (0..1000)
            .map(|_| f32::from_bits(lcg(&mut s) as u32 ^ ((lcg(&mut s) as u32) << 31)))
            .collect();
        x.extend([
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::MAX,
            f32::MIN_POSITIVE,
            1.0 + f32::EPSILON,
            f32::from_bits(0x3f80_8000), // a tie: stays even
            f32::from_bits(0x3f81_8000), // a tie: rounds up to even
            f32::from_bits(0x7f7f_ffff),
        ]);
        let mut got = vec![0u8; 2 * x.len()];
        round_row(&x, &mut got);
        let mut want = vec![0u8; 2 * x.len()];
        crate::scalar::quantize(GgmlType::BF16, &x, &mut want);
        assert_eq!(got, want);
    }

    #[test]
    fn simd_dots_are_bitwise_the_twin() {
        if !isa::bf16() {
            eprintln!("skipped: no AVX-512 BF16 on this CPU");
            return;
        }
        let mut s = 9u64;
        for n in [16usize, 32, 48, 64, 80, 96, 112, 896, 4864] {
            for nr in [1usize, 2, 3, 5, 8] {
                for nc in 1..=4 {
                    let mag = |s: &mut u64| 10f32.powi((lcg(s) % 7) as i32 - 3);
                    let w: Vec<u8> = (0..nr * n)
                        .flat_map(|_| {
                            let v = ((lcg(&mut s) % 20001) as f32 / 10000.0 - 1.0) * mag(&mut s);
                            round_bf16(v).to_le_bytes()
                        })
                        .collect();
                    let xv: Vec<Vec<u8>> = (0..nc)
                        .map(|_| {
                            (0..n)
                                .flat_map(|_| {
                                    let v = ((lcg(&mut s) % 20001) as f32 / 10000.0 - 1.0)
                                        * mag(&mut s);
                                    round_bf16(v).to_le_bytes()
                                })
                                .collect()
                        })
                        .collect();
                    let xs: Vec<&[u8]> = xv.iter().map(|v| &v[..]).collect();
                    for rows_per in 1..=4 {
                        let mut got = vec![0.0f32; nr * nc];
                        dots(n, &w, &xs, rows_per, &mut got);
                        for r in 0..nr {
                            for c in 0..nc {
                                let want = dot_scalar(n, &w[r * 2 * n..], xs[c]);
                                assert_eq!(
                                    got[r * nc + c].to_bits(),
                                    want.to_bits(),
                                    "n {n} rows {nr} cols {nc} side by side {rows_per} [{r}][{c}]"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
