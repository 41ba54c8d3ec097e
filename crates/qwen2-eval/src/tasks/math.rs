//! MATH (Hendrycks et al.), 4-shot, greedy, as lm-eval's `minerva_math` tasks define it
//! (`tasks/minerva_math/utils.py` and `minerva_math_algebra.yaml`): the four fixed Minerva
//! exemplars as "Problem:\n…\n\nSolution: …", generation until "Problem:", the answer taken
//! from "Final Answer: The final answer is X. I hope it is correct." and normalized with
//! `normalize_final_answer` as lm-eval 0.4.13 has it (the Minerva normalizer of Lewkowycz et al.
//! 2022, appendix D, with 0.4.13's fixes: whole-word unit removal, `\sqrt[3]`, thousands-only
//! commas), ported step for step below and checked against lm-eval's own output in
//! `tests/math_normalize.rs` (fixture from `scripts/fixtures/math_normalize.py`).
//!
//! Equivalence is lm-eval's `is_equiv`: equal non-empty normalized strings, or both parse as
//! LaTeX (sympy's `parse_latex` grammar) with a zero difference; see [`super::math_equiv`].
//! `exact_match` is lm-eval's extraction; `exact_match_boxed` falls back to the last
//! `\boxed{…}` of the generation when there is no "Final Answer" line. (0.4.13 also reports a
//! `math_verify` metric from the `math-verify` package: [`super::math_verify`], per item in run.rs.)
//!
//! The reference answer is lm-eval's `process_docs` target, [`reference_answer`]:
//! `normalize_final_answer(remove_boxed(last_boxed_only_string(solution)))`, recomputed from
//! the solution when the data is loaded. The OLMES dumps' stored `answer` was made by the older
//! normalizer and differs on 87 of the 5000 MATH test problems (e.g. `\le(3,…` for `\left(3,…`).

use std::sync::OnceLock;

use regex::Regex;

use crate::data::MathDoc;
use crate::tasks::FewShotPrompt;

/// lm-eval's `list_fewshot_samples()` (problem, solution), in its order (`sampler: first_n`).
/// The literals are lm-eval's Python ones: `\\` is one backslash, `\n` a newline.
pub const EXEMPLARS: [(&str, &str); 4] = [
    (
        "Find the domain of the expression  $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$.",
        "The expressions inside each square root must be non-negative. Therefore, $x-2 \\ge 0$, so $x\\ge2$, and $5 - x \\ge 0$, so $x \\le 5$. Also, the denominator cannot be equal to zero, so $5-x>0$, which gives $x<5$. Therefore, the domain of the expression is $\\boxed{[2,5)}$.\nFinal Answer: The final answer is $[2,5)$. I hope it is correct.",
    ),
    (
        "If $\\det \\mathbf{A} = 2$ and $\\det \\mathbf{B} = 12,$ then find $\\det (\\mathbf{A} \\mathbf{B}).$",
        "We have that $\\det (\\mathbf{A} \\mathbf{B}) = (\\det \\mathbf{A})(\\det \\mathbf{B}) = (2)(12) = \\boxed{24}.$\nFinal Answer: The final answer is $24$. I hope it is correct.",
    ),
    (
        "Terrell usually lifts two 20-pound weights 12 times. If he uses two 15-pound weights instead, how many times must Terrell lift them in order to lift the same total weight?",
        "If Terrell lifts two 20-pound weights 12 times, he lifts a total of $2\\cdot 12\\cdot20=480$ pounds of weight.  If he lifts two 15-pound weights instead for $n$ times, he will lift a total of $2\\cdot15\\cdot n=30n$ pounds of weight.  Equating this to 480 pounds, we can solve for $n$:\n\\begin{align*}\n30n&=480\\\\\n\\Rightarrow\\qquad n&=480/30=\\boxed{16}\n\\end{align*}\nFinal Answer: The final answer is $16$. I hope it is correct.",
    ),
    (
        "If the system of equations\n\n\\begin{align*}\n6x-4y&=a,\\\\\n6y-9x &=b.\n\\end{align*}has a solution $(x, y)$ where $x$ and $y$ are both nonzero,\nfind $\\frac{a}{b},$ assuming $b$ is nonzero.",
        "If we multiply the first equation by $-\\frac{3}{2}$, we obtain\n\n$$6y-9x=-\\frac{3}{2}a.$$Since we also know that $6y-9x=b$, we have\n\n$$-\\frac{3}{2}a=b\\Rightarrow\\frac{a}{b}=\\boxed{-\\frac{2}{3}}.$$\nFinal Answer: The final answer is $-\\frac{2}{3}$. I hope it is correct.",
    ),
];

