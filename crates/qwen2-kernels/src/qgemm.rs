//! Prompt-row integer GEMM for the k-quants (Q4_K, Q6_K): the int8 counterpart of the f32
//! panel GEMM in `gemm`, which it replaces for these formats on AVX2.
//!
//! Why integer: a k-quant weight is `d * scale_j * q - offset_j` with small unsigned `q` and
//! integer sub-block scales, so with activations quantized to 8 bits (Q8_K, one f32 scale per
//! 256 values, as the decode path and llama.cpp do) a whole super-block's dot product is one
//! exact i32 sum `sum_j scale_j * (q . a)_j`: `vpmaddubsw` + `vpmaddwd` (the latter applying
//! the sub-block scales) do 32 multiply-adds in 2 instructions, twice the f32 FMA rate, and
//! the weights stay 1 byte per value in the panel instead of 4.
//!
//! Decomposition, per weight row `r`, activation row `c` and super-block `s`:
//! `W[r] . x[c] ~= sum_s da[c][s] * (dw[r][s] * sumi[r][c][s] - dm[r][s] * sumo[r][c][s])`,
//! where `sumi` is the integer dot of the unsigned quants with the int8 activations weighted
//! by the group scales, and `sumo` the integer dot of each 16-value group's offset multiplier
//! `om` with the activations' 16-value sums (Q8_K's `bsums`): Q4_K's mins (`dm = dmin`) and
//! Q6_K's group scales for the `-32` bias of its quants (`dm = 32 * d`). Both sums are exact
//! in i32 and folded by the same tile, one `vpmaddwd` per pair and super-block for `sumo`.
//!
//! Panels: per task, a chunk of weight rows is unpacked once per k-block into `u8` quants in
//! lane-major order ([`kpos`]: i16 lane `L` of every 32-byte step holds values of the 16-value
//! group `L`), the [`SC_LANES`] group scales of a super-block (one per i16 lane, the vector
//! `vpmaddwd` multiplies) and the super-block scales; it is reused for every activation row.
//! The activations are permuted alike. Because a lane stays in one group across the 8 steps,
//! Q4_K's tile sums all 8 steps in i16 and applies the scales once per super-block (one
//! `vpmaddwd` per 256 values instead of 8); Q6_K's larger quants need one per step.
//!
//! Batch invariance (issue 5): each output's operations depend on its weight row, its
//! activation row and `cols` only (k-blocks fixed by `cols`, tails computed on duplicated
//! rows and dropped), never on the batch, the tile or the thread count.
//!
//! Scalar twin: [`tile_scalar`], compared with the AVX2 tile in the unit tests; the whole
//! product is checked against `matmul_reference` within the Q8_K activation error.

use crate::gemm::TILE_C;

/// Weight rows per integer tile: 3 x 4 pairs (12 accumulators of the 16 AVX2 registers, held
/// there by the k-quant tile's `asm!` step; 3 x 4 measured ~1.3x faster than 2 x 4).
pub(crate) const QTILE_R: usize = 3;
/// Group-scale lanes per super-block in a k-quant panel: lane `L` scales i16 lane `L` of
/// every step, i.e. the values `16 L..16 L + 16` (see [`kpos`]).
pub(crate) const SC_LANES: usize = 16;
use crate::isa::Isa;
use crate::matmul::{OutPtr, QMatRef};
#[cfg(test)]
use crate::scalar;
use crate::types::QK_K;
use crate::GgmlType;
use rayon::prelude::*;
use std::cell::RefCell;

/// Whether `ty` has an integer prompt GEMM (and the CPU path is not turned off with
/// `QWEN2_NO_QGEMM=1`, for A/B benchmarks).
pub(crate) fn supports(isa: Isa, ty: GgmlType) -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let off = *OFF.get_or_init(|| std::env::var_os("QWEN2_NO_QGEMM").is_some_and(|v| v == "1"));
    format(ty).is_some() && kernels(isa).is_some() && !off
}

/// Where value `v` (natural order) of a super-block lives in a k-quant panel or activation
/// row: the value pair `(v / 2) % 8` of 16-value group `v / 16` goes to i16 lane `v / 16` of
/// 32-byte step `(v % 16) / 2`. Both Q4_K's 32-value and Q6_K's 16-value scale groups then
/// keep a lane for the whole super-block.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn kpos(v: usize) -> usize {
    32 * ((v % 16) / 2) + 2 * (v / 16) + v % 2
}

/// Scalar twin of the SIMD [`kpos`] permutation of one super-block (256 bytes).
#[cfg(test)]
pub(crate) fn perm_k_scalar(src: &[u8], dst: &mut [u8]) {
    for v in 0..QK_K {
        dst[kpos(v)] = src[v];
    }
}

/// Where value `i` of block `b` lives in a 32-value-block panel or activation row: blocks in
/// pairs, each pair as two 32-byte vectors `[b: 0..16 | b+1: 0..16]`, `[b: 16..32 | b+1: 16..32]`,
/// so one tile pass folds two blocks into one vector whose 128-bit halves carry one block each
/// (half the horizontal adds and float work per block; see `x86::avx2_qgemm::kernel32`).
pub(crate) fn pos32(b: usize, i: usize) -> usize {
    64 * (b / 2) + (i / 16) * 32 + 16 * (b % 2) + i % 16
}

/// How a format maps onto the integer tiles.
#[derive(Clone, Copy)]
struct Format {
    /// Values per scale unit: a 256-value super-block (k-quants) or a 32-value block.
    unit: usize,
    /// Whether the unit has 16-value group scales (the k-quants' tile) or none (`tile32`).
    kquant: bool,
}

fn format(ty: GgmlType) -> Option<Format> {
    let (unit, kquant) = match ty {
        GgmlType::Q4K | GgmlType::Q4KR | GgmlType::Q6K => (QK_K, true),
        GgmlType::Q5_0 | GgmlType::Q5_0R8 => (32, false),
        _ => return None,
    };
    Some(Format { unit, kquant })
}

/// `dw * da * sumi` tile: `QTILE_R` panel rows against `TILE_C` activation rows over `nsb`
/// scale units (k-quants: super-blocks, with `nsb * SC_LANES` i16 group scales per row; 32-value
/// blocks: no group scales). Arguments: quants of each row (`nsb * unit` bytes), group
/// scales, unit scales (`nsb * dw_per_unit(unit)`), activations (`nsb * unit` i8 each), and
/// the activation scales transposed: `da[s * da_stride + c]` for the tile's 4 columns.
pub(crate) type QTileFn = fn(&QTileArgs) -> [[f32; TILE_C]; QTILE_R];

/// Unit scales per unit in a panel: one per k-quant super-block; four per 32-value block, the
/// block's scale repeated, so a block pair's `[d0 x 4, d1 x 4]` (the lanes of its column sums,
/// see `kernel32`) is one load, a memory operand of the scale multiply (it was a 64-bit load
/// and two shuffles per row and pair).
pub(crate) const fn dw_per_unit(unit: usize) -> usize {
    if unit == 32 {
        4
    } else {
        1
    }
}

/// Spreads the first `n` block scales of `d` to [`dw_per_unit`]`(32)` copies each, in place
/// (`d.len() >= 4 * n`).
pub(crate) fn spread_block_scales(d: &mut [f32], n: usize) {
    for b in (0..n).rev() {
        let v = d[b];
        d[4 * b..4 * b + 4].fill(v);
    }
}

