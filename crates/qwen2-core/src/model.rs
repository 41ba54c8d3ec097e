//! The Qwen2 decoder, in one file: embedding → N × (RMSNorm → GQA attention with Q/K/V bias and
//! RoPE → residual → RMSNorm → SwiGLU MLP → residual) → RMSNorm → LM head.
//!
//! Weights are whatever the file holds (k-quants, bf16, f32); `matmul` dispatches on the
//! format. `Precision::Exact` converts every weight to f32 at load: the reference path that
//! tests compare with transformers.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::kv_cache::{KvCache, KvDtype};
use crate::moe::SparseMoe;
use crate::ops::{self, Rope};
use crate::rows::{RoleRuns, RowRole};
use crate::weights::{Tensor, WeightSource};
use rayon::prelude::*;

/// Tokens processed per forward chunk: bounds activation memory for long prompts.
const MAX_CHUNK: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Weights in the file's format, activations quantized per matmul where the format wants it.
    #[default]
    Fast,
    /// f32 weights (dequantized once at load) and f32 activations: the reference path.
    Exact,
}

/// Which positions get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position (generation): `[vocab]`.
    Last,
    /// Every position: `[n_tokens, vocab]`.
    All,
    /// None (prefill of a prefix whose logits nobody reads).
    None,
    /// The last `n` positions (at most all of them): `[n, vocab]`. Scoring a continuation
    /// runs its context and the continuation in one pass, logits for the latter only.
    Tail(usize),
}

pub(crate) struct Linear {
    w: Tensor,
    b: Option<Vec<f32>>,
}

impl Linear {
    pub(crate) fn load(
        src: &WeightSource,
        name: &str,
        out: usize,
        inp: usize,
        bias: bool,
        p: Precision,
    ) -> Result<Self> {
        let w = fast_layout(convert(
            src.get(&format!("{name}.weight"), &[out, inp])?,
            p,
        )?)?;
        let b = if bias {
            Some(src.get(&format!("{name}.bias"), &[out])?.to_f32_vec()?)
        } else {
            None
        };
        Ok(Linear { w, b })
    }

    /// `out[t] = W x[t] + b` for the rows of `x`, each by its role.
    pub(crate) fn forward(&self, x: &[f32], rows: &RoleRuns, out: &mut [f32]) -> Result<()> {
        rows.matmul(&self.w.as_mat()?, x, out)?;
        self.add_bias(out);
        Ok(())
    }

    /// [`Linear::forward`] of linears that read the same rows (q/k/v, gate/up): decode rows
    /// of same-type weights share one kernel call (`RoleRuns::matmul_many`); bitwise the
    /// separate calls.
    pub(crate) fn forward_many(
        ls: &[&Linear],
        x: &[f32],
        rows: &RoleRuns,
        outs: &mut [&mut [f32]],
    ) -> Result<()> {
        let ws = ls
            .iter()
            .map(|l| l.w.as_mat())
            .collect::<std::result::Result<Vec<_>, _>>()?;
        rows.matmul_many(&ws, x, outs)?;
        for (l, o) in ls.iter().zip(outs.iter_mut()) {
            l.add_bias(o);
        }
        Ok(())
    }

    fn add_bias(&self, out: &mut [f32]) {
        if let Some(b) = &self.b {
            for row in out.chunks_exact_mut(b.len()) {
                for (o, bb) in row.iter_mut().zip(b) {
                    *o += bb;
                }
            }
        }
    }
}

/// A matmul weight in the kernels' faster in-memory layout where its format has one
/// (`Tensor::repacked`: Q5_0 -> Q5_0R8 and Q4_K -> Q4KR: the same values; prompt rows give
/// bitwise the same results, decode rows round their dot products per block or sub-block
/// instead of per lane, see `qwen2_kernels::repack` and `repack_q4k`). `QWEN2_NO_REPACK=1`
/// keeps the file's layout (A/B benchmarks).
/// Only matmul weights: the embedding is read by rows.
pub(crate) fn fast_layout(t: Tensor) -> Result<Tensor> {
    if std::env::var_os("QWEN2_NO_REPACK").is_some_and(|v| !v.is_empty() && v != "0") {
        return Ok(t);
    }
    t.repacked()
}

