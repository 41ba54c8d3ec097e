//! Load-time repacking of Q4_K super-blocks into `GgmlType::Q4KR` (issue 4: the Q4_K decode
//! tile was compute-bound; one core streamed ~14 GB/s of weights from cache, under the two
//! cores' share of DRAM bandwidth, so the 7B shape's decode could not reach its bound).
//!
//! A Q4_K super-block is `d, dmin: f16`, 12 bytes of packed 6-bit scales and mins (8 each, one
//! per 32 values), and 128 bytes of nibbles: byte `32 j + i` holds value `64 j + i` in its low
//! nibble and `64 j + 32 + i` in its high one. ggml's kernel therefore meets a different
//! sub-block, and so a different scale, at every 32-byte step, and pays one `vpmaddwd` per
//! step and activation row to apply it.
//!
//! Q4KR keeps the 16-byte header and reorders the nibbles into the prompt GEMM's lane-major
//! order (`qgemm::kpos`): vector `k` (32 bytes) holds step `2 k` in its low nibbles and step
//! `2 k + 1` in its high ones, where step `s`, byte `p` is value `16 (p / 2) + 2 s + p % 2`. An
//! i16 lane then stays inside one 16-value group (one sub-block per pair of lanes) across all
//! 8 steps, so a decode tile adds the 8 steps' `vpmaddubsw` products in i16 (at most
//! `8 * 2 * 15 * 127 = 30480`) and applies the 8 scales with one `vpmaddwd` per super-block.
//! Blocks stay self-contained (144 bytes each), and the prompt GEMM's panel is the nibbles
//! split in place, without its permutation.
//!
//! Values, and so every dequantized f32 and every integer dot product, are exactly those of the
//! source block. Decode rows have their own float arithmetic, defined by [`vec_dot`] below.

use crate::qgemm::kpos;
use crate::scalar;
use crate::types::QK_K;

/// Bytes of one super-block (Q4_K's).
pub(crate) const BLOCK: usize = 144;
/// Bytes per super-block of a prepared activation row (see [`prep_act_row`]).
pub(crate) const ACT_BYTES: usize = 288;

/// The 4-bit quant of value `v` of a ggml Q4_K block.
fn q4k_nibble(b: &[u8], v: usize) -> u8 {
    let byte = b[16 + 32 * (v / 64) + v % 32];
    if v % 64 < 32 {
        byte & 0xF
    } else {
        byte >> 4
    }
}

/// Where value `v` lives in a Q4KR block: its byte, and the shift of its nibble.
fn q4kr_place(v: usize) -> (usize, u32) {
    let pos = kpos(v);
    let (step, p) = (pos / 32, pos % 32);
    (16 + 32 * (step / 2) + p, 4 * (step % 2) as u32)
}

/// The 4-bit quant of value `v` of a Q4KR block.
pub(crate) fn q4kr_nibble(b: &[u8], v: usize) -> u8 {
    let (at, shift) = q4kr_place(v);
    (b[at] >> shift) & 0xF
}

/// One ggml Q4_K block into Q4KR (scalar twin of the AVX2 repack).
pub(crate) fn pack_block(src: &[u8], dst: &mut [u8]) {
    dst[..16].copy_from_slice(&src[..16]);
    dst[16..BLOCK].fill(0);
    for v in 0..QK_K {
        let (at, shift) = q4kr_place(v);
        dst[at] |= q4k_nibble(src, v) << shift;
    }
}

/// One Q4KR block back into ggml's Q4_K layout (the scalar twins' view).
pub(crate) fn q4k_block(src: &[u8]) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    b[..16].copy_from_slice(&src[..16]);
    for v in 0..QK_K {
        let shift = if v % 64 < 32 { 0 } else { 4 };
        b[16 + 32 * (v / 64) + v % 32] |= q4kr_nibble(src, v) << shift;
    }
    b
}

/// A Q4_K row into Q4KR, block by block (`src.len() == dst.len()`, whole blocks): AVX2 where
/// present (load time: ~3 GB of Q4_K in the 7B shape), else [`pack_block`].
pub(crate) fn pack_row(src: &[u8], dst: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if crate::isa::detected_isa() >= crate::Isa::Avx2 {
        for (s, d) in src.chunks_exact(BLOCK).zip(dst.chunks_exact_mut(BLOCK)) {
            crate::x86::avx2_decode::pack_q4kr_block(s, d);
        }
        return;
    }
    for (s, d) in src.chunks_exact(BLOCK).zip(dst.chunks_exact_mut(BLOCK)) {
        pack_block(s, d);
    }
}

