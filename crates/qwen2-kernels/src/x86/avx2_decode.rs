//! AVX2 decode-row tile kernels (see `crate::decode`): several `(weight row, activation row)`
//! dot products per call, each pair bitwise equal to the single-row kernel of `super::avx2`.
//!
//! Each pair performs exactly the float operations of its `vec_dot` twin in the same order
//! (same per-block scale products, same FMA chains: even/odd blocks for the 32-value formats,
//! same final horizontal sums); only loads, weight unpacking and activation-scale widening are
//! shared between pairs: one weight row is unpacked once per block and dotted against up to 4
//! activation rows. (Multi-row tiles form the per-block scale products `d_w * d_a` 8 blocks
//! per multiply: the same f32 products, read back per pair with a broadcast load.) The kernels
//! are generic over `R` weight rows too, but only `R = 1` is used (see `tile_entry!`).

use super::avx2::{bytes_from_bits_32, hsum_ps, k4_unpack_v, loadu, nibbles_32};
use crate::decode::{ActRows, DotTileFn};
use crate::GgmlType;
use std::arch::x86_64::*;

pub(crate) fn dot_tile_fn(ty: GgmlType) -> Option<DotTileFn> {
    Some(match ty {
        GgmlType::Q8_0 => tile_q8_0,
        GgmlType::Q5_0 => tile_q5_0,
        GgmlType::Q5_0R8 => tile_q5_0_r8,
        GgmlType::Q4_0 => tile_q4_0,
        GgmlType::Q4K => tile_q4_k,
        GgmlType::Q6K => tile_q6_k,
        _ => return None,
    })
}

/// Checks the tile contract (panics on a caller bug instead of reading out of bounds) and
/// returns `(blocks per row, weight rows, activation rows)`.
#[allow(clippy::too_many_arguments)]
fn check(
    n: usize,
    bs: usize,
    ts: usize,
    ats: usize,
    w: &[u8],
    rb: usize,
    acts: &ActRows,
    out: &[f32],
    act_scales: bool,
) -> (usize, usize, usize) {
    let nb = n / bs;
    let nr = w.len() / rb.max(1);
    let nc = acts.rows();
    assert!(rb >= nb * ts && w.len() == nr * rb, "weight tile shape");
    assert!(
        acts.stride >= nb * ats && acts.q.len() == nc * acts.stride,
        "activation tile shape"
    );
    assert!(
        !act_scales || (acts.d_stride >= nb && acts.d.len() >= nc * acts.d_stride),
        "activation scales"
    );
    assert_eq!(out.len(), nr * nc, "tile output");
    (nb, nr, nc)
}

/// The f16 at `p` widened to f32 in all 8 lanes (`vpbroadcastw` + `vcvtph2ps`). Not a scalar
/// `f16 -> f32`: LLVM turns that 2-byte load into `vpinsrw` merging into an unrelated register
/// (often an accumulator), a false dependency that chained every block to the previous FMA.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_bcast(p: *const u8) -> __m256 {
    // SAFETY: caller guarantees 2 readable bytes at p.
    let h = unsafe { std::ptr::read_unaligned(p as *const i16) };
    _mm256_cvtph_ps(_mm_set1_epi16(h))
}

/// `p`, hidden from the optimizer: loads through it are real loads. Per-block scale products
/// written to a small array and read back through this stay in memory, one broadcast load per
/// use; LLVM otherwise keeps the arrays in registers and extracts each lane with shuffles
/// (two shuffle uops per pair, and registers the multi-row tiles need for their sums).
#[inline(always)]
fn opaque<T>(mut p: *const T) -> *const T {
    // SAFETY: an empty asm block; it may "read" the memory behind `p` (no `nomem`), so the
    // stores before it are kept.
    unsafe { std::arch::asm!("/* {0} */", inout(reg) p, options(nostack, preserves_flags)) };
    p
}

