//! `qwen2 convert`: GGUF file ⇄ Hugging Face model directory.
//!
//! GGUF → HF writes what `Qwen2ForCausalLM.from_pretrained` and `AutoTokenizer` read:
//! config.json, generation_config.json, tokenizer.json + tokenizer_config.json (the GGUF
//! vocabulary rebuilt as transformers' Qwen2TokenizerFast has it) and safetensors shards in
//! bf16/f16/f32, every tensor dequantized on its own so a model is never in memory twice.
//!
//! HF → GGUF writes the metadata llama.cpp's `convert_hf_to_gguf.py` writes for Qwen2, in its
//! order; norms and biases in f32, matrices in the chosen type, streamed in row blocks.
//!
//! Qwen2-MoE (`qwen2_moe` ⇄ GGUF `qwen2moe`): the hub's per-expert
//! `mlp.experts.E.{gate,up,down}_proj` (or transformers 5's fused experts) ⇄ llama.cpp's stacked
//! `ffn_{gate,up,down}_exps` `[n_experts, out, in]`, written one expert after the other; the
//! router `ffn_gate_inp` stays f32 and the `[1, H]` `shared_expert_gate` is 1-D in the GGUF.
//!
//! Q and K need no permutation either way: llama.cpp permutes them only for the `llama`
//! architecture, and its `qwen2` graph uses the NEOX rotary layout that transformers uses.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use qwen2_kernels::{dequantize_row, quantize_row, GgmlType, KernelError};
use rayon::prelude::*;
use serde_json::{json, Value as Json};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::weights::Tensor;

mod to_gguf;
mod to_hf;

pub use to_gguf::{gguf_tokenizer_metadata, hf_to_gguf};
pub use to_hf::{gguf_to_hf, hf_config_json, hf_tokenizer_files, HfTokenizerFiles};

/// Default largest safetensors shard (transformers' own default is larger; 2 GB shards are
/// easier to move around and stay under common per-file upload limits).
pub const DEFAULT_MAX_SHARD_SIZE: u64 = 2_000_000_000;

/// Bytes of f32 activations converted per block when streaming a tensor into a GGUF.
const STREAM_BLOCK_BYTES: usize = 32 << 20;

/// Element type of the safetensors written for a Hugging Face directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HfDtype {
    #[default]
    Bf16,
    F16,
    F32,
}

impl HfDtype {
    fn ggml(self) -> GgmlType {
        match self {
            HfDtype::Bf16 => GgmlType::BF16,
            HfDtype::F16 => GgmlType::F16,
            HfDtype::F32 => GgmlType::F32,
        }
    }
    fn safetensors(self) -> safetensors::Dtype {
        match self {
            HfDtype::Bf16 => safetensors::Dtype::BF16,
            HfDtype::F16 => safetensors::Dtype::F16,
            HfDtype::F32 => safetensors::Dtype::F32,
        }
    }
    /// The name config.json uses (`torch_dtype` / `dtype`).
    pub fn torch_name(self) -> &'static str {
        match self {
            HfDtype::Bf16 => "bfloat16",
            HfDtype::F16 => "float16",
            HfDtype::F32 => "float32",
        }
    }
    fn size(self) -> usize {
        match self {
            HfDtype::F32 => 4,
            _ => 2,
        }
    }
}

impl FromStr for HfDtype {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "bf16" | "bfloat16" => Ok(HfDtype::Bf16),
            "f16" | "fp16" | "float16" => Ok(HfDtype::F16),
            "f32" | "fp32" | "float32" => Ok(HfDtype::F32),
            _ => Err(Error::Invalid(format!(
                "unknown safetensors dtype `{s}`; supported: bf16, f16, f32"
            ))),
        }
    }
}

/// Tensor type of the matrices in a GGUF written from a Hugging Face directory
/// (`convert_hf_to_gguf.py --outtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GgufOutType {
    F32,
    #[default]
    F16,
    Bf16,
    Q8_0,
}

