//! The official `openai` Python client against the real server: tests/openai_client.py runs in a
//! venv under target/ (created on first run with `python3 -m venv` + `pip install openai`).
//! Skipped, with a message, only when python3 itself is absent.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

fn python3() -> Option<PathBuf> {
    let ok = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then(|| PathBuf::from("python3"))
}

#[test]
fn official_openai_python_client() {
    let Some(py) = python3() else {
        eprintln!("SKIPPED: python3 is not installed, so the openai-client test cannot run");
        return;
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let venv = target.join("openai-venv");
    let vpy = venv.join("bin/python");
    if !vpy.exists() {
        let st = Command::new(&py)
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .unwrap();
        assert!(st.success(), "python3 -m venv failed");
    }
    let has_openai = Command::new(&vpy)
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_openai {
        let st = Command::new(&vpy)
            .args(["-m", "pip", "install", "--quiet", "openai>=1.40"])
            .status()
            .unwrap();
        assert!(
            st.success(),
            "pip install openai failed (PyPI must be reachable)"
        );
    }
    // Prefix cache off: the script compares streamed and non-streamed greedy text of the same
    // prompt, and a cached prefix changes the last prompt position's logits in the low bits.
    let mut cfg = engine_cfg(2, 16);
    cfg.prefix_cache_tokens = 0;
    let srv = start(cfg, Some("test-key"));
    let out = Command::new(&vpy)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py"))
        .env("QWEN2_BASE_URL", format!("http://{}/v1", srv.addr))
        .env("QWEN2_API_KEY", "test-key")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(out.status.success(), "openai_client.py failed");
    assert!(stdout.contains("ALL OK"));
    srv.shutdown().unwrap();
}
