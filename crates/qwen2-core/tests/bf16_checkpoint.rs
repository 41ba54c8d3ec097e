//! A bf16 Hugging Face checkpoint of the real 0.5B (the default GGUF converted with
//! `HfDtype::Bf16`: the same weights, bf16 in safetensors) on the fast path, against `--exact`
//! on the same directory (its bf16 weights widened to f32, f32 activations).
//!
//! Where the CPU has AVX-512 BF16 (`qwen2_kernels::bf16`) the fast path rounds activations to
//! bf16 and multiplies with `vdpbf16ps` (as llama.cpp's BF16 path, and transformers running the
//! checkpoint in bf16); elsewhere it is f32 on widened weights. Either way it is held to the
//! fast path's bar (real_model.rs): prefill over the 512-token KL text and decode token by token
//! over its first 192, mean KL(exact ‖ fast) ≤ 0.005 and top-1 agreement ≥ 98%.

mod common;
use common::*;
use qwen2_core::convert::{HfDtype, DEFAULT_MAX_SHARD_SIZE};
use qwen2_core::{Logits, Precision};

#[test]
fn real_bf16_checkpoint_fast_path_kl_and_top1_against_exact() {
    let s = Scratch::new("bf16-real");
    let hf = s.join("qwen2.5-coder-0.5b-instruct-bf16");
    to_hf(&real_model(), &hf, HfDtype::Bf16, DEFAULT_MAX_SHARD_SIZE);
    let ids = ids(&read_json(&fixture("real/ppl_ids.json"))["ids"])[..512].to_vec();

    let reference = {
        let exact = qwen2_core::load(&hf, Precision::Exact).unwrap();
        let mut c = exact.model.new_cache(ids.len());
        exact.model.forward(&ids, &mut c, Logits::All).unwrap()
    };
    let fast = qwen2_core::load(&hf, Precision::Fast).unwrap();
    let vocab = fast.model.vocab_size();
    let (prefill, decode) = prefill_and_decode_logits(&fast.model, &ids, 192);
    let path = if qwen2_core::qwen2_kernels::bf16() {
        "vdpbf16ps, bf16 activations"
    } else {
        "f32 FMA"
    };
    let mut failures = Vec::new();
    for (name, ours) in [("prefill", &prefill[..]), ("decode", &decode[..])] {
        let (kl, top1) = kl_and_top1(&reference[..ours.len()], ours, vocab);
        eprintln!(
            "bf16 checkpoint, fast {name} ({path}) vs exact over {} tokens: mean KL {kl:.6}, top-1 {top1:.4}",
            ours.len() / vocab
        );
        if kl > 0.005 {
            failures.push(format!("{name}: mean KL {kl} > 0.005"));
        }
        if top1 < 0.98 {
            failures.push(format!("{name}: top-1 {top1} < 0.98"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("; "));
}
