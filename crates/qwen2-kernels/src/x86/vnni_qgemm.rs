//! AVX-512 VNNI strip of the integer prompt GEMM for 32-value blocks (Q5_0, Q5_0R8), used
//! instead of `avx2_qgemm::strip32` where the CPU has VNNI (`isa::vnni`).
//!
//! Why another layout: the AVX2 tile multiplies one weight row by one activation row per
//! instruction, so every block leaves 4 partial sums per lane group that must be folded
//! (`kernel32`: ~9 shuffles and adds per row and block pair, as many instructions as the
//! products themselves). Here 8 weight rows are interleaved in 4-byte groups, and one
//! `vpdpbusd` of such a vector with one broadcast 4-byte activation group adds 4 products for
//! each of the 8 rows: after a block's 8 steps the i32 lanes are the 8 rows' block sums, with
//! nothing to fold. Per block and 4 columns: 8 weight loads, 32 `vpdpbusd` (the activation
//! group a broadcast memory operand), and per column one subtract, convert, 2 multiplies, add.
//!
//! Panel of an 8-row group (per k-block, `q_stride` / `d_stride` apart): block `b`'s 256 bytes
//! at `q[256 b..]`, byte `32 k + 4 rr + j` = quant `4 k + j` (unsigned, `q + 16` as stored) of
//! row `rr`; the 8 rows' block scales at `d[8 b..8 b + 8]`. Rows past the matrix are zeros.
//! Activations are the `kernel32` ones (pair order, `qgemm::pos32`; a 4-value group never
//! straddles a 16-byte half, so it is one 32-bit broadcast), with their `da` and `bias`.
//!
//! Arithmetic, per output and block in order: `v += (sumi - bias) as f32 * (d_w * d_a)` with a
//! separate multiply and add: exactly `qgemm::tile32_scalar`, the scalar twin, bitwise (and
//! batch invariant: nothing depends on the batch, the tile or the thread count).

use crate::gemm::TILE_C;
use std::arch::x86_64::*;

/// Weight rows per interleaved group (the i32 lanes of a 256-bit vector).
pub(crate) const GROUP: usize = 8;
/// Panel bytes per block of an 8-row group.
pub(crate) const BLOCK_BYTES: usize = 32 * GROUP;

/// One strip: every 8-row group of a panel k-block against one group of `TILE_C` activation
/// rows, added into `res[c * rows + r]` for the `nc` valid columns and `rows` valid rows.
pub(crate) struct Strip8<'a> {
    /// Blocks in the k-block (even: the activations are in pairs).
    pub nsb: usize,
    pub rows: usize,
    pub nc: usize,
    /// Group `g`'s quants at `q[g * q_stride..]` (`nsb * BLOCK_BYTES` read), its scales at
    /// `d[g * d_stride..]` (`nsb * GROUP` read).
    pub q: &'a [u8],
    pub q_stride: usize,
    pub d: &'a [f32],
    pub d_stride: usize,
    /// As in `qgemm::QTileArgs` for 32-value blocks.
    pub a: [&'a [i8]; TILE_C],
    pub da: &'a [f32],
    pub da_stride: usize,
    pub bias: &'a [i32],
}

/// Offset of value group `k` (values `4 k..4 k + 4`) of block `b` in a pair-order row.
#[inline(always)]
const fn act_off(b: usize, k: usize) -> usize {
    64 * (b / 2) + 16 * (b % 2) + 32 * (k / 4) + 4 * (k % 4)
}

