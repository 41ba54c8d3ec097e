//! `--chat` prompts against lm-evaluation-harness's `--apply_chat_template` ones: item 0 of
//! MMLU, GSM8K, ARC-Challenge, HellaSwag and Winogrande (whose choices are contexts), and of
//! the generation tasks MATH, MATH-500, MBPP and HumanEval (with their stop strings),
//! rendered with the Qwen2.5 chat template, few-shot examples
//! as separate turns (`--fewshot_as_multiturn`) and in one user turn. The expected strings
//! were made by lm-eval itself (fixtures/eval/lm_eval_chat_prompts.json, by
//! scripts/fixtures/lm_eval_chat_prompts.py). Needs the pulled data (`qwen2 data pull`).

mod common;
use common::data_root;

use qwen2_core::qwen2_tokenizer::ChatTemplate;
use qwen2_eval::data::DataDir;
use qwen2_eval::run::render_chat;
use qwen2_eval::tasks::{self, FewShotPrompt, McItem};
use serde_json::Value as Json;

fn repo_file(rel: &str) -> String {
    let path = format!("{}/../../{rel}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn qwen25_template() -> ChatTemplate {
    let cfg: Json = serde_json::from_str(&repo_file("fixtures/tokenizer/tokenizer_config.json"))
        .expect("tokenizer_config.json");
    ChatTemplate::new(cfg["chat_template"].as_str().expect("chat_template")).unwrap()
}

/// lm-eval's requests for `task` in one mode, as JSON.
fn requests(task: &str, multiturn: bool) -> Vec<Json> {
    let doc: Json = serde_json::from_str(&repo_file("fixtures/eval/lm_eval_chat_prompts.json"))
        .expect("fixture JSON");
    let t = doc["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task"] == task && t["fewshot_as_multiturn"] == multiturn)
        .unwrap_or_else(|| panic!("{task} not in the fixture"));
    t["requests"].as_array().unwrap().clone()
}

/// lm-eval's requests for `task` in one mode: [(context, continuation)].
fn expected(task: &str, multiturn: bool) -> Vec<(String, Option<String>)> {
    requests(task, multiturn)
        .iter()
        .map(|r| {
            (
                r["context"].as_str().unwrap().to_string(),
                r["continuation"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// A generation task's item 0: the rendered prompt in both modes, and the stop strings
/// (lm-eval's `until`; its HFLM adds the eos text, which our generation stops at as an id).
fn check_gen(task: &str, prompt: &FewShotPrompt, stop: &[&str]) {
    let tpl = qwen25_template();
    for multiturn in [true, false] {
        let want = requests(task, multiturn);
        assert_eq!(want.len(), 1, "{task}");
        assert_eq!(
            render_chat(&tpl, prompt, multiturn).unwrap(),
            want[0]["context"].as_str().unwrap(),
            "{task} multiturn={multiturn}"
        );
        let until: Vec<&str> = want[0]["until"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert_eq!(until, stop, "{task} stop strings");
    }
}

fn check_mc(task: &str, item: &McItem) {
    let tpl = qwen25_template();
    for multiturn in [true, false] {
        let want = expected(task, multiturn);
        assert_eq!(item.requests.len(), want.len(), "{task}");
        for (r, (ctx, cont)) in item.requests.iter().zip(&want) {
            let got = render_chat(&tpl, &r.prompt, multiturn).unwrap();
            assert_eq!(&got, ctx, "{task} multiturn={multiturn}");
            assert_eq!(
                Some(r.chat_continuation()),
                cont.as_deref(),
                "{task} multiturn={multiturn}"
            );
        }
    }
}

#[test]
fn mmlu_chat_prompt_is_lm_evals() {
    let d = DataDir::new(data_root());
    let items = tasks::mmlu::items(&d.mmlu("test").unwrap(), &d.mmlu("dev").unwrap(), 5);
    assert_eq!(items[0].id, "abstract_algebra/0");
    check_mc("mmlu", &items[0]);
}

#[test]
fn arc_challenge_chat_prompt_is_lm_evals() {
    let d = DataDir::new(data_root());
    let test = d.arc_challenge_test().unwrap();
    let items = tasks::arc::items(&test[..1], &d.arc_challenge_train().unwrap(), 25, 1234);
    check_mc("arc_challenge", &items[0]);
}

#[test]
fn hellaswag_chat_prompt_is_lm_evals() {
    let d = DataDir::new(data_root());
    let val = d.hellaswag_val().unwrap();
    let items = tasks::hellaswag::items(&val[..1], &d.hellaswag_train().unwrap(), 10, 1234);
    check_mc("hellaswag", &items[0]);
}

#[test]
fn winogrande_chat_prompt_is_lm_evals() {
    let d = DataDir::new(data_root());
    let val = d.winogrande_val().unwrap();
    let items =
        tasks::winogrande::items(&val[..1], &d.winogrande_train().unwrap(), 5, 1234).unwrap();
    check_mc("winogrande", &items[0]);
}

#[test]
fn gsm8k_chat_prompt_is_lm_evals() {
    let d = DataDir::new(data_root());
    let doc = &d.gsm8k_test().unwrap()[0];
    let prompt: FewShotPrompt = tasks::gsm8k::fewshot_prompt(doc, 4);
    check_gen("gsm8k", &prompt, &tasks::gsm8k::STOP);
}

#[test]
fn math_chat_prompt_is_lm_evals() {
    let d = DataDir::new(data_root());
    // Our `math` item 0 is lm-eval's minerva_math_algebra document 0.
    let doc = &d.math_test().unwrap()[0];
    check_gen(
        "math",
        &tasks::math::fewshot_prompt(doc, 4),
        &tasks::math::STOP,
    );
    let doc = &d.math500().unwrap()[0];
    check_gen(
        "math500",
        &tasks::math::fewshot_prompt(doc, 4),
        &tasks::math::STOP,
    );
}

#[test]
fn mbpp_chat_prompt_is_lm_evals() {
    let d = DataDir::new(data_root());
    let doc = &d.mbpp_test().unwrap()[0];
    check_gen(
        "mbpp",
        &tasks::mbpp::fewshot_prompt(doc, 3),
        &tasks::mbpp::STOP,
    );
}

#[test]
fn humaneval_chat_prompt_is_lm_evals() {
    let d = DataDir::new(data_root());
    let doc = &d.humaneval().unwrap()[0];
    check_gen(
        "humaneval",
        &tasks::humaneval::fewshot_prompt(doc),
        &tasks::humaneval::STOP,
    );
}

#[test]
fn plain_prompt_is_the_text_of_the_same_turns() {
    // Without --chat nothing changes: the plain context is the turns joined as lm-eval joins
    // them (checked against lm-eval for 40 items per task in lm_eval_prompts.rs).
    let d = DataDir::new(data_root());
    let doc = &d.gsm8k_test().unwrap()[0];
    assert_eq!(
        tasks::gsm8k::fewshot_prompt(doc, 4).text(),
        tasks::gsm8k::prompt(doc, 4)
    );
    // MATH's and MBPP's plain prompts (checked against lm-eval in math_mbpp.rs) are the text
    // of their turns too, MBPP's with its empty target delimiter.
    let doc = &d.math_test().unwrap()[0];
    assert_eq!(
        tasks::math::fewshot_prompt(doc, 4).text(),
        tasks::math::prompt(doc, 4)
    );
    let doc = &d.mbpp_test().unwrap()[0];
    let p = tasks::mbpp::fewshot_prompt(doc, 3);
    assert_eq!(p.text(), tasks::mbpp::prompt(doc, 3));
    assert!(p.text().contains("[BEGIN]\ndef similar_elements"));
}
