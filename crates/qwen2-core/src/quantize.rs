//! `qwen2 quantize`: write a GGUF in a llama.cpp file type (Q4_K_M, Q8_0, F16, ...) from a
//! Hugging Face safetensors directory or from another GGUF (requantized from its dequantized
//! f32 values).
//!
//! Per-tensor types follow llama.cpp's `llama_tensor_get_type` (src/llama-quant.cpp) for the
//! file types offered here, so a Q4_K_M made by us has the same tensor types as one made by
//! `llama-quantize` without an importance matrix; the row quantizers are ggml's `_ref` ones
//! (`qwen2_kernels::quantize_row`), so the bytes match too. Rules kept:
//! - only 2-D tensors whose name ends in `weight` (and not `_norm.weight`) are quantized;
//! - `output.weight` (and `token_embd.weight` when embeddings are tied) → Q6_K, or Q8_0 when its
//!   row length is not a multiple of the type's block;
//! - Q4_K_M/Q5_K_M: `attn_v` and `ffn_down` → Q6_K in the "use_more_bits" layers (first and last
//!   eighth, and every third in between); Q4_K_S: `attn_v` of the first 4 layers and `ffn_down`
//!   of the first eighth → Q5_K; 80-layer (70B-class) models get Q5_K `attn_v` for Q4_K;
//! - Qwen2-MoE: the router `ffn_gate_inp` is never quantized; stacked `ffn_*_exps` follow the
//!   `ffn_*` rules, `ffn_down*` by the layer in its name; 8-expert models get Q8_0
//!   `attn_k`/`attn_v` and (Q4_K_S/M) Q5_K `attn_output`; rows shorter than a 32-block → F16;
//! - a k-quant whose block (256) does not divide the row length falls back (Q4_K→Q5_0,
//!   Q5_K→Q5_1, Q6_K→Q8_0, then F16), as for Qwen2-72B's 29568-wide `ffn_down` (PITFALLS 11).
//!
//! A tensor whose chosen type equals its stored type is copied byte for byte (llama.cpp does the
//! same); everything else is dequantized to f32 a chunk of rows at a time and quantized in
//! parallel over rows, then streamed to the output, so memory stays at a few chunks.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use qwen2_kernels::GgmlType;
use rayon::prelude::*;

use crate::config::{Config, RopeScaling};
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, Value};
use crate::gguf_write::GgufWriter;
use crate::weights::{gguf_name, Tensor, WeightSource};

/// A llama.cpp file type (`LLAMA_FTYPE_*`): the mixture of tensor types to write.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4_K_S,
    Q4_K_M,
    Q5_K_S,
    Q5_K_M,
    Q6_K,
}

