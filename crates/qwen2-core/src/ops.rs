//! The small f32 operations of the forward pass: RMSNorm, rotary embeddings, causal attention,
//! SwiGLU, softmax. All in f32 as transformers computes them (PITFALLS 1: Qwen2 overflows f16
//! in attention). The matmuls, where the time goes, live in `qwen2-kernels`.

use rayon::prelude::*;

use crate::config::{yarn_mscale, Config, RopeScaling};
use crate::error::Result;
use crate::kv_cache::KvView;
pub use qwen2_kernels::AttnShape;

/// `out = x / sqrt(mean(x²) + eps) * w`, row by row (Qwen2RMSNorm: normalise in f32, then
/// multiply by the weight).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = w.len();
    for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let ss: f32 = xr.iter().map(|v| v * v).sum::<f32>() / n as f32;
        let scale = 1.0 / (ss + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = g * (v * scale);
        }
    }
}

/// `gate[i] = silu(gate[i]) * up[i]` (SwiGLU), in place. Element-wise, so splitting it over
/// the pool gives the same bits; it is split only when large enough to pay for the fork (the
/// serial version was ~35% of the engine thread's own CPU in a batched serve, with the pool
/// idle meanwhile).
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    const CHUNK: usize = 8192;
    // Equal lengths by construction (the callers' gate and up rows), so this cannot fail.
    let one = |g: &mut [f32], up: &[f32]| {
        qwen2_kernels::silu_mul(g, up).expect("silu_mul: gate and up have equal lengths")
    };
    if gate.len() < 2 * CHUNK {
        one(gate, up);
    } else {
        gate.par_chunks_mut(CHUNK)
            .zip(up.par_chunks(CHUNK))
            .for_each(|(g, u)| one(g, u));
    }
}

/// Numerically stable softmax in place.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Rotary embedding frequencies (transformers' `rope_init_fn`s), with linear, dynamic-NTK and
/// YaRN scaling, each computed with transformers' f32/f64 rounding.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
    /// Multiplies cos and sin (YaRN's attention factor; 1 otherwise).
    attention_scaling: f32,
    head_dim: usize,
    /// Dynamic NTK: `(factor, max_position_embeddings, rope_theta)`.
    dynamic: Option<(f64, usize, f64)>,
}

/// `base ** (arange(0, dim, 2).float() / dim)` as torch computes it: in f32.
fn pos_freqs(base: f32, dim: usize) -> Vec<f32> {
    (0..dim / 2)
        .map(|i| base.powf((2 * i) as f32 / dim as f32))
        .collect()
}

