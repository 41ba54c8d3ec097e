//! `qwen2 eval --chart`: redraws the scores chart from results.json files, without a model.

use std::path::PathBuf;
use std::process::Command;

fn qwen2(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_qwen2"))
        .args(args)
        .output()
        .expect("run qwen2")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qwen2-eval-chart-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// (width, height) from a PNG's IHDR chunk, after checking the signature.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

#[test]
fn chart_of_one_and_of_two_runs() {
    let d = tmp("ok");
    let a = d.join("a.json");
    let b = d.join("b.json");
    std::fs::write(
        &a,
        r#"{"model": {"name": "A"}, "date": "2026-11-27", "tasks": {"mmlu": {"primary": "acc",
        "metrics": {"acc": {"value": 0.3, "stderr": 0.05}}}}}"#,
    )
    .unwrap();
    std::fs::write(
        &b,
        r#"{"model": {"name": "B"}, "tasks": {"mmlu": {"primary": "acc",
        "metrics": {"acc": {"value": 0.4, "stderr": 0.05}}}}}"#,
    )
    .unwrap();
    let one = d.join("one.png");
    let o = qwen2(&[
        "eval",
        "--chart",
        a.to_str().unwrap(),
        "--out",
        one.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (w1, _) = png_size(&std::fs::read(&one).unwrap());
    // A folder as --out gets scores.png; two runs make wider groups.
    let o = qwen2(&[
        "eval",
        "--chart",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--out",
        d.join("both").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (w2, _) = png_size(&std::fs::read(d.join("both/scores.png")).unwrap());
    assert!(w2 > w1, "{w2} vs {w1}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn chart_without_tasks_is_a_clear_error() {
    let d = tmp("empty");
    let e = d.join("results.json");
    std::fs::write(&e, r#"{"tasks": {}}"#).unwrap();
    let o = qwen2(&[
        "eval",
        "--chart",
        e.to_str().unwrap(),
        "--out",
        d.join("x.png").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no task results to chart"), "{err}");
    assert!(!d.join("x.png").exists());
    let _ = std::fs::remove_dir_all(&d);
}
