//! AVX2 tiles of the integer prompt GEMM (`crate::qgemm`): 3 weight rows x 4 activation rows.
//! k-quants: 12 accumulators per super-block, each 32-value chunk one `vpmaddubsw` (unsigned
//! quants x int8 activations) per pair, then for Q6_K one `vpmaddwd` (x the group scales) per
//! two chunks and pair, for Q4_K one per super-block and pair (the chunks summed in i16 first), then
//! the offsets (one `vpmaddwd` per pair); 32-value blocks: see [`kernel32`]. The strips run a
//! tile over all rows of a panel with one operand check.
//!
//! Scalar twins: `crate::qgemm::{tile_scalar, tile32_scalar, strip_with}` (unit tests in
//! `qgemm`), and the quantizers' twins there too.

use crate::gemm::TILE_C;
use crate::qgemm::QTILE_R as TILE_R;
use crate::qgemm::SC_LANES;
use crate::qgemm::{dw_per_unit, QStrip, QTileArgs};
use crate::types::QK_K;
use crate::GgmlType;
use std::arch::x86_64::*;

/// Safe entry: checks every slice length the kernel reads, then runs it.
pub(crate) fn tile(t: &QTileArgs) -> [[f32; TILE_C]; TILE_R] {
    tile_checked(t);
    // SAFETY: this tile is only handed out by `qgemm::kernels` for `Isa::Avx2` or higher, which
    // is selected only after `Isa::is_available` confirmed avx2+fma+f16c; `tile_checked`
    // bounds every read of the kernel.
    unsafe { vnni_form!(kernel::<false>(t)) }
}

/// Q4_K's tile (see [`kernel`]): quants must be below 16, or the i16 sums may saturate, and
/// the two scale lanes of a sub-block equal, as the Q4_K panel has them, or the VNNI form
/// differs (wrong results, nothing unsafe).
pub(crate) fn tile_q4k(t: &QTileArgs) -> [[f32; TILE_C]; TILE_R] {
    tile_checked(t);
    // SAFETY: as for `tile` (VNNI only where `vnni()` confirmed it).
    unsafe { vnni_form!(kernel::<true>(t)) }
}

fn tile_checked(t: &QTileArgs) {
    let n = t.nsb * QK_K;
    let ok = t.q.iter().all(|q| q.len() >= n)
        && t.sc.iter().all(|s| s.len() >= t.nsb * SC_LANES)
        && t.dw.iter().all(|d| d.len() >= t.nsb)
        && t.om.iter().all(|o| o.len() >= t.nsb * 16)
        && t.dm.iter().all(|d| d.len() >= t.nsb)
        && t.bs.iter().all(|b| b.len() >= t.nsb * 16)
        && t.a.iter().all(|a| a.len() >= n)
        && (t.nsb == 0 || t.da.len() >= (t.nsb - 1) * t.da_stride + TILE_C);
    assert!(ok, "qgemm tile operands shorter than nsb = {}", t.nsb);
}

/// Both forms of a tile, AVX2 then VNNI (tests: bitwise equal). `which`: 0 the k-quant tile,
/// 1 Q4_K's, 2 the 32-value-block tile.
#[cfg(test)]
pub(crate) fn tile_forms(t: &QTileArgs, which: u8) -> [[[f32; TILE_C]; TILE_R]; 2] {
    assert!(
        crate::isa::vnni_available(),
        "tile_forms needs AVX-512 VNNI"
    );
    // The entries check the operands (and run the default form once).
    match which {
        0 => drop(tile(t)),
        1 => drop(tile_q4k(t)),
        _ => drop(tile32(t)),
    }
    // SAFETY: operands checked above; avx2 and VNNI asserted available.
    unsafe {
        match which {
            0 => [kernel::<false, false>(t), kernel::<false, true>(t)],
            1 => [kernel::<true, false>(t), kernel::<true, true>(t)],
            _ => [kernel32::<false>(t), kernel32::<true>(t)],
        }
    }
}

/// Safe entry of a k-quant strip (`qgemm::QStrip`): checks the operands once, then runs the
/// tile over every row group with unchecked operand slices.
pub(crate) fn strip(s: &QStrip, res: &mut [f32]) {
    assert!(s.unit == QK_K && s.sc_stride > 0, "k-quant strip");
    strip_checked(s, res, SC_LANES);
    // SAFETY: AVX2 only (see `tile`); `strip_checked` bounds every slice `strip_kernel` builds;
    // VNNI only where `vnni()` confirmed it.
    unsafe { vnni_form!(strip_kernel::<false, false>(s, res)) }
}

/// Safe entry of a Q4_K strip (quants below 16, see [`tile_q4k`]).
pub(crate) fn strip_q4k(s: &QStrip, res: &mut [f32]) {
    assert!(s.unit == QK_K && s.sc_stride > 0, "k-quant strip");
    strip_checked(s, res, SC_LANES);
    // SAFETY: as for `strip`.
    unsafe { vnni_form!(strip_kernel::<false, true>(s, res)) }
}

/// Safe entry of a 32-value-block strip (see [`strip`]).
pub(crate) fn strip32(s: &QStrip, res: &mut [f32]) {
    assert!(
        s.unit == 32 && s.nsb.is_multiple_of(2),
        "32-value-block strip"
    );
    strip_checked(s, res, 0);
    let pairs = s.nsb / 2;
    assert!(
        pairs == 0
            || (s.da.len() >= (pairs - 1) * s.da_stride + 2 * TILE_C
                && s.bias.len() >= (pairs - 1) * s.da_stride + 2 * TILE_C),
        "qgemm strip32 scales"
    );
    // SAFETY: as for `strip`.
    unsafe { vnni_form!(strip_kernel::<true, false>(s, res)) }
}

/// The length checks shared by both strips (`sc_lanes` group-scale lanes per unit).
fn strip_checked(s: &QStrip, res: &mut [f32], sc_lanes: usize) {
    let n = s.nsb * s.unit;
    let last = s.rows.saturating_sub(1);
    // k-quants: 16 offset multipliers per unit and one offset scale; 16 activation sums.
    let (om, dm) = if sc_lanes > 0 { (16, 1) } else { (0, 0) };
    let ok = s.rows > 0
        && s.om.len() >= (last * s.dw_stride + s.nsb) * om
        && s.dm.len() >= (last * s.dw_stride + s.nsb) * dm
        && s.bs.iter().all(|b| b.len() >= s.nsb * om)
        && (1..=TILE_C).contains(&s.nc)
        && s.q.len() >= last * s.q_stride + n
        && s.sc.len() >= last * s.sc_stride + s.nsb * sc_lanes
        && s.dw.len() >= last * s.dw_stride + s.nsb * dw_per_unit(s.unit)
        && s.a.iter().all(|a| a.len() >= n)
        && (s.nsb == 0 || s.unit == 32 || s.da.len() >= (s.nsb - 1) * s.da_stride + TILE_C)
        && res.len() >= (s.nc - 1) * s.rows + s.rows;
    assert!(ok, "qgemm strip operands shorter than nsb = {}", s.nsb);
}