impl FileType {
    pub const ALL: [FileType; 13] = [
        FileType::Q4_K_M,
        FileType::Q4_K_S,
        FileType::Q5_K_M,
        FileType::Q5_K_S,
        FileType::Q6_K,
        FileType::Q8_0,
        FileType::Q4_0,
        FileType::Q4_1,
        FileType::Q5_0,
        FileType::Q5_1,
        FileType::F16,
        FileType::BF16,
        FileType::F32,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FileType::F32 => "F32",
            FileType::F16 => "F16",
            FileType::BF16 => "BF16",
            FileType::Q4_0 => "Q4_0",
            FileType::Q4_1 => "Q4_1",
            FileType::Q5_0 => "Q5_0",
            FileType::Q5_1 => "Q5_1",
            FileType::Q8_0 => "Q8_0",
            FileType::Q4_K_S => "Q4_K_S",
            FileType::Q4_K_M => "Q4_K_M",
            FileType::Q5_K_S => "Q5_K_S",
            FileType::Q5_K_M => "Q5_K_M",
            FileType::Q6_K => "Q6_K",
        }
    }

    /// `general.file_type` (llama.cpp's `llama_ftype` value).
    pub fn id(self) -> u32 {
        match self {
            FileType::F32 => 0,
            FileType::F16 => 1,
            FileType::Q4_0 => 2,
            FileType::Q4_1 => 3,
            FileType::Q8_0 => 7,
            FileType::Q5_0 => 8,
            FileType::Q5_1 => 9,
            FileType::Q4_K_S => 14,
            FileType::Q4_K_M => 15,
            FileType::Q5_K_S => 16,
            FileType::Q5_K_M => 17,
            FileType::Q6_K => 18,
            FileType::BF16 => 32,
        }
    }

    /// `llama_ftype_get_default_type`.
    pub fn default_type(self) -> GgmlType {
        match self {
            FileType::F32 => GgmlType::F32,
            FileType::F16 => GgmlType::F16,
            FileType::BF16 => GgmlType::BF16,
            FileType::Q4_0 => GgmlType::Q4_0,
            FileType::Q4_1 => GgmlType::Q4_1,
            FileType::Q5_0 => GgmlType::Q5_0,
            FileType::Q5_1 => GgmlType::Q5_1,
            FileType::Q8_0 => GgmlType::Q8_0,
            FileType::Q4_K_S | FileType::Q4_K_M => GgmlType::Q4K,
            FileType::Q5_K_S | FileType::Q5_K_M => GgmlType::Q5K,
            FileType::Q6_K => GgmlType::Q6K,
        }
    }

    pub fn supported_list() -> String {
        FileType::ALL
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl FromStr for FileType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let up = s.trim().to_ascii_uppercase();
        FileType::ALL
            .iter()
            .copied()
            .find(|t| t.name() == up)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown quantization type `{s}`; supported: {}",
                    FileType::supported_list()
                ))
            })
    }
}

