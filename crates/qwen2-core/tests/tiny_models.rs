//! Tiny random Qwen2 checkpoints made by transformers (scripts/fixtures/models.py): our logits
//! must match transformers' to 1e-4 in f32, cached decoding must match uncached, and greedy
//! continuations must be identical. (BF16 weights on a CPU with AVX-512 BF16 round activations
//! to bf16 on the fast path: a stated looser budget, see `bf16_weights`.)

mod common;
use common::*;
use qwen2_core::kv_cache::KvDtype;
use qwen2_core::{Logits, Precision};

const TOL: f32 = 1e-4;

fn check_dir(name: &str, precision: Precision) {
    check_dir_tol(name, precision, TOL)
}

/// As [`check_dir`], the logits held to `tol` instead of 1e-4.
fn check_dir_tol(name: &str, precision: Precision, tol: f32) {
    let dir = fixture(&format!("tiny/{name}"));
    let lm = qwen2_core::load(&dir, precision).unwrap_or_else(|e| panic!("{name}: {e}"));
    let golden = read_json(&dir.join("golden.json"));
    let input = ids(&golden["input_ids"]);
    let (shape, want) = read_npy_f32(&dir.join("logits.npy"));
    assert_eq!(shape, vec![input.len(), lm.model.vocab_size()]);

    // f32 weights and an f32 KV cache: the fast path must equal the reference to 1e-4.
    let mut cache = lm.model.new_cache_with(64, KvDtype::F32);
    let got = lm.model.forward(&input, &mut cache, Logits::All).unwrap();
    let d = max_abs_diff(&got, &want);
    eprintln!(
        "{name} {precision:?}: max |Δlogit| = {d} (max |logit| {:.2})",
        max_abs(&want)
    );
    assert!(d <= tol, "{name} {precision:?}: max |Δlogit| = {d} > {tol}");

    // The default cache (f16 for the fast path) only adds f16 rounding of K and V.
    let mut cache = lm.model.new_cache(64);
    let got = lm.model.forward(&input, &mut cache, Logits::All).unwrap();
    let d = max_abs_diff(&got, &want);
    let bound = tol.max(1e-2);
    assert!(
        d <= bound,
        "{name} {precision:?} default KV: max |Δlogit| = {d} > {bound}"
    );

    // Cached decoding, one token at a time, gives the same logits (HF checks 1e-3; we hold 1e-4).
    let mut cache = lm.model.new_cache_with(64, KvDtype::F32);
    let vocab = lm.model.vocab_size();
    for (t, &id) in input.iter().enumerate() {
        let step = lm.model.forward(&[id], &mut cache, Logits::Last).unwrap();
        let d = max_abs_diff(&step, &want[t * vocab..(t + 1) * vocab]);
        assert!(d <= tol, "{name}: cached step {t}: max |Δ| = {d}");
    }

    let want_greedy = ids(&golden["greedy"]);
    let got_greedy = greedy(&lm.model, &input, want_greedy.len(), &[]);
    assert_eq!(
        got_greedy, want_greedy,
        "{name}: greedy continuation differs"
    );
}

#[test]
fn tied_embeddings() {
    check_dir("tied", Precision::Exact);
    check_dir("tied", Precision::Fast);
}

#[test]
fn untied_embeddings() {
    check_dir("untied", Precision::Exact);
}

#[test]
fn sharded_safetensors() {
    check_dir("sharded", Precision::Exact);
}

/// On AVX-512 BF16 the fast path rounds activations to bf16 (relative 2^-9) before each
/// matmul (`qwen2_kernels::bf16`): budget 5e-2 on these logits (|logit| ≤ 3), as the q8_0 KV
/// cache's on the same fixtures (measured 0.014 on Zen 4). The real checkpoint's bar (KL, top-1)
/// is in bf16_checkpoint.rs.
#[test]
fn bf16_weights() {
    check_dir("bf16", Precision::Exact);
    let tol = if qwen2_core::qwen2_kernels::bf16() {
        5e-2
    } else {
        TOL
    };
    check_dir_tol("bf16", Precision::Fast, tol);
}

