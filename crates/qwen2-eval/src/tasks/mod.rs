//! The benchmarks, formatted as lm-evaluation-harness formats them (its task yaml files and
//! `utils.py` are the reference: each module names the file it follows).
//!
//! A log-likelihood task turns each document into an [`McItem`]: one (context, continuation)
//! pair per choice. Most tasks share the context and vary the continuation; Winogrande
//! ("partial scoring") varies the context and shares the continuation. Both go through the
//! same scorer, which reuses the KV cache of whatever prefix two requests share. Few-shot
//! examples are drawn as lm-eval draws them ([`crate::pyrandom::ContextSampler`]).

pub mod arc;
pub mod gsm8k;
pub mod hellaswag;
pub mod humaneval;
pub mod humaneval_instruct;
pub mod math;
pub mod math_equiv;
pub mod math_verify;
pub mod mbpp;
pub mod mbpp_instruct;
pub mod mmlu;
pub mod winogrande;

use std::sync::Arc;

use qwen2_core::qwen2_tokenizer::ChatMessage;

/// One log-likelihood request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The plain-text context (`prompt.text()`), the base-model protocol.
    pub context: String,
    pub continuation: String,
    /// The context before rendering, for `--chat` (shared by the choices of a document).
    pub prompt: Arc<FewShotPrompt>,
}

impl Request {
    /// A request whose continuation follows lm-eval's `target_delimiter` (" ").
    pub fn new(prompt: &Arc<FewShotPrompt>, continuation: &str) -> Request {
        Request {
            context: prompt.text(),
            continuation: format!("{TARGET_DELIMITER}{continuation}"),
            prompt: Arc::clone(prompt),
        }
    }

    /// The continuation under a chat template: lm-eval 0.4.13 drops the target delimiter
    /// when it applies one (`construct_requests`; no log-likelihood task of ours has a
    /// `gen_prefix`).
    pub fn chat_continuation(&self) -> &str {
        self.continuation
            .strip_prefix(TARGET_DELIMITER)
            .unwrap_or(&self.continuation)
    }
}

/// A prompt as lm-eval's `fewshot_context` assembles it before rendering (`build_qa_turn`
/// messages): the task description, the examples as (question, answer) turns, the question
/// asked, and the start of the answer when the task has a `gen_prefix`. Rendered as plain text (base models), or as chat messages for a chat
/// template (`--chat`, lm-eval's `--apply_chat_template`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FewShotPrompt {
    /// lm-eval's `description`; under a chat template it becomes the system message.
    pub description: String,
    pub shots: Vec<(String, String)>,
    pub question: String,
    /// lm-eval's `target_delimiter` between an example's question and answer in plain text
    /// (" ", [`TARGET_DELIMITER`]; MBPP's is ""). Turns do not carry it.
    pub target_delimiter: &'static str,
    /// lm-eval's `gen_prefix`: the start of the answer, written for the model, which continues
    /// it (plain text: appended to the question; chat: an assistant turn the template leaves
    /// open). It also starts every example's answer.
    pub gen_prefix: Option<String>,
}

impl Default for FewShotPrompt {
    fn default() -> FewShotPrompt {
        FewShotPrompt {
            description: String::new(),
            shots: Vec::new(),
            question: String::new(),
            target_delimiter: TARGET_DELIMITER,
            gen_prefix: None,
        }
    }
}

impl FewShotPrompt {
    /// A prompt that is one piece of text (a zero-shot question such as HumanEval's).
    pub fn single(question: impl Into<String>) -> FewShotPrompt {
        FewShotPrompt {
            question: question.into(),
            ..FewShotPrompt::default()
        }
    }

    /// Plain text: description, each example as question + target delimiter + answer +
    /// "\n\n", question, then the `gen_prefix` (after the target delimiter when neither side
    /// of the join is whitespace).
    pub fn text(&self) -> String {
        let mut s = self.description.clone();
        s.push_str(&self.body_text());
        if let Some(g) = &self.gen_prefix {
            if requires_delimiter(&self.question, g) {
                s.push_str(self.target_delimiter);
            }
            s.push_str(g);
        }
        s
    }