impl std::fmt::Display for FileType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn is_quantized(t: GgmlType) -> bool {
    !matches!(t, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}

/// llama.cpp's `tensor_allows_quantization` for the tensors a Qwen2(-MoE) model has: the MoE
/// router `ffn_gate_inp` stays as is (the 1-D `ffn_gate_inp_shexp` is left by the 2-D rule).
fn allows_quantization(name: &str, n_dims: usize) -> bool {
    n_dims >= 2
        && name.ends_with("weight")
        && !name.contains("_norm.weight")
        && !name.contains("ffn_gate_inp.weight")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Category {
    TokenEmbd,
    AttnK,
    AttnV,
    AttnOutput,
    FfnDown,
    Output,
    Other,
}

fn category(name: &str) -> Category {
    if name == "output.weight" {
        Category::Output
    } else if name == "token_embd.weight" {
        Category::TokenEmbd
    } else if name.contains("attn_v.weight") {
        Category::AttnV
    } else if name.contains("attn_k.weight") {
        Category::AttnK
    } else if name.contains("attn_output.weight") {
        Category::AttnOutput
    } else if name.contains("ffn_down") {
        Category::FfnDown
    } else {
        Category::Other
    }
}

fn use_more_bits(i_layer: usize, n_layers: usize) -> bool {
    // The last clause only runs when i_layer >= n_layers / 8, so the subtraction cannot wrap.
    i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2
}

/// llama.cpp `tensor_type_fallback`: a type whose block does not divide the row length.
fn fallback(target: GgmlType, cols: usize) -> Result<GgmlType> {
    if cols.is_multiple_of(target.block_size()) {
        return Ok(target);
    }
    let t = match target {
        GgmlType::Q2K | GgmlType::Q3K => GgmlType::Q4_0,
        GgmlType::Q4K => GgmlType::Q5_0,
        GgmlType::Q5K => GgmlType::Q5_1,
        GgmlType::Q6K => GgmlType::Q8_0,
        // Rows shorter than a 32-block (a tiny MoE's 16-wide experts): llama.cpp writes F16.
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => {
            GgmlType::F16
        }
        other => {
            return Err(Error::Invalid(format!(
                "no fallback for type {} with rows of {cols} values",
                other.name()
            )))
        }
    };
    Ok(if cols.is_multiple_of(t.block_size()) {
        t
    } else {
        GgmlType::F16
    })
}

/// One tensor to write: GGUF name, HF-order shape, stored type and chosen type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorPlan {
    pub name: String,
    pub shape: Vec<usize>,
    pub from: GgmlType,
    pub to: GgmlType,
}

/// The layer of a `blk.N.` name.
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// llama.cpp's tensor order (`weight_name_comparer`): non-layer tensors by name, then layer by
/// layer, by name within a layer. The `attn_v`/`ffn_down` counters depend on this order.
fn llama_order(a: &str, b: &str) -> std::cmp::Ordering {
    let la = layer_of(a).map_or(-1, |l| l as i64);
    let lb = layer_of(b).map_or(-1, |l| l as i64);
    la.cmp(&lb).then_with(|| a.cmp(b))
}

/// Choose every tensor's type (`llama_tensor_get_type`) for `n_layers` blocks of a dense model.
/// `tensors` holds (GGUF name, HF-order shape, stored type); the result is in llama.cpp's
/// tensor order.
pub fn plan(
    ftype: FileType,
    tensors: &[(String, Vec<usize>, GgmlType)],
    n_layers: usize,
) -> Result<Vec<TensorPlan>> {
    plan_with_experts(ftype, tensors, n_layers, 0)
}

/// `plan` for a model with `n_expert` routed experts per sparse layer (0 for a dense model).
/// llama.cpp's MoE rules: the stacked `ffn_*_exps` count as the `ffn_*` they stack, and with
/// more than one expert `ffn_down*` takes its layer from the name (not a running count);
/// 8-expert models (Mixtral-like) get Q8_0 `attn_k`/`attn_v` and, for Q4_K_S/M, Q5_K
/// `attn_output`.
pub fn plan_with_experts(
    ftype: FileType,
    tensors: &[(String, Vec<usize>, GgmlType)],
    n_layers: usize,
    n_expert: usize,
) -> Result<Vec<TensorPlan>> {
    let mut sorted: Vec<_> = tensors.to_vec();
    sorted.sort_by(|a, b| llama_order(&a.0, &b.0));
    let tied = !sorted.iter().any(|t| t.0 == "output.weight");
    let n_attn_v = sorted
        .iter()
        .filter(|t| category(&t.0) == Category::AttnV)
        .count();
    let (mut i_attn_v, mut i_ffn_down) = (0usize, 0usize);
    let default = ftype.default_type();
    let mut out = Vec::with_capacity(sorted.len());
    for (name, shape, from) in sorted {
        let cols = *shape.last().unwrap_or(&0);
        let to = if !allows_quantization(&name, shape.len()) {
            from
        } else if !is_quantized(default) {
            default
        } else {
            let cat = category(&name);
            let mut t = default;
            if cat == Category::Output || (tied && cat == Category::TokenEmbd) {
                if !cols.is_multiple_of(t.block_size()) {
                    t = GgmlType::Q8_0;
                } else if t != GgmlType::Q8_0 {
                    t = GgmlType::Q6K;
                }
            } else if cat == Category::AttnV {
                match ftype {
                    FileType::Q4_K_M | FileType::Q5_K_M if use_more_bits(i_attn_v, n_attn_v) => {
                        t = GgmlType::Q6K
                    }
                    FileType::Q4_K_S if i_attn_v < 4 => t = GgmlType::Q5K,
                    _ => {}
                }
                // 70B-class (80 layers): attn_v is 8x smaller than attn_q, so more bits are cheap.
                if n_layers == 80 && matches!(t, GgmlType::Q3K | GgmlType::Q4K) {
                    t = GgmlType::Q5K;
                }
                if n_expert == 8 {
                    t = GgmlType::Q8_0;
                }
                i_attn_v += 1;
            } else if cat == Category::AttnK {
                if n_expert == 8 {
                    t = GgmlType::Q8_0;
                }
            } else if cat == Category::AttnOutput {
                if n_expert == 8 && matches!(ftype, FileType::Q4_K_S | FileType::Q4_K_M) {
                    t = GgmlType::Q5K;
                }
            } else if cat == Category::FfnDown {
                // llama.cpp `layer_info`: experts need not come in layer order, so MoE models
                // read the layer from the name.
                let i = match layer_of(&name) {
                    Some(l) if n_expert > 1 => l,
                    _ => i_ffn_down,
                };
                let n = n_layers;
                match ftype {
                    FileType::Q4_K_M | FileType::Q5_K_M if use_more_bits(i, n) => t = GgmlType::Q6K,
                    FileType::Q4_K_S if i < n / 8 => t = GgmlType::Q5K,
                    _ => {}
                }
                i_ffn_down += 1;
            }
            fallback(t, cols)?
        };
        out.push(TensorPlan {
            name,
            shape,
            from,
            to,
        });
    }
    Ok(out)
}

/// What `quantize` did.
#[derive(Debug, Clone)]
pub struct QuantizeReport {
    pub tensors: Vec<TensorPlan>,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Progress events for a UI: `Start` once with the total element count, then `Tensor` before
/// each tensor and `Rows` as chunks of it are done.
pub enum Progress<'a> {
    Start {
        total_elements: u64,
    },
    Tensor {
        plan: &'a TensorPlan,
        index: usize,
        count: usize,
    },
    Elements(u64),
}

/// One output tensor: its stored parts, written one after the other.
struct SrcTensor {
    /// HF-order shape of the whole tensor.
    shape: Vec<usize>,
    ty: GgmlType,
    /// One stored tensor, or the per-expert HF matrices of a stacked `ffn_*_exps`.
    parts: Vec<Tensor>,
}

impl SrcTensor {
    fn one(t: Tensor) -> Self {
        SrcTensor {
            shape: t.shape.clone(),
            ty: t.ty,
            parts: vec![t],
        }
    }
}

/// Where tensors come from, by GGUF name.
struct Source {
    metadata: Vec<(String, Value)>,
    /// GGUF name → tensor (bytes in the stored format, HF-order shape).
    tensors: BTreeMap<String, SrcTensor>,
    n_layers: usize,
    /// Routed experts per sparse layer (0: dense).
    n_experts: usize,
}

/// `blk.L.ffn_{gate,up,down}_exps.weight` → (L, "gate_proj" | "up_proj" | "down_proj").
fn stacked_experts_of(gguf: &str) -> Option<(usize, &'static str)> {
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let proj = match rest {
        "ffn_gate_exps.weight" => "gate_proj",
        "ffn_up_exps.weight" => "up_proj",
        "ffn_down_exps.weight" => "down_proj",
        _ => return None,
    };
    Some((layer.parse().ok()?, proj))
}

fn open_gguf(path: &Path) -> Result<Source> {
    let g = Arc::new(GgufFile::open(path)?);
    let cfg = Config::from_gguf(&g)?;
    let ws = WeightSource::from_gguf(g.clone());
    let mut tensors = BTreeMap::new();
    for (name, info) in &g.tensors {
        // Read through the HF-name API where a mapping exists; keep any other tensor as is.
        let hf = hf_name(name);
        let t = match (hf, stacked_experts_of(name), info.shape().as_slice()) {
            (Some(hf), _, shape) if ws.contains(&hf) => ws.get(&hf, shape)?,
            (_, Some((layer, proj)), &[n, out, inp]) => {
                ws.stacked_experts(layer, n, proj, out, inp)?
            }
            _ => {
                return Err(Error::Gguf {
                    path: path.to_path_buf(),
                    msg: format!("tensor `{name}` is not part of a Qwen2 model"),
                })
            }
        };
        tensors.insert(name.clone(), SrcTensor::one(t));
    }
    let metadata = g
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(Source {
        metadata,
        tensors,
        n_layers: cfg.num_hidden_layers,
        n_experts: cfg.moe.as_ref().map_or(0, |m| m.num_experts),
    })
}

/// GGUF name → HF name (inverse of `weights::gguf_name`).
fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.into());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let hf = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "ffn_gate_inp" => "mlp.gate",
        "ffn_gate_shexp" => "mlp.shared_expert.gate_proj",
        "ffn_up_shexp" => "mlp.shared_expert.up_proj",
        "ffn_down_shexp" => "mlp.shared_expert.down_proj",
        "ffn_gate_inp_shexp" => "mlp.shared_expert_gate",
        _ => return None,
    };
    let name = format!("model.layers.{layer}.{hf}.{kind}");
    (gguf_name(&name).as_deref() == Some(gguf)).then_some(name)
}

