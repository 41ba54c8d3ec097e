//! The q8_0 KV cache (issue 3, long-context memory): keys and values stored as ggml Q8_0 blocks
//! (32 values + an f16 scale), read back as f32 by attention.
//! - tiny random models (transformers references, scripts/fixtures/long_context.py): q8_0 KV
//!   within a stated max |Δlogit| of the f32 KV cache and of transformers;
//! - the real 0.5B over the 512-token KL text: mean KL(exact ‖ fast with q8_0 KV) ≤ 0.025 and
//!   top-1 within 1.5 points of llama.cpp's own q8_0 KV cache on the same positions
//!   (bench/kv_q8_llamacpp.py). The aim of KL ≤ 0.005 is out of reach for Q8_0 keys on
//!   this model: llama.cpp's q8_0 cache scores KL 0.0125 against the same reference (0.0140
//!   against its own f16 cache; 0.0142 / 0.0156 over the first 192 tokens);
//!   Qwen2's K outliers (from the K bias) set each block's scale, crushing the other values.
//! - a KV row length that is not a multiple of 32 is a clear error, never a silent fallback;
//! - memory: bytes per token at f32 / f16 / q8_0.

mod common;
use std::sync::OnceLock;

use common::*;
use qwen2_core::{KvCache, KvDtype, LoadedModel, Logits, Precision};

/// Logits of the tiny fixture `name`: uncached (one forward over the input) and cached one token
/// at a time, with a `kv` cache; and transformers' reference.
fn tiny_logits(name: &str, kv: KvDtype) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let dir = fixture(&format!("tiny/{name}"));
    let lm = qwen2_core::load(&dir, Precision::Exact).unwrap();
    let input = ids(&read_json(&dir.join("golden.json"))["input_ids"]);
    let (_, want) = read_npy_f32(&dir.join("logits.npy"));
    let mut cache = lm.model.new_cache_with(input.len(), kv);
    let full = lm.model.forward(&input, &mut cache, Logits::All).unwrap();
    let mut cache = lm.model.new_cache_with(input.len(), kv);
    let mut step = Vec::new();
    for &id in &input {
        step.extend(lm.model.forward(&[id], &mut cache, Logits::Last).unwrap());
    }
    (full, step, want)
}

/// Q8_0 rounds each value to 1/254 of its block's largest magnitude (head_dim is 16 here, so a
/// block spans two heads). Budget on these logits (|logit| ≤ 3.3): 5e-2, five times the f16
/// cache's 1e-2; measured values are printed.
#[test]
fn q8_0_kv_cache_stays_close_on_tiny_models() {
    const BOUND: f32 = 5e-2;
    for name in ["yarn", "sliding", "linear", "tied"] {
        let (f32_full, f32_step, want) = tiny_logits(name, KvDtype::F32);
        let (q8_full, q8_step, _) = tiny_logits(name, KvDtype::Q8_0);
        let d = [
            ("uncached vs f32 KV", max_abs_diff(&q8_full, &f32_full)),
            ("one-by-one vs f32 KV", max_abs_diff(&q8_step, &f32_step)),
            ("uncached vs transformers", max_abs_diff(&q8_full, &want)),
            ("one-by-one vs transformers", max_abs_diff(&q8_step, &want)),
        ];
        eprintln!(
            "{name} q8_0 KV: max |Δlogit| {d:?} (max |logit| {:.2})",
            max_abs(&want)
        );
        for (what, x) in d {
            assert!(
                x.is_finite() && x <= BOUND,
                "{name} q8_0 KV {what}: {x} > {BOUND}"
            );
        }
        // Not a silent fallback: the values did change (Q8_0 is lossy).
        assert!(
            max_abs_diff(&q8_step, &f32_step) > 0.0,
            "{name}: q8_0 KV equals f32 KV"
        );
    }
}

