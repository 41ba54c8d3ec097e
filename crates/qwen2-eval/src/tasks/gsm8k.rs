//! GSM8K, chain-of-thought, greedy (lm-eval `tasks/gsm8k/gsm8k-cot.yaml`): the fixed
//! exemplars of Wei et al. (2022) as "Q: …\nA: … The answer is N.", generation until "Q:",
//! scored by exact match of the extracted number (commas, `$` and a final `.` ignored).
//! The model card's setting is 4-shot: the first four exemplars.

use std::sync::OnceLock;

use regex::Regex;

use crate::data::Gsm8kDoc;
use crate::tasks::FewShotPrompt;

pub const EXEMPLARS: [(&str, &str); 8] = [
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, there will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have been 21 - 15 = 6. The answer is 6."),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5."),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, they had 74 - 35 = 39. The answer is 39."),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did Jason give to Denny?",
     "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. The answer is 8."),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?",
     "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. The answer is 9."),
    ("There were nine computers in the server room. Five more computers were installed each day, from monday to thursday. How many computers are now in the server room?",
     "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers were added. 9 + 20 is 29. The answer is 29."),
    ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf balls did he have at the end of wednesday?",
     "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, he had 35 - 2 = 33 golf balls. The answer is 33."),
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars left. 23 - 15 is 8. The answer is 8."),
];

/// Generation stops at any of these (lm-eval's `until`).
pub const STOP: [&str; 3] = ["Q:", "</s>", "<|im_end|>"];

pub fn doc_to_text(question: &str) -> String {
    format!("Q: {question}\nA:")
}

/// The prompt with the first `k` exemplars (at most 8), before rendering.
pub fn fewshot_prompt(doc: &Gsm8kDoc, k: usize) -> FewShotPrompt {
    FewShotPrompt {
        description: String::new(),
        shots: EXEMPLARS
            .iter()
            .take(k)
            .map(|(q, a)| (doc_to_text(q), a.to_string()))
            .collect(),
        question: doc_to_text(&doc.question),
        ..FewShotPrompt::default()
    }
}

/// The plain-text prompt with the first `k` exemplars (at most 8).
pub fn prompt(doc: &Gsm8kDoc, k: usize) -> String {
    fewshot_prompt(doc, k).text()
}

/// The reference answer: what follows `####`.
pub fn target(doc: &Gsm8kDoc) -> String {
    doc.answer
        .rsplit("####")
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

/// lm-eval's "strict-match" filter: the number after "The answer is".
pub fn extract_strict(text: &str) -> Option<String> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re =
        RE.get_or_init(|| Regex::new(r"The answer is (\-?[0-9\.\,]+).").expect("constant regex"));
    re.captures(text).map(|c| c[1].to_string())
}

/// lm-eval's "flexible-extract" filter: the last number in the text.
pub fn extract_flexible(text: &str) -> Option<String> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"(-?[$0-9.,]{2,})|(-?[0-9]+)").expect("constant regex"));
    re.captures_iter(text)
        .last()
        .and_then(|c| c.get(1).or_else(|| c.get(2)))
        .map(|m| m.as_str().to_string())
}

/// lm-eval's `exact_match` with `ignore_case` and `regexes_to_ignore`
/// [",", "\$", "(?s).*#### ", "\.$"].
pub fn normalize(s: &str) -> String {
    static RES: OnceLock<Vec<Regex>> = OnceLock::new();
    let res = RES.get_or_init(|| {
        [",", r"\$", r"(?s).*#### ", r"\.$"]
            .iter()
            .map(|r| Regex::new(r).expect("constant regex"))
            .collect()
    });
    let mut s = s.to_string();
    for re in res {
        s = re.replace_all(&s, "").into_owned();
    }
    s.to_lowercase()
}

pub fn is_correct(extracted: Option<&str>, target: &str) -> bool {
    extracted.is_some_and(|e| normalize(e) == normalize(target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_format() {
        let d = Gsm8kDoc {
            question: "What is 2+2?".into(),
            answer: "2+2=4\n#### 4".into(),
        };
        let p = prompt(&d, 1);
        assert_eq!(
            p,
            "Q: There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, there will be 21 trees. How many trees did the grove workers plant today?\n\
A: There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have been 21 - 15 = 6. The answer is 6.\n\nQ: What is 2+2?\nA:"
        );
        assert_eq!(target(&d), "4");
        assert_eq!(prompt(&d, 4).matches("\n\nQ: ").count(), 4);
    }

    #[test]
    fn extraction_and_equivalence() {
        let g = " She has 1,234 - 34 = 1,200 left. The answer is 1,200.\n\n";
        assert_eq!(extract_strict(g).as_deref(), Some("1,200"));
        assert!(is_correct(extract_strict(g).as_deref(), "1200"));
        assert_eq!(
            extract_flexible("costs $18 in total.").as_deref(),
            Some("$18")
        );
        assert!(is_correct(extract_flexible("costs $18.").as_deref(), "18"));
        assert_eq!(extract_flexible("5 then 7").as_deref(), Some("7"));
        assert_eq!(extract_strict("no final line 42"), None);
        assert!(!is_correct(None, "42"));
        assert!(!is_correct(Some("-5"), "5"));
        assert!(is_correct(Some("42."), "42"));
    }
}