impl GgufOutType {
    fn ggml(self) -> GgmlType {
        match self {
            GgufOutType::F32 => GgmlType::F32,
            GgufOutType::F16 => GgmlType::F16,
            GgufOutType::Bf16 => GgmlType::BF16,
            GgufOutType::Q8_0 => GgmlType::Q8_0,
        }
    }
    /// `general.file_type` (llama.cpp `LlamaFileType`).
    fn file_type(self) -> u32 {
        match self {
            GgufOutType::F32 => 0,
            GgufOutType::F16 => 1,
            GgufOutType::Q8_0 => 7,
            GgufOutType::Bf16 => 32,
        }
    }
}

impl FromStr for GgufOutType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(GgufOutType::F32),
            "f16" => Ok(GgufOutType::F16),
            "bf16" => Ok(GgufOutType::Bf16),
            "q8_0" => Ok(GgufOutType::Q8_0),
            _ => Err(Error::Invalid(format!(
                "unknown GGUF outtype `{s}`; supported: f16, bf16, f32, q8_0"
            ))),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ToHfOptions {
    pub dtype: HfDtype,
    /// Largest safetensors shard in bytes (a tensor bigger than this gets a shard of its own).
    pub max_shard_size: u64,
    /// Replace a non-empty output directory.
    pub force: bool,
}

impl Default for ToHfOptions {
    fn default() -> Self {
        ToHfOptions {
            dtype: HfDtype::default(),
            max_shard_size: DEFAULT_MAX_SHARD_SIZE,
            force: false,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ToGgufOptions {
    pub outtype: GgufOutType,
    /// Replace an existing output file.
    pub force: bool,
}

/// What a conversion wrote.
#[derive(Debug, Clone)]
pub struct Converted {
    pub output: PathBuf,
    /// Files written (inside `output` for a Hugging Face directory).
    pub files: Vec<PathBuf>,
    pub tensors: usize,
    /// Bytes of tensor data written.
    pub tensor_bytes: u64,
    /// Things the user should know (a tensor type fallback, a tokenizer left out, ...).
    pub notes: Vec<String>,
}

/// "2GB", "500MB", "1.5GiB", "123456" → bytes (GB/MB/KB decimal as transformers, GiB/MiB/KiB binary).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let mult: f64 = match unit.as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => f64::NAN,
    };
    match num.parse::<f64>() {
        Ok(n) if mult.is_finite() && n > 0.0 && (n * mult) >= 1.0 => Ok((n * mult) as u64),
        _ => Err(Error::Invalid(format!(
            "size `{s}` is not a positive size such as 2GB, 500MB, 1GiB or a byte count"
        ))),
    }
}

/// `model.layers.L.mlp.experts.E.{proj}.weight` → `(L, E, proj)` for a routed expert's matrix.
pub(crate) fn routed_expert(hf: &str) -> Option<(usize, usize, &str)> {
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once(".mlp.experts.")?;
    let (e, rest) = rest.split_once('.')?;
    let proj = rest.strip_suffix(".weight")?;
    if !matches!(proj, "gate_proj" | "up_proj" | "down_proj") {
        return None;
    }
    Some((layer.parse().ok()?, e.parse().ok()?, proj))
}

/// GGUF name of the stacked `[n_experts, out, inp]` tensor holding every expert's `proj`.
fn stacked_experts_name(layer: usize, proj: &str) -> String {
    format!(
        "blk.{layer}.ffn_{}_exps.weight",
        proj.trim_end_matches("_proj")
    )
}

/// The GGUF architecture (and metadata key prefix) of `cfg`.
fn gguf_arch(cfg: &Config) -> &'static str {
    if cfg.moe.is_some() {
        "qwen2moe"
    } else {
        "qwen2"
    }
}

