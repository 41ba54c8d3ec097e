//! Model configuration: mirrors Hugging Face `config.json` (transformers 4.x and 5.x forms) and
//! is also synthesised from GGUF metadata, so one forward pass serves both formats.

use serde_json::Value as Json;

use crate::error::{Error, Result};
use crate::gguf::GgufFile;

/// The architectures this engine runs, as HF `model_type` / GGUF `general.architecture`.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["qwen2", "qwen2_moe"];
pub const SUPPORTED_GGUF_ARCHS: &[&str] = &["qwen2", "qwen2moe"];

/// Qwen2-MoE's sparse block (transformers' `Qwen2MoeSparseMoeBlock`): a softmax router over
/// `num_experts`, the top `num_experts_per_tok` SwiGLU experts, plus one shared expert scaled
/// by `sigmoid(shared_expert_gate(x))`.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    pub num_experts: usize,
    pub num_experts_per_tok: usize,
    pub moe_intermediate_size: usize,
    pub shared_expert_intermediate_size: usize,
    /// Renormalise the top-k router probabilities to sum to 1 (false for Qwen1.5-MoE and
    /// Qwen2-57B-A14B).
    pub norm_topk_prob: bool,
    /// Per layer: the sparse block (true) or a dense MLP of `intermediate_size` (false).
    pub sparse_layers: Vec<bool>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Positions divided by `factor` (transformers "linear").
    Linear { factor: f64 },
    /// Dynamic NTK (transformers "dynamic"): once a forward pass reaches a sequence length
    /// `seq_len > max_position_embeddings`, the rope base becomes
    /// `theta * (factor * seq_len / max_pos - (factor - 1)) ^ (dim / (dim - 2))`.
    Dynamic { factor: f64 },
    /// YaRN as transformers' `_compute_yarn_parameters` computes it.
    Yarn {
        factor: f64,
        original_max_position_embeddings: usize,
        beta_fast: f64,
        beta_slow: f64,
        /// Multiplier of cos/sin; `None` means transformers' default, from `factor` (and
        /// `mscale`/`mscale_all_dim` when both are set and non-zero).
        attention_factor: Option<f64>,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
        /// Round the correction range outward to whole dimensions (transformers' default).
        truncate: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub tie_word_embeddings: bool,
    /// Sliding-window attention, per layer (`None` = full attention).
    pub sliding_window: Vec<Option<usize>>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// `Some` for Qwen2-MoE (`qwen2_moe` / GGUF `qwen2moe`).
    pub moe: Option<MoeConfig>,
}

fn field<'a>(j: &'a Json, key: &str) -> Option<&'a Json> {
    j.get(key).filter(|v| !v.is_null())
}

fn req_usize(j: &Json, key: &str) -> Result<usize> {
    let v = field(j, key)
        .ok_or_else(|| Error::Config(format!("config.json: required field `{key}` is missing")))?;
    v.as_u64()
        .filter(|&n| n > 0)
        .map(|n| n as usize)
        .ok_or_else(|| {
            Error::Config(format!(
                "config.json: `{key}` must be a positive integer, found {v}"
            ))
        })
}

fn opt_usize(j: &Json, key: &str) -> Result<Option<usize>> {
    match field(j, key) {
        None => Ok(None),
        Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
            Error::Config(format!(
                "config.json: `{key}` must be a non-negative integer, found {v}"
            ))
        }),
    }
}

fn opt_f64(j: &Json, key: &str) -> Result<Option<f64>> {
    match field(j, key) {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| {
            Error::Config(format!("config.json: `{key}` must be a number, found {v}"))
        }),
    }
}

fn opt_bool(j: &Json, key: &str) -> Result<Option<bool>> {
    match field(j, key) {
        None => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or_else(|| {
            Error::Config(format!(
                "config.json: `{key}` must be true or false, found {v}"
            ))
        }),
    }
}

/// `eos_token_id` may be an int or a list of ints.
pub(crate) fn token_ids(v: Option<&Json>) -> Vec<u32> {
    match v {
        Some(Json::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Json::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().map(|x| x as u32))
            .collect(),
        _ => Vec::new(),
    }
}

