//! AVX-512 (F/BW/VL + VNNI) `vec_dot` kernels: Q4_K (512-bit, `vpdpwssd`), Q8_0 / Q5_0 (256-bit
//! `vpdpbusd`). Other formats fall back to the AVX2 kernels.
//!
//! NOTE: written on a machine without AVX-512, so compile-checked but not yet executed; see
//! `isa::AVX512_VERIFIED`. The twin tests in `tests/kernels.rs` run these automatically on any
//! CPU that has AVX-512 VNNI.

use super::avx2::{f16_at, hsum_ps, k4_unpack};
use crate::isa::VecDotFn;
use crate::GgmlType;
use std::arch::x86_64::*;

pub(crate) fn vec_dot_fn(ty: GgmlType) -> Option<VecDotFn> {
    Some(match ty {
        GgmlType::Q8_0 => dot_q8_0,
        GgmlType::Q5_0 => dot_q5_0,
        GgmlType::Q4K => dot_q4_k,
        _ => return None,
    })
}

macro_rules! entry {
    ($name:ident, $kernel:ident) => {
        fn $name(n: usize, w: &[u8], a: &[u8]) -> f32 {
            // SAFETY: `vec_dot_fn` of this module is only consulted for `Isa::Avx512`, which
            // callers select only after `Isa::is_available` confirmed avx512f/bw/vl/vnni + avx2.
            unsafe { $kernel(n, w, a) }
        }
    };
}
entry!(dot_q8_0, q8_0_kernel);
entry!(dot_q5_0, q5_0_kernel);
entry!(dot_q4_k, q4_k_kernel);

macro_rules! q32_kernel {
    ($name:ident, $ts:expr, |$xp:ident| $decode:expr) => {
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
        unsafe fn $name(n: usize, w: &[u8], a: &[u8]) -> f32 {
            let nb = n / 32;
            let w = &w[..nb * $ts];
            let a = &a[..nb * 34];
            let (wp, ap) = (w.as_ptr(), a.as_ptr());
            let mut acc = _mm256_setzero_ps();
            for i in 0..nb {
                // SAFETY: block i (< nb) of `w` spans $ts bytes at wp + i*$ts and of `a` 34 bytes
                // at ap + i*34, inside the re-sliced inputs; the decode reads within its block.
                unsafe {
                    let $xp = wp.add(i * $ts);
                    let yp = ap.add(i * 34);
                    let d = _mm256_set1_ps(f16_at($xp) * f16_at(yp));
                    let x: __m256i = $decode;
                    let y = _mm256_loadu_si256(yp.add(2) as *const __m256i);
                    // |x| as u8 times sign-transferred y: vpdpbusd is u8 x i8.
                    let ax = _mm256_sign_epi8(x, x);
                    let sy = _mm256_sign_epi8(y, x);
                    let dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), ax, sy);
                    acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot), acc);
                }
            }
            hsum_ps(acc)
        }
    };
}

q32_kernel!(q8_0_kernel, 34, |xp| _mm256_loadu_si256(
    xp.add(2) as *const __m256i
));
q32_kernel!(q5_0_kernel, 22, |xp| {
    let qh = std::ptr::read_unaligned(xp.add(2) as *const u32);
    let q = _mm_loadu_si128(xp.add(6) as *const __m128i);
    let m = _mm_set1_epi8(0x0F);
    let nib = _mm256_set_m128i(
        _mm_and_si128(_mm_srli_epi16::<4>(q), m),
        _mm_and_si128(q, m),
    );
    // value - 16 == nibble where the high bit is set, nibble - 16 where it is clear.
    _mm256_mask_sub_epi8(nib, !qh, nib, _mm256_set1_epi8(16))
});

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q4_k_kernel(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / 256;
    let w = &w[..nb * 144];
    let a = &a[..nb * 292];
    let m4 = _mm512_set1_epi8(0x0F);
    let mut acc = _mm512_setzero_ps();
    let mut acc_m = _mm_setzero_ps();
    for (x, y) in w.chunks_exact(144).zip(a.chunks_exact(292)) {
        let (xp, yp) = (x.as_ptr(), y.as_ptr());
        let yd = f32::from_le_bytes([y[0], y[1], y[2], y[3]]);
        // SAFETY: xp/yp point at whole 144/292-byte blocks; all offsets below are inside them.
        unsafe {
            let d = yd * f16_at(xp);
            let dmin = -yd * f16_at(xp.add(2));
            let (sc, mn) = k4_unpack(&x[4..16]);

            let mins = _mm_cvtepu8_epi16(_mm_loadl_epi64(mn.as_ptr() as *const __m128i));
            let bs = _mm256_loadu_si256(yp.add(260) as *const __m256i);
            let bs = _mm_hadd_epi16(
                _mm256_castsi256_si128(bs),
                _mm256_extracti128_si256::<1>(bs),
            );
            let prod = _mm_madd_epi16(mins, bs);
            acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m);

            let q4 = xp.add(16);
            let q8 = yp.add(4);
            let mut sumi = _mm512_setzero_si512();
            for j in 0..4 {
                // 64 values: low nibbles = sub-block 2j (lanes 0..32), high = 2j+1 (32..64),
                // matching 64 consecutive Q8_K values.
                let bits = _mm256_loadu_si256(q4.add(32 * j) as *const __m256i);
                let both = _mm512_inserti64x4::<1>(
                    _mm512_castsi256_si512(bits),
                    _mm256_srli_epi16::<4>(bits),
                );
                let q = _mm512_and_si512(both, m4);
                let y8 = _mm512_loadu_si512(q8.add(64 * j) as *const _);
                let p = _mm512_maddubs_epi16(q, y8);
                let s = _mm512_inserti64x4::<1>(
                    _mm512_set1_epi16(sc[2 * j] as i16),
                    _mm256_set1_epi16(sc[2 * j + 1] as i16),
                );
                sumi = _mm512_dpwssd_epi32(sumi, p, s);
            }
            acc = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sumi), acc);
        }
    }
    let m = _mm_add_ps(acc_m, _mm_movehl_ps(acc_m, acc_m));
    let m = _mm_add_ss(m, _mm_movehdup_ps(m));
    _mm512_reduce_add_ps(acc) + _mm_cvtss_f32(m)
}
