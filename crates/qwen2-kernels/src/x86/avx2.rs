//! AVX2 + FMA + F16C `vec_dot` kernels (the layout tricks follow ggml's `ggml-cpu/arch/x86`).
//!
//! SIMD here: F32, F16, BF16 (vs f32), Q4_0, Q5_0, Q8_0 (vs Q8_0), Q4_K, Q6_K (vs Q8_K).
//! Still scalar this round: Q4_1, Q5_1, Q8_1, Q2_K, Q3_K, Q5_K, Q8_K (unused by the default
//! Qwen2.5 Q4_K_M model).
//!
//! Every kernel reads exactly `n / block_size` blocks; the caller (`isa::vec_dot_fn` users) has
//! validated `w.len()` / `a.len()` against `n`, and each kernel re-slices to those lengths first
//! so an internal bug panics instead of reading out of bounds.

use crate::isa::VecDotFn;
use crate::GgmlType;
use std::arch::x86_64::*;

pub(crate) fn vec_dot_fn(ty: GgmlType) -> Option<VecDotFn> {
    Some(match ty {
        GgmlType::F32 => dot_f32,
        GgmlType::F16 => dot_f16,
        GgmlType::BF16 => dot_bf16,
        GgmlType::Q4_0 => dot_q4_0,
        GgmlType::Q5_0 => dot_q5_0,
        GgmlType::Q5_0R8 => dot_q5_0_r8,
        GgmlType::Q8_0 => dot_q8_0,
        GgmlType::Q4K => dot_q4_k,
        GgmlType::Q4KR => dot_q4_kr,
        GgmlType::Q6K => dot_q6_k,
        _ => return None,
    })
}

macro_rules! entry {
    ($name:ident, $kernel:ident) => {
        fn $name(n: usize, w: &[u8], a: &[u8]) -> f32 {
            // SAFETY: `vec_dot_fn` of this module is only consulted for `Isa::Avx2` or higher,
            // which callers select only after `Isa::is_available` confirmed avx2+fma+f16c.
            unsafe { $kernel(n, w, a) }
        }
    };
}
entry!(dot_f32, f32_kernel);
entry!(dot_f16, f16_kernel);
entry!(dot_bf16, bf16_kernel);
entry!(dot_q4_0, q4_0_kernel);
entry!(dot_q5_0, q5_0_kernel);
entry!(dot_q5_0_r8, q5_0_r8_kernel);
entry!(dot_q8_0, q8_0_kernel);
entry!(dot_q4_k, q4_k_kernel);
entry!(dot_q4_kr, q4_kr_kernel);
entry!(dot_q6_k, q6_k_kernel);

// ------------------------------------------------------------------------------------------
// helpers
// ------------------------------------------------------------------------------------------

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// f16 scale at `p` times f16 scale at `q`, broadcast to 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_mul_bcast(p: *const u8, q: *const u8) -> __m256 {
    // SAFETY: caller guarantees 2 readable bytes at p and q.
    let (a, b) = unsafe {
        (
            std::ptr::read_unaligned(p as *const u16) as i32,
            std::ptr::read_unaligned(q as *const u16) as i32,
        )
    };
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(a | (b << 16)));
    _mm256_broadcastss_ps(_mm_mul_ss(v, _mm_movehdup_ps(v)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn f16_at(p: *const u8) -> f32 {
    // SAFETY: caller guarantees 2 readable bytes at p.
    let h = unsafe { std::ptr::read_unaligned(p as *const u16) };
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn loadu(p: *const u8) -> __m256i {
    // SAFETY: caller guarantees 32 readable bytes at p.
    unsafe { _mm256_loadu_si256(p as *const __m256i) }
}

/// Signed i8 x i8 dot of 32 pairs into 8 i32 lanes (as floats).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn mul_sum_i8_pairs_ps(x: __m256i, y: __m256i) -> __m256 {
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    let dot = _mm256_maddubs_epi16(ax, sy);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(dot, _mm256_set1_epi16(1)))
}

/// 32 nibbles of 16 bytes: low nibbles in bytes 0..16, high nibbles in bytes 16..32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn nibbles_32(p: *const u8) -> __m256i {
    // SAFETY: caller guarantees 16 readable bytes at p.
    let q = unsafe { _mm_loadu_si128(p as *const __m128i) };
    let m = _mm_set1_epi8(0x0F);
    let lo = _mm_and_si128(q, m);
    let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), m);
    _mm256_set_m128i(hi, lo)
}

