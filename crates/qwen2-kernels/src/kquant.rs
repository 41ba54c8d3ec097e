//! k-quant weight quantizers, ports of ggml's `quantize_row_q{2,3,4,5,6}_K_ref` (no importance
//! matrix) with their scale searches `make_qkx2_quants`, `make_qx_quants` and `make_q3_quants`.
//!
//! Every float operation is done in the same order and precision as the C code (f32, no fused
//! multiply-add), and the integer truncations (`int8_t l = ...`, `uint8_t ls = ...`) are kept,
//! so the bytes equal llama.cpp's for the same input (checked by `tests/fixtures.rs` against
//! bytes from llama.cpp's own `libggml-base`).

use crate::scalar::nearest_int;
use crate::types::QK_K;
use half::f16;

const GROUP_MAX_EPS: f32 = 1e-15;

/// `GGML_FP32_TO_FP16` then back: the value a reader will see.
#[inline(always)]
fn f16_round(v: f32) -> (u16, f32) {
    let h = f16::from_f32(v);
    (h.to_bits(), h.to_f32())
}

#[inline(always)]
fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

/// ggml `make_qkx2_quants`: asymmetric (scale, min) fit of `x` to `0..=nmax` minimising the
/// weighted error over a small grid of scales. Returns the scale; `the_min` gets `-min`.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    the_min: &mut f32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> f32 {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out[..n].fill(0);
        *the_min = -min;
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min));
        l_out[i] = l.clamp(0, nmax) as u8;
        let mut diff = scale * l_out[i] as f32 + min - x[i];
        diff = if use_mad { diff.abs() } else { diff * diff };
        best_error += weights[i] * diff;
    }
    if nstep < 1 {
        *the_min = -min;
        return scale;
    }
    let mut laux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmaxf) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let mut diff = this_scale * laux[i] as f32 + this_min - x[i];
                diff = if use_mad { diff.abs() } else { diff * diff };
                cur_error += weights[i] * diff;
            }
            if cur_error < best_error {
                l_out[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    scale
}

/// The first value of largest magnitude in `x` and that magnitude (ggml's `max`/`amax` scan;
/// `(0, 0)` for an empty or all-zero `x`).
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    (max, amax)
}

/// The symmetric levels `l = nearest_int(iscale * x)` clamped to `-nmax..nmax-1`, each handed
/// to `store(i, l)`, and ggml's sums `(Σ w·x·l, Σ w·l²)` with `w = x²`, in ggml's order.
#[inline(always)]
fn symmetric_fit(
    nmax: i32,
    iscale: f32,
    x: &[f32],
    mut store: impl FnMut(usize, i32),
) -> (f32, f32) {
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (i, &xi) in x.iter().enumerate() {
        let l = nearest_int(iscale * xi).clamp(-nmax, nmax - 1);
        store(i, l);
        let w = xi * xi;
        let lf = l as f32;
        sumlx += w * xi * lf;
        suml2 += w * lf * lf;
    }
    (sumlx, suml2)
}

