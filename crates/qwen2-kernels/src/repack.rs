//! Load-time repacking of Q5_0 weight rows into `GgmlType::Q5_0R8`, a layout whose decode
//! costs about half the vector ops of ggml's (issue 4: the Q5_0 decode kernel was
//! compute-bound on unpacking the 5th bits).
//!
//! A Q5_0 block is `d: f16, qh: u32 (5th bits), qs: [u8; 16] (low nibble = value j, high
//! nibble = value j + 16)`; rebuilding its 32 signed values takes ~11 AVX2 ops (bit-to-byte
//! shuffle/or/cmpeq, two nibble masks, a 128-bit insert, andnot/or). Q5_0R8 stores the same
//! bits, per row, as:
//!
//! - groups of 8 blocks (176 bytes = 8 x 22): `[0, 16)` the 8 f16 scales; `[16, 144)` four
//!   32-byte nibble vectors, vector `p` holding block `2p`'s value `j` in the low nibble of
//!   byte `j` and block `2p + 1`'s in the high nibble; `[144, 176)` a bit plane: bit `k` of
//!   byte `j` is the INVERTED 5th bit of value `j` of block `k`;
//! - then, if 4..=7 blocks remain, one group of 4 (88 bytes): 4 scales, two nibble vectors,
//!   and a 16-byte plane whose byte `j` holds the inverted bits of value `j` (bits 0..3, one
//!   per block) and of value `j + 16` (bits 4..7);
//! - then the last 0..=3 blocks unchanged (22-byte Q5_0 blocks).
//!
//! Each block's bytes thus start at `22 * block` and any suffix of a row that starts at a
//! multiple of 8 blocks is itself a valid Q5_0R8 row (the prompt GEMM dequantizes row pieces
//! of a multiple of 256 values). Decoding block `k` of a group is one mask (or shift + mask)
//! for the nibbles, a shift + mask of the plane (`t = 16` where the 5th bit is 0) and one
//! subtraction `x = nibble - t`, already the signed value `q - 16`; the 8 scales convert with
//! one `vcvtph2ps`.
//!
//! Values, and so every dequantized f32 and every integer dot product, are exactly those of
//! the source Q5_0 row. Decode rows (batch-invariant dot products against Q8_0 activations)
//! have their own float arithmetic here, defined below with its scalar twin: one exact integer
//! sum and one FMA per block, where ggml's Q5_0 kernel converts and accumulates 8 partial
//! lanes per block with a sign fix-up per product. With the activations prepared once per
//! matmul, a batch-8 decode tile does about half the vector work per block and pair.

use crate::types::GgmlType;
use crate::KernelError;

/// Bytes of one Q5_0 block.
const BLOCK: usize = 22;
/// Blocks per full group.
const GROUP: usize = 8;

/// The repacked format for weights stored as `ty`, if this crate has one.
pub fn repacked_type(ty: GgmlType) -> Option<GgmlType> {
    match ty {
        GgmlType::Q5_0 => Some(GgmlType::Q5_0R8),
        GgmlType::Q4K => Some(GgmlType::Q4KR),
        _ => None,
    }
}

/// Repack one row of `n` values from `ty` (see [`repacked_type`]) into `dst`, which must be
/// as long as `src` (`ty.row_bytes(n)`). Returns the repacked type.
pub fn repack_row(
    ty: GgmlType,
    n: usize,
    src: &[u8],
    dst: &mut [u8],
) -> Result<GgmlType, KernelError> {
    let to = repacked_type(ty).ok_or(KernelError::RepackUnsupported { ty })?;
    let need = ty.row_bytes(n)?;
    for (what, got) in [
        ("repack source bytes", src.len()),
        ("repack destination bytes", dst.len()),
    ] {
        if got != need {
            return Err(KernelError::BufferSize {
                what,
                ty,
                n,
                expected: need,
                got,
            });
        }
    }
    if to == GgmlType::Q4KR {
        crate::repack_q4k::pack_row(src, dst);
    } else {
        pack_q5_0_row(src, dst);
    }
    Ok(to)
}

