//! `--chat` prompts against lm-evaluation-harness's `--apply_chat_template` ones: item 0 of
//! MMLU, GSM8K, ARC-Challenge, HellaSwag and Winogrande (whose choices are contexts), rendered
//! with the Qwen2.5 chat template, few-shot examples
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

/// lm-eval's requests for `task` in one mode: [(context, continuation)].
fn expected(task: &str, multiturn: bool) -> Vec<(String, Option<String>)> {
    let doc: Json = serde_json::from_str(&repo_file("fixtures/eval/lm_eval_chat_prompts.json"))
        .expect("fixture JSON");
    let t = doc["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task"] == task && t["fewshot_as_multiturn"] == multiturn)
        .unwrap_or_else(|| panic!("{task} not in the fixture"));
    t["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["context"].as_str().unwrap().to_string(),
                r["continuation"].as_str().map(str::to_string),
            )
        })
        .collect()
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
    let tpl = qwen25_template();
    for multiturn in [true, false] {
        let want = expected("gsm8k", multiturn);
        assert_eq!(want.len(), 1);
        assert_eq!(
            render_chat(&tpl, &prompt, multiturn).unwrap(),
            want[0].0,
            "multiturn={multiturn}"
        );
    }
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
}