fn open_hf(dir: &Path) -> Result<Source> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let cfg = Config::from_json_str(&text)?;
    let raw: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Config(format!("{}: {e}", cfg_path.display())))?;
    let ws = WeightSource::from_safetensors_dir(dir)?;
    let WeightSource::Safetensors { tensors: st, .. } = &ws else {
        unreachable!("from_safetensors_dir returns Safetensors")
    };
    let mut tensors = BTreeMap::new();
    for (hf, t) in st {
        let mut t = t.clone();
        if hf == "lm_head.weight" && cfg.tie_word_embeddings {
            continue; // tied: llama.cpp reads the embedding for the output too
        }
        // Routed experts (hub per-expert or transformers 5 fused): stacked below.
        let fused =
            hf.ends_with(".mlp.experts.gate_up_proj") || hf.ends_with(".mlp.experts.down_proj");
        if cfg.moe.is_some() && (fused || crate::convert::routed_expert(hf).is_some()) {
            continue;
        }
        // `shared_expert_gate` `[1, H]` is 1-D in llama.cpp's files.
        if let &[1, n] = t.shape.as_slice() {
            if hf.ends_with(".mlp.shared_expert_gate.weight") {
                t.shape = vec![n];
            }
        }
        let Some(g) = gguf_name(hf) else {
            return Err(Error::Safetensors {
                path: dir.to_path_buf(),
                msg: format!("tensor `{hf}` is not part of a Qwen2 model"),
            });
        };
        // 1-D tensors (norms, biases) are stored as F32 in GGUF, as convert_hf_to_gguf does.
        if t.shape.len() == 1 && t.ty != GgmlType::F32 {
            t = t.to_f32()?;
        }
        tensors.insert(g, SrcTensor::one(t));
    }
    if let Some(m) = &cfg.moe {
        let (h, ne, eff) = (cfg.hidden_size, m.num_experts, m.moe_intermediate_size);
        for layer in (0..cfg.num_hidden_layers).filter(|&i| m.sparse_layers[i]) {
            for (proj, out, inp) in [
                ("gate_proj", eff, h),
                ("up_proj", eff, h),
                ("down_proj", h, eff),
            ] {
                let parts = (0..ne)
                    .map(|e| ws.expert(layer, e, ne, proj, out, inp))
                    .collect::<Result<Vec<_>>>()?;
                let ty = parts[0].ty;
                if let Some(p) = parts.iter().find(|p| p.ty != ty) {
                    return Err(Error::Safetensors {
                        path: dir.to_path_buf(),
                        msg: format!(
                            "expert tensors of layer {layer} mix dtypes ({} is {})",
                            p.name,
                            p.ty.name()
                        ),
                    });
                }
                let short = proj.trim_end_matches("_proj");
                tensors.insert(
                    format!("blk.{layer}.ffn_{short}_exps.weight"),
                    SrcTensor {
                        shape: vec![ne, out, inp],
                        ty,
                        parts,
                    },
                );
            }
        }
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut metadata = hf_metadata(&cfg, &name);
    // The tokenizer keys exactly as `qwen2 convert` writes them (shared code).
    if let Some(tok) = crate::convert::gguf_tokenizer_metadata(dir, &raw, cfg.vocab_size)? {
        metadata.retain(|(k, _)| !tok.iter().any(|(t, _)| t == k));
        metadata.extend(tok);
    }
    Ok(Source {
        metadata,
        tensors,
        n_layers: cfg.num_hidden_layers,
        n_experts: cfg.moe.as_ref().map_or(0, |m| m.num_experts),
    })
}