/// Where a row's blocks live: `(full groups, blocks in the group of 4 (0 or 4))`.
fn shape(nb: usize) -> (usize, usize) {
    let full = nb / GROUP;
    let quad = if nb % GROUP >= 4 { 4 } else { 0 };
    (full, quad)
}

/// One Q5_0 block's fields: scale bytes, the 32 low nibbles, the 32 5th bits.
struct Fields {
    d: [u8; 2],
    q: [u8; 32],
    h: [u8; 32],
}

fn join_q5_0(f: &Fields) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    b[..2].copy_from_slice(&f.d);
    let qh =
        f.h.iter()
            .enumerate()
            .fold(0u32, |acc, (j, &h)| acc | ((h as u32) << j));
    b[2..6].copy_from_slice(&qh.to_le_bytes());
    for j in 0..16 {
        b[6 + j] = f.q[j] | (f.q[j + 16] << 4);
    }
    b
}

/// `SPREAD[b]`: byte `i` is bit `i` of `b` (one bit of a byte per output byte).
const SPREAD: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut b = 0;
    while b < 256 {
        let mut i = 0;
        while i < 8 {
            t[b] |= (((b >> i) & 1) as u64) << (8 * i);
            i += 1;
        }
        b += 1;
    }
    t
};

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// Q5_0 row -> Q5_0R8 row (`src.len() == dst.len()`, a multiple of 22). Word-wise (load
/// time matters: ~170 MB of Q5_0 in the default model): nibbles merged 8 bytes at a time, the
/// 5th bits transposed into the plane through [`SPREAD`].
fn pack_q5_0_row(src: &[u8], dst: &mut [u8]) {
    const LO: u64 = 0x0F0F_0F0F_0F0F_0F0F;
    let nb = src.len() / BLOCK;
    let (full, quad) = shape(nb);
    let groups = (0..full).map(|g| (g * GROUP, GROUP));
    for (start, size) in groups.chain((quad > 0).then_some((full * GROUP, quad))) {
        let sb = &src[start * BLOCK..(start + size) * BLOCK];
        let out = &mut dst[start * BLOCK..(start + size) * BLOCK];
        out.fill(0);
        let (nib, plane_at) = (2 * size, 18 * size);
        // plane[w]: bytes 8w..8w + 8 of the plane (4 words for a group of 8, 2 for one of 4).
        let mut plane = [0u64; 4];
        for k in 0..size {
            let b = &sb[k * BLOCK..(k + 1) * BLOCK];
            out[2 * k..2 * k + 2].copy_from_slice(&b[..2]);
            // Nibble vector k / 2: low nibbles of its first block, high of its second.
            let v = nib + 32 * (k / 2);
            for w in 0..2 {
                let q = u64_at(b, 6 + 8 * w);
                let (lo, hi) = if k % 2 == 0 {
                    (q & LO, (q >> 4) & LO)
                } else {
                    ((q & LO) << 4, q & !LO)
                };
                for (off, val) in [(v + 8 * w, lo), (v + 16 + 8 * w, hi)] {
                    let cur = u64_at(out, off) | val;
                    out[off..off + 8].copy_from_slice(&cur.to_le_bytes());
                }
            }
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            for (i, byte) in qh.to_le_bytes().into_iter().enumerate() {
                // Bits 8i..8i + 8 are values 8i..8i + 8: plane word i (group of 8), or word
                // i % 2 at bit offset 4 for values 16..32 (group of 4).
                let (w, shift) = if size == GROUP {
                    (i, k)
                } else {
                    (i % 2, k + 4 * (i / 2))
                };
                plane[w] |= SPREAD[byte as usize] << shift;
            }
        }
        for (w, p) in plane.iter().take(size / 2).enumerate() {
            // Inverted bits: `t = 16` where the 5th bit is 0 (see the module docs).
            out[plane_at + 8 * w..plane_at + 8 * w + 8].copy_from_slice(&(!p).to_le_bytes());
        }
    }
    let rest = (full * GROUP + quad) * BLOCK;
    dst[rest..].copy_from_slice(&src[rest..]);
}

