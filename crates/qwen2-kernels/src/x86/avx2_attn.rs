//! AVX2 + FMA + F16C block operations of `attention.rs` (scalar twins: `attention::scalar`),
//! and SwiGLU's `silu_mul` (`activation.rs`), which shares the softmax's vector `exp`.
//!
//! Only `attention::Kernel::Avx2` calls these, and it is picked only after `Isa::Avx2` was
//! found available and only for `head_dim % 8 == 0`. Each safe entry point checks the slice
//! lengths its pointer loops rely on, so a caller bug panics instead of reading out of bounds.
//!
//! Per-element arithmetic is independent of where an element sits in a register group (every
//! score is one FMA chain over `d`, every `acc` element one FMA chain over keys, sums are
//! lane-wise over block-relative positions), which is what keeps results batch invariant.

use std::arch::x86_64::*;

use crate::attention::{scalar, KvData, KEY_BLOCK as KB, Q8_BLOCK, Q8_BLOCK_BYTES};

pub(crate) fn load_rows(
    kv: KvData<'_>,
    start: usize,
    n: usize,
    stride: usize,
    hd: usize,
    dst: &mut [f32],
) {
    assert!(hd.is_multiple_of(8) && dst.len() >= n * hd);
    match kv {
        KvData::F16(s) => {
            for (r, d) in dst[..n * hd].chunks_exact_mut(hd).enumerate() {
                let src = &s[start + r * stride..][..hd];
                // SAFETY: avx2+f16c available (module contract); `src` and `d` hold `hd`
                // values, a multiple of 8.
                unsafe { f16_row(src.as_ptr() as *const u16, hd, d.as_mut_ptr()) }
            }
        }
        KvData::Q8_0(s)
            if start.is_multiple_of(Q8_BLOCK)
                && stride.is_multiple_of(Q8_BLOCK)
                && hd.is_multiple_of(Q8_BLOCK) =>
        {
            let row_bytes = hd / Q8_BLOCK * Q8_BLOCK_BYTES;
            for (r, d) in dst[..n * hd].chunks_exact_mut(hd).enumerate() {
                let at = (start + r * stride) / Q8_BLOCK * Q8_BLOCK_BYTES;
                let src = &s[at..at + row_bytes];
                // SAFETY: avx2 available; `src` holds hd/32 whole blocks and `d` hd values.
                unsafe { q8_row(src.as_ptr(), hd, d.as_mut_ptr()) }
            }
        }
        // f32 is a copy; Q8_0 head slices that start inside a block (head_dim < 32) take the
        // scalar reader. Both are exact, so the values are the same either way.
        _ => scalar::load_rows(kv, start, n, stride, hd, dst),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_row(src: *const u16, hd: usize, dst: *mut f32) {
    for c in (0..hd).step_by(8) {
        let h = _mm_loadu_si128(src.add(c) as *const __m128i);
        _mm256_storeu_ps(dst.add(c), _mm256_cvtph_ps(h));
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_row(src: *const u8, hd: usize, dst: *mut f32) {
    for b in 0..hd / Q8_BLOCK {
        let blk = src.add(b * Q8_BLOCK_BYTES);
        let h = std::ptr::read_unaligned(blk as *const u16);
        let d = _mm256_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32))));
        for c in 0..4 {
            let q = _mm_loadl_epi64(blk.add(2 + 8 * c) as *const __m128i);
            let x = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
            _mm256_storeu_ps(dst.add(b * Q8_BLOCK + 8 * c), _mm256_mul_ps(d, x));
        }
    }
}