/// The rope scaling dict (`rope_scaling` of 4.x or `rope_parameters` of 5.x), read the way
/// transformers 5.24's `standardize_rope_params` and `_compute_*_parameters` read it.
/// `top` is the whole config.json.
fn rope_scaling_from_json(
    r: &Json,
    top: &Json,
    max_position_embeddings: usize,
) -> Result<Option<RopeScaling>> {
    let ty = field(r, "rope_type")
        .or_else(|| field(r, "type"))
        .and_then(Json::as_str)
        .unwrap_or("default");
    if let Some(p) = opt_f64(r, "partial_rotary_factor")?.or(opt_f64(top, "partial_rotary_factor")?)
    {
        if p != 1.0 {
            return Err(Error::Config(format!(
                "config.json: partial_rotary_factor {p} is not supported by Qwen2 (rotary over the whole head)"
            )));
        }
    }
    let positive = |name: &str, v: f64| -> Result<f64> {
        if v > 0.0 && v.is_finite() {
            Ok(v)
        } else {
            Err(Error::Config(format!(
                "config.json: rope scaling `{ty}`: `{name}` must be a positive number, found {v}"
            )))
        }
    };
    let factor = || -> Result<f64> {
        let f = opt_f64(r, "factor")?.ok_or_else(|| {
            Error::Config(format!("config.json: rope scaling `{ty}` needs `factor`"))
        })?;
        positive("factor", f)
    };
    Ok(match ty {
        "default" | "none" => None,
        "linear" => Some(RopeScaling::Linear { factor: factor()? }),
        "dynamic" => Some(RopeScaling::Dynamic { factor: factor()? }),
        "yarn" => {
            // A top-level `original_max_position_embeddings` wins (transformers' Phi3 rule),
            // then the dict's, then `max_position_embeddings`.
            let original = match opt_usize(top, "original_max_position_embeddings")? {
                Some(v) => v,
                None => opt_usize(r, "original_max_position_embeddings")?
                    .unwrap_or(max_position_embeddings),
            };
            if original == 0 {
                return Err(Error::Config(
                    "config.json: yarn `original_max_position_embeddings` must be positive".into(),
                ));
            }
            // `factor: null` means the ratio of the post- and pre-YaRN context lengths.
            let factor = match opt_f64(r, "factor")? {
                Some(f) => positive("factor", f)?,
                None => max_position_embeddings as f64 / original as f64,
            };
            // transformers: `get("beta_fast") or 32` — a 0 counts as unset.
            let nonzero = |v: Option<f64>| v.filter(|&x| x != 0.0);
            // transformers: `get("truncate", True)` — absent is true, an explicit null false.
            let truncate = match r.get("truncate") {
                None => true,
                Some(Json::Null) => false,
                Some(Json::Bool(b)) => *b,
                Some(v) => {
                    return Err(Error::Config(format!(
                        "config.json: yarn `truncate` must be true or false, found {v}"
                    )))
                }
            };
            Some(RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: original,
                beta_fast: nonzero(opt_f64(r, "beta_fast")?).unwrap_or(32.0),
                beta_slow: nonzero(opt_f64(r, "beta_slow")?).unwrap_or(1.0),
                attention_factor: opt_f64(r, "attention_factor")?,
                mscale: opt_f64(r, "mscale")?,
                mscale_all_dim: opt_f64(r, "mscale_all_dim")?,
                truncate,
            })
        }
        other => {
            return Err(Error::Config(format!(
                "config.json: rope scaling type `{other}` is not supported; supported: default, linear, dynamic, yarn"
            )))
        }
    })
}

/// The Qwen2-MoE fields of config.json, with Qwen2MoeConfig's defaults (Qwen1.5-MoE-A2.7B).
fn moe_from_json(j: &Json, num_hidden_layers: usize) -> Result<MoeConfig> {
    if opt_bool(j, "qkv_bias")? == Some(false) {
        return Err(Error::Config(
            "config.json: qkv_bias = false is not supported (Qwen2 attention has q/k/v biases)"
                .into(),
        ));
    }
    let num_experts = opt_usize(j, "num_experts")?.unwrap_or(60);
    let step = opt_usize(j, "decoder_sparse_step")?.unwrap_or(1);
    if step == 0 {
        return Err(Error::Config(
            "config.json: `decoder_sparse_step` must be positive".into(),
        ));
    }
    let mlp_only: Vec<usize> = match field(j, "mlp_only_layers") {
        None => Vec::new(),
        Some(v) => v
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|x| x.as_u64().map(|x| x as usize))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| {
                Error::Config(format!(
                    "config.json: `mlp_only_layers` must be a list of layer indices, found {v}"
                ))
            })?,
    };
    // Qwen2MoeDecoderLayer: sparse unless listed in mlp_only_layers, every
    // `decoder_sparse_step`-th layer (1-based), and only when there are experts.
    let sparse_layers = (0..num_hidden_layers)
        .map(|i| !mlp_only.contains(&i) && num_experts > 0 && (i + 1) % step == 0)
        .collect();
    Ok(MoeConfig {
        num_experts,
        num_experts_per_tok: opt_usize(j, "num_experts_per_tok")?.unwrap_or(4),
        moe_intermediate_size: opt_usize(j, "moe_intermediate_size")?.unwrap_or(1408),
        shared_expert_intermediate_size: opt_usize(j, "shared_expert_intermediate_size")?
            .unwrap_or(5632),
        norm_topk_prob: opt_bool(j, "norm_topk_prob")?.unwrap_or(false),
        sparse_layers,
    })
}

