//! AVX-512 BF16 kernels of `crate::bf16dot` (its scalar twins: `bf16dot::dot_scalar`,
//! `bf16dot::round_bf16`). Only reached where `isa::bf16()` confirmed AVX2 + AVX-512 F/VL/BF16;
//! the safe entry points check every length their pointer loops rely on.

use std::arch::x86_64::*;

use crate::bf16dot::{round_bf16, STEP};

/// `x` rounded to bf16 (ggml's rounding: quiet NaNs, nearest even) as little-endian bytes,
/// 8 values per step.
pub(crate) fn round_row(x: &[f32], out: &mut [u8]) {
    assert_eq!(2 * x.len(), out.len(), "round_row lengths");
    let n8 = x.len() / 8 * 8;
    // SAFETY: avx2 available (module contract); 8 values read and written per step, below n8.
    unsafe { round_kernel(x.as_ptr(), out.as_mut_ptr(), n8) };
    for (o, &v) in out[2 * n8..].chunks_exact_mut(2).zip(&x[n8..]) {
        o.copy_from_slice(&round_bf16(v).to_le_bytes());
    }
}

#[target_feature(enable = "avx2")]
unsafe fn round_kernel(x: *const f32, out: *mut u8, n8: usize) {
    let abs_mask = _mm256_set1_epi32(0x7fff_ffff);
    let inf = _mm256_set1_epi32(0x7f80_0000);
    let (one, bias, quiet) = (
        _mm256_set1_epi32(1),
        _mm256_set1_epi32(0x7fff),
        _mm256_set1_epi32(64),
    );
    for i in (0..n8).step_by(8) {
        // SAFETY: i + 8 <= n8 (caller).
        let u = unsafe { _mm256_loadu_si256(x.add(i) as *const __m256i) };
        // Bits as i32: |u| <= 0x7fffffff, so the signed compare is the unsigned one.
        let nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, abs_mask), inf);
        let hi = _mm256_srli_epi32::<16>(u);
        let lsb = _mm256_and_si256(hi, one);
        let r = _mm256_srli_epi32::<16>(_mm256_add_epi32(u, _mm256_add_epi32(bias, lsb)));
        let v = _mm256_blendv_epi8(r, _mm256_or_si256(hi, quiet), nan);
        // Every lane is <= 0xffff: the unsigned-saturating pack keeps it.
        let packed = _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        // SAFETY: as above, 16 bytes written.
        unsafe { _mm_storeu_si128(out.add(2 * i) as *mut __m128i, packed) };
    }
}

/// `out[r * xs.len() + c]` = the dot of weight row `r` (`w`: rows of `n` little-endian bf16)
/// and `xs[c]` (likewise), for up to 4 activation rows; `rows_per` (1 to 4) weight rows side by
/// side.
pub(crate) fn dots(n: usize, w: &[u8], xs: &[&[u8]], rows_per: usize, out: &mut [f32]) {
    let nc = xs.len();
    let rb = 2 * n;
    assert!(n.is_multiple_of(STEP) && n > 0 && (1..=4).contains(&nc));
    assert!((1..=4).contains(&rows_per));
    assert!(w.len().is_multiple_of(rb) && xs.iter().all(|x| x.len() >= rb));
    let nr = w.len() / rb;
    assert_eq!(out.len(), nr * nc, "dots output");
    let steps = n / STEP;
    let wp = |r: usize| w[r * rb..].as_ptr();
    let xp: [*const u8; 4] = std::array::from_fn(|c| xs[c.min(nc - 1)].as_ptr());
    let mut r = 0;
    while r < nr {
        let m = (nr - r).min(rows_per);
        let o = &mut out[r * nc..(r + m) * nc];
        macro_rules! go {
            ($R:literal, $C:literal) => {{
                let ws: [*const u8; $R] = std::array::from_fn(|i| wp(r + i));
                let xc: [*const u8; $C] = std::array::from_fn(|c| xp[c]);
                // SAFETY: `isa::bf16()` held for this path (module contract); rows r..r+m of
                // `w` and every `xs[c]` hold `n = steps * 16` values (asserted above).
                let t = unsafe { tile::<$R, $C>(steps, ws, xc) };
                for (i, tr) in t.iter().enumerate() {
                    o[i * $C..(i + 1) * $C].copy_from_slice(tr);
                }
            }};
        }
        macro_rules! by_cols {
            ($R:literal) => {
                match nc {
                    1 => go!($R, 1),
                    2 => go!($R, 2),
                    3 => go!($R, 3),
                    _ => go!($R, 4),
                }
            };
        }
        match m {
            1 => by_cols!(1),
            2 => by_cols!(2),
            3 => by_cols!(3),
            _ => by_cols!(4),
        }
        r += m;
    }
}

/// `R` weight rows by `C` activation rows over `steps` steps of 16 values. A pair's two 8-lane
/// chains (even and odd steps) are the two 256-bit halves of one 512-bit accumulator: a 512-bit
/// `vdpbf16ps` on 32 consecutive values is step `2k` in the low half and `2k + 1` in the high
/// half, lane for lane the 256-bit instructions on the two chains, in half the instructions.
/// An odd last step goes to the low half alone. Then low + high, summed as `bf16dot::hsum8`.
///
/// SAFETY (caller): avx2 + AVX-512 F/VL/BF16 available; `16 * steps` values at every pointer.
#[inline]
#[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512bf16")]
unsafe fn tile<const R: usize, const C: usize>(
    steps: usize,
    w: [*const u8; R],
    x: [*const u8; C],
) -> [[f32; C]; R] {
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    // SAFETY (all loads): value offsets below 16 * steps, per the caller's contract.
    let ld = |p: *const u8| -> __m512bh {
        // SAFETY: see above; 64 bytes = 32 bf16 at `p`.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p as *const _)) }
    };
    let pairs = steps / 2;
    for k in 0..pairs {
        // SAFETY: values 32 k..32 k + 32 < 16 * steps.
        let wv: [__m512bh; R] = std::array::from_fn(|r| ld(unsafe { w[r].add(64 * k) }));
        for c in 0..C {
            // SAFETY: as above.
            let xv = ld(unsafe { x[c].add(64 * k) });
            for r in 0..R {
                acc[r][c] = _mm512_dpbf16_ps(acc[r][c], wv[r], xv);
            }
        }
    }
    let low = |a: __m512| _mm512_castps512_ps256(a);
    let high = |a: __m512| _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a)));
    let mut out = [[0.0f32; C]; R];
    for r in 0..R {
        for c in 0..C {
            let mut lo = low(acc[r][c]);
            if steps % 2 == 1 {
                let ld8 = |p: *const u8| {
                    // SAFETY: the last step's 16 values, inside the caller's span.
                    let v = unsafe { _mm256_loadu_si256(p.add(64 * pairs) as *const __m256i) };
                    // SAFETY: same size, any bits are a valid bf16 vector.
                    unsafe { std::mem::transmute::<__m256i, __m256bh>(v) }
                };
                lo = _mm256_dpbf16_ps(lo, ld8(w[r]), ld8(x[c]));
            }
            let v = _mm256_add_ps(lo, high(acc[r][c]));
            let q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
            out[r][c] = _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
        }
    }
    out
}
