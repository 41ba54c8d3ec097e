//! Qwen2 tokenizer and chat templates.
//!
//! * [`Tokenizer`]: the Qwen2 byte-level BPE pipeline on the `tokenizers` crate (NFC → regex split with
//!   single digits → byte-level → BPE), loaded from a Hugging Face `tokenizer.json` directory or built
//!   from GGUF tokenizer metadata ([`GgufVocab`]); ids are identical to Hugging Face's on the
//!   multilingual/code corpus in `fixtures/tokenizer/cases.jsonl`.
//! * [`StreamDecoder`]: incremental detokenization that only ever emits complete UTF-8.
//! * [`ChatTemplate`]: the model's own Jinja chat template rendered with minijinja, configured like
//!   transformers' `apply_chat_template` (trim/lstrip blocks, Python-style `tojson`, `raise_exception`,
//!   `strftime_now`, Python string/dict methods).

mod chat;
mod error;
mod stream;
mod tokenizer;

pub use chat::{ChatMessage, ChatTemplate, CHATML_TEMPLATE};
pub use error::TokenizerError;
pub use stream::StreamDecoder;
pub use tokenizer::{token_type, GgufVocab, Tokenizer, QWEN2_PRETOKENIZE_REGEX};
