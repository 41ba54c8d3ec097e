use std::path::PathBuf;

/// Everything that can go wrong while loading a tokenizer, encoding/decoding, or rendering a chat.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid JSON in {what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot load tokenizer: {0}")]
    Load(String),
    #[error(
        "unsupported GGUF tokenizer: tokenizer.ggml.model={model:?}, tokenizer.ggml.pre={pre:?}; \
         supported: model \"gpt2\" with pre \"qwen2\" (or no pre)"
    )]
    Unsupported { model: String, pre: Option<String> },
    #[error("invalid tokenizer vocabulary: {0}")]
    InvalidVocab(String),
    #[error(
        "added token {token:?} should have id {expected} but got id {actual} \
         (HINT: added tokens must directly follow the model vocabulary, in id order)"
    )]
    AddedTokenId {
        token: String,
        expected: u32,
        actual: u32,
    },
    #[error("encode failed: {0}")]
    Encode(String),
    #[error("decode failed: {0}")]
    Decode(String),
    #[error("chat template error: {0}")]
    Template(String),
}

impl TokenizerError {
    pub(crate) fn template(e: minijinja::Error) -> Self {
        // `{:#}` includes minijinja's source context (line, failing expression).
        TokenizerError::Template(format!("{e:#}"))
    }
}
