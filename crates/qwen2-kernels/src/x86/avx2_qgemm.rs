//! AVX2 tile of the k-quant integer prompt GEMM (`crate::qgemm`): 3 weight rows x 4 activation
//! rows, 12 i32 accumulators per super-block, each 32-value chunk one `vpmaddubsw` (unsigned
//! quants x int8 activations) and one `vpmaddwd` (x the 16-value group scales) per pair.
//!
//! Scalar twin: `crate::qgemm::tile_scalar` (unit tests in `qgemm`).

use crate::gemm::TILE_C;
use crate::qgemm::QTileArgs;
use crate::qgemm::QTILE_R as TILE_R;
use crate::types::QK_K;
use crate::GgmlType;
use std::arch::x86_64::*;

/// Safe entry: checks every slice length the kernel reads, then runs it.
pub(crate) fn tile(t: &QTileArgs) -> [[f32; TILE_C]; TILE_R] {
    let n = t.nsb * QK_K;
    let ok = t.q.iter().all(|q| q.len() >= n)
        && t.sc.iter().all(|s| s.len() >= t.nsb * 16)
        && t.dw.iter().all(|d| d.len() >= t.nsb)
        && t.a.iter().all(|a| a.len() >= n)
        && (t.nsb == 0 || t.da.len() >= (t.nsb - 1) * t.da_stride + TILE_C);
    assert!(ok, "qgemm tile operands shorter than nsb = {}", t.nsb);
    // SAFETY: this tile is only handed out by `qgemm::tile_fn` for `Isa::Avx2` or higher, which
    // is selected only after `Isa::is_available` confirmed avx2+fma+f16c; the lengths checked
    // above bound every read of the kernel.
    unsafe { kernel(t) }
}

/// Each row's result lanes (columns 0-3 in both 128-bit halves) summed over the halves.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn fold_halves(facc: [__m256; TILE_R]) -> [[f32; TILE_C]; TILE_R] {
    let mut out = [[0.0f32; TILE_C]; TILE_R];
    for r in 0..TILE_R {
        let v = _mm_add_ps(
            _mm256_castps256_ps128(facc[r]),
            _mm256_extractf128_ps::<1>(facc[r]),
        );
        // SAFETY: `out[r]` is 4 f32s.
        unsafe { _mm_storeu_ps(out[r].as_mut_ptr(), v) };
    }
    out
}

/// SAFETY (caller): avx2+fma available; operand lengths as checked by [`tile`].
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel(t: &QTileArgs) -> [[f32; TILE_C]; TILE_R] {
    let q = t.q.map(|s| s.as_ptr());
    let sc = t.sc.map(|s| s.as_ptr());
    let a = t.a.map(|s| s.as_ptr());
    // facc[r]: lanes 0-3 the low halves' partial sums for columns 0-3, lanes 4-7 the high.
    let mut facc = [_mm256_setzero_ps(); TILE_R];
    // Spreads a pair of i16 group scales (one dword) over a 32-value chunk's 16 i16 lanes:
    // the first scale to lanes 0-7 (low 128 bits), the second to lanes 8-15.
    let spread = _mm256_setr_epi8(
        0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3,
        2, 3,
    );
    // SAFETY: every offset stays below the lengths `tile` checked (s < nsb, k < 8).
    unsafe {
        for s in 0..t.nsb {
            let mut acc = [[_mm256_setzero_si256(); TILE_C]; TILE_R];
            for k in 0..QK_K / 32 {
                let off = s * QK_K + 32 * k;
                for r in 0..TILE_R {
                    let w = _mm256_loadu_si256(q[r].add(off) as *const __m256i);
                    let pair = std::ptr::read_unaligned(sc[r].add(s * 16 + 2 * k) as *const i32);
                    let scv = _mm256_shuffle_epi8(_mm256_set1_epi32(pair), spread);
                    for c in 0..TILE_C {
                        let x = _mm256_loadu_si256(a[c].add(off) as *const __m256i);
                        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), scv);
                        acc[r][c] = _mm256_add_epi32(acc[r][c], p);
                    }
                }
            }
            // Four columns' accumulators into one vector per row (each lane from one column's
            // accumulator only), then one scaled FMA.
            let da = _mm256_broadcast_ps(&*(t.da.as_ptr().add(s * t.da_stride) as *const __m128));
            for r in 0..TILE_R {
                let h01 = _mm256_hadd_epi32(acc[r][0], acc[r][1]);
                let h23 = _mm256_hadd_epi32(acc[r][2], acc[r][3]);
                let h = _mm256_cvtepi32_ps(_mm256_hadd_epi32(h01, h23));
                let d = _mm256_mul_ps(_mm256_set1_ps(*t.dw[r].as_ptr().add(s)), da);
                facc[r] = _mm256_fmadd_ps(h, d, facc[r]);
            }
        }
    }
    fold_halves(facc)
}

