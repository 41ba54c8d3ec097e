//! From a path to a runnable model: a GGUF file, or a Hugging Face directory (config.json,
//! safetensors, tokenizer files, generation_config.json). Collects the end-of-sequence ids
//! and sampling defaults from every file that declares them (PITFALLS 3 and 9).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use qwen2_tokenizer::{ChatTemplate, GgufVocab, Tokenizer};
use serde_json::Value as Json;

use crate::config::{token_ids, Config};
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::model::{Precision, Qwen2};
use crate::sampling::SamplingParams;
use crate::weights::WeightSource;

pub struct LoadedModel {
    pub model: Qwen2,
    /// `None` for a HF directory without tokenizer files (ids-only use).
    pub tokenizer: Option<Tokenizer>,
    pub chat_template: Option<ChatTemplate>,
    /// Every id that ends a generation.
    pub eos_ids: Vec<u32>,
    /// Sampling defaults from the model's own files.
    pub defaults: SamplingParams,
    pub name: String,
    pub path: PathBuf,
}

impl LoadedModel {
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| {
            Error::Invalid(format!(
                "{} has no tokenizer (tokenizer.json); pass token ids instead",
                self.path.display()
            ))
        })
    }

    /// Instruct models have a chat template; base models are completed raw.
    pub fn is_chat(&self) -> bool {
        self.chat_template.is_some()
    }
}

pub fn load(path: &Path, precision: Precision) -> Result<LoadedModel> {
    if path.is_dir() {
        load_hf_dir(path, precision)
    } else if path.exists() {
        load_gguf(path, precision)
    } else {
        Err(Error::Invalid(format!(
            "{} does not exist (expected a .gguf file or a Hugging Face model directory)",
            path.display()
        )))
    }
}

/// Only the tokenizer and chat template (for `tokenize`, `detokenize`): no weights are read.
pub fn load_tokenizer(path: &Path) -> Result<(Tokenizer, Option<ChatTemplate>)> {
    if path.is_dir() {
        let tok = Tokenizer::from_hf_dir(path)?;
        let tpl = hf_chat_template(path)?;
        Ok((tok, tpl))
    } else {
        let g = GgufFile::open(path)?;
        let tok = gguf_tokenizer(&g)?.ok_or_else(|| Error::Gguf {
            path: path.to_path_buf(),
            msg: "no tokenizer in this file (metadata `tokenizer.ggml.model` is missing)".into(),
        })?;
        Ok((tok, gguf_chat_template(&g)?))
    }
}

pub(crate) fn gguf_tokenizer(g: &GgufFile) -> Result<Option<Tokenizer>> {
    let Some(model) = g.get_str("tokenizer.ggml.model") else {
        return Ok(None);
    };
    let id = |k: &str| g.get_u64(k).map(|v| v as u32);
    let types = match g
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.as_array())
    {
        Some(a) => a.iter().map(|v| v.as_i64().unwrap_or(1) as i32).collect(),
        None => Vec::new(),
    };
    let vocab = GgufVocab {
        model: model.to_string(),
        pre: g.get_str("tokenizer.ggml.pre").map(str::to_owned),
        tokens: g.get_str_array("tokenizer.ggml.tokens")?,
        token_types: types,
        merges: if g.get("tokenizer.ggml.merges").is_some() {
            g.get_str_array("tokenizer.ggml.merges")?
        } else {
            Vec::new()
        },
        bos_token_id: id("tokenizer.ggml.bos_token_id"),
        eos_token_id: id("tokenizer.ggml.eos_token_id"),
        padding_token_id: id("tokenizer.ggml.padding_token_id"),
        add_bos_token: g.get_bool("tokenizer.ggml.add_bos_token").unwrap_or(false),
    };
    Ok(Some(Tokenizer::from_gguf(&vocab)?))
}

fn gguf_chat_template(g: &GgufFile) -> Result<Option<ChatTemplate>> {
    Ok(g.get_str("tokenizer.chat_template")
        .map(ChatTemplate::new)
        .transpose()?)
}

