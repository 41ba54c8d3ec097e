//! `qwen2 serve`: the OpenAI-compatible HTTP server (crates/qwen2-server) for one model.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use qwen2_server::engine::{Engine, EngineConfig};
use qwen2_server::{AppState, ServerConfig};

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    m: crate::ModelArg,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Most sequences generated at once (continuous batching).
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Most tokens (prompt + completion) per request; default: 4096 or the model's maximum.
    #[arg(long)]
    ctx: Option<usize>,
    /// Requests that may wait for a slot before the server answers 429.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Require `Authorization: Bearer KEY` on /v1/* (also from $QWEN2_API_KEY).
    #[arg(long)]
    api_key: Option<String>,
    /// Seconds in-flight requests may run after SIGTERM/Ctrl-C.
    #[arg(long, default_value_t = 10)]
    shutdown_grace: u64,
    /// Tokens of prompt KV kept for reuse by later requests with the same prefix (0: off).
    #[arg(long, default_value_t = EngineConfig::default().prefix_cache_tokens)]
    prefix_cache: usize,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let lm = Arc::new(crate::load(&a.m)?);
    let max_ctx = lm.model.cfg.max_position_embeddings.max(1);
    let ctx = a.ctx.unwrap_or(4096).min(max_ctx);
    let engine_cfg = EngineConfig {
        parallel: a.parallel.max(1),
        ctx,
        queue_capacity: a.queue,
        prefix_cache_tokens: a.prefix_cache,
        ..EngineConfig::default()
    };
    let mut cfg = ServerConfig::for_model(&lm);
    cfg.api_key = a
        .api_key
        .or_else(|| std::env::var("QWEN2_API_KEY").ok())
        .filter(|k| !k.is_empty());
    cfg.shutdown_grace = Duration::from_secs(a.shutdown_grace);
    let addr: SocketAddr = format!("{}:{}", a.host, a.port)
        .parse()
        .or_else(|_| {
            use std::net::ToSocketAddrs;
            (a.host.as_str(), a.port)
                .to_socket_addrs()?
                .next()
                .ok_or_else(|| std::io::Error::other("no address"))
        })
        .with_context(|| format!("bad --host/--port {}:{}", a.host, a.port))?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        let engine = Arc::new(Engine::start(lm.clone(), engine_cfg));
        let model_id = cfg.model_id.clone();
        let state = AppState::new(engine, lm, cfg);
        eprintln!(
            "[qwen2] serving {model_id} at http://{local}/v1 (parallel {}, ctx {ctx}); Ctrl-C to stop",
            a.parallel.max(1)
        );
        qwen2_server::api::serve(listener, state, shutdown_signal()).await?;
        eprintln!("[qwen2] server stopped");
        Ok(())
    })
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("[qwen2] shutting down: no new requests, finishing in-flight ones");
}