/// Generates a safe tile entry over a `<R, C>` kernel
/// `unsafe fn(nb, [w; R], [a; C], [a_scales; C]) -> [[f32; C]; R]`: per weight row, `<1, 4>`
/// over groups of 4 activation rows and a `<1, 1..=3>` remainder. (`<4, 1>` GEMV tiles, four
/// weight rows against one activation row, measured up to 3x slower on the Q8_0 lm_head.)
macro_rules! tile_entry {
    ($name:ident, $kernel:ident, $bs:expr, $ts:expr, $ats:expr, $act_scales:expr) => {
        fn $name(n: usize, w: &[u8], rb: usize, acts: &ActRows, out: &mut [f32]) {
            let (nb, _, nc) = check(n, $bs, $ts, $ats, w, rb, acts, out, $act_scales);
            if nc == 0 {
                return;
            }
            let wp = |r: usize| w[r * rb..].as_ptr();
            let ap = |c: usize| acts.q[c * acts.stride..].as_ptr();
            let dp = |c: usize| {
                if $act_scales {
                    acts.d[c * acts.d_stride..].as_ptr()
                } else {
                    acts.d.as_ptr()
                }
            };
            // SAFETY: `dot_tile_fn` of this module is only consulted for `Isa::Avx2` or higher,
            // selected only after `Isa::is_available` confirmed avx2+fma+f16c. `check` verified
            // that every weight pointer (r < nr) has `nb` blocks of $ts bytes, every activation
            // pointer (c < nc) `nb` blocks of $ats bytes and (Q8_0 activations) `nb` scales.
            unsafe {
                for (r, o) in out.chunks_exact_mut(nc).enumerate() {
                    let mut c = 0;
                    while c + 4 <= nc {
                        let v = $kernel::<1, 4>(
                            nb,
                            [wp(r)],
                            [ap(c), ap(c + 1), ap(c + 2), ap(c + 3)],
                            [dp(c), dp(c + 1), dp(c + 2), dp(c + 3)],
                        );
                        o[c..c + 4].copy_from_slice(&v[0]);
                        c += 4;
                    }
                    match nc - c {
                        3 => {
                            let v = $kernel::<1, 3>(
                                nb,
                                [wp(r)],
                                [ap(c), ap(c + 1), ap(c + 2)],
                                [dp(c), dp(c + 1), dp(c + 2)],
                            );
                            o[c..].copy_from_slice(&v[0]);
                        }
                        2 => {
                            let v = $kernel::<1, 2>(
                                nb,
                                [wp(r)],
                                [ap(c), ap(c + 1)],
                                [dp(c), dp(c + 1)],
                            );
                            o[c..].copy_from_slice(&v[0]);
                        }
                        1 => o[c] = $kernel::<1, 1>(nb, [wp(r)], [ap(c)], [dp(c)])[0][0],
                        _ => {}
                    }
                }
            }
        }
    };
}

// ------------------------------------------------------------------------------------------
// 32-value blocks vs Q8_0 (twins of `avx2::q32_kernel!`)
// ------------------------------------------------------------------------------------------

/// `$body` 8 times with `$k` = 0, 1, .., 7. Hand unrolled: LLVM keeps a loop over 8 blocks of
/// a multi-row tile rolled (its body is large), and then indexes the block-parity accumulators
/// through memory or register copies.
macro_rules! unroll8 {
    ($k:ident, $body:block) => {{
        {
            let $k = 0usize;
            $body
        }
        {
            let $k = 1usize;
            $body
        }
        {
            let $k = 2usize;
            $body
        }
        {
            let $k = 3usize;
            $body
        }
        {
            let $k = 4usize;
            $body
        }
        {
            let $k = 5usize;
            $body
        }
        {
            let $k = 6usize;
            $body
        }
        {
            let $k = 7usize;
            $body
        }
    }};
}

