//! MBPP (Austin et al. 2021), 3-shot, greedy pass@1, as lm-eval's `tasks/mbpp/mbpp.yaml`
//! defines it: the Google prompt "You are an expert Python programmer, and here is your
//! task: {text} Your code should pass these tests:\n\n{test_list[0..3]}\n[BEGIN]\n", the
//! exemplars of the prompt split (task_ids 2, 3 and 4, from lm-eval's `list_fewshot_samples`,
//! `sampler: first_n`) answered with "{code}\n[DONE]" and an empty target delimiter,
//! generation until "[DONE]", and the program `generation + "\n" + tests` run in the sandbox
//! (HF `code_eval`'s `candidate + "\n" + test_case`). Like lm-eval, the problem's
//! `test_setup_code` is not run (one test problem, task 367, has one).

use crate::data::MbppDoc;
use crate::tasks::FewShotPrompt;

/// One exemplar: (task_id, text, code, tests), lm-eval's literals (its `\r\n` kept).
pub type Exemplar = (u64, &'static str, &'static str, [&'static str; 3]);

pub const EXEMPLARS: [Exemplar; 3] = [
    (
        2,
        "Write a function to find the similar elements from the given two tuple lists.",
        "def similar_elements(test_tup1, test_tup2):\r\n  res = tuple(set(test_tup1) & set(test_tup2))\r\n  return (res) ",
        [
            "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)",
            "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)",
            "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)",
        ],
    ),
    (
        3,
        "Write a python function to identify non-prime numbers.",
        "import math\r\ndef is_not_prime(n):\r\n    result = False\r\n    for i in range(2,int(math.sqrt(n)) + 1):\r\n        if n % i == 0:\r\n            result = True\r\n    return result",
        [
            "assert is_not_prime(2) == False",
            "assert is_not_prime(10) == True",
            "assert is_not_prime(35) == True",
        ],
    ),
    (
        4,
        "Write a function to find the largest integers from a given list of numbers using heap queue algorithm.",
        "import heapq as hq\r\ndef heap_queue_largest(nums,n):\r\n  largest_nums = hq.nlargest(n, nums)\r\n  return largest_nums",
        [
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65] ",
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75] ",
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],5)==[85, 75, 65, 58, 35]",
        ],
    ),
];

/// lm-eval's `until`.
pub const STOP: [&str; 1] = ["[DONE]"];

/// lm-eval's `doc_to_text`; it shows the first three tests (Jinja renders a missing one as
/// an empty string).
pub fn doc_to_text(text: &str, tests: &[&str]) -> String {
    let t = |i: usize| tests.get(i).copied().unwrap_or("");
    format!(
        "You are an expert Python programmer, and here is your task: {text} Your code should pass these tests:\n\n{}\n{}\n{}\n[BEGIN]\n",
        t(0),
        t(1),
        t(2)
    )
}

/// The prompt with the first `k` exemplars (at most 3), before rendering: each exemplar's
/// `doc_to_text` as the question and "{code}\n[DONE]" as the answer, target delimiter "".
pub fn fewshot_prompt(doc: &MbppDoc, k: usize) -> FewShotPrompt {
    let tests: Vec<&str> = doc.test_list.iter().map(String::as_str).collect();
    FewShotPrompt {
        shots: EXEMPLARS
            .iter()
            .take(k)
            .map(|(_, text, code, tests)| (doc_to_text(text, tests), format!("{code}\n[DONE]")))
            .collect(),
        question: doc_to_text(&doc.text, &tests),
        target_delimiter: "",
        ..FewShotPrompt::default()
    }
}

/// The plain-text prompt with the first `k` exemplars (at most 3).
pub fn prompt(doc: &MbppDoc, k: usize) -> String {
    fewshot_prompt(doc, k).text()
}