/// AVX2 twin of `qgemm::unpack_block_scalar`: one super-block into 256 unsigned quants and 8
/// 16-value group scales; returns the super-block scale `d`.
pub(crate) fn unpack_block(ty: GgmlType, b: &[u8], q: &mut [u8], sc: &mut [i16]) -> f32 {
    assert!(
        b.len() >= ty.type_size() && q.len() >= QK_K && sc.len() >= 16,
        "qgemm unpack operands too short"
    );
    // SAFETY: only called when `qgemm::tile_fn` returned this module's tile, i.e. after
    // avx2+fma+f16c were detected; lengths checked above bound every access.
    unsafe {
        match ty {
            GgmlType::Q4K => unpack_q4k(b, q, sc),
            GgmlType::Q6K => unpack_q6k(b, q, sc),
            _ => unreachable!("qgemm admits Q4_K and Q6_K only"),
        }
    }
}

/// SAFETY (caller): avx2 available; `b` >= 144 bytes, `q` >= 256, `sc` >= 16 entries.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_q4k(b: &[u8], q: &mut [u8], sc: &mut [i16]) -> f32 {
    let (scales, _) = crate::scalar::k4_scales_mins(&b[4..16]);
    let m4 = _mm256_set1_epi8(0x0F);
    // SAFETY: in bounds per the caller's contract (16 + 4 * 32 <= 144, 4 * 64 <= 256).
    unsafe {
        for j in 0..4 {
            let v = _mm256_loadu_si256(b.as_ptr().add(16 + 32 * j) as *const __m256i);
            let qp = q.as_mut_ptr().add(64 * j);
            _mm256_storeu_si256(qp as *mut __m256i, _mm256_and_si256(v, m4));
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
            _mm256_storeu_si256(qp.add(32) as *mut __m256i, hi);
        }
        for (k, &s) in scales.iter().enumerate() {
            sc[2 * k] = s as i16;
            sc[2 * k + 1] = s as i16;
        }
    }
    crate::scalar::f16_at(b, 0)
}

/// SAFETY (caller): avx2 available; `b` >= 210 bytes, `q` >= 256, `sc` >= 16 entries.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_q6k(b: &[u8], q: &mut [u8], sc: &mut [i16]) -> f32 {
    let m4 = _mm256_set1_epi8(0x0F);
    let m30 = _mm256_set1_epi8(0x30);
    // SAFETY: in bounds per the caller's contract (ql: 128 bytes, qh: 128..192, scales:
    // 192..208; q: 256 bytes; sc: 16 entries).
    unsafe {
        let p = b.as_ptr();
        for n in 0..2 {
            let ql0 = _mm256_loadu_si256(p.add(64 * n) as *const __m256i);
            let ql1 = _mm256_loadu_si256(p.add(64 * n + 32) as *const __m256i);
            let qh = _mm256_loadu_si256(p.add(128 + 32 * n) as *const __m256i);
            let h0 = _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m30);
            let h1 = _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m30);
            let h2 = _mm256_and_si256(qh, m30);
            let h3 = _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m30);
            let l2 = _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4);
            let l3 = _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4);
            let qp = q.as_mut_ptr().add(128 * n) as *mut __m256i;
            _mm256_storeu_si256(qp, _mm256_or_si256(_mm256_and_si256(ql0, m4), h0));
            _mm256_storeu_si256(qp.add(1), _mm256_or_si256(_mm256_and_si256(ql1, m4), h1));
            _mm256_storeu_si256(qp.add(2), _mm256_or_si256(l2, h2));
            _mm256_storeu_si256(qp.add(3), _mm256_or_si256(l3, h3));
        }
        let s8 = _mm_loadu_si128(p.add(192) as *const __m128i);
        _mm256_storeu_si256(sc.as_mut_ptr() as *mut __m256i, _mm256_cvtepi8_epi16(s8));
    }
    crate::scalar::f16_at(b, 208)
}

