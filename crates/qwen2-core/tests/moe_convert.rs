//! `convert` for Qwen2-MoE, checked against transformers (scripts/fixtures/moe.py):
//!
//! - the fixture HF directories → GGUF f32 by our `convert`: the transformers logits within
//!   1e-4, experts stacked as llama.cpp's `ffn_*_exps`, and the `qwen2moe.*` metadata equal to
//!   the gguf-py-written fixture GGUF's;
//! - the fixture GGUF → HF f32 directory (hub per-expert layout, `qwen2_moe` config.json): the
//!   same logits, and the tensors identical to the original safetensors;
//! - q8_0 output: experts whose rows are not a multiple of 32 fall back to f16, the router stays
//!   f32, and the logits stay close.

mod common;
use std::path::Path;

use common::*;
use qwen2_core::convert::{GgufOutType, HfDtype, DEFAULT_MAX_SHARD_SIZE};
use qwen2_core::gguf::GgufFile;
use qwen2_core::kv_cache::KvDtype;
use qwen2_core::qwen2_kernels::GgmlType;
use qwen2_core::weights::WeightSource;
use qwen2_core::{Logits, Precision};

const TOL: f32 = 1e-4;
const FIXTURES: [&str; 2] = ["moe_topk", "moe_norm_mixed"];

/// Max |Δlogit| of `model` against transformers' logits of fixture `name`, both precisions.
fn logits_diff(name: &str, model: &Path) -> f32 {
    let dir = fixture(&format!("tiny/{name}"));
    let golden = read_json(&dir.join("golden.json"));
    let input = ids(&golden["input_ids"]);
    let (_, want) = read_npy_f32(&dir.join("logits.npy"));
    let mut worst = 0f32;
    for p in [Precision::Exact, Precision::Fast] {
        let lm = qwen2_core::load(model, p).unwrap_or_else(|e| panic!("{}: {e}", model.display()));
        assert!(lm.model.cfg.moe.is_some(), "{}: not MoE", model.display());
        let mut cache = lm.model.new_cache_with(64, KvDtype::F32);
        let got = lm.model.forward(&input, &mut cache, Logits::All).unwrap();
        assert_eq!(got.len(), want.len());
        worst = worst.max(max_abs_diff(&got, &want));
    }
    worst
}

/// The `general.architecture`, `general.file_type` and `qwen2moe.*` metadata of a GGUF.
fn model_metadata(path: &Path) -> Vec<(String, String)> {
    let g = GgufFile::open(path).unwrap();
    g.metadata
        .iter()
        .filter(|(k, _)| {
            k.starts_with("qwen2moe.") || *k == "general.architecture" || *k == "general.file_type"
        })
        .map(|(k, v)| (k.clone(), format!("{v:?}")))
        .collect()
}

#[test]
fn hf_to_gguf_f32_matches_transformers_and_llama_cpp_layout() {
    let s = Scratch::new("moeconv-f32");
    for name in FIXTURES {
        let dir = fixture(&format!("tiny/{name}"));
        let out = s.join(&format!("{name}.gguf"));
        to_gguf(&dir, &out, GgufOutType::F32);
        let d = logits_diff(name, &out);
        assert!(d <= TOL, "{name}: max |Δlogit| = {d} > {TOL}");

        // Same metadata keys and values as the gguf-py-written fixture.
        let reference = dir.join("model.gguf");
        assert_eq!(model_metadata(&out), model_metadata(&reference), "{name}");
        // Same tensors, shapes, types and bytes (both are f32 copies of the same weights).
        let (ours, theirs) = (
            GgufFile::open(&out).unwrap(),
            GgufFile::open(&reference).unwrap(),
        );
        let mut a: Vec<&String> = ours.tensors.keys().collect();
        let mut b: Vec<&String> = theirs.tensors.keys().collect();
        a.sort();
        b.sort();
        assert_eq!(a, b, "{name}: tensor names");
        for (n, x) in &ours.tensors {
            let y = &theirs.tensors[n];
            assert_eq!((x.ty, &x.dims), (y.ty, &y.dims), "{name}: {n}");
            assert!(
                ours.tensor_data(x) == theirs.tensor_data(y),
                "{name}: {n} bytes differ"
            );
        }
    }
}