/// `[nk, hd]` → `[hd, KEY_BLOCK]` by 8×8 register transposes.
pub(crate) fn pack_keys(kb: &[f32], nk: usize, hd: usize, kt: &mut [f32]) {
    assert!(nk.is_multiple_of(8) && nk <= KB && hd.is_multiple_of(8));
    assert!(kb.len() >= nk * hd && kt.len() >= hd * KB);
    // SAFETY: avx2 available; the loops stay inside the lengths asserted above.
    unsafe { pack_keys_kernel(kb.as_ptr(), nk, hd, kt.as_mut_ptr()) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn pack_keys_kernel(kb: *const f32, nk: usize, hd: usize, kt: *mut f32) {
    for j in (0..nk).step_by(8) {
        for d in (0..hd).step_by(8) {
            let r = |i: usize| _mm256_loadu_ps(kb.add((j + i) * hd + d));
            let (r0, r1, r2, r3) = (r(0), r(1), r(2), r(3));
            let (r4, r5, r6, r7) = (r(4), r(5), r(6), r(7));
            let t0 = _mm256_unpacklo_ps(r0, r1);
            let t1 = _mm256_unpackhi_ps(r0, r1);
            let t2 = _mm256_unpacklo_ps(r2, r3);
            let t3 = _mm256_unpackhi_ps(r2, r3);
            let t4 = _mm256_unpacklo_ps(r4, r5);
            let t5 = _mm256_unpackhi_ps(r4, r5);
            let t6 = _mm256_unpacklo_ps(r6, r7);
            let t7 = _mm256_unpackhi_ps(r6, r7);
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let w = |i: usize, x: __m256| _mm256_storeu_ps(kt.add((d + i) * KB + j), x);
            w(0, _mm256_permute2f128_ps::<0x20>(u0, u4));
            w(1, _mm256_permute2f128_ps::<0x20>(u1, u5));
            w(2, _mm256_permute2f128_ps::<0x20>(u2, u6));
            w(3, _mm256_permute2f128_ps::<0x20>(u3, u7));
            w(4, _mm256_permute2f128_ps::<0x31>(u0, u4));
            w(5, _mm256_permute2f128_ps::<0x31>(u1, u5));
            w(6, _mm256_permute2f128_ps::<0x31>(u2, u6));
            w(7, _mm256_permute2f128_ps::<0x31>(u3, u7));
        }
    }
}

/// Score GEMM: tiles of up to 6 queries × 16 keys, 12 accumulators.
pub(crate) fn scores(qs: &[f32], nq: usize, hd: usize, kt: &[f32], nk: usize, s: &mut [f32]) {
    assert!(nk.is_multiple_of(16) && nk <= KB);
    assert!(qs.len() >= nq * hd && kt.len() >= hd * KB && s.len() >= nq * KB);
    let (q, k, o) = (qs.as_ptr(), kt.as_ptr(), s.as_mut_ptr());
    // Tiles as even as possible (7 = 4 + 3, not 6 + 1): a 1-query tile has only two
    // accumulator chains and runs at FMA latency.
    let n_tiles = nq.div_ceil(6);
    let mut i = 0;
    for tile in 0..n_tiles {
        let m = (nq - i) / (n_tiles - tile);
        for j in (0..nk).step_by(16) {
            // SAFETY: avx2+fma available; rows i..i+m of qs/s and columns j..j+16 (<= KB) of
            // kt/s are in bounds by the asserts above.
            unsafe {
                let (q, k, o) = (q.add(i * hd), k.add(j), o.add(i * KB + j));
                match m {
                    6 => scores_tile::<6>(q, hd, k, o),
                    5 => scores_tile::<5>(q, hd, k, o),
                    4 => scores_tile::<4>(q, hd, k, o),
                    3 => scores_tile::<3>(q, hd, k, o),
                    2 => scores_tile::<2>(q, hd, k, o),
                    _ => scores_tile::<1>(q, hd, k, o),
                }
            }
        }
        i += m;
    }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn scores_tile<const M: usize>(q: *const f32, hd: usize, kt: *const f32, s: *mut f32) {
    let mut acc = [[_mm256_setzero_ps(); 2]; M];
    for d in 0..hd {
        let k0 = _mm256_loadu_ps(kt.add(d * KB));
        let k1 = _mm256_loadu_ps(kt.add(d * KB + 8));
        for (i, a) in acc.iter_mut().enumerate() {
            let qb = _mm256_broadcast_ss(&*q.add(i * hd + d));
            a[0] = _mm256_fmadd_ps(qb, k0, a[0]);
            a[1] = _mm256_fmadd_ps(qb, k1, a[1]);
        }
    }
    for (i, a) in acc.iter().enumerate() {
        _mm256_storeu_ps(s.add(i * KB), a[0]);
        _mm256_storeu_ps(s.add(i * KB + 8), a[1]);
    }
}

pub(crate) fn block_softmax(s: &mut [f32], lo: usize, hi: usize) -> (f32, f32) {
    assert!(lo < hi && hi <= KB && s.len() >= KB);
    // SAFETY: avx2+fma available; the 8-lane groups covering lo..hi lie inside s[..KB]
    // (KB is a multiple of 8).
    unsafe {
        let m = max_kernel(s.as_ptr(), lo, hi);
        (m, softmax_kernel(s.as_mut_ptr(), lo, hi, m))
    }
}

/// Lanes of the 8-lane group at `j` that hold keys `lo..hi`, as an all-ones mask.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn lanes_inside(j: usize, lo: usize, hi: usize) -> __m256 {
    let idx = _mm256_add_epi32(
        _mm256_set1_epi32(j as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    );
    let (vlo, vhi) = (
        _mm256_set1_epi32(lo as i32 - 1),
        _mm256_set1_epi32(hi as i32),
    );
    _mm256_castsi256_ps(_mm256_and_si256(
        _mm256_cmpgt_epi32(idx, vlo),
        _mm256_cmpgt_epi32(vhi, idx),
    ))
}

/// The max of keys `lo..hi` (exact in any order, so lane-wise then across lanes).
#[target_feature(enable = "avx2,fma")]
unsafe fn max_kernel(s: *const f32, lo: usize, hi: usize) -> f32 {
    let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut m = ninf;
    for j in (lo / 8 * 8..hi).step_by(8) {
        let x = _mm256_blendv_ps(ninf, _mm256_loadu_ps(s.add(j)), lanes_inside(j, lo, hi));
        m = _mm256_max_ps(m, x);
    }
    let h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)))
}

