//! MMLU, 5-shot, the answer letter scored (lm-eval `tasks/mmlu/default`: `_default_template_yaml`
//! and `_generate_configs.py`). The examples are the subject's first `k` dev questions
//! (`sampler: first_n`), so every question of a subject shares one prompt prefix.

use crate::data::MmluDoc;
use crate::tasks::{McItem, Request, FEWSHOT_DELIMITER, TARGET_DELIMITER};

pub const LETTERS: [&str; 4] = ["A", "B", "C", "D"];

/// `doc_to_text`.
pub fn doc_to_text(d: &MmluDoc) -> String {
    format!(
        "{}\nA. {}\nB. {}\nC. {}\nD. {}\nAnswer:",
        d.question.trim(),
        d.choices[0],
        d.choices[1],
        d.choices[2],
        d.choices[3]
    )
}

/// The task description that opens every prompt.
pub fn description(subject: &str) -> String {
    format!(
        "The following are multiple choice questions (with answers) about {}.\n\n",
        subject.split('_').collect::<Vec<_>>().join(" ")
    )
}

/// The context shared by the four choices: description, `shots`, question.
pub fn context(doc: &MmluDoc, shots: &[&MmluDoc]) -> String {
    let mut s = description(&doc.subject);
    for ex in shots {
        s.push_str(&doc_to_text(ex));
        s.push_str(TARGET_DELIMITER);
        s.push_str(LETTERS[ex.answer]);
        s.push_str(FEWSHOT_DELIMITER);
    }
    s.push_str(&doc_to_text(doc));
    s
}

/// Items for `test` with `k` examples from each subject's `dev` questions.
pub fn items(test: &[MmluDoc], dev: &[MmluDoc], k: usize) -> Vec<McItem> {
    let mut counters = std::collections::HashMap::<&str, usize>::new();
    test.iter()
        .map(|d| {
            let shots: Vec<&MmluDoc> = dev
                .iter()
                .filter(|e| e.subject == d.subject)
                .take(k)
                .collect();
            let ctx = context(d, &shots);
            let n = counters.entry(&d.subject).or_default();
            let id = format!("{}/{}", d.subject, n);
            *n += 1;
            McItem {
                id,
                requests: LETTERS
                    .iter()
                    .map(|l| Request {
                        context: ctx.clone(),
                        continuation: format!("{TARGET_DELIMITER}{l}"),
                    })
                    .collect(),
                gold: d.answer,
                choice_chars: vec![1; 4],
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(q: &str, c: [&str; 4], a: usize) -> MmluDoc {
        MmluDoc {
            subject: "high_school_physics".into(),
            question: q.into(),
            choices: c.iter().map(|s| s.to_string()).collect(),
            answer: a,
        }
    }

    #[test]
    fn two_shot_prompt_is_lm_eval_format() {
        let e1 = doc("What is 1+1? ", ["1", "2", "3", "4"], 1);
        let e2 = doc("Unit of force?", ["newton", "joule", "watt", "pascal"], 0);
        let q = doc(
            " Speed of light?",
            ["3e8 m/s", "3e6 m/s", "340 m/s", "1 m/s"],
            0,
        );
        let want = "The following are multiple choice questions (with answers) about high school physics.\n\n\
What is 1+1?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n\n\
Unit of force?\nA. newton\nB. joule\nC. watt\nD. pascal\nAnswer: A\n\n\
Speed of light?\nA. 3e8 m/s\nB. 3e6 m/s\nC. 340 m/s\nD. 1 m/s\nAnswer:";
        assert_eq!(context(&q, &[&e1, &e2]), want);
        let it = &items(&[q], &[e1, e2], 5)[0];
        assert_eq!(it.requests.len(), 4);
        assert_eq!(it.requests[2].continuation, " C");
        assert_eq!(it.requests[2].context, want);
        assert_eq!(it.id, "high_school_physics/0");
    }
}
