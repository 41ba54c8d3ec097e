//! Our HellaSwag, ARC-Challenge and Winogrande prompts against lm-evaluation-harness's own,
//! built by lm-eval from the same pulled data (fixtures/eval/lm_eval_prompts.json, made by
//! scripts/fixtures/lm_eval_prompts.py): the full requests of the first two documents and a
//! digest of each of the first 40 (the few-shot draw carries generator state from document to
//! document, so later documents check the port of Python's `random` and lm-eval's sampler).
//! Needs the pulled data (`qwen2 data pull`; scripts/test.sh runs it).

mod common;
use common::data_root;

use qwen2_eval::data::{self, DataDir};
use qwen2_eval::tasks::{self, McItem};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

fn fixture(task: &str) -> Json {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/eval/lm_eval_prompts.json"
    );
    let doc: Json = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    doc["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task"] == task)
        .unwrap_or_else(|| panic!("{task} not in the fixture"))
        .clone()
}

fn digest(item: &McItem) -> String {
    let mut h = Sha256::new();
    for r in &item.requests {
        h.update(r.context.as_bytes());
        h.update([0]);
        h.update(r.continuation.as_bytes());
        h.update([0]);
    }
    data::hex(&h.finalize())
}

fn check(name: &str, items: &[McItem]) {
    let want = fixture(name);
    for (i, w) in want["items"].as_array().unwrap().iter().enumerate() {
        let reqs = w["requests"].as_array().unwrap();
        assert_eq!(items[i].requests.len(), reqs.len(), "{name} item {i}");
        for (j, (got, r)) in items[i].requests.iter().zip(reqs).enumerate() {
            assert_eq!(
                got.context,
                r["context"].as_str().unwrap(),
                "{name} {i}/{j}"
            );
            assert_eq!(
                got.continuation,
                r["continuation"].as_str().unwrap(),
                "{name} {i}/{j}"
            );
        }
    }
    let digests = want["digests"].as_array().unwrap();
    assert!(digests.len() >= 40);
    for (i, d) in digests.iter().enumerate() {
        assert_eq!(digest(&items[i]), d.as_str().unwrap(), "{name} item {i}");
    }
}

#[test]
fn hellaswag_prompts_are_lm_evals() {
    let d = DataDir::new(data_root());
    let f = fixture("hellaswag");
    assert_eq!(
        (f["shots"].as_u64(), f["seed"].as_u64()),
        (Some(10), Some(1234))
    );
    let val = d.hellaswag_val().unwrap();
    let items = tasks::hellaswag::items(&val[..64], &d.hellaswag_train().unwrap(), 10, 1234);
    check("hellaswag", &items);
}

#[test]
fn arc_challenge_prompts_are_lm_evals() {
    let d = DataDir::new(data_root());
    let f = fixture("arc_challenge");
    assert_eq!(
        (f["shots"].as_u64(), f["seed"].as_u64()),
        (Some(25), Some(1234))
    );
    let test = d.arc_challenge_test().unwrap();
    let items = tasks::arc::items(&test[..64], &d.arc_challenge_train().unwrap(), 25, 1234);
    check("arc_challenge", &items);
}

#[test]
fn winogrande_prompts_are_lm_evals() {
    let d = DataDir::new(data_root());
    let f = fixture("winogrande");
    assert_eq!(
        (f["shots"].as_u64(), f["seed"].as_u64()),
        (Some(5), Some(1234))
    );
    let val = d.winogrande_val().unwrap();
    let items =
        tasks::winogrande::items(&val[..64], &d.winogrande_train().unwrap(), 5, 1234).unwrap();
    check("winogrande", &items);
}
