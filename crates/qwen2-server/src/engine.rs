//! The engine: one scheduler thread owns the model and runs every active request in one
//! batched forward pass per step (continuous batching). Requests join and leave the batch at
//! token boundaries; a step carries one token of every decoding sequence plus at most
//! `prefill_chunk` prompt tokens, so a long prompt never stalls running streams. Each sequence
//! has its own KV cache (the model's default type, f16 on the fast path), freed when it
//! finishes, is cancelled, its client goes away, or it times out. Finished and prefilled
//! prompts stay in an LRU prefix cache, so a prompt that starts the same way (a chat's next
//! turn, `n > 1`) prefills only what is new.
//!
//! The public types are the contract with the HTTP layer (notes/server_interface.md).

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use qwen2_core::kv_cache::KvCache;
use qwen2_core::loader::LoadedModel;
use qwen2_core::sampling::{Sampler, SamplingParams};
use qwen2_core::{BatchSeq, Logits, RowRole};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use self::prefix_cache::PrefixCache;

mod prefix_cache;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most sequences in the running batch (`--parallel`).
    pub parallel: usize,
    /// Most tokens (prompt + completion) per sequence (`--ctx`).
    pub ctx: usize,
    /// Requests waiting beyond `parallel` before `QueueFull`.
    pub queue_capacity: usize,
    /// Prompt tokens per step, so long prompts do not stall running streams.
    pub prefill_chunk: usize,
    pub request_timeout: Duration,
    /// Budget of cached prefix KV, in tokens (0 = off).
    pub prefix_cache_tokens: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            parallel: 4,
            ctx: 4096,
            queue_capacity: 64,
            prefill_chunk: 256,
            request_timeout: Duration::from_secs(600),
            prefix_cache_tokens: 16384,
        }
    }
}

pub struct GenRequest {
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    pub logit_bias: Vec<(u32, f32)>,
    pub max_tokens: usize,
    /// Usually the model's eos ids.
    pub stop_ids: Vec<u32>,
    /// `Some(k)`: report the chosen token's logprob and the top `k` (k may be 0).
    pub logprobs: Option<usize>,
    pub constraint: Option<Box<dyn Constraint>>,
}

/// Masks logits before sampling (JSON / json_schema constrained decoding lives in the api).
pub trait Constraint: Send {
    /// Set disallowed token logits to -inf. `logits` is the full vocab row.
    fn mask(&mut self, logits: &mut [f32]);
    /// The sampled token; return false if it violates (the engine then finishes with Error).
    fn accept(&mut self, token: u32) -> bool;
    /// True when the output is complete (e.g. the JSON value closed): finish with Stop.
    fn is_complete(&self) -> bool;
}

