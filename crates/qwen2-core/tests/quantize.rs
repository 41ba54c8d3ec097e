//! `quantize`: per-tensor type choices equal llama.cpp's `llama_model_quantize` for the same
//! model (fixtures/quant/types.json, made by scripts/fixtures/quant_types.py), the output loads
//! in our engine, and its logits stay close to the f32 model's (KL divergence per file type).

mod common;
use common::*;

use std::collections::BTreeMap;
use std::path::PathBuf;

use qwen2_core::gguf::{GgufFile, Value};
use qwen2_core::gguf_write::GgufWriter;
use qwen2_core::kv_cache::KvDtype;
use qwen2_core::quantize::{plan, quantize, FileType};
use qwen2_core::qwen2_kernels::GgmlType;
use qwen2_core::{Logits, Precision};

fn tmp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qwen2-quantize-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn reference() -> serde_json::Value {
    read_json(&fixture("quant/types.json"))
}

fn expected_types(case: &str, ftype: FileType) -> BTreeMap<String, String> {
    llama_cpp_types("quant/types.json", case, ftype)
}

/// Largest mean KL accepted per file type on the tiny random models (12 positions, vocab 512;
/// their weights are wide N(0, 0.1) draws, harsher than trained weights). Measured values are
/// printed (`--nocapture`); each bound is about 3x the largest of tied/untied.
fn kl_bound(f: FileType) -> f64 {
    match f {
        FileType::F32 => 1e-9,
        FileType::F16 | FileType::BF16 => 2e-5, // measured 6e-6 (bf16)
        FileType::Q8_0 | FileType::Q6_K => 2e-4, // 6e-5 (rows of 64: Q6_K falls back to Q8_0)
        FileType::Q5_0 | FileType::Q5_1 | FileType::Q5_K_S | FileType::Q5_K_M => 1.5e-2, // 5e-3
        FileType::Q4_0 | FileType::Q4_1 | FileType::Q4_K_S | FileType::Q4_K_M => 6e-2, // 2e-2
    }
}