/// Scalar dequantizer: `dst.len() / 256` blocks of the Q4KR row `src`.
pub(crate) fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(BLOCK).zip(dst.chunks_exact_mut(QK_K)) {
        scalar::dequantize(crate::GgmlType::Q4K, &q4k_block(b), y);
    }
}

/// Quantize a row straight to Q4KR (ggml's Q4_K reference, then [`pack_block`]).
pub(crate) fn quantize(src: &[f32], dst: &mut [u8]) {
    let mut q = vec![0u8; dst.len()];
    scalar::quantize(crate::GgmlType::Q4K, src, &mut q);
    for (s, d) in q.chunks_exact(BLOCK).zip(dst.chunks_exact_mut(BLOCK)) {
        pack_block(s, d);
    }
}

// ------------------------------------------------------------------------------------------
// Decode rows against Q4KR (issue 5: one arithmetic for every batch size): the dot product
//
// A pair's result is defined as: per super-block `i`, with `d = yd * d_x` and `m = yd * m_x`
// (f32 products of the activation scale and the block's f16 scales), lane `j` (0..8) of an
// 8-lane accumulator takes one FMA `acc[j] += d * f32(scale_j * sum_{v in sub-block j} q_v y_v)`
// and lane `k` (0..4) of a 4-lane one `accm[k] -= m * f32(min_2k * ys_2k + min_2k+1 * ys_2k+1)`,
// `ys_g` the sum of the activations of sub-block `g`. The result is
// `(h0 + h2) + (h1 + h3)` with `h_k = (acc[k] + acc[k + 4]) + accm[k]`. The integer sums are
// exact however they are formed; the AVX2 tiles form them as the module docs say.
// ------------------------------------------------------------------------------------------

/// Bytes of one prepared activation row of `nb` super-blocks.
pub(crate) fn act_row_bytes(nb: usize) -> usize {
    ACT_BYTES * nb
}

/// A Q8_K activation row of `nb` super-blocks laid out for the Q4KR decode tiles, per
/// super-block (288 bytes): `[0, 256)` the 256 int8 values in Q4KR step order
/// (`qgemm::kpos`); `[256, 272)` the 8 sub-block sums as i16; `[272, 276)` the scale `yd` as
/// f32; the rest zero.
pub(crate) fn prep_act_row(nb: usize, a: &[u8], out: &mut [u8]) {
    for (blk, o) in a
        .chunks_exact(292)
        .zip(out.chunks_exact_mut(ACT_BYTES))
        .take(nb)
    {
        #[cfg(target_arch = "x86_64")]
        if crate::isa::detected_isa() >= crate::Isa::Avx2 {
            crate::x86::avx2_qgemm::perm_k(&blk[4..260], &mut o[..256]);
        } else {
            perm_scalar(&blk[4..260], &mut o[..256]);
        }
        #[cfg(not(target_arch = "x86_64"))]
        perm_scalar(&blk[4..260], &mut o[..256]);
        for g in 0..8 {
            let s = |j: usize| i16::from_le_bytes([blk[260 + 2 * j], blk[261 + 2 * j]]);
            // Real Q8_K sums are at most 16 * 127 in magnitude, so this never wraps; wrapping
            // keeps arbitrary bytes well defined (the SIMD tiles read the same i16).
            let ys = s(2 * g).wrapping_add(s(2 * g + 1));
            o[256 + 2 * g..258 + 2 * g].copy_from_slice(&ys.to_le_bytes());
        }
        o[272..276].copy_from_slice(&blk[..4]);
        o[276..].fill(0);
    }
}

/// `dst[kpos(v)] = src[v]` for one super-block.
fn perm_scalar(src: &[u8], dst: &mut [u8]) {
    for v in 0..QK_K {
        dst[kpos(v)] = src[v];
    }
}