/// The `qwen2.*` architecture keys for a config (what convert_hf_to_gguf writes); the tokenizer
/// keys come from `convert::gguf_tokenizer_metadata`.
fn hf_metadata(cfg: &Config, name: &str) -> Vec<(String, Value)> {
    let a = if cfg.moe.is_some() {
        "qwen2moe"
    } else {
        "qwen2"
    };
    let u = |v: usize| Value::U32(v as u32);
    let mut m = vec![
        ("general.architecture".into(), Value::String(a.into())),
        ("general.type".into(), Value::String("model".into())),
        ("general.name".into(), Value::String(name.into())),
        (format!("{a}.block_count"), u(cfg.num_hidden_layers)),
        (
            format!("{a}.context_length"),
            u(cfg.max_position_embeddings),
        ),
        (format!("{a}.embedding_length"), u(cfg.hidden_size)),
        (format!("{a}.feed_forward_length"), u(cfg.intermediate_size)),
        (
            format!("{a}.attention.head_count"),
            u(cfg.num_attention_heads),
        ),
        (
            format!("{a}.attention.head_count_kv"),
            u(cfg.num_key_value_heads),
        ),
        (
            format!("{a}.rope.freq_base"),
            Value::F32(cfg.rope_theta as f32),
        ),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
    ];
    if cfg.head_dim * cfg.num_attention_heads != cfg.hidden_size {
        m.push((format!("{a}.attention.key_length"), u(cfg.head_dim)));
        m.push((format!("{a}.attention.value_length"), u(cfg.head_dim)));
    }
    match &cfg.rope_scaling {
        Some(RopeScaling::Linear { factor }) => {
            m.push((
                format!("{a}.rope.scaling.type"),
                Value::String("linear".into()),
            ));
            m.push((
                format!("{a}.rope.scaling.factor"),
                Value::F32(*factor as f32),
            ));
        }
        Some(RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            ..
        }) => {
            m.push((
                format!("{a}.rope.scaling.type"),
                Value::String("yarn".into()),
            ));
            m.push((
                format!("{a}.rope.scaling.factor"),
                Value::F32(*factor as f32),
            ));
            m.push((
                format!("{a}.rope.scaling.original_context_length"),
                u(*original_max_position_embeddings),
            ));
        }
        _ => {}
    }
    if let Some(moe) = &cfg.moe {
        m.push((format!("{a}.expert_count"), u(moe.num_experts)));
        m.push((format!("{a}.expert_used_count"), u(moe.num_experts_per_tok)));
        m.push((
            format!("{a}.expert_feed_forward_length"),
            u(moe.moe_intermediate_size),
        ));
        m.push((
            format!("{a}.expert_shared_feed_forward_length"),
            u(moe.shared_expert_intermediate_size),
        ));
        m.push((
            format!("{a}.expert_weights_norm"),
            Value::Bool(moe.norm_topk_prob),
        ));
    }
    if let Some(b) = cfg.bos_token_id {
        m.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(b)));
    }
    if let Some(&e) = cfg.eos_token_ids.first() {
        m.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(e)));
    }
    m
}