/// lm-eval's `until`.
pub const STOP: [&str; 1] = ["Problem:"];

pub fn doc_to_text(problem: &str) -> String {
    format!("Problem:\n{problem}\n\nSolution:")
}

/// The prompt with the first `k` exemplars (at most 4), before rendering: each exemplar's
/// `doc_to_text` as the question and its whole solution as the answer (lm-eval's
/// `doc_to_target` for few-shot samples), target delimiter " ".
pub fn fewshot_prompt(doc: &MathDoc, k: usize) -> FewShotPrompt {
    FewShotPrompt {
        shots: EXEMPLARS
            .iter()
            .take(k)
            .map(|(p, sol)| (doc_to_text(p), sol.to_string()))
            .collect(),
        question: doc_to_text(&doc.problem),
        ..FewShotPrompt::default()
    }
}

/// The plain-text prompt with the first `k` exemplars (at most 4).
pub fn prompt(doc: &MathDoc, k: usize) -> String {
    fewshot_prompt(doc, k).text()
}

/// lm-eval's `get_unnormalized_answer`: what follows "Final Answer: The final answer is", up
/// to ". I hope it is correct." (the dots are regex wildcards there, kept as such), on one
/// line; the closing phrase is appended first so a generation cut before it still counts.
pub fn extract_final_answer(text: &str) -> Option<String> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(r"Final Answer: The final answer is(.*?). I hope it is correct.")
            .expect("constant regex")
    });
    let text = format!("{text}I hope it is correct.");
    re.captures(&text).map(|c| c[1].trim().to_string())
}

/// lm-eval's `last_boxed_only_string`: the last `\boxed{…}` (or `\fbox{…}`) with balanced
/// braces, or the text after the last `\boxed ` up to a `$`.
pub fn last_boxed_only_string(s: &str) -> Option<&str> {
    let mut idx = s.rfind("\\boxed");
    if s.contains("\\boxed ") {
        let tail = s.rsplit("\\boxed ").next().unwrap_or("");
        let end = tail.find('$').unwrap_or(tail.len());
        // "\\boxed " + tail up to "$": a suffix of `s` shifted back by the marker.
        let start = s.len() - tail.len() - "\\boxed ".len();
        return Some(&s[start..s.len() - tail.len() + end]);
    }
    if idx.is_none() {
        idx = s.rfind("\\fbox");
    }
    let idx = idx?;
    // Braces are ASCII, so walking bytes visits the same braces as Python's characters.
    let mut open = 0i64;
    for (i, b) in s.bytes().enumerate().skip(idx) {
        if b == b'{' {
            open += 1;
        }
        if b == b'}' {
            open -= 1;
            if open == 0 {
                return Some(&s[idx..=i]);
            }
        }
    }
    None
}

/// lm-eval's `remove_boxed`; `None` where its assertions would fail (e.g. `\fbox{…}`).
pub fn remove_boxed(s: &str) -> Option<&str> {
    if s.contains("\\boxed ") {
        return s.strip_prefix("\\boxed ");
    }
    s.strip_prefix("\\boxed{")?.strip_suffix('}')
}

/// The fallback: the content of the last `\boxed{…}` of a text.
pub fn extract_boxed(text: &str) -> Option<String> {
    last_boxed_only_string(text)
        .and_then(remove_boxed)
        .map(str::to_string)
}

pub const SUBSTITUTIONS: [(&str, &str); 10] = [
    ("an ", ""),
    ("a ", ""),
    (".$", "$"),
    ("\\$", ""),
    (r"\ ", ""),
    (" ", ""),
    ("mbox", "text"),
    (",\\text{and}", ","),
    ("\\text{and}", ","),
    ("\\text{m}", "\\text{}"),
];