/// Adds 8-row group `g`'s `[column][row]` sums into `res[c * rows + r]`, valid rows and
/// columns only.
fn add_group(res: &mut [f32], t: &[[f32; GROUP]; TILE_C], g: usize, rows: usize, nc: usize) {
    let r0 = g * GROUP;
    let nr = (rows - r0).min(GROUP);
    for (c, tc) in t.iter().enumerate().take(nc) {
        let dst = &mut res[c * rows + r0..][..nr];
        if nr == GROUP {
            // A whole group: 8 adds of a fixed count, which the compiler makes one vector add
            // (the loop of a variable count cost ~2% of the Q5_0 prompt GEMM, matmul_bench).
            let dst: &mut [f32; GROUP] = dst.try_into().expect("nr == GROUP");
            for (d, &v) in dst.iter_mut().zip(tc) {
                *d += v;
            }
        } else {
            for (d, &v) in dst.iter_mut().zip(tc) {
                *d += v;
            }
        }
    }
}

/// The accumulators as `[column][row]` arrays.
#[inline]
#[target_feature(enable = "avx2")]
fn spill(facc: [__m256; TILE_C]) -> [[f32; GROUP]; TILE_C] {
    facc.map(|v| {
        let mut o = [0.0f32; GROUP];
        // SAFETY: `o` is 8 f32s.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), v) };
        o
    })
}

/// Safe entry: checks every slice the kernel reads, then runs the strip.
///
/// Panics unless the CPU has AVX-512 VNNI (VL) and AVX2 (callers check `isa::vnni`).
pub(crate) fn strip(s: &Strip8, res: &mut [f32]) {
    assert!(
        crate::isa::vnni_available(),
        "vnni_qgemm needs AVX-512 VNNI"
    );
    let groups = s.rows.div_ceil(GROUP);
    let pairs = s.nsb / 2;
    let ok = s.nsb.is_multiple_of(2)
        && s.rows > 0
        && (1..=TILE_C).contains(&s.nc)
        && s.q.len() >= (groups - 1) * s.q_stride + s.nsb * BLOCK_BYTES
        && s.d.len() >= (groups - 1) * s.d_stride + s.nsb * GROUP
        && s.a.iter().all(|a| a.len() >= s.nsb * 32)
        && (pairs == 0
            || (s.da.len() >= (pairs - 1) * s.da_stride + 2 * TILE_C
                && s.bias.len() >= (pairs - 1) * s.da_stride + 2 * TILE_C))
        && res.len() >= (s.nc - 1) * s.rows + s.rows;
    assert!(ok, "vnni_qgemm strip operands shorter than nsb = {}", s.nsb);
    for g in 0..groups {
        // SAFETY: VNNI and AVX2 asserted above; group g's operands are inside the lengths
        // checked (g < groups).
        let t = unsafe {
            kernel(
                s.nsb,
                s.q.as_ptr().add(g * s.q_stride),
                s.d.as_ptr().add(g * s.d_stride),
                s.a.map(|a| a.as_ptr()),
                s.da.as_ptr(),
                s.da_stride,
                s.bias.as_ptr(),
            )
        };
        add_group(res, &t, g, s.rows, s.nc);
    }
}

/// One step of an 8-row panel: the 32 bytes at `w` (4 quants of each of 8 rows) times the
/// 4-value activation group at `a[c] + off`, broadcast, added into column `c`'s i32 lanes.
///
/// SAFETY (caller): avx2 + AVX-512 F/VL/VNNI available; 32 bytes at `w`, 4 at each
/// `a[c] + off`.
#[inline]
#[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
unsafe fn step4(acc: &mut [__m256i; TILE_C], w: *const u8, a: [*const i8; TILE_C], off: usize) {
    // SAFETY: per the caller's contract.
    unsafe {
        let w = _mm256_loadu_si256(w as *const __m256i);
        for c in 0..TILE_C {
            let g = _mm256_set1_epi32(std::ptr::read_unaligned(a[c].add(off) as *const i32));
            acc[c] = _mm256_dpbusd_epi32(acc[c], w, g);
        }
    }
}

