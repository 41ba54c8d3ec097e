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

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use qwen2_kernels::{dequantize_row, quantize_row, GgmlType, KernelError};
use qwen2_tokenizer::{token_type, Tokenizer, QWEN2_PRETOKENIZE_REGEX};
use rayon::prelude::*;
use serde_json::{json, Map, Value as Json};

use crate::config::{Config, RopeScaling};
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, Value};
use crate::gguf_write::{GgufOutput, GgufWriter};
use crate::loader::{gguf_sampling_defaults, gguf_tokenizer};
use crate::weights::{gguf_name, Tensor, WeightSource};

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

// ------------------------------------------------------------------------------------------
// Output staging
// ------------------------------------------------------------------------------------------

/// A Hugging Face directory written into `OUT.tmp-convert` and renamed into place at the end,
/// so an interrupted conversion never leaves a half-written `OUT`.
struct Staging {
    tmp: PathBuf,
    out: PathBuf,
    done: bool,
}

impl Staging {
    fn new(out: &Path, force: bool) -> Result<Self> {
        if out.is_file() && !force {
            return Err(Error::Invalid(format!(
                "{} exists and is a file; pass --force to replace it with the model directory",
                out.display()
            )));
        }
        if out.is_dir() && !force {
            let non_empty = std::fs::read_dir(out)
                .map_err(|e| Error::io(out, e))?
                .next()
                .is_some();
            if non_empty {
                return Err(Error::Invalid(format!(
                    "{} is not empty; pass --force to replace it",
                    out.display()
                )));
            }
        }
        let name = out.file_name().ok_or_else(|| {
            Error::Invalid(format!("{} is not a usable output path", out.display()))
        })?;
        let mut tmp_name = name.to_owned();
        tmp_name.push(".tmp-convert");
        let tmp = out.with_file_name(tmp_name);
        if tmp.exists() {
            // Left by an interrupted run: ours to clean.
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(Staging {
            tmp,
            out: out.to_path_buf(),
            done: false,
        })
    }

    fn path(&self, file: &str) -> PathBuf {
        self.tmp.join(file)
    }

    fn write_json(&self, file: &str, j: &Json) -> Result<PathBuf> {
        let mut text =
            serde_json::to_string_pretty(j).map_err(|e| Error::Invalid(format!("{file}: {e}")))?;
        text.push('\n');
        self.write_text(file, &text)
    }

    fn write_text(&self, file: &str, text: &str) -> Result<PathBuf> {
        let p = self.path(file);
        std::fs::write(&p, text).map_err(|e| Error::io(&p, e))?;
        Ok(self.out.join(file))
    }

    fn commit(mut self) -> Result<()> {
        if self.out.is_dir() {
            std::fs::remove_dir_all(&self.out).map_err(|e| Error::io(&self.out, e))?;
        } else if self.out.exists() {
            std::fs::remove_file(&self.out).map_err(|e| Error::io(&self.out, e))?;
        }
        std::fs::rename(&self.tmp, &self.out).map_err(|e| Error::io(&self.out, e))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

// ------------------------------------------------------------------------------------------
// GGUF → Hugging Face
// ------------------------------------------------------------------------------------------

/// tokenizer.json and tokenizer_config.json rebuilt from a GGUF's `tokenizer.ggml.*` metadata.
pub struct HfTokenizerFiles {
    pub tokenizer_json: String,
    pub tokenizer_config: Json,
    pub tokenizer: Tokenizer,
}

/// The Hugging Face tokenizer files of a GGUF, or `None` when it carries no tokenizer.
/// `model_max_length` is the model's context length.
pub fn hf_tokenizer_files(
    g: &GgufFile,
    model_max_length: usize,
) -> Result<Option<HfTokenizerFiles>> {
    let Some(tok) = gguf_tokenizer(g)? else {
        return Ok(None);
    };
    let tokenizer_json = tok.to_json_string()?;
    let add_bos = g.get_bool("tokenizer.ggml.add_bos_token").unwrap_or(false);

    // (id, content, lstrip, normalized, rstrip, single_word, special), by id.
    let mut added: Vec<(u32, String, [bool; 5])> = tok
        .inner()
        .get_added_tokens_decoder()
        .into_iter()
        .map(|(id, t)| {
            let flags = [t.lstrip, t.normalized, t.rstrip, t.single_word, t.special];
            (id, t.content, flags)
        })
        .collect();
    added.sort_by_key(|a| a.0);

    // Qwen2's tokenizer_config.json has no bos_token (the model never uses one) unless the
    // GGUF says BOS is prepended.
    let bos = if add_bos { tok.bos_token() } else { None };
    let (eos, pad) = (tok.eos_token(), tok.pad_token());
    let named: Vec<&str> = [bos, eos, pad].into_iter().flatten().collect();
    let mut decoder = Map::new();
    let mut additional = Vec::new();
    for (id, content, [lstrip, normalized, rstrip, single_word, special]) in &added {
        decoder.insert(
            id.to_string(),
            json!({
                "content": content,
                "lstrip": lstrip,
                "normalized": normalized,
                "rstrip": rstrip,
                "single_word": single_word,
                "special": special,
            }),
        );
        if *special && !named.contains(&content.as_str()) {
            additional.push(json!(content));
        }
    }
    let mut cfg = Map::new();
    cfg.insert("add_bos_token".into(), json!(add_bos));
    cfg.insert("add_prefix_space".into(), json!(false));
    cfg.insert("added_tokens_decoder".into(), Json::Object(decoder));
    cfg.insert("additional_special_tokens".into(), Json::Array(additional));
    cfg.insert("bos_token".into(), json!(bos));
    if let Some(t) = g.get_str("tokenizer.chat_template") {
        cfg.insert("chat_template".into(), json!(t));
    }
    cfg.insert("clean_up_tokenization_spaces".into(), json!(false));
    cfg.insert("eos_token".into(), json!(eos));
    cfg.insert("errors".into(), json!("replace"));
    cfg.insert("model_max_length".into(), json!(model_max_length));
    cfg.insert("pad_token".into(), json!(pad));
    cfg.insert("split_special_tokens".into(), json!(false));
    cfg.insert("tokenizer_class".into(), json!("Qwen2Tokenizer"));
    cfg.insert("unk_token".into(), Json::Null);
    Ok(Some(HfTokenizerFiles {
        tokenizer_json,
        tokenizer_config: Json::Object(cfg),
        tokenizer: tok,
    }))
}

/// The `rope_scaling` dict of config.json for `r` (transformers 4.x form, also read by 5.x).
fn rope_scaling_json(r: &RopeScaling) -> Json {
    match r {
        RopeScaling::Linear { factor } => {
            json!({"factor": factor, "rope_type": "linear", "type": "linear"})
        }
        RopeScaling::Dynamic { factor } => {
            json!({"factor": factor, "rope_type": "dynamic", "type": "dynamic"})
        }
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
            attention_factor,
            mscale,
            mscale_all_dim,
            truncate,
        } => {
            let mut m = Map::new();
            m.insert("factor".into(), json!(factor));
            m.insert(
                "original_max_position_embeddings".into(),
                json!(original_max_position_embeddings),
            );
            m.insert("rope_type".into(), json!("yarn"));
            m.insert("type".into(), json!("yarn"));
            // Only what differs from transformers' defaults.
            if *beta_fast != 32.0 {
                m.insert("beta_fast".into(), json!(beta_fast));
            }
            if *beta_slow != 1.0 {
                m.insert("beta_slow".into(), json!(beta_slow));
            }
            for (k, v) in [
                ("attention_factor", attention_factor),
                ("mscale", mscale),
                ("mscale_all_dim", mscale_all_dim),
            ] {
                if let Some(v) = v {
                    m.insert(k.into(), json!(v));
                }
            }
            if !truncate {
                m.insert("truncate".into(), json!(false));
            }
            Json::Object(m)
        }
    }
}

/// config.json for `cfg`, in the form Qwen publishes (transformers 4.x keys, which 5.x reads).
pub fn hf_config_json(cfg: &Config, tie_word_embeddings: bool, dtype: HfDtype) -> Result<Json> {
    // Sliding windows are representable only as Qwen2Config's "layers from
    // max_window_layers on, one window size".
    let first = cfg.sliding_window.iter().position(Option::is_some);
    let (use_sw, window, max_window_layers) = match first {
        None => (false, cfg.max_position_embeddings, cfg.num_hidden_layers),
        Some(from) => {
            let w = cfg.sliding_window[from].unwrap_or_default();
            if cfg.sliding_window[from..].iter().any(|x| *x != Some(w)) {
                return Err(Error::Config(format!(
                    "sliding windows {:?} cannot be written as one `sliding_window` from `max_window_layers` on",
                    cfg.sliding_window
                )));
            }
            (true, w, from)
        }
    };
    let mut m = Map::new();
    m.insert("architectures".into(), json!(["Qwen2ForCausalLM"]));
    m.insert("attention_dropout".into(), json!(0.0));
    m.insert("bos_token_id".into(), json!(cfg.bos_token_id));
    let eos = match cfg.eos_token_ids.as_slice() {
        [] => Json::Null,
        [one] => json!(one),
        many => json!(many),
    };
    m.insert("eos_token_id".into(), eos);
    if cfg.head_dim * cfg.num_attention_heads != cfg.hidden_size {
        m.insert("head_dim".into(), json!(cfg.head_dim));
    }
    m.insert("hidden_act".into(), json!("silu"));
    m.insert("hidden_size".into(), json!(cfg.hidden_size));
    m.insert("initializer_range".into(), json!(0.02));
    m.insert("intermediate_size".into(), json!(cfg.intermediate_size));
    m.insert(
        "max_position_embeddings".into(),
        json!(cfg.max_position_embeddings),
    );
    m.insert("max_window_layers".into(), json!(max_window_layers));
    m.insert("model_type".into(), json!("qwen2"));
    m.insert("num_attention_heads".into(), json!(cfg.num_attention_heads));
    m.insert("num_hidden_layers".into(), json!(cfg.num_hidden_layers));
    m.insert("num_key_value_heads".into(), json!(cfg.num_key_value_heads));
    m.insert("rms_norm_eps".into(), f32_json(cfg.rms_norm_eps));
    m.insert(
        "rope_scaling".into(),
        cfg.rope_scaling
            .as_ref()
            .map(rope_scaling_json)
            .unwrap_or(Json::Null),
    );
    m.insert("rope_theta".into(), f32_json(cfg.rope_theta));
    m.insert("sliding_window".into(), json!(window));
    m.insert("tie_word_embeddings".into(), json!(tie_word_embeddings));
    // `torch_dtype` for transformers 4.x, `dtype` for 5.x.
    m.insert("torch_dtype".into(), json!(dtype.torch_name()));
    m.insert("dtype".into(), json!(dtype.torch_name()));
    m.insert("use_cache".into(), json!(true));
    m.insert("use_sliding_window".into(), json!(use_sw));
    m.insert("vocab_size".into(), json!(cfg.vocab_size));
    if let Some(moe) = &cfg.moe {
        if use_sw {
            // Qwen2MoeConfig places sliding layers by another rule than Qwen2Config.
            return Err(Error::Config(
                "sliding-window attention cannot be written into a Qwen2-MoE config.json".into(),
            ));
        }
        m.insert("architectures".into(), json!(["Qwen2MoeForCausalLM"]));
        m.insert("model_type".into(), json!("qwen2_moe"));
        // Every layer a sparse candidate; the dense ones listed by index.
        let dense: Vec<usize> = (0..cfg.num_hidden_layers)
            .filter(|&i| moe.sparse_layers.get(i) != Some(&true))
            .collect();
        m.insert("decoder_sparse_step".into(), json!(1));
        m.insert("mlp_only_layers".into(), json!(dense));
        m.insert(
            "moe_intermediate_size".into(),
            json!(moe.moe_intermediate_size),
        );
        m.insert("norm_topk_prob".into(), json!(moe.norm_topk_prob));
        m.insert("num_experts".into(), json!(moe.num_experts));
        m.insert("num_experts_per_tok".into(), json!(moe.num_experts_per_tok));
        m.insert("output_router_logits".into(), json!(false));
        m.insert("qkv_bias".into(), json!(true));
        m.insert("router_aux_loss_coef".into(), json!(0.001));
        m.insert(
            "shared_expert_intermediate_size".into(),
            json!(moe.shared_expert_intermediate_size),
        );
    }
    Ok(Json::Object(m))
}

/// generation_config.json: every end id, and for instruct models the sampling defaults their
/// published generation_config.json sets (the same the loader gives the GGUF).
fn generation_config_json(
    cfg: &Config,
    tok: Option<&Tokenizer>,
    pad_id: Option<u32>,
    instruct_defaults: &crate::sampling::SamplingParams,
) -> Json {
    let instruct = instruct_defaults.temperature > 0.0;
    let mut eos: Vec<u32> = cfg.eos_token_ids.clone();
    if instruct {
        // Instruct models end turns with <|im_end|> and documents with <|endoftext|>.
        for id in tok.map(Tokenizer::eos_ids).unwrap_or_default() {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
    }
    let mut m = Map::new();
    if let Some(b) = cfg.bos_token_id {
        m.insert("bos_token_id".into(), json!(b));
    }
    match eos.as_slice() {
        [] => {}
        [one] => {
            m.insert("eos_token_id".into(), json!(one));
        }
        many => {
            m.insert("eos_token_id".into(), json!(many));
        }
    }
    if let Some(p) = pad_id {
        m.insert("pad_token_id".into(), json!(p));
    }
    m.insert("do_sample".into(), json!(instruct));
    if instruct {
        let d = instruct_defaults;
        m.insert(
            "repetition_penalty".into(),
            f32_json(d.repetition_penalty as f64),
        );
        m.insert("temperature".into(), f32_json(d.temperature as f64));
        m.insert("top_k".into(), json!(d.top_k));
        m.insert("top_p".into(), f32_json(d.top_p as f64));
    }
    Json::Object(m)
}

/// A GGUF tensor as a safetensors view: converted to the output dtype only when the writer asks
/// for its bytes, so one tensor at a time is ever materialised.
struct LazyView {
    t: Tensor,
    dtype: HfDtype,
}

impl LazyView {
    fn new(t: Tensor, dtype: HfDtype) -> Result<Self> {
        // Everything `data()` relies on is checked here, where errors can be returned.
        t.as_mat()?;
        Ok(LazyView { t, dtype })
    }
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

impl safetensors::View for LazyView {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype.safetensors()
    }
    fn shape(&self) -> &[usize] {
        &self.t.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        if self.t.ty == self.dtype.ggml() {
            return Cow::Borrowed(self.t.bytes());
        }
        let rows = self.t.n_elements() / self.t.shape.last().copied().unwrap_or(1).max(1);
        match reencode_rows(&self.t, self.dtype.ggml(), 0..rows) {
            Ok(b) => Cow::Owned(b),
            // `new` validated the byte layout, and F32/F16/BF16 encode any row length.
            Err(e) => unreachable!("tensor `{}` validated before writing: {e}", self.t.name),
        }
    }
    fn data_len(&self) -> usize {
        self.t.n_elements() * self.dtype.size()
    }
}

/// Is `a` stored exactly like `b` (same type, shape and bytes)?
fn same_tensor(g: &GgufFile, a: &str, b: &str) -> bool {
    match (g.tensors.get(a), g.tensors.get(b)) {
        (Some(x), Some(y)) => {
            x.ty == y.ty && x.dims == y.dims && g.tensor_data(x) == g.tensor_data(y)
        }
        _ => false,
    }
}

/// Every GGUF tensor must be one a Qwen2 checkpoint holds: nothing is silently dropped.
fn check_gguf_tensor_set(
    g: &GgufFile,
    expected: &[(String, Vec<usize>)],
    tied: bool,
) -> Result<()> {
    let known: std::collections::HashSet<String> = expected
        .iter()
        .filter_map(|(hf, _)| match routed_expert(hf) {
            Some((layer, _, proj)) => Some(stacked_experts_name(layer, proj)),
            None => gguf_name(hf),
        })
        .collect();
    let unknown: Vec<&str> = g
        .tensors
        .keys()
        .filter(|n| {
            let allowed = known.contains(n.as_str()) || (tied && n.as_str() == "output.weight");
            !allowed
        })
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Err(Error::Gguf {
            path: g.path.clone(),
            msg: format!(
                "tensors {unknown:?} are not part of a Qwen2 checkpoint; refusing to drop them"
            ),
        });
    }
    Ok(())
}

/// Convert a GGUF file into a Hugging Face model directory `out`.
pub fn gguf_to_hf(input: &Path, out: &Path, opts: &ToHfOptions) -> Result<Converted> {
    if opts.max_shard_size == 0 {
        return Err(Error::Invalid("max shard size must be positive".into()));
    }
    let g = Arc::new(GgufFile::open(input)?);
    let cfg = Config::from_gguf(&g)?;
    let mut notes = Vec::new();

    // A separate output.weight becomes lm_head.weight (transformers then needs
    // tie_word_embeddings = false, or it would overwrite the head with the embedding); one
    // stored exactly like the embedding is the tied head written twice.
    let has_output = g.tensors.contains_key("output.weight");
    let tied_copy = has_output && same_tensor(&g, "output.weight", "token_embd.weight");
    let separate_head = has_output && !tied_copy;
    if tied_copy {
        notes.push("output.weight equals token_embd.weight: written as tied embeddings".into());
    }
    let expected = qwen2_tensors(&cfg, separate_head);
    check_gguf_tensor_set(&g, &expected, tied_copy)?;

    let name = g
        .get_str("general.name")
        .map(str::to_owned)
        .unwrap_or_else(|| {
            input
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        });
    let tok_files = hf_tokenizer_files(&g, cfg.max_position_embeddings)?;
    let chat = g.get_str("tokenizer.chat_template").is_some();
    let defaults = gguf_sampling_defaults(&name, chat);
    let pad_id = g
        .get_u64("tokenizer.ggml.padding_token_id")
        .map(|v| v as u32);

    let src = WeightSource::from_gguf(g.clone());
    let mut views = Vec::with_capacity(expected.len());
    let n_experts = cfg.moe.as_ref().map_or(0, |m| m.num_experts);
    for (hf, shape) in &expected {
        let t = match routed_expert(hf) {
            // A view of one expert's rows in the stacked GGUF tensor.
            Some((layer, e, proj)) => src.expert(layer, e, n_experts, proj, shape[0], shape[1])?,
            None => src.get(hf, shape)?,
        };
        views.push((hf.clone(), LazyView::new(t, opts.dtype)?));
    }

    let stage = Staging::new(out, opts.force)?;
    let mut files = vec![
        stage.write_json(
            "config.json",
            &hf_config_json(&cfg, !separate_head, opts.dtype)?,
        )?,
        stage.write_json(
            "generation_config.json",
            &generation_config_json(
                &cfg,
                tok_files.as_ref().map(|t| &t.tokenizer),
                pad_id,
                &defaults,
            ),
        )?,
    ];
    match &tok_files {
        Some(t) => {
            files.push(stage.write_text("tokenizer.json", &t.tokenizer_json)?);
            files.push(stage.write_json("tokenizer_config.json", &t.tokenizer_config)?);
        }
        None => notes.push(
            "the GGUF has no tokenizer metadata: no tokenizer.json written (ids-only use)".into(),
        ),
    }

    let n_tensors = views.len();
    let (shard_files, tensor_bytes) = write_shards(&stage, views, opts.max_shard_size)?;
    files.extend(shard_files);
    stage.commit()?;
    Ok(Converted {
        output: out.to_path_buf(),
        files,
        tensors: n_tensors,
        tensor_bytes,
        notes,
    })
}

/// Split `views` (in order) into shards of at most `max` bytes and write them, plus the index
/// when there is more than one shard (transformers' layout; one shard is `model.safetensors`).
fn write_shards(
    stage: &Staging,
    views: Vec<(String, LazyView)>,
    max: u64,
) -> Result<(Vec<PathBuf>, u64)> {
    let mut shards: Vec<Vec<(String, LazyView)>> = vec![Vec::new()];
    let mut size = 0u64;
    let mut total = 0u64;
    for (name, v) in views {
        let n = safetensors::View::data_len(&v) as u64;
        let last = shards.last_mut().expect("at least one shard");
        if !last.is_empty() && size + n > max {
            shards.push(Vec::new());
            size = 0;
        }
        size += n;
        total += n;
        shards
            .last_mut()
            .expect("at least one shard")
            .push((name, v));
    }
    let count = shards.len();
    let file_name = |i: usize| {
        if count == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{count:05}.safetensors", i + 1)
        }
    };
    let mut weight_map = BTreeMap::new();
    let mut files = Vec::new();
    for (i, shard) in shards.into_iter().enumerate() {
        let file = file_name(i);
        for (name, _) in &shard {
            weight_map.insert(name.clone(), file.clone());
        }
        let path = stage.path(&file);
        // transformers refuses safetensors without `format: pt` metadata.
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(shard, Some(meta), &path).map_err(|e| {
            Error::Safetensors {
                path: path.clone(),
                msg: format!("writing failed: {e}"),
            }
        })?;
        files.push(stage.out.join(&file));
    }
    if count > 1 {
        let index = json!({
            "metadata": {"total_size": total},
            "weight_map": weight_map,
        });
        files.push(stage.write_json("model.safetensors.index.json", &index)?);
    }
    Ok((files, total))
}

// ------------------------------------------------------------------------------------------
// Hugging Face → GGUF
// ------------------------------------------------------------------------------------------

fn read_json_file(path: &Path) -> Result<Option<Json>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::Config(format!("{}: not valid JSON: {e}", path.display())))
}

