//! Our MATH answer normalization against lm-eval 0.4.13's own functions, on the outputs
//! recorded in fixtures/eval/math_normalize.json by scripts/fixtures/math_normalize.py:
//! `process_docs`' target for every MATH test and MATH-500 problem, `normalize_final_answer`
//! on a few hundred tricky strings, and `get_unnormalized_answer` on some generations.
//! The target check needs the pulled data and fails (not skips) without it.

mod common;
use common::data_root;

use qwen2_eval::data::DataDir;
use qwen2_eval::tasks::math;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

fn fixture() -> Json {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/eval/math_normalize.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json")
}

fn s(v: &Json) -> &str {
    v.as_str().expect("string")
}

fn short_sha(text: &str) -> String {
    let d = Sha256::digest(text.as_bytes());
    d.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

#[test]
fn targets_are_lm_eval_process_docs_on_every_problem() {
    let doc = fixture();
    let d = DataDir::new(data_root());
    for (name, docs) in [
        ("math", d.math_test().unwrap()),
        ("math500", d.math500().unwrap()),
    ] {
        let want = doc["targets"][name].as_array().expect("targets");
        assert_eq!(docs.len(), want.len(), "{name}");
        let mut wrong = Vec::new();
        for (i, (doc, w)) in docs.iter().zip(want).enumerate() {
            assert_eq!(short_sha(&doc.solution), s(&w[0]), "{name} {i}: other data");
            // Both the loader's `answer` and the function it uses.
            let ours = math::reference_answer(&doc.solution);
            if doc.answer != s(&w[1]) || ours.as_deref() != Some(s(&w[1])) {
                wrong.push(format!(
                    "{name} {i}: ours {:?}, lm-eval {:?}",
                    doc.answer, w[1]
                ));
            }
        }
        assert!(wrong.is_empty(), "{} wrong: {:#?}", wrong.len(), wrong);
    }
}

#[test]
fn normalize_final_answer_is_lm_eval_on_tricky_strings() {
    let doc = fixture();
    let cases = doc["normalize"].as_array().expect("normalize");
    assert!(cases.len() >= 300, "{}", cases.len());
    let wrong: Vec<String> = cases
        .iter()
        .filter_map(|c| {
            let (input, want) = (s(&c[0]), s(&c[1]));
            let ours = math::normalize_final_answer(input);
            (ours != want).then(|| format!("{input:?}: ours {ours:?}, lm-eval {want:?}"))
        })
        .collect();
    assert!(wrong.is_empty(), "{} wrong: {:#?}", wrong.len(), wrong);
}

#[test]
fn final_answer_extraction_is_lm_eval() {
    let doc = fixture();
    for c in doc["extract"].as_array().expect("extract") {
        let (text, want) = (s(&c[0]), s(&c[1]));
        // lm-eval returns "[invalidanswer]" where we return None; both never score.
        let ours = math::extract_final_answer(text).unwrap_or_else(|| "[invalidanswer]".into());
        assert_eq!(ours, want, "{text:?}");
    }
}
