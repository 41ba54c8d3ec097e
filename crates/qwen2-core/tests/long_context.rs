//! Long context (issue 3): YaRN / linear / dynamic-NTK rope scaling and sliding-window attention
//! against tiny random checkpoints made by transformers (scripts/fixtures/long_context.py), and
//! the f16 KV cache.

mod common;
use common::*;
use qwen2_core::config::RopeScaling;
use qwen2_core::gguf::GgufFile;
use qwen2_core::ops::Rope;
use qwen2_core::{Config, KvCache, KvDtype, Logits, Precision};

const TOL: f32 = 1e-4;

struct Measured {
    full: f32,
    stepwise: f32,
    split: f32,
}

/// Uncached logits, one-token-at-a-time cached logits, a prefill split in two, and greedy
/// continuation, all with the given KV dtype. Returns the max |Δlogit| of each.
fn run(name: &str, precision: Precision, kv: KvDtype) -> Measured {
    let dir = fixture(&format!("tiny/{name}"));
    let lm = qwen2_core::load(&dir, precision).unwrap_or_else(|e| panic!("{name}: {e}"));
    let model = &lm.model;
    let golden = read_json(&dir.join("golden.json"));
    let input = ids(&golden["input_ids"]);
    let (shape, want) = read_npy_f32(&dir.join("logits.npy"));
    let vocab = model.vocab_size();
    assert_eq!(shape, vec![input.len(), vocab]);
    let ctx = input.len() + 32;

    let mut cache = model.new_cache_with(ctx, kv);
    let got = model.forward(&input, &mut cache, Logits::All).unwrap();
    let full = max_abs_diff(&got, &want);

    // One token at a time. transformers' own cached decode equals its uncached logits for every
    // rope type but dynamic NTK, whose stepwise reference is stored separately.
    let step_path = dir.join("stepwise_logits.npy");
    let step_want = if step_path.exists() {
        read_npy_f32(&step_path).1
    } else {
        want.clone()
    };
    let mut cache = model.new_cache_with(ctx, kv);
    let mut stepwise = 0f32;
    for (t, &id) in input.iter().enumerate() {
        let step = model.forward(&[id], &mut cache, Logits::Last).unwrap();
        stepwise = stepwise.max(max_abs_diff(&step, &step_want[t * vocab..(t + 1) * vocab]));
    }

    // A prefill in two calls (the second starts past the window / original context). Dynamic
    // NTK changes frequencies between calls, so it has no single reference for this.
    let mut split = 0f32;
    if !step_path.exists() {
        let cut = input.len() / 2 + 3;
        let mut cache = model.new_cache_with(ctx, kv);
        let a = model
            .forward(&input[..cut], &mut cache, Logits::All)
            .unwrap();
        let b = model
            .forward(&input[cut..], &mut cache, Logits::All)
            .unwrap();
        split = max_abs_diff(&[a, b].concat(), &want);
    }

    if kv == KvDtype::F32 {
        let want_greedy = ids(&golden["greedy"]);
        let got_greedy = greedy(model, &input, want_greedy.len(), &[]);
        assert_eq!(
            got_greedy, want_greedy,
            "{name}: greedy continuation differs"
        );
    }
    eprintln!(
        "{name} {precision:?} KV {kv:?}: max |Δlogit| uncached {full:.2e}, cached one-by-one {stepwise:.2e}, split prefill {split:.2e}"
    );
    Measured {
        full,
        stepwise,
        split,
    }
}

fn check(name: &str) {
    let m = run(name, Precision::Exact, KvDtype::F32);
    assert!(
        m.full <= TOL,
        "{name}: uncached max |Δ| = {} > {TOL}",
        m.full
    );
    assert!(
        m.stepwise <= TOL,
        "{name}: cached one-by-one max |Δ| = {} > {TOL}",
        m.stepwise
    );
    assert!(
        m.split <= TOL,
        "{name}: split prefill max |Δ| = {}",
        m.split
    );
}

#[test]
fn yarn_factor_4_beyond_the_original_context() {
    let cfg =
        Config::from_json_str(&std::fs::read_to_string(fixture("tiny/yarn/config.json")).unwrap())
            .unwrap();
    assert!(matches!(
        cfg.rope_scaling,
        Some(RopeScaling::Yarn { factor, original_max_position_embeddings: 32, .. }) if factor == 4.0
    ));
    let golden = read_json(&fixture("tiny/yarn/golden.json"));
    assert!(ids(&golden["input_ids"]).len() > 32);
    check("yarn");
}

#[test]
fn yarn_transformers_4_rope_scaling_form() {
    check("yarn_v4");
}

#[test]
fn linear_rope_scaling() {
    check("linear");
}

#[test]
fn dynamic_ntk_matches_transformers_uncached_and_cached() {
    check("dynamic");
}

