//! The generation loop: prefill, then sample token by token until an end-of-sequence id, a
//! stop string or the token budget. Text is streamed as complete UTF-8 only, and text that
//! could still become a stop string is held back until it is known not to.

use std::time::{Duration, Instant};

use qwen2_tokenizer::{StreamDecoder, Tokenizer};

use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::model::{Logits, Qwen2};
use crate::rows::RowRole;
use crate::sampling::{Sampler, SamplingParams};

#[derive(Debug, Clone)]
pub struct GenerateParams {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// Token ids that end generation (every eos the model files declare).
    pub eos_ids: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// The token budget ran out.
    Length,
    /// The caller's callback asked to stop (Ctrl-C, a closed connection).
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated ids, including the eos id if one ended the generation.
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    pub prefill_time: Duration,
    pub decode_time: Duration,
}

impl Generation {
    pub fn decode_tok_s(&self) -> f64 {
        let n = self.tokens.len().saturating_sub(1);
        if n == 0 || self.decode_time.is_zero() {
            return 0.0;
        }
        n as f64 / self.decode_time.as_secs_f64()
    }
    pub fn prefill_tok_s(&self) -> f64 {
        if self.prefill_time.is_zero() {
            return 0.0;
        }
        self.prompt_tokens as f64 / self.prefill_time.as_secs_f64()
    }
}

/// Holds back streamed text that might be the start of a stop string.
struct StopMatcher<'a> {
    stops: &'a [String],
    pending: String,
}

impl StopMatcher<'_> {
    /// Add text; returns (text safe to emit, whether a stop string was hit).
    fn push(&mut self, s: &str) -> (String, bool) {
        self.pending.push_str(s);
        if let Some(at) = self
            .stops
            .iter()
            .filter(|st| !st.is_empty())
            .filter_map(|st| self.pending.find(st.as_str()))
            .min()
        {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        // Keep the longest suffix that is a prefix of some stop string.
        let mut keep = 0;
        for st in self.stops {
            for (i, _) in st.char_indices().skip(1) {
                if self.pending.ends_with(&st[..i]) {
                    keep = keep.max(i);
                }
            }
        }
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }
    fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// Generate after `prompt`, which is fed on top of what `cache` already holds.
/// `on_text` receives each piece of text as it becomes final; returning `false` cancels.
pub fn generate(
    model: &Qwen2,
    tok: &Tokenizer,
    cache: &mut KvCache,
    prompt: &[u32],
    params: &GenerateParams,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(Error::EmptyPrompt);
    }
    let requested = cache.len() + prompt.len() + params.max_new_tokens;
    if requested > cache.ctx() {
        return Err(Error::ContextLength {
            requested,
            prompt: cache.len() + prompt.len(),
            max_new: params.max_new_tokens,
            ctx: cache.ctx(),
            model_max: model.cfg.max_position_embeddings,
        });
    }
    let mut sampler = Sampler::new(params.sampling.clone())?;
    let mut context: Vec<u32> = prompt.to_vec();
    let mut generated = Vec::new();
    let mut text = String::new();
    let mut decoder = StreamDecoder::new(tok, true);
    let mut stops = StopMatcher {
        stops: &params.stop,
        pending: String::new(),
    };

    let t0 = Instant::now();
    // Roles by what the rows are, not by their count (a one-token prompt is still a prompt).
    let mut logits = model.forward_as(prompt, cache, Logits::Last, RowRole::Prompt)?;
    let prefill_time = t0.elapsed();
    let t1 = Instant::now();
    let mut finish = FinishReason::Length;
    let mut hit_stop_string = false;

    let mut emit = |s: &str, text: &mut String| -> bool {
        text.push_str(s);
        s.is_empty() || on_text(s)
    };

    while generated.len() < params.max_new_tokens {
        let next = sampler.sample(&mut logits, &context, &generated);
        generated.push(next);
        context.push(next);
        if params.eos_ids.contains(&next) {
            finish = FinishReason::Stop;
            break;
        }
        if let Some(piece) = decoder.push(next)? {
            let (out, hit) = stops.push(&piece);
            if !emit(&out, &mut text) {
                finish = FinishReason::Cancelled;
                break;
            }
            if hit {
                finish = FinishReason::Stop;
                hit_stop_string = true;
                break;
            }
        }
        if generated.len() == params.max_new_tokens {
            break;
        }
        logits = model.forward_as(&[next], cache, Logits::Last, RowRole::Decode)?;
    }
    if !hit_stop_string && finish != FinishReason::Cancelled {
        if let Some(rest) = decoder.flush()? {
            let (out, hit) = stops.push(&rest);
            emit(&out, &mut text);
            hit_stop_string = hit;
            if hit {
                finish = FinishReason::Stop;
            }
        }
        if !hit_stop_string {
            let rest = stops.finish();
            emit(&rest, &mut text);
        }
    }
    Ok(Generation {
        tokens: generated,
        text,
        finish,
        prompt_tokens: prompt.len(),
        prefill_time,
        decode_time: t1.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_matcher_holds_back_prefixes() {
        let stops = vec!["STOP".to_string()];
        let mut m = StopMatcher {
            stops: &stops,
            pending: String::new(),
        };
        assert_eq!(m.push("hello S"), ("hello ".to_string(), false));
        assert_eq!(m.push("T"), (String::new(), false));
        assert_eq!(m.push("x"), ("STx".to_string(), false));
        assert_eq!(m.push("a STO"), ("a ".to_string(), false));
        assert_eq!(m.push("P tail"), (String::new(), true));
    }

    #[test]
    fn stop_matcher_multibyte() {
        let stops = vec!["你好".to_string()];
        let mut m = StopMatcher {
            stops: &stops,
            pending: String::new(),
        };
        assert_eq!(m.push("a你"), ("a".to_string(), false));
        assert_eq!(m.push("好b"), (String::new(), true));
    }
}
