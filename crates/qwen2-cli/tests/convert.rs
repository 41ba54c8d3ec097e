//! `qwen2 convert` as a user runs it: a tiny transformers checkpoint to GGUF and back, the
//! `logits` of each identical, and clear errors for bad arguments.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn qwen2(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qwen2"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = qwen2(args);
    assert!(
        o.status.success(),
        "qwen2 {args:?} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn err(args: &[&str]) -> String {
    let o = qwen2(args);
    assert!(!o.status.success(), "qwen2 {args:?} should fail");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn npy_f32(path: &Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap();
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    b[10 + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn convert_round_trip_and_errors() {
    let s = Scratch(std::env::temp_dir().join(format!("qwen2-cli-convert-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&s.0);
    std::fs::create_dir_all(&s.0).unwrap();
    let p = |n: &str| s.0.join(n).to_string_lossy().into_owned();
    let tiny = root().join("fixtures/tiny/untied");
    let tiny = tiny.to_str().unwrap();
    let ids = "498,111,436,396,177,362,451,364,430,54,8,0";

    let out = ok(&["convert", tiny, &p("t.gguf"), "--outtype", "f32"]);
    assert!(out.contains("t.gguf"), "{out}");
    let out = ok(&[
        "convert",
        &p("t.gguf"),
        &p("t_hf"),
        "--dtype",
        "f32",
        "--max-shard-size",
        "400KB",
    ]);
    assert!(out.contains("model.safetensors.index.json"), "{out}");
    for (m, f) in [
        (tiny.to_string(), "a.npy"),
        (p("t.gguf"), "b.npy"),
        (p("t_hf"), "c.npy"),
    ] {
        ok(&[
            "logits",
            "-m",
            &m,
            "--exact",
            "--ids",
            ids,
            "--all",
            "--out",
            &p(f),
        ]);
    }
    let a = npy_f32(&s.0.join("a.npy"));
    assert_eq!(a, npy_f32(&s.0.join("b.npy")), "GGUF logits differ");
    assert_eq!(a, npy_f32(&s.0.join("c.npy")), "round-trip logits differ");

    let e = err(&["convert", tiny, &p("q.gguf"), "--outtype", "q4_k"]);
    assert!(
        e.contains("unknown GGUF outtype") && e.contains("q8_0"),
        "{e}"
    );
    let e = err(&["convert", &p("t.gguf"), &p("x"), "--outtype", "q8_0"]);
    assert!(e.contains("--outtype applies"), "{e}");
    let e = err(&["convert", tiny, &p("t.gguf")]);
    assert!(e.contains("--force"), "{e}");
    let e = err(&[
        "convert",
        &root().join("fixtures/tokenizer").to_string_lossy(),
        &p("n.gguf"),
    ]);
    assert!(e.contains("no config.json"), "{e}");
    let e = err(&["convert", &p("missing.gguf"), &p("m")]);
    assert!(e.contains("does not exist"), "{e}");
}