#[test]
fn q8_0_kv_prefix_clone_and_truncate() {
    let dir = fixture("tiny/yarn");
    let lm = qwen2_core::load(&dir, Precision::Exact).unwrap();
    let input = ids(&read_json(&dir.join("golden.json"))["input_ids"]);
    let mut cache = lm.model.new_cache_with(input.len(), KvDtype::Q8_0);
    let whole = lm.model.forward(&input, &mut cache, Logits::All).unwrap();
    let vocab = lm.model.vocab_size();
    let cut = input.len() / 2;
    // A branch from the first `cut` tokens, and the same cache rewound there, both go on to the
    // same logits as the whole pass (rows are whole Q8_0 blocks, so cuts land on row bounds).
    let mut branch = cache.clone_prefix(cut);
    // (One with the room it will grow into allocated up front: the same.)
    let mut roomy = cache.clone_prefix_with_room(cut, input.len() - cut);
    assert_eq!((roomy.len(), branch.len()), (cut, cut));
    cache.truncate(cut);
    for c in [&mut branch, &mut roomy, &mut cache] {
        let rest = lm.model.forward(&input[cut..], c, Logits::All).unwrap();
        assert!(max_abs_diff(&rest, &whole[cut * vocab..]) <= 1e-4);
    }
}

#[test]
fn kv_row_not_a_multiple_of_32_is_a_clear_error() {
    let e = KvDtype::Q8_0.check(48).unwrap_err().to_string();
    assert!(e.contains("multiple of 32") && e.contains("48"), "{e}");
    assert!(KvDtype::Q8_0.check(128).is_ok() && KvDtype::F16.check(48).is_ok());
    // A cache of that shape refuses work before any is done, with the same error.
    let lm = qwen2_core::load(&fixture("tiny/yarn"), Precision::Exact).unwrap();
    let layers = lm.model.cfg.num_hidden_layers;
    let mut cache = KvCache::with_dtype(layers, 48, 16, KvDtype::Q8_0);
    let e = lm
        .model
        .forward(&[1, 2], &mut cache, Logits::Last)
        .unwrap_err()
        .to_string();
    assert!(e.contains("multiple of 32"), "{e}");
    assert!(cache.is_empty());
    // The CLI's flag values parse; others are an error naming the supported ones.
    assert_eq!("q8_0".parse::<KvDtype>().unwrap(), KvDtype::Q8_0);
    assert_eq!("F16".parse::<KvDtype>().unwrap(), KvDtype::F16);
    let e = "q4_0".parse::<KvDtype>().unwrap_err().to_string();
    assert!(e.contains("f16, q8_0, f32"), "{e}");
}

#[test]
fn kv_bytes_per_token() {
    // 0.5B: 24 layers, 2 KV heads × 64 = 128 per token and layer, K and V.
    let per_token = |t| KvCache::bytes_for(24, 128, 1, t);
    assert_eq!(per_token(KvDtype::F32), 24_576);
    assert_eq!(per_token(KvDtype::F16), 12_288);
    assert_eq!(per_token(KvDtype::Q8_0), 6_528); // 4 blocks × 34 bytes × 2 × 24
    let mib = |t| KvCache::bytes_for(24, 128, 32768, t) as f64 / (1 << 20) as f64;
    eprintln!(
        "0.5B KV per token: f32 {} B, f16 {} B, q8_0 {} B; at 32768 tokens: {:.0} / {:.0} / {:.0} MiB",
        per_token(KvDtype::F32),
        per_token(KvDtype::F16),
        per_token(KvDtype::Q8_0),
        mib(KvDtype::F32),
        mib(KvDtype::F16),
        mib(KvDtype::Q8_0)
    );
    // A cache's own accounting follows its type: what it holds is what bytes_for says (plus
    // growth slack of at most a quarter).
    let lm = qwen2_core::load(&fixture("tiny/yarn"), Precision::Exact).unwrap();
    let input = ids(&read_json(&fixture("tiny/yarn/golden.json"))["input_ids"]);
    let (layers, kvd) = (lm.model.cfg.num_hidden_layers, lm.model.cfg.kv_dim());
    let mut cache = lm.model.new_cache_with(4096, KvDtype::Q8_0);
    for chunk in input.chunks(7) {
        lm.model.forward(chunk, &mut cache, Logits::None).unwrap();
    }
    let used = KvCache::bytes_for(layers, kvd, input.len(), KvDtype::Q8_0);
    let slack = used / 4 + KvCache::bytes_for(layers, kvd, 7, KvDtype::Q8_0);
    assert!(
        cache.bytes() >= used && cache.bytes() <= used + slack,
        "{} for {used}",
        cache.bytes()
    );
}