#[test]
fn tiny_models_match_llama_cpp_types_and_stay_close() {
    let dir = tmp_dir("tiny");
    for (case, sub) in [("tiny_untied", "untied"), ("tiny_tied", "tied")] {
        let src = fixture(&format!("tiny/{sub}"));
        let golden = read_json(&src.join("golden.json"));
        let input = ids(&golden["input_ids"]);
        let (_, want) = read_npy_f32(&src.join("logits.npy"));
        for ftype in FileType::ALL {
            let out = dir.join(format!("{case}-{ftype}.gguf"));
            let report = quantize(&src, &out, ftype, |_| {}).unwrap();
            assert!(report.bytes_out > 0);
            assert_eq!(
                file_types(&out),
                expected_types(case, ftype),
                "{case} {ftype}: tensor types differ from llama.cpp's"
            );
            let g = GgufFile::open(&out).unwrap();
            assert_eq!(g.get("general.file_type"), Some(&Value::U32(ftype.id())));

            for precision in [Precision::Exact, Precision::Fast] {
                let lm = qwen2_core::load(&out, precision).unwrap();
                let mut cache = lm.model.new_cache_with(64, KvDtype::F32);
                let got = lm.model.forward(&input, &mut cache, Logits::All).unwrap();
                let vocab = lm.model.vocab_size();
                let (kl, top1) = kl_and_top1(&want, &got, vocab);
                eprintln!("{case} {ftype} {precision:?}: mean KL {kl:.2e}, top-1 {top1:.3}");
                // The fast path adds 8-bit activation rounding on top of the weights' error.
                let bound = kl_bound(ftype)
                    + match precision {
                        Precision::Exact => 0.0,
                        Precision::Fast => 1e-3,
                    };
                assert!(
                    kl <= bound,
                    "{case} {ftype} {precision:?}: KL {kl} > {bound}"
                );
            }
            std::fs::remove_file(&out).unwrap();
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Shapes of a synthetic qwen2 model in GGUF names (HF row-major order).
fn synthetic_tensors(case: &serde_json::Value) -> (Vec<(String, Vec<usize>)>, usize) {
    let s = &case["shape"];
    let g = |k: &str| s[k].as_u64().unwrap() as usize;
    let (h, f, layers, heads, kv, vocab) = (
        g("hidden"),
        g("ffn"),
        g("layers"),
        g("heads"),
        g("kv_heads"),
        g("vocab"),
    );
    let mut t = vec![
        ("token_embd.weight".to_string(), vec![vocab, h]),
        ("output_norm.weight".to_string(), vec![h]),
    ];
    if !s["tied"].as_bool().unwrap() {
        t.push(("output.weight".into(), vec![vocab, h]));
    }
    for i in 0..layers {
        let p = |n: &str| format!("blk.{i}.{n}");
        t.extend(gguf_attn_tensors(i, h, heads, kv));
        t.extend([
            (p("ffn_gate.weight"), vec![f, h]),
            (p("ffn_up.weight"), vec![f, h]),
            (p("ffn_down.weight"), vec![h, f]),
        ]);
    }
    (t, layers)
}

#[test]
fn wide_models_plan_like_llama_cpp() {
    // Rows of 256 (real k-quants) and an ffn of 384 (not a multiple of 256, like Qwen2-72B).
    let r = reference();
    for case in ["wide", "odd_ffn"] {
        let (shapes, layers) = synthetic_tensors(&r[case]);
        let list: Vec<_> = shapes
            .iter()
            .map(|(n, s)| (n.clone(), s.clone(), GgmlType::F32))
            .collect();
        for ftype in FileType::ALL {
            let got: BTreeMap<String, String> = plan(ftype, &list, layers)
                .unwrap()
                .into_iter()
                .map(|p| (p.name, p.to.name().to_string()))
                .collect();
            assert_eq!(got, expected_types(case, ftype), "{case} {ftype}");
        }
    }
}

#[test]
fn wide_gguf_requantizes_end_to_end() {
    // An f32 GGUF written by our writer → Q4_K_M: the file has llama.cpp's types, loads, and
    // its rows dequantize close to the source's.
    let r = reference();
    let case = &r["odd_ffn"];
    let (shapes, layers) = synthetic_tensors(case);
    let s = &case["shape"];
    let dir = tmp_dir("wide");
    let src = dir.join("src.gguf");
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("qwen2".into()));
    let u = |k: &str| Value::U32(s[k].as_u64().unwrap() as u32);
    w.set("qwen2.block_count", u("layers"));
    w.set("qwen2.context_length", Value::U32(512));
    w.set("qwen2.embedding_length", u("hidden"));
    w.set("qwen2.feed_forward_length", u("ffn"));
    w.set("qwen2.attention.head_count", u("heads"));
    w.set("qwen2.attention.head_count_kv", u("kv_heads"));
    w.set("qwen2.attention.layer_norm_rms_epsilon", Value::F32(1e-6));
    w.set("some.user.key", Value::String("kept".into()));
    for (n, sh) in &shapes {
        w.add_tensor(n, sh, GgmlType::F32).unwrap();
    }
    let mut out = w.create(&src).unwrap();
    let mut state = 0x9E3779B97F4A7C15u64;
    let mut values = BTreeMap::new();
    for (n, sh) in &shapes {
        let v: Vec<f32> = (0..sh.iter().product::<usize>())
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
            })
            .collect();
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        out.write_tensor(n, &bytes).unwrap();
        values.insert(n.clone(), v);
    }
    out.finish().unwrap();

    let dst = dir.join("q4km.gguf");
    quantize(&src, &dst, FileType::Q4_K_M, |_| {}).unwrap();
    assert_eq!(
        file_types(&dst),
        expected_types("odd_ffn", FileType::Q4_K_M)
    );
    let g = GgufFile::open(&dst).unwrap();
    assert_eq!(g.get_str("some.user.key"), Some("kept"));
    assert_eq!(g.get("general.file_type"), Some(&Value::U32(15)));
    let _ = layers;
    for (n, v) in &values {
        let info = &g.tensors[n];
        let cols = info.shape().last().copied().unwrap();
        let mut row = vec![0f32; cols];
        let data = g.tensor_data(info);
        let rb = info.ty.row_bytes(cols).unwrap();
        let mut err = 0f32;
        for (r, want) in v.chunks(cols).enumerate() {
            qwen2_core::qwen2_kernels::dequantize_row(
                info.ty,
                &data[r * rb..(r + 1) * rb],
                &mut row,
            )
            .unwrap();
            err = err.max(max_abs_diff(&row, want));
        }
        // Uniform(-0.1, 0.1): 4 bits with a 6-bit scale and min keep every value within ~1/15
        // of the sub-block range (0.2), plus the rounding of the scales.
        assert!(err <= 0.02, "{n} ({}): max error {err}", info.ty.name());
    }
    let lm = qwen2_core::load(&dst, Precision::Fast).unwrap();
    let mut cache = lm.model.new_cache(16);
    let logits = lm
        .model
        .forward(&[1, 2, 3], &mut cache, Logits::Last)
        .unwrap();
    assert!(logits.iter().all(|x| x.is_finite()));

    // Requantizing a quantized GGUF: unchanged types are copied byte for byte.
    let again = dir.join("again.gguf");
    quantize(&dst, &again, FileType::Q4_K_M, |_| {}).unwrap();
    let g2 = GgufFile::open(&again).unwrap();
    for (n, info) in &g.tensors {
        assert_eq!(g.tensor_data(info), g2.tensor_data(&g2.tensors[n]), "{n}");
    }
    let e = quantize(&dst, &dst, FileType::Q8_0, |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("same file"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn kl_divergence_against_base_on_the_same_chunks() {
    let src = fixture("tiny/untied");
    let dir = tmp_dir("kl");
    let q = dir.join("q4_0.gguf");
    quantize(&src, &q, FileType::Q4_0, |_| {}).unwrap();
    let base = qwen2_core::load(&src, Precision::Exact).unwrap().model;
    let model = qwen2_core::load(&q, Precision::Exact).unwrap().model;
    let golden = read_json(&src.join("golden.json"));
    let mut ids = ids(&golden["input_ids"]);
    ids.extend(ids.clone()); // two chunks of 12
    let ctx = 12;
    let r = qwen2_core::perplexity::kl_divergence(&model, &base, &ids, ctx, |_, _, _| {}).unwrap();

    // The same numbers computed independently from full-chunk logits.
    let vocab = base.vocab_size();
    let mut kls = Vec::new();
    let mut same = 0;
    for chunk in ids.chunks(ctx) {
        let all = |m: &qwen2_core::Qwen2| {
            let mut c = m.new_cache(ctx);
            m.forward(chunk, &mut c, Logits::All).unwrap()
        };
        let (lb, lq) = (all(&base), all(&model));
        for pos in ctx / 2..ctx - 1 {
            let row = |l: &[f32]| l[pos * vocab..(pos + 1) * vocab].to_vec();
            let (kl, top1) = kl_and_top1(&row(&lb), &row(&lq), vocab);
            kls.push(kl);
            same += (top1 == 1.0) as usize;
        }
    }
    let mean = kls.iter().sum::<f64>() / kls.len() as f64;
    let max = kls.iter().copied().fold(0.0, f64::max);
    assert_eq!(r.model.n_scored, kls.len());
    assert!(
        (r.kl_mean - mean).abs() <= 1e-6 * mean.max(1e-6),
        "{} vs {mean}",
        r.kl_mean
    );
    assert!((r.kl_max - max).abs() <= 1e-6 * max.max(1e-6));
    assert_eq!(r.top1_agreement, same as f64 / kls.len() as f64);
    let pm = qwen2_core::perplexity::perplexity(&model, &ids, ctx, |_, _, _| {}).unwrap();
    let pb = qwen2_core::perplexity::perplexity(&base, &ids, ctx, |_, _, _| {}).unwrap();
    assert!((r.model.ppl - pm.ppl).abs() <= 1e-9 * pm.ppl);
    assert!((r.delta_ppl - (pm.ppl - pb.ppl)).abs() <= 1e-9 * pb.ppl);
    assert!(r.kl_mean > 0.0 && r.kl_p99 <= r.kl_max && r.kl_median <= r.kl_p99);

    // A model against itself: zero divergence, full agreement.
    let s = qwen2_core::perplexity::kl_divergence(&base, &base, &ids, ctx, |_, _, _| {}).unwrap();
    assert!(s.kl_max < 1e-12 && s.top1_agreement == 1.0 && s.delta_ppl == 0.0);
    std::fs::remove_dir_all(&dir).unwrap();
}