/// Byte i = 0xFF where bit i of `x` is set (ggml `bytes_from_bits_32`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn bytes_from_bits_32(x: u32) -> __m256i {
    let shuf = _mm256_set_epi64x(
        0x0303030303030303,
        0x0202020202020202,
        0x0101010101010101,
        0x0000000000000000,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x as i32), shuf);
    let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
}

/// Q4_K/Q5_K 12-byte scales -> (8 scales, 8 mins) as u32 pairs (ggml's kmask trick).
#[inline(always)]
pub(crate) fn k4_unpack(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    const KMASK1: u32 = 0x3f3f3f3f;
    const KMASK2: u32 = 0x0f0f0f0f;
    const KMASK3: u32 = 0x03030303;
    let u0 = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let u1 = u32::from_le_bytes([s[4], s[5], s[6], s[7]]);
    let u2 = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
    let sc_lo = u0 & KMASK1;
    let sc_hi = (u2 & KMASK2) | (((u0 >> 6) & KMASK3) << 4);
    let mn_lo = u1 & KMASK1;
    let mn_hi = ((u2 >> 4) & KMASK2) | (((u1 >> 6) & KMASK3) << 4);
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    sc[..4].copy_from_slice(&sc_lo.to_le_bytes());
    sc[4..].copy_from_slice(&sc_hi.to_le_bytes());
    mn[..4].copy_from_slice(&mn_lo.to_le_bytes());
    mn[4..].copy_from_slice(&mn_hi.to_le_bytes());
    (sc, mn)
}

/// `k4_unpack` of the 12 scale bytes at `p` with vector ops: bytes 0..8 the 8 scales, bytes
/// 8..16 the 8 mins. About 10 vector ops instead of ~30 scalar ones plus 8 broadcasts per
/// block, which dominated the decode kernels' op count.
///
/// SAFETY (caller): 16 readable bytes at `p` (a Q4_K block's scales plus 4 of its quants).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn k4_unpack_v(p: *const u8) -> __m128i {
    // SAFETY: per the caller's contract.
    let v = unsafe { _mm_loadu_si128(p as *const __m128i) };
    // a = s[0..4] s[8..12] s[4..8] s[8..12]: each output byte's low bits sit in its own byte.
    let a = _mm_shuffle_epi8(
        v,
        _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11),
    );
    // scales 0..4 / mins 0..4: the low 6 bits; scales 4..8: the low nibble of s[8..12].
    let low = _mm_and_si128(
        a,
        _mm_setr_epi8(
            0x3f, 0x3f, 0x3f, 0x3f, 0x0f, 0x0f, 0x0f, 0x0f, 0x3f, 0x3f, 0x3f, 0x3f, 0, 0, 0, 0,
        ),
    );
    // mins 4..8: the high nibble of s[8..12].
    let nib_hi = _mm_and_si128(
        _mm_srli_epi16::<4>(a),
        _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0f, 0x0f, 0x0f, 0x0f),
    );
    // scales/mins 4..8: bits 4..6 are the top two bits of s[0..4] / s[4..8], which sit 4 bytes
    // lower in the same 64-bit half (a 30-bit shift moves bits 6,7 of byte k to bits 4,5 of
    // byte k + 4).
    let top = _mm_and_si128(
        _mm_slli_epi64::<30>(a),
        _mm_setr_epi8(
            0, 0, 0, 0, 0x30, 0x30, 0x30, 0x30, 0, 0, 0, 0, 0x30, 0x30, 0x30, 0x30,
        ),
    );
    _mm_or_si128(_mm_or_si128(low, nib_hi), top)
}

// ------------------------------------------------------------------------------------------
// float weights vs f32 activations
// ------------------------------------------------------------------------------------------

