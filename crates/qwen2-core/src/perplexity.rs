//! Perplexity as llama.cpp's `llama-perplexity` computes it, so the two can be compared on
//! the same file: non-overlapping chunks of `ctx` tokens (the remainder is dropped), each run
//! from an empty cache, scoring only the second half of each chunk (every token then has at
//! least `ctx/2` tokens of context). Qwen2 adds no BOS, so no token is replaced.

use crate::error::{Error, Result};
use crate::model::{Logits, Qwen2};

#[derive(Debug, Clone, Copy)]
pub struct Perplexity {
    pub ppl: f64,
    /// Mean negative log-likelihood (nats per token).
    pub nll: f64,
    pub n_chunks: usize,
    pub n_scored: usize,
}

/// `progress(chunk, n_chunks, running_ppl)` is called after each chunk.
pub fn perplexity(
    model: &Qwen2,
    ids: &[u32],
    ctx: usize,
    mut progress: impl FnMut(usize, usize, f64),
) -> Result<Perplexity> {
    if ctx < 4 {
        return Err(Error::Invalid(format!(
            "--ctx must be at least 4, got {ctx}"
        )));
    }
    let n_chunks = ids.len() / ctx;
    if n_chunks == 0 {
        return Err(Error::Invalid(format!(
            "the text has {} tokens; at least one chunk of --ctx {ctx} is needed",
            ids.len()
        )));
    }
    let first = ctx / 2;
    let vocab = model.vocab_size();
    let mut nll = 0f64;
    let mut count = 0usize;
    for c in 0..n_chunks {
        let chunk = &ids[c * ctx..(c + 1) * ctx];
        let mut cache = model.new_cache(ctx);
        // The first half only builds context: no logits needed there.
        model.forward(&chunk[..first], &mut cache, Logits::None)?;
        let logits = model.forward(&chunk[first..], &mut cache, Logits::All)?;
        // logits row r is position first + r and predicts token first + r + 1.
        for r in 0..ctx - first - 1 {
            let row = &logits[r * vocab..(r + 1) * vocab];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
            let target = chunk[first + r + 1] as usize;
            nll += max + sum.ln() - row[target] as f64;
            count += 1;
        }
        progress(c, n_chunks, (nll / count as f64).exp());
    }
    let mean = nll / count as f64;
    Ok(Perplexity {
        ppl: mean.exp(),
        nll: mean,
        n_chunks,
        n_scored: count,
    })
}
