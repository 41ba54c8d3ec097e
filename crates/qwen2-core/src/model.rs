//! The Qwen2 decoder, in one file: embedding → N × (RMSNorm → GQA attention with Q/K/V bias and
//! RoPE → residual → RMSNorm → SwiGLU MLP → residual) → RMSNorm → LM head.
//!
//! Weights are whatever the file holds (k-quants, bf16, f32); `matmul` dispatches on the
//! format. `Precision::Exact` converts every weight to f32 at load: the reference path that
//! tests compare with transformers.

use qwen2_kernels::matmul;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::kv_cache::{KvCache, KvDtype, KvView};
use crate::ops::{self, Rope};
use crate::weights::{Tensor, WeightSource};

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
}

struct Linear {
    w: Tensor,
    b: Option<Vec<f32>>,
}

impl Linear {
    fn load(
        src: &WeightSource,
        name: &str,
        out: usize,
        inp: usize,
        bias: bool,
        p: Precision,
    ) -> Result<Self> {
        let w = convert(src.get(&format!("{name}.weight"), &[out, inp])?, p)?;
        let b = if bias {
            Some(src.get(&format!("{name}.bias"), &[out])?.to_f32_vec()?)
        } else {
            None
        };
        Ok(Linear { w, b })
    }

    /// `out[t] = W x[t] + b` for `n` rows of `x`.
    fn forward(&self, x: &[f32], n: usize, out: &mut [f32]) -> Result<()> {
        matmul(&self.w.as_mat()?, x, n, out)?;
        if let Some(b) = &self.b {
            for row in out.chunks_exact_mut(b.len()) {
                for (o, bb) in row.iter_mut().zip(b) {
                    *o += bb;
                }
            }
        }
        Ok(())
    }
}