/// Operands of one [`QTileFn`] call (slices bound the unsafe SIMD reads).
// (Read by the x86_64 tiles only.)
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct QTileArgs<'a> {
    pub nsb: usize,
    pub q: [&'a [u8]; QTILE_R],
    pub sc: [&'a [i16]; QTILE_R],
    pub dw: [&'a [f32]; QTILE_R],
    /// k-quants only: per super-block 16 offset multipliers and the offset scale of each row,
    /// and 16 activation sums of each column (see the module comment).
    pub om: [&'a [i16]; QTILE_R],
    pub dm: [&'a [f32]; QTILE_R],
    pub bs: [&'a [i16]; TILE_C],
    pub a: [&'a [i8]; TILE_C],
    pub da: &'a [f32],
    pub da_stride: usize,
    /// 32-value blocks only: `16 * (sum of the block's int8 activations)`, transposed like
    /// `da` (`bias[s * da_stride + c]`), subtracted from each block's integer dot (the
    /// `q - 16` of Q5_0 without a separate offset product).
    pub bias: &'a [i32],
}

/// All weight rows of a panel k-block against one group of `TILE_C` activation rows: the tile
/// over every `QTILE_R` rows (the last group repeats the panel's last row; those results are
/// dropped), added into `res[c * rows + r]` for the `nc` valid columns. One call per column
/// group and k-block, so operand checks and result stores cost per strip, not per tile (with
/// 0.5B-sized rows a tile is only ~500 cycles).
// (Read by the x86_64 tiles only.)
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct QStrip<'a> {
    /// Scale units in the k-block, and values per unit (`QK_K` or 32).
    pub nsb: usize,
    pub unit: usize,
    /// Weight rows in the panel, and valid columns (1..=`TILE_C`).
    pub rows: usize,
    pub nc: usize,
    /// Row `r`'s quants at `q[r * q_stride..]`, group scales (k-quants) at
    /// `sc[r * sc_stride..]`, unit scales at `dw[r * dw_stride..]` ([`dw_per_unit`] each).
    pub q: &'a [u8],
    pub q_stride: usize,
    pub sc: &'a [i16],
    pub sc_stride: usize,
    pub dw: &'a [f32],
    pub dw_stride: usize,
    /// k-quants: row `r`'s offset multipliers at `om[r * dw_stride * 16..]` and offset
    /// scales at `dm[r * dw_stride..]`; each column's activation sums (16 per unit).
    pub om: &'a [i16],
    pub dm: &'a [f32],
    pub bs: [&'a [i16]; TILE_C],
    /// As in [`QTileArgs`].
    pub a: [&'a [i8]; TILE_C],
    pub da: &'a [f32],
    pub da_stride: usize,
    pub bias: &'a [i32],
}

impl<'a> QStrip<'a> {
    /// The tile operands for rows `rt..rt + QTILE_R` (clamped to the last row).
    #[cfg(test)]
    pub(crate) fn tile_args(&self, rt: usize) -> QTileArgs<'a> {
        let ri: [usize; QTILE_R] = std::array::from_fn(|i| (rt + i).min(self.rows - 1));
        let kq = self.sc_stride != 0;
        let scn = if kq { self.nsb * SC_LANES } else { 0 };
        let ds = self.dw_stride;
        let om = |r: usize| {
            if kq {
                &self.om[16 * r * ds..16 * (r * ds + self.nsb)]
            } else {
                &[]
            }
        };
        let dm = |r: usize| {
            if kq {
                &self.dm[r * ds..r * ds + self.nsb]
            } else {
                &[]
            }
        };
        QTileArgs {
            nsb: self.nsb,
            q: ri.map(|r| &self.q[r * self.q_stride..r * self.q_stride + self.nsb * self.unit]),
            sc: ri.map(|r| &self.sc[r * self.sc_stride..r * self.sc_stride + scn]),
            dw: ri.map(|r| &self.dw[r * ds..r * ds + self.nsb * dw_per_unit(self.unit)]),
            om: ri.map(om),
            dm: ri.map(dm),
            bs: self.bs,
            a: self.a,
            da: self.da,
            da_stride: self.da_stride,
            bias: self.bias,
        }
    }
}

/// Runs a [`QStrip`] (see there).
pub(crate) type QStripFn = fn(&QStrip, &mut [f32]);

/// A strip through any tile function, one checked tile at a time (the scalar twin of the
/// SIMD strips, which check once and loop inside).
#[cfg(test)]
pub(crate) fn strip_with(tile: QTileFn, s: &QStrip, res: &mut [f32]) {
    let mut rt = 0;
    while rt < s.rows {
        let t = tile(&s.tile_args(rt));
        for (i, tr) in t.iter().enumerate().take((s.rows - rt).min(QTILE_R)) {
            for (c, &v) in tr.iter().enumerate().take(s.nc) {
                res[c * s.rows + rt + i] += v;
            }
        }
        rt += QTILE_R;
    }
}

/// Permutes one super-block's 256 bytes from natural order to panel order ([`kpos`]).
type PermKFn = fn(&[u8], &mut [u8]);
/// Unpacks one super-block (see [`unpack_block_scalar`]).
type UnpackFn = fn(GgmlType, &[u8], &mut [u8], &mut [i16], &mut [i16]) -> (f32, f32);
/// Unpacks a Q5_0 / Q5_0R8 row piece of whole blocks (see [`unpack_q5_0_scalar`]).
type Unpack32Fn = fn(GgmlType, &[u8], &mut [u8], &mut [f32]);

#[derive(Clone, Copy)]
struct Kernels {
    #[cfg_attr(not(test), allow(dead_code))]
    tile: QTileFn,
    strip: QStripFn,
    /// Q4_K's tile and strip (i16 sums over the super-block; quants must be below 16).
    #[cfg_attr(not(test), allow(dead_code))]
    tile_q4k: QTileFn,
    strip_q4k: QStripFn,
    perm_k: PermKFn,
    unpack: UnpackFn,
    #[cfg_attr(not(test), allow(dead_code))]
    tile32: QTileFn,
    strip32: QStripFn,
    unpack32: Unpack32Fn,
    quant32: Quant32Fn,
    quant_k: QuantKFn,
}

fn kernels(isa: Isa) -> Option<Kernels> {
    #[cfg(target_arch = "x86_64")]
    {
        if isa >= Isa::Avx2 {
            use crate::x86::avx2_qgemm;
            return Some(Kernels {
                tile: avx2_qgemm::tile,
                strip: avx2_qgemm::strip,
                tile_q4k: avx2_qgemm::tile_q4k,
                strip_q4k: avx2_qgemm::strip_q4k,
                perm_k: avx2_qgemm::perm_k,
                unpack: avx2_qgemm::unpack_block,
                tile32: avx2_qgemm::tile32,
                strip32: avx2_qgemm::strip32,
                unpack32: avx2_qgemm::unpack_q5_0,
                quant32: avx2_qgemm::quant32,
                quant_k: avx2_qgemm::quant_k,
            });
        }
    }
    let _ = isa;
    None
}

/// Reference tile: the same integer sums, f32 accumulation in plain order.
#[cfg(test)]
pub(crate) fn tile_scalar(t: &QTileArgs) -> [[f32; TILE_C]; QTILE_R] {
    let mut out = [[0.0f32; TILE_C]; QTILE_R];
    for (r, o) in out.iter_mut().enumerate() {
        for (c, v) in o.iter_mut().enumerate() {
            for s in 0..t.nsb {
                let mut sumi = 0i32;
                for k in 0..QK_K {
                    let i = s * QK_K + k;
                    let scale = t.sc[r][s * SC_LANES + (k % 32) / 2] as i32;
                    sumi += scale * t.q[r][i] as i32 * t.a[c][i] as i32;
                }
                let sumo: i32 = (s * 16..s * 16 + 16)
                    .map(|g| t.om[r][g] as i32 * t.bs[c][g] as i32)
                    .sum();
                let da = t.da[s * t.da_stride + c];
                *v += sumi as f32 * (t.dw[r][s] * da);
                *v -= sumo as f32 * (t.dm[r][s] * da);
            }
        }
    }
    out
}

/// The sum of the magnitudes of the terms [`tile_scalar`] adds (per super-block the scaled
/// integer sum and the scaled offsets): what the f32 rounding error of any summation order is
/// proportional to. The terms can cancel (random signed scales and offsets), so a tolerance
/// relative to the result alone is not one the SIMD order can be held to.
#[cfg(test)]
pub(crate) fn tile_scalar_mag(t: &QTileArgs) -> [[f32; TILE_C]; QTILE_R] {
    let mut out = [[0.0f32; TILE_C]; QTILE_R];
    for (r, o) in out.iter_mut().enumerate() {
        for (c, v) in o.iter_mut().enumerate() {
            let mut m = 0f64;
            for s in 0..t.nsb {
                let mut sumi = 0i64;
                for k in 0..QK_K {
                    let i = s * QK_K + k;
                    let scale = t.sc[r][s * SC_LANES + (k % 32) / 2] as i64;
                    sumi += scale * t.q[r][i] as i64 * t.a[c][i] as i64;
                }
                let sumo: i64 = (s * 16..s * 16 + 16)
                    .map(|g| t.om[r][g] as i64 * t.bs[c][g] as i64)
                    .sum();
                let da = t.da[s * t.da_stride + c] as f64;
                m += (sumi as f64 * t.dw[r][s] as f64 * da).abs();
                m += (sumo as f64 * t.dm[r][s] as f64 * da).abs();
            }
            *v = m as f32;
        }
    }
    out
}

/// [`tile_scalar_mag`] for [`tile32_scalar`]'s terms.
#[cfg(test)]
pub(crate) fn tile32_scalar_mag(t: &QTileArgs) -> [[f32; TILE_C]; QTILE_R] {
    let mut out = [[0.0f32; TILE_C]; QTILE_R];
    for (r, o) in out.iter_mut().enumerate() {
        for (c, v) in o.iter_mut().enumerate() {
            let mut m = 0f64;
            for b in 0..t.nsb {
                let sumi: i64 = (0..32)
                    .map(|i| t.q[r][pos32(b, i)] as i64 * t.a[c][pos32(b, i)] as i64)
                    .sum();
                let at = (b / 2) * t.da_stride + 4 * (b % 2) + c;
                m += ((sumi - t.bias[at] as i64) as f64 * t.dw[r][4 * b] as f64 * t.da[at] as f64)
                    .abs();
            }
            *v = m as f32;
        }
    }
    out
}

/// Reference 32-value-block tile: integer block dots, f32 accumulation in plain order.
#[cfg(test)]
pub(crate) fn tile32_scalar(t: &QTileArgs) -> [[f32; TILE_C]; QTILE_R] {
    let mut out = [[0.0f32; TILE_C]; QTILE_R];
    for (r, o) in out.iter_mut().enumerate() {
        for (c, v) in o.iter_mut().enumerate() {
            for b in 0..t.nsb {
                let sumi: i32 = (0..32)
                    .map(|i| t.q[r][pos32(b, i)] as i32 * t.a[c][pos32(b, i)] as i32)
                    .sum::<i32>();
                let at = (b / 2) * t.da_stride + 4 * (b % 2) + c;
                *v += (sumi - t.bias[at]) as f32 * (t.dw[r][4 * b] * t.da[at]);
            }
        }
    }
    out
}

/// Scalar twin of the Q5_0 / Q5_0R8 piece unpacker: the stored unsigned 5-bit quants (0..=31,
/// the value is `d * (q - 16)`) in pair order ([`pos32`]), and each block's scale.
#[cfg(test)]
pub(crate) fn unpack_q5_0_scalar(ty: GgmlType, src: &[u8], q: &mut [u8], d: &mut [f32]) {
    let nb = src.len() / 22;
    for b in 0..nb {
        let blk = if ty == GgmlType::Q5_0R8 {
            crate::repack::q5_0_block(src, nb, b)
        } else {
            src[22 * b..22 * (b + 1)].try_into().expect("22-byte block")
        };
        d[b] = scalar::f16_at(&blk, 0);
        let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
        for j in 0..16 {
            let lo = blk[6 + j] & 0xF;
            let hi = blk[6 + j] >> 4;
            q[pos32(b, j)] = lo | ((((qh >> j) & 1) as u8) << 4);
            q[pos32(b, j + 16)] = hi | ((((qh >> (j + 16)) & 1) as u8) << 4);
        }
    }
}

/// One 32-value activation block to int8 with scale `amax / 127`; returns the scale.
type Quant32Fn = fn(&[f32], &mut [i8]) -> f32;

/// Scalar twin of the SIMD 32-value quantizer (ggml's round-half-even `nearest_int`).
#[cfg(test)]
pub(crate) fn quant32_scalar(x: &[f32], q: &mut [i8]) -> f32 {
    let amax = x[..32].iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    for (o, &v) in q[..32].iter_mut().zip(x) {
        // |v * id| <= 127, so the cast never saturates.
        *o = scalar::nearest_int(v * id) as i8;
    }
    amax / 127.0
}

/// One 256-value activation super-block to Q8_K (ggml's rounding, as the decode path): the
/// int8 values, the sums of each 16 of them, and the scale `d` (0 for an all-zero block).
type QuantKFn = fn(&[f32], &mut [i8], &mut [i16; 16]) -> f32;

/// The Q8_K quantizer through `scalar::quantize` (the decode path's), split like [`QuantKFn`]:
/// the scalar twin the SIMD quantizer must equal bitwise.
#[cfg(test)]
pub(crate) fn quant_k_scalar(x: &[f32], q: &mut [i8], sums: &mut [i16; 16]) -> f32 {
    let mut blk = [0u8; 292];
    scalar::quantize(GgmlType::Q8K, &x[..QK_K], &mut blk);
    for (o, &b) in q[..QK_K].iter_mut().zip(&blk[4..260]) {
        *o = b as i8;
    }
    for (g, v) in sums.iter_mut().enumerate() {
        *v = i16::from_le_bytes([blk[260 + 2 * g], blk[261 + 2 * g]]);
    }
    f32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]])
}

/// `x` viewed as int8 (tests).
#[cfg(all(test, target_arch = "x86_64"))]
fn bytes_of(x: &[u8]) -> &[i8] {
    // SAFETY: as for `bytes`.
    unsafe { std::slice::from_raw_parts(x.as_ptr() as *const i8, x.len()) }
}

fn bytes(x: &[i8]) -> &[u8] {
    // SAFETY: i8 and u8 have the same size and alignment, and every bit pattern is valid.
    unsafe { std::slice::from_raw_parts(x.as_ptr() as *const u8, x.len()) }
}

fn bytes_mut(x: &mut [i8]) -> &mut [u8] {
    // SAFETY: as for `bytes`; the borrow is handed over for its lifetime.
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr() as *mut u8, x.len()) }
}

/// Activation rows quantized to 8 bits per scale unit, split for the tile kernels.
struct Acts {
    /// `[batch][cols]` int8 values.
    q: Vec<i8>,
    /// Scales, columns padded to `bp` (a multiple of `TILE_C`) with zeros. k-quants:
    /// `[units][bp]`; 32-value blocks: `[pairs][bp / 4][2][4]`, a tile's 4 columns of both
    /// blocks of a pair contiguous (pair stride `2 * bp`).
    d: Vec<f32>,
    bp: usize,
    /// k-quants: `[batch][units][16]`: the sums of each 16 int8 values (Q8_K's `bsums`).
    bsum: Vec<i16>,
    /// 32-value blocks, laid out as `d`: `16 * (sum of the block's int8 values)`.
    bias: Vec<i32>,
    /// Bytes per activation row in `q` (32-value blocks: padded to whole pairs).
    row: usize,
}

/// Quantizes each activation row on its own (batch invariance): per 256 values as Q8_K (the
/// decode path's format, ggml's rounding) for the k-quants; per 32 values with an f32 scale
/// `amax / 127` for 32-value blocks (Q8_0 without the f16 rounding of its scale).
/// `natural`: k-quant values stay in natural order (the VNNI Q6_K panels), not panel order.
fn quantize_acts(
    x: &[f32],
    batch: usize,
    cols: usize,
    f: Format,
    k: &Kernels,
    natural: bool,
) -> Acts {
    let (quant_k, quant32, perm_k) = (k.quant_k, k.quant32, k.perm_k);
    let nu = cols / f.unit;
    // 32-value blocks: rows padded to whole block pairs (the pad block is zeros).
    let nu2 = if f.kquant { nu } else { nu.next_multiple_of(2) };
    let row = nu2 * f.unit;
    // Per row: 16-value sums (k-quants) or block biases (32-value blocks); chunks of at least
    // one entry so that both zips have a row for each activation row.
    let (nbs, nbias) = if f.kquant { (nu * 16, 1) } else { (1, nu) };
    let bp = batch.div_ceil(TILE_C) * TILE_C;
    let mut q = vec![0i8; batch * row];
    let mut d_rows = vec![0.0f32; batch * nu];
    let mut bsum = vec![0i16; batch * nbs];
    let mut bias_rows = vec![0i32; batch * nbias];
    q.par_chunks_mut(row)
        .zip(d_rows.par_chunks_mut(nu))
        .zip(bsum.par_chunks_mut(nbs))
        .zip(bias_rows.par_chunks_mut(nbias))
        .zip(x.par_chunks(cols))
        .for_each(|((((q, d), sums), bs), x)| {
            if f.kquant {
                let mut t = [0i8; QK_K];
                for (s, sums) in sums.chunks_exact_mut(16).enumerate() {
                    let qs = &mut q[s * QK_K..(s + 1) * QK_K];
                    let sums: &mut [i16; 16] = sums.try_into().expect("16 sums per unit");
                    d[s] = quant_k(&x[s * QK_K..(s + 1) * QK_K], &mut t, sums);
                    if natural {
                        qs.copy_from_slice(&t);
                    } else {
                        perm_k(bytes(&t), bytes_mut(qs));
                    }
                }
            } else {
                let mut t = [0i8; 32];
                for (b, (db, xb)) in d.iter_mut().zip(x.chunks_exact(32)).enumerate() {
                    *db = quant32(xb, &mut t);
                    let p = pos32(b, 0);
                    q[p..p + 16].copy_from_slice(&t[..16]);
                    q[p + 32..p + 48].copy_from_slice(&t[16..]);
                    bs[b] = 16 * t.iter().map(|&v| v as i32).sum::<i32>();
                }
            }
        });
    let mut d = vec![0.0f32; nu2 * bp];
    let mut bias = vec![0i32; if f.kquant { 0 } else { nu2 * bp }];
    for c in 0..batch {
        for s in 0..nu {
            let at = if f.kquant {
                s * bp + c
            } else {
                (s / 2) * 2 * bp + (c / 4) * 8 + (s % 2) * 4 + c % 4
            };
            d[at] = d_rows[c * nu + s];
            if !f.kquant {
                bias[at] = bias_rows[c * nu + s];
            }
        }
    }
    if !f.kquant {
        bsum.clear();
    }
    Acts {
        q,
        d,
        bp,
        bsum,
        bias,
        row,
    }
}

/// Scalar twin of the SIMD unpackers: one super-block `b` into 256 unsigned quants in panel
/// order ([`kpos`]), its [`SC_LANES`] group scales (one per 16 values) and its 16 offset
/// multipliers (per 16 values); returns the super-block scale `d` and the offset scale `dm`.
#[cfg(test)]
pub(crate) fn unpack_block_scalar(
    ty: GgmlType,
    b: &[u8],
    q: &mut [u8],
    sc: &mut [i16],
    om: &mut [i16],
) -> (f32, f32) {
    match ty {
        GgmlType::Q4KR => {
            unpack_block_scalar(GgmlType::Q4K, &crate::repack_q4k::q4k_block(b), q, sc, om)
        }
        GgmlType::Q4K => {
            let (scales, mins) = scalar::k4_scales_mins(&b[4..16]);
            for j in 0..4 {
                for l in 0..32 {
                    let v = b[16 + 32 * j + l];
                    q[kpos(64 * j + l)] = v & 0xF;
                    q[kpos(64 * j + 32 + l)] = v >> 4;
                }
            }
            for (l, v) in sc[..SC_LANES].iter_mut().enumerate() {
                *v = scales[l / 2] as i16;
            }
            for (g, v) in om[..16].iter_mut().enumerate() {
                *v = mins[g / 2] as i16;
            }
            (scalar::f16_at(b, 0), scalar::f16_at(b, 2))
        }
        GgmlType::Q6K => {
            let mut v = [0i8; QK_K];
            scalar::q6k_unpack(b, &mut v);
            for (i, &x) in v.iter().enumerate() {
                q[kpos(i)] = (x + 32) as u8;
            }
            for (l, v) in sc[..SC_LANES].iter_mut().enumerate() {
                *v = b[192 + l] as i8 as i16;
            }
            for (g, v) in om[..16].iter_mut().enumerate() {
                *v = b[192 + g] as i8 as i16;
            }
            let d = scalar::f16_at(b, 208);
            (d, 32.0 * d)
        }
        _ => unreachable!("qgemm::supports admits Q4_K (Q4KR) and Q6_K only"),
    }
}

/// One task's unpacked panel (quants, group scales, unit scales, offset multipliers, offset
/// scales) and its results.
#[derive(Default)]
struct PanelBufs {
    q: Vec<u8>,
    sc: Vec<i16>,
    d: Vec<f32>,
    om: Vec<i16>,
    dm: Vec<f32>,
    res: Vec<f32>,
    /// One row's unpacked quants and scales before they are interleaved (VNNI 8-row panels),
    /// and the Q4_K 8-row panels' i32 scales and offset pairs.
    tq: Vec<u8>,
    td: Vec<f32>,
    tsc: Vec<i16>,
    tom: Vec<i16>,
    sc32: Vec<i32>,
    om32: Vec<i32>,
}

thread_local! {
    /// Reused across calls: fresh zeroed panels per task were ~2% of a short prompt's time
    /// (MMLU), all of it `memset`. The unpackers write every panel byte a strip reads (a
    /// 32-value row's odd last block gets its zero pad mate explicitly), so only the results
    /// need zeros.
    static PANEL_BUFS: RefCell<PanelBufs> = RefCell::new(PanelBufs::default());
}

/// `v` holding at least `n` elements (old contents kept: the caller overwrites what it reads).
fn at_least<T: Clone + Default>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    if v.len() < n {
        v.resize(n, T::default());
    }
    &mut v[..n]
}

