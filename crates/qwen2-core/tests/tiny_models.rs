//! Tiny random Qwen2 checkpoints made by transformers (scripts/fixtures/models.py): our logits
//! must match transformers' to 1e-4 in f32, cached decoding must match uncached, and greedy
//! continuations must be identical.

mod common;
use common::*;
use qwen2_core::{Logits, Precision};

const TOL: f32 = 1e-4;

fn check_dir(name: &str, precision: Precision) {
    let dir = fixture(&format!("tiny/{name}"));
    let lm = qwen2_core::load(&dir, precision).unwrap_or_else(|e| panic!("{name}: {e}"));
    let golden = read_json(&dir.join("golden.json"));
    let input = ids(&golden["input_ids"]);
    let (shape, want) = read_npy_f32(&dir.join("logits.npy"));
    assert_eq!(shape, vec![input.len(), lm.model.vocab_size()]);

    let mut cache = lm.model.new_cache(64);
    let got = lm.model.forward(&input, &mut cache, Logits::All).unwrap();
    let d = max_abs_diff(&got, &want);
    assert!(d <= TOL, "{name} {precision:?}: max |Δlogit| = {d} > {TOL}");

    // Cached decoding, one token at a time, gives the same logits (HF checks 1e-3; we hold 1e-4).
    let mut cache = lm.model.new_cache(64);
    let vocab = lm.model.vocab_size();
    for (t, &id) in input.iter().enumerate() {
        let step = lm.model.forward(&[id], &mut cache, Logits::Last).unwrap();
        let d = max_abs_diff(&step, &want[t * vocab..(t + 1) * vocab]);
        assert!(d <= TOL, "{name}: cached step {t}: max |Δ| = {d}");
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

#[test]
fn bf16_weights() {
    check_dir("bf16", Precision::Exact);
    check_dir("bf16", Precision::Fast);
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