macro_rules! q32_tile {
    ($kernel:ident, $ts:expr, |$xp:ident| $decode:expr) => {
        /// SAFETY (caller): avx2+fma+f16c available; each `w[r]` has `nb` blocks of $ts bytes,
        /// each `a[c]` `nb` Q8_0 blocks and each `ad[c]` `nb` f32 scales.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $kernel<const R: usize, const C: usize>(
            nb: usize,
            w: [*const u8; R],
            a: [*const u8; C],
            ad: [*const f32; C],
        ) -> [[f32; C]; R] {
            let ones = _mm256_set1_epi16(1);
            // Groups of 8 blocks for multi-row tiles; one row widens each scale on its own
            // (gathering 8 of them costs more than the one multiply per block it saves).
            let full = if C > 1 { nb / 8 * 8 } else { 0 };
            let mut out = [[0.0f32; C]; R];
            // SAFETY: blocks b < nb only, inside every row per the caller's contract.
            unsafe {
                // Block b (at `xp`) of one weight row against every activation row, into the
                // accumulators of its parity; `d[c]`: row c's scale product `d_w * d_a` (the
                // same f32 product as `f16_mul_bcast`) in all lanes.
                let block = |b: usize, $xp: *const u8, d: [__m256; C], acc: &mut [__m256; C]| {
                    let x: __m256i = $decode;
                    let ax = _mm256_sign_epi8(x, x);
                    for c in 0..C {
                        let y = loadu(a[c].add(b * 34 + 2));
                        let dot = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(y, x));
                        let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(dot, ones));
                        acc[c] = _mm256_fmadd_ps(d[c], p, acc[c]);
                    }
                };
                for r in 0..R {
                    // acc[k][c]: block parity k, as the single-row kernel's acc0 / acc1.
                    let mut acc = [[_mm256_setzero_ps(); C]; 2];
                    let mut b = 0;
                    while b < full {
                        // The 8 blocks' scale products for every row at once (one multiply per
                        // row instead of one per pair and block).
                        let wp = w[r].add(b * $ts);
                        pf_ahead(wp, 8 * $ts);
                        let h = |k: usize| std::ptr::read_unaligned(wp.add(k * $ts) as *const i16);
                        let s = _mm256_cvtph_ps(_mm_setr_epi16(
                            h(0),
                            h(1),
                            h(2),
                            h(3),
                            h(4),
                            h(5),
                            h(6),
                            h(7),
                        ));
                        let mut d = [[0.0f32; 8]; C];
                        for c in 0..C {
                            let da = _mm256_loadu_ps(ad[c].add(b));
                            _mm256_storeu_ps(d[c].as_mut_ptr(), _mm256_mul_ps(s, da));
                        }
                        let dp = opaque(d.as_ptr() as *const f32);
                        unroll8!(k, {
                            let d =
                                std::array::from_fn(|c| _mm256_broadcast_ss(&*dp.add(8 * c + k)));
                            block(b + k, wp.add(k * $ts), d, &mut acc[k & 1]);
                        });
                        b += 8;
                    }
                    // The rest block by block (b is even here: `full` is a multiple of 8).
                    let one = |b: usize, acc: &mut [__m256; C]| {
                        let xp = w[r].add(b * $ts);
                        pf_ahead(xp, $ts);
                        let fx = f16_bcast(xp);
                        let d = std::array::from_fn(|c| {
                            _mm256_mul_ps(fx, _mm256_broadcast_ss(&*ad[c].add(b)))
                        });
                        block(b, xp, d, acc);
                    };
                    while b + 2 <= nb {
                        one(b, &mut acc[0]);
                        one(b + 1, &mut acc[1]);
                        b += 2;
                    }
                    if b < nb {
                        one(b, &mut acc[0]);
                    }
                    for c in 0..C {
                        out[r][c] = hsum_ps(_mm256_add_ps(acc[0][c], acc[1][c]));
                    }
                }
            }
            out
        }
    };
}

q32_tile!(q8_0_k, 34, |xp| loadu(xp.add(2)));
q32_tile!(q4_0_k, 18, |xp| _mm256_sub_epi8(
    nibbles_32(xp.add(2)),
    _mm256_set1_epi8(8)
));
q32_tile!(q5_0_k, 22, |xp| {
    let qh = std::ptr::read_unaligned(xp.add(2) as *const u32);
    let hi = _mm256_andnot_si256(bytes_from_bits_32(qh), _mm256_set1_epi8(0xF0u8 as i8));
    _mm256_or_si256(nibbles_32(xp.add(6)), hi)
});
tile_entry!(tile_q8_0, q8_0_k, 32, 34, 34, true);
tile_entry!(tile_q4_0, q4_0_k, 32, 18, 34, true);
tile_entry!(tile_q5_0, q5_0_k, 32, 22, 34, true);