pub(crate) fn convert(t: Tensor, p: Precision) -> Result<Tensor> {
    match p {
        Precision::Fast => Ok(t),
        Precision::Exact => t.to_f32(),
    }
}

/// A layer's feed-forward block: the SwiGLU MLP, or Qwen2-MoE's sparse block (`moe.rs`).
enum Mlp {
    Dense {
        gate: Linear,
        up: Linear,
        down: Linear,
    },
    Sparse(SparseMoe),
}

struct Layer {
    attn_norm: Vec<f32>,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ffn_norm: Vec<f32>,
    mlp: Mlp,
    window: Option<usize>,
}

pub struct Qwen2 {
    pub cfg: Config,
    pub precision: Precision,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    /// `None` when tied to the embedding.
    lm_head: Option<Tensor>,
    rope: Rope,
    /// The KV cache type chosen by the user (`set_kv_dtype`), over the precision's default.
    kv_dtype: Option<KvDtype>,
}

/// Called with (name, layer, values) for named intermediates: "embed", "layer_out", "norm".
pub type HookFn<'h> = dyn FnMut(&str, usize, &[f32]) + 'h;

impl Qwen2 {
    pub fn load(cfg: Config, src: &WeightSource, precision: Precision) -> Result<Self> {
        let h = cfg.hidden_size;
        let p = precision;
        let embed = src.get("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let pre = format!("model.layers.{i}");
            let norm = |n: &str| -> Result<Vec<f32>> {
                src.get(&format!("{pre}.{n}.weight"), &[h])?.to_f32_vec()
            };
            let lin = |n: &str, out: usize, inp: usize, bias: bool| {
                Linear::load(src, &format!("{pre}.{n}"), out, inp, bias, p)
            };
            layers.push(Layer {
                attn_norm: norm("input_layernorm")?,
                q: lin("self_attn.q_proj", cfg.q_dim(), h, true)?,
                k: lin("self_attn.k_proj", cfg.kv_dim(), h, true)?,
                v: lin("self_attn.v_proj", cfg.kv_dim(), h, true)?,
                o: lin("self_attn.o_proj", h, cfg.q_dim(), false)?,
                ffn_norm: norm("post_attention_layernorm")?,
                mlp: if cfg.is_sparse_layer(i) {
                    Mlp::Sparse(SparseMoe::load(&cfg, src, i, p)?)
                } else {
                    Mlp::Dense {
                        gate: lin("mlp.gate_proj", cfg.intermediate_size, h, false)?,
                        up: lin("mlp.up_proj", cfg.intermediate_size, h, false)?,
                        down: lin("mlp.down_proj", h, cfg.intermediate_size, false)?,
                    }
                },
                window: cfg.sliding_window[i],
            });
        }
        let norm = src.get("model.norm.weight", &[h])?.to_f32_vec()?;
        // Tied or not is decided by what the file holds (candle's probe): HF checkpoints of
        // 0.5B/1.5B tie, while their GGUFs may carry a separate `output.weight`.
        let lm_head = if src.contains("lm_head.weight") {
            Some(fast_layout(convert(
                src.get("lm_head.weight", &[cfg.vocab_size, h])?,
                p,
            )?)?)
        } else if cfg.tie_word_embeddings {
            None
        } else {
            return Err(Error::MissingTensor {
                name: "lm_head.weight".into(),
                hint: " (config says tie_word_embeddings = false)".into(),
            });
        };
        // The embedding is read one row per token; only the tied LM head needs it as a matrix.
        let embed = if lm_head.is_none() {
            convert(embed, p)?
        } else {
            embed
        };
        let rope = Rope::new(&cfg);
        Ok(Qwen2 {
            cfg,
            precision,
            embed,
            layers,
            norm,
            lm_head,
            rope,
            kv_dtype: None,
        })
    }