    /// The examples and the question as plain text (what lm-eval's `multiturn_to_singleturn`
    /// puts in one user turn).
    fn body_text(&self) -> String {
        let mut s = String::new();
        for (q, a) in &self.shots {
            s.push_str(q);
            s.push_str(self.shot_delimiter(q));
            s.push_str(&self.shot_answer(a));
            s.push_str(FEWSHOT_DELIMITER);
        }
        s.push_str(&self.question);
        s
    }

    /// Between an example's question and answer (`build_qa_turn`): the target delimiter,
    /// except with a `gen_prefix` whose join with the question has whitespace on a side.
    fn shot_delimiter(&self, question: &str) -> &'static str {
        match &self.gen_prefix {
            Some(g) if !requires_delimiter(question, g) => "",
            _ => self.target_delimiter,
        }
    }

    /// An example's answer: after the `gen_prefix`, if any (lm-eval's `maybe_delimit`).
    fn shot_answer(&self, answer: &str) -> String {
        match &self.gen_prefix {
            Some(g) => maybe_delimit(g, answer),
            None => answer.to_string(),
        }
    }

    /// The chat messages lm-eval renders: a system message with the description (if any),
    /// then either each example as a user turn and an assistant turn followed by the question
    /// as a user turn (`multiturn`, lm-eval's `--fewshot_as_multiturn`, its default with
    /// `--apply_chat_template`), or examples and question joined as plain text in one user
    /// turn (`multiturn_to_singleturn`). With a `gen_prefix`, it ends the messages as an
    /// assistant turn for the model to continue ([`crate::run::render_chat`]).
    pub fn messages(&self, multiturn: bool) -> Vec<ChatMessage> {
        let mut m = Vec::new();
        if !self.description.is_empty() {
            m.push(ChatMessage::new("system", self.description.clone()));
        }
        if multiturn {
            for (q, a) in &self.shots {
                m.push(ChatMessage::new("user", q.clone()));
                m.push(ChatMessage::new("assistant", self.shot_answer(a)));
            }
            m.push(ChatMessage::new("user", self.question.clone()));
        } else {
            m.push(ChatMessage::new("user", self.body_text()));
        }
        if let Some(g) = &self.gen_prefix {
            m.push(ChatMessage::new("assistant", g.clone()));
        }
        m
    }
}

/// A multiple-choice document: the model picks the choice whose continuation it finds most
/// likely.
#[derive(Debug, Clone)]
pub struct McItem {
    /// Stable id of the document (for resuming and for the samples file).
    pub id: String,
    pub requests: Vec<Request>,
    pub gold: usize,
    /// lm-eval's `acc_norm` divides each log-likelihood by the length, in characters, of the
    /// choice text (`doc_to_choice`).
    pub choice_chars: Vec<usize>,
}

impl McItem {
    /// A document whose choices are continuations of one prompt (ARC, HellaSwag): a request
    /// per choice, and `acc_norm`'s lengths from the choice texts.
    pub fn with_choices(
        id: String,
        prompt: FewShotPrompt,
        choices: &[String],
        gold: usize,
    ) -> Self {
        let p = Arc::new(prompt);
        McItem {
            id,
            requests: choices.iter().map(|c| Request::new(&p, c)).collect(),
            gold,
            choice_chars: choices.iter().map(|c| c.chars().count()).collect(),
        }
    }
}

/// lm-eval's defaults: `target_delimiter` joins a question and its answer, and
/// `fewshot_delimiter` follows every example.
pub const TARGET_DELIMITER: &str = " ";
pub const FEWSHOT_DELIMITER: &str = "\n\n";

/// lm-eval's `requires_delimiter`: a delimiter joins `prefix` and `suffix` unless one of them
/// has whitespace at the join (or `prefix` is empty).
pub fn requires_delimiter(prefix: &str, suffix: &str) -> bool {
    match (prefix.chars().last(), suffix.chars().next()) {
        (Some(p), Some(s)) => !(p.is_whitespace() || s.is_whitespace()),
        (Some(p), None) => !p.is_whitespace(),
        (None, _) => false,
    }
}