// ------------------------------------------------------------------------------------------
// k-quants vs Q8_K (`avx2::q4_k_kernel` / `q6_k_kernel` are these at `<1, 1>`)
//
// Per pair and block the float operations are those of the original single-row kernels (one
// `d = yd * d_x` FMA of the i32 lane sums, for Q4_K also the `dmin` FMA of the 4 mins lanes);
// the integer lane sums are exact, so how they are formed is free: scales are unpacked and
// broadcast with vector shuffles, and multi-row tiles keep their unpacked weights in registers.
// ------------------------------------------------------------------------------------------

/// An empty `asm!` that takes and "modifies" all of a multi-row tile's integer sums at once,
/// placed after each unpacked weight step. Without it LLVM reassociates the sums and reorders
/// the work activation row by row, which keeps every unpacked weight vector of the block live
/// at once (16+ ymm: spills that made `<1, 4>` tiles slower per pair than `<1, 1>`). A no-op
/// for one row, where nothing spills.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fence<const C: usize>(v: &mut [__m256i; C]) {
    // SAFETY: empty asm blocks that only "modify" the registers holding the sums.
    unsafe {
        match v.as_mut_slice() {
            [a, b] => std::arch::asm!(
                "/* {0} {1} */",
                inout(ymm_reg) * a,
                inout(ymm_reg) * b,
                options(pure, nomem, nostack, preserves_flags)
            ),
            [a, b, c] => std::arch::asm!(
                "/* {0} {1} {2} */",
                inout(ymm_reg) * a,
                inout(ymm_reg) * b,
                inout(ymm_reg) * c,
                options(pure, nomem, nostack, preserves_flags)
            ),
            [a, b, c, d] => std::arch::asm!(
                "/* {0} {1} {2} {3} */",
                inout(ymm_reg) * a,
                inout(ymm_reg) * b,
                inout(ymm_reg) * c,
                inout(ymm_reg) * d,
                options(pure, nomem, nostack, preserves_flags)
            ),
            _ => {}
        }
    }
}

