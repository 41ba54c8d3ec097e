//! AVX2 decode-row tile kernels (see `crate::decode`): several `(weight row, activation row)`
//! dot products per call, each pair bitwise equal to the single-row kernel of `super::avx2`.
//! (Q5_0R8's tile, at the end, defines its own arithmetic, see `crate::repack`; the notes below
//! are about the other formats.)
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
        GgmlType::Q4KR => tile_q4_kr,
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
    ($kernel:ident, $kernel_v:ident, $ts:expr, |$xp:ident| $decode:expr) => {
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
            // SAFETY: per the caller's contract; VNNI only where `vnni()` confirmed it.
            unsafe { vnni_form!($kernel_v::<R, C>(nb, w, a, ad)) }
        }

        /// The body; `V`: each block's products summed by one `vpdpbusd` from zero instead of
        /// `vpmaddubsw` + `vpmaddwd` (the same i32 lane sums: the pair sums of `|x| * y`, at
        /// most 2 * 128 * 127 = 32512 in magnitude, do not saturate), so bitwise the same.
        ///
        /// SAFETY (caller): as the entry's, and AVX-512 VNNI (VL) if `V`.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $kernel_v<const R: usize, const C: usize, const V: bool>(
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
                        let i = if V {
                            dpbusd(_mm256_setzero_si256(), ax, _mm256_sign_epi8(y, x))
                        } else {
                            let dot = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(y, x));
                            _mm256_madd_epi16(dot, ones)
                        };
                        let p = _mm256_cvtepi32_ps(i);
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

