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
use qwen2_core::{BatchSeq, KvCache, Logits, Qwen2, RowRole};

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

/// One request: its context's and its continuation's token ids.
pub type Pair = (Vec<u32>, Vec<u32>);

/// Most rows in one batched pass (activations and scratch grow with it).
const PASS_ROWS: usize = 1024;
/// Most sequences in one batched pass (each holds a copy of its prefix's KV).
const PASS_SEQS: usize = 16;
/// A batch is cut between neighbouring groups whose shared prefix is this many tokens shorter
/// than a neighbour's: a new few-shot prefix starts there.
const SPLIT_DROP: usize = 64;

/// A distinct model input of a group: its tokens (the request's, less the last) and the
/// position its logit rows start at (the context's last token).
struct Leaf {
    input: Vec<u32>,
    first_out: usize,
}

/// One item's requests: their distinct inputs, and each request's input and continuation.
struct Group {
    leaves: Vec<Leaf>,
    reqs: Vec<(usize, Vec<u32>)>,
}

impl Group {
    fn new(pairs: &[Pair]) -> Result<Group> {
        let mut g = Group {
            leaves: Vec::new(),
            reqs: Vec::new(),
        };
        for (ctx, cont) in pairs {
            if ctx.is_empty() || cont.is_empty() {
                return Err(Error::Invalid(
                    "a request needs a context and a continuation of at least one token".into(),
                ));
            }
            // The model input is every token but the last; logits are needed from the
            // position of the context's last token on.
            let mut input: Vec<u32> = ctx.iter().chain(cont).copied().collect();
            input.pop();
            let first_out = ctx.len() - 1;
            let at = match g
                .leaves
                .iter()
                .position(|l| l.first_out == first_out && l.input == input)
            {
                Some(i) => i,
                None => {
                    g.leaves.push(Leaf { input, first_out });
                    g.leaves.len() - 1
                }
            };
            g.reqs.push((at, cont.clone()));
        }
        if g.leaves.is_empty() {
            return Err(Error::Invalid("an item needs at least one request".into()));
        }
        Ok(g)
    }

    /// The tokens all of the group's inputs share, up to the first position any needs logits.
    fn shared(&self) -> usize {
        shared_len(&self.leaves)
    }

    /// The requests' scores from their inputs' logit rows (`rows[i]` for leaf `i`).
    fn scores(&self, rows: &[&[f32]], vocab: usize) -> Result<Vec<ContScore>> {
        // Each row's normalizer once, however many requests read it (MMLU's four answers
        // share one row: its 151,936 exponentials were ~3% of an item, on one thread).
        let norms = rows
            .iter()
            .map(|r| r.chunks(vocab.max(1)).map(RowNorm::of).collect())
            .collect::<Result<Vec<Vec<RowNorm>>>>()?;
        self.reqs
            .iter()
            .map(|(leaf, cont)| {
                let logits = rows.get(*leaf).copied().unwrap_or_default();
                let norms = norms.get(*leaf).map_or(&[][..], |n| &n[..]);
                cont_score(logits, norms, cont, vocab)
            })
            .collect()
    }
}

/// The tokens all of `leaves`' inputs share, up to the first position any needs logits.
fn shared_len<'a>(leaves: impl IntoIterator<Item = &'a Leaf>) -> usize {
    let mut leaves = leaves.into_iter().peekable();
    let Some(l0) = leaves.peek().map(|l| &l.input) else {
        return 0;
    };
    leaves.fold(usize::MAX, |p, l| {
        p.min(l.first_out).min(common_prefix(l0, &l.input))
    })
}

/// The score of `cont` from its logit rows and their normalizers.
fn cont_score(logits: &[f32], norms: &[RowNorm], cont: &[u32], vocab: usize) -> Result<ContScore> {
    if logits.len() != cont.len() * vocab || norms.len() != cont.len() {
        return Err(Error::Invalid(format!(
            "expected {} logit rows, got {}",
            cont.len(),
            logits.len() / vocab.max(1)
        )));
    }
    let mut loglik = 0.0f64;
    let mut is_greedy = true;
    for ((row, &t), n) in logits.chunks_exact(vocab).zip(cont).zip(norms) {
        loglik += n.log_prob(row, t as usize)?;
        is_greedy &= n.argmax == t as usize;
    }
    Ok(ContScore {
        loglik,
        is_greedy,
        n_tokens: cont.len(),
    })
}

