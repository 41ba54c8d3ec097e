//! HumanEval, 0-shot, greedy pass@1 (lm-eval `tasks/humaneval/humaneval.yaml`): the prompt is
//! the function's signature and docstring, the completion is cut at the first line that
//! starts a new top-level block, and the program (prompt + completion + the problem's tests +
//! `check(entry_point)`) runs in the sandbox.

use crate::data::HumanEvalDoc;
use crate::tasks::FewShotPrompt;

/// lm-eval's `until`.
pub const STOP: [&str; 5] = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"];

/// The prompt: the problem's `prompt` as the only question (0-shot, no description), so
/// under `--chat` one user turn after the template's default system message, the same with
/// and without `--fewshot-as-multiturn`, as lm-eval renders `humaneval`.
pub fn fewshot_prompt(doc: &HumanEvalDoc) -> FewShotPrompt {
    FewShotPrompt::single(doc.prompt.clone())
}

/// The program whose exit status decides the item.
pub fn program(doc: &HumanEvalDoc, completion: &str) -> String {
    format!(
        "{}{}\n{}\ncheck({})\n",
        doc.prompt, completion, doc.test, doc.entry_point
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A one-assert problem, shared with `humaneval_instruct`'s tests.
    pub(crate) fn doc() -> HumanEvalDoc {
        HumanEvalDoc {
            task_id: "HumanEval/x".into(),
            prompt: "def add(a, b):\n    \"\"\"Sum.\"\"\"\n".into(),
            canonical_solution: "    return a + b\n".into(),
            test: "def check(candidate):\n    assert candidate(1, 2) == 3\n".into(),
            entry_point: "add".into(),
        }
    }

    #[test]
    fn chat_prompt_is_one_user_turn() {
        let d = doc();
        for multiturn in [true, false] {
            let m = fewshot_prompt(&d).messages(multiturn);
            assert_eq!(m.len(), 1);
            assert_eq!(
                (m[0].role.as_str(), m[0].content.as_str()),
                ("user", d.prompt.as_str())
            );
        }
    }

    #[test]
    fn chat_style_completions() {
        // The completion is appended to the prompt as written (lm-eval's `build_predictions`),
        // so a chat answer that continues the body works, and one that restates the function in
        // a markdown fence does not: the stop "\ndef" cuts it after the fence line, as in
        // lm-eval's `humaneval` (its `humaneval_instruct` variant is the one that handles fences).
        let d = doc();
        assert!(program(&d, "    return a + b\n").contains("\"\"\"Sum.\"\"\"\n    return a + b\n"));
        let reply = "```python\ndef add(a, b):\n    return a + b\n```";
        let cut = &reply[..reply.find(STOP[1]).unwrap()];
        assert_eq!(cut, "```python");
        assert!(program(&d, cut).contains("\"\"\"Sum.\"\"\"\n```python\n"));
    }

    #[test]
    fn program_format() {
        let d = doc();
        assert_eq!(
            program(&d, &d.canonical_solution),
            "def add(a, b):\n    \"\"\"Sum.\"\"\"\n    return a + b\n\ndef check(candidate):\n    assert candidate(1, 2) == 3\n\ncheck(add)\n"
        );
    }
}