/// Rows per work chunk: about 16 MiB of f32 per chunk keeps memory flat on any model size.
fn chunk_rows(cols: usize) -> usize {
    ((16 << 20) / 4 / cols.max(1)).max(1)
}

/// Quantize `input` (GGUF file or HF directory) into `output` as `ftype`. `progress` is called
/// from the calling thread only.
pub fn quantize(
    input: &Path,
    output: &Path,
    ftype: FileType,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<QuantizeReport> {
    let src = if input.is_dir() {
        open_hf(input)?
    } else if input.exists() {
        open_gguf(input)?
    } else {
        return Err(Error::Invalid(format!(
            "{} does not exist (expected a .gguf file or a Hugging Face model directory)",
            input.display()
        )));
    };
    if input.canonicalize().ok() == output.canonicalize().ok() {
        return Err(Error::Invalid(format!(
            "input and output are the same file ({})",
            output.display()
        )));
    }
    let list: Vec<_> = src
        .tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.shape.clone(), t.ty))
        .collect();
    let plans = plan_with_experts(ftype, &list, src.n_layers, src.n_experts)?;

    let mut w = GgufWriter::new();
    for (k, v) in &src.metadata {
        if k.starts_with("split.") {
            continue;
        }
        w.set(k.clone(), v.clone());
    }
    w.set("general.quantization_version", Value::U32(2));
    w.set("general.file_type", Value::U32(ftype.id()));
    for p in &plans {
        w.add_tensor(&p.name, &p.shape, p.to)?;
    }
    let total: u64 = plans
        .iter()
        .map(|p| p.shape.iter().product::<usize>() as u64)
        .sum();
    progress(Progress::Start {
        total_elements: total,
    });
    let mut out = w.create(output)?;
    let (mut bytes_in, mut bytes_out) = (0u64, 0u64);
    for (index, p) in plans.iter().enumerate() {
        progress(Progress::Tensor {
            plan: p,
            index,
            count: plans.len(),
        });
        for t in &src.tensors[&p.name].parts {
            let data = t.bytes();
            bytes_in += data.len() as u64;
            if p.to == p.from {
                out.write_tensor_chunk(&p.name, data)?;
                bytes_out += data.len() as u64;
                progress(Progress::Elements(t.n_elements() as u64));
                continue;
            }
            let m = t.as_mat()?;
            let in_row = p.from.row_bytes(m.cols)?;
            let out_row = p.to.row_bytes(m.cols)?;
            let step = chunk_rows(m.cols);
            let mut buf = Vec::new();
            for r0 in (0..m.rows).step_by(step) {
                let n = step.min(m.rows - r0);
                buf.resize(n * out_row, 0);
                buf.par_chunks_mut(out_row).enumerate().try_for_each_init(
                    || vec![0f32; m.cols],
                    |row, (i, dst)| -> Result<()> {
                        let r = r0 + i;
                        qwen2_kernels::dequantize_row(
                            p.from,
                            &data[r * in_row..(r + 1) * in_row],
                            row,
                        )?;
                        qwen2_kernels::quantize_row(p.to, row, dst)?;
                        Ok(())
                    },
                )?;
                out.write_tensor_chunk(&p.name, &buf)?;
                bytes_out += buf.len() as u64;
                progress(Progress::Elements((n * m.cols) as u64));
            }
        }
    }
    out.finish()?;
    Ok(QuantizeReport {
        tensors: plans,
        bytes_in,
        bytes_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_more_bits_matches_llama_cpp() {
        // llama.cpp: i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2 (C remainder, i >= n/8 here).
        let got: Vec<usize> = (0..24).filter(|&i| use_more_bits(i, 24)).collect();
        assert_eq!(got, [0, 1, 2, 5, 8, 11, 14, 17, 20, 21, 22, 23]);
        let got: Vec<usize> = (0..5).filter(|&i| use_more_bits(i, 5)).collect();
        assert_eq!(got, [2, 4]);
    }

    #[test]
    fn names_round_trip_and_unknown_types_are_listed() {
        assert_eq!(
            hf_name("blk.7.ffn_down.weight").as_deref(),
            Some("model.layers.7.mlp.down_proj.weight")
        );
        assert_eq!(hf_name("blk.x.ffn_down.weight"), None);
        assert_eq!("q4_k_m".parse::<FileType>().unwrap(), FileType::Q4_K_M);
        let e = "Q3_K_XL".parse::<FileType>().unwrap_err().to_string();
        assert!(
            e.contains("Q3_K_XL") && e.contains("Q4_K_M") && e.contains("BF16"),
            "{e}"
        );
    }

    #[test]
    fn fallback_for_rows_not_multiple_of_256() {
        // Qwen2-72B ffn_down rows are 29568 = 115.5 * 256 values long.
        assert_eq!(fallback(GgmlType::Q4K, 29568).unwrap(), GgmlType::Q5_0);
        assert_eq!(fallback(GgmlType::Q6K, 29568).unwrap(), GgmlType::Q8_0);
        assert_eq!(fallback(GgmlType::Q5K, 29568).unwrap(), GgmlType::Q5_1);
        assert_eq!(fallback(GgmlType::Q4K, 48).unwrap(), GgmlType::F16);
        assert_eq!(fallback(GgmlType::Q4K, 512).unwrap(), GgmlType::Q4K);
    }
}