q32_tile!(q8_0_k, q8_0_kv, 34, |xp| loadu(xp.add(2)));
q32_tile!(q4_0_k, q4_0_kv, 18, |xp| _mm256_sub_epi8(
    nibbles_32(xp.add(2)),
    _mm256_set1_epi8(8)
));
q32_tile!(q5_0_k, q5_0_kv, 22, |xp| {
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
    ad: [*const f32; C],
) -> [[f32; C]; R] {
    // SAFETY: per the caller's contract; VNNI only where `vnni()` confirmed it.
    unsafe { vnni_form!(q6_k_kv::<R, C>(nb, w, a, ad)) }
}

/// [`q6_k_k`]'s body; `V`: the group scales applied and accumulated by one `vpdpwssd` (the
/// exact i32 result of `vpmaddwd` + `vpaddd`), so bitwise the AVX2 form.
///
/// SAFETY (caller): as [`q6_k_k`], and AVX-512 VNNI (VL) if `V`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q6_k_kv<const R: usize, const C: usize, const V: bool>(
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
                let mut sumv = [_mm256_setzero_si256(); C];
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
                        // VNNI: odd steps into a second chain (`vpdpwssd`'s latency; see
                        // `q4_kr_kv`), added at the end: the same i32 sums.
                        let odd = V && k % 2 == 1;
                        for c in 0..C {
                            let q8 = a[c].add(i * 292 + 4 + 128 * half + 32 * k);
                            let p = _mm256_maddubs_epi16(v, loadu(q8));
                            if odd {
                                sumv[c] = dpwssd(sumv[c], p, s);
                            } else if V {
                                sumi[c] = dpwssd(sumi[c], p, s);
                            } else {
                                sumi[c] = _mm256_add_epi32(sumi[c], _mm256_madd_epi16(p, s));
                            }
                        }
                        fence(&mut sumi);
                        if V {
                            fence(&mut sumv);
                        }
                    }
                }
                for c in 0..C {
                    if V {
                        sumi[c] = _mm256_add_epi32(sumi[c], sumv[c]);
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
tile_entry!(
    tile_q4_kr,
    q4_kr_k,
    256,
    144,
    crate::repack_q4k::ACT_BYTES,
    false
);
tile_entry!(tile_q6_k, q6_k_k, 256, 210, 292, false);

// ------------------------------------------------------------------------------------------
// Q4KR (repacked Q4_K, see `crate::repack_q4k`) vs prepared Q8_K rows: its own arithmetic
// ------------------------------------------------------------------------------------------

/// A 256-bit AVX-512 VNNI instruction `acc += f(a, b)` per i32 lane, as a register-only
/// `asm!` (usable inside the AVX2 kernels; the CPU check is the caller's).
macro_rules! vnni_op {
    ($(#[$doc:meta])* $name:ident, $insn:literal) => {
        $(#[$doc])*
        ///
        /// SAFETY (caller): AVX-512 VNNI (VL) available.
        #[inline]
        #[target_feature(enable = "avx2")]
        pub(crate) unsafe fn $name(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
            let mut acc = acc;
            // SAFETY: a register-only instruction, available per the caller's contract.
            unsafe {
                std::arch::asm!(
                    concat!($insn, " {acc}, {a}, {b}"),
                    acc = inout(ymm_reg) acc,
                    a = in(ymm_reg) a,
                    b = in(ymm_reg) b,
                    options(pure, nomem, nostack, preserves_flags),
                )
            };
            acc
        }
    };
}

vnni_op!(
    /// `acc + sum of 4 products u8(a) * i8(b)` per i32 lane: `vpdpbusd` (exact, where the AVX2
    /// `vpmaddubsw` + `vpmaddwd` + `vpaddd` it replaces forms i16 pairs).
    dpbusd,
    "vpdpbusd"
);
vnni_op!(
    /// `acc + a[2i] * b[2i] + a[2i+1] * b[2i+1]` per i32 lane: `vpdpwssd` (the exact result of
    /// the `vpmaddwd` + `vpaddd` pair it replaces).
    dpwssd,
    "vpdpwssd"
);

/// `pshufb` control: as [`q4kr_scale_spread`], each scale zero-extended into its i32 lane
/// (lane `j` = sub-block `j`), for the VNNI form's `vpmulld`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q4kr_scale_spread32() -> __m256i {
    _mm256_setr_epi8(
        0, -128, -128, -128, 1, -128, -128, -128, 2, -128, -128, -128, 3, -128, -128, -128, 4,
        -128, -128, -128, 5, -128, -128, -128, 6, -128, -128, -128, 7, -128, -128, -128,
    )
}

/// `pshufb` control spreading scale bytes 0-3 (low 128-bit lane) and 4-7 (high lane) of
/// `k4_unpack_v`'s output, each zero-extended, over two i16 lanes: i16 lane `L` gets the
/// scale of sub-block `L / 2`, the group its values belong to in the Q4KR step order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q4kr_scale_spread() -> __m256i {
    _mm256_setr_epi8(
        0, -128, 0, -128, 1, -128, 1, -128, 2, -128, 2, -128, 3, -128, 3, -128, 4, -128, 4, -128,
        5, -128, 5, -128, 6, -128, 6, -128, 7, -128, 7, -128,
    )
}

/// Per super-block and pair: the 8 steps' `vpmaddubsw` (unsigned nibbles x int8 activations in
/// step order) added in i16, one `vpmaddwd` by the spread scales (lane `j` = sub-block `j`'s
/// scaled sum), one FMA; the mins term from the prepared sub-block sums (one `vpmaddwd` of 8
/// i16 pairs, one FMA). Bitwise `repack_q4k::vec_dot`.
///
/// On VNNI (`isa::vnni`) the steps go through [`q4_kr_kv`]'s `vpdpbusd` form: the same sums.
///
/// SAFETY (caller): avx2+fma+f16c available; each `w[r]` has `nb` 144-byte Q4KR blocks and
/// each `a[c]` `nb` prepared super-blocks (`repack_q4k::prep_act_row`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q4_kr_k<const R: usize, const C: usize>(
    nb: usize,
    w: [*const u8; R],
    a: [*const u8; C],
    ad: [*const f32; C],
) -> [[f32; C]; R] {
    // SAFETY: per the caller's contract; VNNI only where `vnni()` confirmed it.
    unsafe { vnni_form!(q4_kr_kv::<R, C>(nb, w, a, ad)) }
}

/// [`q4_kr_k`]'s body; `V`: each step's two products per row added into i32 lanes by
/// `vpdpbusd` (an i32 lane is the i16 lane pair of one sub-block), the scales applied by
/// `vpmulld`: exactly the i32 sums of the AVX2 form's `vpmaddwd`, so bitwise its results.
///
/// SAFETY (caller): as [`q4_kr_k`], and AVX-512 VNNI (VL) if `V`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q4_kr_kv<const R: usize, const C: usize, const V: bool>(
    nb: usize,
    w: [*const u8; R],
    a: [*const u8; C],
    _ad: [*const f32; C],
) -> [[f32; C]; R] {
    use crate::repack_q4k::ACT_BYTES;
    let m4 = _mm256_set1_epi8(0x0F);
    let spread = if V {
        q4kr_scale_spread32()
    } else {
        q4kr_scale_spread()
    };
    let pick_mins = _mm_setr_epi8(8, -1, 9, -1, 10, -1, 11, -1, 12, -1, 13, -1, 14, -1, 15, -1);
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let mut accm = [[_mm_setzero_ps(); C]; R];
    // SAFETY: blocks i < nb only, inside every row per the caller's contract.
    unsafe {
        for i in 0..nb {
            for r in 0..R {
                let xp = w[r].add(i * 144);
                pf_ahead(xp, 144);
                // [d_x, m_x, 0, 0] as f32.
                let fdm = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(
                    xp as *const i32,
                )));
                let sm = k4_unpack_v(xp.add(4));
                let mins = _mm_shuffle_epi8(sm, pick_mins);
                let sc = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(sm), spread);
                let mut dd = [_mm_setzero_ps(); C];
                for c in 0..C {
                    let yp = a[c].add(i * ACT_BYTES);
                    // [d, m] = yd * [d_x, m_x]; the mins term subtracts m * p (fnmadd).
                    dd[c] = _mm_mul_ps(_mm_broadcast_ss(&*(yp.add(272) as *const f32)), fdm);
                    let m = _mm_permute_ps::<0x55>(dd[c]);
                    let ys = _mm_loadu_si128(yp.add(256) as *const __m128i);
                    let p = _mm_madd_epi16(mins, ys);
                    accm[r][c] = _mm_fnmadd_ps(m, _mm_cvtepi32_ps(p), accm[r][c]);
                }
                let mut s16 = [_mm256_setzero_si256(); C];
                // VNNI: i32 lanes in independent chains (low / high nibbles, and for one row
                // also even / odd steps), added at the end: a single chain of 8 `vpdpbusd`
                // (~5 cycles of latency each) made one-row decode slower than AVX2's.
                let mut v32 = [[_mm256_setzero_si256(); C]; 4];
                for k in 0..4 {
                    let bits = loadu(xp.add(16 + 32 * k));
                    let lo = _mm256_and_si256(bits, m4);
                    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4);
                    let j = if C == 1 { 2 * (k % 2) } else { 0 };
                    for c in 0..C {
                        let yp = a[c].add(i * ACT_BYTES + 64 * k);
                        if V {
                            v32[j][c] = dpbusd(v32[j][c], lo, loadu(yp));
                            v32[j + 1][c] = dpbusd(v32[j + 1][c], hi, loadu(yp.add(32)));
                        } else {
                            let pl = _mm256_maddubs_epi16(lo, loadu(yp));
                            let ph = _mm256_maddubs_epi16(hi, loadu(yp.add(32)));
                            s16[c] = _mm256_add_epi16(s16[c], _mm256_add_epi16(pl, ph));
                        }
                    }
                    if V {
                        fence(&mut v32[0]);
                        fence(&mut v32[1]);
                    } else {
                        fence(&mut s16);
                    }
                }
                for c in 0..C {
                    let sumi = if V {
                        let t = _mm256_add_epi32(v32[0][c], v32[1][c]);
                        let t = if C == 1 {
                            _mm256_add_epi32(t, _mm256_add_epi32(v32[2][c], v32[3][c]))
                        } else {
                            t
                        };
                        _mm256_mullo_epi32(t, sc)
                    } else {
                        _mm256_madd_epi16(s16[c], sc)
                    };
                    let d = _mm256_broadcastss_ps(dd[c]);
                    acc[r][c] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc[r][c]);
                }
            }
        }
    }
    let mut out = [[0.0f32; C]; R];
    for r in 0..R {
        for c in 0..C {
            let v = acc[r][c];
            let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let h = _mm_add_ps(h, accm[r][c]);
            let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            out[r][c] = _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
        }
    }
    out
}

