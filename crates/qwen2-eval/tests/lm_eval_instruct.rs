//! lm-evaluation-harness 0.4.13's instruct code tasks and generation limits, against what
//! lm-eval itself built (fixtures/eval/lm_eval_instruct_prompts.json, by
//! scripts/fixtures/lm_eval_instruct_prompts.py):
//! - `humaneval_instruct` and `mbpp_instruct` prompts of the first 3 documents, byte for byte,
//!   as plain text and with the Qwen2.5 chat template (examples as turns and in one user turn),
//!   with their stop strings and generation limits;
//! - the programs built from hand-made completions (lm-eval's own filters and `doc_to_target`),
//!   run in the real sandbox: a fenced correct answer passes, a wrong one fails;
//! - each generation task's default `max_gen_tokens` is lm-eval's.
//!
//! Needs the pulled data (`qwen2 data pull`) and python3 (the sandbox).

mod common;
use common::data_root;

use qwen2_core::qwen2_tokenizer::ChatTemplate;
use qwen2_eval::data::{DataDir, HumanEvalDoc, MbppDoc};
use qwen2_eval::run::{render_chat, Task, LM_EVAL_DEFAULT_MAX_GEN_TOKS};
use qwen2_eval::sandbox::{run_python, Limits, Verdict};
use qwen2_eval::tasks::{humaneval_instruct, mbpp_instruct, FewShotPrompt};
use serde_json::Value as Json;