/// `"<|im_end|>"` or `{"content": "<|im_end|>", ...}` → the token text.
fn token_text(v: Option<&Json>) -> Option<&str> {
    match v? {
        Json::String(s) => Some(s),
        Json::Object(m) => m.get("content")?.as_str(),
        _ => None,
    }
}

/// llama.cpp's `does_token_look_special`, for the Qwen2-relevant shapes.
fn looks_special(t: &str) -> bool {
    (t.starts_with("<|") && t.ends_with("|>")) || (t.starts_with("<｜") && t.ends_with("｜>"))
}

/// Is the pre-tokenizer of this tokenizer.json the Qwen2 one (the regex llama.cpp's `qwen2`
/// pre-tokenizer implements)?
fn has_qwen2_pretokenizer(j: &Json) -> bool {
    fn find(v: &Json) -> bool {
        match v {
            Json::Object(m) => {
                m.get("Regex").and_then(Json::as_str) == Some(QWEN2_PRETOKENIZE_REGEX)
                    || m.values().any(find)
            }
            Json::Array(a) => a.iter().any(find),
            _ => false,
        }
    }
    j.get("pre_tokenizer").is_some_and(find)
}

/// The `tokenizer.*` metadata convert_hf_to_gguf.py writes for a Qwen2 tokenizer (`gpt2` model,
/// `qwen2` pre-tokenizer), or `None` when the directory has no tokenizer.json.
pub fn gguf_tokenizer_metadata(
    dir: &Path,
    raw_cfg: &Json,
    vocab_size: usize,
) -> Result<Option<Vec<(String, Value)>>> {
    let tj_path = dir.join("tokenizer.json");
    let Some(tj) = read_json_file(&tj_path)? else {
        return Ok(None);
    };
    let tok = Tokenizer::from_hf_dir(dir)?;
    let bad = |msg: String| Error::Invalid(format!("{}: {msg}", tj_path.display()));
    let model = tj.get("model").ok_or_else(|| bad("no `model`".into()))?;
    if model.get("type").and_then(Json::as_str) != Some("BPE") {
        return Err(bad(
            "the tokenizer model is not BPE; only the Qwen2 byte-level BPE converts to GGUF".into(),
        ));
    }
    if !has_qwen2_pretokenizer(&tj) {
        return Err(bad(
            "the pre-tokenizer is not Qwen2's (NFC + qwen2 regex + byte-level); llama.cpp's `qwen2` \
             pre-tokenizer would split text differently"
                .into(),
        ));
    }

    let vocab = tok.inner().get_vocab(true);
    let added = tok.inner().get_added_tokens_decoder();
    if let Some((t, &id)) = vocab.iter().max_by_key(|(_, &id)| id) {
        if id as usize >= vocab_size {
            return Err(bad(format!(
                "token {t:?} has id {id}, outside config.json's vocab_size {vocab_size}"
            )));
        }
    }
    let mut tokens: Vec<String> = (0..vocab_size).map(|i| format!("[PAD{i}]")).collect();
    let mut types = vec![token_type::UNUSED; vocab_size];
    for (t, &id) in &vocab {
        let i = id as usize;
        tokens[i] = t.clone();
        types[i] = match added.get(&id) {
            Some(a) if a.special || looks_special(&a.content) => token_type::CONTROL,
            Some(_) => token_type::USER_DEFINED,
            None => token_type::NORMAL,
        };
    }
    let merges: Vec<Value> = match model.get("merges") {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(k, m)| match m {
                Json::String(s) => Ok(Value::String(s.clone())),
                Json::Array(p) => match (
                    p.first().and_then(Json::as_str),
                    p.get(1).and_then(Json::as_str),
                ) {
                    (Some(a), Some(b)) if p.len() == 2 => Ok(Value::String(format!("{a} {b}"))),
                    _ => Err(bad(format!("merge #{k} is not a pair of strings"))),
                },
                _ => Err(bad(format!("merge #{k} is neither \"a b\" nor [a, b]"))),
            })
            .collect::<Result<_>>()?,
        Some(_) => return Err(bad("`model.merges` is not a list".into())),
    };

    let mut meta: Vec<(String, Value)> = vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("qwen2".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
    ];

    // gguf-py's SpecialVocab: ids named in tokenizer_config.json first (bos, eos, unk, pad
    // order), then config.json's `<typ>_token_id` for the ones still unset.
    let tok_cfg = read_json_file(&dir.join("tokenizer_config.json"))?.unwrap_or(Json::Null);
    let kinds = [
        ("bos", "bos"),
        ("eos", "eos"),
        ("unk", "unknown"),
        ("pad", "padding"),
    ];
    let mut special: Vec<(&str, u32)> = Vec::new();
    for (typ, key) in kinds {
        let text = token_text(tok_cfg.get(format!("{typ}_token")));
        if let Some(id) = text.and_then(|t| tok.token_to_id(t)) {
            special.push((key, id));
        }
    }
    for (typ, key) in kinds {
        if special.iter().any(|(k, _)| *k == key) {
            continue;
        }
        if let Some(id) = raw_cfg
            .get(format!("{typ}_token_id"))
            .and_then(Json::as_u64)
        {
            if (id as usize) < vocab_size {
                special.push((key, id as u32));
            }
        }
    }
    for (key, id) in special {
        meta.push((format!("tokenizer.ggml.{key}_token_id"), Value::U32(id)));
    }
    let add_bos = tok_cfg
        .get("add_bos_token")
        .and_then(Json::as_bool)
        .unwrap_or(false);
    meta.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(add_bos)));
    if let Some(t) = tok.chat_template() {
        meta.push((
            "tokenizer.chat_template".into(),
            Value::String(t.to_owned()),
        ));
    }
    Ok(Some(meta))
}