/// AVX2 twin of `repack_q4k::pack_block`: the nibbles split to natural order, permuted to step
/// order (`avx2_qgemm::perm_k`), and steps `2 k`, `2 k + 1` merged into vector `k`.
pub(crate) fn pack_q4kr_block(src: &[u8], dst: &mut [u8]) {
    assert!(
        src.len() >= 144 && dst.len() >= 144,
        "pack_q4kr_block operands"
    );
    // SAFETY: only called after `detected_isa() >= Avx2` (avx2 available); 144 bytes in and
    // out checked above.
    unsafe { pack_q4kr_kernel(src.as_ptr(), dst.as_mut_ptr()) }
}

/// SAFETY (caller): avx2+fma+f16c available; 144 readable bytes at `src`, 144 writable at
/// `dst`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack_q4kr_kernel(src: *const u8, dst: *mut u8) {
    let mut t = [0u8; 256];
    let mut u = [0u8; 256];
    // SAFETY: per the caller's contract; `t` and `u` are 256 bytes.
    unsafe {
        let m4 = _mm256_set1_epi8(0x0F);
        for j in 0..4 {
            let v = loadu(src.add(16 + 32 * j));
            let tp = t.as_mut_ptr().add(64 * j) as *mut __m256i;
            _mm256_storeu_si256(tp, _mm256_and_si256(v, m4));
            _mm256_storeu_si256(tp.add(1), _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4));
        }
        super::avx2_qgemm::perm_k(&t, &mut u);
        std::ptr::copy_nonoverlapping(src, dst, 16);
        for k in 0..4 {
            let lo = loadu(u.as_ptr().add(64 * k));
            let hi = loadu(u.as_ptr().add(64 * k + 32));
            // Quants are below 16: the 16-bit shift moves no bit across a byte.
            let v = _mm256_or_si256(lo, _mm256_slli_epi16::<4>(hi));
            _mm256_storeu_si256(dst.add(16 + 32 * k) as *mut __m256i, v);
        }
    }
}

// ------------------------------------------------------------------------------------------
// Q5_0R8 (repacked Q5_0, see `crate::repack`): the unpacking shared with the prompt GEMM, and
// the decode tile on prepared activation rows (its own arithmetic: `crate::repack`)
// ------------------------------------------------------------------------------------------

/// The plane shifted so that block `K`'s bits sit at bit 4 of each byte. The 16-bit shifts
/// never carry a byte's neighbour into its bit 4 (|shift| <= 4 left, <= 3 right); callers mask
/// everything else.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn r8_at_bit4<const K: usize>(plane: __m256i) -> __m256i {
    match K {
        0 => _mm256_slli_epi16::<4>(plane),
        1 => _mm256_slli_epi16::<3>(plane),
        2 => _mm256_slli_epi16::<2>(plane),
        3 => _mm256_slli_epi16::<1>(plane),
        4 => plane,
        5 => _mm256_srli_epi16::<1>(plane),
        6 => _mm256_srli_epi16::<2>(plane),
        _ => _mm256_srli_epi16::<3>(plane),
    }
}

/// Block `K`'s inverted 5th bits at bit 4 of each byte (`0x10` where the bit is 0).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn r8_t<const K: usize>(plane: __m256i) -> __m256i {
    _mm256_and_si256(r8_at_bit4::<K>(plane), _mm256_set1_epi8(0x10))
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

/// Block `K`'s 5th bits at bit 4 of each byte (`0x10` where the bit is 1): the complement of
/// [`r8_t`], for unsigned quants `q = nibble | bit`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn r8_u<const K: usize>(plane: __m256i) -> __m256i {
    _mm256_andnot_si256(r8_at_bit4::<K>(plane), _mm256_set1_epi8(0x10))
}