pub const REMOVED_EXPRESSIONS: [&str; 42] = [
    "square",
    "ways",
    "integers",
    "dollars",
    "mph",
    "inches",
    "ft",
    "hours",
    "km",
    "units",
    "\\ldots",
    "sue",
    "points",
    "feet",
    "minutes",
    "digits",
    "cents",
    "degrees",
    "cm",
    "gm",
    "pounds",
    "meters",
    "meals",
    "edges",
    "students",
    "childrentickets",
    "multiples",
    "\\text{s}",
    "\\text{.}",
    "\\text{\ns}",
    "\\text{}^2",
    "\\text{}^3",
    "\\text{\n}",
    "\\text{}",
    r"\mathrm{th}",
    r"^\circ",
    r"^{\circ}",
    r"\;",
    r",\!",
    "{,}",
    "\"",
    "\\dots",
];

/// The regex steps of `normalize_final_answer`, as (pattern, replacement) with Python's
/// `\\N` group references written as `${N}` and a literal `$` as `$$`. Python's lookarounds
/// are rewritten without them, matching the same strings.
const REGEX_STEPS: [(&str, &str); 8] = [
    // "Extract answer that is in LaTeX math, is bold, is surrounded by a box": the content of
    // the first $…$ on each line.
    (r"(.*?)(\$)(.*?)(\$)(.*)", "$$${3}$$"),
    (r"(\\text\{)(.*?)(\})", "${2}"),
    (r"(\\textbf\{)(.*?)(\})", "${2}"),
    (r"(\\overline\{)(.*?)(\})", "${2}"),
    (r"(\\boxed\{)(.*)(\})", "${2}"),
    // Shorthand TeX: \fracab -> \frac{a}{b}.
    (r"(frac)([^{])(.)", "frac{${2}}{${3}}"),
    // \sqrt[3]a -> \sqrt[3]{a} (Python's `\w`, Unicode letters, numbers and `_`).
    (r"(sqrt)(\[[^\]]*\])([\p{L}\p{N}_])", "${1}${2}{${3}}"),
    // \sqrta -> \sqrt{a}, never an indexed root: Python's `(sqrt)(?!\[)([^{])`.
    (r"(sqrt)([^{\[])", "sqrt{${2}}"),
];

/// lm-eval 0.4.13's `normalize_final_answer`, step for step. This is the newer version (unit
/// words removed only as whole words or outside LaTeX command names, so `\left` and `\infty`
/// survive; `\sqrt[3]` kept; commas dropped only as thousands separators); the OLMES dumps'
/// stored `answer` follows the older one.
pub fn normalize_final_answer(answer: &str) -> String {
    static RES: OnceLock<(Vec<(Regex, &'static str)>, Regex)> = OnceLock::new();
    let (steps, thousands) = RES.get_or_init(|| {
        let steps = REGEX_STEPS
            .iter()
            .map(|(p, r)| (Regex::new(p).expect("constant regex"), *r))
            .collect();
        // `re.fullmatch(r"-?\d{1,3}(,\d{3})+", …)`; `\d` is Unicode Nd in both engines.
        let thousands = Regex::new(r"\A-?\d{1,3}(?:,\d{3})+\z").expect("constant regex");
        (steps, thousands)
    });
    // `split("=")[-1]`.
    let mut a = answer.rsplit('=').next().unwrap_or("").to_string();
    // Unit words while whitespace still delimits them: `re.sub(rf"(?<!\\)\b{expr}\b", "", …)`.
    for expr in REMOVED_EXPRESSIONS {
        if py_isalpha(expr) {
            a = remove_whole_word(&a, expr);
        }
    }
    for (before, after) in SUBSTITUTIONS {
        a = a.replace(before, after);
    }
    // Units glued to their neighbours once the spaces are gone, outside `\command` names
    // (`re.split(r"(\\[a-zA-Z]+)", …)`, replacing in the even segments); the rest verbatim.
    for expr in REMOVED_EXPRESSIONS {
        a = if py_isalpha(expr) {
            remove_outside_commands(&a, expr)
        } else {
            a.replace(expr, "")
        };
    }
    for (re, rep) in steps {
        a = re.replace_all(&a, *rep).into_owned();
    }
    a = a.replace('$', "");
    // 100,000 -> 100000, but a tuple like 0,1 stays.
    if thousands.is_match(&a) {
        a = a.replace(',', "");
    }
    a
}

/// Python's `str.isalpha()` for the (ASCII) removed expressions.
fn py_isalpha(s: &str) -> bool {
    !s.is_empty() && s.chars().all(char::is_alphabetic)
}

/// A character of Python's Unicode `\w`: letters, numbers, `_` (str.isalnum() or "_").
fn py_word_char(c: char) -> bool {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"\A[\p{L}\p{N}_]\z").expect("constant regex"));
    let mut buf = [0u8; 4];
    re.is_match(c.encode_utf8(&mut buf))
}

