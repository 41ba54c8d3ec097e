//! ARC-Challenge, 25-shot, `acc_norm` (lm-eval `tasks/arc/arc_easy.yaml`, which
//! arc_challenge includes): "Question: …\nAnswer:" and each choice's text as continuation.

use crate::data::ArcDoc;
use crate::pyrandom::ContextSampler;
use crate::tasks::{FewShotPrompt, McItem};

pub fn doc_to_text(d: &ArcDoc) -> String {
    format!("Question: {}\nAnswer:", d.question)
}

pub fn prompt(doc: &ArcDoc, shots: &[&ArcDoc]) -> FewShotPrompt {
    FewShotPrompt {
        description: String::new(),
        shots: shots
            .iter()
            .map(|ex| (doc_to_text(ex), ex.choices[ex.gold].clone()))
            .collect(),
        question: doc_to_text(doc),
        ..FewShotPrompt::default()
    }
}

pub fn context(doc: &ArcDoc, shots: &[&ArcDoc]) -> String {
    prompt(doc, shots).text()
}

/// Items for `test` with `k` examples from `train` each, drawn as lm-eval draws them
/// ([`ContextSampler`]; the test split is not the few-shot split, so exactly `k`).
pub fn items(test: &[ArcDoc], train: &[ArcDoc], k: usize, seed: u64) -> Vec<McItem> {
    let mut sampler = ContextSampler::new(seed);
    test.iter()
        .map(|d| {
            let shots: Vec<&ArcDoc> = sampler
                .sample(train.len(), k, None)
                .into_iter()
                .map(|j| &train[j])
                .collect();
            McItem::with_choices(d.id.clone(), prompt(d, &shots), &d.choices, d.gold)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shot_prompt() {
        let ex = ArcDoc {
            id: "a".into(),
            question: "Which is a metal?".into(),
            choices: vec!["wood".into(), "iron".into()],
            gold: 1,
        };
        let d = ArcDoc {
            id: "Mercury_1".into(),
            question: "What melts ice?".into(),
            choices: vec!["heat".into(), "cold air".into()],
            gold: 0,
        };
        assert_eq!(
            context(&d, &[&ex]),
            "Question: Which is a metal?\nAnswer: iron\n\nQuestion: What melts ice?\nAnswer:"
        );
        let it = &items(&[d], &[ex], 25, 1)[0];
        assert_eq!(it.requests[1].continuation, " cold air");
        assert_eq!(it.choice_chars, vec![4, 8]);
        assert_eq!(it.id, "Mercury_1");
    }
}