/// SAFETY (caller): avx2+fma available, and AVX-512 VNNI if `V`; operands checked by
/// `strip_checked` (and, for `PAIRS`, the scale lengths `strip32` checks). `Q4K` picks the
/// k-quant tile's summed steps, `V` the VNNI form of every tile (bitwise the same results).
#[target_feature(enable = "avx2,fma")]
unsafe fn strip_kernel<const PAIRS: bool, const Q4K: bool, const V: bool>(
    s: &QStrip,
    res: &mut [f32],
) {
    const _: () = assert!(TILE_R == 3, "row groups spelled out for 3 rows");
    let n = s.nsb * s.unit;
    let scn = if PAIRS { 0 } else { s.nsb * SC_LANES };
    let mut rt = 0;
    while rt < s.rows {
        let last = s.rows - 1;
        let ri = [rt, (rt + 1).min(last), (rt + 2).min(last)];
        // SAFETY: every row index is below `rows`, so each span is inside the lengths checked.
        // (Arrays spelled out: `array::map` closures are not inlined into this function.)
        let t = unsafe {
            let q = |r: usize| s.q.get_unchecked(r * s.q_stride..r * s.q_stride + n);
            let sc = |r: usize| s.sc.get_unchecked(r * s.sc_stride..r * s.sc_stride + scn);
            let dwn = s.nsb * dw_per_unit(s.unit);
            let dw = |r: usize| s.dw.get_unchecked(r * s.dw_stride..r * s.dw_stride + dwn);
            // (32-value blocks have no offsets: their slices may be empty, so none is formed.)
            let ds = s.dw_stride;
            let om = |r: usize| -> &[i16] {
                if PAIRS {
                    &[]
                } else {
                    s.om.get_unchecked(16 * r * ds..16 * (r * ds + s.nsb))
                }
            };
            let dm = |r: usize| -> &[f32] {
                if PAIRS {
                    &[]
                } else {
                    s.dm.get_unchecked(r * ds..r * ds + s.nsb)
                }
            };
            let args = QTileArgs {
                nsb: s.nsb,
                q: [q(ri[0]), q(ri[1]), q(ri[2])],
                sc: [sc(ri[0]), sc(ri[1]), sc(ri[2])],
                dw: [dw(ri[0]), dw(ri[1]), dw(ri[2])],
                om: [om(ri[0]), om(ri[1]), om(ri[2])],
                dm: [dm(ri[0]), dm(ri[1]), dm(ri[2])],
                bs: s.bs,
                a: s.a,
                da: s.da,
                da_stride: s.da_stride,
                bias: s.bias,
            };
            if PAIRS {
                kernel32::<V>(&args)
            } else {
                kernel::<Q4K, V>(&args)
            }
        };
        for (i, tr) in t.iter().enumerate().take((s.rows - rt).min(TILE_R)) {
            for (c, &v) in tr.iter().enumerate().take(s.nc) {
                // SAFETY: c < nc and rt + i < rows: inside `res` as checked.
                unsafe { *res.get_unchecked_mut(c * s.rows + rt + i) += v };
            }
        }
        rt += TILE_R;
    }
}

