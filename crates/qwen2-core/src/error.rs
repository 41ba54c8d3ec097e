//! The one error type of the core library. Every message says what was expected, what was
//! found and, where it helps, what is supported — a user should be able to act on it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("GGUF {path}: {msg}")]
    Gguf { path: PathBuf, msg: String },

    #[error("safetensors {path}: {msg}")]
    Safetensors { path: PathBuf, msg: String },

    #[error("config: {0}")]
    Config(String),

    #[error(
        "unsupported architecture `{found}`; supported: {supported}. \
         HINT: this engine runs the Qwen2 family (Qwen2, Qwen2.5, Qwen2.5-Coder)"
    )]
    UnsupportedArchitecture { found: String, supported: String },

    #[error("missing tensor `{name}`{hint}")]
    MissingTensor { name: String, hint: String },

    #[error("tensor `{name}`: expected shape {expected:?}, found {found:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    #[error(
        "context length exceeded: {requested} tokens requested (prompt {prompt} + up to {max_new} new), \
         but the context holds {ctx}. HINT: shorten the prompt, lower -n, or raise --ctx (model max {model_max})"
    )]
    ContextLength {
        requested: usize,
        prompt: usize,
        max_new: usize,
        ctx: usize,
        model_max: usize,
    },

    #[error("the prompt is empty: at least one token is needed")]
    EmptyPrompt,

    #[error("token id {id} is out of range: the vocabulary has {vocab} entries")]
    TokenOutOfRange { id: u32, vocab: usize },

    #[error(
        "non-finite logits (NaN or Inf) at position {pos}: the forward pass overflowed. \
         HINT: try --exact to run in f32, and report this with the model file"
    )]
    NonFiniteLogits { pos: usize },

    #[error("invalid argument: {0}")]
    Invalid(String),

    #[error(transparent)]
    Kernel(#[from] qwen2_kernels::KernelError),

    #[error(transparent)]
    Tokenizer(#[from] qwen2_tokenizer::TokenizerError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
