//! MMLU, 5-shot, the answer letter scored (lm-eval `tasks/mmlu/default`: `_default_template_yaml`
//! and `_generate_configs.py`). The examples are the subject's first `k` dev questions
//! (`sampler: first_n`), so every question of a subject shares one prompt prefix.

use std::sync::Arc;

use crate::data::MmluDoc;
use crate::tasks::{FewShotPrompt, McItem, Request};

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

/// The prompt shared by the four choices: description, `shots`, question.
pub fn prompt(doc: &MmluDoc, shots: &[&MmluDoc]) -> FewShotPrompt {
    FewShotPrompt {
        description: description(&doc.subject),
        shots: shots
            .iter()
            .map(|ex| (doc_to_text(ex), LETTERS[ex.answer].to_string()))
            .collect(),
        question: doc_to_text(doc),
        ..FewShotPrompt::default()
    }
}

/// The plain-text context of [`prompt`].
pub fn context(doc: &MmluDoc, shots: &[&MmluDoc]) -> String {
    prompt(doc, shots).text()
}

/// Items for `test` with `k` examples from each subject's `dev` questions; ids are
/// `subject/index within the subject`.
pub fn items(test: &[MmluDoc], dev: &[MmluDoc], k: usize) -> Vec<McItem> {
    let mut counters = std::collections::HashMap::<&str, usize>::new();
    test.iter()
        .map(|d| {
            let shots: Vec<&MmluDoc> = dev
                .iter()
                .filter(|e| e.subject == d.subject)
                .take(k)
                .collect();
            let p = Arc::new(prompt(d, &shots));
            let n = counters.entry(&d.subject).or_default();
            let id = format!("{}/{}", d.subject, n);
            *n += 1;
            McItem {
                id,
                requests: LETTERS.iter().map(|l| Request::new(&p, l)).collect(),
                gold: d.answer,
                choice_chars: vec![1; 4],
            }
        })
        .collect()
}

/// The 57 subtasks of lm-eval's `mmlu` group in the order it runs them: its groups stem,
/// other, social_sciences, humanities (`_mmlu.yaml`), each tag's subjects sorted
/// (`TaskFactory._build_tag`).
pub const LM_EVAL_SUBJECT_ORDER: [&str; 57] = [
    // stem
    "abstract_algebra",
    "anatomy",
    "astronomy",
    "college_biology",
    "college_chemistry",
    "college_computer_science",
    "college_mathematics",
    "college_physics",
    "computer_security",
    "conceptual_physics",
    "electrical_engineering",
    "elementary_mathematics",
    "high_school_biology",
    "high_school_chemistry",
    "high_school_computer_science",
    "high_school_mathematics",
    "high_school_physics",
    "high_school_statistics",
    "machine_learning",
    // other
    "business_ethics",
    "clinical_knowledge",
    "college_medicine",
    "global_facts",
    "human_aging",
    "management",
    "marketing",
    "medical_genetics",
    "miscellaneous",
    "nutrition",
    "professional_accounting",
    "professional_medicine",
    "virology",
    // social_sciences
    "econometrics",
    "high_school_geography",
    "high_school_government_and_politics",
    "high_school_macroeconomics",
    "high_school_microeconomics",
    "high_school_psychology",
    "human_sexuality",
    "professional_psychology",
    "public_relations",
    "security_studies",
    "sociology",
    "us_foreign_policy",
    // humanities
    "formal_logic",
    "high_school_european_history",
    "high_school_us_history",
    "high_school_world_history",
    "international_law",
    "jurisprudence",
    "logical_fallacies",
    "moral_disputes",
    "moral_scenarios",
    "philosophy",
    "prehistory",
    "professional_law",
    "world_religions",
];

/// The first `n` items of each subject, subjects in lm-eval's order: what lm-eval's
/// `--limit n` evaluates on the `mmlu` group (it limits each subtask). Items of a subject
/// lm-eval does not list come last, in data order.
pub fn first_per_subject(items: Vec<McItem>, n: usize) -> Vec<McItem> {
    let rank = |id: &str| {
        let subject = id.rsplit_once('/').map_or(id, |(s, _)| s);
        LM_EVAL_SUBJECT_ORDER
            .iter()
            .position(|s| *s == subject)
            .unwrap_or(LM_EVAL_SUBJECT_ORDER.len())
    };
    let mut taken = std::collections::HashMap::<String, usize>::new();
    let mut kept: Vec<(usize, McItem)> = items
        .into_iter()
        .filter(|it| {
            let subject = it.id.rsplit_once('/').map_or(it.id.as_str(), |(s, _)| s);
            let c = taken.entry(subject.to_string()).or_default();
            *c += 1;
            *c <= n
        })
        .map(|it| (rank(&it.id), it))
        .collect();
    // Stable: within a subject (and among unlisted ones) data order is kept.
    kept.sort_by_key(|(r, _)| *r);
    kept.into_iter().map(|(_, it)| it).collect()
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

    #[test]
    fn lm_eval_order_covers_57_distinct_subjects() {
        let mut s = LM_EVAL_SUBJECT_ORDER.to_vec();
        s.sort_unstable();
        s.dedup();
        assert_eq!(s.len(), 57);
    }

    #[test]
    fn first_two_of_each_subject_in_lm_eval_order() {
        // Test docs in data order (subjects sorted), 3 per subject; one dev example each.
        let mut sorted = LM_EVAL_SUBJECT_ORDER.to_vec();
        sorted.sort_unstable();
        let mk = |subject: &str, q: String| MmluDoc {
            subject: subject.into(),
            question: q,
            choices: vec!["a".into(), "b".into(), "c".into(), "d".into()],
            answer: 0,
        };
        let test: Vec<MmluDoc> = sorted
            .iter()
            .flat_map(|s| (0..3).map(move |i| mk(s, format!("{s} q{i}"))))
            .collect();
        let dev: Vec<MmluDoc> = sorted.iter().map(|s| mk(s, "ex".into())).collect();
        let picked = first_per_subject(items(&test, &dev, 1), 2);
        assert_eq!(picked.len(), 2 * 57);
        let want: Vec<String> = LM_EVAL_SUBJECT_ORDER
            .iter()
            .flat_map(|s| [format!("{s}/0"), format!("{s}/1")])
            .collect();
        let got: Vec<&str> = picked.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(got, want);
        // Stem first (abstract_algebra), humanities last (world_religions).
        assert_eq!(got[0], "abstract_algebra/0");
        assert_eq!(got[113], "world_religions/1");
        assert!(picked[2].requests[0]
            .context
            .ends_with("anatomy q0\nA. a\nB. b\nC. c\nD. d\nAnswer:"));
    }
}
