//! AVX2 + FMA prefill (batch > 1) kernels: an f32 register-tile microkernel over dequantized
//! weight panels, and SIMD row dequantizers that fill those panels.
//!
//! Scalar twins: `crate::gemm::f32_tile_scalar` and `scalar::dequantize`; both are compared in
//! the crate's unit tests (`gemm::tests`).

use crate::gemm::{DequantFn, Tile, TILE_C, TILE_R};
use crate::GgmlType;
use std::arch::x86_64::*;

/// Four 8-lane vectors -> their four horizontal sums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum4(a: __m256, b: __m256, c: __m256, d: __m256) -> __m128 {
    let ab = _mm256_hadd_ps(a, b);
    let cd = _mm256_hadd_ps(c, d);
    let abcd = _mm256_hadd_ps(ab, cd);
    _mm_add_ps(
        _mm256_castps256_ps128(abcd),
        _mm256_extractf128_ps::<1>(abcd),
    )
}

/// `out[r][c] = sum_k w[r][k] * x[c][k]` for `TILE_R` weight rows and `C` activation rows.
///
/// # Safety
/// The CPU supports avx2+fma+f16c.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f32_tile_kernel<const C: usize>(k: usize, w: [&[f32]; TILE_R], x: &[&[f32]]) -> Tile {
    let wp: [*const f32; TILE_R] = std::array::from_fn(|r| w[r][..k].as_ptr());
    let xp: [*const f32; C] = std::array::from_fn(|c| x[c][..k].as_ptr());
    let mut acc = [[_mm256_setzero_ps(); C]; TILE_R];
    let k8 = k - k % 8;
    let mut i = 0;
    // SAFETY: every pointer was taken from a slice re-sliced to exactly `k` elements above, and
    // each 8-lane load reads elements i..i + 8 with i + 8 <= k8 <= k.
    unsafe {
        while i < k8 {
            let wv: [__m256; TILE_R] = std::array::from_fn(|r| _mm256_loadu_ps(wp[r].add(i)));
            for c in 0..C {
                let xv = _mm256_loadu_ps(xp[c].add(i));
                for r in 0..TILE_R {
                    acc[r][c] = _mm256_fmadd_ps(wv[r], xv, acc[r][c]);
                }
            }
            i += 8;
        }
    }
    let mut out = [[0.0f32; TILE_C]; TILE_R];
    let z = _mm256_setzero_ps();
    for r in 0..TILE_R {
        let g = |c: usize| if c < C { acc[r][c] } else { z };
        let s = hsum4(g(0), g(1), g(2), g(3));
        let mut v = [0.0f32; 4];
        // SAFETY: `v` holds 4 f32s.
        unsafe { _mm_storeu_ps(v.as_mut_ptr(), s) };
        for c in 0..C {
            let mut t = v[c];
            for j in k8..k {
                t += w[r][j] * x[c][j];
            }
            out[r][c] = t;
        }
    }
    out
}

/// Safe entry: `x.len()` (0..=TILE_C; extra rows are ignored) activation rows, each at least
/// `k` long, as are `w`'s.
pub(crate) fn f32_tile(k: usize, w: [&[f32]; TILE_R], x: &[&[f32]]) -> Tile {
    // SAFETY: this module is only reached through `Isa::Avx2` or higher, selected only after
    // `Isa::is_available` confirmed avx2+fma+f16c. Out-of-range slices panic in the re-slicing.
    unsafe {
        match x.len() {
            0 => [[0.0; TILE_C]; TILE_R],
            1 => f32_tile_kernel::<1>(k, w, x),
            2 => f32_tile_kernel::<2>(k, w, x),
            3 => f32_tile_kernel::<3>(k, w, x),
            _ => f32_tile_kernel::<4>(k, w, &x[..TILE_C]),
        }
    }
}

// ------------------------------------------------------------------------------------------
// Row dequantizers (into f32 panels)
// ------------------------------------------------------------------------------------------

/// AVX2 dequantizer for `ty`, if there is one: `(src blocks, dst values)`, lengths matching.
pub(crate) fn dequantize_fn(ty: GgmlType) -> Option<DequantFn> {
    Some(match ty {
        GgmlType::Q5_0 => deq_q5_0,
        GgmlType::Q5_0R8 => deq_q5_0_r8,
        GgmlType::Q8_0 => deq_q8_0,
        GgmlType::Q4K => deq_q4_k,
        GgmlType::Q6K => deq_q6_k,
        _ => return None,
    })
}