/// `out[b * rows + r] = W[r] . x[b]` for a matrix of a [`format`] (k-quant rows are whole
/// super-blocks; Q5_0 rows whole blocks). Shapes were validated by the caller; `supports` holds.
pub(crate) fn matmul(isa: Isa, w: &QMatRef, x: &[f32], batch: usize, out: &mut [f32]) {
    let k = kernels(isa).expect("qgemm::supports was checked");
    let f = format(w.ty).expect("qgemm::supports was checked");
    let (rows, cols, ty) = (w.rows, w.cols, w.ty);
    let nu = cols / f.unit;
    // 32-value blocks and Q4_K on VNNI: panels of 8 interleaved rows (`x86::vnni_qgemm`);
    // Q6_K too, with its activations in natural order.
    #[cfg(target_arch = "x86_64")]
    let (x8, k8, k6) = {
        let v = crate::isa::vnni();
        (
            !f.kquant && v,
            matches!(ty, GgmlType::Q4K | GgmlType::Q4KR) && v,
            ty == GgmlType::Q6K && v,
        )
    };
    #[cfg(not(target_arch = "x86_64"))]
    let (x8, k8, k6) = (false, false, false);
    let acts = quantize_acts(x, batch, cols, f, &k, k6);
    // k-blocks bound the panel and a tile's activations; fixed by `cols` and the format alone.
    // k-quants: 4096 values (a 4864-value row in one block measured 1.1x faster than 1024-value
    // blocks: fewer strip passes and result updates outweigh L1 misses the L2 serves);
    // 32-value blocks: 1024 (Q5_0R8 pieces must start at multiples of 8 blocks).
    let kvals = if f.kquant { 4096 } else { 1024 };
    let kb = if cols <= 2 * kvals {
        nu
    } else {
        kvals / f.unit
    };
    // Panel units per row and k-block (32-value blocks: padded to whole pairs).
    let kbp = if f.kquant { kb } else { kb.next_multiple_of(2) };
    let scales = if f.kquant { SC_LANES } else { 0 };
    // Offset multipliers and offset scales per unit (k-quants).
    let (oms, dms) = if f.kquant { (16, 1) } else { (0, 0) };
    // Panel bytes per row and k-block: quants + group scales + unit scales + offsets.
    let per_row = kbp * (f.unit + 2 * scales + 4 + 2 * oms + 4 * dms);
    let threads = rayon::current_num_threads().max(1);
    // Either 8-row panel for k-quants.
    let k8 = k8 || k6;
    let rows_per_tile = if x8 || k8 { 8 } else { QTILE_R };
    let by_cache = ((128 << 10) / per_row).max(rows_per_tile);
    let by_par = rows.div_ceil(threads * 4).max(rows_per_tile);
    let chunk = (by_cache.min(by_par) / rows_per_tile).max(1) * rows_per_tile;
    let n_chunks = rows.div_ceil(chunk);
    let optr = OutPtr(out.as_mut_ptr());
    let acts = &acts;
    let strip = match ty {
        GgmlType::Q4K | GgmlType::Q4KR => k.strip_q4k,
        _ if f.kquant => k.strip,
        _ => k.strip32,
    };
    let task = |ci: usize, bufs: &mut PanelBufs| {
        let r0 = ci * chunk;
        let r1 = (r0 + chunk).min(rows);
        let nr = r1 - r0;
        // Panel rows: the VNNI 8-row groups pad the chunk to whole groups.
        let nrp = if x8 || k8 { nr.next_multiple_of(8) } else { nr };
        let pq = at_least(&mut bufs.q, nrp * kbp * f.unit);
        let psc = at_least(&mut bufs.sc, nr * kb * scales);
        let dpu = dw_per_unit(f.unit);
        let pd = at_least(&mut bufs.d, nrp * kbp * dpu);
        let (tq, td) = if x8 {
            (
                at_least(&mut bufs.tq, kbp * f.unit),
                at_least(&mut bufs.td, kbp),
            )
        } else if k8 {
            (at_least(&mut bufs.tq, QK_K), &mut [][..])
        } else {
            (&mut [][..], &mut [][..])
        };
        let (tsc, tom) = if k8 {
            (at_least(&mut bufs.tsc, 16), at_least(&mut bufs.tom, 16))
        } else {
            (&mut [][..], &mut [][..])
        };
        // Q4_K 8-row panels: 64 i32 scales and offset pairs per super-block and group (`pd`
        // and `pdm` hold 8 per super-block and group).
        let (psc32, pom32) = if k8 {
            (
                at_least(&mut bufs.sc32, nrp * kbp * if k6 { 16 } else { 8 }),
                at_least(&mut bufs.om32, nrp * kbp * 8),
            )
        } else {
            (&mut [][..], &mut [][..])
        };

        let pom = at_least(&mut bufs.om, nr * kbp * oms);
        let pdm = at_least(&mut bufs.dm, nrp * kbp * dms);
        // The chunk's results, `[batch][nr]`, summed over k-blocks here (contiguous, cache
        // resident) and stored to `out` once.
        let res = at_least(&mut bufs.res, batch * nr);
        res.fill(0.0);
        let ts = ty.type_size();
        // (The 8-row panels are x86_64 only.)
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (&tq, &td, &tsc, &tom, &psc32, &pom32);
        let mut s0 = 0;
        while s0 < nu {
            let s1 = (s0 + kb).min(nu);
            let ns = s1 - s0;
            // 32-value blocks: an odd last block pairs with a zero block (q = 0, d = 0).
            let nsp = if f.kquant { ns } else { ns.next_multiple_of(2) };
            #[cfg(target_arch = "x86_64")]
            if x8 {
                use crate::x86::vnni_qgemm::{scatter_row, zero_row, BLOCK_BYTES, GROUP};
                for g in 0..nrp / GROUP {
                    let gq = &mut pq[g * kbp * BLOCK_BYTES..(g + 1) * kbp * BLOCK_BYTES];
                    let gd = &mut pd[g * kbp * GROUP..(g + 1) * kbp * GROUP];
                    for rr in 0..GROUP {
                        let r = g * GROUP + rr;
                        if r >= nr {
                            zero_row(nsp, rr, gq, gd);
                            continue;
                        }
                        let row = w.row(r0 + r);
                        let (tq, td) = (&mut tq[..nsp * 32], &mut td[..nsp]);
                        // An odd last block's pad mate is zeros (see below).
                        if nsp > ns {
                            tq[(nsp - 2) * 32..].fill(0);
                        }
                        td[ns..].fill(0.0);
                        (k.unpack32)(ty, &row[s0 * ts..s1 * ts], tq, &mut td[..ns]);
                        scatter_row(nsp, tq, td, rr, gq, gd);
                    }
                }
            }
            #[cfg(target_arch = "x86_64")]
            if k8 {
                use crate::x86::vnni_qgemm::{
                    kscales, scatter_row_k, zero_row_k, GroupK, GROUP, KBLOCK_BYTES, KSCALES,
                };
                let scs = kscales(k6);
                for g in 0..nrp / GROUP {
                    let mut gk = GroupK {
                        q: &mut pq[g * kbp * KBLOCK_BYTES..(g + 1) * kbp * KBLOCK_BYTES],
                        sc: &mut psc32[g * kbp * scs..(g + 1) * kbp * scs],
                        om: &mut pom32[g * kbp * KSCALES..(g + 1) * kbp * KSCALES],
                        d: &mut pd[g * kbp * GROUP..(g + 1) * kbp * GROUP],
                        dm: &mut pdm[g * kbp * GROUP..(g + 1) * kbp * GROUP],
                    };
                    for rr in 0..GROUP {
                        let r = g * GROUP + rr;
                        for i in 0..ns {
                            if r >= nr {
                                zero_row_k(i, rr, k6, &mut gk);
                                continue;
                            }
                            let b = &w.row(r0 + r)[(s0 + i) * ts..];
                            if k6 {
                                let ds = crate::x86::avx2_qgemm::unpack_q6k_natural(
                                    b,
                                    &mut tq[..QK_K],
                                    &mut tsc[..16],
                                    &mut tom[..16],
                                );
                                scatter_row_k(true, i, tq, tsc, tom, ds, rr, &mut gk);
                            } else {
                                let ds = (k.unpack)(
                                    ty,
                                    &b[..ts],
                                    &mut tq[..QK_K],
                                    &mut tsc[..16],
                                    &mut tom[..16],
                                );
                                scatter_row_k(false, i, tq, tsc, tom, ds, rr, &mut gk);
                            }
                        }
                    }
                }
            }
            for r in 0..if x8 || k8 { 0 } else { nr } {
                let row = w.row(r0 + r);
                let (q, d) = (
                    &mut pq[r * kbp * f.unit..],
                    &mut pd[r * kbp * dpu..(r + 1) * kbp * dpu],
                );
                if f.kquant {
                    for s in s0..s1 {
                        let i = s - s0;
                        let u = r * kb + i;
                        (d[i], pdm[u]) = (k.unpack)(
                            ty,
                            &row[s * ts..(s + 1) * ts],
                            &mut q[i * QK_K..(i + 1) * QK_K],
                            &mut psc[u * scales..(u + 1) * scales],
                            &mut pom[u * 16..(u + 1) * 16],
                        );
                    }
                } else {
                    // Only an odd last block's pad mate needs zeros: the unpack writes every
                    // other byte (a whole-panel fill was ~3% of short prompts' time).
                    if nsp > ns {
                        q[(nsp - 2) * 32..nsp * 32].fill(0);
                    }
                    d[ns..nsp].fill(0.0);
                    (k.unpack32)(ty, &row[s0 * ts..s1 * ts], &mut q[..nsp * 32], &mut d[..ns]);
                    spread_block_scales(d, nsp);
                }
            }
            let mut c0 = 0;
            while c0 < batch {
                let nc = (batch - c0).min(TILE_C);
                // Columns past the batch repeat its last row; their results are dropped.
                let a: [&[i8]; TILE_C] = std::array::from_fn(|i| {
                    let c = c0 + i.min(nc - 1);
                    &acts.q[c * acts.row + s0 * f.unit..c * acts.row + (s0 + nsp) * f.unit]
                });
                let (at, da_stride) = if f.kquant {
                    (s0 * acts.bp + c0, acts.bp)
                } else {
                    (s0 / 2 * 2 * acts.bp + 2 * c0, 2 * acts.bp)
                };
                #[cfg(target_arch = "x86_64")]
                if x8 {
                    use crate::x86::vnni_qgemm::{Strip8, BLOCK_BYTES, GROUP};
                    let s8 = Strip8 {
                        nsb: nsp,
                        rows: nr,
                        nc,
                        q: pq,
                        q_stride: kbp * BLOCK_BYTES,
                        d: pd,
                        d_stride: kbp * GROUP,
                        a,
                        da: &acts.d[at..],
                        da_stride,
                        bias: &acts.bias[at..],
                    };
                    crate::x86::vnni_qgemm::strip(&s8, &mut res[c0 * nr..]);
                    c0 += nc;
                    continue;
                }
                #[cfg(target_arch = "x86_64")]
                if k8 {
                    use crate::x86::vnni_qgemm::{kscales, StripK8, GROUP, KBLOCK_BYTES, KSCALES};
                    let sk = StripK8 {
                        q6: k6,
                        nsb: ns,
                        rows: nr,
                        nc,
                        q: pq,
                        q_stride: kbp * KBLOCK_BYTES,
                        sc: psc32,
                        om: pom32,
                        sc_stride: kbp * kscales(k6),
                        om_stride: kbp * KSCALES,
                        d: pd,
                        dm: pdm,
                        d_stride: kbp * GROUP,
                        a,
                        bs: std::array::from_fn(|i| {
                            let c = (c0 + i.min(nc - 1)) * nu;
                            &acts.bsum[(c + s0) * 16..(c + s1) * 16]
                        }),
                        da: &acts.d[at..],
                        da_stride,
                    };
                    crate::x86::vnni_qgemm::strip_k(&sk, &mut res[c0 * nr..]);
                    c0 += nc;
                    continue;
                }
                let s = QStrip {
                    nsb: nsp,
                    unit: f.unit,
                    rows: nr,
                    nc,
                    q: pq,
                    q_stride: kbp * f.unit,
                    sc: psc,
                    sc_stride: kb * scales,
                    dw: pd,
                    dw_stride: kbp * dpu,
                    om: pom,
                    dm: pdm,
                    bs: std::array::from_fn(|i| {
                        if f.kquant {
                            let c = (c0 + i.min(nc - 1)) * nu;
                            &acts.bsum[(c + s0) * 16..(c + s1) * 16]
                        } else {
                            &[]
                        }
                    }),
                    a,
                    da: &acts.d[at..],
                    da_stride,
                    bias: &acts.bias[at.min(acts.bias.len())..],
                };
                strip(&s, &mut res[c0 * nr..]);
                c0 += nc;
            }
            s0 = s1;
        }
        let store = |res: &[f32]| {
            for (c, rc) in res.chunks_exact(nr).enumerate() {
                // SAFETY: c < batch and r0 + nr <= rows, so the span is inside `out` (len ==
                // batch * rows, checked by the caller); row chunks are disjoint across tasks,
                // and `out` is mutably borrowed for the whole parallel section.
                unsafe {
                    std::ptr::copy_nonoverlapping(rc.as_ptr(), optr.get().add(c * rows + r0), nr)
                };
            }
        };
        store(res);
    };
    (0..n_chunks).into_par_iter().for_each(|ci| {
        // A nested call on a worker that stole this task while inside one finds the buffers
        // borrowed: it takes fresh ones.
        PANEL_BUFS.with(|cell| match cell.try_borrow_mut() {
            Ok(mut bufs) => task(ci, &mut bufs),
            Err(_) => task(ci, &mut PanelBufs::default()),
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::available_isas;

    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed >> 33
    }

    #[test]
    fn simd_unpack_matches_scalar_twin() {
        let mut seed = 9;
        for isa in available_isas() {
            let Some(Kernels { unpack, .. }) = kernels(isa) else {
                continue;
            };
            for ty in [GgmlType::Q4K, GgmlType::Q6K] {
                for _ in 0..20 {
                    let b: Vec<u8> = (0..ty.type_size()).map(|_| lcg(&mut seed) as u8).collect();
                    let (mut q1, mut q2) = (vec![0u8; QK_K], vec![1u8; QK_K]);
                    let (mut s1, mut s2) = (vec![0i16; SC_LANES], vec![1i16; SC_LANES]);
                    let (mut o1, mut o2) = (vec![0i16; 16], vec![1i16; 16]);
                    let (d1, m1) = unpack_block_scalar(ty, &b, &mut q1, &mut s1, &mut o1);
                    let (d2, m2) = unpack(ty, &b, &mut q2, &mut s2, &mut o2);
                    assert_eq!((q1, s1, o1), (q2, s2, o2), "{ty} {isa:?}");
                    assert_eq!(d1.to_bits(), d2.to_bits(), "{ty} {isa:?}");
                    assert_eq!(m1.to_bits(), m2.to_bits(), "{ty} {isa:?}");
                }
            }
        }
    }

    #[test]
    fn kpos_is_a_permutation_keeping_groups_in_lanes() {
        let mut seen = [false; QK_K];
        for v in 0..QK_K {
            let p = kpos(v);
            assert!(!seen[p], "position {p} taken twice");
            seen[p] = true;
            // i16 lane (p % 32) / 2 of step p / 32 holds group v / 16, in pair order.
            assert_eq!(((p % 32) / 2, p % 2), (v / 16, v % 2), "value {v}");
        }
        let mut seed = 3;
        for isa in available_isas() {
            let Some(Kernels { perm_k, .. }) = kernels(isa) else {
                continue;
            };
            for _ in 0..10 {
                let src: Vec<u8> = (0..QK_K).map(|_| lcg(&mut seed) as u8).collect();
                let (mut d1, mut d2) = (vec![0u8; QK_K], vec![1u8; QK_K]);
                perm_k_scalar(&src, &mut d1);
                perm_k(&src, &mut d2);
                assert_eq!(d1, d2, "{isa:?}");
            }
        }
    }

    #[test]
    fn simd_q5_0_unpack_matches_scalar_twin() {
        let mut seed = 13;
        for isa in available_isas() {
            let Some(Kernels { unpack32, .. }) = kernels(isa) else {
                continue;
            };
            // Row lengths with full groups of 8, a group of 4 and plain tail blocks.
            for nb in [1usize, 3, 4, 7, 8, 13, 28, 32, 37] {
                let x: Vec<f32> = (0..nb * 32)
                    .map(|_| (lcg(&mut seed) % 2001) as f32 / 1000.0 - 1.0)
                    .collect();
                let mut plain = vec![0u8; nb * 22];
                scalar::quantize(GgmlType::Q5_0, &x, &mut plain);
                let mut r8 = vec![0u8; nb * 22];
                crate::repack_row(GgmlType::Q5_0, nb * 32, &plain, &mut r8).unwrap();
                for (ty, src) in [(GgmlType::Q5_0, &plain), (GgmlType::Q5_0R8, &r8)] {
                    let n2 = nb.next_multiple_of(2) * 32;
                    let (mut q1, mut q2) = (vec![0u8; n2], vec![0u8; n2]);
                    let (mut d1, mut d2) = (vec![0.0f32; nb], vec![9.0f32; nb]);
                    unpack_q5_0_scalar(ty, src, &mut q1, &mut d1);
                    unpack32(ty, src, &mut q2, &mut d2);
                    assert_eq!((&q1, &d1), (&q2, &d2), "{ty} {isa:?} nb={nb}");
                    // The unpacked values are the format's own: d * (q - 16).
                    let mut v = vec![0.0f32; nb * 32];
                    scalar::dequantize(ty, src, &mut v);
                    for (i, &e) in v.iter().enumerate() {
                        let qv = q1[pos32(i / 32, i % 32)] as f32;
                        assert_eq!(d1[i / 32] * (qv - 16.0), e, "{ty} value {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn simd_quant32_matches_scalar_twin() {
        let mut seed = 19;
        for isa in available_isas() {
            let Some(Kernels { quant32, .. }) = kernels(isa) else {
                continue;
            };
            for case in 0..200 {
                let scale = [1e-3f32, 1.0, 37.0, 0.0][case % 4];
                let x: Vec<f32> = (0..32)
                    .map(|_| ((lcg(&mut seed) % 20001) as f32 / 10000.0 - 1.0) * scale)
                    .collect();
                let (mut q1, mut q2) = ([0i8; 32], [1i8; 32]);
                let d1 = quant32_scalar(&x, &mut q1);
                let d2 = quant32(&x, &mut q2);
                assert_eq!(
                    (q1, d1.to_bits()),
                    (q2, d2.to_bits()),
                    "{isa:?} case {case}"
                );
            }
        }
    }

    #[test]
    fn simd_quant_k_matches_scalar_twin() {
        let mut seed = 41;
        for isa in available_isas() {
            let Some(Kernels { quant_k, .. }) = kernels(isa) else {
                continue;
            };
            for case in 0..200 {
                let scale = [1e-3f32, 1.0, 37.0, 0.0][case % 4];
                let mut x: Vec<f32> = (0..QK_K)
                    .map(|_| ((lcg(&mut seed) % 20001) as f32 / 10000.0 - 1.0) * scale)
                    .collect();
                // Ties for the largest magnitude with both signs: the first one sets the sign.
                if case % 5 == 1 {
                    let (i, j) = (
                        lcg(&mut seed) as usize % QK_K,
                        lcg(&mut seed) as usize % QK_K,
                    );
                    x[i] = 2.0 * scale;
                    x[j] = -2.0 * scale;
                }
                let (mut q1, mut q2) = ([0i8; QK_K], [1i8; QK_K]);
                let (mut s1, mut s2) = ([0i16; 16], [1i16; 16]);
                let d1 = quant_k_scalar(&x, &mut q1, &mut s1);
                let d2 = quant_k(&x, &mut q2, &mut s2);
                assert_eq!(
                    (q1, s1, d1.to_bits()),
                    (q2, s2, d2.to_bits()),
                    "{isa:?} case {case}"
                );
            }
        }
    }

    /// Random tile operands: `QTILE_R` weight rows of `nsb` units of `unit` quants below
    /// `qmax` (with `scales` i16 group scales per unit from `scale`), `TILE_C` activation rows
    /// (column 0 all +127 and column 1 all -127: the overflow extremes), scales and biases for
    /// a pair stride of `stride`.
    struct Operands {
        nsb: usize,
        q: Vec<Vec<u8>>,
        sc: Vec<Vec<i16>>,
        dw: Vec<Vec<f32>>,
        om: Vec<Vec<i16>>,
        dm: Vec<Vec<f32>>,
        bs: Vec<Vec<i16>>,
        a: Vec<Vec<i8>>,
        da: Vec<f32>,
        bias: Vec<i32>,
        stride: usize,
    }

    impl Operands {
        fn new(
            seed: &mut u64,
            (nsb, unit, qmax): (usize, usize, u64),
            scales: usize,
            mut scale: impl FnMut(&mut u64, usize) -> i16,
            stride: usize,
        ) -> Self {
            let n = nsb * unit;
            let q = (0..QTILE_R)
                .map(|_| (0..n).map(|_| (lcg(seed) % qmax) as u8).collect())
                .collect();
            let sc = (0..QTILE_R)
                .map(|_| (0..nsb * scales).map(|g| scale(seed, g)).collect())
                .collect();
            let dw = (0..QTILE_R)
                .map(|_| {
                    let mut d: Vec<f32> = (0..nsb * dw_per_unit(unit))
                        .map(|_| (lcg(seed) % 100) as f32 * 1e-4)
                        .collect();
                    if unit == 32 {
                        spread_block_scales(&mut d, nsb);
                    }
                    d
                })
                .collect();
            // k-quants: offset multipliers as signed as Q6_K's scales, offset scales, and
            // 16-value activation sums up to their extremes (16 * 127).
            let nom = if scales > 0 { nsb * 16 } else { 0 };
            let om = (0..QTILE_R)
                .map(|_| (0..nom).map(|_| (lcg(seed) % 256) as i16 - 128).collect())
                .collect();
            let dm = (0..QTILE_R)
                .map(|_| {
                    (0..nom / 16)
                        .map(|_| (lcg(seed) % 100) as f32 * 1e-4)
                        .collect()
                })
                .collect();
            let bs = (0..TILE_C)
                .map(|_| (0..nom).map(|_| (lcg(seed) % 4065) as i16 - 2032).collect())
                .collect();
            let a = (0..TILE_C)
                .map(|c| {
                    (0..n)
                        .map(|_| match c {
                            0 => 127,
                            1 => -127,
                            _ => ((lcg(seed) % 255) as i32 - 127) as i8,
                        })
                        .collect()
                })
                .collect();
            let m = nsb * stride;
            let da = (0..m).map(|_| (lcg(seed) % 100) as f32 * 1e-3).collect();
            let bias = (0..m).map(|_| (lcg(seed) % 8129) as i32 - 4064).collect();
            Operands {
                nsb,
                q,
                sc,
                dw,
                om,
                dm,
                bs,
                a,
                da,
                bias,
                stride,
            }
        }

        /// Every quant of the first two weight rows at `qmax` (columns 0 and 1 already hold
        /// activations of +127 and -127): the largest sums the tiles can meet.
        #[cfg(target_arch = "x86_64")]
        fn saturate(&mut self, qmax: u8) {
            for row in self.q.iter_mut().take(2) {
                row.fill(qmax);
            }
        }

        fn args(&self) -> QTileArgs<'_> {
            QTileArgs {
                nsb: self.nsb,
                q: std::array::from_fn(|r| &self.q[r][..]),
                sc: std::array::from_fn(|r| &self.sc[r][..]),
                dw: std::array::from_fn(|r| &self.dw[r][..]),
                om: std::array::from_fn(|r| &self.om[r][..]),
                dm: std::array::from_fn(|r| &self.dm[r][..]),
                bs: std::array::from_fn(|c| &self.bs[c][..]),
                a: std::array::from_fn(|c| &self.a[c][..]),
                da: &self.da,
                da_stride: self.stride,
                bias: &self.bias,
            }
        }
    }

    /// Within 1e-5 of the result plus 1e-6 (8 f32 epsilons) of the terms' magnitudes `mag`
    /// (see [`tile_scalar_mag`]): the SIMD tiles sum in another order than the twins.
    fn assert_close(
        got: [[f32; TILE_C]; QTILE_R],
        want: [[f32; TILE_C]; QTILE_R],
        mag: [[f32; TILE_C]; QTILE_R],
        what: &str,
    ) {
        for r in 0..QTILE_R {
            for c in 0..TILE_C {
                let (g, e, m) = (got[r][c], want[r][c], mag[r][c]);
                assert!(
                    (g - e).abs() <= 1e-5 * e.abs().max(1.0) + 1e-6 * m,
                    "{what} [{r}][{c}]: {g} vs {e} (terms' magnitude {m})"
                );
            }
        }
    }

    /// The SIMD strips (one check, unchecked tiles inside) against the scalar tile strip, with
    /// row counts that leave partial row groups, partial column groups, padded row strides
    /// and results accumulated onto existing values.
    #[test]
    fn simd_strips_match_scalar_twin() {
        let mut seed = 23;
        for isa in available_isas() {
            let Some(k) = kernels(isa) else {
                continue;
            };
            // (k-quant, Q4_K, units): Q6_K-like and Q4_K k-quant strips, 32-value blocks.
            for (kquant, q4k, nsb) in [
                (true, false, 1usize),
                (true, false, 3),
                (true, true, 1),
                (true, true, 3),
                (false, false, 2),
                (false, false, 6),
            ] {
                let (unit, lanes) = if kquant { (QK_K, SC_LANES) } else { (32, 0) };
                for (rows, nc) in [(1usize, 1usize), (4, 3), (7, 4), (9, 2)] {
                    let (qs, ss) = (nsb * unit + 32, nsb * lanes + 16);
                    let ds = (nsb + 1) * dw_per_unit(unit);
                    let qmax = match (kquant, q4k) {
                        (true, true) => 16,
                        (true, false) => 64,
                        _ => 32,
                    };
                    let q: Vec<u8> = (0..rows * qs)
                        .map(|_| (lcg(&mut seed) % qmax) as u8)
                        .collect();
                    let sc: Vec<i16> = (0..rows * ss)
                        .map(|l| ((l / 8 * 29 + 3) % 128) as i16 - 64)
                        .collect();
                    let mut dw: Vec<f32> = (0..rows * ds)
                        .map(|_| (lcg(&mut seed) % 100) as f32 * 1e-4)
                        .collect();
                    if !kquant {
                        for d in dw.chunks_mut(ds) {
                            spread_block_scales(d, nsb + 1);
                        }
                    }
                    let nom = if kquant { 16 } else { 0 };
                    let om: Vec<i16> = (0..rows * ds * nom)
                        .map(|_| (lcg(&mut seed) % 64) as i16)
                        .collect();
                    let dm: Vec<f32> = (0..rows * ds * nom / 16)
                        .map(|_| (lcg(&mut seed) % 100) as f32 * 1e-4)
                        .collect();
                    let bs: Vec<Vec<i16>> = (0..TILE_C)
                        .map(|_| {
                            (0..nsb * nom)
                                .map(|_| (lcg(&mut seed) % 4065) as i16 - 2032)
                                .collect()
                        })
                        .collect();
                    let a: Vec<Vec<i8>> = (0..TILE_C)
                        .map(|_| (0..nsb * unit).map(|_| lcg(&mut seed) as i8).collect())
                        .collect();
                    let m = nsb * 8 + 8;
                    let da: Vec<f32> = (0..m)
                        .map(|_| (lcg(&mut seed) % 100) as f32 * 1e-3)
                        .collect();
                    let bias: Vec<i32> = (0..m)
                        .map(|_| (lcg(&mut seed) % 8129) as i32 - 4064)
                        .collect();
                    let s = QStrip {
                        nsb,
                        unit,
                        rows,
                        nc,
                        q: &q,
                        q_stride: qs,
                        sc: &sc,
                        sc_stride: if kquant { ss } else { 0 },
                        dw: &dw,
                        dw_stride: ds,
                        om: &om,
                        dm: &dm,
                        bs: std::array::from_fn(|c| &bs[c][..]),
                        a: std::array::from_fn(|c| &a[c][..]),
                        da: &da,
                        da_stride: 8,
                        bias: &bias,
                    };
                    let init: Vec<f32> = (0..nc * rows).map(|i| i as f32 * 0.5 - 3.0).collect();
                    let (mut got, mut want) = (init.clone(), init.clone());
                    let mut mag = vec![0.0f32; init.len()];
                    if kquant {
                        (if q4k { k.strip_q4k } else { k.strip })(&s, &mut got);
                        strip_with(tile_scalar, &s, &mut want);
                        strip_with(tile_scalar_mag, &s, &mut mag);
                    } else {
                        (k.strip32)(&s, &mut got);
                        strip_with(tile32_scalar, &s, &mut want);
                        strip_with(tile32_scalar_mag, &s, &mut mag);
                    }
                    // Tolerance as the tile tests' (the SIMD tile sums each super-block's
                    // halves in f32 apart), on the strip's own part of each result.
                    for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - e).abs() <= 2e-5 * (e - init[i]).abs().max(1.0) + 1e-6 * mag[i],
                            "{isa:?} kquant={kquant} q4k={q4k} nsb={nsb} rows={rows} nc={nc} [{i}]: {g} vs {e} (terms' magnitude {})",
                            mag[i]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn simd_tile32_matches_scalar_twin() {
        let mut seed = 17;
        for isa in available_isas() {
            let Some(Kernels { tile32, .. }) = kernels(isa) else {
                continue;
            };
            for nsb in [2usize, 4, 10, 28] {
                // Pair stride 2 * bp with bp = 8 columns: this tile's 8 values then 8 others.
                let o = Operands::new(&mut seed, (nsb, 32, 32), 0, |_, _| 0, 16);
                let args = o.args();
                let what = format!("{isa:?} nsb={nsb}");
                let mag = tile32_scalar_mag(&args);
                assert_close(tile32(&args), tile32_scalar(&args), mag, &what);
            }
        }
    }

    /// The VNNI forms of the tiles against the AVX2 forms: bitwise, including quants and
    /// activations at the ends of their ranges (where an i16 sum could saturate).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vnni_tiles_equal_avx2_tiles_bitwise() {
        use crate::x86::avx2_qgemm::tile_forms;
        if !crate::isa::vnni_available() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        let bits = |t: [[f32; TILE_C]; QTILE_R]| t.map(|r| r.map(f32::to_bits));
        let mut seed = 29;
        for nsb in [1usize, 2, 7] {
            for q6 in [false, true] {
                let (qmax, scale): (u64, fn(&mut u64, usize) -> i16) = if q6 {
                    (64, |_, l| ((l * 101 + 7) % 256) as i16 - 128)
                } else {
                    (16, |_, l| ((l / 2 * 37 + 11) % 64) as i16)
                };
                for extreme in [false, true] {
                    let mut o = Operands::new(&mut seed, (nsb, QK_K, qmax), SC_LANES, scale, 4);
                    if extreme {
                        o.saturate(qmax as u8 - 1);
                    }
                    let [a, v] = tile_forms(&o.args(), u8::from(!q6));
                    assert_eq!(bits(a), bits(v), "nsb={nsb} q6={q6} extreme={extreme}");
                }
            }
        }
        for nsb in [2usize, 4, 10, 28] {
            for extreme in [false, true] {
                let mut o = Operands::new(&mut seed, (nsb, 32, 32), 0, |_, _| 0, 16);
                if extreme {
                    o.saturate(31);
                }
                let [a, v] = tile_forms(&o.args(), 2);
                assert_eq!(bits(a), bits(v), "tile32 nsb={nsb} extreme={extreme}");
            }
        }
    }

    /// `run` (a VNNI strip adding into its argument) against the scalar twin's strip over
    /// `old`, bitwise, both adding onto the same non-zero values.
    #[cfg(target_arch = "x86_64")]
    fn assert_strip_bitwise(old: &QStrip, twin: QTileFn, run: impl FnOnce(&mut [f32])) {
        let init: Vec<f32> = (0..old.nc * old.rows)
            .map(|i| i as f32 * 0.25 - 1.0)
            .collect();
        let (mut got, mut want) = (init.clone(), init);
        run(&mut got);
        strip_with(twin, old, &mut want);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let what = format!("nsb={} rows={} nc={}", old.nsb, old.rows, old.nc);
        assert_eq!(bits(&got), bits(&want), "{what}");
    }

    /// A k-quant 8-row panel (`x86::vnni_qgemm`), filled by `put(u, sb, rr, group)` for
    /// super-block `sb` of row `r` (`u = r * nsb + sb`), zero rows past `rows`; unfilled
    /// entries start as garbage.
    #[cfg(target_arch = "x86_64")]
    struct KPanel {
        q: Vec<u8>,
        sc: Vec<i32>,
        om: Vec<i32>,
        d: Vec<f32>,
        dm: Vec<f32>,
    }

    #[cfg(target_arch = "x86_64")]
    impl KPanel {
        fn build(
            rows: usize,
            nsb: usize,
            q6: bool,
            mut put: impl FnMut(usize, usize, usize, &mut crate::x86::vnni_qgemm::GroupK),
        ) -> KPanel {
            use crate::x86::vnni_qgemm::{kscales, zero_row_k, GroupK, GROUP, KBLOCK_BYTES};
            let (groups, scs) = (rows.div_ceil(GROUP), kscales(q6));
            let mut p = KPanel {
                q: vec![0xAA; groups * nsb * KBLOCK_BYTES],
                sc: vec![-7; groups * nsb * scs],
                om: vec![-7; groups * nsb * 64],
                d: vec![f32::NAN; groups * nsb * GROUP],
                dm: vec![f32::NAN; groups * nsb * GROUP],
            };
            let span = |g: usize, n: usize| g * nsb * n..(g + 1) * nsb * n;
            for g in 0..groups {
                let mut gk = GroupK {
                    q: &mut p.q[span(g, KBLOCK_BYTES)],
                    sc: &mut p.sc[span(g, scs)],
                    om: &mut p.om[span(g, 64)],
                    d: &mut p.d[span(g, GROUP)],
                    dm: &mut p.dm[span(g, GROUP)],
                };
                for rr in 0..GROUP {
                    let r = g * GROUP + rr;
                    for sb in 0..nsb {
                        if r >= rows {
                            zero_row_k(sb, rr, q6, &mut gk);
                        } else {
                            put(r * nsb + sb, sb, rr, &mut gk);
                        }
                    }
                }
            }
            p
        }

        /// The strip over this panel, with `old`'s shape and activations (`a`).
        fn strip<'a>(
            &'a self,
            q6: bool,
            old: &QStrip<'a>,
            a: [&'a [i8]; TILE_C],
        ) -> crate::x86::vnni_qgemm::StripK8<'a> {
            use crate::x86::vnni_qgemm::{kscales, StripK8, GROUP, KBLOCK_BYTES, KSCALES};
            StripK8 {
                q6,
                nsb: old.nsb,
                rows: old.rows,
                nc: old.nc,
                q: &self.q,
                q_stride: old.nsb * KBLOCK_BYTES,
                sc: &self.sc,
                om: &self.om,
                sc_stride: old.nsb * kscales(q6),
                om_stride: old.nsb * KSCALES,
                d: &self.d,
                dm: &self.dm,
                d_stride: old.nsb * GROUP,
                a,
                bs: old.bs,
                da: old.da,
                da_stride: old.da_stride,
            }
        }
    }

    /// The VNNI 8-row strip for 32-value blocks against the scalar twin's strip, bitwise:
    /// partial row groups (zero pad rows), partial column groups, several k-block lengths,
    /// activations at both ends of the int8 range and results added onto existing values.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vnni_strip8_equals_scalar_twin_bitwise() {
        use crate::x86::vnni_qgemm::{scatter_row, strip, zero_row, Strip8, BLOCK_BYTES, GROUP};
        if !crate::isa::vnni_available() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        let mut seed = 41;
        for (nsb, rows, nc) in [(2, 1, 1), (2, 8, 4), (4, 13, 3), (28, 20, 4), (10, 7, 2)] {
            let qs = nsb * 32;
            let q: Vec<u8> = (0..rows * qs)
                .map(|_| (lcg(&mut seed) % 32) as u8)
                .collect();
            let dwb: Vec<f32> = (0..rows * nsb)
                .map(|_| (lcg(&mut seed) % 100) as f32 * 1e-4)
                .collect();
            let mut dw = vec![0.0f32; rows * nsb * 4];
            for (i, &v) in dwb.iter().enumerate() {
                dw[4 * i..4 * i + 4].fill(v);
            }
            let a: Vec<Vec<i8>> = (0..TILE_C)
                .map(|c| {
                    (0..qs)
                        .map(|_| match c {
                            0 => 127,
                            1 => -128,
                            _ => lcg(&mut seed) as i8,
                        })
                        .collect()
                })
                .collect();
            let m = nsb / 2 * 8;
            let da: Vec<f32> = (0..m)
                .map(|_| (lcg(&mut seed) % 100) as f32 * 1e-3)
                .collect();
            let bias: Vec<i32> = (0..m)
                .map(|_| (lcg(&mut seed) % 8129) as i32 - 4064)
                .collect();
            let old = QStrip {
                nsb,
                unit: 32,
                rows,
                nc,
                q: &q,
                q_stride: qs,
                sc: &[],
                sc_stride: 0,
                dw: &dw,
                dw_stride: nsb * 4,
                om: &[],
                dm: &[],
                bs: [&[]; TILE_C],
                a: std::array::from_fn(|c| &a[c][..]),
                da: &da,
                da_stride: 8,
                bias: &bias,
            };
            let groups = rows.div_ceil(GROUP);
            let mut q8 = vec![0xAAu8; groups * nsb * BLOCK_BYTES];
            let mut d8 = vec![f32::NAN; groups * nsb * GROUP];
            for g in 0..groups {
                let gq = &mut q8[g * nsb * BLOCK_BYTES..(g + 1) * nsb * BLOCK_BYTES];
                let gd = &mut d8[g * nsb * GROUP..(g + 1) * nsb * GROUP];
                for rr in 0..GROUP {
                    let r = g * GROUP + rr;
                    if r < rows {
                        scatter_row(nsb, &q[r * qs..], &dwb[r * nsb..], rr, gq, gd);
                    } else {
                        zero_row(nsb, rr, gq, gd);
                    }
                }
            }
            let new = Strip8 {
                nsb,
                rows,
                nc,
                q: &q8,
                q_stride: nsb * BLOCK_BYTES,
                d: &d8,
                d_stride: nsb * GROUP,
                a: old.a,
                da: &da,
                da_stride: 8,
                bias: &bias,
            };
            assert_strip_bitwise(&old, tile32_scalar, |res| strip(&new, res));
        }
    }

    /// The VNNI 8-row Q4_K strip against the scalar twin's strip, bitwise: Q4_K-shaped
    /// operands (4-bit quants, 6-bit scales repeated over a sub-block's two lanes, signed
    /// offset multipliers), partial row and column groups, activations at both int8 ends.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vnni_strip_k8_equals_scalar_twin_bitwise() {
        use crate::x86::vnni_qgemm::{scatter_row_k, strip_k};
        if !crate::isa::vnni_available() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        let mut seed = 43;
        for (nsb, rows, nc) in [(1, 1, 1), (1, 8, 4), (2, 13, 3), (6, 20, 4), (3, 7, 2)] {
            let qs = nsb * QK_K;
            let q: Vec<u8> = (0..rows * qs)
                .map(|_| (lcg(&mut seed) % 16) as u8)
                .collect();
            let sc: Vec<i16> = (0..rows * nsb * 8)
                .flat_map(|_| {
                    let v = (lcg(&mut seed) % 64) as i16;
                    [v, v]
                })
                .collect();
            let om: Vec<i16> = (0..rows * nsb * 16)
                .map(|_| (lcg(&mut seed) % 256) as i16 - 128)
                .collect();
            let dw: Vec<f32> = (0..rows * nsb)
                .map(|_| (lcg(&mut seed) % 100) as f32 * 1e-4)
                .collect();
            let dm: Vec<f32> = (0..rows * nsb)
                .map(|_| (lcg(&mut seed) % 100) as f32 * 1e-4)
                .collect();
            let a: Vec<Vec<i8>> = (0..TILE_C)
                .map(|c| {
                    (0..qs)
                        .map(|_| match c {
                            0 => 127,
                            1 => -128,
                            _ => lcg(&mut seed) as i8,
                        })
                        .collect()
                })
                .collect();
            let bs: Vec<Vec<i16>> = (0..TILE_C)
                .map(|_| {
                    (0..nsb * 16)
                        .map(|_| (lcg(&mut seed) % 4065) as i16 - 2032)
                        .collect()
                })
                .collect();
            let da: Vec<f32> = (0..nsb * 4)
                .map(|_| (lcg(&mut seed) % 100) as f32 * 1e-3)
                .collect();
            let old = QStrip {
                nsb,
                unit: QK_K,
                rows,
                nc,
                q: &q,
                q_stride: qs,
                sc: &sc,
                sc_stride: nsb * SC_LANES,
                dw: &dw,
                dw_stride: nsb,
                om: &om,
                dm: &dm,
                bs: std::array::from_fn(|c| &bs[c][..]),
                a: std::array::from_fn(|c| &a[c][..]),
                da: &da,
                da_stride: 4,
                bias: &[],
            };
            let panel = KPanel::build(rows, nsb, false, |u, sb, rr, gk| {
                let (q, sc, om) = (&q[u * QK_K..], &sc[u * 16..], &om[u * 16..]);
                scatter_row_k(false, sb, q, sc, om, (dw[u], dm[u]), rr, gk);
            });
            let new = panel.strip(false, &old, old.a);
            assert_strip_bitwise(&old, tile_scalar, |res| strip_k(&new, res));
        }
    }

    /// The VNNI 8-row Q6_K strip (natural-order activations) against the scalar twin's strip
    /// on the same values in panel order, bitwise: 6-bit quants, signed 8-bit group scales that
    /// double as offset multipliers, partial row and column groups.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vnni_strip_k6_equals_scalar_twin_bitwise() {
        use crate::x86::vnni_qgemm::{scatter_row_k, strip_k};
        if !crate::isa::vnni_available() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        let to_panel = |nat: &[u8]| -> Vec<u8> {
            let mut p = vec![0u8; nat.len()];
            for (src, dst) in nat.chunks(QK_K).zip(p.chunks_mut(QK_K)) {
                perm_k_scalar(src, dst);
            }
            p
        };
        let mut seed = 47;
        for (nsb, rows, nc) in [(1, 1, 1), (1, 8, 4), (2, 13, 3), (6, 20, 4), (3, 7, 2)] {
            let qs = nsb * QK_K;
            let qn: Vec<u8> = (0..rows * qs)
                .map(|_| (lcg(&mut seed) % 64) as u8)
                .collect();
            let sc: Vec<i16> = (0..rows * nsb * 16)
                .map(|_| (lcg(&mut seed) % 256) as i16 - 128)
                .collect();
            let dw: Vec<f32> = (0..rows * nsb)
                .map(|_| (lcg(&mut seed) % 100) as f32 * 1e-4)
                .collect();
            let dm: Vec<f32> = dw.iter().map(|d| 32.0 * d).collect();
            let an: Vec<Vec<u8>> = (0..TILE_C)
                .map(|c| {
                    (0..qs)
                        .map(|_| match c {
                            0 => 127,
                            1 => 128,
                            _ => lcg(&mut seed) as u8,
                        })
                        .collect()
                })
                .collect();
            // The activations' 16-value sums (natural groups), as Q8_K's bsums.
            let bs: Vec<Vec<i16>> = an
                .iter()
                .map(|a| {
                    a.chunks(16)
                        .map(|g| g.iter().map(|&v| v as i8 as i16).sum())
                        .collect()
                })
                .collect();
            let da: Vec<f32> = (0..nsb * 4)
                .map(|_| (lcg(&mut seed) % 100) as f32 * 1e-3)
                .collect();
            let qp = to_panel(&qn);
            let ap: Vec<Vec<u8>> = an.iter().map(|a| to_panel(a)).collect();
            let ap8: Vec<&[i8]> = ap.iter().map(|a| super::bytes_of(a)).collect();
            let an8: Vec<&[i8]> = an.iter().map(|a| super::bytes_of(a)).collect();
            let old = QStrip {
                nsb,
                unit: QK_K,
                rows,
                nc,
                q: &qp,
                q_stride: qs,
                sc: &sc,
                sc_stride: nsb * SC_LANES,
                dw: &dw,
                dw_stride: nsb,
                om: &sc,
                dm: &dm,
                bs: std::array::from_fn(|c| &bs[c][..]),
                a: std::array::from_fn(|c| ap8[c]),
                da: &da,
                da_stride: 4,
                bias: &[],
            };
            let panel = KPanel::build(rows, nsb, true, |u, sb, rr, gk| {
                let (q, sc) = (&qn[u * QK_K..], &sc[u * 16..]);
                scatter_row_k(true, sb, q, sc, sc, (dw[u], dm[u]), rr, gk);
            });
            let new = panel.strip(true, &old, std::array::from_fn(|c| an8[c]));
            assert_strip_bitwise(&old, tile_scalar, |res| strip_k(&new, res));
        }
    }

    #[test]
    fn simd_tile_matches_scalar_twin() {
        let mut seed = 5;
        for isa in available_isas() {
            let Some(Kernels { tile, tile_q4k, .. }) = kernels(isa) else {
                continue;
            };
            for nsb in [1usize, 2, 4, 7] {
                for q6 in [false, true] {
                    // Q4_K: 4-bit quants, unsigned 6-bit scales per 32 values (2 lanes), its
                    // own tile (i16 sums); Q6_K: 6-bit quants, signed 8-bit scales per lane.
                    let (qmax, scale): (u64, fn(&mut u64, usize) -> i16) = if q6 {
                        (64, |_, l| ((l * 101 + 7) % 256) as i16 - 128)
                    } else {
                        (16, |_, l| ((l / 2 * 37 + 11) % 64) as i16)
                    };
                    let sc = SC_LANES;
                    let o = Operands::new(&mut seed, (nsb, QK_K, qmax), sc, scale, TILE_C + 3);
                    let args = o.args();
                    let what = format!("{isa:?} nsb={nsb} q6={q6}");
                    let simd = if q6 { tile } else { tile_q4k };
                    let mag = tile_scalar_mag(&args);
                    assert_close(simd(&args), tile_scalar(&args), mag, &what);
                }
            }
        }
    }
}