/// A logit row's log-softmax normalizer (its max and the log of its shifted exponentials'
/// sum, in f64) and its argmax.
struct RowNorm {
    max: f64,
    ln_sum: f64,
    argmax: usize,
}

impl RowNorm {
    fn of(row: &[f32]) -> Result<RowNorm> {
        let am = argmax(row)? as usize;
        let max = row[am] as f64;
        let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
        Ok(RowNorm {
            max,
            ln_sum: sum.ln(),
            argmax: am,
        })
    }

    /// log-softmax of `row` (the row this was made of) at `target`.
    fn log_prob(&self, row: &[f32], target: usize) -> Result<f64> {
        match row.get(target) {
            Some(&x) => Ok(x as f64 - self.max - self.ln_sum),
            None => Err(Error::Invalid(format!(
                "token {target} is outside the vocabulary ({})",
                row.len()
            ))),
        }
    }
}

/// Tokens run after a copy of `base`, logits as `logits` asks; `keep`: the cache is wanted
/// afterwards (a context its endings branch from).
struct Job<'a> {
    base: &'a KvCache,
    tokens: &'a [u32],
    logits: Logits,
    keep: bool,
}

impl<'a> Job<'a> {
    /// Leaf `l` after its first `from` tokens (which `base` holds), logits for its rows.
    fn leaf(base: &'a KvCache, l: &'a Leaf, from: usize) -> Self {
        Job {
            base,
            tokens: &l.input[from..],
            logits: Logits::Tail(l.input.len() - l.first_out),
            keep: false,
        }
    }
}

#[derive(Default)]
struct Tally {
    computed: usize,
    reused: usize,
}