/// The GGUF type of one tensor (convert_hf_to_gguf.py's rules): 1-D tensors, norms and
/// anything not a `.weight` stay f32; matrices take `outtype`, and Q8_0 falls back to f16 for
/// a row length that is not a multiple of its block.
fn gguf_tensor_type(
    gname: &str,
    shape: &[usize],
    outtype: GgufOutType,
    notes: &mut Vec<String>,
) -> GgmlType {
    // The MoE router (`ffn_gate_inp`) is kept in f32 as convert_hf_to_gguf.py does: routing
    // decisions are discrete and cheap.
    if shape.len() <= 1
        || gname.ends_with("_norm.weight")
        || gname.ends_with("ffn_gate_inp.weight")
        || !gname.ends_with(".weight")
    {
        return GgmlType::F32;
    }
    let ty = outtype.ggml();
    let cols = shape.last().copied().unwrap_or(0);
    if ty.row_bytes(cols).is_err() {
        notes.push(format!(
            "{gname}: row length {cols} is not a multiple of {}, written as F16",
            ty.block_size()
        ));
        return GgmlType::F16;
    }
    ty
}

/// Write `t` as `target`, converting a block of rows at a time; returns the bytes written.
fn stream_tensor(o: &mut GgufOutput, gname: &str, t: &Tensor, target: GgmlType) -> Result<u64> {
    let m = t.as_mat()?;
    if t.ty == target {
        for chunk in t.bytes().chunks(STREAM_BLOCK_BYTES) {
            o.write_tensor_chunk(gname, chunk)?;
        }
        return Ok(t.bytes().len() as u64);
    }
    let rows_per_block = (STREAM_BLOCK_BYTES / (m.cols.max(1) * 4)).max(1);
    let mut written = 0u64;
    let mut start = 0;
    while start < m.rows {
        let end = (start + rows_per_block).min(m.rows);
        let block = reencode_rows(t, target, start..end)?;
        o.write_tensor_chunk(gname, &block)?;
        written += block.len() as u64;
        start = end;
    }
    Ok(written)
}

