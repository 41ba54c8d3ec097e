//! Hugging Face directory → GGUF (see the parent module for the mapping).

use std::path::Path;

use qwen2_kernels::GgmlType;
use qwen2_tokenizer::{token_type, Tokenizer, QWEN2_PRETOKENIZE_REGEX};
use serde_json::Value as Json;

use super::{
    gguf_arch, qwen2_tensors, reencode_rows, routed_expert, stacked_experts_name, Converted,
    GgufOutType, ToGgufOptions, STREAM_BLOCK_BYTES,
};
use crate::config::{Config, RopeScaling};
use crate::error::{Error, Result};
use crate::gguf::Value;
use crate::gguf_write::{GgufOutput, GgufWriter};
use crate::weights::{gguf_name, Tensor, WeightSource};

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