    /// A KV cache for up to `ctx` tokens, of `default_kv_dtype()`.
    pub fn new_cache(&self, ctx: usize) -> KvCache {
        self.new_cache_with(ctx, self.default_kv_dtype())
    }

    /// f32 for `Precision::Exact` (the reference); f16 for `Precision::Fast`, half the
    /// memory, as llama.cpp's default. Attention still computes K·Q, softmax and sums in f32.
    /// `set_kv_dtype` overrides it for every cache made from then on (`new_cache`, the server);
    /// `new_cache_with` picks one explicitly.
    pub fn default_kv_dtype(&self) -> KvDtype {
        if let Some(t) = self.kv_dtype {
            return t;
        }
        match self.precision {
            Precision::Fast => KvDtype::F16,
            Precision::Exact => KvDtype::F32,
        }
    }

    /// Make `new_cache` (and so every command and the server) use `dtype`; an error, before
    /// any work, if this model's KV rows cannot be stored in it (Q8_0 needs `kv_dim % 32 == 0`).
    pub fn set_kv_dtype(&mut self, dtype: KvDtype) -> Result<()> {
        dtype.check(self.cfg.kv_dim())?;
        self.kv_dtype = Some(dtype);
        Ok(())
    }

    pub fn new_cache_with(&self, ctx: usize, dtype: KvDtype) -> KvCache {
        KvCache::with_dtype(self.cfg.num_hidden_layers, self.cfg.kv_dim(), ctx, dtype)
    }

    /// The rope for a forward pass that ends at sequence length `seq_len`, and the cache's new
    /// dynamic-NTK state. Only dynamic NTK depends on it; it follows transformers'
    /// `dynamic_frequency_update` with the state kept per sequence (in the cache): frequencies
    /// are recomputed for `seq_len` when it exceeds the largest length seen so far beyond
    /// `max_position_embeddings`, and reset when a pass is shorter than that again. Keys
    /// already cached keep the rotation they were made with, as in transformers.
    fn rope_for(&self, cache: &KvCache, seq_len: usize) -> (Option<Rope>, usize) {
        let Some(max_pos) = self.rope.dynamic_threshold() else {
            return (None, cache.rope_len);
        };
        let cached = cache.rope_len.max(max_pos);
        let mut state = cached;
        if seq_len > cached {
            state = seq_len;
        }
        if seq_len < max_pos && cached > max_pos {
            state = max_pos;
        }
        let rope = if state > max_pos {
            self.rope.for_seq_len(state)
        } else {
            None
        };
        (rope, state)
    }

