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

/// How many whole chunks of `ctx` tokens `n_tokens` holds (at least one), or why it is none.
fn chunk_count(n_tokens: usize, ctx: usize) -> Result<usize> {
    if ctx < 4 {
        return Err(Error::Invalid(format!(
            "--ctx must be at least 4, got {ctx}"
        )));
    }
    let n_chunks = n_tokens / ctx;
    if n_chunks == 0 {
        return Err(Error::Invalid(format!(
            "the text has {n_tokens} tokens; at least one chunk of --ctx {ctx} is needed"
        )));
    }
    Ok(n_chunks)
}

/// One chunk from an empty cache: logits for its second half only (the first half only
/// builds context). Row `r` is position `len/2 + r` and predicts token `len/2 + r + 1`.
fn second_half_logits(model: &Qwen2, chunk: &[u32]) -> Result<Vec<f32>> {
    let first = chunk.len() / 2;
    let mut cache = model.new_cache(chunk.len());
    model.forward(&chunk[..first], &mut cache, Logits::None)?;
    model.forward(&chunk[first..], &mut cache, Logits::All)
}

/// `progress(chunk, n_chunks, running_ppl)` is called after each chunk.
pub fn perplexity(
    model: &Qwen2,
    ids: &[u32],
    ctx: usize,
    mut progress: impl FnMut(usize, usize, f64),
) -> Result<Perplexity> {
    let n_chunks = chunk_count(ids.len(), ctx)?;
    let first = ctx / 2;
    let vocab = model.vocab_size();
    let mut nll = 0f64;
    let mut count = 0usize;
    for c in 0..n_chunks {
        let chunk = &ids[c * ctx..(c + 1) * ctx];
        let logits = second_half_logits(model, chunk)?;
        for r in 0..ctx - first - 1 {
            let row = &logits[r * vocab..(r + 1) * vocab];
            let target = chunk[first + r + 1] as usize;
            nll += log_sum_exp(row) - row[target] as f64;
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

/// A model scored against a base model on the same chunks (llama-perplexity's
/// `--kl-divergence`, with the base logits computed on the fly chunk by chunk instead of read
/// from a saved file, so no `[tokens, vocab]` array is ever held for the whole text).
#[derive(Debug, Clone)]
pub struct KlDivergence {
    pub model: Perplexity,
    pub base: Perplexity,
    /// `ppl(model) - ppl(base)`.
    pub delta_ppl: f64,
    /// Mean of KL(p_base || p_model) over scored tokens (nats), and its standard error.
    pub kl_mean: f64,
    pub kl_stderr: f64,
    pub kl_median: f64,
    pub kl_p99: f64,
    pub kl_max: f64,
    /// Fraction of scored tokens where both models have the same most likely token.
    pub top1_agreement: f64,
}

/// Log-sum-exp of a row in f64.
fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    max + row
        .iter()
        .map(|&v| (v as f64 - max).exp())
        .sum::<f64>()
        .ln()
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Score `model` and `base` on the same chunks (as [`perplexity`] chunks them).
/// `progress(chunk, n_chunks, running_mean_kl)` is called after each chunk.
pub fn kl_divergence(
    model: &Qwen2,
    base: &Qwen2,
    ids: &[u32],
    ctx: usize,
    mut progress: impl FnMut(usize, usize, f64),
) -> Result<KlDivergence> {
    let n_chunks = chunk_count(ids.len(), ctx)?;
    let vocab = model.vocab_size();
    if base.vocab_size() != vocab {
        return Err(Error::Invalid(format!(
            "the base model's vocabulary has {} entries, the model's {vocab}: KL divergence \
             needs the same vocabulary",
            base.vocab_size()
        )));
    }
    let first = ctx / 2;
    let (mut nll_m, mut nll_b) = (0f64, 0f64);
    let mut kls: Vec<f64> = Vec::with_capacity(n_chunks * (ctx - first));
    let mut same_top = 0usize;
    for c in 0..n_chunks {
        let chunk = &ids[c * ctx..(c + 1) * ctx];
        let lm = second_half_logits(model, chunk)?;
        let lb = second_half_logits(base, chunk)?;
        for r in 0..ctx - first - 1 {
            let (qm, qb) = (
                &lm[r * vocab..(r + 1) * vocab],
                &lb[r * vocab..(r + 1) * vocab],
            );
            let (zm, zb) = (log_sum_exp(qm), log_sum_exp(qb));
            let target = chunk[first + r + 1] as usize;
            nll_m += zm - qm[target] as f64;
            nll_b += zb - qb[target] as f64;
            // KL(p_b || p_m) = sum p_b (log p_b - log p_m), in f64.
            let kl: f64 = qb
                .iter()
                .zip(qm)
                .map(|(&b, &m)| {
                    let lpb = b as f64 - zb;
                    lpb.exp() * (lpb - (m as f64 - zm))
                })
                .sum();
            kls.push(kl.max(0.0));
            same_top += (argmax(qm) == argmax(qb)) as usize;
        }
        progress(c, n_chunks, kls.iter().sum::<f64>() / kls.len() as f64);
    }
    let n = kls.len();
    let ppl = |nll: f64| Perplexity {
        ppl: (nll / n as f64).exp(),
        nll: nll / n as f64,
        n_chunks,
        n_scored: n,
    };
    let (pm, pb) = (ppl(nll_m), ppl(nll_b));
    let mean = kls.iter().sum::<f64>() / n as f64;
    let var = kls.iter().map(|k| (k - mean).powi(2)).sum::<f64>() / (n.max(2) - 1) as f64;
    let mut sorted = kls.clone();
    sorted.sort_by(f64::total_cmp);
    // Nearest-rank percentile.
    let pct = |p: f64| sorted[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
    Ok(KlDivergence {
        delta_ppl: pm.ppl - pb.ppl,
        model: pm,
        base: pb,
        kl_mean: mean,
        kl_stderr: (var / n as f64).sqrt(),
        kl_median: pct(0.5),
        kl_p99: pct(0.99),
        kl_max: sorted[n - 1],
        top1_agreement: same_top as f64 / n as f64,
    })
}
