//! Scores from per-item records, `results.json`, the markdown table and side-by-side
//! comparison of two runs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Metric {
    pub value: f64,
    /// Standard error of the mean (sample variance, n-1), as lm-eval reports it.
    pub stderr: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskResult {
    pub task: String,
    /// The metric the model card reports.
    pub primary: String,
    pub metrics: BTreeMap<String, Metric>,
    pub n: usize,
    pub shots: usize,
    pub seconds: f64,
    /// Tokens run through the model in this run, and tokens whose KV came from the prefix
    /// cache instead.
    #[serde(default)]
    pub tokens_computed: usize,
    #[serde(default)]
    pub tokens_reused: usize,
    /// The generation limit the task ran with (generation tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_gen_tokens: Option<usize>,
}

impl TaskResult {
    pub fn score(&self) -> Option<&Metric> {
        self.metrics.get(&self.primary)
    }
}

/// Mean and its standard error of per-item values.
pub fn mean_stderr(xs: &[f64]) -> Metric {
    let n = xs.len();
    if n == 0 {
        return Metric {
            value: f64::NAN,
            stderr: None,
        };
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    let stderr = (n > 1).then(|| {
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        (var / n as f64).sqrt()
    });
    Metric {
        value: mean,
        stderr,
    }
}

/// The markdown table of a run.
pub fn markdown(results: &[TaskResult]) -> String {
    let mut s = String::from("| task | metric | shots | n | score | ± stderr | seconds |\n|---|---|---|---|---|---|---|\n");
    for r in results {
        for (name, m) in &r.metrics {
            let star = if *name == r.primary { " *" } else { "" };
            s.push_str(&format!(
                "| {} | {name}{star} | {} | {} | {} | {} | {:.0} |\n",
                r.task,
                r.shots,
                r.n,
                fmt_value(m.value),
                m.stderr.map(fmt_value).unwrap_or_else(|| "-".into()),
                r.seconds
            ));
        }
    }
    s
}

fn fmt_value(v: f64) -> String {
    if v.abs() >= 10.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.4}")
    }
}

/// Two `results.json` documents side by side: one row per task and metric present in either.
pub fn compare(a: &Json, b: &Json, a_name: &str, b_name: &str) -> String {
    let metrics = |j: &Json| -> BTreeMap<(String, String), (f64, usize)> {
        let mut out = BTreeMap::new();
        if let Some(tasks) = j.get("tasks").and_then(Json::as_object) {
            for (t, r) in tasks {
                let n = r.get("n").and_then(Json::as_u64).unwrap_or(0) as usize;
                if let Some(ms) = r.get("metrics").and_then(Json::as_object) {
                    for (m, v) in ms {
                        if let Some(x) = v.get("value").and_then(Json::as_f64) {
                            out.insert((t.clone(), m.clone()), (x, n));
                        }
                    }
                }
            }
        }
        out
    };
    let (ma, mb) = (metrics(a), metrics(b));
    let mut keys: Vec<&(String, String)> = ma.keys().chain(mb.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut s = format!("| task | metric | {a_name} | {b_name} | diff |\n|---|---|---|---|---|\n");
    let cell = |v: Option<&(f64, usize)>| {
        v.map(|(x, n)| format!("{} (n={n})", fmt_value(*x)))
            .unwrap_or_else(|| "-".into())
    };
    for k in keys {
        let (x, y) = (ma.get(k), mb.get(k));
        let diff = match (x, y) {
            (Some(x), Some(y)) => format!("{:+.4}", y.0 - x.0),
            _ => "-".into(),
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {diff} |\n",
            k.0,
            k.1,
            cell(x),
            cell(y)
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_like_lm_eval() {
        let m = mean_stderr(&[1.0, 0.0, 1.0, 1.0]);
        assert_eq!(m.value, 0.75);
        // sqrt(p(1-p)/(n-1)) for a 0/1 metric.
        assert!((m.stderr.unwrap() - (0.75f64 * 0.25 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(mean_stderr(&[1.0]).stderr, None);
    }

    #[test]
    fn compare_lists_both_runs() {
        let a =
            serde_json::json!({"tasks": {"mmlu": {"n": 10, "metrics": {"acc": {"value": 0.5}}}}});
        let b = serde_json::json!({"tasks": {"mmlu": {"n": 10, "metrics": {"acc": {"value": 0.6}}}, "gsm8k": {"n": 5, "metrics": {"exact_match": {"value": 0.2}}}}});
        let t = compare(&a, &b, "a", "b");
        assert!(
            t.contains("| mmlu | acc | 0.5000 (n=10) | 0.6000 (n=10) | +0.1000 |"),
            "{t}"
        );
        assert!(
            t.contains("| gsm8k | exact_match | - | 0.2000 (n=5) | - |"),
            "{t}"
        );
    }
}
