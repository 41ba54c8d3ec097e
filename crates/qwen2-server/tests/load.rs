//! Short load test: 8 streaming clients for 20 s against the real model (prefix cache off, so
//! "KV back to zero" is exact), 10% hanging up mid-stream, 10% sending garbage. Every
//! well-formed request must complete, and the server must end idle with no KV held.
//! The long form (32 clients, 2 min): `cargo run --release -p qwen2-server --example load`.

mod common;

use common::load::{run_load, settles};
use common::*;

#[test]
fn load_short() {
    let mut cfg = engine_cfg(4, 64);
    cfg.prefix_cache_tokens = 0;
    let srv = start(cfg, None);
    let r = run_load(srv.addr, 8, 20, 1234);
    eprintln!("load: {r:?}");
    assert!(r.failures.is_empty(), "failed requests: {:?}", r.failures);
    assert!(r.completed >= 8, "only {} requests completed", r.completed);
    settles(srv.addr, 30).unwrap();
    // The server still answers normally.
    let (s, v) = post(
        srv.addr,
        "/v1/chat/completions",
        &serde_json::json!({"messages": user("hi"), "max_tokens": 3}),
    );
    assert_eq!(s, 200, "{v}");
    srv.shutdown().unwrap();
}