    pub fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    /// Run `tokens` after what `cache` holds; returns logits as `which` asks. The rows' role
    /// follows the token count ([`RowRole::by_count`]: one token decodes, more are a prompt);
    /// use [`Qwen2::forward_as`] to name it (a one-token prompt remainder is a prompt row).
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, which: Logits) -> Result<Vec<f32>> {
        self.forward_as(tokens, cache, which, RowRole::by_count(tokens.len()))
    }

    /// [`Qwen2::forward`] with the rows' role given: it alone picks the kernels, so the
    /// result is bitwise the same however a prompt is chunked (issue 5).
    pub fn forward_as(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        which: Logits,
        role: RowRole,
    ) -> Result<Vec<f32>> {
        self.forward_with_hook_as(tokens, cache, which, role, None)
    }

    /// [`Qwen2::forward`] with a hook on the intermediates; the role follows the token count.
    pub fn forward_with_hook(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        which: Logits,
        hook: Option<&mut HookFn<'_>>,
    ) -> Result<Vec<f32>> {
        let role = RowRole::by_count(tokens.len());
        self.forward_with_hook_as(tokens, cache, which, role, hook)
    }

    /// [`Qwen2::forward_as`] with a hook on the intermediates.
    pub fn forward_with_hook_as(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        which: Logits,
        role: RowRole,
        mut hook: Option<&mut HookFn<'_>>,
    ) -> Result<Vec<f32>> {
        self.check_input(tokens, cache)?;
        let (dyn_rope, rope_state) = self.rope_for(cache, cache.len() + tokens.len());
        let rope = dyn_rope.as_ref().unwrap_or(&self.rope);
        let mut logits = Vec::new();
        // Logits for positions `first_out..`.
        let first_out = match which {
            Logits::All => 0,
            Logits::Last => tokens.len() - 1,
            Logits::None => tokens.len(),
            Logits::Tail(n) => tokens.len() - n.min(tokens.len()),
        };
        for (ci, chunk) in tokens.chunks(MAX_CHUNK).enumerate() {
            let end = ci * MAX_CHUNK + chunk.len();
            let out_rows = end.saturating_sub(first_out).min(chunk.len());
            let mut segs = [Seg {
                tokens: chunk,
                cache: &mut *cache,
                rope,
                out_rows,
                role,
            }];
            for part in self.run_batch(&mut segs, hook.as_deref_mut())? {
                let part = part?;
                if logits.is_empty() {
                    logits = part;
                } else {
                    logits.extend_from_slice(&part);
                }
            }
        }
        cache.rope_len = rope_state;
        Ok(logits)
    }

    /// Several sequences in one pass: every linear layer runs once over the rows of all of
    /// them (the weights are read once per step for the whole batch), while RoPE, the KV
    /// writes and attention run per sequence at its own position in its own cache. Each
    /// sequence gets its logits as its `logits` asks, or its own error (non-finite logits);
    /// the outer error (bad input, a kernel error) fails the whole batch and leaves every
    /// cache as it was. The caller bounds the total rows (no chunking here).
    pub fn forward_batch(&self, seqs: &mut [BatchSeq<'_>]) -> Result<Vec<Result<Vec<f32>>>> {
        for s in seqs.iter() {
            self.check_input(s.tokens, s.cache)?;
        }
        let ropes: Vec<(Option<Rope>, usize)> = seqs
            .iter()
            .map(|s| self.rope_for(s.cache, s.cache.len() + s.tokens.len()))
            .collect();
        let mut segs: Vec<Seg<'_>> = seqs
            .iter_mut()
            .zip(&ropes)
            .map(|(s, (dyn_rope, _))| Seg {
                tokens: s.tokens,
                out_rows: match s.logits {
                    Logits::All => s.tokens.len(),
                    Logits::Last => 1,
                    Logits::None => 0,
                    Logits::Tail(n) => n.min(s.tokens.len()),
                },
                cache: &mut *s.cache,
                rope: dyn_rope.as_ref().unwrap_or(&self.rope),
                role: s.role,
            })
            .collect();
        let out = self.run_batch(&mut segs, None)?;
        drop(segs);
        for (s, (_, state)) in seqs.iter_mut().zip(&ropes) {
            s.cache.rope_len = *state;
        }
        Ok(out)
    }

    fn check_input(&self, tokens: &[u32], cache: &KvCache) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        cache.check_room(tokens.len())?;
        for &id in tokens {
            if id as usize >= self.cfg.vocab_size {
                return Err(Error::TokenOutOfRange {
                    id,
                    vocab: self.cfg.vocab_size,
                });
            }
        }
        Ok(())
    }

    /// The layers over all segments, then the final norm and LM head over just the rows that
    /// want logits (one matmul for the whole batch), split back per segment.
    fn run_batch(
        &self,
        segs: &mut [Seg<'_>],
        hook: Option<&mut HookFn<'_>>,
    ) -> Result<Vec<Result<Vec<f32>>>> {
        let decode_only = segs.iter().all(|s| s.role == RowRole::Decode);
        match hook {
            // A decode step on a pool thread (`rayon::scope` from outside the pool hands the
            // closure over once): each of its ~100 short parallel sections then starts and
            // ends inside the pool, the running thread taking a share, instead of this thread
            // sleeping and being woken around every section (batch 1: +10% tok/s, median of
            // 13 alternations). Prompt passes stay here: their sections are long, and from
            // a pool thread the 1.5B's pp512 measured ~10% slower (6 of 6 alternations).
            None if decode_only => rayon::scope(|_| self.run_batch_here(segs, None)),
            hook => self.run_batch_here(segs, hook),
        }
    }

    fn run_batch_here(
        &self,
        segs: &mut [Seg<'_>],
        mut hook: Option<&mut HookFn<'_>>,
    ) -> Result<Vec<Result<Vec<f32>>>> {
        let x = match self.forward_rows(segs, hook.as_deref_mut()) {
            Ok(x) => x,
            Err(e) => {
                for s in segs.iter_mut() {
                    s.cache.rollback();
                }
                return Err(e);
            }
        };
        let (h, vocab) = (self.cfg.hidden_size, self.cfg.vocab_size);
        let rows: usize = segs.iter().map(|s| s.out_rows).sum();
        if rows == 0 {
            return Ok(segs.iter().map(|_| Ok(Vec::new())).collect());
        }
        let mut picked = Vec::with_capacity(rows * h);
        let mut r0 = 0;
        for s in segs.iter() {
            let n = s.tokens.len();
            picked.extend_from_slice(&x[(r0 + n - s.out_rows) * h..(r0 + n) * h]);
            r0 += n;
        }
        drop(x);
        let mut normed = vec![0f32; rows * h];
        ops::rms_norm(
            &picked,
            &self.norm,
            self.cfg.rms_norm_eps as f32,
            &mut normed,
        );
        if let Some(hk) = hook {
            hk("norm", self.cfg.num_hidden_layers, &normed);
        }
        let mut logits = vec![0f32; rows * vocab];
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        // The LM head too by role: a prompt's last row takes the prompt path.
        let head_rows = RoleRuns::from_segments(segs.iter().map(|s| (s.role, s.out_rows)));
        head_rows.matmul(&head.as_mat()?, &normed, &mut logits)?;

        let finite = |s: &Seg<'_>, part: &[f32]| match part.iter().position(|v| !v.is_finite()) {
            Some(bad) => Err(Error::NonFiniteLogits {
                pos: s.cache.len() - s.out_rows + bad / vocab,
            }),
            None => Ok(()),
        };
        if let [s] = &*segs {
            // One sequence (plain `forward`): hand over the buffer without a copy.
            return Ok(vec![finite(s, &logits).map(|()| logits)]);
        }
        let mut out = Vec::with_capacity(segs.len());
        let mut off = 0;
        for s in segs.iter() {
            let part = &logits[off * vocab..(off + s.out_rows) * vocab];
            off += s.out_rows;
            out.push(finite(s, part).map(|()| part.to_vec()));
        }
        Ok(out)
    }

    /// The rows of every segment through every layer; returns the final hidden states
    /// `[rows, hidden]` (before the final norm) and advances every segment's cache.
    fn forward_rows(
        &self,
        segs: &mut [Seg<'_>],
        mut hook: Option<&mut HookFn<'_>>,
    ) -> Result<Vec<f32>> {
        let cfg = &self.cfg;
        let n: usize = segs.iter().map(|s| s.tokens.len()).sum();
        let h = cfg.hidden_size;
        let (qd, kvd, ff) = (cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
        let eps = cfg.rms_norm_eps as f32;

        let rows = RoleRuns::from_segments(segs.iter().map(|s| (s.role, s.tokens.len())));
        let mut x = vec![0f32; n * h];
        for (t, &id) in segs.iter().flat_map(|s| s.tokens).enumerate() {
            self.embed
                .row_to_f32(id as usize, &mut x[t * h..(t + 1) * h])?;
        }
        if let Some(hk) = hook.as_deref_mut() {
            hk("embed", 0, &x);
        }

        let mut normed = vec![0f32; n * h];
        let mut q = vec![0f32; n * qd];
        let mut k = vec![0f32; n * kvd];
        let mut v = vec![0f32; n * kvd];
        let mut attn = vec![0f32; n * qd];
        let mut proj = vec![0f32; n * h];
        let mut gate = vec![0f32; n * ff];
        let mut up = vec![0f32; n * ff];

        for (li, layer) in self.layers.iter().enumerate() {
            // Attention block.
            ops::rms_norm(&x, &layer.attn_norm, eps, &mut normed);
            Linear::forward_many(
                &[&layer.q, &layer.k, &layer.v],
                &normed,
                &rows,
                &mut [&mut q, &mut k, &mut v],
            )?;
            let (nh, nkv, hd) = (
                cfg.num_attention_heads,
                cfg.num_key_value_heads,
                cfg.head_dim,
            );
            // Per sequence: its rows, at its position, against its own cache. The sequences
            // of a batch run side by side (one parallel section per layer instead of one per
            // sequence); each one's arithmetic is the same either way.
            let mut work = Vec::with_capacity(segs.len());
            {
                let (mut qr, mut kr, mut vr, mut ar) =
                    (&mut q[..], &mut k[..], &v[..], &mut attn[..]);
                for s in segs.iter_mut() {
                    let m = s.tokens.len();
                    let (q1, q2) = std::mem::take(&mut qr).split_at_mut(m * qd);
                    let (k1, k2) = std::mem::take(&mut kr).split_at_mut(m * kvd);
                    let (v1, v2) = vr.split_at(m * kvd);
                    let (a1, a2) = std::mem::take(&mut ar).split_at_mut(m * qd);
                    (qr, kr, vr, ar) = (q2, k2, v2, a2);
                    work.push((s, q1, k1, v1, a1));
                }
            }
            let window = layer.window;
            let one =
                |(s, q, k, v, attn): (&mut Seg<'_>, &mut [f32], &mut [f32], &[f32], &mut [f32])| {
                    let (m, pos0) = (s.tokens.len(), s.cache.len());
                    s.rope.apply(q, nh, pos0);
                    s.rope.apply(k, nkv, pos0);
                    s.cache.append(li, k, v)?;
                    let kv = s.cache.layer(li);
                    let shape = ops::AttnShape {
                        n_new: m,
                        pos0,
                        n_heads: nh,
                        n_kv: nkv,
                        head_dim: hd,
                        window,
                    };
                    ops::attention(q, kv, attn, &shape)
                };
            if work.len() > 1 {
                work.into_par_iter().map(one).collect::<Result<()>>()?;
            } else {
                work.into_iter().try_for_each(one)?;
            }
            layer.o.forward(&attn, &rows, &mut proj)?;
            for (a, b) in x.iter_mut().zip(&proj) {
                *a += b;
            }

            // MLP block.
            ops::rms_norm(&x, &layer.ffn_norm, eps, &mut normed);
            match &layer.mlp {
                Mlp::Dense {
                    gate: g,
                    up: u,
                    down,
                } => {
                    Linear::forward_many(&[g, u], &normed, &rows, &mut [&mut gate, &mut up])?;
                    ops::silu_mul(&mut gate, &up);
                    down.forward(&gate, &rows, &mut proj)?;
                }
                Mlp::Sparse(moe) => moe.forward(&normed, &rows, &mut proj)?,
            }
            for (a, b) in x.iter_mut().zip(&proj) {
                *a += b;
            }
            if let Some(hk) = hook.as_deref_mut() {
                hk("layer_out", li, &x);
            }
        }
        for s in segs.iter_mut() {
            s.cache.commit(s.tokens.len());
        }
        Ok(x)
    }
}

/// One sequence of [`Qwen2::forward_batch`]: its new tokens (one to decode, a chunk of its
/// prompt to prefill), its own cache, which of its positions get logits, and its rows' role
/// (`Prompt` for every prompt chunk, however short; `Decode` for a sampled token), which
/// alone picks the kernels its rows take (issue 5).
pub struct BatchSeq<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
    pub logits: Logits,
    pub role: RowRole,
}

/// A sequence's share of one pass's rows.
struct Seg<'a> {
    tokens: &'a [u32],
    cache: &'a mut KvCache,
    rope: &'a Rope,
    /// Logits for this many of its last rows.
    out_rows: usize,
    role: RowRole,
}