/// Four columns' i32 accumulators into one vector whose lanes 0-3 (and 4-7) are the sums of
/// columns 0-3 over each 128-bit half: the same integers as two rounds of `vphaddd`, by
/// unpacks and adds (`vphaddd` takes 2 cycles per instruction on Zen 3, an unpack half of one).
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn fold4(a: [__m256i; TILE_C]) -> __m256i {
    // [a0_0 + a0_2, a1_0 + a1_2, a0_1 + a0_3, a1_1 + a1_3] per half, and alike for a2, a3.
    let t01 = _mm256_add_epi32(
        _mm256_unpacklo_epi32(a[0], a[1]),
        _mm256_unpackhi_epi32(a[0], a[1]),
    );
    let t23 = _mm256_add_epi32(
        _mm256_unpacklo_epi32(a[2], a[3]),
        _mm256_unpackhi_epi32(a[2], a[3]),
    );
    _mm256_add_epi32(
        _mm256_unpacklo_epi64(t01, t23),
        _mm256_unpackhi_epi64(t01, t23),
    )
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

/// Two 32-value steps of the tile (Q6_K), in `asm!` so that the 12 accumulators stay in
/// registers and each activation vector is a memory operand of `vpmaddubsw`: left to itself
/// LLVM keeps the activation vectors in registers and spills accumulators (measured ~1.3x
/// slower). Per weight row: its quants of both steps loaded once, then per column two
/// `vpmaddubsw` (u8 quants x i8 activations, pair sums in i16: at most 2 * 63 * 127 = 16002
/// each), their i16 sum (at most 32004: a lane keeps its scale group across steps,
/// `qgemm::kpos`), one `vpmaddwd` (x the lane's group scale, a memory operand, to i32) and
/// one add. 16 registers: 12 accumulators, 2 weight vectors, 2 temporaries.
macro_rules! kstep2 {
    ($acc:ident, $q:ident, $sc:ident, $a:ident, $off:expr) => {
        std::arch::asm!(
            "vmovdqu {w0}, ymmword ptr [{q0} + {off}]",
            "vmovdqu {w1}, ymmword ptr [{q0} + {off} + 32]",
            "vpmaddubsw {t}, {w0}, ymmword ptr [{a0} + {off}]",
            "vpmaddubsw {u}, {w1}, ymmword ptr [{a0} + {off} + 32]",
            "vpaddw {t}, {t}, {u}",
            "vpmaddwd {t}, {t}, ymmword ptr [{s0}]",
            "vpaddd {c00}, {c00}, {t}",
            "vpmaddubsw {t}, {w0}, ymmword ptr [{a1} + {off}]",
            "vpmaddubsw {u}, {w1}, ymmword ptr [{a1} + {off} + 32]",
            "vpaddw {t}, {t}, {u}",
            "vpmaddwd {t}, {t}, ymmword ptr [{s0}]",
            "vpaddd {c01}, {c01}, {t}",
            "vpmaddubsw {t}, {w0}, ymmword ptr [{a2} + {off}]",
            "vpmaddubsw {u}, {w1}, ymmword ptr [{a2} + {off} + 32]",
            "vpaddw {t}, {t}, {u}",
            "vpmaddwd {t}, {t}, ymmword ptr [{s0}]",
            "vpaddd {c02}, {c02}, {t}",
            "vpmaddubsw {t}, {w0}, ymmword ptr [{a3} + {off}]",
            "vpmaddubsw {u}, {w1}, ymmword ptr [{a3} + {off} + 32]",
            "vpaddw {t}, {t}, {u}",
            "vpmaddwd {t}, {t}, ymmword ptr [{s0}]",
            "vpaddd {c03}, {c03}, {t}",
            "vmovdqu {w0}, ymmword ptr [{q1} + {off}]",
            "vmovdqu {w1}, ymmword ptr [{q1} + {off} + 32]",
            "vpmaddubsw {t}, {w0}, ymmword ptr [{a0} + {off}]",
            "vpmaddubsw {u}, {w1}, ymmword ptr [{a0} + {off} + 32]",
            "vpaddw {t}, {t}, {u}",
            "vpmaddwd {t}, {t}, ymmword ptr [{s1}]",
            "vpaddd {c10}, {c10}, {t}",
            "vpmaddubsw {t}, {w0}, ymmword ptr [{a1} + {off}]",
            "vpmaddubsw {u}, {w1}, ymmword ptr [{a1} + {off} + 32]",
            "vpaddw {t}, {t}, {u}",
            "vpmaddwd {t}, {t}, ymmword ptr [{s1}]",
            "vpaddd {c11}, {c11}, {t}",
            "vpmaddubsw {t}, {w0}, ymmword ptr [{a2} + {off}]",
            "vpmaddubsw {u}, {w1}, ymmword ptr [{a2} + {off} + 32]",
            "vpaddw {t}, {t}, {u}",
            "vpmaddwd {t}, {t}, ymmword ptr [{s1}]",
            "vpaddd {c12}, {c12}, {t}",
            "vpmaddubsw {t}, {w0}, ymmword ptr [{a3} + {off}]",
            "vpmaddubsw {u}, {w1}, ymmword ptr [{a3} + {off} + 32]",
            "vpaddw {t}, {t}, {u}",
            "vpmaddwd {t}, {t}, ymmword ptr [{s1}]",
            "vpaddd {c13}, {c13}, {t}",
            "vmovdqu {w0}, ymmword ptr [{q2} + {off}]",
            "vmovdqu {w1}, ymmword ptr [{q2} + {off} + 32]",
            "vpmaddubsw {t}, {w0}, ymmword ptr [{a0} + {off}]",
            "vpmaddubsw {u}, {w1}, ymmword ptr [{a0} + {off} + 32]",
            "vpaddw {t}, {t}, {u}",
            "vpmaddwd {t}, {t}, ymmword ptr [{s2}]",
            "vpaddd {c20}, {c20}, {t}",
            "vpmaddubsw {t}, {w0}, ymmword ptr [{a1} + {off}]",
            "vpmaddubsw {u}, {w1}, ymmword ptr [{a1} + {off} + 32]",
            "vpaddw {t}, {t}, {u}",
            "vpmaddwd {t}, {t}, ymmword ptr [{s2}]",
            "vpaddd {c21}, {c21}, {t}",
            "vpmaddubsw {t}, {w0}, ymmword ptr [{a2} + {off}]",
            "vpmaddubsw {u}, {w1}, ymmword ptr [{a2} + {off} + 32]",
            "vpaddw {t}, {t}, {u}",
            "vpmaddwd {t}, {t}, ymmword ptr [{s2}]",
            "vpaddd {c22}, {c22}, {t}",
            "vpmaddubsw {t}, {w0}, ymmword ptr [{a3} + {off}]",
            "vpmaddubsw {u}, {w1}, ymmword ptr [{a3} + {off} + 32]",
            "vpaddw {t}, {t}, {u}",
            "vpmaddwd {t}, {t}, ymmword ptr [{s2}]",
            "vpaddd {c23}, {c23}, {t}",
            q0 = in(reg) $q[0],
            q1 = in(reg) $q[1],
            q2 = in(reg) $q[2],
            s0 = in(reg) $sc[0],
            s1 = in(reg) $sc[1],
            s2 = in(reg) $sc[2],
            a0 = in(reg) $a[0],
            a1 = in(reg) $a[1],
            a2 = in(reg) $a[2],
            a3 = in(reg) $a[3],
            off = in(reg) $off,
            w0 = out(ymm_reg) _,
            w1 = out(ymm_reg) _,
            t = out(ymm_reg) _,
            u = out(ymm_reg) _,
            c00 = inout(ymm_reg) $acc[0][0],
            c01 = inout(ymm_reg) $acc[0][1],
            c02 = inout(ymm_reg) $acc[0][2],
            c03 = inout(ymm_reg) $acc[0][3],
            c10 = inout(ymm_reg) $acc[1][0],
            c11 = inout(ymm_reg) $acc[1][1],
            c12 = inout(ymm_reg) $acc[1][2],
            c13 = inout(ymm_reg) $acc[1][3],
            c20 = inout(ymm_reg) $acc[2][0],
            c21 = inout(ymm_reg) $acc[2][1],
            c22 = inout(ymm_reg) $acc[2][2],
            c23 = inout(ymm_reg) $acc[2][3],
            options(nostack, preserves_flags, readonly, pure),
        )
    };
}

/// Q4_K's step (see [`kstep2!`]): per weight row its quants loaded once, then per column one
/// `vpmaddubsw` and one i16 add. A lane keeps its scale group over the super-block
/// (`qgemm::kpos`), so the 8 steps' sums add up in i16 (at most 8 * 2 * 15 * 127 = 30480)
/// and the scales are applied once, after the last.
macro_rules! kstep16 {
    ($acc:ident, $q:ident, $a:ident, $off:expr) => {
        std::arch::asm!(
            "vmovdqu {w}, ymmword ptr [{q0} + {off}]",
            "vpmaddubsw {t}, {w}, ymmword ptr [{a0} + {off}]",
            "vpaddw {c00}, {c00}, {t}",
            "vpmaddubsw {t}, {w}, ymmword ptr [{a1} + {off}]",
            "vpaddw {c01}, {c01}, {t}",
            "vpmaddubsw {t}, {w}, ymmword ptr [{a2} + {off}]",
            "vpaddw {c02}, {c02}, {t}",
            "vpmaddubsw {t}, {w}, ymmword ptr [{a3} + {off}]",
            "vpaddw {c03}, {c03}, {t}",
            "vmovdqu {w}, ymmword ptr [{q1} + {off}]",
            "vpmaddubsw {t}, {w}, ymmword ptr [{a0} + {off}]",
            "vpaddw {c10}, {c10}, {t}",
            "vpmaddubsw {t}, {w}, ymmword ptr [{a1} + {off}]",
            "vpaddw {c11}, {c11}, {t}",
            "vpmaddubsw {t}, {w}, ymmword ptr [{a2} + {off}]",
            "vpaddw {c12}, {c12}, {t}",
            "vpmaddubsw {t}, {w}, ymmword ptr [{a3} + {off}]",
            "vpaddw {c13}, {c13}, {t}",
            "vmovdqu {w}, ymmword ptr [{q2} + {off}]",
            "vpmaddubsw {t}, {w}, ymmword ptr [{a0} + {off}]",
            "vpaddw {c20}, {c20}, {t}",
            "vpmaddubsw {t}, {w}, ymmword ptr [{a1} + {off}]",
            "vpaddw {c21}, {c21}, {t}",
            "vpmaddubsw {t}, {w}, ymmword ptr [{a2} + {off}]",
            "vpaddw {c22}, {c22}, {t}",
            "vpmaddubsw {t}, {w}, ymmword ptr [{a3} + {off}]",
            "vpaddw {c23}, {c23}, {t}",
            q0 = in(reg) $q[0],
            q1 = in(reg) $q[1],
            q2 = in(reg) $q[2],
            a0 = in(reg) $a[0],
            a1 = in(reg) $a[1],
            a2 = in(reg) $a[2],
            a3 = in(reg) $a[3],
            off = in(reg) $off,
            w = out(ymm_reg) _,
            t = out(ymm_reg) _,
            c00 = inout(ymm_reg) $acc[0][0],
            c01 = inout(ymm_reg) $acc[0][1],
            c02 = inout(ymm_reg) $acc[0][2],
            c03 = inout(ymm_reg) $acc[0][3],
            c10 = inout(ymm_reg) $acc[1][0],
            c11 = inout(ymm_reg) $acc[1][1],
            c12 = inout(ymm_reg) $acc[1][2],
            c13 = inout(ymm_reg) $acc[1][3],
            c20 = inout(ymm_reg) $acc[2][0],
            c21 = inout(ymm_reg) $acc[2][1],
            c22 = inout(ymm_reg) $acc[2][2],
            c23 = inout(ymm_reg) $acc[2][3],
            options(nostack, preserves_flags, readonly, pure),
        )
    };
}

/// [`kstep2!`] on VNNI: `vpdpwssd` applies the group scales and accumulates in one
/// instruction (the `vpmaddwd` + `vpaddd` pair's exact i32 result).
macro_rules! kstep2v {
    ($acc:ident, $q:ident, $sc:ident, $a:ident, $off:expr) => {
        std::arch::asm!(
            "vmovdqu {w0}, ymmword ptr [{q0} + {off}]",
            "vmovdqu {w1}, ymmword ptr [{q0} + {off} + 32]",
            "vpmaddubsw {t}, {w0}, ymmword ptr [{a0} + {off}]",
            "vpmaddubsw {u}, {w1}, ymmword ptr [{a0} + {off} + 32]",
            "vpaddw {t}, {t}, {u}",
            "vpdpwssd {c00}, {t}, ymmword ptr [{s0}]",
            "vpmaddubsw {t}, {w0}, ymmword ptr [{a1} + {off}]",
            "vpmaddubsw {u}, {w1}, ymmword ptr [{a1} + {off} + 32]",
            "vpaddw {t}, {t}, {u}",
            "vpdpwssd {c01}, {t}, ymmword ptr [{s0}]",
            "vpmaddubsw {t}, {w0}, ymmword ptr [{a2} + {off}]",
            "vpmaddubsw {u}, {w1}, ymmword ptr [{a2} + {off} + 32]",
            "vpaddw {t}, {t}, {u}",
            "vpdpwssd {c02}, {t}, ymmword ptr [{s0}]",
            "vpmaddubsw {t}, {w0}, ymmword ptr [{a3} + {off}]",
            "vpmaddubsw {u}, {w1}, ymmword ptr [{a3} + {off} + 32]",
            "vpaddw {t}, {t}, {u}",
            "vpdpwssd {c03}, {t}, ymmword ptr [{s0}]",
            "vmovdqu {w0}, ymmword ptr [{q1} + {off}]",
            "vmovdqu {w1}, ymmword ptr [{q1} + {off} + 32]",
            "vpmaddubsw {t}, {w0}, ymmword ptr [{a0} + {off}]",
            "vpmaddubsw {u}, {w1}, ymmword ptr [{a0} + {off} + 32]",
            "vpaddw {t}, {t}, {u}",
            "vpdpwssd {c10}, {t}, ymmword ptr [{s1}]",
            "vpmaddubsw {t}, {w0}, ymmword ptr [{a1} + {off}]",
            "vpmaddubsw {u}, {w1}, ymmword ptr [{a1} + {off} + 32]",
            "vpaddw {t}, {t}, {u}",
            "vpdpwssd {c11}, {t}, ymmword ptr [{s1}]",
            "vpmaddubsw {t}, {w0}, ymmword ptr [{a2} + {off}]",
            "vpmaddubsw {u}, {w1}, ymmword ptr [{a2} + {off} + 32]",
            "vpaddw {t}, {t}, {u}",
            "vpdpwssd {c12}, {t}, ymmword ptr [{s1}]",
            "vpmaddubsw {t}, {w0}, ymmword ptr [{a3} + {off}]",
            "vpmaddubsw {u}, {w1}, ymmword ptr [{a3} + {off} + 32]",
            "vpaddw {t}, {t}, {u}",
            "vpdpwssd {c13}, {t}, ymmword ptr [{s1}]",
            "vmovdqu {w0}, ymmword ptr [{q2} + {off}]",
            "vmovdqu {w1}, ymmword ptr [{q2} + {off} + 32]",
            "vpmaddubsw {t}, {w0}, ymmword ptr [{a0} + {off}]",
            "vpmaddubsw {u}, {w1}, ymmword ptr [{a0} + {off} + 32]",
            "vpaddw {t}, {t}, {u}",
            "vpdpwssd {c20}, {t}, ymmword ptr [{s2}]",
            "vpmaddubsw {t}, {w0}, ymmword ptr [{a1} + {off}]",
            "vpmaddubsw {u}, {w1}, ymmword ptr [{a1} + {off} + 32]",
            "vpaddw {t}, {t}, {u}",
            "vpdpwssd {c21}, {t}, ymmword ptr [{s2}]",
            "vpmaddubsw {t}, {w0}, ymmword ptr [{a2} + {off}]",
            "vpmaddubsw {u}, {w1}, ymmword ptr [{a2} + {off} + 32]",
            "vpaddw {t}, {t}, {u}",
            "vpdpwssd {c22}, {t}, ymmword ptr [{s2}]",
            "vpmaddubsw {t}, {w0}, ymmword ptr [{a3} + {off}]",
            "vpmaddubsw {u}, {w1}, ymmword ptr [{a3} + {off} + 32]",
            "vpaddw {t}, {t}, {u}",
            "vpdpwssd {c23}, {t}, ymmword ptr [{s2}]",
            q0 = in(reg) $q[0],
            q1 = in(reg) $q[1],
            q2 = in(reg) $q[2],
            s0 = in(reg) $sc[0],
            s1 = in(reg) $sc[1],
            s2 = in(reg) $sc[2],
            a0 = in(reg) $a[0],
            a1 = in(reg) $a[1],
            a2 = in(reg) $a[2],
            a3 = in(reg) $a[3],
            off = in(reg) $off,
            w0 = out(ymm_reg) _,
            w1 = out(ymm_reg) _,
            t = out(ymm_reg) _,
            u = out(ymm_reg) _,
            c00 = inout(ymm_reg) $acc[0][0],
            c01 = inout(ymm_reg) $acc[0][1],
            c02 = inout(ymm_reg) $acc[0][2],
            c03 = inout(ymm_reg) $acc[0][3],
            c10 = inout(ymm_reg) $acc[1][0],
            c11 = inout(ymm_reg) $acc[1][1],
            c12 = inout(ymm_reg) $acc[1][2],
            c13 = inout(ymm_reg) $acc[1][3],
            c20 = inout(ymm_reg) $acc[2][0],
            c21 = inout(ymm_reg) $acc[2][1],
            c22 = inout(ymm_reg) $acc[2][2],
            c23 = inout(ymm_reg) $acc[2][3],
            options(nostack, preserves_flags, readonly, pure),
        )
    };
}

/// [`kstep16!`] on VNNI: one `vpdpbusd` per column adds the step's products straight into
/// i32 lanes. An i32 lane is the i16 lane pair `2 j, 2 j + 1`, i.e. Q4_K sub-block `j`
/// (`qgemm::kpos`), so the super-block's sums per sub-block are the AVX2 tile's pair sums,
/// exactly, and the scales are applied once by `vpmulld`. 16 registers: 12 accumulators, the
/// weight vector (no temporary).
macro_rules! kstep16v {
    ($acc:ident, $q:ident, $a:ident, $off:expr) => {
        std::arch::asm!(
            "vmovdqu {w}, ymmword ptr [{q0} + {off}]",
            "vpdpbusd {c00}, {w}, ymmword ptr [{a0} + {off}]",
            "vpdpbusd {c01}, {w}, ymmword ptr [{a1} + {off}]",
            "vpdpbusd {c02}, {w}, ymmword ptr [{a2} + {off}]",
            "vpdpbusd {c03}, {w}, ymmword ptr [{a3} + {off}]",
            "vmovdqu {w}, ymmword ptr [{q1} + {off}]",
            "vpdpbusd {c10}, {w}, ymmword ptr [{a0} + {off}]",
            "vpdpbusd {c11}, {w}, ymmword ptr [{a1} + {off}]",
            "vpdpbusd {c12}, {w}, ymmword ptr [{a2} + {off}]",
            "vpdpbusd {c13}, {w}, ymmword ptr [{a3} + {off}]",
            "vmovdqu {w}, ymmword ptr [{q2} + {off}]",
            "vpdpbusd {c20}, {w}, ymmword ptr [{a0} + {off}]",
            "vpdpbusd {c21}, {w}, ymmword ptr [{a1} + {off}]",
            "vpdpbusd {c22}, {w}, ymmword ptr [{a2} + {off}]",
            "vpdpbusd {c23}, {w}, ymmword ptr [{a3} + {off}]",
            q0 = in(reg) $q[0],
            q1 = in(reg) $q[1],
            q2 = in(reg) $q[2],
            a0 = in(reg) $a[0],
            a1 = in(reg) $a[1],
            a2 = in(reg) $a[2],
            a3 = in(reg) $a[3],
            off = in(reg) $off,
            w = out(ymm_reg) _,
            c00 = inout(ymm_reg) $acc[0][0],
            c01 = inout(ymm_reg) $acc[0][1],
            c02 = inout(ymm_reg) $acc[0][2],
            c03 = inout(ymm_reg) $acc[0][3],
            c10 = inout(ymm_reg) $acc[1][0],
            c11 = inout(ymm_reg) $acc[1][1],
            c12 = inout(ymm_reg) $acc[1][2],
            c13 = inout(ymm_reg) $acc[1][3],
            c20 = inout(ymm_reg) $acc[2][0],
            c21 = inout(ymm_reg) $acc[2][1],
            c22 = inout(ymm_reg) $acc[2][2],
            c23 = inout(ymm_reg) $acc[2][3],
            options(nostack, preserves_flags, readonly, pure),
        )
    };
}

/// The k-quant tile; `Q4K`: the steps summed in i16 ([`kstep16!`]), else scaled per two
/// steps ([`kstep2!`]); `V`: their VNNI forms ([`kstep16v!`], [`kstep2v!`]), whose i32 sums,
/// and so results, are bitwise the AVX2 ones.
///
/// SAFETY (caller): avx2+fma available, and AVX-512 VNNI (VL) if `V`; operand lengths as
/// checked by [`tile`].
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel<const Q4K: bool, const V: bool>(t: &QTileArgs) -> [[f32; TILE_C]; TILE_R] {
    const _: () = assert!(
        TILE_R == 3 && TILE_C == 4,
        "kstep2! and kstep16! are written for a 3 x 4 tile"
    );
    // (Arrays spelled out: `array::map` calls are not always inlined here.)
    let q = [t.q[0].as_ptr(), t.q[1].as_ptr(), t.q[2].as_ptr()];
    let sc = [t.sc[0].as_ptr(), t.sc[1].as_ptr(), t.sc[2].as_ptr()];
    let a = [
        t.a[0].as_ptr(),
        t.a[1].as_ptr(),
        t.a[2].as_ptr(),
        t.a[3].as_ptr(),
    ];
    // facc[r]: lanes 0-3 the low halves' partial sums for columns 0-3, lanes 4-7 the high.
    let mut facc = [_mm256_setzero_ps(); TILE_R];
    // SAFETY: every offset stays below the lengths `tile` checked: quants and activations
    // `off + 32 <= nsb * 256`, and each super-block's `SC_LANES` scale lanes.
    unsafe {
        for s in 0..t.nsb {
            let mut acc = [[_mm256_setzero_si256(); TILE_C]; TILE_R];
            let scs = [
                sc[0].add(s * SC_LANES),
                sc[1].add(s * SC_LANES),
                sc[2].add(s * SC_LANES),
            ];
            match (Q4K, V) {
                (true, false) => {
                    for k in 0..QK_K / 32 {
                        kstep16!(acc, q, a, s * QK_K + 32 * k);
                    }
                }
                (true, true) => {
                    for k in 0..QK_K / 32 {
                        kstep16v!(acc, q, a, s * QK_K + 32 * k);
                    }
                }
                (false, false) => {
                    for k in 0..QK_K / 64 {
                        kstep2!(acc, q, scs, a, s * QK_K + 64 * k);
                    }
                }
                (false, true) => {
                    for k in 0..QK_K / 64 {
                        kstep2v!(acc, q, scs, a, s * QK_K + 64 * k);
                    }
                }
            }
            // Four columns' accumulators into one vector per row (each lane from one column's
            // accumulator only), then one scaled FMA.
            let da = _mm256_broadcast_ps(&*(t.da.as_ptr().add(s * t.da_stride) as *const __m128));
            let bs = [0, 1, 2, 3]
                .map(|c| _mm256_loadu_si256(t.bs[c].as_ptr().add(16 * s) as *const __m256i));
            for r in 0..TILE_R {
                let h = if Q4K && V {
                    // Lanes 2 j and 2 j + 1 hold sub-block j's scale (Q4_K's are 6-bit, the
                    // panel repeats each in both lanes): the low word of i32 lane j,
                    // sign-extended, is it.
                    let scv = _mm256_loadu_si256(scs[r] as *const __m256i);
                    let sc32 = _mm256_srai_epi32::<16>(_mm256_slli_epi32::<16>(scv));
                    fold4([
                        _mm256_mullo_epi32(acc[r][0], sc32),
                        _mm256_mullo_epi32(acc[r][1], sc32),
                        _mm256_mullo_epi32(acc[r][2], sc32),
                        _mm256_mullo_epi32(acc[r][3], sc32),
                    ])
                } else if Q4K {
                    let scv = _mm256_loadu_si256(scs[r] as *const __m256i);
                    fold4([
                        _mm256_madd_epi16(acc[r][0], scv),
                        _mm256_madd_epi16(acc[r][1], scv),
                        _mm256_madd_epi16(acc[r][2], scv),
                        _mm256_madd_epi16(acc[r][3], scv),
                    ])
                } else {
                    fold4(acc[r])
                };
                let h = _mm256_cvtepi32_ps(h);
                let d = _mm256_mul_ps(_mm256_set1_ps(*t.dw[r].as_ptr().add(s)), da);
                facc[r] = _mm256_fmadd_ps(h, d, facc[r]);
                // The offsets: 16 multipliers x 16 activation sums per column, folded alike.
                let om = _mm256_loadu_si256(t.om[r].as_ptr().add(16 * s) as *const __m256i);
                let o = _mm256_cvtepi32_ps(fold4([
                    _mm256_madd_epi16(om, bs[0]),
                    _mm256_madd_epi16(om, bs[1]),
                    _mm256_madd_epi16(om, bs[2]),
                    _mm256_madd_epi16(om, bs[3]),
                ]));
                let dm = _mm256_mul_ps(_mm256_set1_ps(*t.dm[r].as_ptr().add(s)), da);
                facc[r] = _mm256_fnmadd_ps(o, dm, facc[r]);
            }
        }
    }
    fold_halves(facc)
}

/// AVX2 twin of `qgemm::unpack_block_scalar`: one super-block into 256 unsigned quants, its
/// group scales spread over `SC_LANES` lanes and its 16 offset multipliers; returns the
/// super-block scale `d` and the offset scale `dm`.
pub(crate) fn unpack_block(
    ty: GgmlType,
    b: &[u8],
    q: &mut [u8],
    sc: &mut [i16],
    om: &mut [i16],
) -> (f32, f32) {
    assert!(
        b.len() >= ty.type_size() && q.len() >= QK_K && sc.len() >= SC_LANES && om.len() >= 16,
        "qgemm unpack operands too short"
    );
    // Q4KR's nibbles are already in the panel's order (`crate::repack_q4k`): split in place.
    if ty == GgmlType::Q4KR {
        // SAFETY: only called when `qgemm::kernels` returned this module's kernels (avx2+fma+
        // f16c detected); the lengths checked above bound every access.
        return unsafe { unpack_q4k(b, q, sc, om) };
    }
    // Natural order first, then the panel's (`qgemm::kpos`).
    let mut t = [0u8; QK_K];
    // SAFETY: only called when `qgemm::kernels` returned this module's kernels, i.e. after
    // avx2+fma+f16c were detected; lengths checked above bound every access.
    let ds = unsafe {
        match ty {
            GgmlType::Q4K => unpack_q4k(b, &mut t, sc, om),
            GgmlType::Q6K => unpack_q6k(b, &mut t, sc, om),
            _ => unreachable!("qgemm admits Q4_K and Q6_K only"),
        }
    };
    perm_k(&t, q);
    ds
}

/// One Q6_K super-block unpacked in natural order (the VNNI 8-row panels' input): 256
/// unsigned quants (`q + 32`), its 16 group scales and offset multipliers (the same), and
/// `(d, 32 d)`: [`unpack_block`]'s Q6_K output before the panel permutation.
pub(crate) fn unpack_q6k_natural(
    b: &[u8],
    q: &mut [u8],
    sc: &mut [i16],
    om: &mut [i16],
) -> (f32, f32) {
    assert!(
        b.len() >= 210 && q.len() >= QK_K && sc.len() >= SC_LANES && om.len() >= 16,
        "qgemm unpack operands too short"
    );
    // SAFETY: only called where the AVX2 kernels were selected (avx2+fma+f16c detected, and
    // VNNI on top); the lengths checked above bound every access.
    unsafe { unpack_q6k(b, q, sc, om) }
}

/// AVX2 twin of `qgemm::perm_k_scalar`: one super-block's 256 bytes from natural order to the
/// panel's (`qgemm::kpos`): an 8 x 8 transpose of 16-bit pairs in each 128-bit half, the
/// natural 16-value groups 0-7 in the low halves and 8-15 in the high.
pub(crate) fn perm_k(src: &[u8], dst: &mut [u8]) {
    assert!(src.len() >= QK_K && dst.len() >= QK_K, "perm_k operands");
    // SAFETY: only handed out on AVX2 (see `tile`); 256 bytes in and out checked above.
    unsafe { perm_k_kernel(src.as_ptr(), dst.as_mut_ptr()) }
}

/// SAFETY (caller): avx2 available; 256 readable bytes at `src`, 256 writable at `dst`.
#[target_feature(enable = "avx2")]
unsafe fn perm_k_kernel(src: *const u8, dst: *mut u8) {
    // SAFETY: per the caller's contract (16 loads and 8 stores of 16 / 32 bytes inside).
    unsafe {
        // r[i]: group i (16 bytes = 8 pairs) in the low half, group i + 8 in the high.
        let r: [__m256i; 8] = std::array::from_fn(|i| {
            _mm256_loadu2_m128i(
                src.add(16 * (i + 8)) as *const __m128i,
                src.add(16 * i) as *const __m128i,
            )
        });
        let lo16 = |x, y| _mm256_unpacklo_epi16(x, y);
        let hi16 = |x, y| _mm256_unpackhi_epi16(x, y);
        let a = [
            lo16(r[0], r[1]),
            hi16(r[0], r[1]),
            lo16(r[2], r[3]),
            hi16(r[2], r[3]),
            lo16(r[4], r[5]),
            hi16(r[4], r[5]),
            lo16(r[6], r[7]),
            hi16(r[6], r[7]),
        ];
        let lo32 = |x, y| _mm256_unpacklo_epi32(x, y);
        let hi32 = |x, y| _mm256_unpackhi_epi32(x, y);
        // b[0]: pairs 0-1 of groups 0-3; b[1]: pairs 2-3; b[2]: 4-5; b[3]: 6-7; b[4..]: groups 4-7.
        let b = [
            lo32(a[0], a[2]),
            hi32(a[0], a[2]),
            lo32(a[1], a[3]),
            hi32(a[1], a[3]),
            lo32(a[4], a[6]),
            hi32(a[4], a[6]),
            lo32(a[5], a[7]),
            hi32(a[5], a[7]),
        ];
        for j in 0..4 {
            // Step 2j and 2j + 1: pair 2j (2j + 1) of groups 0-7 (and 8-15 in the high half).
            let even = _mm256_unpacklo_epi64(b[j], b[j + 4]);
            let odd = _mm256_unpackhi_epi64(b[j], b[j + 4]);
            _mm256_storeu_si256(dst.add(64 * j) as *mut __m256i, even);
            _mm256_storeu_si256(dst.add(64 * j + 32) as *mut __m256i, odd);
        }
    }
}

/// SAFETY (caller): avx2 available; `b` >= 144 bytes, `q` >= 256, `sc` >= `SC_LANES` entries.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_q4k(b: &[u8], q: &mut [u8], sc: &mut [i16], om: &mut [i16]) -> (f32, f32) {
    let (scales, mins) = crate::scalar::k4_scales_mins(&b[4..16]);
    for (g, v) in om[..16].iter_mut().enumerate() {
        *v = mins[g / 2] as i16;
    }
    let m4 = _mm256_set1_epi8(0x0F);
    // SAFETY: in bounds per the caller's contract (16 + 4 * 32 <= 144, 4 * 64 <= 256,
    // 2 * 8 <= SC_LANES).
    unsafe {
        for j in 0..4 {
            let v = _mm256_loadu_si256(b.as_ptr().add(16 + 32 * j) as *const __m256i);
            let qp = q.as_mut_ptr().add(64 * j);
            _mm256_storeu_si256(qp as *mut __m256i, _mm256_and_si256(v, m4));
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
            _mm256_storeu_si256(qp.add(32) as *mut __m256i, hi);
        }
        for (k, &s) in scales.iter().enumerate() {
            *sc.as_mut_ptr().add(2 * k) = s as i16;
            *sc.as_mut_ptr().add(2 * k + 1) = s as i16;
        }
    }
    (crate::scalar::f16_at(b, 0), crate::scalar::f16_at(b, 2))
}

