//! Scalar reference implementations, bit-compatible with ggml's `dequantize_row_*`,
//! `quantize_row_*_ref` and `ggml_vec_dot_*_generic`. These are the twins every SIMD kernel is
//! tested against. Callers (the crate's API layer) have already validated lengths; slices are
//! walked with `chunks_exact`, so short inputs only produce fewer blocks, never UB.

use crate::kquant;
use crate::types::{GgmlType, QK, QK_K};
use half::{bf16, f16};

#[inline(always)]
pub(crate) fn f16_at(b: &[u8], off: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[off], b[off + 1]])).to_f32()
}

#[inline(always)]
pub(crate) fn f32_at(b: &[u8], off: usize) -> f32 {
    f32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

#[inline(always)]
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

#[inline(always)]
fn put_f16(b: &mut [u8], off: usize, v: f32) {
    b[off..off + 2].copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
}

/// Decode the 12-byte packed 6-bit scales/mins of Q4_K/Q5_K (ggml `get_scale_min_k4`, all 8).
#[inline(always)]
pub(crate) fn k4_scales_mins(q: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..8 {
        if j < 4 {
            sc[j] = q[j] & 63;
            mn[j] = q[j + 4] & 63;
        } else {
            sc[j] = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
            mn[j] = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        }
    }
    (sc, mn)
}

/// Decode Q3_K's 12-byte packed 6-bit scales into 16 signed scales (already minus 32).
#[inline(always)]
pub(crate) fn q3k_scales(s: &[u8]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        let lo = if i < 8 { s[i] & 0xF } else { s[i - 8] >> 4 };
        let hi = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        *o = ((lo | (hi << 4)) as i8).wrapping_sub(32);
    }
    out
}

/// `v.round() as i8` (half away from zero, saturating; NaN -> 0) without `f32::round`, which
/// is a `roundf` libm call on the x86-64 baseline: Q8_0 activation quantization runs once per
/// matmul call on the decode path, serially, and was dominated by those calls.
#[inline(always)]
pub(crate) fn round_to_i8(v: f32) -> i8 {
    let t = v as i32; // truncates toward zero, saturates, NaN -> 0
                      // Exact for |v| < 2^23; larger |v| are integers already (frac 0) or saturate below.
    let frac = v - t as f32;
    // Clamp first so the +-1 cannot overflow; branch-free so the block loop vectorizes.
    let t = t.clamp(-1000, 1000) + (frac >= 0.5) as i32 - (frac <= -0.5) as i32;
    t.clamp(i8::MIN as i32, i8::MAX as i32) as i8
}

/// ggml's `nearest_int`: round half to even via the 1.5*2^23 trick (valid for |x| < 2^22).
#[inline(always)]
pub(crate) fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12582912.0;
    let i = val.to_bits() as i32;
    (i & 0x007fffff) - 0x00400000
}

// ---------------------------------------------------------------------------------------------
// Dequantization
// ---------------------------------------------------------------------------------------------