/// Block pair `j` of a slot in the prepared activations' pair layout, from its blocks'
/// unsigned quants in natural order (`lo`: block `2j`, `hi`: block `2j + 1`): the first 16
/// values of both (block `2j` in the low 128-bit half), then the last 16 of both.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn r8_pair(lo: __m256i, hi: __m256i) -> [__m256i; 2] {
    [
        _mm256_permute2x128_si256::<0x20>(lo, hi),
        _mm256_permute2x128_si256::<0x31>(lo, hi),
    ]
}

/// The partial last slot of [`r8_dot`] (a group of 4 if 4..=7 blocks remain, then plain
/// Q5_0 blocks): its weights in `wv` as the full slots' (zero quants for missing blocks), and
/// the scales in lane order (zero for missing blocks). Out of line: once per row.
///
/// SAFETY (caller): avx2+fma+f16c available; `w` is a Q5_0R8 row of `nb` blocks, `nb % 8 > 0`
/// and `s = nb / 8`.
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn r8_tail_slot(nb: usize, w: *const u8, s: usize, wv: &mut [__m256i; 8]) -> __m256 {
    let m4 = _mm256_set1_epi8(0x0F);
    let rest = nb - 8 * s;
    let mut q = [_mm256_setzero_si256(); 8];
    let mut d = [0.0f32; 8];
    let mut k = 0;
    // SAFETY: the group of 4 and the plain blocks lie inside the row (see `crate::repack`).
    unsafe {
        let g = w.add(s * 8 * 22);
        if rest >= 4 {
            let plane = r8_plane::<4>(g);
            let v0 = loadu(g.add(8));
            let v1 = loadu(g.add(40));
            let lo = |v: __m256i| _mm256_and_si256(v, m4);
            let hi = |v: __m256i| _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
            q[0] = _mm256_or_si256(lo(v0), r8_u::<0>(plane));
            q[1] = _mm256_or_si256(hi(v0), r8_u::<1>(plane));
            q[2] = _mm256_or_si256(lo(v1), r8_u::<2>(plane));
            q[3] = _mm256_or_si256(hi(v1), r8_u::<3>(plane));
            for (i, d) in d.iter_mut().take(4).enumerate() {
                *d = f16_at(g.add(2 * i));
            }
            k = 4;
        }
        while k < rest {
            let xp = g.add(22 * k);
            let qh = std::ptr::read_unaligned(xp.add(2) as *const u32);
            let bit = _mm256_and_si256(bytes_from_bits_32(qh), _mm256_set1_epi8(0x10));
            q[k] = _mm256_or_si256(nibbles_32(xp.add(6)), bit);
            d[k] = f16_at(xp);
            k += 1;
        }
    }
    for j in 0..4 {
        [wv[2 * j], wv[2 * j + 1]] = r8_pair(q[2 * j], q[2 * j + 1]);
    }
    // SAFETY: 8 f32 in `d`.
    let d = unsafe { _mm256_loadu_ps(d.as_ptr()) };
    _mm256_permutevar8x32_ps(d, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7))
}

/// The f16 at `p` as f32.
///
/// SAFETY (caller): 2 readable bytes at `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_at(p: *const u8) -> f32 {
    // SAFETY: per the caller's contract.
    _mm_cvtss_f32(_mm256_castps256_ps128(unsafe { f16_bcast(p) }))
}

/// One Q5_0R8 row against `C` prepared activation rows (`repack::prep_act_row`): per slot of
/// 8 blocks, per row, one `vpmaddubsw` per block half-pair (activations as memory operands),
/// the four pairs folded to the 8 exact block sums (the fold of `avx2_qgemm::kernel32`: i16
/// sums of at most 4 * 2 * 31 * 128 = 31744), minus the offsets, one FMA with the 8 scale
/// products. Bitwise `repack::vec_dot` (see there).
///
/// On VNNI (`isa::vnni`) the products go through [`r8_dotv`]'s `vpdpbusd` form: the same
/// block sums.
///
/// SAFETY (caller): avx2+fma+f16c available; `w` is a Q5_0R8 row of `nb` blocks and every
/// `a[c]` a prepared row of `repack::act_row_bytes(nb)` bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn r8_dot<const C: usize>(
    nb: usize,
    w: *const u8,
    a: [*const u8; C],
) -> [f32; C] {
    // SAFETY: per the caller's contract; VNNI only where `vnni()` confirmed it.
    unsafe { vnni_form!(r8_dotv::<C>(nb, w, a)) }
}