/// `pshufb` control that spreads byte `s` of each 128-bit lane, zero-extended, to all 8 of
/// the lane's u16 (a per-sub-block scale broadcast without leaving the vector unit).
/// Software prefetch of the `len` weight bytes `PF_BYTES` ahead of `p` (the span the caller
/// is about to read, shifted), every cache line of it: decode streams each weight byte once
/// from DRAM, and the hardware prefetcher alone left the two cores at ~60% of the machine's
/// bandwidth (a 37 MB Q4_K matrix: ~+15-25% GB/s with this, 1.1 KB ahead to 2.3 KB ahead
/// measured alike within noise). Prefetches are hints: an address past the matrix never faults.
#[inline(always)]
fn pf_ahead(p: *const u8, len: usize) {
    const PF_BYTES: usize = 2048;
    let q = p.wrapping_add(PF_BYTES);
    let mut o = 0;
    while o < len {
        // SAFETY: `prefetcht0` never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(o) as *const i8) };
        o += 64;
    }
    // The span's last line when `len` is not a multiple of 64.
    // SAFETY: as above.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(len - 1) as *const i8) };
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn scale_pick(s: usize) -> __m256i {
    _mm256_set1_epi16((0x8000 | s as u16) as i16)
}

/// SAFETY (caller): avx2+fma+f16c available; each `w[r]` has `nb` 144-byte blocks and each
/// `a[c]` `nb` 292-byte Q8_K blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q4_k_k<const R: usize, const C: usize>(
    nb: usize,
    w: [*const u8; R],
    a: [*const u8; C],
    _ad: [*const f32; C],
) -> [[f32; C]; R] {
    let m4 = _mm256_set1_epi8(0x0F);
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let mut acc_m = [[_mm_setzero_ps(); C]; R];
    // SAFETY: blocks i < nb only, inside every row per the caller's contract.
    unsafe {
        for i in 0..nb {
            for r in 0..R {
                let xp = w[r].add(i * 144);
                pf_ahead(xp, 144);
                // [d_x, m_x, 0, 0] as f32: one conversion for both block scales.
                let fdm = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(
                    xp as *const i32,
                )));
                let sm = k4_unpack_v(xp.add(4));
                // mins as u16 (bytes 8..16 zero-extended), scales in both 128-bit lanes.
                let mins = _mm_shuffle_epi8(
                    sm,
                    _mm_setr_epi8(8, -1, 9, -1, 10, -1, 11, -1, 12, -1, 13, -1, 14, -1, 15, -1),
                );
                let sc = _mm256_broadcastsi128_si256(sm);
                let mut dd = [_mm_setzero_ps(); C];
                // The mins term first (its own accumulator, so the order is free): frees the
                // activation sums' registers before the main loop.
                for c in 0..C {
                    let yp = a[c].add(i * 292);
                    let bs = _mm256_loadu_si256(yp.add(260) as *const __m256i);
                    let bsum = _mm_hadd_epi16(
                        _mm256_castsi256_si128(bs),
                        _mm256_extracti128_si256::<1>(bs),
                    );
                    // [d, yd * m_x] with d = yd * d_x. dmin = -yd * m_x is the second product
                    // negated (exactly), folded into the FMA: fnmadd(a, b, c) == fmadd(-a, b, c).
                    dd[c] = _mm_mul_ps(_mm_broadcast_ss(&*(yp as *const f32)), fdm);
                    let ydm = _mm_permute_ps::<0x55>(dd[c]);
                    let prod = _mm_madd_epi16(mins, bsum);
                    acc_m[r][c] = _mm_fnmadd_ps(ydm, _mm_cvtepi32_ps(prod), acc_m[r][c]);
                }
                let mut sumi = [_mm256_setzero_si256(); C];
                let q4 = xp.add(16);
                for j in 0..4 {
                    let bits = loadu(q4.add(32 * j));
                    let lo = _mm256_and_si256(bits, m4);
                    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4);
                    let sl = _mm256_shuffle_epi8(sc, scale_pick(2 * j));
                    let sh = _mm256_shuffle_epi8(sc, scale_pick(2 * j + 1));
                    for c in 0..C {
                        let q8 = a[c].add(i * 292 + 4);
                        let pl = _mm256_maddubs_epi16(lo, loadu(q8.add(64 * j)));
                        let ph = _mm256_maddubs_epi16(hi, loadu(q8.add(64 * j + 32)));
                        let pl = _mm256_madd_epi16(sl, pl);
                        let ph = _mm256_madd_epi16(sh, ph);
                        sumi[c] = _mm256_add_epi32(sumi[c], _mm256_add_epi32(pl, ph));
                    }
                    fence(&mut sumi);
                }
                for c in 0..C {
                    let d = _mm256_broadcastss_ps(dd[c]);
                    acc[r][c] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi[c]), acc[r][c]);
                }
            }
        }
    }
    let mut out = [[0.0f32; C]; R];
    for r in 0..R {
        for c in 0..C {
            let am = acc_m[r][c];
            let m = _mm_add_ps(am, _mm_movehl_ps(am, am));
            let m = _mm_add_ss(m, _mm_movehdup_ps(m));
            out[r][c] = hsum_ps(acc[r][c]) + _mm_cvtss_f32(m);
        }
    }
    out
}

/// `pshufb` control that spreads word `w` of the low 128-bit lane and word `w + 1` of the high
/// lane over their lanes. (A same-word-in-both-lanes control would be cheaper to state, but
/// LLVM lowers that one to `vpshuflw`/`vpshufhw` + `vpshufd`, two shuffle uops instead of one.)
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn word_pair_pick(w: usize) -> __m256i {
    let lo = (((2 * w + 1) << 8) | (2 * w)) as i16;
    let hi = (((2 * w + 3) << 8) | (2 * w + 2)) as i16;
    _mm256_set_m128i(_mm_set1_epi16(hi), _mm_set1_epi16(lo))
}

