//! HumanEval for instruct models, as lm-eval 0.4.13's `humaneval_instruct`
//! (`tasks/humaneval/humaneval_instruct.yaml`, which includes `humaneval.yaml`): 0-shot, the
//! problem asked in a markdown fence, the answer started for the model with a `gen_prefix` that
//! restates the signature and docstring in an open ```python fence, generation until
//! `humaneval`'s stop strings (at most 1024 tokens), and the program built by
//! `utils.build_predictions_instruct`: the problem's prompt + the completion cut at its first
//! "```", then the tests and `check(entry_point)` as in [`super::humaneval`]. Normally used with
//! `--chat`, where the `gen_prefix` is an assistant turn the template leaves open.

use crate::data::HumanEvalDoc;
use crate::tasks::{humaneval, FewShotPrompt};

/// lm-eval's `until` (`humaneval.yaml`'s).
pub const STOP: [&str; 5] = humaneval::STOP;

/// lm-eval's `doc_to_text`.
pub fn doc_to_text(prompt: &str) -> String {
    format!(
        "Write a solution to the following problem and make sure that it passes the tests:\n```python\n{prompt}\n```\n"
    )
}

/// lm-eval's `gen_prefix`.
pub fn gen_prefix(prompt: &str) -> String {
    format!("Here is the completed function:\n```python\n{prompt}\n")
}

pub fn fewshot_prompt(doc: &HumanEvalDoc) -> FewShotPrompt {
    FewShotPrompt {
        question: doc_to_text(&doc.prompt),
        gen_prefix: Some(gen_prefix(&doc.prompt)),
        ..FewShotPrompt::default()
    }
}

/// `build_predictions_instruct`: the problem's prompt, then the completion up to its first
/// "```" (all of it when there is none).
pub fn candidate(doc: &HumanEvalDoc, completion: &str) -> String {
    let code = completion
        .find("```")
        .map_or(completion, |i| &completion[..i]);
    format!("{}{code}", doc.prompt)
}

/// The program whose exit status decides the item: the candidate, "\n", the tests and
/// `check(entry_point)` (HF `code_eval`'s `candidate + "\n" + test`).
pub fn program(doc: &HumanEvalDoc, completion: &str) -> String {
    let cut = &candidate(doc, completion)[doc.prompt.len()..];
    humaneval::program(doc, cut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::humaneval::tests::doc;

    #[test]
    fn prompt_ends_with_the_open_fence() {
        let d = doc();
        let p = fewshot_prompt(&d);
        // The question ends with "\n": no delimiter before the prefix.
        assert_eq!(
            p.text(),
            "Write a solution to the following problem and make sure that it passes the tests:\n```python\ndef add(a, b):\n    \"\"\"Sum.\"\"\"\n\n```\nHere is the completed function:\n```python\ndef add(a, b):\n    \"\"\"Sum.\"\"\"\n\n"
        );
        let m = p.messages(true);
        assert_eq!(m.len(), 2);
        assert_eq!(
            (m[1].role.as_str(), m[1].content.as_str()),
            ("assistant", gen_prefix(&d.prompt).as_str())
        );
        assert_eq!(p.messages(false), m);
    }

    #[test]
    fn completion_is_cut_at_the_closing_fence() {
        let d = doc();
        let fenced = "    return a + b\n```\n\nThis adds.";
        assert_eq!(
            candidate(&d, fenced),
            format!("{}    return a + b\n", d.prompt)
        );
        assert_eq!(
            program(&d, fenced),
            "def add(a, b):\n    \"\"\"Sum.\"\"\"\n    return a + b\n\ndef check(candidate):\n    assert candidate(1, 2) == 3\n\ncheck(add)\n"
        );
        assert_eq!(candidate(&d, "    return a + b\n"), candidate(&d, fenced));
        // A reply that opens a new fence keeps nothing: the prompt alone fails.
        assert_eq!(
            candidate(&d, "```python\ndef add(a, b):\n    return a + b\n```"),
            d.prompt
        );
    }
}
