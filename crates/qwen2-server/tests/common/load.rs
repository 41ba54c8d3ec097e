//! A bounded load generator (loopback): N clients for T seconds sending streaming chat
//! requests with random prompt lengths; ~10% disconnect mid-stream and ~10% send garbage.
//! Shared by tests/load.rs (short form) and examples/load.rs (long form).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub completed: usize,
    pub disconnected: usize,
    pub garbage: usize,
    pub completion_tokens: u64,
    /// Well-formed requests that did not complete properly, with why.
    pub failures: Vec<String>,
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

const WORDS: &[&str] = &[
    "river", "compile", "matrix", "garden", "protocol", "violet", "kernel", "harbor", "lambda",
    "quartz", "tensor", "meadow",
];

fn http_post(addr: SocketAddr, body: &str) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(300)))?;
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    Ok(s)
}

/// One well-formed streaming request read to the end: Ok(completion tokens) or why it failed.
fn full_stream(addr: SocketAddr, body: &str) -> Result<u64, String> {
    let s = http_post(addr, body).map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).map_err(|e| e.to_string())?;
    if !status.contains(" 200 ") {
        let mut rest = String::new();
        let _ = r.read_to_string(&mut rest);
        return Err(format!(
            "{} {}",
            status.trim(),
            rest.lines().last().unwrap_or("")
        ));
    }
    let (mut done, mut finish, mut tokens) = (false, false, 0);
    for line in r.lines() {
        let line = line.map_err(|e| format!("read: {e}"))?;
        let Some(d) = line.strip_prefix("data: ") else {
            continue;
        };
        if d == "[DONE]" {
            done = true;
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(d).map_err(|e| format!("bad chunk {d}: {e}"))?;
        if v.get("error").is_some() {
            return Err(format!("error event: {d}"));
        }
        if v["choices"][0]["finish_reason"].is_string() {
            finish = true;
        }
        if let Some(u) = v["usage"]["completion_tokens"].as_u64() {
            tokens = u;
        }
    }
    if done && finish {
        Ok(tokens)
    } else {
        Err(format!("stream ended early (done {done}, finish {finish})"))
    }
}

fn garbage(addr: SocketAddr, kind: u64) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let payload: Vec<u8> = match kind {
        0 => b"\x00\xff\x13garbage that is not HTTP\r\n\r\n".to_vec(),
        1 => {
            let b = "{\"messages\": [{\"role\": \"user\", \"content\": ";
            format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{b}", b.len()).into_bytes()
        }
        2 => b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"messages\"".to_vec(),
        _ => {
            let b = "{\"messages\": \"not a list\", \"max_tokens\": -3}";
            format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{b}", b.len()).into_bytes()
        }
    };
    let _ = s.write_all(&payload);
    if kind == 2 {
        return; // truncated body, then hang up
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
}

/// Run the load; returns when every client has finished its last request.
pub fn run_load(addr: SocketAddr, clients: usize, secs: u64, seed: u64) -> LoadReport {
    let report = Arc::new(Mutex::new(LoadReport::default()));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let report = report.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(seed ^ (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(c as u64 + 1)));
                let mut first = true;
                while Instant::now() < deadline {
                    // Client 0 starts with every kind of garbage, client 1 with a hang-up, so
                    // even a short run covers both.
                    let roll = match (first, c) {
                        (true, 0) => {
                            for kind in 0..4 {
                                garbage(addr, kind);
                            }
                            report.lock().unwrap().garbage += 4;
                            first = false;
                            continue;
                        }
                        (true, 1) => 0,
                        _ => rng.below(10),
                    };
                    first = false;
                    let words = 1 + rng.below(150) as usize;
                    let prompt: Vec<&str> = (0..words).map(|_| WORDS[rng.below(WORDS.len() as u64) as usize]).collect();
                    let body = serde_json::json!({
                        "messages": [{"role": "user", "content": format!("Summarize: {}", prompt.join(" "))}],
                        "max_tokens": 4 + rng.below(44),
                        "temperature": 0.7,
                        "stream": true,
                        "stream_options": {"include_usage": true},
                    })
                    .to_string();
                    match roll {
                        0 => {
                            // Disconnect mid-stream: read a little, hang up.
                            if let Ok(mut s) = http_post(addr, &body) {
                                let mut buf = [0u8; 600];
                                let _ = s.read(&mut buf);
                            }
                            report.lock().unwrap().disconnected += 1;
                        }
                        1 => {
                            garbage(addr, rng.below(4));
                            report.lock().unwrap().garbage += 1;
                        }
                        _ => {
                            let r = full_stream(addr, &body);
                            let mut rep = report.lock().unwrap();
                            match r {
                                Ok(t) => {
                                    rep.completed += 1;
                                    rep.completion_tokens += t;
                                }
                                Err(e) => rep.failures.push(e),
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let r = report.lock().unwrap().clone();
    r
}

/// One short well-formed streaming request (warm-up): Ok(completion tokens) or why it failed.
pub fn warm_up(addr: SocketAddr) -> Result<u64, String> {
    let body = serde_json::json!({
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 8,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    full_stream(addr, &body.to_string())
}

/// Scrape one unlabelled metric.
pub fn scrape(addr: SocketAddr, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect(addr).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// After the load: wait (up to `secs`) until nothing is active or queued and no KV is held.
pub fn settles(addr: SocketAddr, secs: u64) -> Result<(), String> {
    let t0 = Instant::now();
    loop {
        let active = scrape(addr, "qwen2_active_sequences");
        let queued = scrape(addr, "qwen2_queue_depth");
        let kv = scrape(addr, "qwen2_kv_cache_used_bytes");
        if active == Some(0.0) && queued == Some(0.0) && kv == Some(0.0) {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(secs) {
            return Err(format!(
                "not idle: active {active:?}, queued {queued:?}, kv {kv:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