/// SAFETY (caller): avx2+fma+f16c available; each `w[r]` has `nb` 210-byte blocks and each
/// `a[c]` `nb` 292-byte Q8_K blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q6_k_k<const R: usize, const C: usize>(
    nb: usize,
    w: [*const u8; R],
    a: [*const u8; C],
    _ad: [*const f32; C],
) -> [[f32; C]; R] {
    let m4 = _mm256_set1_epi8(0x0F);
    let m30 = _mm256_set1_epi8(0x30);
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    // SAFETY: blocks i < nb only, inside every row per the caller's contract.
    unsafe {
        for i in 0..nb {
            for r in 0..R {
                let xp = w[r].add(i * 210);
                pf_ahead(xp, 210);
                let sc = xp.add(192);
                let fd = f16_bcast(xp.add(208));
                // -32 offset folded in via the activation group sums: sum_g sc[g] * bsums[g].
                let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(sc as *const __m128i));
                // Scales 0..8 / 8..16 (as i16) in both lanes, for one in-lane shuffle per group.
                let sc_half = [
                    _mm256_permute2x128_si256::<0x00>(sc16, sc16),
                    _mm256_permute2x128_si256::<0x11>(sc16, sc16),
                ];
                let mut sumi = [_mm256_setzero_si256(); C];
                for c in 0..C {
                    let bs = _mm256_loadu_si256(a[c].add(i * 292 + 260) as *const __m256i);
                    let off = _mm256_slli_epi32::<5>(_mm256_madd_epi16(bs, sc16));
                    sumi[c] = _mm256_sub_epi32(_mm256_setzero_si256(), off);
                }
                for (half, &sc_h) in sc_half.iter().enumerate() {
                    let ql = xp.add(64 * half);
                    let qh = loadu(xp.add(128 + 32 * half));
                    let ql0 = loadu(ql);
                    let ql1 = loadu(ql.add(32));
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
                        // Scale sc[g] for the low 16 values, sc[g + 1] for the high 16,
                        // g = 8 * half + 2 * k.
                        let s = _mm256_shuffle_epi8(sc_h, word_pair_pick(2 * k));
                        for c in 0..C {
                            let q8 = a[c].add(i * 292 + 4 + 128 * half + 32 * k);
                            let p = _mm256_maddubs_epi16(v, loadu(q8));
                            sumi[c] = _mm256_add_epi32(sumi[c], _mm256_madd_epi16(p, s));
                        }
                        fence(&mut sumi);
                    }
                }
                for c in 0..C {
                    let yd = _mm256_broadcast_ss(&*(a[c].add(i * 292) as *const f32));
                    let d = _mm256_mul_ps(yd, fd);
                    acc[r][c] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi[c]), acc[r][c]);
                }
            }
        }
    }
    let mut out = [[0.0f32; C]; R];
    for r in 0..R {
        for c in 0..C {
            out[r][c] = hsum_ps(acc[r][c]);
        }
    }
    out
}

tile_entry!(tile_q4_k, q4_k_k, 256, 144, 292, false);
tile_entry!(tile_q6_k, q6_k_k, 256, 210, 292, false);

// ------------------------------------------------------------------------------------------
// Q5_0R8 (repacked Q5_0, see `crate::repack`) vs Q8_0: bitwise twins of the Q5_0 kernels
// ------------------------------------------------------------------------------------------

/// Block `K`'s inverted 5th bits moved to bit 4 of each byte (`0x10` where the bit is 0).
/// The 16-bit shifts never carry a byte's neighbour into its bit 4 (|shift| <= 4 left, <= 3
/// right), and the mask drops everything else.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn r8_t<const K: usize>(plane: __m256i) -> __m256i {
    let v = match K {
        0 => _mm256_slli_epi16::<4>(plane),
        1 => _mm256_slli_epi16::<3>(plane),
        2 => _mm256_slli_epi16::<2>(plane),
        3 => _mm256_slli_epi16::<1>(plane),
        4 => plane,
        5 => _mm256_srli_epi16::<1>(plane),
        6 => _mm256_srli_epi16::<2>(plane),
        _ => _mm256_srli_epi16::<3>(plane),
    };
    _mm256_and_si256(v, _mm256_set1_epi8(0x10))
}

/// The 32 signed values `q - 16` of every block of the Q5_0R8 group of `S` (8 or 4) blocks
/// at `p`, handed to `f(k, values)` in block order.
///
/// SAFETY (caller): avx2 available; `p` points at a whole group (`22 * S` bytes).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn r8_group<const S: usize>(p: *const u8, mut f: impl FnMut(usize, __m256i)) {
    let m4 = _mm256_set1_epi8(0x0F);
    // SAFETY: the scale, nibble and plane fields lie inside the group (see `crate::repack`).
    unsafe {
        let nib = p.add(2 * S);
        let plane = r8_plane::<S>(p);
        for pair in 0..S / 2 {
            let v = loadu(nib.add(32 * pair));
            let lo = _mm256_and_si256(v, m4);
            f(2 * pair, _mm256_sub_epi8(lo, r8_t_at(plane, 2 * pair)));
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
            f(
                2 * pair + 1,
                _mm256_sub_epi8(hi, r8_t_at(plane, 2 * pair + 1)),
            );
        }
    }
}