/// SAFETY (caller): avx2 available; `b` >= 210 bytes, `q` >= 256, `sc` >= `SC_LANES` entries.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_q6k(b: &[u8], q: &mut [u8], sc: &mut [i16], om: &mut [i16]) -> (f32, f32) {
    let m4 = _mm256_set1_epi8(0x0F);
    let m30 = _mm256_set1_epi8(0x30);
    // SAFETY: in bounds per the caller's contract (ql: 128 bytes, qh: 128..192, scales:
    // 192..208; q: 256 bytes; sc: SC_LANES entries).
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
        // The 16 group scales are both the scale lanes and the offset multipliers.
        let s16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(192) as *const __m128i));
        _mm256_storeu_si256(sc.as_mut_ptr() as *mut __m256i, s16);
        _mm256_storeu_si256(om.as_mut_ptr() as *mut __m256i, s16);
    }
    let d = crate::scalar::f16_at(b, 208);
    (d, 32.0 * d)
}

/// Safe entry of the 32-value-block tile (Q5_0, blocks in pairs: `qgemm::pos32`): checks the
/// slice lengths, then runs it.
pub(crate) fn tile32(t: &QTileArgs) -> [[f32; TILE_C]; TILE_R] {
    let n = t.nsb * 32;
    let pairs = t.nsb / 2;
    let ok = t.nsb.is_multiple_of(2)
        && t.q.iter().all(|q| q.len() >= n)
        && t.dw.iter().all(|d| d.len() >= 4 * t.nsb)
        && t.a.iter().all(|a| a.len() >= n)
        && (pairs == 0 || t.da.len() >= (pairs - 1) * t.da_stride + 2 * TILE_C)
        && (pairs == 0 || t.bias.len() >= (pairs - 1) * t.da_stride + 2 * TILE_C);
    assert!(ok, "qgemm tile32 operands shorter than nsb = {}", t.nsb);
    // SAFETY: as for `tile` (handed out only on AVX2; lengths checked above; VNNI only where
    // `vnni()` confirmed it).
    unsafe { vnni_form!(kernel32(t)) }
}

