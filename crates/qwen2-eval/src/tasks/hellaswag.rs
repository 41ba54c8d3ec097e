//! HellaSwag, 10-shot, `acc_norm` (lm-eval `tasks/hellaswag/hellaswag.yaml` and `utils.py`):
//! the query is "activity: context", each ending a continuation; examples come from train,
//! drawn by lm-eval's sampler ([`ContextSampler`]).

use std::sync::OnceLock;

use regex::Regex;

use crate::data::HellaswagDoc;
use crate::pyrandom::ContextSampler;
use crate::tasks::{py_capitalize, FewShotPrompt, McItem};

/// lm-eval's `preprocess`: drop WikiHow's bracketed artifacts.
pub fn preprocess(text: &str) -> String {
    static BRACKETS: OnceLock<Regex> = OnceLock::new();
    let re = BRACKETS.get_or_init(|| Regex::new(r"\[.*?\]").expect("constant regex"));
    let t = text.trim().replace(" [title]", ". ");
    re.replace_all(&t, "").replace("  ", " ")
}

/// lm-eval's `process_docs` for one raw row.
pub fn process_doc(
    activity: &str,
    ctx_a: &str,
    ctx_b: &str,
    endings: &[String],
    gold: usize,
) -> HellaswagDoc {
    let ctx = format!("{ctx_a} {}", py_capitalize(ctx_b));
    HellaswagDoc {
        query: preprocess(&format!("{activity}: {ctx}")),
        choices: endings.iter().map(|e| preprocess(e)).collect(),
        gold,
    }
}

pub fn prompt(doc: &HellaswagDoc, shots: &[&HellaswagDoc]) -> FewShotPrompt {
    FewShotPrompt {
        description: String::new(),
        shots: shots
            .iter()
            .map(|ex| (ex.query.clone(), ex.choices[ex.gold].clone()))
            .collect(),
        question: doc.query.clone(),
        ..FewShotPrompt::default()
    }
}

pub fn context(doc: &HellaswagDoc, shots: &[&HellaswagDoc]) -> String {
    prompt(doc, shots).text()
}

/// Items for `val` with `k` examples from `train` each. The yaml sets no `test_split` and
/// no `fewshot_split`, which lm-eval takes as "few-shot split == test split": it draws
/// `k + 1` examples and drops the evaluated document, which (a validation row, with its
/// `split` field) never equals a train row, so the first `k` are kept.
pub fn items(val: &[HellaswagDoc], train: &[HellaswagDoc], k: usize, seed: u64) -> Vec<McItem> {
    let mut sampler = ContextSampler::new(seed);
    let never = |_: usize| false;
    val.iter()
        .enumerate()
        .map(|(i, d)| {
            let shots: Vec<&HellaswagDoc> = sampler
                .sample(train.len(), k, Some(&never))
                .into_iter()
                .map(|j| &train[j])
                .collect();
            McItem::with_choices(i.to_string(), prompt(d, &shots), &d.choices, d.gold)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preprocessing_matches_lm_eval() {
        // Row 0 of the validation split, and a WikiHow row with bracket artifacts.
        let d = process_doc(
            "Roof shingle removal",
            "A man is sitting on a roof.",
            "he",
            &[
                "is using wrap to wrap a pair of skis.".into(),
                "starts pulling up roofing on a roof.".into(),
            ],
            1,
        );
        assert_eq!(
            d.query,
            "Roof shingle removal: A man is sitting on a roof. He"
        );
        assert_eq!(
            preprocess(" Do this [title] Then that [step] ok  "),
            "Do this. Then that ok"
        );
        assert_eq!(preprocess("a [header] b"), "a b");
    }

    #[test]
    fn one_shot_prompt() {
        let ex = HellaswagDoc {
            query: "Cooking: He cuts onions.".into(),
            choices: vec!["He cries.".into(), "x".into()],
            gold: 0,
        };
        let d = HellaswagDoc {
            query: "Roof: A man climbs. He".into(),
            choices: vec!["falls.".into(), "waves at the crowd.".into()],
            gold: 1,
        };
        assert_eq!(
            context(&d, &[&ex]),
            "Cooking: He cuts onions. He cries.\n\nRoof: A man climbs. He"
        );
        let it = &items(&[d], &[ex], 1, 1234)[0];
        assert_eq!(it.requests[1].continuation, " waves at the crowd.");
        assert_eq!(it.choice_chars, vec![6, 19]);
    }
}
