//! GGUF → Hugging Face directory (see the parent module for the mapping).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use qwen2_tokenizer::Tokenizer;
use serde_json::{json, Map, Value as Json};

use super::{
    f32_json, qwen2_tensors, reencode_rows, routed_expert, stacked_experts_name, Converted,
    HfDtype, ToHfOptions,
};
use crate::config::{Config, RopeScaling};
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::loader::{gguf_sampling_defaults, gguf_tokenizer};
use crate::weights::{gguf_name, Tensor, WeightSource};

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
