//! The engine against the plain one-sequence path (`qwen2_core::generate` / `forward`):
//! - greedy output through the engine equals `generate`'s, alone and with 4 requests of
//!   different lengths batched together (prefill chunks interleaved with decodes): identical
//!   tokens, on a tiny model in `Precision::Exact` and on the real 0.5B fast path, because
//!   every row's kernels follow its role (prompt or decode), never the batch (issue 5);
//! - cancel and client disconnect free the slot and its KV (stats back to 0);
//! - a full queue, a too-long request and a shut-down engine are refused;
//! - a prefix-cache hit prefills only the new tokens and gives the same output;
//! - the same seed gives the same text, whatever runs beside it.

#[path = "../../qwen2-core/tests/common/mod.rs"]
mod common;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::{fixture, real_model};
use qwen2_core::{GenerateParams, LoadedModel, Logits, Precision, SamplingParams};
use qwen2_server::engine::{
    Constraint, Engine, EngineConfig, EngineStats, Event, FinishReason, GenRequest, Handle,
    SubmitError,
};

fn real() -> Arc<LoadedModel> {
    static M: OnceLock<Arc<LoadedModel>> = OnceLock::new();
    M.get_or_init(|| Arc::new(qwen2_core::load(&real_model(), Precision::Fast).unwrap()))
        .clone()
}

fn tiny() -> Arc<LoadedModel> {
    static M: OnceLock<Arc<LoadedModel>> = OnceLock::new();
    M.get_or_init(|| Arc::new(qwen2_core::load(&fixture("tiny/untied"), Precision::Exact).unwrap()))
        .clone()
}

fn cfg(parallel: usize) -> EngineConfig {
    EngineConfig {
        parallel,
        ctx: 512,
        queue_capacity: 16,
        prefill_chunk: 16,
        request_timeout: Duration::from_secs(600),
        prefix_cache_tokens: 0,
    }
}

fn request(prompt: Vec<u32>, max_tokens: usize, stop_ids: Vec<u32>) -> GenRequest {
    GenRequest {
        prompt,
        sampling: SamplingParams::default(),
        logit_bias: Vec::new(),
        max_tokens,
        stop_ids,
        logprobs: None,
        constraint: None,
    }
}

#[derive(Debug)]
struct Output {
    tokens: Vec<u32>,
    reason: FinishReason,
    completion_tokens: usize,
    cached_prompt_tokens: usize,
    logprobs: Vec<TokenLogprobs>,
}

/// The chosen token's logprob and the top ones.
type TokenLogprobs = (Option<f32>, Vec<(u32, f32)>);

fn collect(mut h: Handle) -> Output {
    let mut tokens = Vec::new();
    let mut logprobs = Vec::new();
    while let Some(e) = h.events.blocking_recv() {
        match e {
            Event::Token {
                id,
                logprob,
                top_logprobs,
            } => {
                tokens.push(id);
                logprobs.push((logprob, top_logprobs));
            }
            Event::Finished {
                reason,
                completion_tokens,
                cached_prompt_tokens,
                ..
            } => {
                return Output {
                    tokens,
                    reason,
                    completion_tokens,
                    cached_prompt_tokens,
                    logprobs,
                }
            }
        }
    }
    panic!("the event stream ended without Finished");
}

/// Engine tokens as `generate` reports them: the stop id that ended it is included.
fn with_stop(o: &Output, stop_ids: &[u32]) -> Vec<u32> {
    let mut t = o.tokens.clone();
    if o.reason == FinishReason::Stop && o.completion_tokens == t.len() + 1 {
        t.push(stop_ids[0]);
    }
    t
}