macro_rules! deq_entry {
    ($name:ident, $kernel:ident) => {
        fn $name(src: &[u8], dst: &mut [f32]) {
            // SAFETY: only handed out for `Isa::Avx2` or higher after runtime detection.
            unsafe { $kernel(src, dst) }
        }
    };
}
deq_entry!(deq_q5_0, deq_q5_0_kernel);
deq_entry!(deq_q5_0_r8, deq_q5_0_r8_kernel);
deq_entry!(deq_q8_0, deq_q8_0_kernel);
deq_entry!(deq_q4_k, deq_q4_k_kernel);
deq_entry!(deq_q6_k, deq_q6_k_kernel);

/// Store 32 signed bytes times `d` as 32 f32 at `y`.
///
/// # Safety
/// 32 writable f32 at `y`; avx2 available.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn store_i8x32(v: __m256i, d: __m256, y: *mut f32) {
    let lo = _mm256_castsi256_si128(v);
    let hi = _mm256_extracti128_si256::<1>(v);
    let parts = [
        _mm256_cvtepi8_epi32(lo),
        _mm256_cvtepi8_epi32(_mm_srli_si128::<8>(lo)),
        _mm256_cvtepi8_epi32(hi),
        _mm256_cvtepi8_epi32(_mm_srli_si128::<8>(hi)),
    ];
    for (j, p) in parts.into_iter().enumerate() {
        // SAFETY: caller guarantees 32 writable f32 at y.
        unsafe { _mm256_storeu_ps(y.add(8 * j), _mm256_mul_ps(_mm256_cvtepi32_ps(p), d)) };
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_bcast(b: &[u8]) -> __m256 {
    let h = u16::from_le_bytes([b[0], b[1]]);
    _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn deq_q8_0_kernel(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(34).zip(dst.chunks_exact_mut(32)) {
        let d = f16_bcast(b);
        // SAFETY: `b` is a whole 34-byte block (32 quants at 2..34); `y` holds 32 f32.
        unsafe {
            let q = _mm256_loadu_si256(b[2..34].as_ptr() as *const __m256i);
            store_i8x32(q, d, y.as_mut_ptr());
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn deq_q5_0_kernel(src: &[u8], dst: &mut [f32]) {
    let m4 = _mm_set1_epi8(0x0F);
    for (b, y) in src.chunks_exact(22).zip(dst.chunks_exact_mut(32)) {
        let d = f16_bcast(b);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let hi = _mm256_andnot_si256(
            super::avx2::bytes_from_bits_32(qh),
            _mm256_set1_epi8(0xF0u8 as i8),
        );
        // SAFETY: `b` is a whole 22-byte block (16 nibble bytes at 6..22); `y` holds 32 f32.
        unsafe {
            let q = _mm_loadu_si128(b[6..22].as_ptr() as *const __m128i);
            let nib = _mm256_set_m128i(
                _mm_and_si128(_mm_srli_epi16::<4>(q), m4),
                _mm_and_si128(q, m4),
            );
            store_i8x32(_mm256_or_si256(nib, hi), d, y.as_mut_ptr());
        }
    }
}

/// Q5_0R8 row (or a row piece starting at a multiple of 8 blocks, see `crate::repack`):
/// whole groups of 8 and 4 blocks, then the plain Q5_0 tail blocks.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn deq_q5_0_r8_kernel(src: &[u8], dst: &mut [f32]) {
    let nb = dst.len() / 32;
    let src = &src[..nb * 22];
    let full = nb / 8 * 8;
    let quad = if nb - full >= 4 { 4 } else { 0 };
    let mut b = 0;
    while b < full + quad {
        let size = if b < full { 8 } else { 4 };
        let g = &src[b * 22..(b + size) * 22];
        let y = &mut dst[b * 32..(b + size) * 32];
        let mut sc = [0.0f32; 8];
        let yp = y.as_mut_ptr();
        // SAFETY: `g` is a whole group of `size` blocks (its `2 * size` scale bytes first);
        // block k's 32 values go to y[32k..32k + 32], inside `y` (size * 32 values).
        unsafe {
            let gp = g.as_ptr() as *const __m128i;
            if size == 8 {
                _mm256_storeu_ps(sc.as_mut_ptr(), _mm256_cvtph_ps(_mm_loadu_si128(gp)));
            } else {
                _mm_storeu_ps(sc.as_mut_ptr(), _mm_cvtph_ps(_mm_loadl_epi64(gp)));
            }
            let put = |k: usize, x: __m256i| store_i8x32(x, _mm256_set1_ps(sc[k]), yp.add(32 * k));
            if size == 8 {
                super::avx2_decode::r8_group::<8>(g.as_ptr(), put);
            } else {
                super::avx2_decode::r8_group::<4>(g.as_ptr(), put);
            }
        }
        b += size;
    }
    // SAFETY: only reached through `Isa::Avx2` (see `deq_entry!`).
    unsafe { deq_q5_0_kernel(&src[b * 22..], &mut dst[b * 32..]) };
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn deq_q4_k_kernel(src: &[u8], dst: &mut [f32]) {
    let m4 = _mm256_set1_epi8(0x0F);
    for (b, y) in src.chunks_exact(144).zip(dst.chunks_exact_mut(256)) {
        let d = crate::scalar::f16_at(b, 0);
        let dmin = crate::scalar::f16_at(b, 2);
        let (sc, mn) = super::avx2::k4_unpack(&b[4..16]);
        for j in 0..4 {
            // SAFETY: 32 nibble bytes at 16 + 32j..48 + 32j < 144; y has 64 values at 64j.
            unsafe {
                let bits = _mm256_loadu_si256(b[16 + 32 * j..48 + 32 * j].as_ptr() as *const _);
                let lo = _mm256_and_si256(bits, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4);
                for (h, v) in [lo, hi].into_iter().enumerate() {
                    let s = _mm256_set1_ps(d * sc[2 * j + h] as f32);
                    let m = _mm256_set1_ps(dmin * mn[2 * j + h] as f32);
                    let yp = y[64 * j + 32 * h..64 * j + 32 * h + 32].as_mut_ptr();
                    let lo16 = _mm256_castsi256_si128(v);
                    let hi16 = _mm256_extracti128_si256::<1>(v);
                    let parts = [
                        _mm256_cvtepu8_epi32(lo16),
                        _mm256_cvtepu8_epi32(_mm_srli_si128::<8>(lo16)),
                        _mm256_cvtepu8_epi32(hi16),
                        _mm256_cvtepu8_epi32(_mm_srli_si128::<8>(hi16)),
                    ];
                    for (p, part) in parts.into_iter().enumerate() {
                        let f = _mm256_fmsub_ps(_mm256_cvtepi32_ps(part), s, m);
                        _mm256_storeu_ps(yp.add(8 * p), f);
                    }
                }
            }
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn deq_q6_k_kernel(src: &[u8], dst: &mut [f32]) {
    let m4 = _mm256_set1_epi8(0x0F);
    let m30 = _mm256_set1_epi8(0x30);
    let m32 = _mm256_set1_epi8(32);
    for (b, y) in src.chunks_exact(210).zip(dst.chunks_exact_mut(256)) {
        let d = crate::scalar::f16_at(b, 208);
        let sc = &b[192..208];
        for half in 0..2 {
            // SAFETY: ql (64 bytes at 64*half) and qh (32 bytes at 128 + 32*half) lie inside
            // the 210-byte block; y has 128 values at 128*half.
            unsafe {
                let ql = b[64 * half..64 * half + 64].as_ptr();
                let qh =
                    _mm256_loadu_si256(b[128 + 32 * half..160 + 32 * half].as_ptr() as *const _);
                let ql0 = _mm256_loadu_si256(ql as *const __m256i);
                let ql1 = _mm256_loadu_si256(ql.add(32) as *const __m256i);
                let v = [
                    _mm256_or_si256(
                        _mm256_and_si256(ql0, m4),
                        _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(ql1, m4),
                        _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                        _mm256_and_si256(qh, m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                        _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m30),
                    ),
                ];
                for (k, v) in v.into_iter().enumerate() {
                    // 32 values = groups g, g+1 of 16 with their own scales.
                    let v = _mm256_sub_epi8(v, m32);
                    let g = 8 * half + 2 * k;
                    let yp = y[128 * half + 32 * k..128 * half + 32 * k + 32].as_mut_ptr();
                    let s0 = _mm256_set1_ps(d * (sc[g] as i8) as f32);
                    let s1 = _mm256_set1_ps(d * (sc[g + 1] as i8) as f32);
                    let lo = _mm256_castsi256_si128(v);
                    let hi = _mm256_extracti128_si256::<1>(v);
                    let parts = [
                        (_mm256_cvtepi8_epi32(lo), s0),
                        (_mm256_cvtepi8_epi32(_mm_srli_si128::<8>(lo)), s0),
                        (_mm256_cvtepi8_epi32(hi), s1),
                        (_mm256_cvtepi8_epi32(_mm_srli_si128::<8>(hi)), s1),
                    ];
                    for (p, (part, s)) in parts.into_iter().enumerate() {
                        _mm256_storeu_ps(yp.add(8 * p), _mm256_mul_ps(_mm256_cvtepi32_ps(part), s));
                    }
                }
            }
        }
    }
}