impl Rope {
    pub fn new(cfg: &Config) -> Self {
        let dim = cfg.head_dim;
        let base = cfg.rope_theta;
        let pos_freqs = pos_freqs(base as f32, dim);
        let mut attention_scaling = 1.0f32;
        let mut dynamic = None;
        let inv_freq = match &cfg.rope_scaling {
            None => pos_freqs.iter().map(|p| 1.0 / p).collect(),
            Some(RopeScaling::Linear { factor }) => {
                pos_freqs.iter().map(|p| 1.0 / p / *factor as f32).collect()
            }
            // At init (and while sequences stay within max_position_embeddings) dynamic NTK
            // is the default rope; `for_seq_len` recomputes it past that.
            Some(RopeScaling::Dynamic { factor }) => {
                dynamic = Some((*factor, cfg.max_position_embeddings, base));
                pos_freqs.iter().map(|p| 1.0 / p).collect()
            }
            Some(RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                attention_factor,
                mscale,
                mscale_all_dim,
                truncate,
            }) => {
                let factor = *factor;
                attention_scaling = match (attention_factor, mscale, mscale_all_dim) {
                    (Some(a), _, _) => *a,
                    (None, Some(m), Some(mad)) if *m != 0.0 && *mad != 0.0 => {
                        yarn_mscale(factor, *m) / yarn_mscale(factor, *mad)
                    }
                    _ => yarn_mscale(factor, 1.0),
                } as f32;
                // Python float (f64) math, as transformers' find_correction_range.
                let find_dim = |rot: f64| {
                    (dim as f64
                        * (*original_max_position_embeddings as f64
                            / (rot * 2.0 * std::f64::consts::PI))
                            .ln())
                        / (2.0 * base.ln())
                };
                let (mut low, mut high) = (find_dim(*beta_fast), find_dim(*beta_slow));
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let low = low.max(0.0);
                let mut high = high.min(dim as f64 - 1.0);
                if low == high {
                    high += 0.001; // transformers: "prevent singularity"
                }
                // (arange(f32) - low) / (high - low): f32 tensor ops with python scalars.
                let (low32, span32) = (low as f32, (high - low) as f32);
                pos_freqs
                    .iter()
                    .enumerate()
                    .map(|(i, &p)| {
                        let ramp = ((i as f32 - low32) / span32).clamp(0.0, 1.0);
                        let extrapolation_factor = 1.0 - ramp;
                        let inter = 1.0 / (factor as f32 * p);
                        let extra = 1.0 / p;
                        inter * (1.0 - extrapolation_factor) + extra * extrapolation_factor
                    })
                    .collect()
            }
        };
        Rope {
            inv_freq,
            attention_scaling,
            head_dim: dim,
            dynamic,
        }
    }

    /// The inverse frequencies, `head_dim / 2` of them.
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// The factor cos and sin are multiplied by (YaRN's attention factor, else 1).
    pub fn attention_scaling(&self) -> f32 {
        self.attention_scaling
    }

    /// Dynamic NTK only: the `max_position_embeddings` past which the frequencies change.
    pub fn dynamic_threshold(&self) -> Option<usize> {
        self.dynamic.map(|(_, m, _)| m)
    }

    /// Dynamic NTK only: the rope transformers' `_compute_dynamic_ntk_parameters` computes for
    /// `seq_len` (`max(seq_len, max_position_embeddings)`). `None` for other rope types.
    /// transformers computes the new base in f32 (seq_len is a tensor there); so do we.
    pub fn for_seq_len(&self, seq_len: usize) -> Option<Rope> {
        let (factor, max_pos, theta) = self.dynamic?;
        let dim = self.head_dim;
        let s = seq_len.max(max_pos) as f32;
        let t = (factor as f32 * s) / max_pos as f32 - (factor - 1.0) as f32;
        let base = theta as f32 * t.powf((dim as f64 / (dim as f64 - 2.0)) as f32);
        Some(Rope {
            inv_freq: pos_freqs(base, dim).iter().map(|p| 1.0 / p).collect(),
            attention_scaling: 1.0,
            head_dim: dim,
            dynamic: None,
        })
    }

    /// cos/sin for one position, each `head_dim / 2` long.
    pub fn cos_sin(&self, pos: usize, cos: &mut [f32], sin: &mut [f32]) {
        for (i, &f) in self.inv_freq.iter().enumerate() {
            // transformers forms the angle as an f32 product; keep that rounding.
            let angle = pos as f32 * f;
            cos[i] = angle.cos() * self.attention_scaling;
            sin[i] = angle.sin() * self.attention_scaling;
        }
    }

    /// Rotate every head of `x` (`[n_tokens, n_heads * head_dim]`) in place, token `t` at
    /// position `pos0 + t`. NeoX layout (rotate_half): pairs are (i, i + head_dim/2).
    pub fn apply(&self, x: &mut [f32], n_heads: usize, pos0: usize) {
        let hd = self.head_dim;
        let half = hd / 2;
        let row = n_heads * hd;
        x.par_chunks_mut(row).enumerate().for_each(|(t, xr)| {
            let mut cos = vec![0f32; half];
            let mut sin = vec![0f32; half];
            self.cos_sin(pos0 + t, &mut cos, &mut sin);
            for head in xr.chunks_exact_mut(hd) {
                let (a, b) = head.split_at_mut(half);
                for i in 0..half {
                    let (x0, x1) = (a[i], b[i]);
                    a[i] = x0 * cos[i] - x1 * sin[i];
                    b[i] = x1 * cos[i] + x0 * sin[i];
                }
            }
        });
    }
}