fn exact() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| qwen2_core::load(&real_model(), Precision::Exact).unwrap())
}

fn kl_text() -> Vec<u32> {
    ids(&read_json(&fixture("real/ppl_ids.json"))["ids"])[..512].to_vec()
}

/// The all-f32 reference logits over the KL text.
fn reference() -> &'static [f32] {
    static R: OnceLock<Vec<f32>> = OnceLock::new();
    R.get_or_init(|| {
        let ids = kl_text();
        let mut c = exact().model.new_cache(ids.len());
        exact().model.forward(&ids, &mut c, Logits::All).unwrap()
    })
}

/// The fast path with `--kv-type q8_0`, set the way the CLI sets it.
fn fast_q8() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| {
        let mut lm = qwen2_core::load(&real_model(), Precision::Fast).unwrap();
        lm.model.set_kv_dtype(KvDtype::Q8_0).unwrap();
        lm
    })
}

/// Same text and bar as real_model.rs's fast-path test (prefill over 512 tokens, decode token
/// by token over the first 192), with the q8_0 cache instead of f16. Top-1 agreement over 512
/// tokens at p ~ 0.92 has a standard error of ~0.012, so its margin under llama.cpp's is 0.025
/// (~2 sigma; a broken cache falls far below it): 0.015 failed on a 2-ulp change to SiLU
/// (4 of 512 tokens flipped) that lowered both mean KLs (0.0194 -> 0.0189, 0.0246 -> 0.0220).
#[test]
fn real_model_q8_0_kv_kl_and_top1_against_exact() {
    let ids = kl_text();
    let vocab = exact().model.vocab_size();
    let fast = &fast_q8().model;
    let reference = reference();
    assert_eq!(fast.new_cache(ids.len()).dtype(), KvDtype::Q8_0);
    let (prefill, decode) = prefill_and_decode_logits(fast, &ids, 192);
    // llama.cpp's own q8_0 KV cache on the same tokens against the same reference.
    let bars = read_json(&fixture("real/kv_q8_llamacpp.json"));
    // Both measured (and printed) before either is judged.
    let mut failures = Vec::new();
    for (name, ours, key) in [
        ("prefill", &prefill[..], "q8_0_kv_vs_exact"),
        ("decode", &decode[..], "q8_0_kv_vs_exact_first192"),
    ] {
        let bar = &bars[key];
        let (lc_kl, lc_top1) = (
            bar["kl_mean"].as_f64().unwrap(),
            bar["top1"].as_f64().unwrap(),
        );
        let (kl, top1) = kl_and_top1(&reference[..ours.len()], ours, vocab);
        eprintln!(
            "fast + q8_0 KV {name} vs exact over {} tokens: mean KL {kl:.6}, top-1 {top1:.4} (llama.cpp q8_0 KV: {lc_kl:.6}, {lc_top1:.4})",
            ours.len() / vocab
        );
        if kl > 0.025 {
            failures.push(format!("{name}: mean KL {kl} > 0.025"));
        }
        if top1 < lc_top1 - 0.025 {
            failures.push(format!("{name}: top-1 {top1} < {lc_top1} - 0.025"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("; "));
}

/// The cache's own share of the error: exact weights and activations, only K/V rounded to
/// Q8_0 (or f16, for scale), against the all-f32 reference.
#[test]
fn real_model_kv_rounding_alone() {
    let ids = kl_text();
    let m = &exact().model;
    let vocab = m.vocab_size();
    for (kv, bound) in [(KvDtype::F16, 1e-4), (KvDtype::Q8_0, 0.02)] {
        let mut c = m.new_cache_with(ids.len(), kv);
        let ours = m.forward(&ids, &mut c, Logits::All).unwrap();
        let (kl, top1) = kl_and_top1(reference(), &ours, vocab);
        eprintln!(
            "exact weights, {} KV vs f32 KV over 512 tokens: mean KL {kl:.6}, top-1 {top1:.4}",
            kv.name()
        );
        assert!(kl <= bound, "{kv:?} KV alone: mean KL {kl} > {bound}");
    }
}