#[test]
fn gguf_to_hf_round_trip() {
    let s = Scratch::new("moeconv-hf");
    for name in FIXTURES {
        let dir = fixture(&format!("tiny/{name}"));
        let out = s.join(name);
        to_hf(
            &dir.join("model.gguf"),
            &out,
            HfDtype::F32,
            DEFAULT_MAX_SHARD_SIZE,
        );
        let cfg = read_json(&out.join("config.json"));
        assert_eq!(cfg["model_type"], "qwen2_moe", "{name}");
        assert_eq!(cfg["architectures"][0], "Qwen2MoeForCausalLM", "{name}");
        let d = logits_diff(name, &out);
        assert!(d <= TOL, "{name}: max |Δlogit| = {d} > {TOL}");

        // Per-expert hub layout, bit-identical to the transformers checkpoint.
        let (ours, orig) = (
            WeightSource::from_safetensors_dir(&out).unwrap(),
            WeightSource::from_safetensors_dir(&dir).unwrap(),
        );
        let mut a = ours.names();
        let mut b = orig.names();
        a.sort();
        b.sort();
        assert_eq!(a, b, "{name}: tensor names");
        assert!(a.iter().any(|n| n.contains(".mlp.experts.7.down_proj.")));
        for n in &a {
            let shape = orig_shape(&orig, n);
            let (x, y) = (ours.get(n, &shape).unwrap(), orig.get(n, &shape).unwrap());
            assert_eq!(
                x.to_f32_vec().unwrap(),
                y.to_f32_vec().unwrap(),
                "{name}: {n}"
            );
        }

        // And back: HF → GGUF gives the same logits again.
        let back = s.join(&format!("{name}.back.gguf"));
        to_gguf(&out, &back, GgufOutType::F32);
        let d = logits_diff(name, &back);
        assert!(d <= TOL, "{name} round trip: max |Δlogit| = {d} > {TOL}");
    }
}

fn orig_shape(src: &WeightSource, name: &str) -> Vec<usize> {
    match src {
        WeightSource::Safetensors { tensors, .. } => tensors[name].shape.clone(),
        WeightSource::Gguf(_) => unreachable!("safetensors source"),
    }
}

#[test]
fn hf_to_gguf_q8_0_falls_back_for_short_expert_rows() {
    let s = Scratch::new("moeconv-q8");
    let name = "moe_topk";
    let dir = fixture(&format!("tiny/{name}"));
    let out = s.join("q8.gguf");
    to_gguf(&dir, &out, GgufOutType::Q8_0);
    let g = GgufFile::open(&out).unwrap();
    let ty = |n: &str| g.tensors[n].ty;
    // moe_intermediate_size 16: down_exps rows are 16 long, not a Q8_0 block.
    assert_eq!(ty("blk.0.ffn_down_exps.weight"), GgmlType::F16);
    assert_eq!(ty("blk.0.ffn_gate_exps.weight"), GgmlType::Q8_0);
    assert_eq!(ty("blk.0.ffn_gate_inp.weight"), GgmlType::F32);
    assert_eq!(ty("blk.0.ffn_gate_inp_shexp.weight"), GgmlType::F32);
    // Q8_0 rounds weights to 8 bits: the dense tiny models' q8_0 budget, 2e-2 of max |logit|.
    let (_, want) = read_npy_f32(&dir.join("logits.npy"));
    let d = logits_diff(name, &out) / max_abs(&want);
    assert!(d <= 2e-2, "{name} q8_0: max |Δlogit| / max |logit| = {d}");
}