/// [`r8_dot`]'s body; `V`: per block pair and column two `vpdpbusd` from zero (4 i32 lanes per
/// block) folded by `avx2_qgemm::fold4`: the AVX2 form's block sums exactly, so bitwise its
/// results.
///
/// SAFETY (caller): as [`r8_dot`], and AVX-512 VNNI (VL) if `V`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn r8_dotv<const C: usize, const V: bool>(
    nb: usize,
    w: *const u8,
    a: [*const u8; C],
) -> [f32; C] {
    let ones = _mm256_set1_epi16(1);
    let m4 = _mm256_set1_epi8(0x0F);
    let order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    let mut acc = [_mm256_setzero_ps(); C];
    // Slot `s` (weights `wv`, lane-ordered scales `dw`) against every activation row; `np`:
    // its block pairs (2 for a lone group of 4, whose other pairs are zero).
    let columns = |s: usize, np: usize, wv: &[__m256i; 8], dw: __m256, acc: &mut [__m256; C]| {
        for c in 0..C {
            // SAFETY: each prepared row holds 320 bytes per slot (caller's contract).
            let ap = unsafe { a[c].add(crate::repack::ACT_SLOT_BYTES * s) };
            let p: [__m256i; 4] = std::array::from_fn(|j| {
                if j >= np {
                    return _mm256_setzero_si256();
                }
                // SAFETY: as above, pair j's 64 bytes inside the slot.
                let (y0, y1) = unsafe { (loadu(ap.add(64 * j)), loadu(ap.add(64 * j + 32))) };
                if V {
                    // SAFETY: VNNI available (the caller's contract for `V`).
                    unsafe {
                        let t = dpbusd(_mm256_setzero_si256(), wv[2 * j], y0);
                        dpbusd(t, wv[2 * j + 1], y1)
                    }
                } else {
                    _mm256_add_epi16(
                        _mm256_maddubs_epi16(wv[2 * j], y0),
                        _mm256_maddubs_epi16(wv[2 * j + 1], y1),
                    )
                }
            });
            // The low halves (even blocks) to lanes 0-3, the high halves (odd) to 4-7. Each
            // i16 lane is at most 2 * 2 * 31 * 128 = 15872 here.
            // `avx2_qgemm::fold_halves_i16`, written out: through the shared helper LLVM
            // allocated the 8-row tile's registers differently, measured 1.3x slower.
            let add_halves = |x: __m256i, y: __m256i| {
                _mm256_add_epi16(_mm256_unpacklo_epi32(x, y), _mm256_unpackhi_epi32(x, y))
            };
            let sum = if V {
                super::avx2_qgemm::fold4(p)
            } else {
                let m01 = _mm256_madd_epi16(add_halves(p[0], p[1]), ones);
                let m23 = _mm256_madd_epi16(add_halves(p[2], p[3]), ones);
                _mm256_add_epi32(
                    _mm256_unpacklo_epi64(m01, m23),
                    _mm256_unpackhi_epi64(m01, m23),
                )
            };
            // SAFETY: the slot's offsets and scales, inside it.
            let (off, da) = unsafe {
                (
                    loadu(ap.add(288)),
                    _mm256_loadu_ps(ap.add(256) as *const f32),
                )
            };
            let t = _mm256_sub_epi32(sum, off);
            acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_mul_ps(dw, da), acc[c]);
        }
    };
    let full = nb / 8;
    // SAFETY: full groups s < nb / 8 at 176 * s (see `crate::repack`), then the tail slot.
    unsafe {
        for s in 0..full {
            // Nibble vector j holds blocks 2j (low nibbles) and 2j + 1 (high).
            let g = w.add(s * 8 * 22);
            pf_ahead(g, 8 * 22);
            let plane = loadu(g.add(144));
            let mut wv = [_mm256_setzero_si256(); 8];
            macro_rules! pair {
                ($j:literal, $k0:literal, $k1:literal) => {{
                    let v = loadu(g.add(16 + 32 * $j));
                    let lo = _mm256_or_si256(_mm256_and_si256(v, m4), r8_u::<$k0>(plane));
                    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
                    let hi = _mm256_or_si256(hi, r8_u::<$k1>(plane));
                    [wv[2 * $j], wv[2 * $j + 1]] = r8_pair(lo, hi);
                }};
            }
            pair!(0, 0, 1);
            pair!(1, 2, 3);
            pair!(2, 4, 5);
            pair!(3, 6, 7);
            let d = _mm256_cvtph_ps(_mm_loadu_si128(g as *const __m128i));
            columns(s, 4, &wv, _mm256_permutevar8x32_ps(d, order), &mut acc);
        }
        if nb % 8 == 4 {
            // A lone group of 4 (the 896-wide rows of Qwen2-0.5B): two nibble vectors, the
            // 16-byte plane, 4 scales into lanes 0, 4, 1, 5.
            let g = w.add(full * 8 * 22);
            let plane = r8_plane::<4>(g);
            let mut wv = [_mm256_setzero_si256(); 8];
            let v0 = loadu(g.add(8));
            let v1 = loadu(g.add(40));
            let hi = |v: __m256i| _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
            [wv[0], wv[1]] = r8_pair(
                _mm256_or_si256(_mm256_and_si256(v0, m4), r8_u::<0>(plane)),
                _mm256_or_si256(hi(v0), r8_u::<1>(plane)),
            );
            [wv[2], wv[3]] = r8_pair(
                _mm256_or_si256(_mm256_and_si256(v1, m4), r8_u::<2>(plane)),
                _mm256_or_si256(hi(v1), r8_u::<3>(plane)),
            );
            let d = _mm256_zextps128_ps256(_mm_cvtph_ps(_mm_loadl_epi64(g as *const __m128i)));
            let quad = _mm256_setr_epi32(0, 2, 4, 4, 1, 3, 4, 4);
            columns(full, 2, &wv, _mm256_permutevar8x32_ps(d, quad), &mut acc);
        } else if !nb.is_multiple_of(8) {
            let mut wv = [_mm256_setzero_si256(); 8];
            let dw = r8_tail_slot(nb, w, full, &mut wv);
            columns(full, 4, &wv, dw, &mut acc);
        }
    }
    acc.map(|v| hsum_ps(v))
}