/// One 8-row group against 4 activation rows over `nsb` blocks: `[column][row]` sums.
///
/// SAFETY (caller): avx2 + AVX-512 F/VL/VNNI available; `nsb * BLOCK_BYTES` bytes at `q`,
/// `nsb * GROUP` scales at `d`, `nsb * 32` bytes at each `a[c]`, and the scales and biases of
/// `nsb / 2` pairs at `da` / `bias` (`da_stride` apart, `2 * TILE_C` each).
#[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
unsafe fn kernel(
    nsb: usize,
    q: *const u8,
    d: *const f32,
    a: [*const i8; TILE_C],
    da: *const f32,
    da_stride: usize,
    bias: *const i32,
) -> [[f32; GROUP]; TILE_C] {
    const _: () = assert!(TILE_C == 4, "written for 4 columns");
    let mut facc = [_mm256_setzero_ps(); TILE_C];
    // SAFETY: b < nsb and k < 8, so every read is inside the caller's spans.
    unsafe {
        for b in 0..nsb {
            let mut acc = [_mm256_setzero_si256(); TILE_C];
            let wq = q.add(b * BLOCK_BYTES);
            macro_rules! step {
                ($k:literal) => {
                    step4(&mut acc, wq.add(32 * $k), a, act_off(b, $k))
                };
            }
            step!(0);
            step!(1);
            step!(2);
            step!(3);
            step!(4);
            step!(5);
            step!(6);
            step!(7);
            let dw = _mm256_loadu_ps(d.add(b * GROUP));
            let at = (b / 2) * da_stride + 4 * (b % 2);
            for c in 0..TILE_C {
                let s = _mm256_sub_epi32(acc[c], _mm256_set1_epi32(*bias.add(at + c)));
                let scale = _mm256_mul_ps(dw, _mm256_set1_ps(*da.add(at + c)));
                facc[c] = _mm256_add_ps(facc[c], _mm256_mul_ps(_mm256_cvtepi32_ps(s), scale));
            }
        }
    }
    spill(facc)
}

/// Interleaves one row's unpacked blocks (pair order, `nsb * 32` bytes as `unpack_q5_0`
/// writes them, and `nsb` scales) into lane `rr` of an 8-row group's panel.
pub(crate) fn scatter_row(
    nsb: usize,
    src: &[u8],
    ds: &[f32],
    rr: usize,
    q: &mut [u8],
    d: &mut [f32],
) {
    assert!(rr < GROUP && src.len() >= nsb * 32 && ds.len() >= nsb);
    for b in 0..nsb {
        let dst = &mut q[b * BLOCK_BYTES..(b + 1) * BLOCK_BYTES];
        for k in 0..8 {
            let o = act_off(b, k);
            dst[32 * k + 4 * rr..32 * k + 4 * rr + 4].copy_from_slice(&src[o..o + 4]);
        }
        d[b * GROUP + rr] = ds[b];
    }
}

/// Lane `rr` of an 8-row group's panel set to zero (a row past the matrix).
pub(crate) fn zero_row(nsb: usize, rr: usize, q: &mut [u8], d: &mut [f32]) {
    for b in 0..nsb {
        for k in 0..8 {
            let at = b * BLOCK_BYTES + 32 * k + 4 * rr;
            q[at..at + 4].fill(0);
        }
        d[b * GROUP + rr] = 0.0;
    }
}

// ------------------------------------------------------------------------------------------
// Q4_K (and Q4KR): the same 8-row interleave per super-block
// ------------------------------------------------------------------------------------------
//
// Activations are the k-quant tile's (Q8_K values in panel order, `qgemm::kpos`): the 4 bytes
// `32 s + 4 j..+4` of a super-block are i16 lanes `2 j`, `2 j + 1` of step `s`, i.e. values of
// sub-block `j` only. Panel of an 8-row group, per super-block: the quants (2048 bytes), step
// `u = 8 j + s` at `32 u`, row `rr`'s 4 bytes at `32 u + 4 rr` = its panel-order bytes
// `32 s + 4 j..+4`; the sub-block scales as i32, `sc[8 j + rr]`; the offset multipliers as i16
// pairs, `om[8 p + rr]` = row `rr`'s multipliers of 16-value groups `2 p`, `2 p + 1`; the
// super-block scales `d[rr]` and offset scales `dm[rr]`.
//
// Per super-block and column: per sub-block 8 `vpdpbusd` (from zero: its 8 rows' sums) times
// the scales (`vpmulld`), added; the offsets by 8 `vpdpwssd` of the multiplier pairs with the
// broadcast pairs of activation sums; then `v += sumi as f32 * (d * da)` and
// `v -= sumo as f32 * (dm * da)`, separate multiplies and adds: `qgemm::tile_scalar` exactly.