#[test]
fn transformers_4_config_form() {
    check_dir("v4config", Precision::Exact);
}

#[test]
fn bad_model_directories_are_clear_errors() {
    let cases = [
        ("unknown_model_type", "unsupported architecture"),
        ("invalid_json", "not valid JSON"),
        ("missing_hidden_size", "hidden_size"),
    ];
    for (dir, want) in cases {
        let p = fixture(&format!("tiny/bad/{dir}"));
        let e = match qwen2_core::load(&p, Precision::Fast) {
            Ok(_) => panic!("{dir}: loaded a bad model"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains(want),
            "{dir}: error `{e}` does not mention `{want}`"
        );
    }
    let e = match qwen2_core::load(&fixture("tiny/does-not-exist"), Precision::Fast) {
        Ok(_) => panic!("loaded a missing path"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("does not exist"), "{e}");
}

#[test]
fn prompt_errors() {
    let lm = qwen2_core::load(&fixture("tiny/tied"), Precision::Fast).unwrap();
    let mut cache = lm.model.new_cache(4);
    let e = lm.model.forward(&[], &mut cache, Logits::Last).unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    let e = lm
        .model
        .forward(&[1, 2, 3, 4, 5], &mut cache, Logits::Last)
        .unwrap_err();
    assert!(e.to_string().contains("context length exceeded"), "{e}");
    let e = lm
        .model
        .forward(&[100_000], &mut cache, Logits::Last)
        .unwrap_err();
    assert!(e.to_string().contains("out of range"), "{e}");
    // The failed calls left the cache usable.
    assert_eq!(cache.len(), 0);
    lm.model.forward(&[1, 2], &mut cache, Logits::Last).unwrap();
    assert_eq!(cache.len(), 2);
}

/// Copy the tied checkpoint into a temp dir, letting `edit` change the config text and pick
/// which tensors to keep.
fn modified_copy(
    tag: &str,
    edit_config: impl Fn(&str) -> String,
    keep: impl Fn(&str) -> bool,
) -> std::path::PathBuf {
    use safetensors::SafeTensors;
    let src = fixture("tiny/tied");
    let dir = std::env::temp_dir().join(format!("qwen2-tiny-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = std::fs::read_to_string(src.join("config.json")).unwrap();
    std::fs::write(dir.join("config.json"), edit_config(&cfg)).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> =
        st.tensors().into_iter().filter(|(n, _)| keep(n)).collect();
    safetensors::serialize_to_file(kept, None, &dir.join("model.safetensors")).unwrap();
    dir
}

fn load_err(dir: &std::path::Path) -> String {
    match qwen2_core::load(dir, Precision::Fast) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_tensor_is_a_clear_error() {
    let dir = modified_copy("missing", str::to_string, |n| {
        n != "model.layers.2.self_attn.k_proj.bias"
    });
    let e = load_err(&dir);
    assert!(
        e.contains("missing tensor") && e.contains("model.layers.2.self_attn.k_proj.bias"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn wrong_shape_is_a_clear_error() {
    // The config claims a larger MLP than the weights hold.
    let dir = modified_copy(
        "shape",
        |c| c.replace("\"intermediate_size\": 128", "\"intermediate_size\": 96"),
        |_| true,
    );
    let e = load_err(&dir);
    assert!(
        e.contains("expected shape [96, 64], found [128, 64]"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn untied_config_without_lm_head_is_a_clear_error() {
    let dir = modified_copy(
        "nohead",
        |c| {
            c.replace(
                "\"tie_word_embeddings\": true",
                "\"tie_word_embeddings\": false",
            )
        },
        |_| true,
    );
    let e = load_err(&dir);
    assert!(e.contains("lm_head.weight"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
