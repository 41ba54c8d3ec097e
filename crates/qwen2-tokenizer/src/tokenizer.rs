use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;

use serde::Deserialize;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, ModelWrapper, SplitDelimiterBehavior};

use crate::error::TokenizerError;

/// The Qwen2 pre-tokenizer regex (transformers `Qwen2Tokenizer.PRETOKENIZE_REGEX`, llama.cpp
/// `LLAMA_VOCAB_PRE_TYPE_QWEN2`): like GPT-4's cl100k but digits are split one by one (`\p{N}`).
pub const QWEN2_PRETOKENIZE_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Token ids whose text ends a turn/generation in every Qwen2 tokenizer that has them.
const KNOWN_END_TOKENS: [&str; 2] = ["<|endoftext|>", "<|im_end|>"];

/// llama.cpp `llama_token_type` values stored in `tokenizer.ggml.token_type`.
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// Tokenizer metadata as stored in a GGUF file (`tokenizer.ggml.*`). Filled by the GGUF reader in
/// `qwen2-core`; this crate never parses GGUF itself.
#[derive(Debug, Clone, Default)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model` (Qwen2: "gpt2").
    pub model: String,
    /// `tokenizer.ggml.pre` (Qwen2: "qwen2"); absent in GGUFs converted before April 2024.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, indexed by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`, same length as `tokens` (or empty: all normal).
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`, each "left right".
    pub merges: Vec<String>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub padding_token_id: Option<u32>,
    pub add_bos_token: bool,
}

/// A Qwen2 tokenizer: `tokenizers::Tokenizer` plus the special-token facts the engine needs.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    eos_ids: Vec<u32>,
    bos_id: Option<u32>,
    /// Prepend `bos_id` in [`Tokenizer::encode`] (GGUF `add_bos_token`; never for Qwen2).
    add_bos: bool,
    special_ids: HashSet<u32>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    pad_token: Option<String>,
    chat_template: Option<String>,
    byte_level_decoder: bool,
}

#[derive(Deserialize)]
struct AddedTokensOnly {
    #[serde(default)]
    added_tokens: Vec<AddedTokenWithId>,
}

#[derive(Deserialize)]
struct AddedTokenWithId {
    id: u32,
    content: String,
}

/// The parts of `tokenizer_config.json` we use.
#[derive(Deserialize, Default)]
struct TokenizerConfig {
    #[serde(default)]
    added_tokens_decoder: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    bos_token: Option<serde_json::Value>,
    #[serde(default)]
    eos_token: Option<serde_json::Value>,
    #[serde(default)]
    pad_token: Option<serde_json::Value>,
    #[serde(default)]
    chat_template: Option<serde_json::Value>,
    #[serde(default)]
    add_bos_token: Option<bool>,
}

/// `"<|im_end|>"` or `{"content": "<|im_end|>", ...}` (older transformers) → the token text.
fn token_text(v: &Option<serde_json::Value>) -> Option<String> {
    match v.as_ref()? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(m) => m.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

/// `chat_template` is a string, or a list of `{"name", "template"}` (we take "default", else the first).
fn template_text(v: &Option<serde_json::Value>) -> Option<String> {
    match v.as_ref()? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(list) => {
            let named = |name: &str| {
                list.iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(name))
            };
            named("default")
                .or_else(|| list.first())
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .map(str::to_owned)
        }
        _ => None,
    }
}

fn read_file(path: &Path) -> Result<String, TokenizerError> {
    std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
        path: path.to_owned(),
        source,
    })
}

impl Tokenizer {
    /// Load `dir/tokenizer.json`, plus `dir/tokenizer_config.json` when present (extra added tokens,
    /// bos/eos/pad, chat template) and `dir/chat_template.jinja` (transformers ≥ 4.5x layout).
    pub fn from_hf_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let json = read_file(&dir.join("tokenizer.json"))?;
        let mut tok = Self::from_json_str(&json)?;
        let config_path = dir.join("tokenizer_config.json");
        let config: TokenizerConfig = if config_path.is_file() {
            let text = read_file(&config_path)?;
            serde_json::from_str(&text).map_err(|source| TokenizerError::Json {
                what: config_path.display().to_string(),
                source,
            })?
        } else {
            TokenizerConfig::default()
        };
        tok.apply_config(&config)?;
        let jinja_path = dir.join("chat_template.jinja");
        if tok.chat_template.is_none() && jinja_path.is_file() {
            tok.chat_template = Some(read_file(&jinja_path)?);
        }
        Ok(tok)
    }

    /// Load a `tokenizer.json` text. Added tokens must land on the ids the file states (the
    /// `tokenizers` crate silently renumbers them otherwise), or this fails.
    pub fn from_json_str(json: &str) -> Result<Self, TokenizerError> {
        let listed: AddedTokensOnly =
            serde_json::from_str(json).map_err(|source| TokenizerError::Json {
                what: "tokenizer.json".into(),
                source,
            })?;
        let inner = tokenizers::Tokenizer::from_str(json)
            .map_err(|e| TokenizerError::Load(e.to_string()))?;
        for t in &listed.added_tokens {
            match inner.token_to_id(&t.content) {
                Some(actual) if actual == t.id => {}
                actual => {
                    return Err(TokenizerError::AddedTokenId {
                        token: t.content.clone(),
                        expected: t.id,
                        actual: actual.unwrap_or(u32::MAX),
                    })
                }
            }
        }
        Ok(Self::finish(inner, None, None, None, false))
    }

    /// Build the Qwen2 pipeline from GGUF tokenizer metadata, identical to the one transformers'
    /// `Qwen2TokenizerFast` builds from vocab.json + merges.txt: NFC → Split(qwen2 regex, isolated) →
    /// ByteLevel(no prefix space, no regex) → BPE(no unk, no byte fallback), ByteLevel decoder.
    /// Control tokens (type 3) become special added tokens and user-defined ones (type 4) plain added
    /// tokens, at their GGUF ids; unused placeholder tokens (type 5, `[PAD151665]`…) are left out, as
    /// in the Hugging Face tokenizer.
    pub fn from_gguf(v: &GgufVocab) -> Result<Self, TokenizerError> {
        match (v.model.as_str(), v.pre.as_deref()) {
            ("gpt2", Some("qwen2") | None) => {}
            _ => {
                return Err(TokenizerError::Unsupported {
                    model: v.model.clone(),
                    pre: v.pre.clone(),
                })
            }
        }
        let n = v.tokens.len();
        if n == 0 {
            return Err(TokenizerError::InvalidVocab(
                "tokenizer.ggml.tokens is empty".into(),
            ));
        }
        if n > u32::MAX as usize {
            return Err(TokenizerError::InvalidVocab(format!(
                "{n} tokens is too many"
            )));
        }
        if !v.token_types.is_empty() && v.token_types.len() != n {
            return Err(TokenizerError::InvalidVocab(format!(
                "tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {n}",
                v.token_types.len()
            )));
        }
        let ty = |i: usize| v.token_types.get(i).copied().unwrap_or(token_type::NORMAL);

        // Added tokens must directly follow the BPE vocabulary (the `tokenizers` crate numbers them
        // sequentially). That holds for every Qwen2 GGUF; otherwise put them in the BPE vocab too,
        // which keeps every id where the GGUF says.
        let is_added = |t: i32| t == token_type::CONTROL || t == token_type::USER_DEFINED;
        let added_ids: Vec<usize> = (0..n).filter(|&i| is_added(ty(i))).collect();
        let n_model = (0..n)
            .filter(|&i| !is_added(ty(i)) && ty(i) != token_type::UNUSED)
            .count();
        let contiguous = added_ids.iter().enumerate().all(|(k, &i)| i == n_model + k)
            && (0..n_model).all(|i| !is_added(ty(i)) && ty(i) != token_type::UNUSED);

        let mut vocab = tokenizers::models::bpe::Vocab::with_capacity(n);
        for (i, tok) in v.tokens.iter().enumerate() {
            let t = ty(i);
            if t == token_type::UNUSED || (contiguous && is_added(t)) {
                continue;
            }
            if let Some(prev) = vocab.insert(tok.clone(), i as u32) {
                return Err(TokenizerError::InvalidVocab(format!(
                    "token {tok:?} appears twice (ids {prev} and {i})"
                )));
            }
        }
        let mut merges = Vec::with_capacity(v.merges.len());
        for (k, m) in v.merges.iter().enumerate() {
            let (a, b) = m.split_once(' ').ok_or_else(|| {
                TokenizerError::InvalidVocab(format!("merge #{k} {m:?} is not \"left right\""))
            })?;
            if !vocab.contains_key(a) || !vocab.contains_key(b) {
                return Err(TokenizerError::InvalidVocab(format!(
                    "merge #{k} {m:?} uses a token missing from the vocabulary"
                )));
            }
            merges.push((a.to_owned(), b.to_owned()));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .continuing_subword_prefix(String::new())
            .end_of_word_suffix(String::new())
            .build()
            .map_err(|e| TokenizerError::InvalidVocab(e.to_string()))?;
        let mut inner = tokenizers::Tokenizer::new(ModelWrapper::BPE(bpe));
        let split = Split::new(
            SplitPattern::Regex(QWEN2_PRETOKENIZE_REGEX.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| TokenizerError::Load(e.to_string()))?;
        inner
            .with_normalizer(Some(NFC))
            .with_pre_tokenizer(Some(Sequence::new(vec![
                PreTokenizerWrapper::Split(split),
                PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
            ])))
            // Same parameters as the Python tokenizer's defaults, so both serialise identically.
            .with_post_processor(Some(ByteLevel::new(true, false, true)))
            .with_decoder(Some(ByteLevel::default()));
        let added: Vec<AddedToken> = added_ids
            .iter()
            .map(|&i| {
                AddedToken::from(v.tokens[i].clone(), ty(i) == token_type::CONTROL)
                    .normalized(false)
            })
            .collect();
        inner.add_tokens(&added);
        for &i in &added_ids {
            let actual = inner.token_to_id(&v.tokens[i]).unwrap_or(u32::MAX);
            if actual != i as u32 {
                return Err(TokenizerError::AddedTokenId {
                    token: v.tokens[i].clone(),
                    expected: i as u32,
                    actual,
                });
            }
        }
        for (what, id) in [
            ("bos", v.bos_token_id),
            ("eos", v.eos_token_id),
            ("padding", v.padding_token_id),
        ] {
            if id.is_some_and(|id| id as usize >= n) {
                return Err(TokenizerError::InvalidVocab(format!(
                    "{what} token id {} is outside the vocabulary of {n} tokens",
                    id.unwrap_or_default()
                )));
            }
        }
        // Unused placeholders are not tokens, so they cannot be bos/eos/pad either.
        let name = |id: Option<u32>| {
            id.map(|i| i as usize)
                .filter(|&i| ty(i) != token_type::UNUSED)
                .map(|i| v.tokens[i].clone())
        };
        Ok(Self::finish(
            inner,
            name(v.bos_token_id),
            name(v.eos_token_id),
            name(v.padding_token_id),
            v.add_bos_token,
        ))
    }

    fn finish(
        mut inner: tokenizers::Tokenizer,
        bos_token: Option<String>,
        eos_token: Option<String>,
        pad_token: Option<String>,
        add_bos: bool,
    ) -> Self {
        // Never truncate or pad silently: a tokenizer.json may carry either setting.
        inner.with_padding(None);
        let _ = inner.with_truncation(None); // only fails for invalid params; None is always valid
        let byte_level_decoder = matches!(inner.get_decoder(), Some(DecoderWrapper::ByteLevel(_)));
        let mut tok = Tokenizer {
            inner,
            eos_ids: Vec::new(),
            bos_id: None,
            add_bos,
            special_ids: HashSet::new(),
            bos_token,
            eos_token,
            pad_token,
            chat_template: None,
            byte_level_decoder,
        };
        tok.refresh_special();
        tok
    }

    /// Recompute the derived special-token facts after any change to tokens or config.
    fn refresh_special(&mut self) {
        self.special_ids = self
            .inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .collect();
        self.bos_id = self.bos_token.as_deref().and_then(|t| self.token_to_id(t));
        let mut eos = Vec::new();
        let declared = self.eos_token.iter().map(String::as_str);
        for text in declared.chain(KNOWN_END_TOKENS) {
            if let Some(id) = self.token_to_id(text) {
                if !eos.contains(&id) {
                    eos.push(id);
                }
            }
        }
        self.eos_ids = eos;
    }

    fn apply_config(&mut self, config: &TokenizerConfig) -> Result<(), TokenizerError> {
        if let Some(decoder) = &config.added_tokens_decoder {
            let mut entries: Vec<(u32, String, bool)> = Vec::new();
            for (id, tok) in decoder {
                let id: u32 = id.parse().map_err(|_| {
                    TokenizerError::InvalidVocab(format!(
                        "tokenizer_config.json added_tokens_decoder key {id:?} is not an id"
                    ))
                })?;
                let Some(content) = tok.get("content").and_then(|c| c.as_str()) else {
                    continue;
                };
                let special = tok
                    .get("special")
                    .and_then(|s| s.as_bool())
                    .unwrap_or(false);
                entries.push((id, content.to_owned(), special));
            }
            entries.sort();
            for (id, content, special) in entries {
                if self.inner.token_to_id(&content).is_none() {
                    let added = AddedToken::from(content.clone(), special).normalized(false);
                    self.inner.add_tokens(&[added]);
                }
                let actual = self.inner.token_to_id(&content).unwrap_or(u32::MAX);
                if actual != id {
                    return Err(TokenizerError::AddedTokenId {
                        token: content,
                        expected: id,
                        actual,
                    });
                }
            }
        }
        if let Some(t) = token_text(&config.bos_token) {
            self.bos_token = Some(t);
        }
        if let Some(t) = token_text(&config.eos_token) {
            self.eos_token = Some(t);
        }
        if let Some(t) = token_text(&config.pad_token) {
            self.pad_token = Some(t);
        }
        if let Some(t) = template_text(&config.chat_template) {
            self.chat_template = Some(t);
        }
        // transformers' tokenizer.json post-processor already adds BOS where a model wants it; the
        // config flag only matters for tokenizers without one.
        if config.add_bos_token == Some(true) && self.inner.get_post_processor().is_none() {
            self.add_bos = true;
        }
        self.refresh_special();
        Ok(())
    }

    /// Token ids of `text`, like Hugging Face `tokenizer(text).input_ids`: special-token text such as
    /// `<|im_start|>` maps to its id; Qwen2 adds no BOS.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos {
            if let Some(bos) = self.bos_id {
                ids.push(bos);
            }
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Text of `ids` (ids outside the vocabulary are skipped, as Hugging Face does). Invalid UTF-8
    /// byte sequences become U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    /// Number of ids in use, added tokens included (151665 for Qwen2.5; the model's embedding has
    /// more rows).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, s: &str) -> Option<u32> {
        self.inner.token_to_id(s)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Every end-of-generation id the tokenizer files declare: the configured eos token plus
    /// `<|endoftext|>` and `<|im_end|>` when present (e.g. `[151645, 151643]`).
    pub fn eos_ids(&self) -> Vec<u32> {
        self.eos_ids.clone()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// True for special added tokens (control tokens such as `<|im_end|>`); `<tool_call>` is not.
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    pub fn pad_token(&self) -> Option<&str> {
        self.pad_token.as_deref()
    }

    /// The chat template from tokenizer_config.json / chat_template.jinja, if any (GGUF templates are
    /// read by the GGUF loader and handed to [`crate::ChatTemplate::new`] directly).
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// tokenizer.json text of this tokenizer.
    pub fn to_json_string(&self) -> Result<String, TokenizerError> {
        self.inner
            .to_string(false)
            .map_err(|e| TokenizerError::Load(e.to_string()))
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    pub(crate) fn has_byte_level_decoder(&self) -> bool {
        self.byte_level_decoder
    }

    /// Raw bytes a token contributes to the decoded text, exactly as the ByteLevel decoder computes
    /// them; `None` for unknown ids and for skipped special tokens.
    pub fn token_bytes(&self, id: u32, skip_special: bool) -> Option<Vec<u8>> {
        if skip_special && self.is_special(id) {
            return None;
        }
        let token = self.inner.id_to_token(id)?;
        let table = byte_level_table();
        let mapped: Option<Vec<u8>> = token.chars().map(|c| table.get(&c).copied()).collect();
        Some(mapped.unwrap_or_else(|| token.into_bytes()))
    }
}

/// GPT-2's `bytes_to_unicode` inverted: printable char → byte.
fn byte_level_table() -> &'static HashMap<char, u8> {
    static TABLE: std::sync::OnceLock<HashMap<char, u8>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut map = HashMap::with_capacity(256);
        let mut n = 0u32;
        for b in 0u32..256 {
            let printable = (0x21..=0x7E).contains(&b)
                || (0xA1..=0xAC).contains(&b)
                || (0xAE..=0xFF).contains(&b);
            let c = if printable {
                b
            } else {
                n += 1;
                255 + n
            };
            if let Some(c) = char::from_u32(c) {
                map.insert(c, b as u8);
            }
        }
        map
    })
}