/// Causal grouped-query attention for `shape.n_new` query rows against a cache holding
/// `pos0 + n_new` key/value rows (the new ones already appended): `qwen2_kernels::attention`,
/// the tiled flash-attention kernel (f32 K·Q, online softmax and P·V; batch invariant per row).
///
/// `q`, `out`: `[n_new, n_heads * head_dim]`. `shape.window`: sliding-window size; the query at
/// position `i` sees key `j` iff `j <= i` and `i - j < window` — transformers'
/// `sliding_window_overlay` (`kv_idx > q_idx - window`), checked by
/// scripts/fixtures/long_context.py.
pub fn attention(q: &[f32], kv: KvView<'_>, out: &mut [f32], shape: &AttnShape) -> Result<()> {
    use qwen2_kernels::KvData;
    let (k, v) = match kv {
        KvView::F32(k, v) => (KvData::F32(k), KvData::F32(v)),
        KvView::F16(k, v) => (KvData::F16(k), KvData::F16(v)),
        KvView::Q8_0(k, v) => (KvData::Q8_0(k), KvData::Q8_0(v)),
    };
    qwen2_kernels::attention(q, k, v, out, shape)?;
    Ok(())
}

/// Cached keys or values of one layer, read as f32: f32 borrowed as is, f16 widened, Q8_0
/// dequantized, one head's slice at a time (for [`attention_reference`]).
pub trait KvRows: Sync {
    /// Values `[off, off + buf.len())` of the flat `[len, kv_dim]` array, as f32.
    fn read<'a>(&'a self, off: usize, buf: &'a mut [f32]) -> &'a [f32];
}

impl KvRows for [f32] {
    #[inline]
    fn read<'a>(&'a self, off: usize, buf: &'a mut [f32]) -> &'a [f32] {
        &self[off..off + buf.len()]
    }
}

impl KvRows for [half::f16] {
    #[inline]
    fn read<'a>(&'a self, off: usize, buf: &'a mut [f32]) -> &'a [f32] {
        use half::slice::HalfFloatSliceExt;
        self[off..off + buf.len()].convert_to_f32_slice(buf);
        buf
    }
}

/// ggml Q8_0 blocks (f16 scale, then 32 i8) laid end to end: value `i` is in block `i / 32`.
/// A head's slice may start or end inside a block (head_dim < 32 in tiny models).
pub struct Q8Rows<'a>(pub &'a [u8]);

impl KvRows for Q8Rows<'_> {
    fn read<'a>(&'a self, off: usize, buf: &'a mut [f32]) -> &'a [f32] {
        use crate::kv_cache::{Q8_BLOCK, Q8_BLOCK_BYTES};
        let mut i = off;
        let end = off + buf.len();
        let mut out = 0;
        while i < end {
            let blk = &self.0[(i / Q8_BLOCK) * Q8_BLOCK_BYTES..][..Q8_BLOCK_BYTES];
            let d = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
            let stop = end.min((i / Q8_BLOCK + 1) * Q8_BLOCK);
            for (o, &q) in buf[out..out + (stop - i)]
                .iter_mut()
                .zip(&blk[2 + i % Q8_BLOCK..])
            {
                *o = d * f32::from(q as i8);
            }
            out += stop - i;
            i = stop;
        }
        buf
    }
}