/// The `general.*` and `qwen2.*` keys convert_hf_to_gguf.py writes, in its order.
fn gguf_model_metadata(
    cfg: &Config,
    raw: &Json,
    name: String,
    outtype: GgufOutType,
) -> Result<Vec<(String, Value)>> {
    let u32v = |v: usize| -> Result<Value> {
        u32::try_from(v)
            .map(Value::U32)
            .map_err(|_| Error::Config(format!("{v} does not fit a GGUF u32")))
    };
    let f32v = |v: f64| Value::F32(v as f32);
    let mut m: Vec<(String, Value)> = vec![
        (
            "general.architecture".into(),
            Value::String(gguf_arch(cfg).into()),
        ),
        ("general.type".into(), Value::String("model".into())),
        ("general.name".into(), Value::String(name)),
    ];
    let arch = gguf_arch(cfg);
    let mut kv = |k: &str, v: Value| m.push((format!("{arch}.{k}"), v));
    kv("block_count", u32v(cfg.num_hidden_layers)?);
    kv("context_length", u32v(cfg.max_position_embeddings)?);
    kv("embedding_length", u32v(cfg.hidden_size)?);
    kv("feed_forward_length", u32v(cfg.intermediate_size)?);
    kv("attention.head_count", u32v(cfg.num_attention_heads)?);
    kv("attention.head_count_kv", u32v(cfg.num_key_value_heads)?);
    match &cfg.rope_scaling {
        Some(RopeScaling::Linear { factor }) => {
            kv("rope.scaling.type", Value::String("linear".into()));
            kv("rope.scaling.factor", f32v(*factor));
        }
        Some(RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
            ..
        }) => {
            kv("rope.scaling.type", Value::String("yarn".into()));
            kv("rope.scaling.factor", f32v(*factor));
            kv(
                "rope.scaling.original_context_length",
                u32v(*original_max_position_embeddings)?,
            );
            // Written only when config.json differs from the defaults both sides share.
            if *beta_fast != 32.0 {
                kv("rope.scaling.yarn_beta_fast", f32v(*beta_fast));
            }
            if *beta_slow != 1.0 {
                kv("rope.scaling.yarn_beta_slow", f32v(*beta_slow));
            }
        }
        // check_gguf_representable refused the rest.
        Some(RopeScaling::Dynamic { .. }) | None => {}
    }
    kv("rope.freq_base", f32v(cfg.rope_theta));
    kv("attention.layer_norm_rms_epsilon", f32v(cfg.rms_norm_eps));
    if raw.get("head_dim").is_some_and(|v| !v.is_null()) {
        kv("attention.key_length", u32v(cfg.head_dim)?);
        kv("attention.value_length", u32v(cfg.head_dim)?);
    }
    if let Some(moe) = &cfg.moe {
        // Qwen2MoeModel's keys; a layer's sparsity is told by its `ffn_gate_inp` router.
        kv("expert_count", u32v(moe.num_experts)?);
        kv("expert_used_count", u32v(moe.num_experts_per_tok)?);
        kv(
            "expert_feed_forward_length",
            u32v(moe.moe_intermediate_size)?,
        );
        kv(
            "expert_shared_feed_forward_length",
            u32v(moe.shared_expert_intermediate_size)?,
        );
        kv("expert_weights_norm", Value::Bool(moe.norm_topk_prob));
    }
    m.push(("general.file_type".into(), Value::U32(outtype.file_type())));
    Ok(m)
}