/// Block `b` of a Q5_0R8 row of `nb` blocks, rebuilt as a Q5_0 block (the scalar twin's view).
pub(crate) fn q5_0_block(row: &[u8], nb: usize, b: usize) -> [u8; BLOCK] {
    let (full, quad) = shape(nb);
    let (start, size) = if b < full * GROUP {
        (b / GROUP * GROUP, GROUP)
    } else if b < full * GROUP + quad {
        (full * GROUP, quad)
    } else {
        let mut out = [0u8; BLOCK];
        out.copy_from_slice(&row[b * BLOCK..(b + 1) * BLOCK]);
        return out;
    };
    let g = &row[start * BLOCK..(start + size) * BLOCK];
    let k = b - start;
    let nib = 2 * size;
    let plane = nib + 16 * size;
    let mut f = Fields {
        d: [g[2 * k], g[2 * k + 1]],
        q: [0; 32],
        h: [0; 32],
    };
    for j in 0..32 {
        f.q[j] = (g[nib + 32 * (k / 2) + j] >> (4 * (k % 2))) & 0xF;
        let inv = if size == GROUP {
            (g[plane + j] >> k) & 1
        } else {
            (g[plane + j % 16] >> (k + 4 * (j / 16))) & 1
        };
        f.h[j] = 1 - inv;
    }
    join_q5_0(&f)
}

/// Scalar dequantizer: `dst.len() / 32` blocks of the Q5_0R8 row `src`.
pub(crate) fn dequantize(src: &[u8], dst: &mut [f32]) {
    let nb = dst.len() / 32;
    for (b, y) in dst.chunks_exact_mut(32).enumerate() {
        crate::scalar::dequantize(GgmlType::Q5_0, &q5_0_block(src, nb, b), y);
    }
}

// ------------------------------------------------------------------------------------------
// Decode rows against Q5_0R8 (issue 5): the dot product's own arithmetic
//
// A pair's result is defined as: the row's blocks in slots of 8 (the last slot partial); per
// slot, lane `l` of an 8-lane accumulator takes block `8 s + SLOT_ORDER[l]` as one FMA of its
// exact integer dot `sum x_i * y_i` (as f32) with the scale product `d_w * d_a` (lanes of
// missing blocks add `0 * 0`); then the 8 lanes summed as `hsum_ps` does. The integer block
// sums are exact however they are formed, so the SIMD tiles may form them from unsigned
// quants `q = x + 16` and subtract the activation's `16 * sum y` (one `vpmaddubsw` per block
// and activation row, no sign fix-ups), fold 8 blocks into one vector and spend one FMA per
// 8 blocks and pair; every ISA, tile and batch size gives the same bits as this twin.
// (Q5_0 itself keeps ggml's per-lane arithmetic, so a repacked row's dot differs from its
// source row's by rounding only.)
// ------------------------------------------------------------------------------------------

/// Blocks per slot of the decode dot product.
pub(crate) const SLOT: usize = 8;
/// Lane `l` of a slot holds block `SLOT_ORDER[l]` of it: the order in which the AVX2 fold of
/// four block pairs leaves their sums (even blocks in the low half, odd in the high).
pub(crate) const SLOT_ORDER: [usize; SLOT] = [0, 2, 4, 6, 1, 3, 5, 7];
/// Bytes per slot of a prepared activation row (see [`prep_act_row`]).
pub(crate) const ACT_SLOT_BYTES: usize = 320;

/// The lane of block `k` (< 8) of a slot: the inverse of [`SLOT_ORDER`].
pub(crate) fn slot_lane(k: usize) -> usize {
    k / 2 + 4 * (k % 2)
}

