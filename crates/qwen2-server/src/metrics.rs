//! Prometheus text exposition: request counts by endpoint and status, token counters, queue and
//! KV gauges from the engine, time-to-first-token and request-latency histograms.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::engine::EngineStats;

const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

pub struct Histogram {
    counts: Vec<AtomicU64>,
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: BUCKETS.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (b, c) in BUCKETS.iter().zip(&self.counts) {
            if s <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    pub ttft: Histogram,
    pub latency: Histogram,
    pub disconnects: AtomicU64,
}

impl Metrics {
    pub fn count_request(&self, endpoint: &str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((endpoint.to_owned(), status)).or_default() += 1;
        }
    }

    pub fn render(&self, s: &EngineStats) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP qwen2_requests_total HTTP requests by endpoint and status.\n\
             # TYPE qwen2_requests_total counter\n",
        );
        if let Ok(m) = self.requests.lock() {
            for ((ep, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "qwen2_requests_total{{endpoint=\"{ep}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let counters: [(&str, &str, u64); 7] = [
            (
                "qwen2_prompt_tokens_total",
                "Prompt tokens processed.",
                s.prompt_tokens_total,
            ),
            (
                "qwen2_generated_tokens_total",
                "Tokens generated.",
                s.generated_tokens_total,
            ),
            (
                "qwen2_prefix_cache_hits_total",
                "Requests that reused cached prompt KV.",
                s.prefix_cache_hits,
            ),
            (
                "qwen2_cached_prompt_tokens_total",
                "Prompt tokens served from the prefix cache.",
                s.cached_prompt_tokens_total,
            ),
            (
                "qwen2_engine_steps_total",
                "Batched forward passes.",
                s.steps_total,
            ),
            (
                "qwen2_engine_decode_steps_total",
                "Batched forward passes without prompt rows.",
                s.decode_steps_total,
            ),
            (
                "qwen2_client_disconnects_total",
                "Streams the client closed before the end.",
                self.disconnects.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let seconds: [(&str, &str, f64); 3] = [
            (
                "qwen2_engine_step_seconds_total",
                "Wall time of engine steps (forward pass, sampling, sending).",
                s.step_seconds_total,
            ),
            (
                "qwen2_engine_forward_seconds_total",
                "Wall time inside the batched forward pass.",
                s.forward_seconds_total,
            ),
            (
                "qwen2_engine_decode_step_seconds_total",
                "Wall time of steps without prompt rows.",
                s.decode_step_seconds_total,
            ),
        ];
        for (name, help, v) in seconds {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let gauges: [(&str, &str, usize); 5] = [
            (
                "qwen2_queue_depth",
                "Requests waiting for a slot.",
                s.queued,
            ),
            (
                "qwen2_active_sequences",
                "Sequences in the running batch.",
                s.active,
            ),
            (
                "qwen2_kv_cache_used_bytes",
                "KV cache bytes in use.",
                s.kv_used_bytes,
            ),
            (
                "qwen2_kv_cache_capacity_bytes",
                "KV cache bytes if every slot were full.",
                s.kv_capacity_bytes,
            ),
            (
                "qwen2_prefix_cache_tokens",
                "Tokens held by the prefix cache.",
                s.prefix_cache_tokens,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        self.ttft.render(
            "qwen2_time_to_first_token_seconds",
            "Time from request to first generated token.",
            &mut out,
        );
        self.latency.render(
            "qwen2_request_duration_seconds",
            "Time from request to last token.",
            &mut out,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_format() {
        let m = Metrics::default();
        m.count_request("/v1/chat/completions", 200);
        m.count_request("/v1/chat/completions", 200);
        m.ttft.observe(Duration::from_millis(30));
        let text = m.render(&EngineStats {
            active: 2,
            ..Default::default()
        });
        assert!(text
            .contains("qwen2_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"} 2"));
        assert!(text.contains("qwen2_active_sequences 2\n"));
        assert!(text.contains("qwen2_time_to_first_token_seconds_bucket{le=\"0.025\"} 0\n"));
        assert!(text.contains("qwen2_time_to_first_token_seconds_bucket{le=\"0.05\"} 1\n"));
        assert!(text.contains("qwen2_time_to_first_token_seconds_count 1\n"));
        // Every non-comment line is `name{labels} value` with a numeric value.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let v = line.rsplit(' ').next().unwrap();
            assert!(v.parse::<f64>().is_ok(), "{line}");
        }
    }
}
