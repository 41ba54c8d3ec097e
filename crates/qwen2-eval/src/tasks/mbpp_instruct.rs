//! MBPP for instruct models, as lm-eval 0.4.13's `mbpp_instruct` (`tasks/mbpp/mbpp_instruct.yaml`
//! and `utils.py`): 3-shot with the exemplars of [`super::mbpp`] (task_ids 2, 3, 4,
//! `sampler: first_n`), each problem as "You are an expert Python programmer, and here is your
//! task:\n{text}\nYour code should pass these tests:\n{test_list[0..3]}", every answer started by
//! the `gen_prefix` "\n```python\n" (examples answered "{code}\n```"), empty target delimiter,
//! no stop string but the end-of-turn token (`until: []`), at most 256 tokens, and the code
//! taken from the completion by `utils.extract_code_blocks`; the program is that code, "\n" and
//! the problem's tests (HF `code_eval`), run in the sandbox.
//!
//! lm-eval 0.4.13's extraction prepends "```" to the completion and matches
//! "```(?:\w+)?\n?(.*?)\n?```": the optional language tag is not required to end its line, so
//! for code that starts with a word right after the prompt's "```python\n" (`def`, `import`,
//! `from`) the tag swallows that word and the program is a syntax error. [`extract_code`]
//! keeps that behaviour (it is lm-eval's score, `pass@1`); [`extract_code_fixed`] is the fix of
//! lm-eval PR 4091 (the tag must end its line), scored as `pass@1_fixed_extraction`.

use std::sync::OnceLock;

use regex::Regex;

use crate::data::MbppDoc;
use crate::tasks::{mbpp, FewShotPrompt};

/// lm-eval's `until`: none (its HFLM stops at the tokenizer's eos, as our generation does).
pub const STOP: [&str; 0] = [];

/// lm-eval's `gen_prefix`.
pub const GEN_PREFIX: &str = "\n```python\n";

/// lm-eval's `doc_to_text`; it shows the first three tests.
pub fn doc_to_text(text: &str, tests: &[&str]) -> String {
    let t = |i: usize| tests.get(i).copied().unwrap_or("");
    format!(
        "You are an expert Python programmer, and here is your task:\n{text}\nYour code should pass these tests:\n{}\n{}\n{}",
        t(0),
        t(1),
        t(2)
    )
}

/// The prompt with the first `k` exemplars (at most 3), before rendering: each exemplar's
/// `doc_to_text` as the question and "{code}\n```" as the answer (after the `gen_prefix`).
pub fn fewshot_prompt(doc: &MbppDoc, k: usize) -> FewShotPrompt {
    let tests: Vec<&str> = doc.test_list.iter().map(String::as_str).collect();
    FewShotPrompt {
        shots: mbpp::EXEMPLARS
            .iter()
            .take(k)
            .map(|(_, text, code, tests)| (doc_to_text(text, tests), format!("{code}\n```")))
            .collect(),
        question: doc_to_text(&doc.text, &tests),
        target_delimiter: "",
        gen_prefix: Some(GEN_PREFIX.to_string()),
        ..FewShotPrompt::default()
    }
}

/// The first match's code of `pattern` in "```" + `completion`, else in the completion with
/// "```python" made "```", else "" (`extract_code_blocks`).
fn first_block(pattern: &Regex, completion: &str) -> String {
    let first = |s: &str| pattern.captures(s).map(|c| c[1].to_string());
    first(&format!("```{completion}"))
        .or_else(|| first(&completion.replace("```python", "```")))
        .unwrap_or_default()
}

/// lm-eval 0.4.13's `extract_code_blocks`, its language-tag quirk included.
pub fn extract_code(completion: &str) -> String {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re =
        RE.get_or_init(|| Regex::new(r"(?s)```(?:\w+)?\n?(.*?)\n?```").expect("constant regex"));
    first_block(re, completion)
}

/// `extract_code_blocks` as lm-eval PR 4091 fixes it: a language tag must end its line.
pub fn extract_code_fixed(completion: &str) -> String {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(r"(?s)```(?:\w+[ \t]*\n)?\n?(.*?)\n?```").expect("constant regex")
    });
    first_block(re, completion)
}

/// The program whose exit status decides the item: the extracted code, then the tests.
pub fn program(doc: &MbppDoc, code: &str) -> String {
    mbpp::program(doc, code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_format() {
        let d = MbppDoc {
            task_id: 11,
            text: "Remove a character.".into(),
            code: String::new(),
            test_list: vec![
                "assert f(1) == 1".into(),
                "assert f(2) == 2".into(),
                "assert f(3) == 3".into(),
            ],
            test_setup_code: String::new(),
        };
        let p = fewshot_prompt(&d, 1);
        let (_, text, code, tests) = mbpp::EXEMPLARS[0];
        assert_eq!(
            p.text(),
            format!(
                "{}\n```python\n{code}\n```\n\nYou are an expert Python programmer, and here is your task:\nRemove a character.\nYour code should pass these tests:\nassert f(1) == 1\nassert f(2) == 2\nassert f(3) == 3\n```python\n",
                doc_to_text(text, &tests)
            )
        );
        let m = p.messages(true);
        let turns: Vec<(&str, &str)> = m
            .iter()
            .map(|m| (m.role.as_str(), m.content.as_str()))
            .collect();
        let answer = format!("\n```python\n{code}\n```");
        assert_eq!(
            turns,
            vec![
                ("user", doc_to_text(text, &tests).as_str()),
                ("assistant", answer.as_str()),
                ("user", p.question.as_str()),
                ("assistant", GEN_PREFIX),
            ]
        );
    }

    #[test]
    fn extraction_as_lm_eval_0_4_13_and_fixed() {
        // Code continuing the prompt's fence: lm-eval takes "def" for a language tag.
        let g = "def f(x):\n    return x\n```\nIt returns x.";
        assert_eq!(extract_code(g), " f(x):\n    return x");
        assert_eq!(extract_code_fixed(g), "def f(x):\n    return x");
        // A first line that is not a word (a comment) survives both.
        let g = "# f\ndef f(x):\n    return x\n```";
        assert_eq!(extract_code(g), "# f\ndef f(x):\n    return x");
        assert_eq!(extract_code_fixed(g), extract_code(g));
        // No closing fence: nothing.
        assert_eq!(extract_code("def f(x):\n    return x\n"), "");
        // A new fence right away: the empty block between the two "```" comes first.
        assert_eq!(extract_code("```python\ndef f(x): pass\n```"), "");
    }
}