pub(crate) fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    if ty == GgmlType::Q5_0R8 {
        // Row-level layout: blocks are not self-contained.
        return crate::repack::dequantize(src, dst);
    }
    if ty == GgmlType::Q4KR {
        return crate::repack_q4k::dequantize(src, dst);
    }
    let ts = ty.type_size();
    let bs = ty.block_size();
    let blocks = src.chunks_exact(ts).zip(dst.chunks_exact_mut(bs));
    match ty {
        GgmlType::F32 => blocks.for_each(|(b, y)| y[0] = f32_at(b, 0)),
        GgmlType::F16 => blocks.for_each(|(b, y)| y[0] = f16_at(b, 0)),
        GgmlType::BF16 => blocks
            .for_each(|(b, y)| y[0] = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()),
        GgmlType::Q4_0 => blocks.for_each(|(b, y)| {
            let d = f16_at(b, 0);
            let qs = &b[2..18];
            for j in 0..16 {
                y[j] = ((qs[j] & 0xF) as i32 - 8) as f32 * d;
                y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
            }
        }),
        GgmlType::Q4_1 => blocks.for_each(|(b, y)| {
            let d = f16_at(b, 0);
            let m = f16_at(b, 2);
            let qs = &b[4..20];
            for j in 0..16 {
                y[j] = (qs[j] & 0xF) as f32 * d + m;
                y[j + 16] = (qs[j] >> 4) as f32 * d + m;
            }
        }),
        GgmlType::Q5_0 => blocks.for_each(|(b, y)| {
            let d = f16_at(b, 0);
            let qh = u32_at(b, 2);
            let qs = &b[6..22];
            for j in 0..16 {
                let h0 = ((qh >> j) & 1) << 4;
                let h1 = ((qh >> (j + 16)) & 1) << 4;
                y[j] = (((qs[j] & 0xF) as u32 | h0) as i32 - 16) as f32 * d;
                y[j + 16] = (((qs[j] >> 4) as u32 | h1) as i32 - 16) as f32 * d;
            }
        }),
        GgmlType::Q5_1 => blocks.for_each(|(b, y)| {
            let d = f16_at(b, 0);
            let m = f16_at(b, 2);
            let qh = u32_at(b, 4);
            let qs = &b[8..24];
            for j in 0..16 {
                let h0 = ((qh >> j) & 1) << 4;
                let h1 = ((qh >> (j + 16)) & 1) << 4;
                y[j] = ((qs[j] & 0xF) as u32 | h0) as f32 * d + m;
                y[j + 16] = ((qs[j] >> 4) as u32 | h1) as f32 * d + m;
            }
        }),
        GgmlType::Q8_0 => blocks.for_each(|(b, y)| {
            let d = f16_at(b, 0);
            for j in 0..QK {
                y[j] = b[2 + j] as i8 as f32 * d;
            }
        }),
        GgmlType::Q8_1 => blocks.for_each(|(b, y)| {
            let d = f16_at(b, 0);
            for j in 0..QK {
                y[j] = b[4 + j] as i8 as f32 * d;
            }
        }),
        GgmlType::Q5_0R8 | GgmlType::Q4KR => {} // handled above (repacked layouts)
        GgmlType::Q8K => blocks.for_each(|(b, y)| {
            let d = f32_at(b, 0);
            for j in 0..QK_K {
                y[j] = b[4 + j] as i8 as f32 * d;
            }
        }),
        GgmlType::Q2K => blocks.for_each(|(b, y)| {
            let sc = &b[0..16];
            let q = &b[16..80];
            let d = f16_at(b, 80);
            let dmin = f16_at(b, 82);
            let mut is = 0;
            let mut yi = 0;
            for n in 0..2 {
                let q = &q[32 * n..32 * n + 32];
                for shift in [0, 2, 4, 6] {
                    for half in 0..2 {
                        let s = sc[is];
                        is += 1;
                        let dl = d * (s & 0xF) as f32;
                        let ml = dmin * (s >> 4) as f32;
                        for l in 0..16 {
                            y[yi] = dl * ((q[l + 16 * half] >> shift) & 3) as f32 - ml;
                            yi += 1;
                        }
                    }
                }
            }
        }),
        GgmlType::Q3K => blocks.for_each(|(b, y)| {
            let hm = &b[0..32];
            let q = &b[32..96];
            let scales = q3k_scales(&b[96..108]);
            let d_all = f16_at(b, 108);
            let mut is = 0;
            let mut yi = 0;
            let mut m = 1u8;
            for n in 0..2 {
                let q = &q[32 * n..32 * n + 32];
                for shift in [0, 2, 4, 6] {
                    for half in 0..2 {
                        let dl = d_all * scales[is] as f32;
                        is += 1;
                        for l in 0..16 {
                            let k = l + 16 * half;
                            let v =
                                ((q[k] >> shift) & 3) as i32 - if hm[k] & m != 0 { 0 } else { 4 };
                            y[yi] = dl * v as f32;
                            yi += 1;
                        }
                    }
                    m <<= 1;
                }
            }
        }),
        GgmlType::Q4K => blocks.for_each(|(b, y)| {
            let d = f16_at(b, 0);
            let dmin = f16_at(b, 2);
            let (sc, mn) = k4_scales_mins(&b[4..16]);
            let q = &b[16..144];
            for j in 0..4 {
                let d1 = d * sc[2 * j] as f32;
                let m1 = dmin * mn[2 * j] as f32;
                let d2 = d * sc[2 * j + 1] as f32;
                let m2 = dmin * mn[2 * j + 1] as f32;
                let q = &q[32 * j..32 * j + 32];
                let y = &mut y[64 * j..64 * j + 64];
                for l in 0..32 {
                    y[l] = d1 * (q[l] & 0xF) as f32 - m1;
                    y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
                }
            }
        }),
        GgmlType::Q5K => blocks.for_each(|(b, y)| {
            let d = f16_at(b, 0);
            let dmin = f16_at(b, 2);
            let (sc, mn) = k4_scales_mins(&b[4..16]);
            let qh = &b[16..48];
            let ql = &b[48..176];
            for j in 0..4 {
                let d1 = d * sc[2 * j] as f32;
                let m1 = dmin * mn[2 * j] as f32;
                let d2 = d * sc[2 * j + 1] as f32;
                let m2 = dmin * mn[2 * j + 1] as f32;
                let ql = &ql[32 * j..32 * j + 32];
                let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
                let y = &mut y[64 * j..64 * j + 64];
                for l in 0..32 {
                    let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                    let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                    y[l] = d1 * ((ql[l] & 0xF) + h1) as f32 - m1;
                    y[l + 32] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
                }
            }
        }),
        GgmlType::Q6K => blocks.for_each(|(b, y)| {
            let d = f16_at(b, 208);
            let mut q = [0i8; QK_K];
            q6k_unpack(b, &mut q);
            let sc = &b[192..208];
            for (i, (yv, qv)) in y.iter_mut().zip(q.iter()).enumerate() {
                *yv = d * (sc[i / 16] as i8) as f32 * *qv as f32;
            }
        }),
    }
}