/// Every tensor of a Qwen2 or Qwen2-MoE checkpoint: HF name and HF shape (routed experts in the
/// hub's per-expert layout), in transformers' state-dict order.
pub fn qwen2_tensors(cfg: &Config, lm_head: bool) -> Vec<(String, Vec<usize>)> {
    let (h, q, kv, ff) = (
        cfg.hidden_size,
        cfg.q_dim(),
        cfg.kv_dim(),
        cfg.intermediate_size,
    );
    let mut v = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![cfg.vocab_size, h],
    )];
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let layer = [
            ("self_attn.q_proj.weight", vec![q, h]),
            ("self_attn.q_proj.bias", vec![q]),
            ("self_attn.k_proj.weight", vec![kv, h]),
            ("self_attn.k_proj.bias", vec![kv]),
            ("self_attn.v_proj.weight", vec![kv, h]),
            ("self_attn.v_proj.bias", vec![kv]),
            ("self_attn.o_proj.weight", vec![h, q]),
        ];
        v.extend(layer.into_iter().map(|(n, s)| (format!("{p}.{n}"), s)));
        match cfg
            .moe
            .as_ref()
            .filter(|m| m.sparse_layers.get(i) == Some(&true))
        {
            // Qwen2MoeSparseMoeBlock, in the hub's per-expert layout.
            Some(m) => {
                let (ne, eff, sff) = (
                    m.num_experts,
                    m.moe_intermediate_size,
                    m.shared_expert_intermediate_size,
                );
                v.push((format!("{p}.mlp.gate.weight"), vec![ne, h]));
                for e in 0..ne {
                    let x = format!("{p}.mlp.experts.{e}");
                    v.push((format!("{x}.gate_proj.weight"), vec![eff, h]));
                    v.push((format!("{x}.up_proj.weight"), vec![eff, h]));
                    v.push((format!("{x}.down_proj.weight"), vec![h, eff]));
                }
                let x = format!("{p}.mlp.shared_expert");
                v.push((format!("{x}.gate_proj.weight"), vec![sff, h]));
                v.push((format!("{x}.up_proj.weight"), vec![sff, h]));
                v.push((format!("{x}.down_proj.weight"), vec![h, sff]));
                v.push((format!("{p}.mlp.shared_expert_gate.weight"), vec![1, h]));
            }
            None => {
                v.push((format!("{p}.mlp.gate_proj.weight"), vec![ff, h]));
                v.push((format!("{p}.mlp.up_proj.weight"), vec![ff, h]));
                v.push((format!("{p}.mlp.down_proj.weight"), vec![h, ff]));
            }
        }
        v.push((format!("{p}.input_layernorm.weight"), vec![h]));
        v.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
    }
    v.push(("model.norm.weight".to_string(), vec![h]));
    if lm_head {
        v.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, h]));
    }
    v
}

/// `value` as the shortest decimal of its f32 (GGUF stores f32: 9.999999974752427e-07 → 1e-06).
fn f32_json(value: f64) -> Json {
    let short: f64 = format!("{}", value as f32).parse().unwrap_or(value);
    json!(short)
}

/// Re-encode every row of `t` as `target` (rows in parallel).
fn reencode_rows(t: &Tensor, target: GgmlType, rows: std::ops::Range<usize>) -> Result<Vec<u8>> {
    let m = t.as_mat()?;
    let out_row = target.row_bytes(m.cols)?;
    let mut out = vec![0u8; out_row * rows.len()];
    if out_row > 0 {
        out.par_chunks_mut(out_row).enumerate().try_for_each_init(
            || vec![0f32; m.cols],
            |buf, (i, o)| -> std::result::Result<(), KernelError> {
                dequantize_row(t.ty, m.row(rows.start + i), buf)?;
                quantize_row(target, buf, o)
            },
        )?;
    }
    Ok(out)
}

/// Convert `input` into `out`: a GGUF file becomes a Hugging Face directory, a directory a GGUF.
pub fn convert(
    input: &Path,
    out: &Path,
    to_hf: &ToHfOptions,
    to_gguf: &ToGgufOptions,
) -> Result<Converted> {
    if input.is_dir() {
        hf_to_gguf(input, out, to_gguf)
    } else if input.is_file() {
        gguf_to_hf(input, out, to_hf)
    } else {
        Err(Error::Invalid(format!(
            "{} does not exist (expected a .gguf file or a Hugging Face model directory)",
            input.display()
        )))
    }
}