/// `p = exp(s - m)` on keys `lo..hi` (zero on the other lanes of the 8-lane groups that cover
/// them), summed lane-wise by block-relative position, then horizontally.
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_kernel(s: *mut f32, lo: usize, hi: usize, m: f32) -> f32 {
    let vm = _mm256_set1_ps(m);
    let mut sum = _mm256_setzero_ps();
    for j in (lo / 8 * 8..hi).step_by(8) {
        let p = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(s.add(j)), vm));
        let p = _mm256_and_ps(lanes_inside(j, lo, hi), p);
        _mm256_storeu_ps(s.add(j), p);
        sum = _mm256_add_ps(sum, p);
    }
    hsum(sum)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// e^x, max error 1.45 + 0.5 ulp (ggml's `ggml_v_expf`, from Arm's optimized-routines):
/// x below about -103.97 gives 0, above 88.38 gives +inf.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn exp_ps(x: __m256) -> __m256 {
    let r = _mm256_set1_ps(f32::from_bits(0x4b40_0000)); // 0x1.8p23
    let z = _mm256_fmadd_ps(x, _mm256_set1_ps(f32::from_bits(0x3fb8_aa3b)), r); // 1/ln2
    let n = _mm256_sub_ps(z, r);
    let b = _mm256_fnmadd_ps(
        n,
        _mm256_set1_ps(f32::from_bits(0x35bf_be8e)), // ln2 lo: 0x1.7f7d1cp-20
        _mm256_fnmadd_ps(n, _mm256_set1_ps(f32::from_bits(0x3f31_7200)), x), // ln2 hi: 0x1.62e4p-1
    );
    let e = _mm256_slli_epi32::<23>(_mm256_castps_si256(z));
    let k = _mm256_castsi256_ps(_mm256_add_epi32(
        e,
        _mm256_castps_si256(_mm256_set1_ps(1.0)),
    ));
    let abs_n = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
    let c = _mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(126.0));
    let u = _mm256_mul_ps(b, b);
    let c5 = _mm256_set1_ps(f32::from_bits(0x3c07_2010)); // 0x1.0e4020p-7
    let c4 = _mm256_set1_ps(f32::from_bits(0x3d2b_9f17)); // 0x1.573e2ep-5
    let c3 = _mm256_set1_ps(f32::from_bits(0x3e2a_af33)); // 0x1.555e66p-3
    let c2 = _mm256_set1_ps(f32::from_bits(0x3eff_fedb)); // 0x1.fffdb6p-2
    let c1 = _mm256_set1_ps(f32::from_bits(0x3f7f_fff6)); // 0x1.ffffecp-1
    let j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(_mm256_fmadd_ps(c5, b, c4), u, _mm256_fmadd_ps(c3, b, c2)),
        u,
        _mm256_mul_ps(c1, b),
    );
    if _mm256_movemask_ps(c) == 0 {
        return _mm256_fmadd_ps(j, k, k);
    }
    let g = _mm256_and_si256(
        _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_setzero_ps())),
        _mm256_set1_epi32(0x8200_0000u32 as i32),
    );
    let s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f00_0000)));
    let s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
    let d = _mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(192.0));
    _mm256_or_ps(
        _mm256_and_ps(d, _mm256_mul_ps(s1, s1)),
        _mm256_andnot_ps(
            d,
            _mm256_or_ps(
                _mm256_and_ps(c, _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1)),
                _mm256_andnot_ps(c, _mm256_fmadd_ps(k, j, k)),
            ),
        ),
    )
}