/// One weight row's block pair against the tile's 4 activation rows: per column the two
/// `vpmaddubsw` of the pair's vectors, added in i16. In `asm!` so that the activations are
/// memory operands: LLVM otherwise holds all 8 activation vectors in registers across the
/// rows and spills.
///
/// SAFETY (caller): avx2 available; 64 bytes readable at `w` and at each `a[c] + off`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn pair_dots(w: *const u8, a: [*const i8; TILE_C], off: usize) -> [__m256i; TILE_C] {
    let (p0, p1, p2, p3);
    // SAFETY: per the caller's contract; reads only.
    unsafe {
        std::arch::asm!(
            "vmovdqu {w1}, ymmword ptr [{w}]",
            "vmovdqu {w2}, ymmword ptr [{w} + 32]",
            "vpmaddubsw {p0}, {w1}, ymmword ptr [{a0} + {off}]",
            "vpmaddubsw {t}, {w2}, ymmword ptr [{a0} + {off} + 32]",
            "vpaddw {p0}, {p0}, {t}",
            "vpmaddubsw {p1}, {w1}, ymmword ptr [{a1} + {off}]",
            "vpmaddubsw {t}, {w2}, ymmword ptr [{a1} + {off} + 32]",
            "vpaddw {p1}, {p1}, {t}",
            "vpmaddubsw {p2}, {w1}, ymmword ptr [{a2} + {off}]",
            "vpmaddubsw {t}, {w2}, ymmword ptr [{a2} + {off} + 32]",
            "vpaddw {p2}, {p2}, {t}",
            "vpmaddubsw {p3}, {w1}, ymmword ptr [{a3} + {off}]",
            "vpmaddubsw {t}, {w2}, ymmword ptr [{a3} + {off} + 32]",
            "vpaddw {p3}, {p3}, {t}",
            w = in(reg) w,
            a0 = in(reg) a[0],
            a1 = in(reg) a[1],
            a2 = in(reg) a[2],
            a3 = in(reg) a[3],
            off = in(reg) off,
            w1 = out(ymm_reg) _,
            w2 = out(ymm_reg) _,
            t = out(ymm_reg) _,
            p0 = out(ymm_reg) p0,
            p1 = out(ymm_reg) p1,
            p2 = out(ymm_reg) p2,
            p3 = out(ymm_reg) p3,
            // Not `pure`: kept in program order with `row_done`, so a row's products are
            // formed only after the previous row's epilogue (see `kernel32`).
            options(nostack, preserves_flags, readonly),
        );
    }
    [p0, p1, p2, p3]
}