/// The program whose exit status decides the item: the completion, then every test assert.
pub fn program(doc: &MbppDoc, completion: &str) -> String {
    format!("{completion}\n{}\n", doc.test_list.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> MbppDoc {
        MbppDoc {
            task_id: 11,
            text: "Write a python function to remove first and last occurrence of a given character from the string.".into(),
            code: "def remove_Occ(s,ch): \r\n    return s ".into(),
            test_list: vec![
                "assert remove_Occ(\"hello\",\"l\") == \"heo\"".into(),
                "assert remove_Occ(\"abcda\",\"a\") == \"bcd\"".into(),
                "assert remove_Occ(\"PHP\",\"P\") == \"H\"".into(),
            ],
            test_setup_code: String::new(),
        }
    }

    #[test]
    fn prompt_format() {
        let d = doc();
        assert_eq!(
            prompt(&d, 0),
            "You are an expert Python programmer, and here is your task: Write a python function to remove first and last occurrence of a given character from the string. Your code should pass these tests:\n\n\
assert remove_Occ(\"hello\",\"l\") == \"heo\"\nassert remove_Occ(\"abcda\",\"a\") == \"bcd\"\nassert remove_Occ(\"PHP\",\"P\") == \"H\"\n[BEGIN]\n"
        );
        assert_eq!(
            prompt(&d, 1),
            "You are an expert Python programmer, and here is your task: Write a function to find the similar elements from the given two tuple lists. Your code should pass these tests:\n\n\
assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)\nassert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)\nassert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)\n[BEGIN]\n\
def similar_elements(test_tup1, test_tup2):\r\n  res = tuple(set(test_tup1) & set(test_tup2))\r\n  return (res) \n[DONE]\n\n\
You are an expert Python programmer, and here is your task: Write a python function to remove first and last occurrence of a given character from the string. Your code should pass these tests:\n\n\
assert remove_Occ(\"hello\",\"l\") == \"heo\"\nassert remove_Occ(\"abcda\",\"a\") == \"bcd\"\nassert remove_Occ(\"PHP\",\"P\") == \"H\"\n[BEGIN]\n"
        );
        let p3 = prompt(&d, 3);
        assert_eq!(p3.matches("[BEGIN]\n").count(), 4);
        assert_eq!(p3.matches("\n[DONE]\n\n").count(), 3);
        assert_eq!(prompt(&d, 9), p3);
    }

    #[test]
    fn chat_turns_are_lm_evals() {
        // `--chat`: each exemplar is a user turn (its task text ending "[BEGIN]\n") and an
        // assistant turn ("{code}\n[DONE]"); the target delimiter "" only joins them in plain
        // text (one user turn without multiturn). Byte-for-byte against lm-eval in
        // tests/lm_eval_chat_prompts.rs.
        let d = doc();
        let p = fewshot_prompt(&d, 3);
        let m = p.messages(true);
        assert_eq!(m.len(), 7);
        let (_, text, code, tests) = EXEMPLARS[1];
        assert_eq!(
            (m[2].role.as_str(), m[3].role.as_str()),
            ("user", "assistant")
        );
        assert_eq!(m[2].content, doc_to_text(text, &tests));
        assert_eq!(m[3].content, format!("{code}\n[DONE]"));
        assert!(m[6].content.ends_with("[BEGIN]\n"));
        let single = p.messages(false);
        assert_eq!(single.len(), 1);
        assert_eq!(single[0].content, prompt(&d, 3));
    }

    #[test]
    fn chat_style_completions() {
        // Following the assistant turns, a chat completion is the code (often with the
        // exemplars' CRLF line ends), cut before "[DONE]"; the program runs it as written.
        let g = "def remove_Occ(s,ch): \r\n    return s.replace(ch, '', 1)[::-1].replace(ch, '', 1)[::-1]\n";
        let prog = program(&doc(), g);
        assert!(prog.starts_with(g));
        assert_eq!(prog.matches("\nassert remove_Occ(").count(), 3);
        // A markdown-fenced answer is kept verbatim, as lm-eval's `mbpp` keeps it (and fails
        // it); extracting code from fences is what its separate `mbpp_instruct` task does.
        let fenced = "```python\ndef remove_Occ(s,ch):\n    return s\n```\n";
        assert!(program(&doc(), fenced).starts_with("```python\n"));
    }

    #[test]
    fn program_format() {
        assert_eq!(
            program(&doc(), "def remove_Occ(s,ch):\n    return s\n"),
            "def remove_Occ(s,ch):\n    return s\n\nassert remove_Occ(\"hello\",\"l\") == \"heo\"\nassert remove_Occ(\"abcda\",\"a\") == \"bcd\"\nassert remove_Occ(\"PHP\",\"P\") == \"H\"\n"
        );
    }
}
