//! `qwen2 bench`: prefill and decode tokens/s (median of repetitions, with min and max), load
//! time and peak RSS, in the spirit of llama-bench's pp/tg tests.

use std::time::Instant;

use anyhow::Result;
use qwen2_core::{BatchSeq, LoadedModel, Logits, RowRole};

pub struct BenchResult {
    pub prefill: Stats,
    pub decode: Stats,
    pub load_s: f64,
    pub peak_rss_bytes: u64,
}

pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

fn stats(mut v: Vec<f64>) -> Stats {
    v.sort_by(f64::total_cmp);
    Stats {
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
    }
}

/// Peak resident set size (VmHWM) of this process, where the OS reports it.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// What `qwen2 bench` runs.
pub struct BenchOpts {
    /// Prompt tokens to prefill (pp).
    pub prompt: usize,
    /// Tokens to decode (tg).
    pub gen: usize,
    /// Measured repetitions.
    pub reps: usize,
    /// Unmeasured rounds first (page in the weights, warm the caches); 0 for runs so long
    /// that one round is all there is time for (a 32K prompt).
    pub warmup: usize,
    /// Decode after the prompt, in its cache (tg at depth `prompt`, as llama-bench's `-d`),
    /// instead of from an empty cache.
    pub after_prompt: bool,
    /// Sequences decoded in lockstep: each step is one batched forward of `batch` decode rows
    /// (what `qwen2 serve` runs with `batch` active streams), and tg is the aggregate rate.
    pub batch: usize,
}

pub fn bench(lm: &LoadedModel, load_s: f64, o: &BenchOpts) -> Result<BenchResult> {
    let (p, n) = (o.prompt, o.gen);
    let model = &lm.model;
    // Deterministic, varied token ids (like llama-bench's random tokens).
    let vocab = model.vocab_size().min(150_000) as u64;
    let mut state = 0x9E3779B97F4A7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % vocab) as u32
    };
    let prompt: Vec<u32> = (0..p).map(|_| next()).collect();
    let mut pre = Vec::new();
    let mut dec = Vec::new();
    for rep in 0..o.warmup + o.reps {
        let measured = rep >= o.warmup;
        let mut cache = model.new_cache(p + n + 1);
        if p > 0 {
            let t = Instant::now();
            model.forward(&prompt, &mut cache, Logits::Last)?;
            if measured {
                pre.push(p as f64 / t.elapsed().as_secs_f64());
            }
        }
        if n > 0 {
            if !o.after_prompt {
                cache = model.new_cache(n + 1);
            }
            if o.batch > 1 {
                // Every sequence gets its own copy of the cache (the prompt's, with --after-prompt).
                let mut caches: Vec<_> = (0..o.batch)
                    .map(|_| cache.clone_prefix(cache.len()))
                    .collect();
                let mut toks: Vec<u32> = (0..o.batch).map(|_| next()).collect();
                let t = Instant::now();
                for _ in 0..n {
                    let step: Vec<[u32; 1]> = toks.iter().map(|&t| [t]).collect();
                    let mut seqs: Vec<BatchSeq<'_>> = step
                        .iter()
                        .zip(caches.iter_mut())
                        .map(|(t, cache)| BatchSeq {
                            tokens: t,
                            cache,
                            logits: Logits::Last,
                            role: RowRole::Decode,
                        })
                        .collect();
                    for (tok, logits) in toks.iter_mut().zip(model.forward_batch(&mut seqs)?) {
                        *tok = qwen2_core::sampling::argmax(&logits?);
                    }
                }
                if measured {
                    dec.push((n * o.batch) as f64 / t.elapsed().as_secs_f64());
                }
                continue;
            }
            let t = Instant::now();
            let mut tok = next();
            for _ in 0..n {
                let logits = model.forward(&[tok], &mut cache, Logits::Last)?;
                tok = qwen2_core::sampling::argmax(&logits);
            }
            if measured {
                dec.push(n as f64 / t.elapsed().as_secs_f64());
            }
        }
    }
    let empty = || Stats {
        median: 0.0,
        min: 0.0,
        max: 0.0,
    };
    Ok(BenchResult {
        prefill: if pre.is_empty() { empty() } else { stats(pre) },
        decode: if dec.is_empty() { empty() } else { stats(dec) },
        load_s,
        peak_rss_bytes: peak_rss_bytes(),
    })
}