/// [`pair_dots`] on VNNI: per column two `vpdpbusd` from zero, so each i32 lane holds the
/// exact sum of its 8 products (the AVX2 form's i16 lane pair, exactly; see [`kernel32`]).
///
/// SAFETY (caller): avx2 and AVX-512 VNNI (VL) available; 64 bytes readable at `w` and at
/// each `a[c] + off`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn pair_dots_v(w: *const u8, a: [*const i8; TILE_C], off: usize) -> [__m256i; TILE_C] {
    let (p0, p1, p2, p3);
    // SAFETY: per the caller's contract; reads only.
    unsafe {
        std::arch::asm!(
            "vmovdqu {w1}, ymmword ptr [{w}]",
            "vmovdqu {w2}, ymmword ptr [{w} + 32]",
            "vpxor {p0}, {p0}, {p0}",
            "vpdpbusd {p0}, {w1}, ymmword ptr [{a0} + {off}]",
            "vpdpbusd {p0}, {w2}, ymmword ptr [{a0} + {off} + 32]",
            "vpxor {p1}, {p1}, {p1}",
            "vpdpbusd {p1}, {w1}, ymmword ptr [{a1} + {off}]",
            "vpdpbusd {p1}, {w2}, ymmword ptr [{a1} + {off} + 32]",
            "vpxor {p2}, {p2}, {p2}",
            "vpdpbusd {p2}, {w1}, ymmword ptr [{a2} + {off}]",
            "vpdpbusd {p2}, {w2}, ymmword ptr [{a2} + {off} + 32]",
            "vpxor {p3}, {p3}, {p3}",
            "vpdpbusd {p3}, {w1}, ymmword ptr [{a3} + {off}]",
            "vpdpbusd {p3}, {w2}, ymmword ptr [{a3} + {off} + 32]",
            w = in(reg) w,
            a0 = in(reg) a[0],
            a1 = in(reg) a[1],
            a2 = in(reg) a[2],
            a3 = in(reg) a[3],
            off = in(reg) off,
            w1 = out(ymm_reg) _,
            w2 = out(ymm_reg) _,
            p0 = out(ymm_reg) p0,
            p1 = out(ymm_reg) p1,
            p2 = out(ymm_reg) p2,
            p3 = out(ymm_reg) p3,
            // Not `pure`: ordered with `row_done`, as `pair_dots`.
            options(nostack, preserves_flags, readonly),
        );
    }
    [p0, p1, p2, p3]
}