/// ggml `make_qx_quants` with `rmse_type = 1` and no importance weights (`w = x*x`):
/// symmetric fit of `x` to `-nmax..nmax-1`, stored as `l + nmax`.
fn make_qx_quants_rmse1(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    let n = x.len();
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let (sumlx, suml2) = symmetric_fit(nmax, -nmaxf / max, x, |i, l| {
        l_out[i] = (l + nmax) as i8;
    });
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        let iscale = -(nmaxf + 0.1 * is as f32) / max;
        let (sumlx, suml2) = symmetric_fit(nmax, iscale, x, |_, _| {});
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                let l = nearest_int(iscale * x[i]);
                l_out[i] = (nmax + l.clamp(-nmax, nmax - 1)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml `make_q3_quants(n, nmax, x, L, do_rmse = true)`.
fn make_q3_quants(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    let n = x.len();
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let (mut sumlx, mut suml2) = symmetric_fit(nmax, -(nmax as f32) / max, x, |i, l| {
        l_out[i] = l as i8;
    });
    for _itry in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = x[i] * x[i];
            let li = l_out[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = nearest_int(x[i] * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != l_out[i] as i32 {
                    let nl = new_l as f32;
                    slx += w * x[i] * nl;
                    sl2 += w * nl * nl;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_out[i] = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for l in l_out[..n].iter_mut() {
        *l += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Pack 6-bit scale/min pairs as Q4_K/Q5_K store them (12 bytes).
fn pack_k4_scales(scales: &mut [u8], j: usize, ls: u8, lm: u8) {
    if j < 4 {
        scales[j] = ls;
        scales[j + 4] = lm;
    } else {
        scales[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
        scales[j - 4] |= (ls >> 4) << 6;
        scales[j] |= (lm >> 4) << 6;
    }
}

fn get_scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Shared body of Q4_K / Q5_K: sub-block (scale, min) search, 6-bit scale packing, then the
/// final quants `L` (0..=nmax) against the rounded scales. Writes d, dmin, scales[12].
fn q45k_block(
    x: &[f32],
    b: &mut [u8],
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> [u8; QK_K] {
    let mut l = [0u8; QK_K];
    let mut mins = [0.0f32; 8];
    let mut scales = [0.0f32; 8];
    let mut weights = [0.0f32; 32];
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        scales[j] = make_qkx2_quants(
            nmax,
            xs,
            &weights,
            &mut l[32 * j..32 * j + 32],
            &mut mins[j],
            rmin,
            rdelta,
            nstep,
            false,
        );
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let sc = &mut b[4..16];
    sc.fill(0);
    for j in 0..8 {
        // C: `uint8_t ls = nearest_int(...)` truncates to 8 bits before the MIN.
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        pack_k4_scales(sc, j, ls, lm);
    }
    let (dbits, d_all) = f16_round(max_scale / 63.0);
    let (mbits, m_all) = f16_round(max_min / 63.0);
    put_u16(b, 0, dbits);
    put_u16(b, 2, mbits);
    for j in 0..8 {
        let (s, m) = get_scale_min_k4(j, &b[4..16]);
        let d = d_all * s as f32;
        if d == 0.0 {
            continue;
        }
        let dm = m_all * m as f32;
        for ii in 0..32 {
            let q = nearest_int((x[32 * j + ii] + dm) / d);
            l[32 * j + ii] = q.clamp(0, nmax) as u8;
        }
    }
    l
}

/// ggml `quantize_row_q4_K_ref`, one 256-value block into 144 bytes.
pub(crate) fn quantize_q4k_block(x: &[f32], b: &mut [u8]) {
    let l = q45k_block(x, b, 15, -1.0, 0.1, 20);
    let q = &mut b[16..144];
    for (jj, j) in (0..QK_K).step_by(64).enumerate() {
        for i in 0..32 {
            q[32 * jj + i] = l[j + i] | (l[j + i + 32] << 4);
        }
    }
}

/// ggml `quantize_row_q5_K_ref`, one 256-value block into 176 bytes.
pub(crate) fn quantize_q5k_block(x: &[f32], b: &mut [u8]) {
    let l = q45k_block(x, b, 31, -0.5, 0.1, 15);
    let (qh, ql) = b[16..176].split_at_mut(32);
    qh.fill(0);
    let (mut m1, mut m2) = (1u8, 2u8);
    for (nn, n) in (0..QK_K).step_by(64).enumerate() {
        for j in 0..32 {
            let mut l1 = l[n + j];
            if l1 > 15 {
                l1 -= 16;
                qh[j] |= m1;
            }
            let mut l2 = l[n + j + 32];
            if l2 > 15 {
                l2 -= 16;
                qh[j] |= m2;
            }
            ql[32 * nn + j] = l1 | (l2 << 4);
        }
        m1 <<= 2;
        m2 <<= 2;
    }
}

/// ggml `quantize_row_q6_K_ref`, one 256-value block into 210 bytes (ql[128] qh[64] sc[16] d).
pub(crate) fn quantize_q6k_block(x: &[f32], b: &mut [u8]) {
    let mut l = [0i8; QK_K];
    let mut scales = [0.0f32; 16];
    for (ib, s) in scales.iter_mut().enumerate() {
        *s = make_qx_quants_rmse1(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..16 * ib + 16]);
    }
    let (max_scale, max_abs_scale) = signed_absmax(&scales);
    if max_abs_scale < GROUP_MAX_EPS {
        b.fill(0);
        return;
    }
    let iscale = -128.0 / max_scale;
    let (dbits, d_all) = f16_round(1.0 / iscale);
    put_u16(b, 208, dbits);
    let mut sc = [0i8; 16];
    for ib in 0..16 {
        sc[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
        b[192 + ib] = sc[ib] as u8;
    }
    for j in 0..16 {
        let d = d_all * sc[j] as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
            l[16 * j + ii] = (q + 32) as i8;
        }
    }
    let (ql, rest) = b.split_at_mut(128);
    let qh = &mut rest[..64];
    let lu = |i: usize| l[i] as u8;
    for (jj, j) in (0..QK_K).step_by(128).enumerate() {
        let (ql, qh) = (
            &mut ql[64 * jj..64 * jj + 64],
            &mut qh[32 * jj..32 * jj + 32],
        );
        for i in 0..32 {
            let q1 = lu(j + i) & 0xF;
            let q2 = lu(j + i + 32) & 0xF;
            let q3 = lu(j + i + 64) & 0xF;
            let q4 = lu(j + i + 96) & 0xF;
            ql[i] = q1 | (q3 << 4);
            ql[i + 32] = q2 | (q4 << 4);
            qh[i] = (lu(j + i) >> 4)
                | ((lu(j + i + 32) >> 4) << 2)
                | ((lu(j + i + 64) >> 4) << 4)
                | ((lu(j + i + 96) >> 4) << 6);
        }
    }
}

/// ggml `quantize_row_q3_K_ref`, one 256-value block into 110 bytes (hmask[32] qs[64] sc[12] d).
pub(crate) fn quantize_q3k_block(x: &[f32], b: &mut [u8]) {
    let mut l = [0i8; QK_K];
    let mut scales = [0.0f32; 16];
    for j in 0..16 {
        scales[j] = make_q3_quants(4, &x[16 * j..16 * j + 16], &mut l[16 * j..16 * j + 16]);
    }
    let (max_scale, _) = signed_absmax(&scales);
    let sc = &mut b[96..108];
    sc.fill(0);
    let d_all;
    if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        for j in 0..16 {
            // C: `int8_t l = nearest_int(...)` truncates to 8 bits before the clamp.
            let q = (nearest_int(iscale * scales[j]) as i8 as i32).clamp(-32, 31) + 32;
            if j < 8 {
                sc[j] = (q & 0xF) as u8;
            } else {
                sc[j - 8] |= ((q & 0xF) << 4) as u8;
            }
            sc[j % 4 + 8] |= ((q >> 4) << (2 * (j / 4))) as u8;
        }
        let (bits, v) = f16_round(1.0 / iscale);
        put_u16(b, 108, bits);
        d_all = v;
    } else {
        put_u16(b, 108, 0);
        d_all = 0.0;
    }
    for j in 0..16 {
        let sc = &b[96..108];
        let lo = if j < 8 { sc[j] & 0xF } else { sc[j - 8] >> 4 };
        let s = ((lo | (((sc[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) as i8).wrapping_sub(32);
        let d = d_all * s as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / d).clamp(-4, 3);
            l[16 * j + ii] = (q + 4) as i8;
        }
    }
    let (hmask, rest) = b.split_at_mut(32);
    hmask.fill(0);
    let (mut m, mut hm) = (0usize, 1u8);
    for lj in l.iter_mut() {
        if *lj > 3 {
            hmask[m] |= hm;
            *lj -= 4;
        }
        m += 1;
        if m == QK_K / 8 {
            m = 0;
            hm <<= 1;
        }
    }
    pack_2bit(&l.map(|v| v as u8), &mut rest[..64]);
}

/// Q2_K/Q3_K 2-bit packing: 4 values 32 apart per byte, per 128-value half.
fn pack_2bit(l: &[u8; QK_K], qs: &mut [u8]) {
    for (jj, j) in (0..QK_K).step_by(128).enumerate() {
        for i in 0..32 {
            qs[32 * jj + i] =
                l[j + i] | (l[j + i + 32] << 2) | (l[j + i + 64] << 4) | (l[j + i + 96] << 6);
        }
    }
}

/// ggml `quantize_row_q2_K_ref`, one 256-value block into 84 bytes (scales[16] qs[64] d dmin).
pub(crate) fn quantize_q2k_block(x: &[f32], b: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let mut weights = [0.0f32; 16];
    let mut mins = [0.0f32; 16];
    let mut scales = [0.0f32; 16];
    const Q4SCALE: f32 = 15.0;
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..16 {
        let xs = &x[16 * j..16 * j + 16];
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = v.abs();
        }
        scales[j] = make_qkx2_quants(
            3,
            xs,
            &weights,
            &mut l[16 * j..16 * j + 16],
            &mut mins[j],
            -0.5,
            0.1,
            15,
            true,
        );
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let sc = &mut b[0..16];
    let d_all;
    if max_scale > 0.0 {
        let iscale = Q4SCALE / max_scale;
        for j in 0..16 {
            sc[j] = nearest_int(iscale * scales[j]) as u8;
        }
        let (bits, v) = f16_round(max_scale / Q4SCALE);
        put_u16(b, 80, bits);
        d_all = v;
    } else {
        sc.fill(0);
        put_u16(b, 80, 0);
        d_all = 0.0;
    }
    let m_all = if max_min > 0.0 {
        let iscale = Q4SCALE / max_min;
        for j in 0..16 {
            b[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
        }
        let (bits, v) = f16_round(max_min / Q4SCALE);
        put_u16(b, 82, bits);
        v
    } else {
        put_u16(b, 82, 0);
        0.0
    };
    for j in 0..16 {
        let d = d_all * (b[j] & 0xF) as f32;
        if d == 0.0 {
            continue;
        }
        let dm = m_all * (b[j] >> 4) as f32;
        for ii in 0..16 {
            let q = nearest_int((x[16 * j + ii] + dm) / d);
            l[16 * j + ii] = q.clamp(0, 3) as u8;
        }
    }
    pack_2bit(&l, &mut b[16..80]);
}