/// The `qwen2moe.*` keys llama.cpp writes (`expert_count`, `expert_used_count`,
/// `expert_feed_forward_length`, `expert_shared_feed_forward_length`, `expert_weights_norm`),
/// with llama.cpp's fallbacks for files converted before the last two existed. A layer is
/// sparse when its router `blk.N.ffn_gate_inp.weight` is present.
fn moe_from_gguf(g: &GgufFile, arch: &str, layers: usize, ff: usize) -> Result<MoeConfig> {
    let key = |k: &str| format!("{arch}.{k}");
    let positive = |k: &str| -> Result<usize> {
        g.get_u64(&key(k))
            .filter(|&v| v > 0)
            .map(|v| v as usize)
            .ok_or_else(|| Error::Gguf {
                path: g.path.clone(),
                msg: format!("metadata `{}` is missing or not a positive integer", key(k)),
            })
    };
    let num_experts = positive("expert_count")?;
    let used = positive("expert_used_count")?;
    let moe_ff = match g.get_u64(&key("expert_feed_forward_length")) {
        Some(v) if v > 0 => v as usize,
        _ => ff / used,
    };
    let shared_ff = match g.get_u64(&key("expert_shared_feed_forward_length")) {
        Some(v) if v > 0 => v as usize,
        _ => ff,
    };
    Ok(MoeConfig {
        num_experts,
        num_experts_per_tok: used,
        moe_intermediate_size: moe_ff,
        shared_expert_intermediate_size: shared_ff,
        norm_topk_prob: g.get_bool(&key("expert_weights_norm")).unwrap_or(false),
        sparse_layers: (0..layers)
            .map(|i| {
                g.tensors
                    .contains_key(&format!("blk.{i}.ffn_gate_inp.weight"))
            })
            .collect(),
    })
}

impl MoeConfig {
    fn validate(&self) -> Result<()> {
        if !self.sparse_layers.iter().any(|s| *s) {
            return Ok(());
        }
        if self.num_experts_per_tok == 0 || self.num_experts_per_tok > self.num_experts {
            return Err(Error::Config(format!(
                "num_experts_per_tok ({}) must be between 1 and num_experts ({})",
                self.num_experts_per_tok, self.num_experts
            )));
        }
        if self.moe_intermediate_size == 0 || self.shared_expert_intermediate_size == 0 {
            return Err(Error::Config(format!(
                "moe_intermediate_size ({}) and shared_expert_intermediate_size ({}) must be positive",
                self.moe_intermediate_size, self.shared_expert_intermediate_size
            )));
        }
        Ok(())
    }
}

/// YaRN's attention-scale rule (transformers' `get_mscale`): `0.1 * mscale * ln(s) + 1` for
/// `s > 1`, else 1.
pub fn yarn_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

/// `None` for a missing, null or empty rope dict (Python's falsy `{}`).
fn non_empty_dict(v: Option<&Json>) -> Result<Option<&Json>> {
    match v {
        None => Ok(None),
        Some(Json::Object(m)) if m.is_empty() => Ok(None),
        Some(o @ Json::Object(_)) => Ok(Some(o)),
        Some(other) => Err(Error::Config(format!(
            "config.json: rope settings must be an object, found {other}"
        ))),
    }
}

