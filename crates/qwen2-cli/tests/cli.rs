//! The `qwen2` binary end to end on the real default model, as a user runs it.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qwen2"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model() -> String {
    if let Some(p) = std::env::var_os("QWEN2_MODEL") {
        return p.to_string_lossy().into_owned();
    }
    let home = std::env::var_os("QWEN2_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/qwen2"));
    let p = home.join("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    assert!(
        p.exists(),
        "run `qwen2 pull` first: {} is missing",
        p.display()
    );
    p.to_string_lossy().into_owned()
}

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut c = bin();
    c.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).expect("stdout is valid UTF-8")
}

#[test]
fn tokenize_matches_hf_ids_and_detokenize_roundtrips() {
    let m = model();
    let cases = std::fs::read_to_string(root().join("fixtures/tokenizer/cases.jsonl")).unwrap();
    let lines: Vec<&str> = cases
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(40)
        .collect();
    // --jsonl: one JSON string per line in, one array per line out.
    let mut input = String::new();
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        input.push_str(&serde_json::to_string(&v["text"]).unwrap());
        input.push('\n');
    }
    let out = run(&["tokenize", "-m", &m, "--jsonl"], Some(&input));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    assert_eq!(got.len(), lines.len());
    for (l, g) in lines.iter().zip(&got) {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let g: serde_json::Value = serde_json::from_str(g).unwrap();
        assert_eq!(g, v["ids"], "text {:?}", v["text"]);
    }

    let out = run(&["tokenize", "-m", &m, "def f(x):\n    return 12345"], None);
    assert!(out.status.success());
    let ids = text(&out.stdout).trim().to_string();
    let out = run(&["detokenize", "-m", &m, &ids], None);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim_end_matches('\n'),
        "def f(x):\n    return 12345"
    );
}

#[test]
fn run_streams_a_greedy_answer_and_is_deterministic() {
    let m = model();
    let args = [
        "run",
        "-m",
        &m,
        "-p",
        "What is 2+2? Answer with one number.",
        "-n",
        "12",
        "--greedy",
    ];
    let a = run(&args, None);
    assert!(a.status.success(), "{}", text(&a.stderr));
    let out = text(&a.stdout);
    assert!(out.contains('4'), "answer was {out:?}");
    let b = run(&args, None);
    assert_eq!(a.stdout, b.stdout, "greedy runs differ");
    let log = text(&a.stderr);
    assert!(
        log.contains("kernels:"),
        "the chosen kernel path is logged: {log}"
    );

    // Sampling with a seed is reproducible.
    let s = [
        "run",
        "-m",
        &m,
        "-p",
        "Tell me a story.",
        "-n",
        "16",
        "--temp",
        "1.0",
        "--seed",
        "42",
    ];
    let x = run(&s, None);
    let y = run(&s, None);
    assert!(x.status.success());
    assert_eq!(x.stdout, y.stdout, "same seed, different text");
}

#[test]
fn prompt_over_context_is_a_clear_error() {
    let m = model();
    let long = "word ".repeat(300);
    let out = run(
        &["run", "-m", &m, "-p", &long, "--ctx", "128", "-n", "8"],
        None,
    );
    assert!(!out.status.success());
    let e = text(&out.stderr);
    assert!(e.contains("context length exceeded"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
}

#[test]
fn bad_model_arguments_are_clear_errors() {
    let out = run(&["run", "-m", "/nonexistent/model.gguf", "-p", "hi"], None);
    assert!(!out.status.success());
    let e = text(&out.stderr);
    assert!(
        e.contains("not found") || e.contains("does not exist"),
        "{e}"
    );
    let out = run(&["run", "-m", "someorg/somemodel", "-p", "hi"], None);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("Hugging Face cache"));
    let out = run(&["run", "-m", &model(), "-p", ""], None);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("empty"));
}

#[test]
fn logits_writes_npy() {
    let dir = std::env::temp_dir().join(format!("qwen2-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("l.npy");
    let out = run(
        &[
            "logits",
            "-m",
            &model(),
            "--ids",
            "785,3974,13876",
            "--all",
            "--out",
            f.to_str().unwrap(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let b = std::fs::read(&f).unwrap();
    assert_eq!(&b[..6], b"\x93NUMPY");
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
    assert!(header.contains("(3, 151936)"), "{header}");
    assert_eq!(b.len(), 10 + hlen + 3 * 151936 * 4);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn chat_keeps_history_across_turns() {
    let out = run(
        &["chat", "-m", &model(), "--greedy", "-n", "24"],
        Some("My name is Ada. Reply with just OK.\nWhat is my name? Reply with just the name.\n"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let o = text(&out.stdout);
    assert!(
        o.contains("Ada"),
        "second answer should recall the name: {o:?}"
    );
}

#[test]
fn perplexity_prints_a_final_line() {
    let out = run(
        &[
            "perplexity",
            "-m",
            &model(),
            "-f",
            root().join("fixtures/text/ppl.txt").to_str().unwrap(),
            "--ctx",
            "256",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let o = text(&out.stdout);
    let last = o.lines().last().unwrap();
    let v: f64 = last.strip_prefix("perplexity: ").unwrap().parse().unwrap();
    assert!(v > 1.0 && v < 100.0, "{last}");
}

#[test]
fn hub_id_resolves_from_the_hf_cache_offline() {
    // A fake hub cache holding the tiny checkpoint as org/tiny at revision "abc".
    let cache = std::env::temp_dir().join(format!("qwen2-hfcache-{}", std::process::id()));
    let snap = cache.join("models--org--tiny/snapshots/abc");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(cache.join("models--org--tiny/refs")).unwrap();
    std::fs::write(cache.join("models--org--tiny/refs/main"), "abc\n").unwrap();
    for f in ["config.json", "model.safetensors", "generation_config.json"] {
        std::fs::copy(root().join("fixtures/tiny/tied").join(f), snap.join(f)).unwrap();
    }
    let out_file = cache.join("l.npy");
    let out = bin()
        .env("HF_HUB_CACHE", &cache)
        .args(["logits", "-m", "org/tiny", "--ids", "1,2,3", "--out"])
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out_file.exists());
    // An id that is not cached is a clear error naming the cache.
    let out = bin()
        .env("HF_HUB_CACHE", &cache)
        .args(["logits", "-m", "org/other", "--ids", "1", "--out"])
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("not in the Hugging Face cache"));
    std::fs::remove_dir_all(&cache).ok();
}

#[test]
fn ctrl_c_stops_the_answer_not_the_chat() {
    let mut child = bin()
        .args([
            "chat",
            "-m",
            &model(),
            "--greedy",
            "-n",
            "2000",
            "--ctx",
            "4096",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"Write a very long essay about the history of computing.\n")
        .unwrap();
    stdin.flush().unwrap();
    // Let it load and start answering, then interrupt the answer.
    std::thread::sleep(std::time::Duration::from_secs(6));
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(std::time::Duration::from_millis(500));
    // The program is still there and takes the next turn.
    stdin.write_all(b"Say OK.\n").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert!(
        out.status.success(),
        "chat exited with {:?}: {err}",
        out.status
    );
    assert!(err.contains("(stopped)"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
