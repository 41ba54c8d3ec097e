//! Our MATH answer equivalence against lm-eval's own `is_equiv` (sympy `parse_latex` +
//! `simplify`), on the verdicts recorded in fixtures/eval/math_equiv.json by
//! scripts/fixtures/math_equiv.py: hand-picked pairs, and all 5000 MATH test reference answers
//! (whether sympy parses each, and sympy's own LaTeX printing of it compared back to it). The
//! references are the targets `qwen2 eval` scores against, lm-eval 0.4.13's `process_docs`
//! answers recomputed from the solutions (87 differ from the OLMES dumps' stored `answer`;
//! MATH-500's problems are among the 5000).

use qwen2_eval::tasks::math_equiv::{equivalent, is_equiv, parse, Parsed};
use serde_json::Value as Json;

fn fixture() -> Json {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/eval/math_equiv.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json")
}

fn s(v: &Json) -> &str {
    v.as_str().expect("string")
}

#[test]
fn agrees_with_lm_eval_on_the_hand_picked_cases() {
    let doc = fixture();
    let cases = doc["cases"].as_array().expect("cases");
    assert!(cases.len() >= 40);
    let mut wrong = Vec::new();
    for c in cases {
        let (a, b) = (s(&c["candidate"]), s(&c["reference"]));
        let want = c["equiv"].as_bool().expect("bool");
        if is_equiv(a, b) != want {
            wrong.push(format!("is_equiv({a:?}, {b:?}) should be {want}"));
        }
        for (x, key) in [(a, "candidate_parses"), (b, "reference_parses")] {
            let want = c[key].as_bool().expect("bool");
            if parse(x).is_ok() != want {
                wrong.push(format!(
                    "parse({x:?}) should {}succeed",
                    if want { "" } else { "not " }
                ));
            }
        }
    }
    // The documented deviations (see the notes of `math_equiv`), and nothing else.
    let deviations = [
        "is_equiv(\"0.1x+0.2x\", \"0.3x\") should be false",
        "is_equiv(\"\\\\frac{1}{\\\\infty}\", \"0\") should be true",
    ];
    assert_eq!(wrong, deviations, "disagreements with lm-eval");
}

#[test]
fn agrees_with_sympy_on_the_math_test_references() {
    let doc = fixture();
    let refs = doc["references"].as_array().expect("references");
    assert_eq!(refs.len(), 5000);
    assert_eq!(
        doc["references_source"],
        "lm-eval 0.4.13 process_docs target, from the solution"
    );
    assert_eq!(doc["stored_differs"], 87);
    let (mut ours, mut sympy, mut parse_diff) = (0, 0, Vec::new());
    let mut twin_diff = Vec::new();
    for r in refs {
        let a = s(&r["answer"]);
        let want = r["parses"].as_bool().expect("bool");
        let got = parse(a).is_ok();
        ours += usize::from(got);
        sympy += usize::from(want);
        if got != want {
            parse_diff.push(format!("{a:?}: sympy {want}, ours {got}"));
        }
        if let Some(twin) = r["twin"].as_str() {
            let want = r["twin_equiv"].as_bool().expect("bool");
            if is_equiv(twin, a) != want {
                twin_diff.push(format!("is_equiv({twin:?}, {a:?}) should be {want}"));
            }
        }
        // Every reference that parses to an expression without infinities is equivalent to
        // itself without the string shortcut (sympy: simplify(a - a) == 0).
        if let Ok(Parsed::Expr(_)) = parse(a) {
            if !a.contains("infty") {
                assert!(equivalent(a, a), "{a:?} is not equivalent to itself");
            }
        }
    }
    eprintln!("MATH test references that parse: ours {ours}/5000, sympy {sympy}/5000");
    assert!(
        parse_diff.is_empty(),
        "parse disagreements:\n{}",
        parse_diff.join("\n")
    );
    assert!(
        twin_diff.is_empty(),
        "twin disagreements:\n{}",
        twin_diff.join("\n")
    );
}

#[test]
fn agrees_with_lm_eval_on_reference_pairs() {
    let doc = fixture();
    let pairs = doc["pairs"].as_array().expect("pairs");
    let mut wrong = Vec::new();
    let mut equiv = 0;
    for c in pairs {
        let (a, b) = (s(&c["candidate"]), s(&c["reference"]));
        let want = c["equiv"].as_bool().expect("bool");
        equiv += usize::from(want);
        if is_equiv(a, b) != want {
            wrong.push(format!("is_equiv({a:?}, {b:?}) should be {want}"));
        }
    }
    eprintln!(
        "{} reference pairs, {equiv} equivalent for lm-eval",
        pairs.len()
    );
    assert!(wrong.is_empty(), "disagreements:\n{}", wrong.join("\n"));
}