/// Orders `kernel32`'s rows: an empty `asm!` with side effects that "modifies" the row's
/// accumulator after its FMA. With `pair_dots` also ordered, row r + 1's products start only
/// once row r is folded; left free, LLVM formed all three rows' products first and spilled
/// (da, bias, an accumulator and half-folded sums to the stack: ~10 extra loads and stores
/// per block pair, one in an accumulator's FMA chain).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn row_done(acc: &mut __m256) {
    // SAFETY: an empty asm block that only "modifies" the register holding `acc`.
    unsafe {
        std::arch::asm!(
            "/* {0} */",
            inout(ymm_reg) * acc,
            options(nomem, nostack, preserves_flags)
        )
    };
}

/// Four vectors of i16 sums, each 128-bit half one block's, folded to i32: lanes 0-3 hold the
/// low halves' totals of `p[0..4]`, lanes 4-7 the high halves'. Inputs 0/1 and 2/3 interleaved
/// by dwords, each i16 the sum of two (lanes i and i + 4 of a half: callers keep every lane
/// below 16384 in magnitude), then `vpmaddwd` by `ones` to i32 `[p0, p1, p0, p1]` per half, then
/// one 32-bit add of the qword halves. Shared by `kernel32` and the Q5_0R8 decode tile.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn fold_halves_i16(p: [__m256i; 4], ones: __m256i) -> __m256i {
    let add_halves = |x: __m256i, y: __m256i| {
        _mm256_add_epi16(_mm256_unpacklo_epi32(x, y), _mm256_unpackhi_epi32(x, y))
    };
    let m01 = _mm256_madd_epi16(add_halves(p[0], p[1]), ones);
    let m23 = _mm256_madd_epi16(add_halves(p[2], p[3]), ones);
    _mm256_add_epi32(
        _mm256_unpacklo_epi64(m01, m23),
        _mm256_unpackhi_epi64(m01, m23),
    )
}

