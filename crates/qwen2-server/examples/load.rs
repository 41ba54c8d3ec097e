//! Long-form load test against an in-process server on the real model:
//! `cargo run --release -p qwen2-server --example load -- [--clients 32] [--secs 120] [--parallel 4]`
//! Prints the report; exits non-zero if a well-formed request failed or the server did not
//! return to idle with no KV held.

#[path = "../tests/common/load.rs"]
mod load;

use std::sync::Arc;
use std::time::Duration;

use qwen2_server::engine::EngineConfig;
use qwen2_server::{RunningServer, ServerConfig};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let clients = arg("--clients", 32) as usize;
    let secs = arg("--secs", 120);
    let parallel = arg("--parallel", 4) as usize;
    let path = std::env::var_os("QWEN2_MODEL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/qwen2/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
        });
    let model = Arc::new(qwen2_core::load(&path, qwen2_core::Precision::Fast).expect("load model"));
    let mut cfg = ServerConfig::for_model(&model);
    cfg.shutdown_grace = Duration::from_secs(5);
    let engine = EngineConfig {
        parallel,
        ctx: 2048,
        queue_capacity: clients * 2,
        prefix_cache_tokens: 0,
        ..EngineConfig::default()
    };
    let srv =
        RunningServer::start(model, engine, cfg, "127.0.0.1:0".parse().unwrap()).expect("start");
    eprintln!(
        "load: {clients} clients for {secs} s against http://{}",
        srv.addr
    );
    let t0 = std::time::Instant::now();
    let r = load::run_load(srv.addr, clients, secs, 42);
    let wall = t0.elapsed().as_secs_f64();
    println!(
        "completed {} disconnected {} garbage {} failures {} completion_tokens {} wall {:.1}s",
        r.completed,
        r.disconnected,
        r.garbage,
        r.failures.len(),
        r.completion_tokens,
        wall
    );
    for f in &r.failures {
        println!("failure: {f}");
    }
    let idle = load::settles(srv.addr, 60);
    println!("idle after load: {idle:?}");
    srv.shutdown().expect("shutdown");
    if !r.failures.is_empty() || idle.is_err() {
        std::process::exit(1);
    }
}