/// Unpack a Q6_K block's 6-bit quants (minus 32) into natural value order.
#[inline(always)]
pub(crate) fn q6k_unpack(b: &[u8], out: &mut [i8; QK_K]) {
    let ql = &b[0..128];
    let qh = &b[128..192];
    for n in 0..2 {
        let ql = &ql[64 * n..64 * n + 64];
        let qh = &qh[32 * n..32 * n + 32];
        let o = &mut out[128 * n..128 * n + 128];
        for l in 0..32 {
            o[l] = (((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8) - 32;
            o[l + 32] = (((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8) - 32;
            o[l + 64] = (((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8) - 32;
            o[l + 96] = (((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8) - 32;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Quantization (ggml `quantize_row_*_ref`)
// ---------------------------------------------------------------------------------------------

pub(crate) fn can_quantize(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::F32
            | GgmlType::F16
            | GgmlType::BF16
            | GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::Q8_1
            | GgmlType::Q8K
            | GgmlType::Q2K
            | GgmlType::Q3K
            | GgmlType::Q4K
            | GgmlType::Q5K
            | GgmlType::Q6K
    )
}

/// ggml `GGML_FP32_TO_BF16`: quiet NaNs, round to nearest even.
#[inline(always)]
pub(crate) fn f32_to_bf16_bits(v: f32) -> u16 {
    let u = v.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

fn amax_and_max(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    (amax, max)
}

fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        min = min.min(v);
        max = max.max(v);
    }
    (min, max)
}

/// Quantize; `ty` must satisfy [`can_quantize`] (otherwise this is a no-op).
pub(crate) fn quantize(ty: GgmlType, src: &[f32], dst: &mut [u8]) {
    let ts = ty.type_size();
    let bs = ty.block_size();
    let blocks = src.chunks_exact(bs).zip(dst.chunks_exact_mut(ts));
    match ty {
        GgmlType::F32 => blocks.for_each(|(x, b)| b.copy_from_slice(&x[0].to_le_bytes())),
        GgmlType::F16 => blocks.for_each(|(x, b)| put_f16(b, 0, x[0])),
        GgmlType::BF16 => {
            blocks.for_each(|(x, b)| b.copy_from_slice(&f32_to_bf16_bits(x[0]).to_le_bytes()))
        }
        GgmlType::Q8_0 => blocks.for_each(|(x, b)| {
            let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            put_f16(b, 0, d);
            for j in 0..QK {
                b[2 + j] = round_to_i8(x[j] * id) as u8;
            }
        }),
        GgmlType::Q8_1 => blocks.for_each(|(x, b)| {
            let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for j in 0..QK {
                let q = round_to_i8(x[j] * id);
                b[4 + j] = q as u8;
                sum += q as i32;
            }
            put_f16(b, 0, d);
            put_f16(b, 2, sum as f32 * d);
        }),
        GgmlType::Q5_0R8 => crate::repack::quantize(src, dst),
        GgmlType::Q4KR => crate::repack_q4k::quantize(src, dst),
        GgmlType::Q8K => blocks.for_each(|(x, b)| {
            let (amax, max) = amax_and_max(x);
            if amax == 0.0 {
                b.fill(0);
                return;
            }
            let iscale = -127.0 / max;
            for j in 0..QK_K {
                let v = nearest_int(iscale * x[j]).min(127);
                b[4 + j] = v as i8 as u8;
            }
            for g in 0..16 {
                let s: i32 = b[4 + 16 * g..4 + 16 * g + 16]
                    .iter()
                    .map(|&q| q as i8 as i32)
                    .sum();
                let off = 260 + 2 * g;
                b[off..off + 2].copy_from_slice(&(s as i16).to_le_bytes());
            }
            b[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
        }),
        GgmlType::Q4_0 => blocks.for_each(|(x, b)| {
            let (_, max) = amax_and_max(x);
            let d = max / -8.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            put_f16(b, 0, d);
            for j in 0..16 {
                let x0 = ((x[j] * id + 8.5) as i8).min(15) as u8;
                let x1 = ((x[j + 16] * id + 8.5) as i8).min(15) as u8;
                b[2 + j] = x0 | (x1 << 4);
            }
        }),
        GgmlType::Q4_1 => blocks.for_each(|(x, b)| {
            let (min, max) = min_max(x);
            let d = (max - min) / 15.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            put_f16(b, 0, d);
            put_f16(b, 2, min);
            for j in 0..16 {
                let x0 = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
                let x1 = (((x[j + 16] - min) * id + 0.5) as i8).min(15) as u8;
                b[4 + j] = x0 | (x1 << 4);
            }
        }),
        GgmlType::Q5_0 => blocks.for_each(|(x, b)| {
            let (_, max) = amax_and_max(x);
            let d = max / -16.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            put_f16(b, 0, d);
            let mut qh = 0u32;
            for j in 0..16 {
                let x0 = ((x[j] * id + 16.5) as i8).min(31) as u8;
                let x1 = ((x[j + 16] * id + 16.5) as i8).min(31) as u8;
                b[6 + j] = (x0 & 0xF) | ((x1 & 0xF) << 4);
                qh |= (((x0 & 0x10) >> 4) as u32) << j;
                qh |= (((x1 & 0x10) >> 4) as u32) << (j + 16);
            }
            b[2..6].copy_from_slice(&qh.to_le_bytes());
        }),
        GgmlType::Q5_1 => blocks.for_each(|(x, b)| {
            let (min, max) = min_max(x);
            let d = (max - min) / 31.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            put_f16(b, 0, d);
            put_f16(b, 2, min);
            let mut qh = 0u32;
            for j in 0..16 {
                let x0 = (((x[j] - min) * id + 0.5) as u8).min(31);
                let x1 = (((x[j + 16] - min) * id + 0.5) as u8).min(31);
                b[8 + j] = (x0 & 0xF) | ((x1 & 0xF) << 4);
                qh |= (((x0 & 0x10) >> 4) as u32) << j;
                qh |= (((x1 & 0x10) >> 4) as u32) << (j + 16);
            }
            b[4..8].copy_from_slice(&qh.to_le_bytes());
        }),
        GgmlType::Q2K => blocks.for_each(|(x, b)| kquant::quantize_q2k_block(x, b)),
        GgmlType::Q3K => blocks.for_each(|(x, b)| kquant::quantize_q3k_block(x, b)),
        GgmlType::Q4K => blocks.for_each(|(x, b)| kquant::quantize_q4k_block(x, b)),
        GgmlType::Q5K => blocks.for_each(|(x, b)| kquant::quantize_q5k_block(x, b)),
        GgmlType::Q6K => blocks.for_each(|(x, b)| kquant::quantize_q6k_block(x, b)),
    }
}

// ---------------------------------------------------------------------------------------------
// Dot products (ggml `ggml_vec_dot_*_generic`). `w` holds `n` values of the weight type, `a`
// holds `n` values of its `vec_dot_type`.
// ---------------------------------------------------------------------------------------------

#[inline(always)]
fn dot_i8(a: &[u8], b: &[u8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| x as i8 as i32 * y as i8 as i32)
        .sum()
}

pub(crate) fn vec_dot(ty: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    if ty == GgmlType::Q5_0R8 {
        return crate::repack::vec_dot(n, w, a);
    }
    if ty == GgmlType::Q4KR {
        return crate::repack_q4k::vec_dot(n, w, a);
    }
    let nb = n / ty.block_size();
    let wb = w.chunks_exact(ty.type_size()).take(nb);
    let at = ty.vec_dot_type();
    let ab = a.chunks_exact(at.type_size());
    let mut sumf = 0.0f32;
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
            let mut tmp = [0.0f32; 1];
            for (x, y) in wb.zip(ab) {
                dequantize(ty, x, &mut tmp);
                sumf += tmp[0] * f32_at(y, 0);
            }
        }
        GgmlType::Q4_0 => {
            for (x, y) in wb.zip(ab) {
                let mut sumi = 0i32;
                for j in 0..16 {
                    let v0 = (x[2 + j] & 0xF) as i32 - 8;
                    let v1 = (x[2 + j] >> 4) as i32 - 8;
                    sumi += v0 * y[2 + j] as i8 as i32 + v1 * y[2 + j + 16] as i8 as i32;
                }
                sumf += sumi as f32 * f16_at(x, 0) * f16_at(y, 0);
            }
        }
        GgmlType::Q4_1 => {
            for (x, y) in wb.zip(ab) {
                let mut sumi = 0i32;
                for j in 0..16 {
                    let v0 = (x[4 + j] & 0xF) as i32;
                    let v1 = (x[4 + j] >> 4) as i32;
                    sumi += v0 * y[4 + j] as i8 as i32 + v1 * y[4 + j + 16] as i8 as i32;
                }
                sumf += sumi as f32 * f16_at(x, 0) * f16_at(y, 0) + f16_at(x, 2) * f16_at(y, 2);
            }
        }
        GgmlType::Q5_0 => {
            for (x, y) in wb.zip(ab) {
                let qh = u32_at(x, 2);
                let mut sumi = 0i32;
                for j in 0..16 {
                    let v0 = ((x[6 + j] & 0xF) as u32 | (((qh >> j) & 1) << 4)) as i32 - 16;
                    let v1 = ((x[6 + j] >> 4) as u32 | (((qh >> (j + 16)) & 1) << 4)) as i32 - 16;
                    sumi += v0 * y[2 + j] as i8 as i32 + v1 * y[2 + j + 16] as i8 as i32;
                }
                sumf += sumi as f32 * f16_at(x, 0) * f16_at(y, 0);
            }
        }
        GgmlType::Q5_1 => {
            for (x, y) in wb.zip(ab) {
                let qh = u32_at(x, 4);
                let mut sumi = 0i32;
                for j in 0..16 {
                    let v0 = ((x[8 + j] & 0xF) as u32 | (((qh >> j) & 1) << 4)) as i32;
                    let v1 = ((x[8 + j] >> 4) as u32 | (((qh >> (j + 16)) & 1) << 4)) as i32;
                    sumi += v0 * y[4 + j] as i8 as i32 + v1 * y[4 + j + 16] as i8 as i32;
                }
                sumf += sumi as f32 * f16_at(x, 0) * f16_at(y, 0) + f16_at(x, 2) * f16_at(y, 2);
            }
        }
        GgmlType::Q8_0 => {
            for (x, y) in wb.zip(ab) {
                sumf += dot_i8(&x[2..34], &y[2..34]) as f32 * f16_at(x, 0) * f16_at(y, 0);
            }
        }
        GgmlType::Q8_1 => {
            for (x, y) in wb.zip(ab) {
                sumf += dot_i8(&x[4..36], &y[2..34]) as f32 * f16_at(x, 0) * f16_at(y, 0);
            }
        }
        GgmlType::Q5_0R8 | GgmlType::Q4KR => {} // handled above (repacked layouts)
        GgmlType::Q8K => {
            for (x, y) in wb.zip(ab) {
                sumf += dot_i8(&x[4..260], &y[4..260]) as f32 * f32_at(x, 0) * f32_at(y, 0);
            }
        }
        GgmlType::Q2K => {
            for (x, y) in wb.zip(ab) {
                let sc = &x[0..16];
                let q = &x[16..80];
                let q8 = &y[4..260];
                let (mut sumi, mut summ) = (0i32, 0i32);
                for (g, &s) in sc.iter().enumerate() {
                    summ += (s >> 4) as i32 * bsum(y, g);
                    // group g: values 16g..16g+16; 128-chunk n = g/8, shift = 2*((g%8)/2), half = g%2
                    let (n, shift, half) = (g / 8, 2 * ((g % 8) / 2), g % 2);
                    let mut s16 = 0i32;
                    for l in 0..16 {
                        let v = ((q[32 * n + 16 * half + l] >> shift) & 3) as i32;
                        s16 += v * q8[16 * g + l] as i8 as i32;
                    }
                    sumi += (s & 0xF) as i32 * s16;
                }
                let yd = f32_at(y, 0);
                sumf += yd * f16_at(x, 80) * sumi as f32 - yd * f16_at(x, 82) * summ as f32;
            }
        }
        GgmlType::Q3K => {
            for (x, y) in wb.zip(ab) {
                let hm = &x[0..32];
                let q = &x[32..96];
                let scales = q3k_scales(&x[96..108]);
                let q8 = &y[4..260];
                let mut sumi = 0i32;
                for (g, &s) in scales.iter().enumerate() {
                    let (n, j, half) = (g / 8, (g % 8) / 2, g % 2);
                    let (shift, m) = (2 * j, 1u8 << (4 * n + j));
                    let mut s16 = 0i32;
                    for l in 0..16 {
                        let k = 16 * half + l;
                        let v = ((q[32 * n + k] >> shift) & 3) as i32
                            - if hm[k] & m != 0 { 0 } else { 4 };
                        s16 += v * q8[16 * g + l] as i8 as i32;
                    }
                    sumi += s as i32 * s16;
                }
                sumf += f32_at(y, 0) * f16_at(x, 108) * sumi as f32;
            }
        }
        GgmlType::Q4K => {
            for (x, y) in wb.zip(ab) {
                let (sc, mn) = k4_scales_mins(&x[4..16]);
                let q = &x[16..144];
                let q8 = &y[4..260];
                let (mut sumi, mut summ) = (0i32, 0i32);
                for j in 0..4 {
                    let (mut s0, mut s1) = (0i32, 0i32);
                    for l in 0..32 {
                        s0 += (q[32 * j + l] & 0xF) as i32 * q8[64 * j + l] as i8 as i32;
                        s1 += (q[32 * j + l] >> 4) as i32 * q8[64 * j + 32 + l] as i8 as i32;
                    }
                    sumi += sc[2 * j] as i32 * s0 + sc[2 * j + 1] as i32 * s1;
                    summ += mn[2 * j] as i32 * (bsum(y, 4 * j) + bsum(y, 4 * j + 1));
                    summ += mn[2 * j + 1] as i32 * (bsum(y, 4 * j + 2) + bsum(y, 4 * j + 3));
                }
                let yd = f32_at(y, 0);
                sumf += yd * f16_at(x, 0) * sumi as f32 - yd * f16_at(x, 2) * summ as f32;
            }
        }
        GgmlType::Q5K => {
            for (x, y) in wb.zip(ab) {
                let (sc, mn) = k4_scales_mins(&x[4..16]);
                let qh = &x[16..48];
                let q = &x[48..176];
                let q8 = &y[4..260];
                let (mut sumi, mut summ) = (0i32, 0i32);
                for j in 0..4 {
                    let (mut s0, mut s1) = (0i32, 0i32);
                    for l in 0..32 {
                        let h0 = ((qh[l] >> (2 * j)) & 1) << 4;
                        let h1 = ((qh[l] >> (2 * j + 1)) & 1) << 4;
                        s0 += ((q[32 * j + l] & 0xF) | h0) as i32 * q8[64 * j + l] as i8 as i32;
                        s1 += ((q[32 * j + l] >> 4) | h1) as i32 * q8[64 * j + 32 + l] as i8 as i32;
                    }
                    sumi += sc[2 * j] as i32 * s0 + sc[2 * j + 1] as i32 * s1;
                    summ += mn[2 * j] as i32 * (bsum(y, 4 * j) + bsum(y, 4 * j + 1));
                    summ += mn[2 * j + 1] as i32 * (bsum(y, 4 * j + 2) + bsum(y, 4 * j + 3));
                }
                let yd = f32_at(y, 0);
                sumf += yd * f16_at(x, 0) * sumi as f32 - yd * f16_at(x, 2) * summ as f32;
            }
        }
        GgmlType::Q6K => {
            let mut q = [0i8; QK_K];
            for (x, y) in wb.zip(ab) {
                q6k_unpack(x, &mut q);
                let sc = &x[192..208];
                let q8 = &y[4..260];
                let mut sumi = 0i32;
                for g in 0..16 {
                    let mut s16 = 0i32;
                    for l in 0..16 {
                        s16 += q[16 * g + l] as i32 * q8[16 * g + l] as i8 as i32;
                    }
                    sumi += sc[g] as i8 as i32 * s16;
                }
                sumf += f32_at(y, 0) * f16_at(x, 208) * sumi as f32;
            }
        }
    }
    sumf
}

/// `bsums[g]` of a Q8_K block.
#[inline(always)]
fn bsum(y: &[u8], g: usize) -> i32 {
    i16::from_le_bytes([y[260 + 2 * g], y[261 + 2 * g]]) as i32
}

#[cfg(test)]
mod tests {
    use super::round_to_i8;

    #[test]
    fn round_to_i8_matches_f32_round_cast() {
        let mut cases = vec![
            0.0f32,
            -0.0,
            0.5,
            -0.5,
            1.5,
            -1.5,
            2.5,
            -2.5,
            0.49999997,
            -0.49999997,
            126.5,
            127.0,
            127.49,
            127.5,
            127.9,
            128.5,
            -127.5,
            -128.0,
            -128.49,
            -128.5,
            -129.5,
            1e9,
            -1e9,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            8388607.5,
            1e-40,
        ];
        // Every half-integer and its float neighbours across the i8 range and beyond.
        for k in -300..300 {
            let h = k as f32 + 0.5;
            cases.extend([
                h,
                f32::from_bits(h.to_bits() + 1),
                f32::from_bits(h.to_bits() - 1),
            ]);
        }
        let mut s = 0x2545F4914F6CDD1Du64;
        for _ in 0..200_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            cases.push((s >> 40) as f32 / (1u64 << 24) as f32 * 300.0 - 150.0);
        }
        for v in cases {
            assert_eq!(round_to_i8(v), v.round() as i8, "{v:e}");
        }
    }
}