/// Panel quant bytes per super-block of an 8-row group.
pub(crate) const KBLOCK_BYTES: usize = 256 * GROUP;
/// Offset-pair entries (and Q4_K's scale entries) per super-block of an 8-row group.
pub(crate) const KSCALES: usize = 8 * GROUP;
/// Q6_K's scale entries per super-block of an 8-row group (16 groups of 16 values).
pub(crate) const KSCALES6: usize = 16 * GROUP;

/// Scale entries per super-block and group for Q6_K (`q6`) or Q4_K.
pub(crate) const fn kscales(q6: bool) -> usize {
    if q6 {
        KSCALES6
    } else {
        KSCALES
    }
}

/// A Q4_K or Q6_K strip (see [`Strip8`]); panel arrays per 8-row group `q_stride`,
/// `sc_stride` / `om_stride` and `d_stride` apart.
pub(crate) struct StripK8<'a> {
    /// Q6_K (16-value groups, natural-order activations) rather than Q4_K.
    pub q6: bool,
    pub nsb: usize,
    pub rows: usize,
    pub nc: usize,
    pub q: &'a [u8],
    pub q_stride: usize,
    pub sc: &'a [i32],
    pub om: &'a [i32],
    pub sc_stride: usize,
    pub om_stride: usize,
    pub d: &'a [f32],
    pub dm: &'a [f32],
    pub d_stride: usize,
    /// As in `qgemm::QTileArgs` for k-quants.
    pub a: [&'a [i8]; TILE_C],
    pub bs: [&'a [i16]; TILE_C],
    pub da: &'a [f32],
    pub da_stride: usize,
}

/// Safe entry of a Q4_K strip: checks every slice the kernel reads, then runs it.
///
/// Panics unless the CPU has AVX-512 VNNI (VL) and AVX2 (callers check `isa::vnni`).
pub(crate) fn strip_k(s: &StripK8, res: &mut [f32]) {
    assert!(
        crate::isa::vnni_available(),
        "vnni_qgemm needs AVX-512 VNNI"
    );
    let groups = s.rows.div_ceil(GROUP);
    let n = s.nsb;
    let ok = s.rows > 0
        && (1..=TILE_C).contains(&s.nc)
        && s.q.len() >= (groups - 1) * s.q_stride + n * KBLOCK_BYTES
        && s.sc.len() >= (groups - 1) * s.sc_stride + n * kscales(s.q6)
        && s.om.len() >= (groups - 1) * s.om_stride + n * KSCALES
        && s.d.len() >= (groups - 1) * s.d_stride + n * GROUP
        && s.dm.len() >= (groups - 1) * s.d_stride + n * GROUP
        && s.a.iter().all(|a| a.len() >= n * 256)
        && s.bs.iter().all(|b| b.len() >= n * 16)
        && (n == 0 || s.da.len() >= (n - 1) * s.da_stride + TILE_C)
        && res.len() >= (s.nc - 1) * s.rows + s.rows;
    assert!(ok, "vnni_qgemm k-strip operands shorter than nsb = {n}");
    for g in 0..groups {
        // SAFETY: VNNI and AVX2 asserted above; group g's operands are inside the lengths
        // checked (g < groups).
        let t = unsafe {
            let p = [
                s.q.as_ptr().add(g * s.q_stride) as *const i8,
                s.sc.as_ptr().add(g * s.sc_stride) as *const i8,
                s.om.as_ptr().add(g * s.om_stride) as *const i8,
            ];
            let f = [
                s.d.as_ptr().add(g * s.d_stride),
                s.dm.as_ptr().add(g * s.d_stride),
            ];
            let (a, bs) = (s.a.map(|a| a.as_ptr()), s.bs.map(|b| b.as_ptr()));
            if s.q6 {
                kernel_k::<true>(n, p, f, a, bs, s.da.as_ptr(), s.da_stride)
            } else {
                kernel_k::<false>(n, p, f, a, bs, s.da.as_ptr(), s.da_stride)
            }
        };
        add_group(res, &t, g, s.rows, s.nc);
    }
}

/// One 8-row group against 4 activation rows over `nsb` super-blocks: `[column][row]` sums.
/// `p`: the group's quants, scales (i32) and offset pairs (i32); `f`: its `d` and `dm`.
/// `Q6`: 16 scale groups of 4 steps, natural-order activations (value group `4 s` of scale
/// group `j` at `16 j + 4 s`); else Q4_K's 8 sub-blocks of 8 steps, panel-order activations.
///
/// SAFETY (caller): avx2 + AVX-512 F/VL/VNNI available; `nsb` super-blocks of every operand
/// (as `strip_k` checks).
#[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
unsafe fn kernel_k<const Q6: bool>(
    nsb: usize,
    p: [*const i8; 3],
    f: [*const f32; 2],
    a: [*const i8; TILE_C],
    bs: [*const i16; TILE_C],
    da: *const f32,
    da_stride: usize,
) -> [[f32; GROUP]; TILE_C] {
    const _: () = assert!(TILE_C == 4, "written for 4 columns");
    let [q, sc, om] = p;
    let mut facc = [_mm256_setzero_ps(); TILE_C];
    // SAFETY: sb < nsb, j, s < 8: every read is inside the caller's spans.
    unsafe {
        let bcast = |p: *const i8| _mm256_set1_epi32(std::ptr::read_unaligned(p as *const i32));
        for sb in 0..nsb {
            let wq = q.add(sb * KBLOCK_BYTES);
            let ap = a.map(|p| p.add(sb * 256));
            let mut isum = [_mm256_setzero_si256(); TILE_C];
            // Scale groups, and 4-value steps per group.
            let (ng, gs) = if Q6 { (16, 4) } else { (8, 8) };
            for j in 0..ng {
                let mut acc = [_mm256_setzero_si256(); TILE_C];
                macro_rules! step {
                    ($s:literal) => {{
                        let off = k_off(Q6, j, $s);
                        step4(&mut acc, wq.add(32 * (gs * j + $s)) as *const u8, ap, off)
                    }};
                }
                step!(0);
                step!(1);
                step!(2);
                step!(3);
                if !Q6 {
                    step!(4);
                    step!(5);
                    step!(6);
                    step!(7);
                }
                let at = 4 * (sb * kscales(Q6) + 8 * j);
                let scj = _mm256_loadu_si256(sc.add(at) as *const __m256i);
                for c in 0..TILE_C {
                    isum[c] = _mm256_add_epi32(isum[c], _mm256_mullo_epi32(acc[c], scj));
                }
            }
            let mut osum = [_mm256_setzero_si256(); TILE_C];
            for pr in 0..8 {
                let omp = _mm256_loadu_si256(om.add(4 * (sb * KSCALES + 8 * pr)) as *const __m256i);
                for c in 0..TILE_C {
                    let b = bcast(bs[c].add(sb * 16 + 2 * pr) as *const i8);
                    osum[c] = _mm256_dpwssd_epi32(osum[c], omp, b);
                }
            }
            let d = _mm256_loadu_ps(f[0].add(sb * GROUP));
            let dm = _mm256_loadu_ps(f[1].add(sb * GROUP));
            for c in 0..TILE_C {
                let dac = _mm256_set1_ps(*da.add(sb * da_stride + c));
                let t = _mm256_mul_ps(_mm256_cvtepi32_ps(isum[c]), _mm256_mul_ps(d, dac));
                facc[c] = _mm256_add_ps(facc[c], t);
                let o = _mm256_mul_ps(_mm256_cvtepi32_ps(osum[c]), _mm256_mul_ps(dm, dac));
                facc[c] = _mm256_sub_ps(facc[c], o);
            }
        }
    }
    spill(facc)
}

/// The panel arrays of one 8-row group (mutable), for [`scatter_row_k`] / [`zero_row_k`].
pub(crate) struct GroupK<'a> {
    pub q: &'a mut [u8],
    pub sc: &'a mut [i32],
    pub om: &'a mut [i32],
    pub d: &'a mut [f32],
    pub dm: &'a mut [f32],
}

