//! Batch invariance by row role (issue 5), on the real 0.5B model's fast path: a row's role
//! (prompt or decode) alone picks its kernels, so results are BITWISE equal
//! - for a prompt prefilled in one call, in chunks (one of a single token), or on top of a
//!   `clone_prefix` copy of another cache (the server's prefix cache), leaving 1 or more rows;
//! - for a decode row alone and with 3 or 7 batch mates, some of them prefilling prompts,
//!   at any position in the batch; and the mates' own prompt logits equal theirs alone.

mod common;
use common::*;
use qwen2_core::{BatchSeq, KvCache, Logits, Precision, Qwen2, RowRole};

fn ids(seed: u32, n: usize, vocab: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (seed * 7919 + i * 104729 + 13) % vocab)
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Prefill `prompt` in the given chunk lengths (prompt role); the last chunk's last logits.
fn prefill_chunks(
    model: &Qwen2,
    cache: &mut KvCache,
    prompt: &[u32],
    chunks: &[usize],
) -> Vec<f32> {
    assert_eq!(chunks.iter().sum::<usize>(), prompt.len());
    let mut at = 0;
    let mut last = Vec::new();
    for (i, &n) in chunks.iter().enumerate() {
        let which = if i + 1 == chunks.len() {
            Logits::Last
        } else {
            Logits::None
        };
        last = model
            .forward_as(&prompt[at..at + n], cache, which, RowRole::Prompt)
            .unwrap();
        at += n;
    }
    last
}

#[test]
fn prompt_logits_do_not_depend_on_chunking_or_prefix_reuse() {
    let lm = qwen2_core::load(&real_model(), Precision::Fast).unwrap();
    let m = &lm.model;
    let prompt = ids(1, 37, m.vocab_size() as u32);
    let mut whole_cache = m.new_cache(64);
    let whole = bits(&prefill_chunks(m, &mut whole_cache, &prompt, &[37]));
    for chunks in [&[13, 1, 20, 3][..], &[36, 1], &[1, 36]] {
        let mut c = m.new_cache(64);
        let got = bits(&prefill_chunks(m, &mut c, &prompt, chunks));
        assert!(
            got == whole,
            "chunks {chunks:?}: last logits differ from one call"
        );
    }
    // The prefix cache: copy the first `k` tokens' KV from a finished prompt, prefill the rest.
    for k in [36, 30, 5] {
        let mut c = whole_cache.clone_prefix(k);
        let got = bits(&prefill_chunks(m, &mut c, &prompt[k..], &[37 - k]));
        assert!(
            got == whole,
            "prefix of {k} + rest: last logits differ from one call"
        );
    }
}

/// One batch member: its context (already prefilled alone), its new tokens and their role.
struct Member {
    context: Vec<u32>,
    new: Vec<u32>,
    role: RowRole,
}

fn primed(model: &Qwen2, context: &[u32]) -> KvCache {
    let mut cache = model.new_cache(64);
    if !context.is_empty() {
        model
            .forward_as(context, &mut cache, Logits::None, RowRole::Prompt)
            .unwrap();
    }
    cache
}

fn run_batch(model: &Qwen2, members: &[Member]) -> Vec<Vec<u32>> {
    let mut caches: Vec<KvCache> = members.iter().map(|s| primed(model, &s.context)).collect();
    let mut batch: Vec<BatchSeq<'_>> = members
        .iter()
        .zip(caches.iter_mut())
        .map(|(s, cache)| BatchSeq {
            tokens: &s.new,
            cache,
            logits: Logits::Last,
            role: s.role,
        })
        .collect();
    let out = model.forward_batch(&mut batch).unwrap();
    out.into_iter().map(|r| bits(&r.unwrap())).collect()
}

#[test]
fn decode_and_prompt_rows_do_not_depend_on_batch_mates() {
    let lm = qwen2_core::load(&real_model(), Precision::Fast).unwrap();
    let m = &lm.model;
    let v = m.vocab_size() as u32;
    let target = Member {
        context: ids(2, 9, v),
        new: ids(3, 1, v),
        role: RowRole::Decode,
    };
    let mates: Vec<Member> = (0..7u32)
        .map(|i| match i % 3 {
            // A decode at another position.
            0 => Member {
                context: ids(10 + i, 3 + i as usize, v),
                new: ids(20 + i, 1, v),
                role: RowRole::Decode,
            },
            // A fresh prompt.
            1 => Member {
                context: vec![],
                new: ids(30 + i, 4 + i as usize, v),
                role: RowRole::Prompt,
            },
            // A one-token prompt remainder on top of a prefix.
            _ => Member {
                context: ids(40 + i, 6, v),
                new: ids(50 + i, 1, v),
                role: RowRole::Prompt,
            },
        })
        .collect();
    let solo = |s: &Member| {
        let mut c = primed(m, &s.context);
        bits(&m.forward_as(&s.new, &mut c, Logits::Last, s.role).unwrap())
    };
    let want = solo(&target);
    assert!(
        run_batch(m, std::slice::from_ref(&target))[0] == want,
        "forward_batch of one decode row differs from forward_as"
    );
    let mates_alone: Vec<Vec<u32>> = mates.iter().map(solo).collect();
    for (n_mates, pos) in [(3, 0), (3, 2), (7, 4), (7, 7)] {
        let mut members: Vec<&Member> = mates[..n_mates].iter().collect();
        members.insert(pos, &target);
        let owned: Vec<Member> = members
            .iter()
            .map(|s| Member {
                context: s.context.clone(),
                new: s.new.clone(),
                role: s.role,
            })
            .collect();
        let got = run_batch(m, &owned);
        assert!(
            got[pos] == want,
            "decode row with {n_mates} mates at position {pos} differs from alone"
        );
        for (i, g) in got.iter().enumerate().filter(|&(i, _)| i != pos) {
            let mate = if i < pos { i } else { i - 1 };
            assert!(
                *g == mates_alone[mate],
                "mate {mate} ({:?}) in a batch of {} differs from alone",
                mates[mate].role,
                n_mates + 1
            );
        }
    }
}

/// `Logits::Tail(n)` gives the last `n` rows of `Logits::All` bitwise (clamped to the
/// tokens), also when they straddle the 512-token chunk boundary of one call.
#[test]
fn tail_logits_are_the_last_rows_of_all() {
    let lm = qwen2_core::load(&real_model(), Precision::Fast).unwrap();
    let m = &lm.model;
    let vocab = m.vocab_size();
    let prompt = ids(4, 37, vocab as u32);
    let all = m
        .forward(&prompt, &mut m.new_cache(64), Logits::All)
        .unwrap();
    for n in [1usize, 4, 37, 50] {
        let got = m
            .forward(&prompt, &mut m.new_cache(64), Logits::Tail(n))
            .unwrap();
        let k = n.min(37);
        assert!(
            bits(&got) == bits(&all[(37 - k) * vocab..]),
            "Tail({n}) differs from the last rows of All"
        );
    }
    // 520 tokens: positions 510..520 span the first chunk's end.
    let long = ids(5, 520, vocab as u32);
    let tail = m
        .forward(&long, &mut m.new_cache(600), Logits::Tail(10))
        .unwrap();
    let mut c = m.new_cache(600);
    m.forward(&long[..510], &mut c, Logits::None).unwrap();
    let want = m.forward(&long[510..], &mut c, Logits::All).unwrap();
    assert!(
        bits(&tail) == bits(&want),
        "Tail(10) across the chunk boundary differs from a separate pass"
    );
}
