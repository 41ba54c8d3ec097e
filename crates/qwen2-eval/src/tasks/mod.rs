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
pub mod math;
pub mod mbpp;
pub mod mmlu;
pub mod winogrande;

/// One log-likelihood request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub context: String,
    pub continuation: String,
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

/// lm-eval's defaults: `target_delimiter` joins a question and its answer, and
/// `fewshot_delimiter` follows every example.
pub const TARGET_DELIMITER: &str = " ";
pub const FEWSHOT_DELIMITER: &str = "\n\n";

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

    #[test]
    fn capitalize_like_python() {
        assert_eq!(py_capitalize("then, the MAN"), "Then, the man");
        assert_eq!(py_capitalize(""), "");
    }
}
