//! qwen2-eval: the model card's benchmarks, offline. Data comes from PyPI wheels
//! ([`data`]), tasks are formatted as lm-evaluation-harness formats them ([`tasks`]),
//! log-likelihoods are scored with shared-prefix KV reuse ([`loglik`]), and results are
//! written per item (resumable) and summarized ([`run`], [`report`]).

mod arrow_table;
pub mod chart;
pub mod data;
pub mod error;
pub mod loglik;
pub mod pyrandom;
pub mod report;
pub mod run;
pub mod sandbox;
pub mod tasks;

pub use error::{Error, Result};
pub use run::{EvalConfig, Runner, Task};