/// The group's 5th-bit plane: bit k of byte i is block k's value i (see `crate::repack`).
///
/// SAFETY (caller): as [`r8_group`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn r8_plane<const S: usize>(p: *const u8) -> __m256i {
    // SAFETY: the plane field lies inside the group.
    unsafe {
        if S == 8 {
            loadu(p.add(144))
        } else {
            let q = _mm_loadu_si128(p.add(72) as *const __m128i);
            let m = _mm_set1_epi8(0x0F);
            _mm256_set_m128i(
                _mm_and_si128(_mm_srli_epi16::<4>(q), m),
                _mm_and_si128(q, m),
            )
        }
    }
}

/// [`r8_t`] for a block index known only at run time.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn r8_t_at(plane: __m256i, k: usize) -> __m256i {
    match k {
        0 => r8_t::<0>(plane),
        1 => r8_t::<1>(plane),
        2 => r8_t::<2>(plane),
        3 => r8_t::<3>(plane),
        4 => r8_t::<4>(plane),
        5 => r8_t::<5>(plane),
        6 => r8_t::<6>(plane),
        _ => r8_t::<7>(plane),
    }
}

/// [`r8_group`] for multi-row tiles, unrolled by hand with constant shifts. Around a multi-row
/// `f`, LLVM keeps `r8_group`'s loop rolled: it selects the plane shift through a jump table,
/// spills the shifted planes and copies the parity accumulators (this, with `opaque` scale
/// products: ~1.1x faster `<1, 4>` Q5_0R8 tiles).
///
/// SAFETY (caller): avx2 available; `p` points at a whole group (`22 * S` bytes).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn r8_group_unrolled<const S: usize>(p: *const u8, mut f: impl FnMut(usize, __m256i)) {
    let m4 = _mm256_set1_epi8(0x0F);
    // SAFETY: the scale, nibble and plane fields lie inside the group (see `crate::repack`).
    unsafe {
        let nib = p.add(2 * S);
        let plane = r8_plane::<S>(p);
        // Blocks 2j (low nibbles) and 2j + 1 (high nibbles) of nibble vector j.
        macro_rules! pair {
            ($j:literal, $k0:literal, $k1:literal) => {{
                let v = loadu(nib.add(32 * $j));
                let lo = _mm256_and_si256(v, m4);
                f($k0, _mm256_sub_epi8(lo, r8_t::<$k0>(plane)));
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
                f($k1, _mm256_sub_epi8(hi, r8_t::<$k1>(plane)));
            }};
        }
        pair!(0, 0, 1);
        pair!(1, 2, 3);
        if S == 8 {
            pair!(2, 4, 5);
            pair!(3, 6, 7);
        }
    }
}