/// Safe entry of the 32-value-block tile (Q5_0, blocks in pairs: `qgemm::pos32`): checks the
/// slice lengths, then runs it.
pub(crate) fn tile32(t: &QTileArgs) -> [[f32; TILE_C]; TILE_R] {
    let n = t.nsb * 32;
    let pairs = t.nsb / 2;
    let ok = t.nsb.is_multiple_of(2)
        && t.q.iter().all(|q| q.len() >= n)
        && t.dw.iter().all(|d| d.len() >= t.nsb)
        && t.a.iter().all(|a| a.len() >= n)
        && (pairs == 0 || t.da.len() >= (pairs - 1) * t.da_stride + 2 * TILE_C)
        && (pairs == 0 || t.bias.len() >= (pairs - 1) * t.da_stride + 2 * TILE_C);
    assert!(ok, "qgemm tile32 operands shorter than nsb = {}", t.nsb);
    // SAFETY: as for `tile` (handed out only on AVX2; lengths checked above).
    unsafe { kernel32(t) }
}

/// Per block pair and weight row: two `vpmaddubsw` per activation row (one per pair vector),
/// added; the four columns folded by one round of 16-bit horizontal adds, `vpmaddwd` to i32
/// and one 32-bit horizontal add, so lanes 0-3 hold columns 0-3 of the pair's first block and
/// lanes 4-7 of its second; minus the activations' bias, then one scaled FMA. The 16-bit sums
/// cannot overflow: quants <= 31 and |activations| <= 127 give at most 4 * 2 * 31 * 127 =
/// 31496 per lane before `vpmaddwd`.
///
/// SAFETY (caller): avx2+fma available; operand lengths as checked by [`tile32`].
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel32(t: &QTileArgs) -> [[f32; TILE_C]; TILE_R] {
    let q = t.q.map(|s| s.as_ptr());
    let a = t.a.map(|s| s.as_ptr());
    let ones = _mm256_set1_epi16(1);
    let pick = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
    let mut facc = [_mm256_setzero_ps(); TILE_R];
    // SAFETY: every offset stays below the lengths `tile32` checked (j < nsb / 2).
    unsafe {
        for j in 0..t.nsb / 2 {
            let off = 64 * j;
            let x1 = a.map(|p| _mm256_loadu_si256(p.add(off) as *const __m256i));
            let x2 = a.map(|p| _mm256_loadu_si256(p.add(off + 32) as *const __m256i));
            let da = _mm256_loadu_ps(t.da.as_ptr().add(j * t.da_stride));
            let bias = _mm256_loadu_si256(t.bias.as_ptr().add(j * t.da_stride) as *const __m256i);
            for r in 0..TILE_R {
                let w1 = _mm256_loadu_si256(q[r].add(off) as *const __m256i);
                let w2 = _mm256_loadu_si256(q[r].add(off + 32) as *const __m256i);
                let p: [__m256i; TILE_C] = std::array::from_fn(|c| {
                    _mm256_add_epi16(
                        _mm256_maddubs_epi16(w1, x1[c]),
                        _mm256_maddubs_epi16(w2, x2[c]),
                    )
                });
                let m01 = _mm256_madd_epi16(_mm256_hadd_epi16(p[0], p[1]), ones);
                let m23 = _mm256_madd_epi16(_mm256_hadd_epi16(p[2], p[3]), ones);
                let s = _mm256_sub_epi32(_mm256_hadd_epi32(m01, m23), bias);
                // (dw[2j], dw[2j + 1]) spread to lanes 0-3 and 4-7.
                let dw2 = _mm_castpd_ps(_mm_load_sd(t.dw[r].as_ptr().add(2 * j) as *const f64));
                let dw = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(dw2), pick);
                facc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, da), facc[r]);
            }
        }
    }
    fold_halves(facc)
}

/// AVX2 twin of `qgemm::unpack_q5_0_scalar`: a Q5_0 or Q5_0R8 row piece of whole blocks (a
/// Q5_0R8 piece starting at a multiple of 8 blocks, see `crate::repack`) into the unsigned
/// 5-bit quants in pair order (`qgemm::pos32`) and the block scales.
pub(crate) fn unpack_q5_0(ty: GgmlType, src: &[u8], q: &mut [u8], d: &mut [f32]) {
    let nb = src.len() / 22;
    assert!(
        q.len() >= nb.next_multiple_of(2) * 32
            && d.len() >= nb
            && matches!(ty, GgmlType::Q5_0 | GgmlType::Q5_0R8),
        "qgemm unpack_q5_0 operands"
    );
    // SAFETY: only handed out on AVX2 (see `tile`); lengths checked above.
    unsafe { unpack_q5_0_kernel(ty == GgmlType::Q5_0R8, &src[..nb * 22], q, d) }
}