/// The Q5_0R8 decode tile: every weight row against the prepared activation rows in `acts`
/// (`repack::prep_act_row`, `acts.stride` bytes apart), 8 or 4 at a time.
fn tile_q5_0_r8(n: usize, w: &[u8], rb: usize, acts: &ActRows, out: &mut [f32]) {
    let nb = n / 32;
    let nr = w.len() / rb.max(1);
    let nc = acts.rows();
    let arb = crate::repack::act_row_bytes(nb);
    assert!(rb >= nb * 22 && w.len() == nr * rb, "weight tile shape");
    assert!(
        acts.stride >= arb && acts.q.len() == nc * acts.stride,
        "activation tile shape"
    );
    assert_eq!(out.len(), nr * nc, "tile output");
    let ap = |c: usize| acts.q[c * acts.stride..].as_ptr();
    for (r, o) in out.chunks_exact_mut(nc.max(1)).enumerate() {
        let wr = w[r * rb..].as_ptr();
        let mut c = 0;
        // SAFETY: `dot_tile_fn` of this module is only consulted for `Isa::Avx2` or higher,
        // selected only after `Isa::is_available` confirmed avx2+fma+f16c; the asserts above
        // give every weight row `nb` blocks and every activation row its prepared bytes.
        unsafe {
            // 8 activation rows per unpacked weight slot where there are 8 (batch-8 decode:
            // 1.2x faster than two calls of 4, the unpacking shared by twice the rows).
            while c + 8 <= nc {
                let v = r8_dot::<8>(nb, wr, std::array::from_fn(|i| ap(c + i)));
                o[c..c + 8].copy_from_slice(&v);
                c += 8;
            }
            while c + 4 <= nc {
                let v = r8_dot::<4>(nb, wr, [ap(c), ap(c + 1), ap(c + 2), ap(c + 3)]);
                o[c..c + 4].copy_from_slice(&v);
                c += 4;
            }
            match nc - c {
                3 => o[c..].copy_from_slice(&r8_dot::<3>(nb, wr, [ap(c), ap(c + 1), ap(c + 2)])),
                2 => o[c..].copy_from_slice(&r8_dot::<2>(nb, wr, [ap(c), ap(c + 1)])),
                1 => o[c] = r8_dot::<1>(nb, wr, [ap(c)])[0],
                _ => {}
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Decode rows' activation quantizers: bitwise `scalar::quantize` for Q8_0 and Q8_K
// ------------------------------------------------------------------------------------------

/// Q8_0 blocks of `x` into `out` (`x.len() / 32` blocks of 34 bytes), bitwise
/// `scalar::quantize(Q8_0)`: the same `amax`, `d = amax / 127`, `id = 1 / d` and products,
/// rounded half away from zero as `scalar::round_to_i8` (truncate, then +-1 where the exact
/// fraction reaches 0.5). Blocks with a non-finite value or scale take the scalar code (its
/// saturating casts differ from `vcvttps2dq` there).
pub(crate) fn quantize_q8_0(x: &[f32], out: &mut [u8]) {
    assert!(out.len() >= x.len() / 32 * 34, "quantize_q8_0 operands");
    for (xb, b) in x.chunks_exact(32).zip(out.chunks_exact_mut(34)) {
        // SAFETY: only handed out on AVX2 (see `crate::decode`); 32 values in, 34 bytes out.
        if !unsafe { q8_0_block(xb.as_ptr(), b.as_mut_ptr()) } {
            crate::scalar::quantize(GgmlType::Q8_0, xb, b);
        }
    }
}

/// One Q8_0 block; false (nothing written) where the scalar code must take it.
///
/// SAFETY (caller): avx2 available; 32 readable f32 at `x`, 34 writable bytes at `b`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_block(x: *const f32, b: *mut u8) -> bool {
    // SAFETY: per the caller's contract.
    unsafe {
        let v = [0, 8, 16, 24].map(|i| _mm256_loadu_ps(x.add(i)));
        let sign = _mm256_set1_ps(-0.0);
        let inf = _mm256_set1_ps(f32::INFINITY);
        let mut m = _mm256_setzero_ps();
        let mut bad = _mm256_setzero_ps();
        for &v in &v {
            let a = _mm256_andnot_ps(sign, v);
            m = _mm256_max_ps(m, a);
            // NaN or infinite: not below infinity.
            bad = _mm256_or_ps(bad, _mm256_cmp_ps::<_CMP_NLT_UQ>(a, inf));
        }
        if _mm256_movemask_ps(bad) != 0 {
            return false;
        }
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        if !id.is_finite() {
            return false;
        }
        let idv = _mm256_set1_ps(id);
        let half = _mm256_set1_ps(0.5);
        let nhalf = _mm256_set1_ps(-0.5);
        let i = v.map(|v| {
            let p = _mm256_mul_ps(v, idv);
            let t = _mm256_cvttps_epi32(p);
            let frac = _mm256_sub_ps(p, _mm256_cvtepi32_ps(t));
            // Masks are -1: subtracting `up` adds one, adding `dn` subtracts one.
            let up = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(frac, half));
            let dn = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(frac, nhalf));
            _mm256_add_epi32(_mm256_sub_epi32(t, up), dn)
        });
        // Saturating packs clamp to i8 like the scalar code; they interleave 128-bit lanes,
        // which the dword permute undoes.
        let w01 = _mm256_packs_epi32(i[0], i[1]);
        let w23 = _mm256_packs_epi32(i[2], i[3]);
        let q = _mm256_permutevar8x32_epi32(
            _mm256_packs_epi16(w01, w23),
            _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7),
        );
        let h = half::f16::from_f32(d).to_bits().to_le_bytes();
        *b = h[0];
        *b.add(1) = h[1];
        _mm256_storeu_si256(b.add(2) as *mut __m256i, q);
        true
    }
}