impl Config {
    /// Parse HF `config.json` text.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let j: Json = serde_json::from_str(text)
            .map_err(|e| Error::Config(format!("config.json is not valid JSON: {e}")))?;
        if !j.is_object() {
            return Err(Error::Config("config.json must be a JSON object".into()));
        }
        let model_type = field(&j, "model_type")
            .and_then(Json::as_str)
            .ok_or_else(|| Error::Config("config.json: `model_type` is missing".into()))?;
        if !SUPPORTED_MODEL_TYPES.contains(&model_type) {
            return Err(Error::UnsupportedArchitecture {
                found: format!("model_type {model_type}"),
                supported: SUPPORTED_MODEL_TYPES.join(", "),
            });
        }
        let is_moe = model_type == "qwen2_moe";
        let hidden_size = req_usize(&j, "hidden_size")?;
        let num_attention_heads = req_usize(&j, "num_attention_heads")?;
        let num_key_value_heads =
            opt_usize(&j, "num_key_value_heads")?.unwrap_or(num_attention_heads);
        let head_dim = opt_usize(&j, "head_dim")?.unwrap_or(hidden_size / num_attention_heads);
        let num_hidden_layers = req_usize(&j, "num_hidden_layers")?;

        // transformers 5.x moved rope settings into `rope_parameters`; 4.x has `rope_theta`
        // at the top level and scaling in `rope_scaling`. As in transformers
        // (`rope_scaling or rope_parameters`), a non-empty `rope_scaling` replaces
        // `rope_parameters`, and `rope_theta` comes from the chosen dict, else the top level.
        let max_position_embeddings = opt_usize(&j, "max_position_embeddings")?.unwrap_or(32768);
        let rope_dict = match non_empty_dict(field(&j, "rope_scaling"))? {
            Some(r) => Some(r),
            None => non_empty_dict(field(&j, "rope_parameters"))?,
        };
        let rope_theta = match rope_dict {
            Some(p) => opt_f64(p, "rope_theta")?,
            None => None,
        }
        .or(opt_f64(&j, "rope_theta")?)
        .unwrap_or(10000.0);
        let rope_scaling = match rope_dict {
            Some(r) => rope_scaling_from_json(r, &j, max_position_embeddings)?,
            None => None,
        };

        // Sliding window, as transformers' Qwen2Config: the window is `sliding_window` only
        // when `use_sliding_window` is true (else None). 5.x lists `layer_types`; without them
        // (4.x) the layers from `max_window_layers` on slide when there is a window.
        let window = if opt_bool(&j, "use_sliding_window")?.unwrap_or(false) {
            opt_usize(&j, "sliding_window")?
        } else {
            None
        };
        if window == Some(0) {
            return Err(Error::Config(
                "config.json: `sliding_window` must be positive".into(),
            ));
        }
        let sliding_window = if let Some(types) = field(&j, "layer_types") {
            let types = types
                .as_array()
                .ok_or_else(|| Error::Config("config.json: `layer_types` must be a list".into()))?;
            if types.len() != num_hidden_layers {
                return Err(Error::Config(format!(
                    "config.json: `layer_types` has {} entries, expected num_hidden_layers = {num_hidden_layers}",
                    types.len()
                )));
            }
            types
                .iter()
                .map(|t| match t.as_str() {
                    Some("full_attention") => Ok(None),
                    // transformers fails on this combination too (no window to apply).
                    Some("sliding_attention") => window.map(Some).ok_or_else(|| {
                        Error::Config(
                            "config.json: a sliding_attention layer needs `use_sliding_window: true` and a `sliding_window`".into(),
                        )
                    }),
                    _ => Err(Error::Config(format!(
                        "config.json: unknown layer type {t}; supported: full_attention, sliding_attention"
                    ))),
                })
                .collect::<Result<Vec<_>>>()?
        } else if let Some(w) = window {
            let from = opt_usize(&j, "max_window_layers")?.unwrap_or(28);
            // Qwen2MoeConfig's rule differs from Qwen2Config's: every other layer below
            // `max_window_layers` slides.
            (0..num_hidden_layers)
                .map(|i| {
                    let slides = if is_moe {
                        i % 2 == 0 && i < from
                    } else {
                        i >= from
                    };
                    slides.then_some(w)
                })
                .collect()
        } else {
            vec![None; num_hidden_layers]
        };

        if let Some(act) = field(&j, "hidden_act").and_then(Json::as_str) {
            if act != "silu" && act != "swish" {
                return Err(Error::Config(format!(
                    "config.json: hidden_act `{act}` is not supported; Qwen2 uses silu"
                )));
            }
        }

