//! Our port of lm-eval's `math_verify` metric against the real `math-verify` package, on the
//! verdicts recorded in fixtures/eval/math_verify.json by scripts/fixtures/math_verify_cases.py:
//! `verify(parse(solution), parse(prediction))` for real MATH test solutions and
//! generation-like predictions (equivalent forms and wrong answers).

use qwen2_eval::tasks::math_verify::{math_verify, parse};
use serde_json::Value as Json;

/// Cases where we knowingly differ from math-verify, as (case id, reason). None at present:
/// all 1526 cases agree. A new disagreement fails the test until it is fixed or listed here.
const KNOWN_DISAGREEMENTS: &[(&str, &str)] = &[];

/// The ids of the cases we judge differently, printing each.
fn disagreements(cases: &[Json]) -> Vec<String> {
    let mut disagree = Vec::new();
    for c in cases {
        let id = c[0].as_str().expect("id");
        let (gold, pred) = (c[1].as_str().expect("gold"), c[2].as_str().expect("pred"));
        let want = c[3].as_bool().expect("verdict");
        if math_verify(gold, pred) != want {
            disagree.push(id.to_string());
            eprintln!(
                "disagree {id}: want {want}: pred {pred:?}\n  ours: {:?} vs {:?}",
                parse(gold),
                parse(pred)
            );
        }
    }
    disagree
}

fn load(path: &str) -> Vec<Json> {
    let fixture: Json =
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json");
    fixture["cases"].as_array().expect("cases").clone()
}

/// A bigger case set made ad hoc (same format, e.g. every MATH test problem), only reported:
/// `MATH_VERIFY_CASES=/tmp/cases.json cargo test -p qwen2-eval --test math_verify -- --ignored`.
#[test]
#[ignore = "needs MATH_VERIFY_CASES, a case file made with the real package"]
fn report_agreement_on_other_cases() {
    let path = std::env::var("MATH_VERIFY_CASES").expect("MATH_VERIFY_CASES");
    let cases = load(&path);
    let n = disagreements(&cases).len();
    eprintln!(
        "math_verify agreement: {}/{} = {:.2}%",
        cases.len() - n,
        cases.len(),
        100.0 * (cases.len() - n) as f64 / cases.len() as f64
    );
}

#[test]
fn agrees_with_math_verify_package() {
    let cases = load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/eval/math_verify.json"
    ));
    assert!(cases.len() >= 300, "{} cases", cases.len());
    let disagree = disagreements(&cases);
    let agree = cases.len() - disagree.len();
    let rate = agree as f64 / cases.len() as f64;
    eprintln!(
        "math_verify agreement: {agree}/{} = {:.2}%",
        cases.len(),
        100.0 * rate
    );
    let unexpected: Vec<&String> = disagree
        .iter()
        .filter(|id| !KNOWN_DISAGREEMENTS.iter().any(|(k, _)| k == id))
        .collect();
    assert!(
        unexpected.is_empty(),
        "unexpected disagreements: {unexpected:?}"
    );
    let stale: Vec<&str> = KNOWN_DISAGREEMENTS
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| !disagree.iter().any(|d| d == k))
        .collect();
    assert!(
        stale.is_empty(),
        "known disagreements that now agree: {stale:?}"
    );
    assert!(rate >= 0.97, "agreement {rate}");
}