/// `re.sub(rf"(?<!\\)\b{word}\b", "", s)` for a word of ASCII letters: each occurrence not
/// preceded by a word character or a backslash and not followed by a word character goes.
fn remove_whole_word(s: &str, word: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let (mut kept, mut from) = (0, 0);
    while let Some(off) = s[from..].find(word) {
        let i = from + off;
        let end = i + word.len();
        let before_ok = s[..i]
            .chars()
            .next_back()
            .is_none_or(|c| c != '\\' && !py_word_char(c));
        let after_ok = s[end..].chars().next().is_none_or(|c| !py_word_char(c));
        if before_ok && after_ok {
            out.push_str(&s[kept..i]);
            kept = end;
            from = end;
        } else {
            // `word` starts with an ASCII letter, so `i + 1` is a char boundary.
            from = i + 1;
        }
    }
    out.push_str(&s[kept..]);
    out
}

/// `word` removed from the text between LaTeX command names (`\` + ASCII letters, longest
/// run, leftmost first, as `re.split(r"(\\[a-zA-Z]+)", s)` finds them); the names kept whole.
fn remove_outside_commands(s: &str, word: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let (mut seg, mut i) = (0, 0);
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1).is_some_and(u8::is_ascii_alphabetic) {
            let mut j = i + 1;
            while b.get(j).is_some_and(u8::is_ascii_alphabetic) {
                j += 1;
            }
            // ASCII bytes only delimit, so both cuts are char boundaries.
            out.push_str(&s[seg..i].replace(word, ""));
            out.push_str(&s[i..j]);
            seg = j;
            i = j;
        } else {
            i += 1;
        }
    }
    out.push_str(&s[seg..].replace(word, ""));
    out
}

/// lm-eval's `process_docs` target:
/// `normalize_final_answer(remove_boxed(last_boxed_only_string(solution)))`; `None` where
/// lm-eval would raise (no `\boxed` answer).
pub fn reference_answer(solution: &str) -> Option<String> {
    last_boxed_only_string(solution)
        .and_then(remove_boxed)
        .map(normalize_final_answer)
}

/// lm-eval's `is_equiv` (see [`super::math_equiv::is_equiv`]).
pub fn is_equiv(normalized: &str, target: &str) -> bool {
    super::math_equiv::is_equiv(normalized, target)
}

/// One generation judged both ways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    /// The normalized "Final Answer", if there is one (lm-eval's `exact_match`).
    pub answer: Option<String>,
    /// The normalized answer with the `\boxed{}` fallback.
    pub answer_boxed: Option<String>,
    pub exact_match: bool,
    pub exact_match_boxed: bool,
    /// Scored right by mathematical equivalence, the strings differing (e.g. `0.5` for
    /// `\frac{1}{2}`).
    pub by_equivalence: bool,
    pub by_equivalence_boxed: bool,
}

