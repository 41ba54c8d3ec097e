//! Winogrande, 5-shot, partial scoring (lm-eval `tasks/winogrande/default.yaml` and
//! `preprocess_winogrande.py`): the sentence up to the blank, filled with each option, is a
//! context; the rest of the sentence is the one continuation scored under each.

use std::sync::Arc;

use crate::data::WinograndeDoc;
use crate::error::{Error, Result};
use crate::pyrandom::ContextSampler;
use crate::tasks::{FewShotPrompt, McItem, Request};

/// (the two partial contexts, the shared target, the gold index).
pub fn split(d: &WinograndeDoc) -> Result<([String; 2], String, usize)> {
    let idx = d.sentence.find('_').ok_or_else(|| {
        Error::Invalid(format!(
            "Winogrande sentence without a blank: {}",
            d.sentence
        ))
    })?;
    let gold = match d.answer.trim() {
        "1" => 0,
        "2" => 1,
        a => {
            return Err(Error::Invalid(format!(
                "Winogrande answer `{a}` is not 1 or 2"
            )))
        }
    };
    let head = &d.sentence[..idx];
    let target = d.sentence[idx + 1..].trim().to_string();
    Ok((
        [
            format!("{head}{}", d.option1),
            format!("{head}{}", d.option2),
        ],
        target,
        gold,
    ))
}

/// The few-shot examples: each example's correct context and its target.
pub fn fewshot_turns(shots: &[&WinograndeDoc]) -> Result<Vec<(String, String)>> {
    shots
        .iter()
        .map(|ex| {
            let (ctx, target, gold) = split(ex)?;
            let [a, b] = ctx;
            Ok((if gold == 0 { a } else { b }, target))
        })
        .collect()
}

/// lm-eval compares documents as dicts: a train row equals a validation row when all four
/// fields do.
fn same_doc(a: &WinograndeDoc, b: &WinograndeDoc) -> bool {
    a.sentence == b.sentence
        && a.option1 == b.option1
        && a.option2 == b.option2
        && a.answer == b.answer
}

/// Items for `val` with `k` examples from `train` each, drawn as lm-eval draws them
/// ([`ContextSampler`]). The yaml sets no `test_split` and no `fewshot_split`, which lm-eval
/// takes as "few-shot split == test split": `k + 1` are drawn and any train row equal to the
/// evaluated one is dropped.
pub fn items(
    val: &[WinograndeDoc],
    train: &[WinograndeDoc],
    k: usize,
    seed: u64,
) -> Result<Vec<McItem>> {
    let mut sampler = ContextSampler::new(seed);
    val.iter()
        .enumerate()
        .map(|(i, d)| {
            let is_eval_doc = |j: usize| same_doc(&train[j], d);
            let shots: Vec<&WinograndeDoc> = sampler
                .sample(train.len(), k, Some(&is_eval_doc))
                .into_iter()
                .map(|j| &train[j])
                .collect();
            let turns = fewshot_turns(&shots)?;
            let (ctx, target, gold) = split(d)?;
            Ok(McItem {
                id: i.to_string(),
                requests: ctx
                    .iter()
                    .map(|c| {
                        let p = FewShotPrompt {
                            description: String::new(),
                            shots: turns.clone(),
                            question: c.clone(),
                            ..FewShotPrompt::default()
                        };
                        Request::new(&Arc::new(p), &target)
                    })
                    .collect(),
                gold,
                choice_chars: ctx.iter().map(|c| c.chars().count()).collect(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(s: &str, a: &str, b: &str, ans: &str) -> WinograndeDoc {
        WinograndeDoc {
            sentence: s.into(),
            option1: a.into(),
            option2: b.into(),
            answer: ans.into(),
        }
    }

    #[test]
    fn partial_contexts_and_shared_target() {
        let ex = doc(
            "The trophy didn't fit in the case because _ was too big.",
            "the trophy",
            "the case",
            "1",
        );
        let d = doc(
            "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
            "Sarah",
            "Maria",
            "2",
        );
        let it = &items(&[d], &[ex], 5, 1234).unwrap()[0];
        let p = "The trophy didn't fit in the case because the trophy was too big.\n\n";
        assert_eq!(
            it.requests[0].context,
            format!("{p}Sarah was a much better surgeon than Maria so Sarah")
        );
        assert_eq!(
            it.requests[1].context,
            format!("{p}Sarah was a much better surgeon than Maria so Maria")
        );
        assert_eq!(it.requests[0].continuation, " always got the easier cases.");
        assert_eq!(it.gold, 1);
        assert!(split(&doc("no blank", "a", "b", "1")).is_err());
        assert!(split(&doc("a _ b", "a", "b", "3")).is_err());
    }
}