/// Refuse what a `qwen2` GGUF cannot express, rather than write a model that computes something
/// else under llama.cpp.
fn check_gguf_representable(cfg: &Config) -> Result<()> {
    if cfg.sliding_window.iter().any(Option::is_some) {
        return Err(Error::Config(
            "sliding-window attention layers cannot be represented in a qwen2 GGUF (llama.cpp's \
             qwen2 graph attends over the full context); HINT: set use_sliding_window to false \
             if the model was trained without it"
                .into(),
        ));
    }
    match &cfg.rope_scaling {
        None | Some(RopeScaling::Linear { .. }) => Ok(()),
        Some(RopeScaling::Dynamic { .. }) => Err(Error::Config(
            "dynamic-NTK rope scaling has no GGUF equivalent".into(),
        )),
        Some(RopeScaling::Yarn {
            attention_factor,
            mscale,
            mscale_all_dim,
            truncate,
            ..
        }) => {
            if attention_factor.is_some()
                || mscale.is_some()
                || mscale_all_dim.is_some()
                || !truncate
            {
                Err(Error::Config(
                    "yarn with attention_factor / mscale / truncate=false has no exact qwen2 GGUF \
                     equivalent; supported: factor, original_max_position_embeddings, beta_fast, \
                     beta_slow"
                        .into(),
                ))
            } else {
                Ok(())
            }
        }
    }
}