/// lm-eval's `maybe_delimit(prefix, suffix, " ")`: the two joined, with a space between them
/// only when neither has whitespace at the join.
pub fn maybe_delimit(prefix: &str, suffix: &str) -> String {
    if prefix.is_empty() || suffix.is_empty() || !requires_delimiter(prefix, suffix) {
        format!("{prefix}{suffix}")
    } else {
        format!("{prefix} {suffix}")
    }
}

/// Python's `str.capitalize()`: first character upper case, the rest lower case.
pub fn py_capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f
            .to_uppercase()
            .chain(c.flat_map(char::to_lowercase))
            .collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages as (role, content) pairs, and one such pair, for comparisons.
    fn turns(m: Vec<ChatMessage>) -> Vec<(String, String)> {
        m.into_iter().map(|m| (m.role, m.content)).collect()
    }

    fn t(r: &str, c: &str) -> (String, String) {
        (r.to_string(), c.to_string())
    }

    #[test]
    fn prompt_as_text_and_as_chat_turns() {
        let p = FewShotPrompt {
            description: "About X.\n\n".into(),
            shots: vec![("Q1?".into(), "A1".into()), ("Q2?".into(), "A2".into())],
            question: "Q3?".into(),
            ..FewShotPrompt::default()
        };
        assert_eq!(p.text(), "About X.\n\nQ1? A1\n\nQ2? A2\n\nQ3?");
        assert_eq!(
            turns(p.messages(true)),
            vec![
                t("system", "About X.\n\n"),
                t("user", "Q1?"),
                t("assistant", "A1"),
                t("user", "Q2?"),
                t("assistant", "A2"),
                t("user", "Q3?"),
            ]
        );
        assert_eq!(
            turns(p.messages(false)),
            vec![
                t("system", "About X.\n\n"),
                t("user", "Q1? A1\n\nQ2? A2\n\nQ3?")
            ]
        );
        // The target delimiter joins question and answer in plain text only (MBPP's is "").
        let q = FewShotPrompt {
            target_delimiter: "",
            ..p.clone()
        };
        assert_eq!(q.text(), "About X.\n\nQ1?A1\n\nQ2?A2\n\nQ3?");
        assert_eq!(q.messages(true), p.messages(true));
        // No description: no system message (the template adds its default).
        assert_eq!(
            turns(FewShotPrompt::single("Hi").messages(true)),
            vec![t("user", "Hi")]
        );
        let r = Request::new(&Arc::new(p), " padded");
        assert_eq!(r.continuation, "  padded");
        assert_eq!(r.chat_continuation(), " padded");
    }

    #[test]
    fn gen_prefix_joins_as_lm_evals_build_qa_turn() {
        // No whitespace at a join: the target delimiter (plain text), a space in the answers
        // (`maybe_delimit`); the prefix is the open last turn under a chat template.
        let p = FewShotPrompt {
            shots: vec![("Q1?".into(), "A1".into())],
            question: "Q2?".into(),
            gen_prefix: Some("Answer:".into()),
            ..FewShotPrompt::default()
        };
        assert_eq!(p.text(), "Q1? Answer: A1\n\nQ2? Answer:");
        assert_eq!(
            turns(p.messages(true)),
            vec![
                t("user", "Q1?"),
                t("assistant", "Answer: A1"),
                t("user", "Q2?"),
                t("assistant", "Answer:"),
            ]
        );
        assert_eq!(
            turns(p.messages(false)),
            vec![
                t("user", "Q1? Answer: A1\n\nQ2?"),
                t("assistant", "Answer:")
            ]
        );
        // Whitespace on a side: joined as is.
        let q = FewShotPrompt {
            gen_prefix: Some("\n```python\n".into()),
            target_delimiter: "",
            ..p
        };
        assert_eq!(q.text(), "Q1?\n```python\nA1\n\nQ2?\n```python\n");
        assert!(requires_delimiter("a", "b") && !requires_delimiter("", "b"));
        assert!(!requires_delimiter("a ", "b") && !requires_delimiter("a", "\nb"));
        assert_eq!(maybe_delimit("a", "b"), "a b");
        assert_eq!(maybe_delimit("a\n", "b"), "a\nb");
    }

    #[test]
    fn capitalize_like_python() {
        assert_eq!(py_capitalize("then, the MAN"), "Then, the man");
        assert_eq!(py_capitalize(""), "");
    }
}