fn convert(t: Tensor, p: Precision) -> Result<Tensor> {
    match p {
        Precision::Fast => Ok(t),
        Precision::Exact => t.to_f32(),
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ffn_norm: Vec<f32>,
    gate: Linear,
    up: Linear,
    down: Linear,
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
                gate: lin("mlp.gate_proj", cfg.intermediate_size, h, false)?,
                up: lin("mlp.up_proj", cfg.intermediate_size, h, false)?,
                down: lin("mlp.down_proj", h, cfg.intermediate_size, false)?,
                window: cfg.sliding_window[i],
            });
        }
        let norm = src.get("model.norm.weight", &[h])?.to_f32_vec()?;
        // Tied or not is decided by what the file holds (candle's probe): HF checkpoints of
        // 0.5B/1.5B tie, while their GGUFs may carry a separate `output.weight`.
        let lm_head = if src.contains("lm_head.weight") {
            Some(convert(
                src.get("lm_head.weight", &[cfg.vocab_size, h])?,
                p,
            )?)
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
        })
    }

    /// A KV cache for up to `ctx` tokens, of `default_kv_dtype()`.
    pub fn new_cache(&self, ctx: usize) -> KvCache {
        self.new_cache_with(ctx, self.default_kv_dtype())
    }

    /// f32 for `Precision::Exact` (the reference); f16 for `Precision::Fast`, half the
    /// memory, as llama.cpp's default. Attention still computes K·Q, softmax and sums in f32.
    /// `new_cache_with` picks either explicitly.
    pub fn default_kv_dtype(&self) -> KvDtype {
        match self.precision {
            Precision::Fast => KvDtype::F16,
            Precision::Exact => KvDtype::F32,
        }
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

    /// Run `tokens` after what `cache` holds; returns logits as `which` asks.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, which: Logits) -> Result<Vec<f32>> {
        self.forward_with_hook(tokens, cache, which, None)
    }

    pub fn forward_with_hook(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        which: Logits,
        mut hook: Option<&mut HookFn<'_>>,
    ) -> Result<Vec<f32>> {
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
        let vocab = self.cfg.vocab_size;
        let (dyn_rope, rope_state) = self.rope_for(cache, cache.len() + tokens.len());
        let rope = dyn_rope.as_ref().unwrap_or(&self.rope);
        let mut logits = Vec::new();
        let n_chunks = tokens.len().div_ceil(MAX_CHUNK);
        for (ci, chunk) in tokens.chunks(MAX_CHUNK).enumerate() {
            let last_chunk = ci + 1 == n_chunks;
            let rows = match which {
                Logits::All => chunk.len(),
                Logits::Last if last_chunk => 1,
                _ => 0,
            };
            let x = match self.forward_chunk(chunk, cache, rope, hook.as_deref_mut()) {
                Ok(x) => x,
                Err(e) => {
                    cache.rollback();
                    return Err(e);
                }
            };
            if rows > 0 {
                let h = self.cfg.hidden_size;
                let n = chunk.len();
                let xs = &x[(n - rows) * h..];
                let mut normed = vec![0f32; rows * h];
                ops::rms_norm(xs, &self.norm, self.cfg.rms_norm_eps as f32, &mut normed);
                if let Some(hk) = hook.as_deref_mut() {
                    hk("norm", self.cfg.num_hidden_layers, &normed);
                }
                let start = logits.len();
                logits.resize(start + rows * vocab, 0.0);
                let head = self.lm_head.as_ref().unwrap_or(&self.embed);
                matmul(&head.as_mat()?, &normed, rows, &mut logits[start..])?;
                let pos_base = cache.len() - rows;
                if let Some(bad) = logits[start..].iter().position(|v| !v.is_finite()) {
                    return Err(Error::NonFiniteLogits {
                        pos: pos_base + bad / vocab,
                    });
                }
            }
        }
        cache.rope_len = rope_state;
        Ok(logits)
    }

    /// One chunk through every layer; returns the final hidden states `[n, hidden]` (before
    /// the final norm) and advances the cache.
    fn forward_chunk(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        rope: &Rope,
        mut hook: Option<&mut HookFn<'_>>,
    ) -> Result<Vec<f32>> {
        let cfg = &self.cfg;
        let n = tokens.len();
        let h = cfg.hidden_size;
        let (qd, kvd, ff) = (cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
        let eps = cfg.rms_norm_eps as f32;
        let pos0 = cache.len();

        let mut x = vec![0f32; n * h];
        for (t, &id) in tokens.iter().enumerate() {
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
            layer.q.forward(&normed, n, &mut q)?;
            layer.k.forward(&normed, n, &mut k)?;
            layer.v.forward(&normed, n, &mut v)?;
            rope.apply(&mut q, cfg.num_attention_heads, pos0);
            rope.apply(&mut k, cfg.num_key_value_heads, pos0);
            cache.append(li, &k, &v);
            let (nh, nkv, hd) = (
                cfg.num_attention_heads,
                cfg.num_key_value_heads,
                cfg.head_dim,
            );
            match cache.layer(li) {
                KvView::F32(kc, vc) => {
                    ops::attention(&q, kc, vc, &mut attn, n, pos0, nh, nkv, hd, layer.window)
                }
                KvView::F16(kc, vc) => {
                    ops::attention(&q, kc, vc, &mut attn, n, pos0, nh, nkv, hd, layer.window)
                }
            }
            layer.o.forward(&attn, n, &mut proj)?;
            for (a, b) in x.iter_mut().zip(&proj) {
                *a += b;
            }

            // MLP block.
            ops::rms_norm(&x, &layer.ffn_norm, eps, &mut normed);
            layer.gate.forward(&normed, n, &mut gate)?;
            layer.up.forward(&normed, n, &mut up)?;
            ops::silu_mul(&mut gate, &up);
            layer.down.forward(&gate, n, &mut proj)?;
            for (a, b) in x.iter_mut().zip(&proj) {
                *a += b;
            }
            if let Some(hk) = hook.as_deref_mut() {
                hk("layer_out", li, &x);
            }
        }
        cache.commit(n);
        Ok(x)
    }
}