fn repo_file(rel: &str) -> String {
    let path = format!("{}/../../{rel}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn fixture() -> Json {
    serde_json::from_str(&repo_file("fixtures/eval/lm_eval_instruct_prompts.json"))
        .expect("fixture JSON")
}

fn qwen25_template() -> ChatTemplate {
    let cfg: Json = serde_json::from_str(&repo_file("fixtures/tokenizer/tokenizer_config.json"))
        .expect("tokenizer_config.json");
    ChatTemplate::new(cfg["chat_template"].as_str().expect("chat_template")).unwrap()
}

fn strs(v: &Json) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

/// Every mode and document of `task` in the fixture against our prompt for that document.
fn check_prompts(task: Task, prompt: &dyn Fn(usize) -> FewShotPrompt, stop: &[&str]) {
    let tpl = qwen25_template();
    let fx = fixture();
    let mut seen = 0;
    for t in fx["tasks"].as_array().unwrap() {
        if t["task"] != task.name() {
            continue;
        }
        assert_eq!(t["shots"].as_u64(), Some(task.default_shots() as u64));
        let mode = t["mode"].as_str().unwrap();
        for r in t["requests"].as_array().unwrap() {
            let doc_id = r["doc_id"].as_u64().unwrap() as usize;
            let p = prompt(doc_id);
            let ours = match mode {
                "plain" => p.text(),
                "chat_multiturn" => render_chat(&tpl, &p, true).unwrap(),
                "chat_singleturn" => render_chat(&tpl, &p, false).unwrap(),
                m => panic!("mode {m}"),
            };
            assert_eq!(
                ours,
                r["context"].as_str().unwrap(),
                "{} {mode} doc {doc_id}",
                task.name()
            );
            assert_eq!(p.gen_prefix.as_deref(), r["gen_prefix"].as_str());
            assert_eq!(strs(&r["until"]), stop, "{} stop strings", task.name());
            assert_eq!(
                r["max_gen_toks"].as_u64(),
                task.default_max_gen_tokens().map(|n| n as u64)
            );
            seen += 1;
        }
    }
    assert_eq!(seen, 9, "3 modes x 3 documents of {}", task.name());
}

#[test]
fn humaneval_instruct_prompts_are_lm_evals() {
    let docs = DataDir::new(data_root()).humaneval().unwrap();
    check_prompts(
        Task::HumanevalInstruct,
        &|i| humaneval_instruct::fewshot_prompt(&docs[i]),
        &humaneval_instruct::STOP,
    );
}

#[test]
fn mbpp_instruct_prompts_are_lm_evals() {
    let docs = DataDir::new(data_root()).mbpp_test().unwrap();
    check_prompts(
        Task::MbppInstruct,
        &|i| mbpp_instruct::fewshot_prompt(&docs[i], 3),
        &mbpp_instruct::STOP,
    );
}

#[test]
fn generation_limits_are_lm_evals() {
    let fx = fixture();
    assert_eq!(
        fx["hflm_default_max_gen_toks"].as_u64(),
        Some(LM_EVAL_DEFAULT_MAX_GEN_TOKS as u64)
    );
    let limits = fx["limits"].as_array().unwrap();
    // Every generation task we have is in the fixture, with lm-eval's resolved limit.
    let gen_tasks: Vec<Task> = Task::ALL
        .into_iter()
        .filter(|t| t.default_max_gen_tokens().is_some())
        .collect();
    assert_eq!(limits.len(), gen_tasks.len());
    for l in limits {
        let task = Task::parse(l["task"].as_str().unwrap()).unwrap();
        assert_eq!(
            task.default_max_gen_tokens().map(|n| n as u64),
            l["max_gen_toks"].as_u64(),
            "{} (lm-eval {})",
            task.name(),
            l["lm_eval_task"]
        );
    }
    let humaneval = limits.iter().find(|l| l["task"] == "humaneval").unwrap();
    assert_eq!(humaneval["yaml_max_gen_toks"].as_u64(), Some(1024));
}

/// The extraction cases of `task`: (doc_id, label, response, lm-eval's candidate, candidate
/// with the fixed extraction, lm-eval's test code).
fn cases(task: &str) -> Vec<(usize, String, String, String, String, String)> {
    let s = |v: &Json| v.as_str().unwrap().to_string();
    fixture()["extraction"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["task"] == task)
        .map(|e| {
            (
                e["doc_id"].as_u64().unwrap() as usize,
                s(&e["label"]),
                s(&e["response"]),
                s(&e["candidate"]),
                s(&e["candidate_fixed"]),
                s(&e["test"]),
            )
        })
        .collect()
}

fn passes(program: &str) -> bool {
    let o = run_python(program, &Limits::default()).unwrap();
    o.verdict == Verdict::Passed
}

#[test]
fn humaneval_instruct_programs_are_lm_evals_and_run() {
    let docs: Vec<HumanEvalDoc> = DataDir::new(data_root()).humaneval().unwrap();
    let cases = cases("humaneval_instruct");
    assert_eq!(cases.len(), 8);
    for (i, label, response, candidate, _, test) in cases {
        let d = &docs[i];
        assert_eq!(
            humaneval_instruct::candidate(d, &response),
            candidate,
            "{label}"
        );
        // lm-eval's code_eval runs candidate + "\n" + test; ours ends with one more "\n".
        let program = humaneval_instruct::program(d, &response);
        assert_eq!(program, format!("{candidate}\n{test}\n"), "{label}");
        let want = label.ends_with("_correct");
        assert_eq!(passes(&program), want, "doc {i} {label}: {program}");
    }
}

#[test]
fn mbpp_instruct_programs_are_lm_evals_and_run() {
    let docs: Vec<MbppDoc> = DataDir::new(data_root()).mbpp_test().unwrap();
    let cases = cases("mbpp_instruct");
    assert_eq!(cases.len(), 10);
    for (i, label, response, candidate, fixed, test) in cases {
        let d = &docs[i];
        let code = mbpp_instruct::extract_code(&response);
        assert_eq!(code, candidate, "{label}");
        assert_eq!(
            mbpp_instruct::extract_code_fixed(&response),
            fixed,
            "{label}"
        );
        let program = mbpp_instruct::program(d, &code);
        assert_eq!(program, format!("{candidate}\n{test}\n"), "{label}");
        // lm-eval 0.4.13 fails correct code that continues the prompt's fence from its first
        // word ("def …"); the fixed extraction passes it. A comment first line passes both.
        let (lm_eval_pass, fixed_pass) = match label.as_str() {
            "prefix_continued_correct" => (false, true),
            "comment_first_correct" => (true, true),
            "prefix_continued_wrong" | "new_fence_correct" | "no_fence" => (false, false),
            l => panic!("case {l}"),
        };
        assert_eq!(passes(&program), lm_eval_pass, "doc {i} {label}: {program}");
        let program = mbpp_instruct::program(d, &fixed);
        assert_eq!(
            passes(&program),
            fixed_pass,
            "doc {i} {label} fixed: {program}"
        );
    }
}