/// Scalar `vec_dot` of a Q4KR row and a Q8_K activation row: the definition above, which
/// the AVX2 kernels equal bitwise.
pub(crate) fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / QK_K;
    let mut acc = [0f32; 8];
    let mut accm = [0f32; 4];
    for i in 0..nb {
        let (wb, ab) = (&w[BLOCK * i..BLOCK * (i + 1)], &a[292 * i..292 * (i + 1)]);
        let yd = scalar::f32_at(ab, 0);
        let d = yd * scalar::f16_at(wb, 0);
        let m = yd * scalar::f16_at(wb, 2);
        let (scales, mins) = scalar::k4_scales_mins(&wb[4..16]);
        let y = |v: usize| ab[4 + v] as i8 as i32;
        let ys = |g: usize| {
            let s = |j: usize| i16::from_le_bytes([ab[260 + 2 * j], ab[261 + 2 * j]]);
            s(2 * g).wrapping_add(s(2 * g + 1)) as i32
        };
        for (j, acc) in acc.iter_mut().enumerate() {
            let dot: i32 = (32 * j..32 * j + 32)
                .map(|v| q4kr_nibble(wb, v) as i32 * y(v))
                .sum();
            *acc = d.mul_add((scales[j] as i32 * dot) as f32, *acc);
        }
        for (k, accm) in accm.iter_mut().enumerate() {
            let p = mins[2 * k] as i32 * ys(2 * k) + mins[2 * k + 1] as i32 * ys(2 * k + 1);
            *accm = (-m).mul_add(p as f32, *accm);
        }
    }
    let h: [f32; 4] = std::array::from_fn(|k| (acc[k] + acc[k + 4]) + accm[k]);
    (h[0] + h[2]) + (h[1] + h[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(seed: &mut u64) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        for x in b.iter_mut() {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *x = *seed as u8;
        }
        b
    }

    #[test]
    fn places_are_a_permutation_of_the_nibbles() {
        let mut seen = [[false; 2]; BLOCK];
        for v in 0..QK_K {
            let (at, shift) = q4kr_place(v);
            assert!((16..BLOCK).contains(&at) && (shift == 0 || shift == 4));
            assert!(!seen[at][shift as usize / 4], "value {v} collides");
            seen[at][shift as usize / 4] = true;
        }
    }

    #[test]
    fn pack_and_unpack_round_trip_and_keep_values() {
        let mut seed = 7;
        for _ in 0..50 {
            let b = block(&mut seed);
            let mut r = [0u8; BLOCK];
            pack_block(&b, &mut r);
            assert_eq!(r[..16], b[..16]);
            assert_eq!(q4k_block(&r), b);
            for v in 0..QK_K {
                assert_eq!(q4kr_nibble(&r, v), q4k_nibble(&b, v));
            }
            // Step s, byte p of vector s / 2 is value 16 (p / 2) + 2 s + p % 2 (module docs).
            for s in 0..8 {
                for p in 0..32 {
                    let v = 16 * (p / 2) + 2 * s + p % 2;
                    assert_eq!(
                        (r[16 + 32 * (s / 2) + p] >> (4 * (s % 2))) & 0xF,
                        q4k_nibble(&b, v)
                    );
                }
            }
        }
    }

    #[test]
    fn simd_pack_equals_scalar_pack() {
        #[cfg(target_arch = "x86_64")]
        if crate::Isa::Avx2.is_available() {
            let mut seed = 9;
            for _ in 0..200 {
                let b = block(&mut seed);
                let (mut want, mut got) = ([0u8; BLOCK], [0xA5u8; BLOCK]);
                pack_block(&b, &mut want);
                crate::x86::avx2_decode::pack_q4kr_block(&b, &mut got);
                assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn prepared_rows_hold_step_order_sums_and_scale() {
        let mut seed = 3u64;
        let a: Vec<u8> = (0..2 * 292)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let mut p = vec![0xEEu8; act_row_bytes(2)];
        prep_act_row(2, &a, &mut p);
        for i in 0..2 {
            let (blk, o) = (&a[292 * i..], &p[ACT_BYTES * i..]);
            for v in 0..QK_K {
                assert_eq!(o[kpos(v)], blk[4 + v]);
            }
            for g in 0..8 {
                let s = |j: usize| i16::from_le_bytes([blk[260 + 2 * j], blk[261 + 2 * j]]);
                let sum = s(2 * g).wrapping_add(s(2 * g + 1));
                assert_eq!(o[256 + 2 * g..258 + 2 * g], sum.to_le_bytes());
            }
            assert_eq!(o[272..276], blk[..4]);
            assert!(o[276..ACT_BYTES].iter().all(|&x| x == 0));
        }
    }
}