/// Convert a Hugging Face model directory into a GGUF file `out`.
pub fn hf_to_gguf(input: &Path, out: &Path, opts: &ToGgufOptions) -> Result<Converted> {
    if !input.is_dir() {
        return Err(Error::Invalid(format!(
            "{} is not a directory (expected a Hugging Face model directory)",
            input.display()
        )));
    }
    let cfg_path = input.join("config.json");
    if !cfg_path.is_file() {
        return Err(Error::Config(format!(
            "no config.json in {}: not a Hugging Face model directory",
            input.display()
        )));
    }
    if out.is_dir() {
        return Err(Error::Invalid(format!(
            "{} is a directory; the GGUF output must be a file path",
            out.display()
        )));
    }
    if out.exists() && !opts.force {
        return Err(Error::Invalid(format!(
            "{} exists; pass --force to replace it",
            out.display()
        )));
    }
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let cfg = Config::from_json_str(&text)
        .map_err(|e| Error::Config(format!("{}: {e}", cfg_path.display())))?;
    let raw: Json = serde_json::from_str(&text)
        .map_err(|e| Error::Config(format!("{}: {e}", cfg_path.display())))?;
    check_gguf_representable(&cfg)?;
    let src = WeightSource::from_safetensors_dir(input)?;
    let mut notes = Vec::new();

    // transformers ties the head whenever tie_word_embeddings is set, whatever the files hold.
    let head_in_files = src.contains("lm_head.weight");
    let separate_head = head_in_files && !cfg.tie_word_embeddings;
    if head_in_files && cfg.tie_word_embeddings {
        notes.push(
            "lm_head.weight ignored: tie_word_embeddings is true (as transformers does)".into(),
        );
    }
    let mut expected = qwen2_tensors(&cfg, separate_head);
    let mut known: std::collections::HashSet<String> =
        expected.iter().map(|(n, _)| n.clone()).collect();
    // transformers 5's fused expert tensors stand for the per-expert ones.
    for (i, sparse) in cfg
        .moe
        .iter()
        .flat_map(|m| m.sparse_layers.iter().enumerate())
    {
        if *sparse {
            known.insert(format!("model.layers.{i}.mlp.experts.gate_up_proj"));
            known.insert(format!("model.layers.{i}.mlp.experts.down_proj"));
        }
    }
    let unknown: Vec<String> = src
        .names()
        .into_iter()
        .filter(|n| !known.contains(n) && n != "lm_head.weight")
        .collect();
    if !unknown.is_empty() {
        return Err(Error::Safetensors {
            path: input.to_path_buf(),
            msg: format!("tensors {unknown:?} are not part of a Qwen2 checkpoint"),
        });
    }
    // llama.cpp writes tensors in the checkpoint's (name-sorted) order.
    expected.sort_by(|a, b| a.0.cmp(&b.0));

    let name = input
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    let mut w = GgufWriter::new();
    for (k, v) in gguf_model_metadata(&cfg, &raw, name, opts.outtype)? {
        w.set(k, v);
    }
    match gguf_tokenizer_metadata(input, &raw, cfg.vocab_size)? {
        Some(meta) => {
            for (k, v) in meta {
                w.set(k, v);
            }
        }
        None => notes.push(
            "no tokenizer.json: the GGUF carries no tokenizer (our engine runs it on token ids; \
             llama.cpp needs a tokenizer)"
                .into(),
        ),
    }
    // gguf-py writes it last.
    w.set("general.quantization_version", Value::U32(2));

    // (GGUF name, the HF tensors written one after the other into it, type).
    let mut plan: Vec<(String, Vec<Tensor>, GgmlType)> = Vec::with_capacity(expected.len());
    let n_experts = cfg.moe.as_ref().map_or(0, |m| m.num_experts);
    for (hf, shape) in &expected {
        let (gname, gshape, parts) = match routed_expert(hf) {
            // The layer's experts go into one stacked `[n_experts, out, inp]` tensor, declared
            // where expert 0 comes.
            Some((_, e, _)) if e > 0 => continue,
            Some((layer, _, proj)) => {
                let (rows, cols) = (shape[0], shape[1]);
                let parts = (0..n_experts)
                    .map(|e| src.expert(layer, e, n_experts, proj, rows, cols))
                    .collect::<Result<Vec<_>>>()?;
                (
                    stacked_experts_name(layer, proj),
                    vec![n_experts, rows, cols],
                    parts,
                )
            }
            None => {
                let t = src.get(hf, shape)?;
                let gname = gguf_name(hf).ok_or_else(|| Error::MissingTensor {
                    name: hf.clone(),
                    hint: " (no GGUF name is known for it)".into(),
                })?;
                // `shared_expert_gate` `[1, H]` is 1-D in llama.cpp's files.
                let gshape = match shape.as_slice() {
                    [1, n] => vec![*n],
                    _ => shape.clone(),
                };
                (gname, gshape, vec![t])
            }
        };
        let ty = gguf_tensor_type(&gname, &gshape, opts.outtype, &mut notes);
        w.add_tensor(&gname, &gshape, ty)?;
        plan.push((gname, parts, ty));
    }
    let mut o = w.create(out)?;
    let mut tensor_bytes = 0u64;
    for (gname, parts, ty) in &plan {
        for t in parts {
            tensor_bytes += stream_tensor(&mut o, gname, t, *ty)?;
        }
    }
    let path = o.finish()?;
    Ok(Converted {
        output: out.to_path_buf(),
        files: vec![path],
        tensors: plan.len(),
        tensor_bytes,
        notes,
    })
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
