//! HumanEval, 0-shot, greedy pass@1 (lm-eval `tasks/humaneval/humaneval.yaml`): the prompt is
//! the function's signature and docstring, the completion is cut at the first line that
//! starts a new top-level block, and the program (prompt + completion + the problem's tests +
//! `check(entry_point)`) runs in the sandbox.

use crate::data::HumanEvalDoc;

/// lm-eval's `until`.
pub const STOP: [&str; 5] = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"];

/// The program whose exit status decides the item.
pub fn program(doc: &HumanEvalDoc, completion: &str) -> String {
    format!(
        "{}{}\n{}\ncheck({})\n",
        doc.prompt, completion, doc.test, doc.entry_point
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_format() {
        let d = HumanEvalDoc {
            task_id: "HumanEval/x".into(),
            prompt: "def add(a, b):\n    \"\"\"Sum.\"\"\"\n".into(),
            canonical_solution: "    return a + b\n".into(),
            test: "def check(candidate):\n    assert candidate(1, 2) == 3\n".into(),
            entry_point: "add".into(),
        };
        assert_eq!(
            program(&d, &d.canonical_solution),
            "def add(a, b):\n    \"\"\"Sum.\"\"\"\n    return a + b\n\ndef check(candidate):\n    assert candidate(1, 2) == 3\n\ncheck(add)\n"
        );
    }
}