/// SwiGLU's `gate = silu(gate) * up` (see `crate::activation`), 8 values per step with
/// [`exp_ps`]; the last `len % 8` values through a zero-padded step.
pub(crate) fn silu_mul(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "silu_mul lengths");
    // SAFETY: only reached through `activation::silu_mul_with_isa`, which checked that the
    // CPU has avx2+fma.
    unsafe { silu_mul_kernel(gate, up) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_kernel(gate: &mut [f32], up: &[f32]) {
    let one = _mm256_set1_ps(1.0);
    let step = |g: __m256, u: __m256| {
        let e = exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), g));
        _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), u)
    };
    let mut gc = gate.chunks_exact_mut(8);
    let mut uc = up.chunks_exact(8);
    for (g, u) in (&mut gc).zip(&mut uc) {
        // SAFETY: both chunks are 8 f32s.
        unsafe {
            let v = step(_mm256_loadu_ps(g.as_ptr()), _mm256_loadu_ps(u.as_ptr()));
            _mm256_storeu_ps(g.as_mut_ptr(), v);
        }
    }
    let (g, u) = (gc.into_remainder(), uc.remainder());
    if !g.is_empty() {
        let (mut gb, mut ub) = ([0.0f32; 8], [0.0f32; 8]);
        gb[..g.len()].copy_from_slice(g);
        ub[..u.len()].copy_from_slice(u);
        // SAFETY: both buffers are 8 f32s.
        unsafe {
            let v = step(_mm256_loadu_ps(gb.as_ptr()), _mm256_loadu_ps(ub.as_ptr()));
            _mm256_storeu_ps(gb.as_mut_ptr(), v);
        }
        let n = g.len();
        g.copy_from_slice(&gb[..n]);
    }
}

/// P·V: up to 3 probability rows × 32 columns (12 accumulators) per pass, over keys `lo..hi`.
pub(crate) fn weighted_values(
    p: &[f32],
    nq: usize,
    lo: usize,
    hi: usize,
    vb: &[f32],
    hd: usize,
    acc: &mut [f32],
) {
    assert!(lo < hi && hi <= KB && hd.is_multiple_of(8));
    assert!(p.len() >= nq * KB && vb.len() >= hi * hd && acc.len() >= nq * hd);
    let (pp, v, a) = (p.as_ptr(), vb.as_ptr(), acc.as_mut_ptr());
    let mut i = 0;
    while i < nq {
        let m = (nq - i).min(3);
        let mut c = 0;
        while c < hd {
            // Columns per pass: 32 (64 for a lone row, to keep 8 accumulator chains), or 8.
            let width = match hd - c {
                r if m == 1 && r >= 64 => 64,
                r if r >= 32 => 32,
                _ => 8,
            };
            // SAFETY: avx2+fma available; rows i..i+m of p/acc, keys lo..hi and columns
            // c..c+width of vb/acc are in bounds by the asserts above.
            unsafe {
                let (pp, v, a) = (pp.add(i * KB), v.add(c), a.add(i * hd + c));
                match (m, width) {
                    (_, 64) => pv_tile::<1, 8>(pp, lo, hi, v, hd, a),
                    (3, 32) => pv_tile::<3, 4>(pp, lo, hi, v, hd, a),
                    (2, 32) => pv_tile::<2, 4>(pp, lo, hi, v, hd, a),
                    (_, 32) => pv_tile::<1, 4>(pp, lo, hi, v, hd, a),
                    (3, _) => pv_tile::<3, 1>(pp, lo, hi, v, hd, a),
                    (2, _) => pv_tile::<2, 1>(pp, lo, hi, v, hd, a),
                    (_, _) => pv_tile::<1, 1>(pp, lo, hi, v, hd, a),
                }
            }
            c += width;
        }
        i += m;
    }
}

