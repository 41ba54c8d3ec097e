use std::path::PathBuf;

/// Everything that can go wrong in an evaluation: missing or short data, bad records, model
/// errors, a sandbox that could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {path} is missing. HINT: run `qwen2 data pull` to fetch the evaluation data")]
    Missing { what: String, path: PathBuf },
    #[error("{what}: expected {want} items, found {got} in {path}. HINT: the data is incomplete or damaged; run `qwen2 data pull` again")]
    Count {
        what: String,
        path: PathBuf,
        want: usize,
        got: usize,
    },
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    #[error("data pull: {0}")]
    Pull(String),
    #[error(transparent)]
    Model(#[from] qwen2_core::Error),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("sandbox: {0}")]
    Sandbox(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