/// What a request's stream carries: tokens, then exactly one `Finished`. A stop id that ends
/// the request is not sent as a `Token` (it has no text) but counts in `completion_tokens`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Token {
        id: u32,
        logprob: Option<f32>,
        top_logprobs: Vec<(u32, f32)>,
    },
    Finished {
        reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
        cached_prompt_tokens: usize,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum FinishReason {
    Stop,
    Length,
    Cancelled,
    Timeout,
    Error(String),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubmitError {
    #[error("the request queue is full; retry later")]
    QueueFull,
    #[error(
        "prompt ({prompt} tokens) + max_tokens ({max_tokens}) exceeds the context length ({ctx})"
    )]
    ContextLength {
        prompt: usize,
        max_tokens: usize,
        ctx: usize,
    },
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// Cancels its request; cloneable, so it outlives moving `events` out of the `Handle`.
#[derive(Debug, Clone)]
pub struct Canceller(Arc<AtomicBool>);

impl Canceller {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A submitted request. Dropping it (or just `events`) cancels the request: the engine sees
/// the closed channel at the next step and frees the slot.
pub struct Handle {
    pub id: u64,
    pub events: UnboundedReceiver<Event>,
    cancel: Canceller,
}

impl Handle {
    pub fn cancel(&self) {
        self.cancel.cancel();
    }
    pub fn canceller(&self) -> Canceller {
        self.cancel.clone()
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStats {
    /// Sequences in the running batch.
    pub active: usize,
    /// Requests waiting for a slot.
    pub queued: usize,
    /// KV bytes held by active sequences and the prefix cache.
    pub kv_used_bytes: usize,
    /// KV bytes if every slot and the prefix cache were full.
    pub kv_capacity_bytes: usize,
    pub prompt_tokens_total: u64,
    pub generated_tokens_total: u64,
    /// Requests whose prompt reused cached KV.
    pub prefix_cache_hits: u64,
    /// Prompt tokens served from the prefix cache (not prefilled).
    pub cached_prompt_tokens_total: u64,
    /// Prompt tokens actually run through the model.
    pub prefill_tokens_total: u64,
    /// Tokens held by the prefix cache now.
    pub prefix_cache_tokens: usize,
    pub requests_total: u64,
    /// Forward passes run (one per scheduler step).
    pub steps_total: u64,
    /// Wall time of all steps: building the batch, the forward pass, sampling, sending.
    pub step_seconds_total: f64,
    /// Of which inside the forward pass (the rest is the engine's own per-step overhead).
    pub forward_seconds_total: f64,
    /// Steps with no prompt rows (pure batched decode), and their wall time.
    pub decode_steps_total: u64,
    pub decode_step_seconds_total: f64,
}

/// A request waiting for a slot.
struct Pending {
    req: GenRequest,
    tx: UnboundedSender<Event>,
    cancel: Arc<AtomicBool>,
    submitted: Instant,
}

impl Pending {
    fn finish(&self, reason: FinishReason) {
        let _ = self.tx.send(Event::Finished {
            reason,
            prompt_tokens: self.req.prompt.len(),
            completion_tokens: 0,
            cached_prompt_tokens: 0,
        });
    }
}

struct Queue {
    waiting: VecDeque<Pending>,
    /// Set by `shutdown`: no new requests; everything still running stops at the deadline.
    deadline: Option<Instant>,
}

/// What the submitting side and the scheduler thread share.
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    stats: Mutex<EngineStats>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Engine {
    shared: Arc<Shared>,
    cfg: EngineConfig,
    vocab: usize,
    next_id: AtomicU64,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Engine {
    pub fn start(model: Arc<LoadedModel>, cfg: EngineConfig) -> Engine {
        let mut cfg = cfg;
        cfg.parallel = cfg.parallel.max(1);
        cfg.prefill_chunk = cfg.prefill_chunk.max(1);
        let m = &model.model;
        let kv_bytes = |tokens| {
            KvCache::bytes_for(
                m.cfg.num_hidden_layers,
                m.cfg.kv_dim(),
                tokens,
                m.default_kv_dtype(),
            )
        };
        let stats = EngineStats {
            kv_capacity_bytes: kv_bytes(cfg.ctx) * cfg.parallel + kv_bytes(cfg.prefix_cache_tokens),
            ..Default::default()
        };
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                waiting: VecDeque::new(),
                deadline: None,
            }),
            wake: Condvar::new(),
            stats: Mutex::new(stats),
        });
        let vocab = m.vocab_size();
        let sched = Scheduler {
            prefix: PrefixCache::new(cfg.prefix_cache_tokens),
            model,
            cfg: cfg.clone(),
            shared: shared.clone(),
            active: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("qwen2-engine".into())
            .spawn(move || sched.run())
            .ok();
        if thread.is_none() {
            // No thread, no engine: refuse every request rather than hang them.
            lock(&shared.queue).deadline = Some(Instant::now());
        }
        Engine {
            shared,
            cfg,
            vocab,
            next_id: AtomicU64::new(1),
            thread: Mutex::new(thread),
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn submit(&self, req: GenRequest) -> Result<Handle, SubmitError> {
        self.validate(&req)?;
        let (tx, events) = unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut q = lock(&self.shared.queue);
            if q.deadline.is_some() {
                return Err(SubmitError::ShuttingDown);
            }
            if q.waiting.len() >= self.cfg.queue_capacity {
                return Err(SubmitError::QueueFull);
            }
            q.waiting.push_back(Pending {
                req,
                tx,
                cancel: cancel.clone(),
                submitted: Instant::now(),
            });
            lock(&self.shared.stats).queued = q.waiting.len();
        }
        self.shared.wake.notify_one();
        Ok(Handle {
            id,
            events,
            cancel: Canceller(cancel),
        })
    }

    fn validate(&self, req: &GenRequest) -> Result<(), SubmitError> {
        let invalid = |m: String| Err(SubmitError::Invalid(m));
        if req.prompt.is_empty() {
            return invalid("the prompt is empty".into());
        }
        if req.max_tokens == 0 {
            return invalid("max_tokens must be at least 1".into());
        }
        if req.prompt.len() + req.max_tokens > self.cfg.ctx {
            return Err(SubmitError::ContextLength {
                prompt: req.prompt.len(),
                max_tokens: req.max_tokens,
                ctx: self.cfg.ctx,
            });
        }
        if let Some(&id) = req.prompt.iter().find(|&&id| id as usize >= self.vocab) {
            return invalid(format!(
                "prompt token id {id} is out of range (vocabulary size {})",
                self.vocab
            ));
        }
        for &(id, bias) in &req.logit_bias {
            if id as usize >= self.vocab || !bias.is_finite() {
                return invalid(format!(
                    "logit_bias {id}: {bias} needs an id below {} and a finite bias",
                    self.vocab
                ));
            }
        }
        req.sampling
            .validate()
            .map_err(|e| SubmitError::Invalid(e.to_string()))
    }

    pub fn stats(&self) -> EngineStats {
        lock(&self.shared.stats).clone()
    }

    /// Stop accepting requests, let in-flight and queued ones run for up to
    /// `finish_in_flight`, then cancel what remains and stop the scheduler thread. Blocks
    /// until it has stopped (at most `finish_in_flight` plus one step).
    pub fn shutdown(&self, finish_in_flight: Duration) {
        {
            let mut q = lock(&self.shared.queue);
            let deadline = Instant::now() + finish_in_flight;
            q.deadline = Some(q.deadline.map_or(deadline, |d| d.min(deadline)));
        }
        self.shared.wake.notify_all();
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown(Duration::ZERO);
    }
}

/// A request in the running batch.
struct Seq {
    req: GenRequest,
    tx: UnboundedSender<Event>,
    cancel: Arc<AtomicBool>,
    submitted: Instant,
    cache: KvCache,
    /// Prompt tokens in the cache (from the prefix cache or prefilled).
    fed: usize,
    cached_prompt_tokens: usize,
    generated: Vec<u32>,
    /// The sampled token the next step feeds (decoding).
    next: Option<u32>,
    sampler: Sampler,
    /// Prompt + generated: the repetition penalty's context.
    context: Vec<u32>,
}

impl Seq {
    fn prefilling(&self) -> bool {
        self.fed < self.req.prompt.len()
    }

    fn send(&self, e: Event) {
        let _ = self.tx.send(e);
    }

    fn finish(&self, reason: FinishReason) {
        self.send(Event::Finished {
            reason,
            prompt_tokens: self.req.prompt.len(),
            completion_tokens: self.generated.len(),
            cached_prompt_tokens: self.cached_prompt_tokens,
        });
    }

    /// Why this sequence must stop before the next step, if it must.
    fn interrupted(&self, timeout: Duration) -> Option<FinishReason> {
        if self.cancel.load(Ordering::Relaxed) || self.tx.is_closed() {
            Some(FinishReason::Cancelled)
        } else if self.submitted.elapsed() >= timeout {
            Some(FinishReason::Timeout)
        } else {
            None
        }
    }

    /// Every token the cache holds, in order.
    fn cached_tokens(&self) -> Vec<u32> {
        let mut t = self.context.clone();
        t.truncate(self.cache.len());
        t
    }
}

/// One sequence's share of a step.
struct Work {
    seq: usize,
    tokens: Vec<u32>,
    logits: Logits,
    /// Prompt chunks (however short, e.g. after a prefix-cache hit) are `Prompt`, sampled
    /// tokens `Decode`: the role alone picks the kernels, so a request's output does not
    /// depend on its batch mates or on the prefix cache (issue 5).
    role: RowRole,
}

struct Scheduler {
    model: Arc<LoadedModel>,
    cfg: EngineConfig,
    shared: Arc<Shared>,
    active: Vec<Seq>,
    prefix: PrefixCache,
}

impl Scheduler {
    fn run(mut self) {
        loop {
            if !self.admit() {
                break;
            }
            if self.active.is_empty() {
                continue;
            }
            let step = catch_unwind(AssertUnwindSafe(|| self.step()));
            if step.is_err() {
                // A bug (ours or a constraint's) must not hang every stream: fail the batch.
                for s in self.active.drain(..) {
                    s.finish(FinishReason::Error("internal error in the engine".into()));
                }
            }
            self.publish_stats();
        }
        self.publish_stats();
    }

    /// Drop interrupted requests, move waiting ones into free slots, and block while there
    /// is nothing to do. Returns false when the engine is to stop.
    fn admit(&mut self) -> bool {
        let timeout = self.cfg.request_timeout;
        let mut i = 0;
        while i < self.active.len() {
            if let Some(reason) = self.active[i].interrupted(timeout) {
                let s = self.active.swap_remove(i);
                s.finish(reason);
                self.retire(s);
            } else {
                i += 1;
            }
        }
        let shared = self.shared.clone();
        let mut q = lock(&shared.queue);
        loop {
            q.waiting.retain(|p| {
                let reason = if p.cancel.load(Ordering::Relaxed) || p.tx.is_closed() {
                    FinishReason::Cancelled
                } else if p.submitted.elapsed() >= timeout {
                    FinishReason::Timeout
                } else {
                    return true;
                };
                p.finish(reason);
                false
            });
            if let Some(d) = q.deadline {
                if Instant::now() >= d || (self.active.is_empty() && q.waiting.is_empty()) {
                    for p in q.waiting.drain(..) {
                        p.finish(FinishReason::Cancelled);
                    }
                    drop(q);
                    for s in std::mem::take(&mut self.active) {
                        s.finish(FinishReason::Cancelled);
                    }
                    return false;
                }
            }
            while self.active.len() < self.cfg.parallel {
                let Some(p) = q.waiting.front() else { break };
                if self.waits_for_shared_prefix(&p.req.prompt) {
                    break;
                }
                let Some(p) = q.waiting.pop_front() else {
                    break;
                };
                self.start_seq(p);
            }
            lock(&shared.stats).queued = q.waiting.len();
            if !self.active.is_empty() {
                return true;
            }
            self.publish_stats();
            // Idle: sleep until a request arrives (waking now and then for queue timeouts).
            q = shared
                .wake
                .wait_timeout(q, Duration::from_millis(200))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// A request whose prompt shares a long prefix with one still prefilling waits for that
    /// prefill, then takes the prefix from the cache instead of computing it again (`n > 1`).
    fn waits_for_shared_prefix(&self, prompt: &[u32]) -> bool {
        const MIN_SHARED: usize = 16;
        self.prefix.enabled()
            && self
                .active
                .iter()
                .any(|s| s.prefilling() && common_prefix(&s.req.prompt, prompt) >= MIN_SHARED)
    }

    fn start_seq(&mut self, p: Pending) {
        let Pending {
            req,
            tx,
            cancel,
            submitted,
        } = p;
        let sampler = match Sampler::new(req.sampling.clone()) {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(Event::Finished {
                    reason: FinishReason::Error(e.to_string()),
                    prompt_tokens: req.prompt.len(),
                    completion_tokens: 0,
                    cached_prompt_tokens: 0,
                });
                return;
            }
        };
        // Reuse cached KV for all but the last prompt token (its logits start the output).
        let (cache, hit) = match self.prefix.lookup(&req.prompt[..req.prompt.len() - 1]) {
            Some((n, cached)) => (cached.clone_prefix(n), n),
            None => (self.model.model.new_cache(self.cfg.ctx), 0),
        };
        {
            let mut st = lock(&self.shared.stats);
            st.requests_total += 1;
            st.prompt_tokens_total += req.prompt.len() as u64;
            if hit > 0 {
                st.prefix_cache_hits += 1;
                st.cached_prompt_tokens_total += hit as u64;
            }
        }
        self.active.push(Seq {
            context: req.prompt.clone(),
            req,
            tx,
            cancel,
            submitted,
            cache,
            fed: hit,
            cached_prompt_tokens: hit,
            generated: Vec::new(),
            next: None,
            sampler,
        });
    }

    /// A sequence leaves the batch: its KV goes to the prefix cache (or is freed).
    fn retire(&mut self, s: Seq) {
        if self.prefix.enabled() && !s.cache.is_empty() {
            let tokens = s.cached_tokens();
            self.prefix.insert(tokens, s.cache);
        }
    }

    /// One forward pass over every active sequence, then sampling.
    fn step(&mut self) {
        let started = Instant::now();
        let mut budget = self.cfg.prefill_chunk;
        let mut work = Vec::with_capacity(self.active.len());
        for (i, s) in self.active.iter().enumerate() {
            if let Some(t) = s.next {
                work.push(Work {
                    seq: i,
                    tokens: vec![t],
                    logits: Logits::Last,
                    role: RowRole::Decode,
                });
            } else if s.prefilling() && budget > 0 {
                let rest = &s.req.prompt[s.fed..];
                let n = rest.len().min(budget);
                budget -= n;
                work.push(Work {
                    seq: i,
                    tokens: rest[..n].to_vec(),
                    logits: if n == rest.len() {
                        Logits::Last
                    } else {
                        Logits::None
                    },
                    role: RowRole::Prompt,
                });
            }
        }
        if work.is_empty() {
            return;
        }
        // Decode rows first, then prompt rows: two contiguous runs, so each linear layer
        // takes two kernel calls however the roles interleave in `active`.
        work.sort_by_key(|w| w.role == RowRole::Prompt);
        let prefilled: usize = work
            .iter()
            .filter(|w| self.active[w.seq].prefilling())
            .map(|w| w.tokens.len())
            .sum();

        let results = {
            let mut caches: Vec<Option<&mut KvCache>> =
                self.active.iter_mut().map(|s| Some(&mut s.cache)).collect();
            let mut batch: Vec<BatchSeq<'_>> = work
                .iter()
                .filter_map(|w| {
                    Some(BatchSeq {
                        tokens: &w.tokens,
                        cache: caches[w.seq].take()?,
                        logits: w.logits,
                        role: w.role,
                    })
                })
                .collect();
            let t = Instant::now();
            let r = self.model.model.forward_batch(&mut batch);
            (r, t.elapsed())
        };
        let (results, forward_time) = results;
        {
            let mut st = lock(&self.shared.stats);
            st.steps_total += 1;
            st.prefill_tokens_total += prefilled as u64;
            st.forward_seconds_total += forward_time.as_secs_f64();
        }
        let results = match results {
            Ok(r) => r,
            Err(e) => {
                // The whole pass failed (the caches are unchanged): fail its sequences.
                let msg = e.to_string();
                let mut done: Vec<usize> = work.iter().map(|w| w.seq).collect();
                done.sort_unstable();
                for i in done.into_iter().rev() {
                    let s = self.active.swap_remove(i);
                    s.finish(FinishReason::Error(msg.clone()));
                    self.retire(s);
                }
                return;
            }
        };

        let mut finished: Vec<(usize, FinishReason)> = Vec::new();
        let mut sampled = 0u64;
        for (w, res) in work.iter().zip(results) {
            let s = &mut self.active[w.seq];
            let was_prefilling = s.prefilling();
            if was_prefilling {
                s.fed += w.tokens.len();
            }
            let logits = match res {
                Ok(l) => l,
                Err(e) => {
                    finished.push((w.seq, FinishReason::Error(e.to_string())));
                    continue;
                }
            };
            if was_prefilling && !s.prefilling() && !self.prefix.covers(&s.req.prompt) {
                self.prefix
                    .insert(s.req.prompt.clone(), s.cache.clone_prefix(s.fed));
            }
            if w.logits == Logits::None {
                continue;
            }
            sampled += 1;
            if let Some(reason) = sample_next(s, logits) {
                finished.push((w.seq, reason));
            }
        }
        finished.sort_unstable_by_key(|f| std::cmp::Reverse(f.0));
        for (i, reason) in finished {
            let s = self.active.swap_remove(i);
            s.finish(reason);
            self.retire(s);
        }
        let elapsed = started.elapsed().as_secs_f64();
        let mut st = lock(&self.shared.stats);
        st.generated_tokens_total += sampled;
        st.step_seconds_total += elapsed;
        if prefilled == 0 {
            st.decode_steps_total += 1;
            st.decode_step_seconds_total += elapsed;
        }
    }

    fn publish_stats(&self) {
        let active_kv: usize = self.active.iter().map(|s| s.cache.bytes()).sum();
        let mut st = lock(&self.shared.stats);
        st.active = self.active.len();
        st.kv_used_bytes = active_kv + self.prefix.bytes();
        st.prefix_cache_tokens = self.prefix.tokens();
    }
}

/// Choose the next token from this step's logits and send it; `Some` when the sequence is
/// done.
fn sample_next(s: &mut Seq, raw: Vec<f32>) -> Option<FinishReason> {
    // Logprobs are of the model's own distribution: log-softmax of the raw logits, before
    // bias, constraint and sampling parameters.
    let report = s.req.logprobs.map(|k| {
        let lse = log_sum_exp(&raw);
        (raw.clone(), lse, top_logprobs(&raw, k, lse))
    });
    let mut logits = raw;
    for &(id, bias) in &s.req.logit_bias {
        if let Some(l) = logits.get_mut(id as usize) {
            *l += bias;
        }
    }
    if let Some(c) = s.req.constraint.as_mut() {
        c.mask(&mut logits);
        if !logits.iter().any(|l| l.is_finite()) {
            return Some(FinishReason::Error(
                "the output constraint allows no token here".into(),
            ));
        }
    }
    let t = s.sampler.sample(&mut logits, &s.context, &s.generated);
    s.generated.push(t);
    s.context.push(t);
    s.next = Some(t);
    if s.req.stop_ids.contains(&t) {
        return Some(FinishReason::Stop);
    }
    if let Some(c) = s.req.constraint.as_mut() {
        if !c.accept(t) {
            return Some(FinishReason::Error(format!(
                "token {t} violates the output constraint"
            )));
        }
    }
    let (logprob, top_logprobs) = match report {
        Some((raw, lse, top)) => (Some(raw[t as usize] - lse), top),
        None => (None, Vec::new()),
    };
    s.send(Event::Token {
        id: t,
        logprob,
        top_logprobs,
    });
    if s.req.constraint.as_ref().is_some_and(|c| c.is_complete()) {
        return Some(FinishReason::Stop);
    }
    if s.generated.len() >= s.req.max_tokens {
        return Some(FinishReason::Length);
    }
    None
}

fn log_sum_exp(x: &[f32]) -> f32 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = x.iter().map(|&v| ((v - max) as f64).exp()).sum();
    max + sum.ln() as f32
}

/// The `k` most likely tokens and their logprobs, best first.
fn top_logprobs(raw: &[f32], k: usize, lse: f32) -> Vec<(u32, f32)> {
    let k = k.min(raw.len());
    if k == 0 {
        return Vec::new();
    }
    let mut idx: Vec<u32> = (0..raw.len() as u32).collect();
    let by_logit = |a: &u32, b: &u32| raw[*b as usize].total_cmp(&raw[*a as usize]);
    idx.select_nth_unstable_by(k - 1, by_logit);
    idx.truncate(k);
    idx.sort_unstable_by(by_logit);
    idx.into_iter()
        .map(|i| (i, raw[i as usize] - lse))
        .collect()
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