/// Per block pair and weight row: two `vpmaddubsw` per activation row (one per pair vector),
/// added; the four columns folded by one round of 16-bit horizontal adds, `vpmaddwd` to i32
/// and one 32-bit horizontal add, so lanes 0-3 hold columns 0-3 of the pair's first block and
/// lanes 4-7 of its second; minus the activations' bias, then one scaled FMA. The 16-bit sums
/// cannot overflow: quants <= 31 and |activations| <= 127 give at most 4 * 2 * 31 * 127 =
/// 31496 per lane before `vpmaddwd`.
///
/// `V`: the products by [`pair_dots_v`] (i32 lanes, 4 per block and column) and folded by
/// [`fold4`]: the same block sums, so bitwise the same results.
///
/// SAFETY (caller): avx2+fma available, and AVX-512 VNNI (VL) if `V`; operand lengths as
/// checked by [`tile32`].
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel32<const V: bool>(t: &QTileArgs) -> [[f32; TILE_C]; TILE_R] {
    let q = [t.q[0].as_ptr(), t.q[1].as_ptr(), t.q[2].as_ptr()];
    let a = [
        t.a[0].as_ptr(),
        t.a[1].as_ptr(),
        t.a[2].as_ptr(),
        t.a[3].as_ptr(),
    ];
    let ones = _mm256_set1_epi16(1);
    let mut facc = [_mm256_setzero_ps(); TILE_R];
    // SAFETY: every offset stays below the lengths `tile32` checked (j < nsb / 2).
    unsafe {
        for j in 0..t.nsb / 2 {
            let off = 64 * j;
            let da = _mm256_loadu_ps(t.da.as_ptr().add(j * t.da_stride));
            let bias = _mm256_loadu_si256(t.bias.as_ptr().add(j * t.da_stride) as *const __m256i);
            for r in 0..TILE_R {
                let sum = if V {
                    fold4(pair_dots_v(q[r].add(off), a, off))
                } else {
                    fold_halves_i16(pair_dots(q[r].add(off), a, off), ones)
                };
                let s = _mm256_sub_epi32(sum, bias);
                // dw[2j] in lanes 0-3 and dw[2j + 1] in 4-7, as stored (`dw_per_unit`).
                let dw = _mm256_loadu_ps(t.dw[r].as_ptr().add(8 * j));
                facc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, da), facc[r]);
                row_done(&mut facc[r]);
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

/// AVX2 twin of `qgemm::quant_k_scalar` (bitwise: the same largest-magnitude value, first on
/// ties, sets the scale's sign as in ggml's `quantize_row_q8_K`; the same products; `vcvtps2dq`
/// rounds half to even like `nearest_int`).
pub(crate) fn quant_k(x: &[f32], q: &mut [i8], sums: &mut [i16; 16]) -> f32 {
    assert!(x.len() >= QK_K && q.len() >= QK_K, "quant_k operands");
    // SAFETY: only handed out on AVX2 (see `tile`); 256 values in and out checked above.
    unsafe { quant_k_kernel(x.as_ptr(), q.as_mut_ptr(), sums) }
}

/// SAFETY (caller): avx2 available; 256 readable f32 at `x`, 256 writable bytes at `q`.
#[target_feature(enable = "avx2,fma")]
unsafe fn quant_k_kernel(x: *const f32, q: *mut i8, sums: &mut [i16; 16]) -> f32 {
    // SAFETY: per the caller's contract (32 vectors of 8 values, 8 stores of 32 bytes).
    unsafe {
        let sign = _mm256_set1_ps(-0.0);
        let mut m = _mm256_setzero_ps();
        for i in 0..QK_K / 8 {
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x.add(8 * i))));
        }
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)));
        if amax == 0.0 {
            std::ptr::write_bytes(q, 0, QK_K);
            *sums = [0; 16];
            return 0.0;
        }
        let av = _mm256_set1_ps(amax);
        let mut max = amax;
        for i in 0..QK_K / 8 {
            let v = _mm256_loadu_ps(x.add(8 * i));
            let hit =
                _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(_mm256_andnot_ps(sign, v), av));
            if hit != 0 {
                max = *x.add(8 * i + hit.trailing_zeros() as usize);
                break;
            }
        }
        let iscale = -127.0 / max;
        let id = _mm256_set1_ps(iscale);
        let top = _mm256_set1_epi32(127);
        let flip = _mm256_set1_epi8(-128);
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for g in 0..QK_K / 32 {
            let i = [0, 8, 16, 24].map(|o| {
                let v = _mm256_mul_ps(_mm256_loadu_ps(x.add(32 * g + o)), id);
                _mm256_min_epi32(_mm256_cvtps_epi32(v), top)
            });
            // Packs interleave 128-bit lanes; the dword permute restores value order.
            let w01 = _mm256_packs_epi32(i[0], i[1]);
            let w23 = _mm256_packs_epi32(i[2], i[3]);
            let b = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(w01, w23), order);
            _mm256_storeu_si256(q.add(32 * g) as *mut __m256i, b);
            // Sums of 8 bytes offset by +128 each (`vpsadbw`), two per 16-value group.
            let sad = _mm256_sad_epu8(_mm256_xor_si256(b, flip), _mm256_setzero_si256());
            let mut s = [0i64; 4];
            _mm256_storeu_si256(s.as_mut_ptr() as *mut __m256i, sad);
            sums[2 * g] = (s[0] + s[1] - 2048) as i16;
            sums[2 * g + 1] = (s[2] + s[3] - 2048) as i16;
        }
        1.0 / iscale
    }
}
