//! `forward_batch` runs several sequences in one pass (every linear layer once over all their
//! rows; RoPE, KV writes and attention per sequence). Its logits must equal running each
//! sequence alone with `forward`: a batch that mixes a prefill chunk (on top of earlier
//! context and from scratch) with decodes at different positions.
//! - tiny transformers models, `Precision::Exact` with an f32 cache: max |Δlogit| ≤ 1e-5;
//! - the real 0.5B model on the fast path: bitwise equal, because each row's role (given as
//!   `forward` alone picks it) chooses its kernels, never the batch size (issue 5;
//!   tests/batch_invariance.rs covers chunking, prefix reuse and more batch mates).

mod common;
use common::*;
use qwen2_core::kv_cache::KvDtype;
use qwen2_core::{BatchSeq, KvCache, Logits, Precision, Qwen2, RowRole};

/// One sequence of the test batch: `context` already in the cache, then `new` in the batch.
struct Case {
    context: Vec<u32>,
    new: Vec<u32>,
    which: Logits,
}

fn cases(vocab: u32) -> Vec<Case> {
    let ids = |seed: u32, n: usize| -> Vec<u32> {
        (0..n as u32)
            .map(|i| (seed * 7919 + i * 104729) % vocab)
            .collect()
    };
    vec![
        // A prefill chunk on top of earlier context, every position's logits.
        Case {
            context: ids(1, 5),
            new: ids(2, 7),
            which: Logits::All,
        },
        // Decodes at different positions.
        Case {
            context: ids(3, 11),
            new: ids(4, 1),
            which: Logits::Last,
        },
        Case {
            context: ids(5, 2),
            new: ids(6, 1),
            which: Logits::Last,
        },
        // A fresh prompt whose logits nobody reads, and one that wants its last.
        Case {
            context: vec![],
            new: ids(7, 6),
            which: Logits::None,
        },
        Case {
            context: vec![],
            new: ids(8, 9),
            which: Logits::Last,
        },
    ]
}

fn primed(model: &Qwen2, c: &Case, dtype: KvDtype) -> KvCache {
    let mut cache = model.new_cache_with(64, dtype);
    if !c.context.is_empty() {
        model.forward(&c.context, &mut cache, Logits::None).unwrap();
    }
    cache
}

/// (batched, alone) logits per case, and the caches' lengths agree afterwards.
fn run(model: &Qwen2, dtype: KvDtype) -> Vec<(Vec<f32>, Vec<f32>)> {
    let cases = cases(model.vocab_size() as u32);
    let alone: Vec<Vec<f32>> = cases
        .iter()
        .map(|c| {
            let mut cache = primed(model, c, dtype);
            model.forward(&c.new, &mut cache, c.which).unwrap()
        })
        .collect();
    let mut caches: Vec<KvCache> = cases.iter().map(|c| primed(model, c, dtype)).collect();
    let mut batch: Vec<BatchSeq<'_>> = cases
        .iter()
        .zip(caches.iter_mut())
        .map(|(c, cache)| BatchSeq {
            tokens: &c.new,
            cache,
            logits: c.which,
            // As `forward` alone picks it, so the two runs take the same kernels.
            role: RowRole::by_count(c.new.len()),
        })
        .collect();
    let batched: Vec<Vec<f32>> = model
        .forward_batch(&mut batch)
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for (c, cache) in cases.iter().zip(&caches) {
        assert_eq!(cache.len(), c.context.len() + c.new.len());
    }
    batched.into_iter().zip(alone).collect()
}

#[test]
fn tiny_exact_batch_equals_one_by_one() {
    // sliding: windowed layers; dynamic: per-sequence dynamic-NTK state; untied: lm_head.
    for name in ["tied", "untied", "sliding", "dynamic"] {
        let lm = qwen2_core::load(&fixture(&format!("tiny/{name}")), Precision::Exact).unwrap();
        for (i, (b, a)) in run(&lm.model, KvDtype::F32).iter().enumerate() {
            assert_eq!(b.len(), a.len(), "{name} seq {i}: logits length");
            let d = max_abs_diff(b, a);
            assert!(d <= 1e-5, "{name} seq {i}: max |Δlogit| = {d} > 1e-5");
        }
    }
}

#[test]
fn real_fast_batch_agrees_with_one_by_one() {
    let lm = qwen2_core::load(&real_model(), Precision::Fast).unwrap();
    for (i, (b, a)) in run(&lm.model, KvDtype::F16).iter().enumerate() {
        assert_eq!(b.len(), a.len(), "seq {i}: logits length");
        let d = max_abs_diff(b, a);
        let same = b.iter().zip(a).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(
            same,
            "seq {i}: batched differs from alone (max |Δlogit| = {d})"
        );
    }
}
