//! Log-probabilities of the prompt's own tokens, for `/v1/completions` with `echo` and
//! `logprobs`: a forward pass over the prompt with logits at every position, run in chunks (so a
//! long prompt never holds more than `CHUNK` rows of 152K logits) on a cache of its own. Only
//! such requests pay for it; the engine's prefill keeps computing the last position only.

use qwen2_core::model::Logits;
use qwen2_core::Qwen2;

use crate::choice::TokenLp;

/// Prompt positions per forward call (each row is a full vocabulary of f32).
const CHUNK: usize = 32;

/// For each prompt token after the first: its logprob given the tokens before it (log-softmax of
/// the raw logits, as the engine reports for generated tokens) and the `top` best alternatives.
pub fn prompt_logprobs(model: &Qwen2, ids: &[u32], top: usize) -> qwen2_core::Result<Vec<TokenLp>> {
    let mut out = Vec::with_capacity(ids.len().saturating_sub(1));
    if ids.len() < 2 {
        return Ok(out);
    }
    let vocab = model.vocab_size();
    // The last token's logits predict the completion, not a prompt token: not needed.
    let inputs = &ids[..ids.len() - 1];
    let mut cache = model.new_cache(inputs.len());
    for (ci, chunk) in inputs.chunks(CHUNK).enumerate() {
        let logits = model.forward(chunk, &mut cache, Logits::All)?;
        for (j, row) in logits.chunks_exact(vocab).enumerate() {
            let next = ids[ci * CHUNK + j + 1];
            let lse = log_sum_exp(row);
            out.push(TokenLp {
                id: next,
                logprob: row[next as usize] - lse,
                top: top_k(row, top, lse),
            });
        }
    }
    Ok(out)
}

fn log_sum_exp(x: &[f32]) -> f32 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = x.iter().map(|&v| ((v - max) as f64).exp()).sum();
    max + sum.ln() as f32
}

/// The `k` most likely tokens and their logprobs, best first.
fn top_k(row: &[f32], k: usize, lse: f32) -> Vec<(u32, f32)> {
    let k = k.min(row.len());
    if k == 0 {
        return Vec::new();
    }
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    let by_logit = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]);
    idx.select_nth_unstable_by(k - 1, by_logit);
    idx.truncate(k);
    idx.sort_unstable_by(by_logit);
    idx.into_iter()
        .map(|i| (i, row[i as usize] - lse))
        .collect()
}