macro_rules! float_kernel {
    ($name:ident, $elem:expr, $load8:expr, $scalar:expr) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name(n: usize, w: &[u8], a: &[u8]) -> f32 {
            let w = &w[..n * $elem];
            let a = &a[..n * 4];
            let (wp, ap) = (w.as_ptr(), a.as_ptr());
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            // SAFETY: every access below reads elements < n of `w` (n * $elem bytes) and `a`
            // (n * 4 bytes), both re-sliced to exactly those lengths above.
            unsafe {
                while i + 32 <= n {
                    for (k, acc) in acc.iter_mut().enumerate() {
                        let j = i + 8 * k;
                        let x = $load8(wp.add(j * $elem));
                        let y = _mm256_loadu_ps(ap.add(j * 4) as *const f32);
                        *acc = _mm256_fmadd_ps(x, y, *acc);
                    }
                    i += 32;
                }
                while i + 8 <= n {
                    let x = $load8(wp.add(i * $elem));
                    let y = _mm256_loadu_ps(ap.add(i * 4) as *const f32);
                    acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
                    i += 8;
                }
            }
            let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            let mut sum = hsum_ps(s);
            while i < n {
                let y = f32::from_le_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]]);
                sum += $scalar(&w[i * $elem..]) * y;
                i += 1;
            }
            sum
        }
    };
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8_f32(p: *const u8) -> __m256 {
    // SAFETY: caller guarantees 32 readable bytes.
    unsafe { _mm256_loadu_ps(p as *const f32) }
}
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8_f16(p: *const u8) -> __m256 {
    // SAFETY: caller guarantees 16 readable bytes.
    unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
}
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8_bf16(p: *const u8) -> __m256 {
    // SAFETY: caller guarantees 16 readable bytes.
    let h = unsafe { _mm_loadu_si128(p as *const __m128i) };
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
}
fn s_f32(b: &[u8]) -> f32 {
    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
}
fn s_f16(b: &[u8]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}
fn s_bf16(b: &[u8]) -> f32 {
    f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)
}
float_kernel!(f32_kernel, 4, load8_f32, s_f32);
float_kernel!(f16_kernel, 2, load8_f16, s_f16);
float_kernel!(bf16_kernel, 2, load8_bf16, s_bf16);

// ------------------------------------------------------------------------------------------
// 32-value blocks vs Q8_0
// ------------------------------------------------------------------------------------------

macro_rules! q32_kernel {
    ($name:ident, $ts:expr, |$xp:ident| $decode:expr) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name(n: usize, w: &[u8], a: &[u8]) -> f32 {
            let nb = n / 32;
            let w = &w[..nb * $ts];
            let a = &a[..nb * 34];
            let (wp, ap) = (w.as_ptr(), a.as_ptr());
            let mut acc0 = _mm256_setzero_ps();
            let mut acc1 = _mm256_setzero_ps();
            let mut i = 0;
            // SAFETY: block i of `w` spans wp + i*$ts .. + $ts and of `a` ap + i*34 .. + 34,
            // both inside the slices (i < nb); each decode reads only within its block.
            unsafe {
                while i + 2 <= nb {
                    for k in 0..2 {
                        let $xp = wp.add((i + k) * $ts);
                        let yp = ap.add((i + k) * 34);
                        let d = f16_mul_bcast($xp, yp);
                        let p = mul_sum_i8_pairs_ps($decode, loadu(yp.add(2)));
                        if k == 0 {
                            acc0 = _mm256_fmadd_ps(d, p, acc0);
                        } else {
                            acc1 = _mm256_fmadd_ps(d, p, acc1);
                        }
                    }
                    i += 2;
                }
                if i < nb {
                    let $xp = wp.add(i * $ts);
                    let yp = ap.add(i * 34);
                    let d = f16_mul_bcast($xp, yp);
                    let p = mul_sum_i8_pairs_ps($decode, loadu(yp.add(2)));
                    acc0 = _mm256_fmadd_ps(d, p, acc0);
                }
            }
            hsum_ps(_mm256_add_ps(acc0, acc1))
        }
    };
}

q32_kernel!(q8_0_kernel, 34, |xp| loadu(xp.add(2)));
q32_kernel!(q4_0_kernel, 18, |xp| _mm256_sub_epi8(
    nibbles_32(xp.add(2)),
    _mm256_set1_epi8(8)
));
q32_kernel!(q5_0_kernel, 22, |xp| {
    let qh = std::ptr::read_unaligned(xp.add(2) as *const u32);
    let hi = _mm256_andnot_si256(bytes_from_bits_32(qh), _mm256_set1_epi8(0xF0u8 as i8));
    _mm256_or_si256(nibbles_32(xp.add(6)), hi)
});

