//! qwen2-server: an OpenAI-compatible HTTP server (`qwen2 serve`). The engine schedules
//! requests onto the model with continuous batching on its own thread; the HTTP layer talks
//! to it through channels.

pub mod api;
pub mod choice;
pub mod constrain;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod openai;
pub mod prompt_logprobs;
pub mod render;
pub mod sse;
pub mod stop;
pub mod tools;

pub use api::{AppState, RunningServer, ServerConfig};
