//! `--limit-per-subtask N` on MMLU takes what lm-eval's `--limit N` takes on its `mmlu`
//! group: the first N test questions of each of the 57 subjects, subjects in lm-eval's order.
//! Needs the pulled data (`qwen2 data pull`).

mod common;
use common::data_root;

use qwen2_eval::data::DataDir;
use qwen2_eval::tasks::mmlu;

#[test]
fn two_of_each_pulled_subject() {
    let d = DataDir::new(data_root());
    let items = mmlu::items(&d.mmlu("test").unwrap(), &d.mmlu("dev").unwrap(), 5);
    let picked = mmlu::first_per_subject(items, 2);
    let ids: Vec<&str> = picked.iter().map(|i| i.id.as_str()).collect();
    let want: Vec<String> = mmlu::LM_EVAL_SUBJECT_ORDER
        .iter()
        .flat_map(|s| [format!("{s}/0"), format!("{s}/1")])
        .collect();
    // Every pulled subject is one of lm-eval's 57 (none left over at the end).
    assert_eq!(ids, want);
}