/// Q8_K blocks of `x` into `out` (`x.len() / 256` blocks of 292 bytes), bitwise
/// `scalar::quantize(Q8K)` (through the prompt GEMM's quantizer, `avx2_qgemm::quant_k`, whose
/// twin is that code); blocks with a non-finite value or scale take the scalar code.
pub(crate) fn quantize_q8_k(x: &[f32], out: &mut [u8]) {
    assert!(out.len() >= x.len() / 256 * 292, "quantize_q8_k operands");
    for (xb, b) in x.chunks_exact(256).zip(out.chunks_exact_mut(292)) {
        // Non-finite values, or a scale `-127 / max` that overflows (subnormal rows), round
        // through saturating casts the vector code does not share.
        let (finite, amax) = xb.iter().fold((true, 0.0f32), |(f, m), v| {
            (f && v.is_finite(), m.max(v.abs()))
        });
        if !finite || !(127.0 / amax).is_finite() {
            crate::scalar::quantize(GgmlType::Q8K, xb, b);
            continue;
        }
        let mut q = [0i8; 256];
        let mut sums = [0i16; 16];
        let d = super::avx2_qgemm::quant_k(xb, &mut q, &mut sums);
        b[..4].copy_from_slice(&d.to_le_bytes());
        for (o, &v) in b[4..260].iter_mut().zip(&q) {
            *o = v as u8;
        }
        for (g, s) in sums.iter().enumerate() {
            b[260 + 2 * g..262 + 2 * g].copy_from_slice(&s.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows that reach every branch of the scalar rounding: random Gaussians at several
    /// scales, exact halves after scaling (`k * d + d / 2` for the block's `d`), zeros,
    /// subnormals, one huge value, and non-finite values.
    fn rows() -> Vec<Vec<f32>> {
        let mut s = 0x2545F4914F6CDD1Du64;
        let mut rnd = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut out = Vec::new();
        for scale in [1e-3f32, 0.5, 3.0, 1e4] {
            for _ in 0..40 {
                out.push(
                    (0..512)
                        .map(|_| (rnd() as f32 - 0.5) * 2.0 * scale)
                        .collect(),
                );
            }
        }
        for _ in 0..40 {
            // amax 127 (d = 1): values k + 0.5 are exact ties.
            let mut r: Vec<f32> = (0..512)
                .map(|_| (rnd() * 254.0 - 127.0).round() as f32 + 0.5)
                .collect();
            for b in r.chunks_mut(32) {
                b[0] = 127.0;
            }
            out.push(r);
        }
        out.push(vec![0.0; 512]);
        out.push((0..512).map(|i| f32::from_bits(1 + i as u32)).collect());
        let mut r: Vec<f32> = (0..512).map(|i| i as f32 * 0.01).collect();
        r[3] = 3e38;
        r[40] = f32::INFINITY;
        r[300] = f32::NAN;
        r[301] = f32::NEG_INFINITY;
        out.push(r);
        out
    }

    /// The VNNI forms of the Q4KR and Q5_0R8 decode tiles against their AVX2 forms, bitwise:
    /// random weights and, in the `extreme` case, every quant at its maximum (columns from
    /// `rows()`, which include activations of +-127 after quantization).
    #[test]
    fn vnni_decode_forms_equal_avx2_bitwise() {
        if !crate::isa::vnni_available() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        let mut seed = 0x9E3779B97F4A7C15u64;
        let mut byte = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        };
        let xs = rows();
        // 4 activation columns of `n` values from rows `i..`, quantized to `ty`.
        let cols = |i: usize, n: usize, ty: GgmlType| -> Vec<Vec<u8>> {
            (0..4)
                .map(|c| {
                    let x: Vec<f32> = (0..n)
                        .map(|k| xs[(i + c + k / 512) % 200][k % 512])
                        .collect();
                    let mut q = vec![0u8; ty.row_bytes(n).unwrap()];
                    crate::scalar::quantize(ty, &x, &mut q);
                    q
                })
                .collect()
        };
        let bits = |v: [f32; 4]| v.map(f32::to_bits);
        for extreme in [false, true] {
            // Q4KR: Q4_K blocks with d = dmin = 1/16 (f16 0x2C00), random scales and mins.
            for nb in [1usize, 2, 3] {
                let mut src = vec![0u8; nb * 144];
                for (k, b) in src.iter_mut().enumerate() {
                    *b = match k % 144 {
                        0 | 2 => 0x00,
                        1 | 3 => 0x2C,
                        16.. if extreme => 0xFF,
                        _ => byte(),
                    };
                }
                let mut w = vec![0u8; src.len()];
                crate::repack_row(GgmlType::Q4K, nb * 256, &src, &mut w).unwrap();
                for i in [0usize, 50, 120, 165] {
                    let acts: Vec<Vec<u8>> = cols(i, nb * 256, GgmlType::Q8K)
                        .iter()
                        .map(|q| {
                            let mut p = vec![0u8; crate::repack_q4k::act_row_bytes(nb)];
                            crate::repack_q4k::prep_act_row(nb, q, &mut p);
                            p
                        })
                        .collect();
                    let ap = std::array::from_fn(|c| acts[c].as_ptr());
                    let ad = [std::ptr::null(); 4];
                    // SAFETY: avx2 and VNNI present; whole blocks and prepared rows of `nb`.
                    let (x, v) = unsafe {
                        (
                            q4_kr_kv::<1, 4, false>(nb, [w.as_ptr()], ap, ad)[0],
                            q4_kr_kv::<1, 4, true>(nb, [w.as_ptr()], ap, ad)[0],
                        )
                    };
                    assert_eq!(
                        bits(x),
                        bits(v),
                        "Q4KR nb={nb} rows {i}.. extreme={extreme}"
                    );
                }
            }
            // Q6_K: random blocks with d = 1/16 (f16 at byte 208), or every quant 63; Q8_K
            // activations.
            for nb in [1usize, 3] {
                let mut w = vec![0u8; nb * 210];
                for (k, b) in w.iter_mut().enumerate() {
                    *b = match k % 210 {
                        208 => 0x00,
                        209 => 0x2C,
                        0..192 if extreme => 0xFF,
                        _ => byte(),
                    };
                }
                for i in [0usize, 50, 120, 165] {
                    let acts = cols(i, nb * 256, GgmlType::Q8K);
                    let ap = std::array::from_fn(|c| acts[c].as_ptr());
                    let ad = [std::ptr::null(); 4];
                    // SAFETY: avx2 and VNNI present; `nb` blocks per row.
                    let (x, v) = unsafe {
                        (
                            q6_k_kv::<1, 4, false>(nb, [w.as_ptr()], ap, ad)[0],
                            q6_k_kv::<1, 4, true>(nb, [w.as_ptr()], ap, ad)[0],
                        )
                    };
                    assert_eq!(
                        bits(x),
                        bits(v),
                        "Q6_K nb={nb} rows {i}.. extreme={extreme}"
                    );
                }
            }
            // Q8_0: random quants, or all -128 (|x| = 128, the largest pair sums), d = 1/16;
            // Q8_0 activations with their f32 scales.
            for nb in [1usize, 8, 28] {
                let mut w = vec![0u8; nb * 34];
                for (k, b) in w.iter_mut().enumerate() {
                    *b = match k % 34 {
                        0 => 0x00,
                        1 => 0x2C,
                        _ if extreme => 0x80,
                        _ => byte(),
                    };
                }
                for i in [0usize, 50, 120, 165] {
                    let acts = cols(i, nb * 32, GgmlType::Q8_0);
                    let ds: Vec<Vec<f32>> = acts
                        .iter()
                        .map(|q| (0..nb).map(|b| crate::scalar::f16_at(q, 34 * b)).collect())
                        .collect();
                    let ap = std::array::from_fn(|c| acts[c].as_ptr());
                    let dp = std::array::from_fn(|c| ds[c].as_ptr());
                    // SAFETY: avx2 and VNNI present; `nb` blocks and scales per row.
                    let (x, v) = unsafe {
                        (
                            q8_0_kv::<1, 4, false>(nb, [w.as_ptr()], ap, dp)[0],
                            q8_0_kv::<1, 4, true>(nb, [w.as_ptr()], ap, dp)[0],
                        )
                    };
                    assert_eq!(
                        bits(x),
                        bits(v),
                        "Q8_0 nb={nb} rows {i}.. extreme={extreme}"
                    );
                }
            }
            // Q5_0R8: Q5_0 blocks with d = 1/16, random (or all-ones) quant bits; full slots,
            // a lone group of 4 (Qwen2-0.5B's 896) and a ragged tail.
            for nb in [8usize, 16, 28, 13] {
                let mut src = vec![0u8; nb * 22];
                for (k, b) in src.iter_mut().enumerate() {
                    *b = match k % 22 {
                        0 => 0x00,
                        1 => 0x2C,
                        _ if extreme => 0xFF,
                        _ => byte(),
                    };
                }
                let mut w = vec![0u8; src.len()];
                crate::repack_row(GgmlType::Q5_0, nb * 32, &src, &mut w).unwrap();
                for i in [0usize, 50, 120, 165] {
                    let acts: Vec<Vec<u8>> = cols(i, nb * 32, GgmlType::Q8_0)
                        .iter()
                        .map(|q| {
                            let mut p = vec![0u8; crate::repack::act_row_bytes(nb)];
                            crate::repack::prep_act_row(nb, q, &mut p);
                            p
                        })
                        .collect();
                    let ap = std::array::from_fn(|c| acts[c].as_ptr());
                    // SAFETY: avx2 and VNNI present; a Q5_0R8 row and prepared rows of `nb`.
                    let (x, v) = unsafe {
                        (
                            r8_dotv::<4, false>(nb, w.as_ptr(), ap),
                            r8_dotv::<4, true>(nb, w.as_ptr(), ap),
                        )
                    };
                    assert_eq!(
                        bits(x),
                        bits(v),
                        "Q5_0R8 nb={nb} rows {i}.. extreme={extreme}"
                    );
                }
            }
        }
    }

    #[test]
    fn activation_quantizers_equal_scalar_bitwise() {
        if !crate::Isa::Avx2.is_available() {
            return;
        }
        for (i, x) in rows().iter().enumerate() {
            for (ty, bs, ts) in [(GgmlType::Q8_0, 32, 34), (GgmlType::Q8K, 256, 292)] {
                let n = x.len() / bs * ts;
                let (mut want, mut got) = (vec![0u8; n], vec![0xAAu8; n]);
                crate::scalar::quantize(ty, x, &mut want);
                match ty {
                    GgmlType::Q8_0 => quantize_q8_0(x, &mut got),
                    _ => quantize_q8_k(x, &mut got),
                }
                assert_eq!(got, want, "{ty:?} row {i}");
            }
        }
    }
}