/// Q5_0R8 (repacked Q5_0): the decode tile kernel on one activation row, prepared here
/// (`repack::prep_act_row`; decode rows take the tile, which prepares each row once per
/// matmul). Bitwise `repack::vec_dot`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_0_r8_kernel(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / 32;
    let w = &w[..nb * 22];
    let mut p = vec![0u8; crate::repack::act_row_bytes(nb)];
    crate::repack::prep_act_row(nb, &a[..nb * 34], &mut p);
    // SAFETY: `w` holds nb blocks (re-sliced above) and `p` the prepared row.
    unsafe { super::avx2_decode::r8_dot::<1>(nb, w.as_ptr(), [p.as_ptr()])[0] }
}

// ------------------------------------------------------------------------------------------
// k-quants vs Q8_K
// ------------------------------------------------------------------------------------------

// The decode tile kernels on one (weight row, activation row) pair: a row's result is the
// same through `vec_dot` and through any decode tile by construction.

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_k_kernel(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / 256;
    let (w, a) = (&w[..nb * 144], &a[..nb * 292]);
    // SAFETY: `w` holds `nb` Q4_K blocks and `a` `nb` Q8_K blocks (re-sliced above); the
    // activation-scale pointer is unused for Q8_K activations.
    unsafe {
        super::avx2_decode::q4_k_k::<1, 1>(nb, [w.as_ptr()], [a.as_ptr()], [std::ptr::null()])[0][0]
    }
}

/// Q4KR (repacked Q4_K): the decode tile kernel on one activation row, prepared here
/// (`repack_q4k::prep_act_row`; decode rows take the tile, which prepares each row once per
/// matmul). Bitwise `repack_q4k::vec_dot`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_kr_kernel(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / 256;
    let w = &w[..nb * 144];
    let mut p = vec![0u8; crate::repack_q4k::act_row_bytes(nb)];
    crate::repack_q4k::prep_act_row(nb, &a[..nb * 292], &mut p);
    // SAFETY: `w` holds `nb` Q4KR blocks (re-sliced above) and `p` the prepared row.
    unsafe {
        super::avx2_decode::q4_kr_k::<1, 1>(nb, [w.as_ptr()], [p.as_ptr()], [std::ptr::null()])[0]
            [0]
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k_kernel(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / 256;
    let (w, a) = (&w[..nb * 210], &a[..nb * 292]);
    // SAFETY: as `q4_k_kernel`, with `nb` Q6_K blocks in `w`.
    unsafe {
        super::avx2_decode::q6_k_k::<1, 1>(nb, [w.as_ptr()], [a.as_ptr()], [std::ptr::null()])[0][0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each output byte of the unpack depends on at most two input bytes (s[k] with s[8 + k]
    /// for the scales, s[4 + k] with s[8 + k] for the mins), so sweeping every (a, b) pair with
    /// s[0..4] = a, s[4..8] = a ^ 0x5a, s[8..12] = b covers every input the vector version
    /// can see.
    #[test]
    fn k4_unpack_v_matches_scalar_unpack() {
        if !crate::Isa::Avx2.is_available() {
            return;
        }
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let mut s = [0xEEu8; 16];
                s[..4].copy_from_slice(&[a, a.rotate_left(1), a.rotate_left(2), a.rotate_left(3)]);
                for k in 0..4 {
                    s[4 + k] = s[k] ^ 0x5a;
                    s[8 + k] = b.rotate_left(k as u32);
                }
                let (sc, mn) = k4_unpack(&s[..12]);
                let mut got = [0u8; 16];
                // SAFETY: avx2 checked above; `s` has 16 readable bytes.
                unsafe {
                    _mm_storeu_si128(got.as_mut_ptr() as *mut __m128i, k4_unpack_v(s.as_ptr()))
                };
                assert_eq!(got[..8], sc, "scales of {s:?}");
                assert_eq!(got[8..], mn, "mins of {s:?}");
            }
        }
    }
}