/// Accumulates blocks `b0..b1` of a Q5_0R8 row of `nb` blocks at `w` against `C` Q8_0
/// activation rows into `acc[block parity][c]`, exactly as `q5_0_k` does for the same Q5_0
/// blocks: same integer lane sums, same `d = d_w * d_a` products, same FMA order.
///
/// SAFETY (caller): avx2+fma+f16c available; `b0` is a multiple of 8 and `b1` one too or
/// `nb`; `w` has `nb` blocks of 22 bytes, each `a[c]` `nb` Q8_0 blocks and each `ad[c]` the
/// f32 scales of activation blocks `b0..b1` (`ad[c]` is block `b0`'s).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q5_0_r8_blocks<const C: usize>(
    nb: usize,
    b0: usize,
    b1: usize,
    w: *const u8,
    a: [*const u8; C],
    ad: [*const f32; C],
    acc: &mut [[__m256; C]; 2],
) {
    let ones = _mm256_set1_epi16(1);
    let full = nb / 8 * 8;
    // SAFETY: blocks b0..b1 only, inside every row per the caller's contract; the group
    // fields per `crate::repack`.
    unsafe {
        // One weight block (32 signed values `x`) against every row; row c's scale product
        // `d = d_w * d_a` at `d.add(c * stride)`.
        let dot = |b: usize, x: __m256i, d: *const f32, stride: usize, acc: &mut [__m256; C]| {
            let ax = _mm256_sign_epi8(x, x);
            for c in 0..C {
                let y = loadu(a[c].add(b * 34 + 2));
                let dot = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(y, x));
                let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(dot, ones));
                let dc = _mm256_broadcast_ss(&*d.add(c * stride));
                acc[c] = _mm256_fmadd_ps(dc, p, acc[c]);
            }
        };
        let mut b = b0;
        // One group of `$size` blocks at block `b`: its scales (`$p` the group's first byte)
        // times the activation scales, then every block against every row.
        macro_rules! group {
            ($size:literal, $p:ident => $scales:expr, $load:ident, $store:ident, $mul:ident) => {{
                let $p = w.add(b * 22);
                pf_ahead($p, $size * 22);
                let s = $scales;
                let mut d = [[0.0f32; $size]; C];
                for c in 0..C {
                    let da = $load(ad[c].add(b - b0));
                    $store(d[c].as_mut_ptr(), $mul(s, da));
                }
                if C == 1 {
                    // One row (`vec_dot`, batch-1 decode): the rolled loop and the scale
                    // products in registers, as before; the multi-row form measured no clear
                    // gain here.
                    r8_group::<$size>($p, |k, x| {
                        let dk: [f32; C] = std::array::from_fn(|c| d[c][k]);
                        dot(b + k, x, dk.as_ptr(), 1, &mut acc[k & 1]);
                    });
                } else {
                    let dp = opaque(d.as_ptr() as *const f32);
                    r8_group_unrolled::<$size>($p, |k, x| {
                        dot(b + k, x, dp.add(k), $size, &mut acc[k & 1])
                    });
                }
                b += $size;
            }};
        }
        while b + 8 <= b1.min(full) {
            group!(8, p => _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
                _mm256_loadu_ps, _mm256_storeu_ps, _mm256_mul_ps);
        }
        if b < b1 && b == full && nb - full >= 4 {
            group!(4, p => _mm_cvtph_ps(_mm_loadl_epi64(p as *const __m128i)),
                _mm_loadu_ps, _mm_storeu_ps, _mm_mul_ps);
        }
        while b < b1 {
            // The last 0..=3 blocks are plain Q5_0 (decoded as in `q5_0_k`).
            let xp = w.add(b * 22);
            let qh = std::ptr::read_unaligned(xp.add(2) as *const u32);
            let hi = _mm256_andnot_si256(bytes_from_bits_32(qh), _mm256_set1_epi8(0xF0u8 as i8));
            let x = _mm256_or_si256(nibbles_32(xp.add(6)), hi);
            let fx = f16_bcast(xp);
            let dk: [f32; C] = std::array::from_fn(|c| {
                _mm_cvtss_f32(_mm256_castps256_ps128(_mm256_mul_ps(
                    fx,
                    _mm256_broadcast_ss(&*ad[c].add(b - b0)),
                )))
            });
            dot(b, x, dk.as_ptr(), 1, &mut acc[b & 1]);
            b += 1;
        }
    }
}

/// SAFETY (caller): as `q5_0_r8_blocks` over whole rows (`nb` scales at each `ad[c]`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_0_r8_k<const R: usize, const C: usize>(
    nb: usize,
    w: [*const u8; R],
    a: [*const u8; C],
    ad: [*const f32; C],
) -> [[f32; C]; R] {
    let mut out = [[0.0f32; C]; R];
    for r in 0..R {
        let mut acc = [[_mm256_setzero_ps(); C]; 2];
        // SAFETY: forwarded caller contract, blocks 0..nb.
        unsafe { q5_0_r8_blocks::<C>(nb, 0, nb, w[r], a, ad, &mut acc) };
        for c in 0..C {
            out[r][c] = hsum_ps(_mm256_add_ps(acc[0][c], acc[1][c]));
        }
    }
    out
}

tile_entry!(tile_q5_0_r8, q5_0_r8_k, 32, 22, 34, true);