/// Where step `s` of scale group `j` reads its 4 activation values in a super-block: Q6_K
/// (`q6`) natural order, value `16 j + 4 s`; Q4_K panel order (`qgemm::kpos`), `32 s + 4 j`.
#[inline(always)]
const fn k_off(q6: bool, j: usize, s: usize) -> usize {
    if q6 {
        16 * j + 4 * s
    } else {
        32 * s + 4 * j
    }
}

/// Interleaves super-block `sb` of one row into lane `rr` of an 8-row group's panel, from
/// what the unpackers write: 256 quants (Q6_K, `q6`: natural order, `unpack_q6k_natural`;
/// Q4_K: panel order, `unpack_block`), 16 group-scale lanes (Q6_K: lane `j` is group `j`'s;
/// Q4_K: lane `2 j` is sub-block `j`'s), 16 offset multipliers, `d` and `dm`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn scatter_row_k(
    q6: bool,
    sb: usize,
    q: &[u8],
    sc: &[i16],
    om: &[i16],
    (d, dm): (f32, f32),
    rr: usize,
    g: &mut GroupK,
) {
    assert!(rr < GROUP && q.len() >= 256 && sc.len() >= 16 && om.len() >= 16);
    let (ng, gs, scs) = if q6 {
        (16, 4, KSCALES6)
    } else {
        (8, 8, KSCALES)
    };
    let dst = &mut g.q[sb * KBLOCK_BYTES..(sb + 1) * KBLOCK_BYTES];
    for j in 0..ng {
        for s in 0..gs {
            let (o, u) = (k_off(q6, j, s), gs * j + s);
            dst[32 * u + 4 * rr..32 * u + 4 * rr + 4].copy_from_slice(&q[o..o + 4]);
        }
        g.sc[sb * scs + 8 * j + rr] = sc[if q6 { j } else { 2 * j }] as i32;
    }
    for p in 0..8 {
        let pair = (om[2 * p] as u16 as u32) | ((om[2 * p + 1] as u16 as u32) << 16);
        g.om[sb * KSCALES + 8 * p + rr] = pair as i32;
    }
    g.d[sb * GROUP + rr] = d;
    g.dm[sb * GROUP + rr] = dm;
}

/// Lane `rr` of super-block `sb` of an 8-row group's panel set to zero (a row past the
/// matrix); `q6`: a Q6_K panel.
pub(crate) fn zero_row_k(sb: usize, rr: usize, q6: bool, g: &mut GroupK) {
    for u in 0..64 {
        let at = sb * KBLOCK_BYTES + 32 * u + 4 * rr;
        g.q[at..at + 4].fill(0);
    }
    let scs = kscales(q6);
    for j in 0..scs / GROUP {
        g.sc[sb * scs + 8 * j + rr] = 0;
    }
    for j in 0..8 {
        g.om[sb * KSCALES + 8 * j + rr] = 0;
    }
    g.d[sb * GROUP + rr] = 0.0;
    g.dm[sb * GROUP + rr] = 0.0;
}
