//! Shared test helpers: the real model, a server on a free loopback port, raw HTTP helpers.
#![allow(dead_code)]

pub mod load;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use qwen2_core::loader::LoadedModel;
use qwen2_core::Precision;
use qwen2_server::engine::EngineConfig;
use qwen2_server::{RunningServer, ServerConfig};
use serde_json::Value;

/// The real default model: $QWEN2_MODEL, else the `qwen2 pull` location. Tests that need it
/// fail (not skip) when it is absent: `scripts/test.sh` fetches it first.
pub fn real_model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("QWEN2_MODEL") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("QWEN2_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/qwen2")
        });
    let p = home.join("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    assert!(
        p.exists(),
        "the real model is missing at {}: run `qwen2 pull` (scripts/test.sh does)",
        p.display()
    );
    p
}

pub fn model() -> Arc<LoadedModel> {
    static M: OnceLock<Arc<LoadedModel>> = OnceLock::new();
    M.get_or_init(|| {
        Arc::new(qwen2_core::load(&real_model_path(), Precision::Fast).expect("load the model"))
    })
    .clone()
}

pub const CTX: usize = 2048;

pub fn engine_cfg(parallel: usize, queue: usize) -> EngineConfig {
    EngineConfig {
        parallel,
        ctx: CTX,
        queue_capacity: queue,
        ..EngineConfig::default()
    }
}

pub fn start(engine: EngineConfig, api_key: Option<&str>) -> RunningServer {
    let m = model();
    let mut cfg = ServerConfig::for_model(&m);
    cfg.api_key = api_key.map(str::to_owned);
    cfg.shutdown_grace = Duration::from_secs(5);
    RunningServer::start(m, engine, cfg, "127.0.0.1:0".parse().unwrap()).expect("start server")
}

/// One server shared by the tests of a binary (4 parallel sequences, no prefix cache).
pub fn shared() -> SocketAddr {
    static S: OnceLock<RunningServer> = OnceLock::new();
    // Prefix cache off: several tests compare greedy outputs of the same prompt across requests,
    // and reusing cached prompt KV shifts the logits slightly (see the crate report).
    S.get_or_init(|| {
        let mut cfg = engine_cfg(4, 64);
        cfg.prefix_cache_tokens = 0;
        start(cfg, None)
    })
    .addr
}

/// A server that runs one sequence at a time (no prefix cache): for tests that compare greedy
/// outputs across requests, since batched decoding is not bit-identical to decoding alone.
pub fn serial() -> SocketAddr {
    static S: OnceLock<RunningServer> = OnceLock::new();
    S.get_or_init(|| {
        let mut cfg = engine_cfg(1, 64);
        cfg.prefix_cache_tokens = 0;
        start(cfg, None)
    })
    .addr
}

pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout_read(Duration::from_secs(300))
        .build()
}

/// POST JSON; (status, body as JSON). Error statuses are returned, not raised.
pub fn post(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    post_raw(addr, path, &body.to_string(), None)
}

pub fn post_raw(addr: SocketAddr, path: &str, body: &str, key: Option<&str>) -> (u16, Value) {
    let mut req = agent()
        .post(&format!("http://{addr}{path}"))
        .set("Content-Type", "application/json");
    if let Some(k) = key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    into_json(req.send_string(body))
}

pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    match agent().get(&format!("http://{addr}{path}")).call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap()),
        Err(e) => panic!("GET {path}: {e}"),
    }
}

fn into_json(r: Result<ureq::Response, ureq::Error>) -> (u16, Value) {
    let (status, resp) = match r {
        Ok(r) => (r.status(), r),
        Err(ureq::Error::Status(s, r)) => (s, r),
        Err(e) => panic!("request failed: {e}"),
    };
    let text = resp.into_string().unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, v)
}

/// POST a streaming request; returns the `data:` payloads (JSON values; `[DONE]` as a string).
pub fn post_stream(addr: SocketAddr, path: &str, body: &Value) -> Vec<Value> {
    let resp = agent()
        .post(&format!("http://{addr}{path}"))
        .send_string(&body.to_string())
        .unwrap_or_else(|e| panic!("stream request failed: {e}"));
    assert_eq!(resp.status(), 200);
    assert!(resp
        .header("content-type")
        .unwrap_or_default()
        .starts_with("text/event-stream"));
    read_sse(resp.into_reader())
}

pub fn read_sse(r: impl Read) -> Vec<Value> {
    let mut out = Vec::new();
    for line in BufReader::new(r).lines() {
        let line = line.expect("read SSE line");
        if let Some(d) = line.strip_prefix("data: ") {
            if d == "[DONE]" {
                out.push(Value::String("[DONE]".into()));
            } else {
                out.push(serde_json::from_str(d).unwrap_or_else(|e| panic!("bad chunk {d}: {e}")));
            }
        }
    }
    out
}

/// Assert the OpenAI error shape and return the error object.
pub fn assert_error(status: u16, body: &Value, want_status: u16) -> &Value {
    assert_eq!(status, want_status, "{body}");
    let e = &body["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(e["type"].is_string(), "{body}");
    let obj = e.as_object().unwrap();
    assert!(
        obj.contains_key("param") && obj.contains_key("code"),
        "{body}"
    );
    e
}

pub fn user(text: &str) -> Value {
    serde_json::json!([{"role": "user", "content": text}])
}

/// Scrape one unlabelled metric value.
pub fn metric(addr: SocketAddr, name: &str) -> f64 {
    let (_, text) = get(addr, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("metric {name} missing"))
        .trim()
        .parse()
        .unwrap()
}

/// Wait until the engine is idle (active 0, queue 0), up to `secs`.
pub fn wait_idle(addr: SocketAddr, secs: u64) -> bool {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        if metric(addr, "qwen2_active_sequences") == 0.0 && metric(addr, "qwen2_queue_depth") == 0.0
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}