// Index loops read clearer than iterator chains for a register tile.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn pv_tile<const M: usize, const C: usize>(
    p: *const f32,
    lo: usize,
    hi: usize,
    v: *const f32,
    hd: usize,
    acc: *mut f32,
) {
    let mut a = [[_mm256_setzero_ps(); C]; M];
    for j in lo..hi {
        let mut pb = [_mm256_setzero_ps(); M];
        for (i, b) in pb.iter_mut().enumerate() {
            *b = _mm256_broadcast_ss(&*p.add(i * KB + j));
        }
        for c in 0..C {
            let vv = _mm256_loadu_ps(v.add(j * hd + 8 * c));
            for i in 0..M {
                a[i][c] = _mm256_fmadd_ps(pb[i], vv, a[i][c]);
            }
        }
    }
    for (i, ai) in a.iter().enumerate() {
        for (c, x) in ai.iter().enumerate() {
            _mm256_storeu_ps(acc.add(i * hd + 8 * c), *x);
        }
    }
}

pub(crate) fn rescale_add(o: &mut [f32], acc: &[f32], c_old: f32, c_new: f32) {
    assert!(o.len().is_multiple_of(8) && acc.len() >= o.len());
    // SAFETY: avx2+fma available; both slices hold o.len() (a multiple of 8) values.
    unsafe { rescale_add_kernel(o.as_mut_ptr(), acc.as_ptr(), o.len(), c_old, c_new) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn rescale_add_kernel(o: *mut f32, acc: *const f32, n: usize, c_old: f32, c_new: f32) {
    let (co, cn) = (_mm256_set1_ps(c_old), _mm256_set1_ps(c_new));
    for c in (0..n).step_by(8) {
        let x = _mm256_mul_ps(_mm256_loadu_ps(o.add(c)), co);
        _mm256_storeu_ps(
            o.add(c),
            _mm256_fmadd_ps(_mm256_loadu_ps(acc.add(c)), cn, x),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_ps_is_within_two_ulp_of_exp() {
        if !crate::Isa::Avx2.is_available() {
            return;
        }
        let mut worst = 0f64;
        let mut x = -110.0f32;
        while x <= 0.0 {
            let xs = [
                x,
                x * 0.5,
                x * 0.25,
                x * 0.125,
                x * 1e-2,
                x * 1e-3,
                x * 1e-5,
                -0.0,
            ];
            let mut out = [0f32; 8];
            // SAFETY: avx2+fma checked above; 8 values in and out.
            unsafe {
                _mm256_storeu_ps(out.as_mut_ptr(), exp_ps(_mm256_loadu_ps(xs.as_ptr())));
            }
            for (&xi, &got) in xs.iter().zip(&out) {
                let want = (xi as f64).exp();
                if want < f32::MIN_POSITIVE as f64 {
                    // Subnormal range: absolute error below the smallest normal.
                    assert!((got as f64 - want).abs() < f32::MIN_POSITIVE as f64, "{xi}");
                    continue;
                }
                let ulp = f32::from_bits((want as f32).to_bits() + 1) as f64 - want as f32 as f64;
                worst = worst.max((got as f64 - want).abs() / ulp);
            }
            x += 0.0137;
        }
        assert!(worst < 2.0, "worst {worst} ulp");
        let mut out = [0f32; 8];
        // SAFETY: as above.
        unsafe {
            _mm256_storeu_ps(
                out.as_mut_ptr(),
                exp_ps(_mm256_setr_ps(
                    -200.0, -1e30, -104.5, 0.0, -87.0, -88.5, -1.0, 1.0,
                )),
            );
        }
        assert_eq!(out[..2], [0.0, 0.0]);
        assert!(out[2] < 1.5e-45);
        assert_eq!(out[3], 1.0);
    }
}