/// Block `k`'s 32 quants to their pair-order places (`qgemm::pos32`).
///
/// SAFETY (caller): avx2 available; `q` holds the pair of block `k`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn store_pair_half(q: *mut u8, k: usize, x: __m256i) {
    // SAFETY: per the caller's contract.
    unsafe {
        let p = q.add(64 * (k / 2) + 16 * (k % 2));
        _mm_storeu_si128(p as *mut __m128i, _mm256_castsi256_si128(x));
        _mm_storeu_si128(p.add(32) as *mut __m128i, _mm256_extracti128_si256::<1>(x));
    }
}

/// SAFETY (caller): avx2+fma+f16c available; `q` >= 32 bytes per block rounded up to whole
/// pairs, `d` >= 1 entry per 22-byte block.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_q5_0_kernel(r8: bool, src: &[u8], q: &mut [u8], d: &mut [f32]) {
    let nb = src.len() / 22;
    let (full, quad) = if r8 {
        let full = nb / 8 * 8;
        (full, if nb - full >= 4 { 4 } else { 0 })
    } else {
        (0, 0)
    };
    let bias = _mm256_set1_epi8(16);
    let qp = q.as_mut_ptr();
    let mut b = 0;
    // SAFETY: groups and blocks lie inside `src` (b + size <= nb); block k's quants go to
    // q[32k..32k + 32] and its scale to d[k], inside the caller's lengths.
    unsafe {
        while b < full + quad {
            let size = if b < full { 8 } else { 4 };
            let g = src.as_ptr().add(b * 22);
            let put = |k: usize, x: __m256i| store_pair_half(qp, b + k, _mm256_add_epi8(x, bias));
            if size == 8 {
                let sc = _mm256_cvtph_ps(_mm_loadu_si128(g as *const __m128i));
                _mm256_storeu_ps(d.as_mut_ptr().add(b), sc);
                super::avx2_decode::r8_group::<8>(g, put);
            } else {
                let sc = _mm_cvtph_ps(_mm_loadl_epi64(g as *const __m128i));
                _mm_storeu_ps(d.as_mut_ptr().add(b), sc);
                super::avx2_decode::r8_group::<4>(g, put);
            }
            b += size;
        }
        let m4 = _mm_set1_epi8(0x0F);
        for k in b..nb {
            let blk = &src[22 * k..22 * k + 22];
            d[k] = crate::scalar::f16_at(blk, 0);
            let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
            let hi = _mm256_and_si256(super::avx2::bytes_from_bits_32(qh), _mm256_set1_epi8(0x10));
            let v = _mm_loadu_si128(blk[6..].as_ptr() as *const __m128i);
            let nib = _mm256_set_m128i(
                _mm_and_si128(_mm_srli_epi16::<4>(v), m4),
                _mm_and_si128(v, m4),
            );
            store_pair_half(qp, k, _mm256_or_si256(nib, hi));
        }
    }
}

/// AVX2 twin of `qgemm::quant32_scalar` (bitwise: same products, `vcvtps2dq` rounds half to
/// even like ggml's `nearest_int`).
pub(crate) fn quant32(x: &[f32], q: &mut [i8]) -> f32 {
    assert!(x.len() >= 32 && q.len() >= 32, "quant32 operands");
    // SAFETY: only handed out on AVX2 (see `tile`); 32 values in and out checked above.
    unsafe { quant32_kernel(x.as_ptr(), q.as_mut_ptr()) }
}

/// SAFETY (caller): avx2 available; 32 readable f32 at `x`, 32 writable bytes at `q`.
#[target_feature(enable = "avx2,fma")]
unsafe fn quant32_kernel(x: *const f32, q: *mut i8) -> f32 {
    // SAFETY: per the caller's contract.
    unsafe {
        let v = [0, 8, 16, 24].map(|i| _mm256_loadu_ps(x.add(i)));
        let sign = _mm256_set1_ps(-0.0);
        let m = v.iter().fold(_mm256_setzero_ps(), |m, &v| {
            _mm256_max_ps(m, _mm256_andnot_ps(sign, v))
        });
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)));
        let id = _mm256_set1_ps(if amax > 0.0 { 127.0 / amax } else { 0.0 });
        let i = v.map(|v| _mm256_cvtps_epi32(_mm256_mul_ps(v, id)));
        // Packs interleave 128-bit lanes; the final dword permute restores value order.
        let w01 = _mm256_packs_epi32(i[0], i[1]);
        let w23 = _mm256_packs_epi32(i[2], i[3]);
        let b = _mm256_packs_epi16(w01, w23);
        let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(q as *mut __m256i, b);
        amax / 127.0
    }
}