/// Bytes of one prepared activation row of `nb` blocks.
pub(crate) fn act_row_bytes(nb: usize) -> usize {
    ACT_SLOT_BYTES * nb.div_ceil(SLOT)
}

/// A Q8_0 activation row of `nb` blocks laid out for the Q5_0R8 decode tiles, per slot of 8
/// blocks (320 bytes, zeros where a block is missing):
/// - `[0, 256)`: four block pairs of 64 bytes, pair `j` (blocks `2j`, `2j + 1`) as
///   `[y_2j[0..16], y_2j+1[0..16], y_2j[16..32], y_2j+1[16..32]]`, so one 256-bit product of
///   a pair keeps each block in its own 128-bit half;
/// - `[256, 288)`: the 8 activation scales as f32, lane order ([`SLOT_ORDER`]);
/// - `[288, 320)`: `16 * sum y` of each block as i32, lane order (the offset of `q = x + 16`).
pub(crate) fn prep_act_row(nb: usize, a: &[u8], out: &mut [u8]) {
    let out = &mut out[..act_row_bytes(nb)];
    out.fill(0);
    for (b, blk) in a.chunks_exact(34).take(nb).enumerate() {
        let (slot, k) = (&mut out[ACT_SLOT_BYTES * (b / SLOT)..], b % SLOT);
        let y = &blk[2..];
        let at = 64 * (k / 2) + 16 * (k % 2);
        slot[at..at + 16].copy_from_slice(&y[..16]);
        slot[at + 32..at + 48].copy_from_slice(&y[16..]);
        let lane = slot_lane(k);
        let d = crate::scalar::f16_at(blk, 0);
        slot[256 + 4 * lane..260 + 4 * lane].copy_from_slice(&d.to_le_bytes());
        let sum: i32 = y.iter().map(|&v| v as i8 as i32).sum();
        slot[288 + 4 * lane..292 + 4 * lane].copy_from_slice(&(16 * sum).to_le_bytes());
    }
}

/// The 32 signed values `q - 16` of a Q5_0 block.
fn q5_0_values(blk: &[u8; BLOCK]) -> [i32; 32] {
    let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
    std::array::from_fn(|j| {
        let nib = (blk[6 + j % 16] >> (4 * (j / 16))) & 0xF;
        (nib as i32 | ((((qh >> j) & 1) as i32) << 4)) - 16
    })
}

/// Scalar `vec_dot` of a Q5_0R8 row and a Q8_0 activation row: the definition above, which
/// the AVX2 kernels equal bitwise.
pub(crate) fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / 32;
    let mut acc = [0f32; SLOT];
    for s in 0..nb.div_ceil(SLOT) {
        for (l, acc) in acc.iter_mut().enumerate() {
            let b = SLOT * s + SLOT_ORDER[l];
            let (t, d) = if b < nb {
                let blk = q5_0_block(w, nb, b);
                let y = &a[34 * b + 2..34 * b + 34];
                let t: i32 = q5_0_values(&blk)
                    .iter()
                    .zip(y)
                    .map(|(&x, &y)| x * (y as i8 as i32))
                    .sum();
                let d = crate::scalar::f16_at(&blk, 0) * crate::scalar::f16_at(a, 34 * b);
                (t as f32, d)
            } else {
                (0.0, 0.0)
            };
            *acc = t.mul_add(d, *acc);
        }
    }
    // `hsum_ps`: the halves, then lanes 0 + 2 and 1 + 3, then those two.
    let h: [f32; 4] = std::array::from_fn(|i| acc[i] + acc[i + 4]);
    (h[0] + h[2]) + (h[1] + h[3])
}

/// Quantize a row straight to Q5_0R8 (ggml's Q5_0 reference, then [`pack_q5_0_row`]).
pub(crate) fn quantize(src: &[f32], dst: &mut [u8]) {
    let mut q = vec![0u8; dst.len()];
    crate::scalar::quantize(GgmlType::Q5_0, src, &mut q);
    pack_q5_0_row(&q, dst);
}
