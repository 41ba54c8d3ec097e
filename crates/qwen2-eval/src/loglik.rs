//! Log-likelihood scoring and greedy generation over one KV cache that keeps whatever prefix
//! consecutive requests share.
//!
//! Each request is tokenized as lm-eval's `_encode_pair` does (trailing spaces of the context
//! move to the continuation; the continuation's tokens are those of `context + continuation`
//! after the context's). The cache holds the tokens of the previous request; the next one
//! keeps the longest common prefix and computes only the rest. So the choices of a question
//! branch from its context's cache, and a few-shot prefix common to many questions (MMLU's
//! per-subject examples, GSM8K's fixed exemplars) is computed once.

use qwen2_core::qwen2_tokenizer::Tokenizer;
use qwen2_core::{KvCache, Logits, Qwen2};

use crate::error::{Error, Result};

/// The score of one continuation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ContScore {
    /// Sum of the continuation tokens' log-probabilities (natural log).
    pub loglik: f64,
    /// Whether greedy decoding would have produced exactly the continuation.
    pub is_greedy: bool,
    pub n_tokens: usize,
}

pub struct Scorer<'m> {
    model: &'m Qwen2,
    tok: &'m Tokenizer,
    cache: KvCache,
    /// The tokens `cache` holds.
    cached: Vec<u32>,
    /// Token used as the context of a request with an empty one (lm-eval uses the eot token).
    empty_ctx_token: u32,
    /// The last request's model input, the position its logit rows start at, and those rows:
    /// a request with the same input and start (MMLU's four one-token answers share one
    /// context) takes them instead of running the last position again.
    last: Option<(Vec<u32>, usize, Vec<f32>)>,
    /// Tokens computed (not reused) so far: a measure of what the prefix cache saved.
    pub computed_tokens: usize,
    pub reused_tokens: usize,
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl<'m> Scorer<'m> {
    pub fn new(model: &'m Qwen2, tok: &'m Tokenizer, ctx: usize, empty_ctx_token: u32) -> Self {
        Scorer {
            model,
            tok,
            cache: model.new_cache(ctx),
            cached: Vec::new(),
            empty_ctx_token,
            last: None,
            computed_tokens: 0,
            reused_tokens: 0,
        }
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tok
            .encode(text)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// lm-eval's `_encode_pair`.
    pub fn encode_pair(&self, context: &str, continuation: &str) -> Result<(Vec<u32>, Vec<u32>)> {
        let trimmed = context.trim_end_matches(|c: char| c.is_whitespace());
        let (ctx, cont) = if trimmed.len() < context.len() {
            (
                trimmed,
                format!("{}{continuation}", &context[trimmed.len()..]),
            )
        } else {
            (context, continuation.to_string())
        };
        let whole = self.encode(&format!("{ctx}{cont}"))?;
        let mut ctx_enc = self.encode(ctx)?;
        let cont_enc = whole.get(ctx_enc.len()..).unwrap_or_default().to_vec();
        if ctx_enc.is_empty() {
            ctx_enc.push(self.empty_ctx_token);
        }
        Ok((ctx_enc, cont_enc))
    }

    /// Keep the longest prefix of `tokens` the cache already holds, but at most `limit`
    /// tokens; returns how many are kept.
    fn reuse(&mut self, tokens: &[u32], limit: usize) -> usize {
        self.last = None;
        let keep = common_prefix(&self.cached, tokens).min(limit);
        self.cache.truncate(keep);
        self.cached.truncate(keep);
        self.reused_tokens += keep;
        keep
    }

    fn feed(&mut self, tokens: &[u32], which: Logits) -> Result<Vec<f32>> {
        self.last = None;
        let out = self.model.forward(tokens, &mut self.cache, which)?;
        self.cached.extend_from_slice(tokens);
        self.computed_tokens += tokens.len();
        Ok(out)
    }

    /// log P(continuation | context) for token ids.
    pub fn score_tokens(&mut self, ctx: &[u32], cont: &[u32]) -> Result<ContScore> {
        if ctx.is_empty() || cont.is_empty() {
            return Err(Error::Invalid(
                "a request needs a context and a continuation of at least one token".into(),
            ));
        }
        let full: Vec<u32> = ctx.iter().chain(cont).copied().collect();
        // The model input is every token but the last; logits are needed from the position
        // of the last context token on, so at most the context minus one is reused.
        let input = &full[..full.len() - 1];
        let first_out = ctx.len() - 1;
        let logits = match self.last.take() {
            // Same tokens, so the same rows (and the cache already holds `input`).
            Some((inp, fo, rows)) if inp == input && fo == first_out => {
                self.reused_tokens += input.len();
                self.last = Some((inp, fo, rows.clone()));
                rows
            }
            _ => {
                let keep = self.reuse(input, first_out);
                self.cache.check_room(input.len() - keep)?;
                // The rest of the context and the continuation in one pass (one weight pass
                // instead of two: MMLU's is a single token), logits for the continuation.
                let rows = self.feed(&input[keep..], Logits::Tail(input.len() - first_out))?;
                self.last = Some((input.to_vec(), first_out, rows.clone()));
                rows
            }
        };
        let vocab = self.model.vocab_size();
        if logits.len() != cont.len() * vocab {
            return Err(Error::Invalid(format!(
                "expected {} logit rows, got {}",
                cont.len(),
                logits.len() / vocab.max(1)
            )));
        }
        let mut loglik = 0.0f64;
        let mut is_greedy = true;
        for (row, &t) in logits.chunks_exact(vocab).zip(cont) {
            let (lp, argmax) = log_prob(row, t as usize)?;
            loglik += lp;
            is_greedy &= argmax == t as usize;
        }
        Ok(ContScore {
            loglik,
            is_greedy,
            n_tokens: cont.len(),
        })
    }

    pub fn score(&mut self, context: &str, continuation: &str) -> Result<ContScore> {
        let (c, x) = self.encode_pair(context, continuation)?;
        self.score_tokens(&c, &x)
    }

    /// Greedy continuation of `prompt` for at most `max_new` tokens, stopping at an end id or
    /// at the first of `stop` (the text is cut before it). Returns the text.
    pub fn greedy(
        &mut self,
        prompt: &str,
        max_new: usize,
        stop: &[&str],
        eos: &[u32],
    ) -> Result<String> {
        let mut p = self.encode(prompt)?;
        if p.is_empty() {
            p.push(self.empty_ctx_token);
        }
        let keep = self.reuse(&p, p.len() - 1);
        self.cache.check_room(p.len() - keep)?;
        let mut logits = self.feed(&p[keep..], Logits::Last)?;
        let mut out: Vec<u32> = Vec::new();
        let mut text = String::new();
        for step in 0..max_new {
            let next = argmax(&logits)?;
            if eos.contains(&next) {
                break;
            }
            out.push(next);
            text = self
                .tok
                .decode(&out, true)
                .map_err(|e| Error::Tokenizer(e.to_string()))?;
            if let Some(cut) = stop.iter().filter_map(|s| text.find(s)).min() {
                text.truncate(cut);
                break;
            }
            if step + 1 == max_new || self.cache.len() + 1 > self.cache.ctx() {
                break;
            }
            logits = self.feed(&[next], Logits::Last)?;
        }
        Ok(text)
    }
}

/// (log-softmax of `row` at `target`, the argmax of `row`), in f64.
pub fn log_prob(row: &[f32], target: usize) -> Result<(f64, usize)> {
    if target >= row.len() {
        return Err(Error::Invalid(format!(
            "token {target} is outside the vocabulary ({})",
            row.len()
        )));
    }
    let am = argmax(row)? as usize;
    let max = row[am] as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    Ok((row[target] as f64 - max - sum.ln(), am))
}

/// Index of the largest value (the first one on ties, as torch's argmax).
pub fn argmax(row: &[f32]) -> Result<u32> {
    let mut best = 0usize;
    for (i, &x) in row.iter().enumerate() {
        if !x.is_finite() {
            return Err(Error::Invalid("non-finite logits".into()));
        }
        if x > row[best] {
            best = i;
        }
    }
    if row.is_empty() {
        return Err(Error::Invalid("empty logits".into()));
    }
    Ok(best as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_and_argmax() {
        let row = [1.0f32, 3.0, 3.0, -1.0];
        let (lp, am) = log_prob(&row, 1).unwrap();
        let z: f64 = row.iter().map(|&x| (x as f64).exp()).sum();
        assert!((lp - (3.0 - z.ln())).abs() < 1e-12);
        assert_eq!(am, 1);
        assert!(log_prob(&row, 4).is_err());
        assert!(argmax(&[f32::NAN]).is_err());
    }

    #[test]
    fn prefix_len() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4]), 2);
        assert_eq!(common_prefix(&[], &[1]), 0);
    }
}