/// tokenizer_config.json's `chat_template` (a string, or a list of named templates of which
/// "default" is used), else chat_template.jinja.
fn hf_chat_template(dir: &Path) -> Result<Option<ChatTemplate>> {
    let tok_cfg = read_json(&dir.join("tokenizer_config.json"))?;
    let text = match tok_cfg.as_ref().and_then(|j| j.get("chat_template")) {
        Some(Json::String(t)) => Some(t.clone()),
        Some(Json::Array(list)) => list
            .iter()
            .find(|e| e.get("name").and_then(Json::as_str) == Some("default"))
            .and_then(|e| e.get("template"))
            .and_then(Json::as_str)
            .map(str::to_owned),
        _ => std::fs::read_to_string(dir.join("chat_template.jinja")).ok(),
    };
    Ok(text.as_deref().map(ChatTemplate::new).transpose()?)
}

fn push_unique(v: &mut Vec<u32>, ids: impl IntoIterator<Item = u32>) {
    for id in ids {
        if !v.contains(&id) {
            v.push(id);
        }
    }
}

fn load_gguf(path: &Path, precision: Precision) -> Result<LoadedModel> {
    let g = Arc::new(GgufFile::open(path)?);
    let cfg = Config::from_gguf(&g)?;
    let tokenizer = gguf_tokenizer(&g)?;
    let chat_template = gguf_chat_template(&g)?;

    let mut eos_ids = cfg.eos_token_ids.clone();
    for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
        push_unique(&mut eos_ids, g.get_u64(key).map(|v| v as u32));
    }
    if let Some(t) = &tokenizer {
        push_unique(&mut eos_ids, t.eos_ids());
    }
    let name = g
        .get_str("general.name")
        .map(str::to_owned)
        .unwrap_or_else(|| {
            path.file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into()
        });
    let defaults = gguf_sampling_defaults(&name, chat_template.is_some());
    let src = WeightSource::from_gguf(g);
    let model = Qwen2::load(cfg, &src, precision)?;
    Ok(LoadedModel {
        model,
        tokenizer,
        chat_template,
        eos_ids,
        defaults,
        name,
        path: path.to_path_buf(),
    })
}

/// GGUF files carry no generation_config.json. For Qwen2.5 instruct models use the values
/// their published generation_config.json sets; base models decode greedily, as theirs do.
pub(crate) fn gguf_sampling_defaults(name: &str, chat: bool) -> SamplingParams {
    let lower = name.to_lowercase();
    if chat && lower.contains("instruct") {
        SamplingParams {
            temperature: 0.7,
            top_p: 0.8,
            top_k: 20,
            repetition_penalty: if lower.contains("coder") { 1.1 } else { 1.05 },
            ..Default::default()
        }
    } else {
        SamplingParams::default()
    }
}

fn read_json(path: &Path) -> Result<Option<Json>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::Config(format!("{}: not valid JSON: {e}", path.display())))
}

fn load_hf_dir(dir: &Path, precision: Precision) -> Result<LoadedModel> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let cfg = Config::from_json_str(&text)
        .map_err(|e| Error::Config(format!("{}: {e}", cfg_path.display())))?;

    let tokenizer = if dir.join("tokenizer.json").exists() {
        Some(Tokenizer::from_hf_dir(dir)?)
    } else {
        None
    };
    let chat_template = hf_chat_template(dir)?;

    let mut eos_ids = cfg.eos_token_ids.clone();
    let gen = read_json(&dir.join("generation_config.json"))?;
    let mut defaults = SamplingParams::default();
    if let Some(g) = &gen {
        push_unique(&mut eos_ids, token_ids(g.get("eos_token_id")));
        let f = |k: &str| g.get(k).and_then(Json::as_f64);
        if g.get("do_sample").and_then(Json::as_bool) == Some(true) {
            defaults.temperature = f("temperature").unwrap_or(1.0) as f32;
            defaults.top_p = f("top_p").unwrap_or(1.0) as f32;
            defaults.top_k = f("top_k").unwrap_or(50.0) as usize;
            defaults.min_p = f("min_p").unwrap_or(0.0) as f32;
        }
        defaults.repetition_penalty = f("repetition_penalty").unwrap_or(1.0) as f32;
    }
    if let Some(t) = &tokenizer {
        push_unique(&mut eos_ids, t.eos_ids());
    }
    let name = dir
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let src = WeightSource::from_safetensors_dir(dir)?;
    let model = Qwen2::load(cfg, &src, precision)?;
    Ok(LoadedModel {
        model,
        tokenizer,
        chat_template,
        eos_ids,
        defaults,
        name,
        path: dir.to_path_buf(),
    })
}