/// The naive reference [`attention`] is tested against: one task per (token, head), scores for
/// every visible key, then softmax and the weighted sum. Slow (scalar dots, one allocation per
/// task) but plainly right.
///
/// `q`: `[n_new, n_heads * hd]`; `k`, `v`: `[>= pos0 + n_new, n_kv * hd]` in f32, f16 or Q8_0
/// (read as f32; the K·Q product, softmax and the weighted sum are f32); `out`: like `q`.
/// `window`: sliding-window size. Query at position `i` sees key `j` iff `j <= i` and
/// `i - j < window` — transformers' `sliding_window_overlay` (`kv_idx > q_idx - window`),
/// checked by scripts/fixtures/long_context.py.
pub fn attention_reference<T: KvRows + ?Sized>(
    q: &[f32],
    k: &T,
    v: &T,
    out: &mut [f32],
    shape: &AttnShape,
) {
    let &AttnShape {
        n_new,
        pos0,
        n_heads,
        n_kv,
        head_dim: hd,
        window,
    } = shape;
    debug_assert_eq!(q.len(), n_new * n_heads * hd);
    let group = n_heads / n_kv;
    let q_row = n_heads * hd;
    let kv_row = n_kv * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    // One task per (token, head); each writes its own hd-long slice of `out`.
    out.par_chunks_mut(hd).enumerate().for_each(|(idx, o)| {
        let t = idx / n_heads;
        let h = idx % n_heads;
        let kvh = h / group;
        let pos = pos0 + t;
        let first = match window {
            Some(w) => (pos + 1).saturating_sub(w),
            None => 0,
        };
        let qv = &q[t * q_row + h * hd..t * q_row + (h + 1) * hd];
        let mut buf = vec![0f32; hd];
        let mut scores: Vec<f32> = (first..=pos)
            .map(|j| {
                let off = j * kv_row + kvh * hd;
                let kr = k.read(off, &mut buf);
                qv.iter().zip(kr).map(|(a, b)| a * b).sum::<f32>() * scale
            })
            .collect();
        softmax(&mut scores);
        o.fill(0.0);
        for (j, &p) in (first..=pos).zip(&scores) {
            let off = j * kv_row + kvh * hd;
            let vr = v.read(off, &mut buf);
            for (oo, &vv) in o.iter_mut().zip(vr) {
                *oo += p * vv;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silu_mul_split_over_the_pool_equals_the_serial_loop() {
        let n = 8 * 4864 + 5; // a batch of 8 MLP rows, and a ragged last chunk
        let gate: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.17)
            .collect();
        let up: Vec<f32> = (0..n)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.11)
            .collect();
        let mut got = gate.clone();
        silu_mul(&mut got, &up);
        let mut want = gate.clone();
        qwen2_kernels::silu_mul(&mut want, &up).unwrap();
        for (&y, &w) in got.iter().zip(&want) {
            assert_eq!(y.to_bits(), w.to_bits());
        }
        // And it is SiLU: within 4 ulp of the libm formula.
        for ((&g, &u), &y) in gate.iter().zip(&up).zip(&got) {
            let exact = g / (1.0 + (-g).exp()) * u;
            assert!(
                (y - exact).abs() <= 4.0 * f32::EPSILON * exact.abs(),
                "{g} {u}"
            );
        }
    }

    #[test]
    fn q8_rows_read_matches_the_kernels_dequantize_at_any_offset() {
        use qwen2_kernels::{dequantize_row, quantize_row, GgmlType};
        let x: Vec<f32> = (0..96)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.3)
            .collect();
        let mut q = vec![0u8; GgmlType::Q8_0.row_bytes(x.len()).unwrap()];
        quantize_row(GgmlType::Q8_0, &x, &mut q).unwrap();
        let mut want = vec![0f32; x.len()];
        dequantize_row(GgmlType::Q8_0, &q, &mut want).unwrap();
        // Head slices inside a block, across a block boundary, and whole blocks.
        for (off, n) in [(0, 16), (16, 16), (24, 16), (8, 64), (32, 64), (0, 96)] {
            let mut buf = vec![0f32; n];
            assert_eq!(
                Q8Rows(&q).read(off, &mut buf),
                &want[off..off + n],
                "{off}+{n}"
            );
        }
    }

    #[test]
    fn softmax_sums_to_one_and_is_stable() {
        let mut x = vec![1000.0, 1001.0, 999.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[1] > x[0] && x[0] > x[2]);
    }

    #[test]
    fn rms_norm_matches_definition() {
        let x = [1.0f32, -2.0, 3.0, -4.0];
        let w = [1.0f32, 0.5, 2.0, 1.0];
        let mut o = [0f32; 4];
        rms_norm(&x, &w, 1e-6, &mut o);
        let rms = ((1.0 + 4.0 + 9.0 + 16.0) / 4.0f32 + 1e-6).sqrt();
        for i in 0..4 {
            assert!((o[i] - x[i] / rms * w[i]).abs() < 1e-6);
        }
    }

    /// Deterministic values in [-s, s) (no rand dev-dependency here).
    fn lcg(seed: u64, n: usize, s: f32) -> Vec<f32> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * s
            })
            .collect()
    }

    #[test]
    fn flash_attention_matches_the_naive_reference_for_every_kv_dtype() {
        use half::f16;
        use qwen2_kernels::{quantize_row, GgmlType};
        // (head_dim, n_heads, n_kv): tiny heads (scalar kernel for 2 and 4; 8 and 16 start
        // inside Q8_0 blocks), the 0.5B model's 64 with GQA group 7, and 128.
        let heads = [
            (2, 16, 16),
            (4, 8, 8),
            (8, 8, 4),
            (16, 4, 2),
            (64, 14, 2),
            (128, 4, 2),
        ];
        let mut worst = 0f32;
        for (i, &(hd, nh, nkv)) in heads.iter().enumerate() {
            for (pos0, n_new, window) in [(0, 9, None), (70, 3, Some(20)), (150, 1, None)] {
                let (len, kvd) = (pos0 + n_new, nkv * hd);
                let q = lcg(i as u64, n_new * nh * hd, 2.0);
                let k = lcg(100 + i as u64, len * kvd, 1.0);
                let v = lcg(200 + i as u64, len * kvd, 1.0);
                let (k16, v16): (Vec<f16>, Vec<f16>) = (
                    k.iter().map(|&x| f16::from_f32(x)).collect(),
                    v.iter().map(|&x| f16::from_f32(x)).collect(),
                );
                let q8 = |x: &[f32]| {
                    let mut b = vec![0u8; GgmlType::Q8_0.row_bytes(x.len()).unwrap()];
                    quantize_row(GgmlType::Q8_0, x, &mut b).unwrap();
                    b
                };
                let (k8, v8) = (q8(&k), q8(&v));
                let mut want = vec![0f32; q.len()];
                let mut got = vec![0f32; q.len()];
                let mut check = |want: &[f32], got: &[f32], what: &str| {
                    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
                    let err = want
                        .iter()
                        .zip(got)
                        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                    worst = worst.max(err / scale);
                    assert!(err <= 1e-5 * scale, "{what} hd {hd} pos0 {pos0}: {err}");
                };
                let (rk, rv) = (Q8Rows(&k8), Q8Rows(&v8));
                let sh = AttnShape {
                    n_new,
                    pos0,
                    n_heads: nh,
                    n_kv: nkv,
                    head_dim: hd,
                    window,
                };
                // The naive reference over each KV type, then the kernel on the same cache.
                attention_reference(&q, &k[..], &v[..], &mut want, &sh);
                let f32_ref = want.clone();
                attention_reference(&q, &k16[..], &v16[..], &mut want, &sh);
                let f16_ref = want.clone();
                attention_reference(&q, &rk, &rv, &mut want, &sh);
                let cases = [
                    ("f32", KvView::F32(&k, &v), f32_ref),
                    ("f16", KvView::F16(&k16, &v16), f16_ref),
                    ("q8_0", KvView::Q8_0(&k8, &v8), want.clone()),
                ];
                for (what, kv, want) in cases {
                    attention(&q, kv, &mut got, &sh).unwrap();
                    check(&want, &got, what);
                }
            }
        }
        eprintln!("flash vs naive attention: worst error {worst:e} of max |out|");
    }

    #[test]
    fn attention_single_key_returns_value() {
        // With one key, softmax is 1: the output is that value row.
        let q = vec![0.3f32; 4];
        let k = vec![0.1f32; 2];
        let v = vec![5.0f32, -1.0];
        let sh = AttnShape {
            n_new: 1,
            pos0: 0,
            n_heads: 2,
            n_kv: 1,
            head_dim: 2,
            window: None,
        };
        let mut out = vec![0f32; 4];
        attention_reference::<[f32]>(&q, &k, &v, &mut out, &sh);
        assert_eq!(out, vec![5.0, -1.0, 5.0, -1.0]);
        let mut out = vec![0f32; 4];
        attention(&q, KvView::F32(&k, &v), &mut out, &sh).unwrap();
        assert_eq!(out, vec![5.0, -1.0, 5.0, -1.0]);
    }
}
