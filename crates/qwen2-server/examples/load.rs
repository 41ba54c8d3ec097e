//! Long-form load test on the real model: 32 streaming clients for 2 minutes (random prompt
//! lengths, ~10% hanging up mid-stream, ~10% garbage requests), then checks that every
//! well-formed request completed, that /metrics shows no active or queued sequence and no KV
//! held, and that the server's memory stayed bounded (VmHWM after the load vs VmRSS before it).
//!
//! In-process server (prefix cache off, so "KV back to 0" is exact):
//!   cargo run --release -p qwen2-server --example load -- [--clients 32] [--secs 120] [--parallel 4]
//! Against a running `qwen2 serve --prefix-cache 0` (see bench/serve_load.sh):
//!   cargo run --release -p qwen2-server --example load -- --addr 127.0.0.1:8080 --pid PID
//! Prints a summary; exits non-zero if any check fails.

#[path = "../tests/common/load.rs"]
mod load;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qwen2_server::engine::EngineConfig;
use qwen2_server::{RunningServer, ServerConfig};

fn arg_str(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn arg(name: &str, default: u64) -> u64 {
    match arg_str(name) {
        None => default,
        Some(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("{name} wants a number, got {v:?}");
            std::process::exit(2)
        }),
    }
}

/// VmRSS and VmHWM of a process, in KiB.
fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn main() {
    let clients = arg("--clients", 32) as usize;
    let secs = arg("--secs", 120);
    let parallel = arg("--parallel", 4) as usize;
    let seed = arg("--seed", 42);
    let rss_limit_mib = arg("--rss-growth-limit-mb", 1024);

    // Either a server of our own, or one given by --addr (and its --pid for memory).
    let mut own = None;
    let (addr, pid): (SocketAddr, u32) = match arg_str("--addr") {
        Some(a) => {
            let a = a.trim_start_matches("http://").trim_end_matches('/');
            let addr = a
                .to_socket_addrs()
                .ok()
                .and_then(|mut it| it.next())
                .unwrap_or_else(|| {
                    eprintln!("--addr {a:?} is not HOST:PORT");
                    std::process::exit(2)
                });
            let pid = arg("--pid", 0) as u32;
            if pid == 0 {
                eprintln!("--addr needs --pid (the server's process id, for VmRSS/VmHWM)");
                std::process::exit(2);
            }
            (addr, pid)
        }
        None => {
            let path = std::env::var_os("QWEN2_MODEL")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| {
                    std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default())
                        .join(".cache/qwen2/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
                });
            let model =
                Arc::new(qwen2_core::load(&path, qwen2_core::Precision::Fast).expect("load model"));
            let mut cfg = ServerConfig::for_model(&model);
            cfg.shutdown_grace = Duration::from_secs(5);
            let engine = EngineConfig {
                parallel,
                ctx: 2048,
                queue_capacity: clients * 2,
                prefix_cache_tokens: 0,
                ..EngineConfig::default()
            };
            let srv = RunningServer::start(model, engine, cfg, "127.0.0.1:0".parse().unwrap())
                .expect("start");
            let addr = srv.addr;
            own = Some(srv);
            (addr, std::process::id())
        }
    };

    let mut problems = Vec::new();
    if let Err(e) = load::warm_up(addr) {
        problems.push(format!("warm-up request failed: {e}"));
    }
    let before = memory_kib(pid);
    eprintln!("load: {clients} clients for {secs} s against http://{addr} (server pid {pid})");
    let t0 = Instant::now();
    let r = load::run_load(addr, clients, secs, seed);
    let wall = t0.elapsed().as_secs_f64();
    let idle = load::settles(addr, 60);
    let after = memory_kib(pid);
    let generated = load::scrape(addr, "qwen2_generated_tokens_total");
    let disconnects = load::scrape(addr, "qwen2_client_disconnects_total");

    println!("## load test: {clients} streaming clients, {secs} s, seed {seed}");
    println!(
        "- well-formed requests completed: {} ({:.2}/s), completion tokens {} ({:.1} tok/s)",
        r.completed,
        r.completed as f64 / wall,
        r.completion_tokens,
        r.completion_tokens as f64 / wall
    );
    println!(
        "- hung up mid-stream: {}, garbage requests: {}, failures: {}, wall {wall:.1} s",
        r.disconnected,
        r.garbage,
        r.failures.len()
    );
    if let (Some(g), Some(d)) = (generated, disconnects) {
        println!("- /metrics: generated tokens {g}, client disconnects {d}");
    }
    for f in r.failures.iter().take(20) {
        println!("  failure: {f}");
    }
    if !r.failures.is_empty() {
        problems.push(format!("{} well-formed requests failed", r.failures.len()));
    }
    if r.completed == 0 {
        problems.push("no request completed".into());
    }
    match &idle {
        Ok(()) => println!("- after the load: 0 active, 0 queued, KV used 0 bytes"),
        Err(e) => {
            println!("- after the load: {e}");
            problems.push(format!("server not idle after the load: {e}"));
        }
    }
    match (before, after) {
        (Some((rss0, hwm0)), Some((rss1, hwm1))) => {
            let growth = hwm1.saturating_sub(rss0);
            println!(
                "- server memory: VmRSS before {:.0} MiB (VmHWM {:.0}), VmHWM after {:.0} MiB \
                 (+{:.0} MiB over RSS before; limit {rss_limit_mib}), VmRSS after {:.0} MiB",
                mib(rss0),
                mib(hwm0),
                mib(hwm1),
                mib(growth),
                mib(rss1)
            );
            if growth > rss_limit_mib * 1024 {
                problems.push(format!(
                    "peak memory grew {:.0} MiB during the load (limit {rss_limit_mib} MiB)",
                    mib(growth)
                ));
            }
        }
        _ => problems.push(format!("cannot read /proc/{pid}/status")),
    }
    if let Some(srv) = own {
        srv.shutdown().expect("shutdown");
    }
    if problems.is_empty() {
        println!("- result: PASS");
    } else {
        for p in &problems {
            println!("- FAIL: {p}");
        }
        std::process::exit(1);
    }
}