pub fn judge(generated: &str, target: &str) -> Judgement {
    let answer = extract_final_answer(generated).map(|a| normalize_final_answer(&a));
    let answer_boxed = answer
        .clone()
        .or_else(|| extract_boxed(generated).map(|a| normalize_final_answer(&a)));
    let ok = |a: &Option<String>| a.as_deref().is_some_and(|a| is_equiv(a, target));
    let (exact_match, exact_match_boxed) = (ok(&answer), ok(&answer_boxed));
    let differs = |a: &Option<String>| a.as_deref() != Some(target);
    Judgement {
        exact_match,
        exact_match_boxed,
        by_equivalence: exact_match && differs(&answer),
        by_equivalence_boxed: exact_match_boxed && differs(&answer_boxed),
        answer,
        answer_boxed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> String {
        normalize_final_answer(s)
    }

    // Expected values were checked against lm-eval's Python `normalize_final_answer`.

    #[test]
    fn takes_the_last_side_of_an_equation() {
        assert_eq!(n("x = 5"), "5");
        assert_eq!(n("a=b=\\frac{1}{2}"), "\\frac{1}{2}");
    }

    #[test]
    fn substitutions() {
        // "an " and "a " go, even inside words.
        assert_eq!(n("an apple"), "apple");
        assert_eq!(n("banana split"), "banansplit");
        assert_eq!(n("a 5"), "5");
        // ".$" -> "$", then "\$" and spaces vanish.
        assert_eq!(n("$5.$"), "5");
        assert_eq!(n("\\$5"), "5");
        assert_eq!(n("1\\ 000"), "1000");
        assert_eq!(n("1 2 3"), "123");
        // mbox -> text, then \text{…} is unwrapped.
        assert_eq!(n("\\mbox{yes}"), "yes");
        assert_eq!(n("x,\\text{and}y"), "x,y");
        assert_eq!(n("x\\text{and}y"), "x,y");
        assert_eq!(n("5\\text{m}"), "5");
    }

    #[test]
    fn removed_expressions() {
        assert_eq!(n("5 square units"), "5");
        assert_eq!(n("12 ways"), "12");
        assert_eq!(n("30 dollars"), "30");
        assert_eq!(n("45^\\circ"), "45");
        assert_eq!(n("45^{\\circ}"), "45");
        assert_eq!(n("10 cm"), "10");
        assert_eq!(n("1,\\!000"), "1000");
        assert_eq!(n("1{,}000"), "1000");
        assert_eq!(n("1,2,\\ldots,n"), "1,2,,n");
        assert_eq!(n("1,2,\\dots,n"), "1,2,,n");
        assert_eq!(n("\"yes\""), "yes");
        assert_eq!(n("3\\text{s}"), "3");
        assert_eq!(n("5\\text{\ns}"), "5");
        assert_eq!(n("7\\mathrm{th}"), "7");
        assert_eq!(n("1\\;2"), "12");
        // Units go as whole words, or glued to text outside a command name ("2\\pi cm"),
        // never from inside one ("\\left", "\\infty"); a substring still goes when glued to
        // plain text ("issue").
        assert_eq!(n("issue"), "is");
        assert_eq!(n("2\\pi cm"), "2\\pi");
        assert_eq!(n("10cm"), "10");
        assert_eq!(
            n("\\left(3,\\frac{\\pi}{2}\\right)"),
            "\\left(3,\\frac{\\pi}{2}\\right)"
        );
        assert_eq!(n("[0,\\infty)"), "[0,\\infty)");
    }

    #[test]
    fn latex_wrappers() {
        // The first $…$ of the line wins.
        assert_eq!(n("The answer is $42$ apples"), "42");
        assert_eq!(n("\\text{(C)}"), "(C)");
        assert_eq!(n("\\textbf{7}"), "7");
        assert_eq!(n("0.\\overline{3}"), "0.3");
        assert_eq!(n("\\boxed{\\frac{1}{2}}"), "\\frac{1}{2}");
        assert_eq!(n("\\text{Evelyn}"), "Evelyn");
        // One match per line: the first $…$ of each.
        assert_eq!(n("$1$ and $2$\n$3$ x"), "1\n3");
    }

    #[test]
    fn shorthand_tex() {
        assert_eq!(n("\\frac12"), "\\frac{1}{2}");
        assert_eq!(n("\\frac123"), "\\frac{1}{2}3");
        assert_eq!(n("\\frac{12}{3}"), "\\frac{12}{3}");
        assert_eq!(n("\\sqrt2"), "\\sqrt{2}");
        assert_eq!(n("\\sqrt23"), "\\sqrt{2}3");
        assert_eq!(n("\\sqrt{23}"), "\\sqrt{23}");
        assert_eq!(n("2\\sqrt3/\\frac34"), "2\\sqrt{3}/\\frac{3}{4}");
        // Indexed roots: the argument is braced, the index left alone.
        assert_eq!(n("\\sqrt[3]2"), "\\sqrt[3]{2}");
        assert_eq!(n("\\sqrt[3]{8}"), "\\sqrt[3]{8}");
    }

    #[test]
    fn thousands_commas() {
        assert_eq!(n("100,000"), "100000");
        assert_eq!(n("-1,000"), "-1000");
        assert_eq!(n("1,000,000"), "1000000");
        // Only real thousands groups: tuples and lists keep their commas.
        assert_eq!(n("1,2"), "1,2");
        assert_eq!(n("4,6,14,15"), "4,6,14,15");
        assert_eq!(n("1,0000"), "1,0000");
        assert_eq!(n("(1,2)"), "(1,2)");
        assert_eq!(n(""), "");
    }

    #[test]
    fn final_answer_extraction() {
        let g =
            " We add. $2+2=4$.\nFinal Answer: The final answer is $4$. I hope it is correct.\n\n";
        assert_eq!(extract_final_answer(g).as_deref(), Some("$4$"));
        // Cut before the closing phrase: the appended phrase completes it.
        assert_eq!(
            extract_final_answer("Final Answer: The final answer is 7. ").as_deref(),
            Some("7")
        );
        // The lazy group stops at the first ". I hope it is correct." (any char for the dots).
        assert_eq!(
            extract_final_answer(
                "Final Answer: The final answer is $\\frac{1}{2}$! I hope it is correct."
            )
            .as_deref(),
            Some("$\\frac{1}{2}$")
        );
        assert_eq!(extract_final_answer("The answer is 4."), None);
        // Only within one line.
        assert_eq!(
            extract_final_answer("Final Answer: The final answer is\n4. I hope it is correct."),
            None
        );
    }

    #[test]
    fn boxed_extraction() {
        assert_eq!(
            last_boxed_only_string("so $\\boxed{1}$ and $\\boxed{\\frac{2}{3}}$."),
            Some("\\boxed{\\frac{2}{3}}")
        );
        assert_eq!(last_boxed_only_string("\\boxed 5$ more"), Some("\\boxed 5"));
        assert_eq!(last_boxed_only_string("\\fbox{7}"), Some("\\fbox{7}"));
        assert_eq!(last_boxed_only_string("\\boxed{unclosed"), None);
        assert_eq!(last_boxed_only_string("nothing"), None);
        assert_eq!(remove_boxed("\\boxed{\\frac{2}{3}}"), Some("\\frac{2}{3}"));
        assert_eq!(remove_boxed("\\boxed 5"), Some("5"));
        assert_eq!(remove_boxed("\\fbox{7}"), None);
        assert_eq!(
            extract_boxed("é $\\boxed{[2,5)}$").as_deref(),
            Some("[2,5)")
        );
    }

    #[test]
    fn judging() {
        let j = judge(
            " So $x=\\boxed{16}$.\nFinal Answer: The final answer is $16$. I hope it is correct.\n\n",
            "16",
        );
        assert!(j.exact_match && j.exact_match_boxed, "{j:?}");
        // No "Final Answer" line: only the boxed fallback scores it.
        let j = judge(" Thus the answer is $\\boxed{\\frac12}$.", "\\frac{1}{2}");
        assert_eq!(j.answer, None);
        assert_eq!(j.answer_boxed.as_deref(), Some("\\frac{1}{2}"));
        assert!(!j.exact_match && j.exact_match_boxed);
        let j = judge(
            "Final Answer: The final answer is $15$. I hope it is correct.",
            "16",
        );
        assert!(!j.exact_match && !j.exact_match_boxed);
        // Different strings, equal values: lm-eval's sympy check scores it.
        let j = judge(
            "Final Answer: The final answer is $0.5$. I hope it is correct.",
            "\\frac{1}{2}",
        );
        assert!(j.exact_match && j.by_equivalence, "{j:?}");
        let j = judge(" so $\\boxed{16}$.", "16");
        assert!(j.exact_match_boxed && !j.by_equivalence_boxed, "{j:?}");
        assert!(!judge("no answer", "16").exact_match_boxed);
    }

    fn doc() -> MathDoc {
        MathDoc {
            problem: "What is $1+1$?".into(),
            solution: "$\\boxed{2}$".into(),
            answer: "2".into(),
            level: serde_json::Value::Null,
            kind: serde_json::Value::Null,
        }
    }

    #[test]
    fn chat_turns_are_lm_evals() {
        // `--chat`: each exemplar is a user turn (its "Problem:…Solution:") and an assistant
        // turn (the whole solution, no delimiter), as lm-eval's `build_qa_turn` makes them;
        // without multiturn, the plain prompt is one user turn. (Byte-for-byte against lm-eval
        // in tests/lm_eval_chat_prompts.rs.)
        let p = fewshot_prompt(&doc(), 2);
        let m = p.messages(true);
        let roles: Vec<&str> = m.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["user", "assistant", "user", "assistant", "user"]);
        assert_eq!(m[0].content, doc_to_text(EXEMPLARS[0].0));
        assert_eq!(m[1].content, EXEMPLARS[0].1);
        assert_eq!(m[4].content, "Problem:\nWhat is $1+1$?\n\nSolution:");
        let single = p.messages(false);
        assert_eq!(single.len(), 1);
        assert_eq!(single[0].content, prompt(&doc(), 2));
    }

    #[test]
    fn judging_chat_style_outputs() {
        // lm-eval's `process_results` gives the same `exact_match` verdicts on these texts.
        // Under a chat template the answer starts the assistant turn (no leading space) and
        // instruct models write display math and markdown; generation ends at the eos id
        // (`<|im_end|>`, not in the text) or is cut before "Problem:".
        let g = "To find the vertical asymptotes, we factor the denominator:\n\\[\nx^2+x-6=(x-2)(x+3)\n\\]\nSo there are $\\boxed{2}$ vertical asymptotes.\nFinal Answer: The final answer is $2$. I hope it is correct.";
        let j = judge(g, "2");
        assert_eq!(j.answer.as_deref(), Some("2"));
        assert!(j.exact_match && j.exact_match_boxed, "{j:?}");
        // A display-math box and no "Final Answer" line: only the boxed fallback finds it.
        let g = "The answer is:\n\\[\n\\boxed{\\frac{1}{2}}\n\\]";
        let j = judge(g, "\\frac{1}{2}");
        assert_eq!(j.answer, None);
        assert!(!j.exact_match && j.exact_match_boxed, "{j:?}");
        // Markdown bold breaks lm-eval's "Final Answer: The final answer is" regex (so it
        // breaks ours); the box still counts for exact_match_boxed.
        let g = "**Final Answer:** The final answer is $\\boxed{16}$. I hope it is correct.";
        let j = judge(g, "16");
        assert_eq!(extract_final_answer(g), None);
        assert!(!j.exact_match && j.exact_match_boxed, "{j:?}");
        // An answer wrapped in \( \) instead of $ $ is not unwrapped by the normalizer and
        // does not parse, so lm-eval scores it wrong; so do we.
        let g = "Final Answer: The final answer is \\(-\\frac{2}{3}\\). I hope it is correct.";
        let j = judge(g, "-\\frac{2}{3}");
        assert_eq!(j.answer.as_deref(), Some("\\(-\\frac{2}{3}\\)"));
        assert!(!j.exact_match, "{j:?}");
    }

    #[test]
    fn prompt_format() {
        let d = doc();
        assert_eq!(prompt(&d, 0), "Problem:\nWhat is $1+1$?\n\nSolution:");
        assert_eq!(
            prompt(&d, 1),
            r"Problem:
Find the domain of the expression  $\frac{\sqrt{x-2}}{\sqrt{5-x}}$.

Solution: The expressions inside each square root must be non-negative. Therefore, $x-2 \ge 0$, so $x\ge2$, and $5 - x \ge 0$, so $x \le 5$. Also, the denominator cannot be equal to zero, so $5-x>0$, which gives $x<5$. Therefore, the domain of the expression is $\boxed{[2,5)}$.
Final Answer: The final answer is $[2,5)$. I hope it is correct.

Problem:
What is $1+1$?

Solution:"
        );
        let p4 = prompt(&d, 4);
        assert_eq!(p4.matches("Problem:\n").count(), 5);
        assert_eq!(p4.matches("\n\nSolution: ").count(), 4);
        // The exemplars' own answers normalize to what their "Final Answer" lines say.
        for (_, sol) in EXEMPLARS {
            let boxed = extract_boxed(sol).map(|b| normalize_final_answer(&b));
            let fin = extract_final_answer(sol).map(|b| normalize_final_answer(&b));
            assert_eq!(boxed, fin, "{sol}");
        }
    }
}