fn wait_for(engine: &Engine, what: &str, ok: impl Fn(&EngineStats) -> bool) -> EngineStats {
    let t0 = Instant::now();
    loop {
        let s = engine.stats();
        if ok(&s) {
            return s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Greedy by ids with `forward`, one sequence alone; also the top-2 gap at each step.
fn greedy_alone(lm: &LoadedModel, prompt: &[u32], n: usize, stop: &[u32]) -> (Vec<u32>, Vec<f32>) {
    let m = &lm.model;
    let mut cache = m.new_cache(prompt.len() + n + 1);
    let mut logits = m.forward(prompt, &mut cache, Logits::Last).unwrap();
    let (mut out, mut gaps) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t = common::argmax(&logits);
        let second = logits
            .iter()
            .enumerate()
            .filter(|&(i, _)| i as u32 != t)
            .map(|(_, &v)| v)
            .fold(f32::NEG_INFINITY, f32::max);
        gaps.push(logits[t as usize] - second);
        out.push(t);
        if stop.contains(&t) {
            break;
        }
        logits = m.forward(&[t], &mut cache, Logits::Last).unwrap();
    }
    (out, gaps)
}

fn prompts_text() -> [&'static str; 4] {
    [
        "def fibonacci(n):",
        "// A binary search over a sorted slice in Rust, with comments explaining each step of the loop invariant.\nfn binary_search(",
        "SELECT name,",
        "The quick brown fox jumps over the lazy dog. Then the dog wakes up and says:",
    ]
}

#[test]
fn real_greedy_equals_generate_alone_and_batched() {
    let lm = real();
    let tok = lm.tokenizer().unwrap();
    let eos = lm.eos_ids.clone();
    let lens = [40, 24, 32, 16];
    let prompts: Vec<Vec<u32>> = prompts_text()
        .iter()
        .map(|t| tok.encode(t).unwrap())
        .collect();
    let reference: Vec<Vec<u32>> = prompts
        .iter()
        .zip(lens)
        .map(|(p, n)| {
            let mut cache = lm.model.new_cache(p.len() + n);
            let params = GenerateParams {
                max_new_tokens: n,
                sampling: SamplingParams::default(),
                stop: Vec::new(),
                eos_ids: eos.clone(),
            };
            qwen2_core::generate(&lm.model, tok, &mut cache, p, &params, &mut |_| true)
                .unwrap()
                .tokens
        })
        .collect();

    // Alone: exactly `generate`'s tokens.
    let engine = Engine::start(lm.clone(), cfg(1));
    let o = collect(
        engine
            .submit(request(prompts[0].clone(), lens[0], eos.clone()))
            .unwrap(),
    );
    assert_eq!(with_stop(&o, &eos), reference[0], "alone");
    drop(engine);

    // Four at once, different prompt and output lengths, prefill chunks of 16 beside decodes.
    let engine = Engine::start(lm.clone(), cfg(4));
    let handles: Vec<Handle> = prompts
        .iter()
        .zip(lens)
        .map(|(p, n)| engine.submit(request(p.clone(), n, eos.clone())).unwrap())
        .collect();
    let outs: Vec<Output> = handles.into_iter().map(collect).collect();
    for (i, (o, want)) in outs.iter().zip(&reference).enumerate() {
        assert_eq!(
            &with_stop(o, &eos),
            want,
            "request {i}: batched differs from generate"
        );
    }
    let s = wait_for(&engine, "idle", |s| s.active == 0);
    assert_eq!(s.kv_used_bytes, 0);
}

#[test]
fn tiny_exact_batched_greedy_is_identical() {
    let lm = tiny();
    let vocab = lm.model.vocab_size() as u32;
    let prompts: Vec<Vec<u32>> = (0..6u32)
        .map(|s| {
            (0..(3 + 7 * s))
                .map(|i| (s * 31 + i * 17 + 5) % vocab)
                .collect()
        })
        .collect();
    let lens = [30, 12, 25, 7, 40, 18];
    let mut c = cfg(4); // 6 requests, 4 slots: two wait and join mid-flight
    c.prefill_chunk = 5;
    let engine = Engine::start(lm.clone(), c);
    let handles: Vec<Handle> = prompts
        .iter()
        .zip(lens)
        .map(|(p, n)| engine.submit(request(p.clone(), n, vec![])).unwrap())
        .collect();
    for ((h, p), n) in handles.into_iter().zip(&prompts).zip(lens) {
        let o = collect(h);
        assert_eq!(o.reason, FinishReason::Length);
        assert_eq!(o.tokens, greedy_alone(&lm, p, n, &[]).0, "prompt {p:?}");
    }
}

#[test]
fn cancel_and_disconnect_free_the_slot() {
    let engine = Engine::start(tiny(), cfg(2));
    let mut h = engine.submit(request(vec![1, 2, 3], 400, vec![])).unwrap();
    assert!(matches!(
        h.events.blocking_recv(),
        Some(Event::Token { .. })
    ));
    wait_for(&engine, "one active with KV", |s| {
        s.active == 1 && s.kv_used_bytes > 0
    });
    h.cancel();
    let o = collect(h);
    assert_eq!(o.reason, FinishReason::Cancelled);
    let s = wait_for(&engine, "slot freed", |s| s.active == 0);
    assert_eq!(s.kv_used_bytes, 0);

    // A client that goes away: the dropped receiver is noticed at the next step.
    let mut h = engine.submit(request(vec![4, 5, 6], 400, vec![])).unwrap();
    assert!(matches!(
        h.events.blocking_recv(),
        Some(Event::Token { .. })
    ));
    drop(h);
    let s = wait_for(&engine, "disconnect noticed", |s| s.active == 0);
    assert_eq!((s.kv_used_bytes, s.queued), (0, 0));
}

#[test]
fn queue_full_context_length_and_invalid_requests() {
    let mut c = cfg(1);
    c.queue_capacity = 1;
    c.ctx = 64;
    let engine = Engine::start(tiny(), c);
    let mut a = engine.submit(request(vec![1, 2, 3], 60, vec![])).unwrap();
    assert!(matches!(
        a.events.blocking_recv(),
        Some(Event::Token { .. })
    ));
    let b = engine.submit(request(vec![1, 2, 3], 60, vec![])).unwrap();
    wait_for(&engine, "one queued", |s| s.queued == 1);
    assert_eq!(
        engine.submit(request(vec![1], 1, vec![])).err(),
        Some(SubmitError::QueueFull)
    );
    a.cancel();
    b.cancel();

    assert_eq!(
        engine.submit(request(vec![7; 60], 5, vec![])).err(),
        Some(SubmitError::ContextLength {
            prompt: 60,
            max_tokens: 5,
            ctx: 64
        })
    );
    for bad in [
        request(vec![], 5, vec![]),
        request(vec![1], 0, vec![]),
        request(vec![100_000], 5, vec![]),
    ] {
        assert!(matches!(
            engine.submit(bad).err(),
            Some(SubmitError::Invalid(_))
        ));
    }
}

#[test]
fn prefix_cache_hit_prefills_only_the_rest() {
    let lm = real();
    let tok = lm.tokenizer().unwrap();
    let mut c = cfg(2);
    c.prefix_cache_tokens = 4096;
    let engine = Engine::start(lm.clone(), c);
    let prompt = tok
        .encode("<|im_start|>system\nYou are a helpful coding assistant.<|im_end|>\n<|im_start|>user\nWrite a Python function that reverses a string.<|im_end|>\n<|im_start|>assistant\n")
        .unwrap();
    let first = collect(
        engine
            .submit(request(prompt.clone(), 12, lm.eos_ids.clone()))
            .unwrap(),
    );
    assert_eq!(first.cached_prompt_tokens, 0);
    let before = engine.stats();
    assert_eq!(before.prefill_tokens_total, prompt.len() as u64);

    let second = collect(
        engine
            .submit(request(prompt.clone(), 12, lm.eos_ids.clone()))
            .unwrap(),
    );
    let after = engine.stats();
    assert_eq!(second.cached_prompt_tokens, prompt.len() - 1);
    assert_eq!(after.prefill_tokens_total - before.prefill_tokens_total, 1);
    assert_eq!(after.prefix_cache_hits, 1);
    assert_eq!(
        second.tokens, first.tokens,
        "a prefix-cache hit changed the output"
    );

    // A longer prompt with the same start reuses the shared part only.
    let mut longer = prompt[..prompt.len() - 3].to_vec();
    longer.extend(tok.encode("Also in Rust, please.").unwrap());
    let third = collect(
        engine
            .submit(request(longer.clone(), 4, lm.eos_ids.clone()))
            .unwrap(),
    );
    assert_eq!(third.cached_prompt_tokens, prompt.len() - 3);
    let (alone, _) = greedy_alone(&lm, &longer, 4, &lm.eos_ids);
    assert_eq!(with_stop(&third, &lm.eos_ids), alone);
    assert!(engine.stats().prefix_cache_tokens > 0);
}

#[test]
fn identical_prompts_at_once_share_one_prefill() {
    // `n > 1`: the api submits n requests with one prompt; only the first prefills it.
    let lm = tiny();
    let mut c = cfg(3);
    c.prefix_cache_tokens = 1000;
    c.prefill_chunk = 8;
    let engine = Engine::start(lm.clone(), c);
    let prompt: Vec<u32> = (0..40).map(|i| (i * 13 + 7) % 500).collect();
    let hs: Vec<Handle> = (0..3)
        .map(|_| engine.submit(request(prompt.clone(), 6, vec![])).unwrap())
        .collect();
    let outs: Vec<Output> = hs.into_iter().map(collect).collect();
    let want = greedy_alone(&lm, &prompt, 6, &[]).0;
    for o in &outs {
        assert_eq!(o.tokens, want);
    }
    let cached: Vec<usize> = outs.iter().map(|o| o.cached_prompt_tokens).collect();
    assert_eq!(cached, vec![0, 39, 39]);
    assert_eq!(engine.stats().prefill_tokens_total, 40 + 1 + 1);
}

#[test]
fn stop_ids_constraint_and_timeout_end_a_request() {
    let lm = tiny();
    let engine = Engine::start(lm.clone(), cfg(2));
    let prompt = vec![10u32, 20, 30];
    let greedy = greedy_alone(&lm, &prompt, 10, &[]).0;

    // The stop id ends the request; it counts as a completion token but is not streamed.
    let k = 4;
    let o = collect(
        engine
            .submit(request(prompt.clone(), 10, vec![greedy[k]]))
            .unwrap(),
    );
    let first = greedy.iter().position(|&t| t == greedy[k]).unwrap();
    assert_eq!(o.reason, FinishReason::Stop);
    assert_eq!(o.tokens, greedy[..first]);
    assert_eq!(o.completion_tokens, first + 1);

    // A constraint that allows only even ids and is complete after three tokens.
    struct EvenThree(usize);
    impl Constraint for EvenThree {
        fn mask(&mut self, logits: &mut [f32]) {
            for (i, l) in logits.iter_mut().enumerate() {
                if i % 2 == 1 {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        fn accept(&mut self, token: u32) -> bool {
            self.0 += 1;
            token.is_multiple_of(2)
        }
        fn is_complete(&self) -> bool {
            self.0 == 3
        }
    }
    let mut req = request(prompt.clone(), 10, vec![]);
    req.constraint = Some(Box::new(EvenThree(0)));
    let o = collect(engine.submit(req).unwrap());
    assert_eq!(o.reason, FinishReason::Stop);
    assert_eq!(o.tokens.len(), 3);
    assert!(o.tokens.iter().all(|t| t % 2 == 0), "{:?}", o.tokens);

    // The timeout counts from submission.
    let mut c = cfg(1);
    c.request_timeout = Duration::from_millis(300);
    let engine = Engine::start(real(), c);
    let o = collect(engine.submit(request(vec![1, 2, 3], 400, vec![])).unwrap());
    assert_eq!(o.reason, FinishReason::Timeout);
    assert!(o.completion_tokens < 400);
    wait_for(&engine, "slot freed", |s| {
        s.active == 0 && s.kv_used_bytes == 0
    });
}

#[test]
fn same_seed_same_text_whatever_runs_beside_it() {
    let lm = real();
    let tok = lm.tokenizer().unwrap();
    let seeded = |text: &str, seed| GenRequest {
        sampling: SamplingParams {
            temperature: 0.9,
            top_p: 0.95,
            seed: Some(seed),
            ..Default::default()
        },
        ..request(tok.encode(text).unwrap(), 24, vec![])
    };
    let engine = Engine::start(lm.clone(), cfg(4));
    let alone = collect(engine.submit(seeded("Once upon a time", 7)).unwrap());
    let handles: Vec<Handle> = [
        seeded("fn main() {", 1),
        seeded("Once upon a time", 7),
        seeded("import numpy as np", 2),
    ]
    .into_iter()
    .map(|r| engine.submit(r).unwrap())
    .collect();
    let outs: Vec<Output> = handles.into_iter().map(collect).collect();
    assert_eq!(
        outs[1].tokens, alone.tokens,
        "batch mates changed a seeded sample"
    );
    let other_seed = collect(engine.submit(seeded("Once upon a time", 8)).unwrap());
    assert_ne!(other_seed.tokens, alone.tokens, "the seed has no effect");
}

/// Issue 5: a seeded sample (temperature 0.8) gives the same tokens and text alone, with 6
/// concurrent requests (joining at once, or while it decodes so its decode rows share steps
/// with their prompt chunks), and after a prefix-cache hit that leaves one prompt row.
#[test]
fn seeded_text_is_the_same_alone_with_6_mates_and_after_a_prefix_hit() {
    let lm = real();
    let tok = lm.tokenizer().unwrap();
    let seeded = |text: &str, seed, n| GenRequest {
        sampling: SamplingParams {
            temperature: 0.8,
            seed: Some(seed),
            ..Default::default()
        },
        ..request(tok.encode(text).unwrap(), n, vec![])
    };
    let target = || seeded("Write a haiku about the sea.\n", 11, 24);
    let mates = || {
        [
            "fn main() {",
            "import numpy as np\n# Load the data and plot a histogram of the ages",
            "SELECT name,",
            "The quick brown fox jumps over the lazy dog. Then the dog wakes up and says:",
            "#include <stdio.h>\nint main(void) {",
            "Q: What is the capital of France?\nA:",
        ]
        .into_iter()
        .enumerate()
        .map(|(i, t)| seeded(t, 100 + i as u64, 8 + 4 * i))
        .collect::<Vec<_>>()
    };
    let text = |o: &Output| tok.decode(&o.tokens, false).unwrap();

    let engine = Engine::start(lm.clone(), cfg(7));
    let alone = collect(engine.submit(target()).unwrap());
    assert_eq!(alone.tokens.len(), 24);

    // All seven at once: the target's prompt chunks share steps with the mates'.
    let t = engine.submit(target()).unwrap();
    let hs: Vec<Handle> = mates()
        .into_iter()
        .map(|r| engine.submit(r).unwrap())
        .collect();
    let together = collect(t);
    hs.into_iter().for_each(|h| drop(collect(h)));
    assert_eq!(
        together.tokens, alone.tokens,
        "6 batch mates changed the sample"
    );

    // Mates join once the target decodes: its decode rows beside their prompt rows.
    let before = engine.stats().generated_tokens_total;
    let t = engine.submit(target()).unwrap();
    wait_for(&engine, "the target to decode", |s| {
        s.generated_tokens_total >= before + 2
    });
    let hs: Vec<Handle> = mates()
        .into_iter()
        .map(|r| engine.submit(r).unwrap())
        .collect();
    let joined = collect(t);
    hs.into_iter().for_each(|h| drop(collect(h)));
    assert_eq!(
        text(&joined),
        text(&alone),
        "mates joining mid-decode changed the text"
    );
    assert_eq!(joined.tokens, alone.tokens);
    drop(engine);

    // A prefix-cache hit: the target's prompt is cached but its last token, prefilled alone.
    let mut c = cfg(7);
    c.prefix_cache_tokens = 4096;
    let engine = Engine::start(lm.clone(), c);
    let first = collect(engine.submit(target()).unwrap());
    let hit = collect(engine.submit(target()).unwrap());
    assert_eq!(hit.cached_prompt_tokens, target().prompt.len() - 1);
    assert_eq!(
        first.tokens, alone.tokens,
        "prefix caching on changed the sample"
    );
    assert_eq!(
        hit.tokens, alone.tokens,
        "a prefix-cache hit changed the sample"
    );
}

#[test]
fn logprobs_are_the_log_softmax_of_the_raw_logits() {
    let lm = tiny();
    let engine = Engine::start(lm.clone(), cfg(1));
    let prompt = vec![3u32, 1, 4, 1, 5];
    let mut req = request(prompt.clone(), 1, vec![]);
    req.logprobs = Some(3);
    req.logit_bias = vec![(9, 50.0)]; // forces token 9; logprobs stay the model's own
    let o = collect(engine.submit(req).unwrap());
    assert_eq!(o.tokens, vec![9]);
    let mut cache = lm.model.new_cache(16);
    let raw = lm.model.forward(&prompt, &mut cache, Logits::Last).unwrap();
    let lse = raw.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln() as f32;
    let (lp, top) = &o.logprobs[0];
    assert!((lp.unwrap() - (raw[9] - lse)).abs() < 1e-5);
    assert_eq!(top.len(), 3);
    assert_eq!(top[0].0, common::argmax(&raw));
    assert!((top[0].1 - (raw[top[0].0 as usize] - lse)).abs() < 1e-5);
    assert!(top[0].1 >= top[1].1 && top[1].1 >= top[2].1);
}

#[test]
fn shutdown_cancels_in_flight_and_refuses_new_requests() {
    let engine = Engine::start(tiny(), cfg(1));
    let mut h = engine.submit(request(vec![1, 2], 400, vec![])).unwrap();
    assert!(matches!(
        h.events.blocking_recv(),
        Some(Event::Token { .. })
    ));
    let queued = engine.submit(request(vec![1, 2], 400, vec![])).unwrap();
    engine.shutdown(Duration::ZERO);
    assert_eq!(collect(h).reason, FinishReason::Cancelled);
    assert_eq!(collect(queued).reason, FinishReason::Cancelled);
    assert_eq!(
        engine.submit(request(vec![1], 1, vec![])).err(),
        Some(SubmitError::ShuttingDown)
    );
}

/// Aggregate decode throughput with 8 concurrent streams vs 1 (a ratio, measured in one run;
/// the absolute numbers depend on the machine's load).
#[test]
#[ignore = "timing; run by hand: cargo test --release -p qwen2-server --test engine -- --ignored --nocapture"]
fn throughput_1_vs_8_streams() {
    let lm = real();
    let tok = lm.tokenizer().unwrap();
    let prompt = tok.encode("Write a long story about a robot:").unwrap();
    let run = |n: usize| {
        let engine = Engine::start(lm.clone(), cfg(n));
        let t0 = Instant::now();
        let hs: Vec<Handle> = (0..n)
            .map(|_| engine.submit(request(prompt.clone(), 64, vec![])).unwrap())
            .collect();
        let total: usize = hs.into_iter().map(|h| collect(h).tokens.len()).sum();
        total as f64 / t0.elapsed().as_secs_f64()
    };
    let one = run(1);
    let eight = run(8);
    let one_again = run(1);
    eprintln!(
        "aggregate tok/s: 1 stream {one:.1} (again {one_again:.1}), 8 streams {eight:.1}: ratio {:.2}",
        eight / ((one + one_again) / 2.0)
    );
}