/// Each job on its own copy of its base, up to [`PASS_SEQS`] jobs and [`PASS_ROWS`] rows per
/// batched pass (a longer job alone, chunked); results in job order.
fn run_jobs(
    model: &Qwen2,
    jobs: &[Job<'_>],
    tally: &mut Tally,
) -> Result<Vec<(Option<KvCache>, Vec<f32>)>> {
    let mut out = Vec::with_capacity(jobs.len());
    let mut i = 0;
    while i < jobs.len() {
        let (mut j, mut rows) = (i, 0);
        while j < jobs.len()
            && j - i < PASS_SEQS
            && (j == i || rows + jobs[j].tokens.len() <= PASS_ROWS)
        {
            rows += jobs[j].tokens.len();
            j += 1;
        }
        let pass = &jobs[i..j];
        let mut caches: Vec<KvCache> = pass
            .iter()
            .map(|jb| {
                jb.base
                    .clone_prefix_with_room(jb.base.len(), jb.tokens.len())
            })
            .collect();
        for (c, jb) in caches.iter().zip(pass) {
            c.check_room(jb.tokens.len())?;
            tally.computed += jb.tokens.len();
            tally.reused += c.len();
        }
        let logits: Vec<Result<Vec<f32>>> = if let [jb] = pass {
            // Alone (and maybe long): `forward_as` chunks it.
            vec![model.forward_as(jb.tokens, &mut caches[0], jb.logits, RowRole::Prompt)]
        } else {
            let mut seqs: Vec<BatchSeq<'_>> = caches
                .iter_mut()
                .zip(pass)
                .map(|(cache, jb)| BatchSeq {
                    tokens: jb.tokens,
                    cache,
                    logits: jb.logits,
                    role: RowRole::Prompt,
                })
                .collect();
            model.forward_batch(&mut seqs)?
        }
        .into_iter()
        .map(|r| r.map_err(Error::from))
        .collect();
        for ((c, jb), r) in caches.into_iter().zip(pass).zip(logits) {
            out.push((jb.keep.then_some(c), r?));
        }
        i = j;
    }
    Ok(out)
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

    /// Run `tokens` after the cache as rows of `role` (scoring passes are prompt rows, however
    /// few: the kernels, and so the numbers, never depend on how requests were batched).
    fn feed(&mut self, tokens: &[u32], which: Logits, role: RowRole) -> Result<Vec<f32>> {
        self.last = None;
        let out = self
            .model
            .forward_as(tokens, &mut self.cache, which, role)?;
        self.cached.extend_from_slice(tokens);
        self.computed_tokens += tokens.len();
        Ok(out)
    }

    /// log P(continuation | context) for token ids.
    pub fn score_tokens(&mut self, ctx: &[u32], cont: &[u32]) -> Result<ContScore> {
        let mut s = self.score_batch(&[vec![(ctx.to_vec(), cont.to_vec())]])?;
        Ok(s.remove(0).remove(0))
    }

    /// Score groups of requests (a group: one item's choices) in as few passes as their
    /// shared prefixes allow, each score bitwise what [`Scorer::score_tokens`] gives alone.
    ///
    /// A run of neighbouring groups computes the prefix all of its inputs share once (it
    /// stays in the cache for the next run), then every group's rest on a copy of that
    /// prefix, all of them in batched passes: the weights are unpacked and read once per
    /// pass for all items instead of once per item (MMLU: ~85 new tokens per question after
    /// its subject's 5-shot prefix). A group with several inputs (HellaSwag's four endings)
    /// computes its own shared context once, then the endings from copies of it. The batch
    /// is cut where the shared prefix drops sharply (a new subject's few-shot examples), so
    /// a new prefix is computed once and not once per item.
    pub fn score_batch(&mut self, groups: &[Vec<Pair>]) -> Result<Vec<Vec<ContScore>>> {
        let groups = groups
            .iter()
            .map(|g| Group::new(g))
            .collect::<Result<Vec<_>>>()?;
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(groups.len());
        let mut start = 0;
        for end in self.run_ends(&groups) {
            out.extend(self.score_run(&groups[start..end])?);
            start = end;
        }
        Ok(out)
    }

    /// Where the runs of `groups` end: after a group whose shared prefix with the next is
    /// [`SPLIT_DROP`] tokens shorter than a neighbour's (the cache counts as the first
    /// group's left neighbour).
    fn run_ends(&self, groups: &[Group]) -> Vec<usize> {
        fn rep(g: &Group) -> &[u32] {
            &g.leaves[0].input
        }
        let next: Vec<usize> = groups
            .windows(2)
            .map(|w| common_prefix(rep(&w[0]), rep(&w[1])))
            .collect();
        let before = groups
            .first()
            .map_or(0, |g| common_prefix(&self.cached, rep(g)));
        let mut ends = Vec::new();
        for (i, &l) in next.iter().enumerate() {
            let left = if i == 0 { before } else { next[i - 1] };
            let right = next.get(i + 1).copied().unwrap_or(0);
            if l + SPLIT_DROP < left.max(right) {
                ends.push(i + 1);
            }
        }
        ends.push(groups.len());
        ends
    }

    fn score_run(&mut self, groups: &[Group]) -> Result<Vec<Vec<ContScore>>> {
        let vocab = self.model.vocab_size();
        if let [g] = groups {
            if let [leaf] = &g.leaves[..] {
                let rows = self.run_alone(leaf)?;
                return Ok(vec![g.scores(&[&rows], vocab)?]);
            }
        }
        // The prefix every input of the run shares, up to the first position any needs
        // logits: computed once, into the cache the next run starts from.
        let l0 = &groups[0].leaves[0].input;
        let p = shared_len(groups.iter().flat_map(|g| &g.leaves));
        let keep = self.reuse(l0, p);
        if p > keep {
            self.cache.check_room(p - keep)?;
            self.feed(&l0[keep..p], Logits::None, RowRole::Prompt)?;
        }
        // Each group's one input, or the context its inputs share, on a copy of the prefix.
        let mut jobs = Vec::new();
        let mut job_of = vec![None; groups.len()];
        for (gi, g) in groups.iter().enumerate() {
            let job = match &g.leaves[..] {
                [l] => Job::leaf(&self.cache, l, p),
                ls => {
                    let q = g.shared();
                    if q == p {
                        continue;
                    }
                    Job {
                        base: &self.cache,
                        tokens: &ls[0].input[p..q],
                        logits: Logits::None,
                        keep: true,
                    }
                }
            };
            job_of[gi] = Some(jobs.len());
            jobs.push(job);
        }
        let mut tally = Tally::default();
        let ctxs = run_jobs(self.model, &jobs, &mut tally)?;
        // The inputs of groups with several, each on a copy of its group's context.
        let mut jobs = Vec::new();
        for (gi, g) in groups.iter().enumerate() {
            if g.leaves.len() > 1 {
                let (base, q) = match job_of[gi] {
                    Some(j) => (ctxs[j].0.as_ref().unwrap_or(&self.cache), g.shared()),
                    None => (&self.cache, p),
                };
                jobs.extend(g.leaves.iter().map(|l| Job::leaf(base, l, q)));
            }
        }
        let ends = run_jobs(self.model, &jobs, &mut tally)?;
        self.computed_tokens += tally.computed;
        self.reused_tokens += tally.reused;
        let mut ends = ends.iter();
        groups
            .iter()
            .enumerate()
            .map(|(gi, g)| {
                let rows: Vec<&[f32]> = match (&g.leaves[..], job_of[gi]) {
                    ([_], Some(j)) => vec![&ctxs[j].1],
                    (ls, _) => ls
                        .iter()
                        .map(|_| ends.next().map(|e| &e.1[..]).unwrap_or_default())
                        .collect(),
                };
                g.scores(&rows, vocab)
            })
            .collect()
    }

    /// One input on the cache itself, as a single request always ran: the cache keeps it,
    /// and an identical next input (MMLU's four answers) takes its logit rows.
    fn run_alone(&mut self, l: &Leaf) -> Result<Vec<f32>> {
        if let Some((inp, fo, rows)) = self.last.take() {
            if inp == l.input && fo == l.first_out {
                self.reused_tokens += inp.len();
                self.last = Some((inp, fo, rows.clone()));
                return Ok(rows);
            }
        }
        let keep = self.reuse(&l.input, l.first_out);
        self.cache.check_room(l.input.len() - keep)?;
        // The rest of the context and the continuation in one pass, logits for the latter.
        let rows = self.feed(
            &l.input[keep..],
            Logits::Tail(l.input.len() - l.first_out),
            RowRole::Prompt,
        )?;
        self.last = Some((l.input.clone(), l.first_out, rows.clone()));
        Ok(rows)
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
        let req = GenRequest {
            prompt,
            max_new,
            stop,
        };
        Ok(self.greedy_batch(&[req], eos)?.remove(0))
    }

    /// [`Scorer::greedy`] for several prompts at once, each text bitwise what it gives alone.
    ///
    /// The prefix all prompts share is computed once (it stays in the cache for the next
    /// call: GSM8K's fixed exemplars). Then up to [`GEN_SEQS`] sequences run on copies of it,
    /// every step one batched pass for all of them: a newcomer's prompt rest as prompt rows,
    /// the others' last tokens as decode rows; one that finishes leaves, and the next prompt
    /// takes its place at once. Decode rows are computed by the same per-row arithmetic alone
    /// or batched, prompt rows likewise, so batching changes the speed, never a token: decode
    /// (memory bound alone) reads each weight once per step for all of them.
    pub fn greedy_batch(&mut self, reqs: &[GenRequest<'_>], eos: &[u32]) -> Result<Vec<String>> {
        let prompts = reqs
            .iter()
            .map(|r| {
                let mut p = self.encode(r.prompt)?;
                if p.is_empty() {
                    p.push(self.empty_ctx_token);
                }
                Ok(p)
            })
            .collect::<Result<Vec<_>>>()?;
        let Some(first) = prompts.first() else {
            return Ok(Vec::new());
        };
        // The shared prefix, short of every prompt's last token (whose row gives the first
        // logits).
        let p = prompts.iter().fold(usize::MAX, |m, t| {
            m.min(t.len() - 1).min(common_prefix(first, t))
        });
        let keep = self.reuse(first, p);
        if p > keep {
            self.cache.check_room(p - keep)?;
            self.feed(&first[keep..p], Logits::None, RowRole::Prompt)?;
        }
        let mut texts: Vec<Option<String>> = vec![None; reqs.len()];
        let mut active: Vec<GenSeq> = Vec::new();
        let mut next = 0;
        loop {
            while active.len() < GEN_SEQS && next < reqs.len() {
                let rest = prompts[next][p..].to_vec();
                if reqs[next].max_new == 0 {
                    texts[next] = Some(String::new());
                    next += 1;
                    continue;
                }
                let room = rest.len() + reqs[next].max_new;
                let cache = self.cache.clone_prefix_with_room(p, room);
                cache.check_room(rest.len())?;
                self.reused_tokens += p;
                active.push(GenSeq {
                    req: next,
                    cache,
                    feed: rest,
                    role: RowRole::Prompt,
                    out: Vec::new(),
                });
                next += 1;
            }
            if active.is_empty() {
                break;
            }
            // This pass: the sequences in order while their rows fit (the first always; a
            // longer prompt rest runs alone, chunked).
            let mut n = 0;
            let mut rows = 0;
            while n < active.len() && (n == 0 || rows + active[n].feed.len() <= PASS_ROWS) {
                rows += active[n].feed.len();
                n += 1;
            }
            let logits: Vec<Vec<f32>> = if n == 1 {
                let s = &mut active[0];
                vec![self
                    .model
                    .forward_as(&s.feed, &mut s.cache, Logits::Last, s.role)?]
            } else {
                let mut seqs: Vec<BatchSeq<'_>> = active[..n]
                    .iter_mut()
                    .map(|s| BatchSeq {
                        tokens: &s.feed,
                        cache: &mut s.cache,
                        logits: Logits::Last,
                        role: s.role,
                    })
                    .collect();
                self.model
                    .forward_batch(&mut seqs)?
                    .into_iter()
                    .collect::<std::result::Result<_, _>>()?
            };
            self.computed_tokens += rows;
            let mut done = Vec::new();
            for (i, row) in logits.iter().enumerate() {
                let s = &mut active[i];
                let r = &reqs[s.req];
                let tok = argmax(row)?;
                if eos.contains(&tok) {
                    done.push((i, self.detok(&s.out)?));
                    continue;
                }
                s.out.push(tok);
                let mut text = self.detok(&s.out)?;
                if let Some(cut) = r.stop.iter().filter_map(|st| text.find(st)).min() {
                    text.truncate(cut);
                    done.push((i, text));
                } else if s.out.len() == r.max_new || s.cache.len() + 1 > s.cache.ctx() {
                    done.push((i, text));
                } else {
                    s.feed = vec![tok];
                    s.role = RowRole::Decode;
                }
            }
            for (i, text) in done.into_iter().rev() {
                texts[active.remove(i).req] = Some(text);
            }
        }
        Ok(texts.into_iter().map(Option::unwrap_or_default).collect())
    }

    fn detok(&self, ids: &[u32]) -> Result<String> {
        self.tok
            .decode(ids, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }
}

/// One request of [`Scorer::greedy_batch`]: a prompt, its token limit and stop strings.
pub struct GenRequest<'a> {
    pub prompt: &'a str,
    pub max_new: usize,
    pub stop: &'a [&'a str],
}

/// Most sequences generating at once in [`Scorer::greedy_batch`] (each on its own KV copy):
/// enough that decode is no longer bound by reading the weights.
const GEN_SEQS: usize = 8;

/// A sequence of [`Scorer::greedy_batch`]: its request, cache, next input and output so far.
struct GenSeq {
    req: usize,
    cache: KvCache,
    feed: Vec<u32>,
    role: RowRole,
    out: Vec<u32>,
}

/// (log-softmax of `row` at `target`, the argmax of `row`), in f64.
pub fn log_prob(row: &[f32], target: usize) -> Result<(f64, usize)> {
    let n = RowNorm::of(row)?;
    Ok((n.log_prob(row, target)?, n.argmax))
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