#[test]
fn sliding_window_layers() {
    let cfg = Config::from_json_str(
        &std::fs::read_to_string(fixture("tiny/sliding/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        cfg.sliding_window,
        vec![None, None, Some(8), Some(8), Some(8)]
    );
    check("sliding");
}

#[test]
fn sliding_window_transformers_4_form() {
    let cfg = Config::from_json_str(
        &std::fs::read_to_string(fixture("tiny/sliding_v4/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        cfg.sliding_window,
        vec![None, None, Some(8), Some(8), Some(8)]
    );
    check("sliding_v4");
}

/// The f16 cache: same code path, keys/values rounded to f16. Error budget 1e-2 on these
/// logits (|logit| ≤ 3.3); measured values are printed.
#[test]
fn f16_kv_cache_stays_close() {
    for name in ["yarn", "sliding", "linear"] {
        let m = run(name, Precision::Exact, KvDtype::F16);
        for (what, d) in [
            ("uncached", m.full),
            ("stepwise", m.stepwise),
            ("split", m.split),
        ] {
            assert!(d <= 1e-2, "{name} f16 KV {what}: max |Δ| = {d}");
        }
    }
}

/// inv_freq and attention scaling as transformers' Qwen2RotaryEmbedding computes them, for
/// YaRN variants (truncate, mscale, factor null, 4.x form, top-level original length, 128K
/// Qwen2.5 settings), linear and dynamic at init.
#[test]
fn rope_frequencies_match_transformers() {
    let cases = read_json(&fixture("tiny/rope_cases.json"));
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let cfg = Config::from_json_str(&case["config"].to_string())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let rope = Rope::new(&cfg);
        let want: Vec<f32> = case["inv_freq"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(rope.inv_freq().len(), want.len(), "{name}");
        for (i, (&g, &w)) in rope.inv_freq().iter().zip(&want).enumerate() {
            let rel = ((g - w) / w).abs();
            assert!(rel <= 1e-6, "{name}: inv_freq[{i}] = {g}, transformers {w}");
        }
        let want_s = case["attention_scaling"].as_f64().unwrap() as f32;
        assert!(
            (rope.attention_scaling() - want_s).abs() <= 1e-6,
            "{name}: attention scaling {} vs transformers {want_s}",
            rope.attention_scaling()
        );
    }
}

/// A metadata-only GGUF with llama.cpp's rope scaling keys.
fn gguf_with(kvs: &[(&str, GgufVal)]) -> GgufFile {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&(kvs.len() as u64 + 1).to_le_bytes());
    let s = |b: &mut Vec<u8>, x: &str| {
        b.extend_from_slice(&(x.len() as u64).to_le_bytes());
        b.extend_from_slice(x.as_bytes());
    };
    for (k, v) in kvs {
        s(&mut b, k);
        match v {
            GgufVal::U32(x) => {
                b.extend_from_slice(&4u32.to_le_bytes());
                b.extend_from_slice(&x.to_le_bytes());
            }
            GgufVal::F32(x) => {
                b.extend_from_slice(&6u32.to_le_bytes());
                b.extend_from_slice(&x.to_le_bytes());
            }
            GgufVal::Str(x) => {
                b.extend_from_slice(&8u32.to_le_bytes());
                s(&mut b, x);
            }
        }
    }
    s(&mut b, "tokenizer.ggml.tokens");
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&512u64.to_le_bytes());
    for i in 0..512 {
        s(&mut b, &format!("t{i}"));
    }
    while b.len() % 32 != 0 {
        b.push(0);
    }
    GgufFile::from_bytes("<test>", b).unwrap()
}

enum GgufVal {
    U32(u32),
    F32(f32),
    Str(&'static str),
}

fn tiny_gguf_meta(scaling: &[(&'static str, GgufVal)]) -> Vec<(&'static str, GgufVal)> {
    use GgufVal::*;
    let mut v = vec![
        ("general.architecture", Str("qwen2")),
        ("qwen2.embedding_length", U32(64)),
        ("qwen2.feed_forward_length", U32(128)),
        ("qwen2.block_count", U32(5)),
        ("qwen2.attention.head_count", U32(4)),
        ("qwen2.attention.head_count_kv", U32(2)),
        ("qwen2.context_length", U32(128)),
        ("qwen2.rope.freq_base", F32(10000.0)),
        ("qwen2.attention.layer_norm_rms_epsilon", F32(1e-6)),
    ];
    for (k, x) in scaling {
        v.push((
            k,
            match x {
                U32(a) => U32(*a),
                F32(a) => F32(*a),
                Str(a) => Str(a),
            },
        ));
    }
    v
}

#[test]
fn yarn_from_gguf_metadata_equals_config_json() {
    use GgufVal::*;
    let g = gguf_with(&tiny_gguf_meta(&[
        ("qwen2.rope.scaling.type", Str("yarn")),
        ("qwen2.rope.scaling.factor", F32(4.0)),
        ("qwen2.rope.scaling.original_context_length", U32(32)),
    ]));
    let from_gguf = Config::from_gguf(&g).unwrap();
    let from_json =
        Config::from_json_str(&std::fs::read_to_string(fixture("tiny/yarn/config.json")).unwrap())
            .unwrap();
    assert_eq!(from_gguf.rope_scaling, from_json.rope_scaling);
    let (a, b) = (Rope::new(&from_gguf), Rope::new(&from_json));
    assert_eq!(a.inv_freq(), b.inv_freq());
    assert_eq!(a.attention_scaling(), b.attention_scaling());

    let g = gguf_with(&tiny_gguf_meta(&[
        ("qwen2.rope.scaling.type", Str("linear")),
        ("qwen2.rope.scaling.factor", F32(2.0)),
    ]));
    assert_eq!(
        Config::from_gguf(&g).unwrap().rope_scaling,
        Some(RopeScaling::Linear { factor: 2.0 })
    );

    let g = gguf_with(&tiny_gguf_meta(&[
        ("qwen2.rope.scaling.type", Str("yarn")),
        ("qwen2.rope.scaling.factor", F32(4.0)),
    ]));
    let e = Config::from_gguf(&g).unwrap_err().to_string();
    assert!(e.contains("original_context_length"), "{e}");
    let g = gguf_with(&tiny_gguf_meta(&[(
        "qwen2.rope.scaling.type",
        Str("longrope"),
    )]));
    let e = Config::from_gguf(&g).unwrap_err().to_string();
    assert!(e.contains("longrope") && e.contains("supported"), "{e}");
}

fn tiny_config_with(extra: &str) -> String {
    let base = std::fs::read_to_string(fixture("tiny/tied/config.json")).unwrap();
    let mut j: serde_json::Value = serde_json::from_str(&base).unwrap();
    let extra: serde_json::Value = serde_json::from_str(extra).unwrap();
    for (k, v) in extra.as_object().unwrap() {
        j[k] = v.clone();
    }
    j.to_string()
}

#[test]
fn bad_long_context_configs_are_clear_errors() {
    let cases = [
        (
            r#"{"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 10000.0}}"#,
            "`llama3` is not supported; supported: default, linear, dynamic, yarn",
        ),
        (
            r#"{"rope_scaling": {"type": "longrope", "factor": 2.0}}"#,
            "`longrope` is not supported",
        ),
        (r#"{"rope_scaling": {"type": "linear"}}"#, "needs `factor`"),
        (
            r#"{"rope_scaling": {"type": "dynamic", "factor": -1.0}}"#,
            "must be a positive number",
        ),
        (
            r#"{"use_sliding_window": false, "sliding_window": 8,
                "layer_types": ["full_attention", "sliding_attention", "full_attention", "full_attention", "full_attention"]}"#,
            "use_sliding_window",
        ),
        (
            r#"{"layer_types": ["full_attention", "windowed"]}"#,
            "layer_types",
        ),
    ];
    for (extra, want) in cases {
        let e = Config::from_json_str(&tiny_config_with(extra))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{extra}: `{e}` lacks `{want}`");
    }
    // 4.x: use_sliding_window false → no window at all, whatever sliding_window says.
    let c = Config::from_json_str(&tiny_config_with(
        r#"{"layer_types": null, "use_sliding_window": false, "sliding_window": 4, "max_window_layers": 0}"#,
    ))
    .unwrap();
    assert!(c.sliding_window.iter().all(Option::is_none));
}

#[test]
fn kv_cache_memory() {
    // The 0.5B model: 24 layers, 2 KV heads × 64 = 128 per token and layer.
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    let f16 = KvCache::bytes_for(24, 128, 32768, KvDtype::F16);
    let f32b = KvCache::bytes_for(24, 128, 32768, KvDtype::F32);
    assert_eq!(f16, 384 << 20);
    assert_eq!(f32b, 2 * f16);
    eprintln!(
        "0.5B KV cache at 32768 tokens: f16 {:.0} MiB, f32 {:.0} MiB",
        mib(f16),
        mib(f32b)
    );

    // Sized by use: a cache for 4096 tokens holding 96 holds about 96 tokens' worth.
    let lm = qwen2_core::load(&fixture("tiny/yarn"), Precision::Exact).unwrap();
    let input = ids(&read_json(&fixture("tiny/yarn/golden.json"))["input_ids"]);
    for kv in [KvDtype::F32, KvDtype::F16] {
        let mut cache = lm.model.new_cache_with(4096, kv);
        assert_eq!(cache.bytes(), 0);
        for chunk in input.chunks(7) {
            lm.model.forward(chunk, &mut cache, Logits::None).unwrap();
        }
        let used = KvCache::bytes_for(5, 32, input.len(), kv);
        assert!(
            cache.bytes() >= used && cache.bytes() <= used + used / 4 + 5 * 2 * 7 * 32 * 4,
            "{kv:?}: {} bytes for {used} used",
            cache.bytes()
        );
    }
    // Exact uses an f32 cache; the fast path over f32 weights too (see default_kv_dtype).
    assert_eq!(lm.model.new_cache(8).dtype(), KvDtype::F32);
}