        let (moe, intermediate_size) = if is_moe {
            (
                Some(moe_from_json(&j, num_hidden_layers)?),
                // Qwen2MoeConfig's default.
                opt_usize(&j, "intermediate_size")?.unwrap_or(5632),
            )
        } else {
            (None, req_usize(&j, "intermediate_size")?)
        };
        let cfg = Config {
            vocab_size: req_usize(&j, "vocab_size")?,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings,
            rms_norm_eps: opt_f64(&j, "rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            tie_word_embeddings: opt_bool(&j, "tie_word_embeddings")?.unwrap_or(false),
            sliding_window,
            bos_token_id: opt_usize(&j, "bos_token_id")?.map(|x| x as u32),
            eos_token_ids: token_ids(field(&j, "eos_token_id")),
            moe,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Build the config from GGUF metadata (`<arch>.*` keys).
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let arch = g.architecture().ok_or_else(|| Error::Gguf {
            path: g.path.clone(),
            msg: "metadata `general.architecture` is missing".into(),
        })?;
        if !SUPPORTED_GGUF_ARCHS.contains(&arch) {
            return Err(Error::UnsupportedArchitecture {
                found: format!("GGUF architecture {arch}"),
                supported: SUPPORTED_GGUF_ARCHS.join(", "),
            });
        }
        let req = |k: &str| -> Result<usize> {
            let key = format!("{arch}.{k}");
            g.get_u64(&key)
                .filter(|&v| v > 0)
                .map(|v| v as usize)
                .ok_or_else(|| Error::Gguf {
                    path: g.path.clone(),
                    msg: format!("metadata `{key}` is missing or not a positive integer"),
                })
        };
        let hidden_size = req("embedding_length")?;
        let num_attention_heads = req("attention.head_count")?;
        let num_hidden_layers = req("block_count")?;
        let (moe, intermediate_size) = if arch == "qwen2moe" {
            // A MoE file whose layers are all sparse needs no dense width.
            let ff = g
                .get_u64(&format!("{arch}.feed_forward_length"))
                .unwrap_or(0) as usize;
            (Some(moe_from_gguf(g, arch, num_hidden_layers, ff)?), ff)
        } else {
            (None, req("feed_forward_length")?)
        };
        let num_key_value_heads = req("attention.head_count_kv").unwrap_or(num_attention_heads);
        let head_dim = g
            .get_u64(&format!("{arch}.attention.key_length"))
            .map(|v| v as usize)
            .unwrap_or(hidden_size / num_attention_heads);
        // The vocabulary is the embedding's row count; the token list can be shorter (padding).
        let vocab_size = match g.tensors.get("token_embd.weight") {
            Some(t) if t.dims.len() == 2 => t.dims[1] as usize,
            _ => g
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map(|a| a.len())
                .ok_or_else(|| Error::MissingTensor {
                    name: "token_embd.weight".into(),
                    hint: " (GGUF name of model.embed_tokens.weight)".into(),
                })?,
        };
        let rope_scaling = match g.get_str(&format!("{arch}.rope.scaling.type")) {
            None | Some("none") => None,
            Some(ty) => {
                let factor = g
                    .get_f64(&format!("{arch}.rope.scaling.factor"))
                    .unwrap_or(1.0);
                if !(factor > 0.0 && factor.is_finite()) {
                    return Err(Error::Gguf {
                        path: g.path.clone(),
                        msg: format!(
                            "`{arch}.rope.scaling.factor` must be positive, found {factor}"
                        ),
                    });
                }
                match ty {
                    "linear" => Some(RopeScaling::Linear { factor }),
                    "yarn" => Some(RopeScaling::Yarn {
                        factor,
                        original_max_position_embeddings: g
                            .get_u64(&format!("{arch}.rope.scaling.original_context_length"))
                            .map(|v| v as usize)
                            .ok_or_else(|| Error::Gguf {
                                path: g.path.clone(),
                                msg: format!(
                                    "yarn scaling needs `{arch}.rope.scaling.original_context_length`"
                                ),
                            })?,
                        beta_fast: g
                            .get_f64(&format!("{arch}.rope.scaling.yarn_beta_fast"))
                            .unwrap_or(32.0),
                        beta_slow: g
                            .get_f64(&format!("{arch}.rope.scaling.yarn_beta_slow"))
                            .unwrap_or(1.0),
                        // llama.cpp multiplies YaRN's mscale by `attn_factor` (default 1).
                        attention_factor: g
                            .get_f64(&format!("{arch}.rope.scaling.attn_factor"))
                            .filter(|&f| f > 0.0 && f != 1.0)
                            .map(|f| f * yarn_mscale(factor, 1.0)),
                        mscale: None,
                        mscale_all_dim: None,
                        truncate: true,
                    }),
                    other => {
                        return Err(Error::Gguf {
                            path: g.path.clone(),
                            msg: format!(
                                "rope scaling type `{other}` is not supported; supported: none, linear, yarn"
                            ),
                        })
                    }
                }
            }
        };
        let cfg = Config {
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings: req("context_length").unwrap_or(32768),
            rms_norm_eps: g
                .get_f64(&format!("{arch}.attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-6),
            rope_theta: g
                .get_f64(&format!("{arch}.rope.freq_base"))
                .unwrap_or(10000.0),
            rope_scaling,
            tie_word_embeddings: !g.tensors.contains_key("output.weight"),
            // llama.cpp's qwen2 graph never uses a sliding window, and Qwen2 GGUFs carry none.
            sliding_window: vec![None; num_hidden_layers],
            bos_token_id: g.get_u64("tokenizer.ggml.bos_token_id").map(|v| v as u32),
            eos_token_ids: g
                .get_u64("tokenizer.ggml.eos_token_id")
                .map(|v| vec![v as u32])
                .unwrap_or_default(),
            moe,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        if self.num_key_value_heads == 0
            || !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
        {
            return Err(Error::Config(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            )));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return Err(Error::Config(format!(
                "head_dim ({}) must be even for rotary embeddings",
                self.head_dim
            )));
        }
        if !(self.rms_norm_eps > 0.0 && self.rope_theta > 0.0) {
            return Err(Error::Config(format!(
                "rms_norm_eps ({}) and rope_theta ({}) must be positive",
                self.rms_norm_eps, self.rope_theta
            )));
        }
        let dense_layers = match &self.moe {
            None => self.num_hidden_layers,
            Some(m) => {
                m.validate()?;
                m.sparse_layers.iter().filter(|s| !**s).count()
            }
        };
        if dense_layers > 0 && self.intermediate_size == 0 {
            return Err(Error::Config(format!(
                "{dense_layers} layer(s) have a dense MLP but intermediate_size is 0"
            )));
        }
        Ok(())
    }

    /// Whether layer `i` has the sparse MoE block.
    pub fn is_sparse_layer(&self, i: usize) -> bool {
        self.moe
            .as_ref()
            .is_some_and(|m| m.sparse_layers.get(i).copied().unwrap_or(false))
    }

    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: &str = r#"{"architectures":["Qwen2ForCausalLM"],"model_type":"qwen2","vocab_size":151936,
      "hidden_size":896,"intermediate_size":4864,"num_hidden_layers":24,"num_attention_heads":14,
      "num_key_value_heads":2,"max_position_embeddings":32768,"rms_norm_eps":1e-06,"rope_theta":1000000.0,
      "tie_word_embeddings":true,"use_sliding_window":false,"sliding_window":32768,"max_window_layers":21,
      "torch_dtype":"bfloat16","eos_token_id":151645,"bos_token_id":151643,"hidden_act":"silu"}"#;

    #[test]
    fn parses_transformers_4_form() {
        let c = Config::from_json_str(V4).unwrap();
        assert_eq!(c.head_dim, 64);
        assert_eq!(c.rope_theta, 1e6);
        assert!(c.tie_word_embeddings);
        assert!(c.sliding_window.iter().all(Option::is_none));
        assert_eq!(c.eos_token_ids, vec![151645]);
    }

    #[test]
    fn parses_transformers_5_form_with_yarn() {
        let t = V4.replace(
            r#""rope_theta":1000000.0,"#,
            r#""rope_parameters":{"rope_type":"yarn","rope_theta":500000.0,"factor":4.0,"original_max_position_embeddings":32768},"#,
        );
        let c = Config::from_json_str(&t).unwrap();
        assert_eq!(c.rope_theta, 5e5);
        assert!(matches!(
            c.rope_scaling,
            Some(RopeScaling::Yarn { factor, original_max_position_embeddings: 32768, .. }) if factor == 4.0
        ));
    }

    #[test]
    fn sliding_window_from_max_window_layers() {
        let t = V4.replace(
            r#""use_sliding_window":false"#,
            r#""use_sliding_window":true"#,
        );
        let c = Config::from_json_str(&t).unwrap();
        assert_eq!(c.sliding_window[20], None);
        assert_eq!(c.sliding_window[21], Some(32768));
    }

    /// Qwen/Qwen2-57B-A14B-Instruct's config.json (transformers 4.x form).
    const MOE_57B: &str = r#"{"architectures":["Qwen2MoeForCausalLM"],"attention_dropout":0.0,
      "bos_token_id":151643,"decoder_sparse_step":1,"eos_token_id":151645,"hidden_act":"silu",
      "hidden_size":3584,"initializer_range":0.02,"intermediate_size":18944,
      "max_position_embeddings":32768,"max_window_layers":28,"model_type":"qwen2_moe",
      "moe_intermediate_size":2560,"norm_topk_prob":false,"num_attention_heads":28,
      "num_experts":64,"num_experts_per_tok":8,"num_hidden_layers":28,"num_key_value_heads":4,
      "output_router_logits":false,"rms_norm_eps":1e-06,"rope_theta":1000000.0,
      "router_aux_loss_coef":0.001,"shared_expert_intermediate_size":20480,
      "sliding_window":65536,"tie_word_embeddings":false,"torch_dtype":"bfloat16",
      "use_cache":true,"use_sliding_window":false,"vocab_size":151936}"#;

    #[test]
    fn parses_qwen2_moe() {
        let c = Config::from_json_str(MOE_57B).unwrap();
        let m = c.moe.as_ref().unwrap();
        assert_eq!((m.num_experts, m.num_experts_per_tok), (64, 8));
        assert_eq!(
            (m.moe_intermediate_size, m.shared_expert_intermediate_size),
            (2560, 20480)
        );
        assert!(!m.norm_topk_prob);
        assert_eq!(m.sparse_layers, vec![true; 28]);
        assert_eq!(c.intermediate_size, 18944);
        assert!(c.sliding_window.iter().all(Option::is_none));

        // decoder_sparse_step and mlp_only_layers, as Qwen2MoeDecoderLayer decides.
        let t = MOE_57B
            .replace(r#""decoder_sparse_step":1"#, r#""decoder_sparse_step":3"#)
            .replace(
                r#""num_hidden_layers":28"#,
                r#""num_hidden_layers":7,"mlp_only_layers":[5]"#,
            );
        let c = Config::from_json_str(&t).unwrap();
        let sparse = &c.moe.as_ref().unwrap().sparse_layers;
        assert_eq!(sparse, &[false, false, true, false, false, false, false]);
        assert!(c.is_sparse_layer(2) && !c.is_sparse_layer(5));

        // Qwen2MoeConfig's sliding rule: even layers below max_window_layers.
        let t = MOE_57B
            .replace(
                r#""use_sliding_window":false"#,
                r#""use_sliding_window":true"#,
            )
            .replace(r#""max_window_layers":28"#, r#""max_window_layers":4"#);
        let c = Config::from_json_str(&t).unwrap();
        assert_eq!(
            &c.sliding_window[..6],
            &[Some(65536), None, Some(65536), None, None, None]
        );

        let e = Config::from_json_str(
            &MOE_57B.replace(r#""num_experts_per_tok":8"#, r#""num_experts_per_tok":65"#),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("num_experts_per_tok (65)"), "{e}");
        let e = Config::from_json_str(
            &MOE_57B.replace(r#""hidden_act""#, r#""qkv_bias":false,"hidden_act""#),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("qkv_bias"), "{e}");
    }

    #[test]
    fn clear_errors() {
        let e = Config::from_json_str("{not json").unwrap_err().to_string();
        assert!(e.contains("not valid JSON"), "{e}");
        let e = Config::from_json_str(&V4.replace("\"qwen2\"", "\"llama\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unsupported architecture") && e.contains("qwen2, qwen2_moe"),
            "{e}"
        );
        let e = Config::from_json_str(&V4.replace("\"hidden_size\":896,", ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hidden_size"), "{e}");
        let e =
            Config::from_json_str(&V4.replace("\"hidden_size\":896", "\"hidden_size\":\"big\""))
                .unwrap_err()
                .to_string();
        assert!(e.contains("positive integer"), "{e}");
        let e = Config::from_json_str(&V4.replace(
            r#""rope_theta":1000000.0,"#,
            r#""rope_scaling":{"type":"longrope","factor":2.0},"#,
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("longrope"), "{e}");
    }
}
