//! Running a task: build its items, skip those already recorded in the output folder, score
//! the rest (appending one JSON line per item, so an interrupted run resumes where it
//! stopped), and compute the task's metrics from every record.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use qwen2_core::qwen2_tokenizer::ChatMessage;
use qwen2_core::LoadedModel;
use serde_json::{json, Value as Json};
use sha2::{Digest, Sha256};

use crate::data::DataDir;
use crate::error::{io, Error, Result};
use crate::loglik::Scorer;
use crate::report::{mean_stderr, Metric, TaskResult};
use crate::tasks::{self, McItem};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Mmlu,
    Hellaswag,
    ArcChallenge,
    Winogrande,
    Gsm8k,
    Lambada,
    Humaneval,
    Math,
    Math500,
    Mbpp,
}

impl Task {
    pub const ALL: [Task; 10] = [
        Task::Mmlu,
        Task::Hellaswag,
        Task::ArcChallenge,
        Task::Winogrande,
        Task::Gsm8k,
        Task::Lambada,
        Task::Humaneval,
        Task::Math,
        Task::Math500,
        Task::Mbpp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Task::Mmlu => "mmlu",
            Task::Hellaswag => "hellaswag",
            Task::ArcChallenge => "arc_challenge",
            Task::Winogrande => "winogrande",
            Task::Gsm8k => "gsm8k",
            Task::Lambada => "lambada",
            Task::Humaneval => "humaneval",
            Task::Math => "math",
            Task::Math500 => "math500",
            Task::Mbpp => "mbpp",
        }
    }

    pub fn parse(s: &str) -> Result<Task> {
        Task::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Task::ALL.iter().map(|t| t.name()).collect();
                Error::Invalid(format!(
                    "unknown task `{s}` (implemented: {})",
                    names.join(", ")
                ))
            })
    }

    /// The model card's number of examples.
    pub fn default_shots(self) -> usize {
        match self {
            Task::Mmlu | Task::Winogrande => 5,
            Task::Hellaswag => 10,
            Task::ArcChallenge => 25,
            Task::Gsm8k | Task::Math | Task::Math500 => 4,
            Task::Mbpp => 3,
            Task::Lambada | Task::Humaneval => 0,
        }
    }

    /// The metric the card reports.
    pub fn primary(self) -> &'static str {
        match self {
            Task::Mmlu | Task::Winogrande => "acc",
            Task::Hellaswag | Task::ArcChallenge => "acc_norm",
            Task::Gsm8k => "exact_match_strict",
            Task::Lambada => "bits_per_byte",
            Task::Humaneval | Task::Mbpp => "pass@1",
            Task::Math | Task::Math500 => "exact_match",
        }
    }
}

#[derive(Debug, Clone)]
pub struct EvalConfig {
    pub shots: Option<usize>,
    pub limit: Option<usize>,
    pub seed: u64,
    /// Wrap each prompt in the model's chat template (instruct models).
    pub chat: bool,
    pub max_gen_tokens: usize,
    /// KV cache size in tokens.
    pub ctx: usize,
    /// Identifies the model in the settings fingerprint (its file hash).
    pub model_id: String,
}

pub const ENGINE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What a task run needs from outside: the model and data.
pub struct Runner<'a> {
    pub model: &'a LoadedModel,
    pub data: &'a DataDir,
    pub cfg: &'a EvalConfig,
    pub out_dir: &'a Path,
}

/// A task's work, item by item: an id and a closure-free description to score.
enum Work {
    Mc(Vec<McItem>),
    Gen(Vec<GenItem>),
}

struct GenItem {
    id: String,
    prompt: String,
    check: Check,
}

/// How a generation is judged.
enum Check {
    /// GSM8K: the extracted number against this answer.
    Number(String),
    /// Code: the program built from the completion must pass the problem's tests.
    HumanEval(Box<crate::data::HumanEvalDoc>),
    /// MATH: the normalized answer against this normalized reference.
    Math(String),
    /// MBPP: the completion followed by the problem's asserts must pass.
    Mbpp(Box<crate::data::MbppDoc>),
}

pub fn sha256_hex(s: &str) -> String {
    crate::data::hex(&Sha256::digest(s.as_bytes()))
}

impl Runner<'_> {
    fn settings(&self, task: Task, shots: usize) -> Json {
        json!({
            "task": task.name(),
            "shots": shots,
            "seed": self.cfg.seed,
            "chat": self.cfg.chat,
            "max_gen_tokens": self.cfg.max_gen_tokens,
            "model": self.cfg.model_id,
            "engine_version": ENGINE_VERSION,
        })
    }

    fn chat_wrap(&self, text: &str) -> Result<String> {
        let tpl = self.model.chat_template.as_ref().ok_or_else(|| {
            Error::Invalid("--chat needs a model with a chat template (an instruct model)".into())
        })?;
        tpl.render(&[ChatMessage::new("user", text)], true, None)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    fn build(&self, task: Task, shots: usize) -> Result<Work> {
        let d = self.data;
        let seed = self.cfg.seed;
        Ok(match task {
            Task::Mmlu => Work::Mc(tasks::mmlu::items(&d.mmlu("test")?, &d.mmlu("dev")?, shots)),
            Task::Hellaswag => Work::Mc(tasks::hellaswag::items(
                &d.hellaswag_val()?,
                &d.hellaswag_train()?,
                shots,
                seed,
            )),
            Task::ArcChallenge => Work::Mc(tasks::arc::items(
                &d.arc_challenge_test()?,
                &d.arc_challenge_train()?,
                shots,
                seed,
            )),
            Task::Winogrande => Work::Mc(tasks::winogrande::items(
                &d.winogrande_val()?,
                &d.winogrande_train()?,
                shots,
                seed,
            )?),
            Task::Gsm8k => Work::Gen(
                d.gsm8k_test()?
                    .iter()
                    .enumerate()
                    .map(|(i, doc)| GenItem {
                        id: i.to_string(),
                        prompt: tasks::gsm8k::prompt(doc, shots.min(tasks::gsm8k::EXEMPLARS.len())),
                        check: Check::Number(tasks::gsm8k::target(doc)),
                    })
                    .collect(),
            ),
            Task::Humaneval => Work::Gen(
                d.humaneval()?
                    .into_iter()
                    .map(|doc| GenItem {
                        id: doc.task_id.clone(),
                        prompt: doc.prompt.clone(),
                        check: Check::HumanEval(Box::new(doc)),
                    })
                    .collect(),
            ),
            Task::Math | Task::Math500 => {
                let docs = if task == Task::Math {
                    d.math_test()?
                } else {
                    d.math500()?
                };
                let k = shots.min(tasks::math::EXEMPLARS.len());
                Work::Gen(
                    docs.iter()
                        .enumerate()
                        .map(|(i, doc)| GenItem {
                            id: i.to_string(),
                            prompt: tasks::math::prompt(doc, k),
                            check: Check::Math(doc.answer.clone()),
                        })
                        .collect(),
                )
            }
            Task::Mbpp => {
                let k = shots.min(tasks::mbpp::EXEMPLARS.len());
                Work::Gen(
                    d.mbpp_test()?
                        .into_iter()
                        .map(|doc| GenItem {
                            id: doc.task_id.to_string(),
                            prompt: tasks::mbpp::prompt(&doc, k),
                            check: Check::Mbpp(Box::new(doc)),
                        })
                        .collect(),
                )
            }
            Task::Lambada => Work::Mc(
                d.lambada()?
                    .into_iter()
                    .enumerate()
                    .map(|(i, doc)| McItem {
                        id: i.to_string(),
                        choice_chars: vec![doc.continuation.len()],
                        requests: vec![tasks::Request {
                            context: doc.context,
                            continuation: doc.continuation,
                        }],
                        gold: 0,
                    })
                    .collect(),
            ),
        })
    }

    /// Run one task; `progress(done, total)` after every item.
    pub fn run(&self, task: Task, progress: &mut dyn FnMut(usize, usize)) -> Result<TaskResult> {
        let shots = self.cfg.shots.unwrap_or(task.default_shots());
        let t0 = Instant::now();
        std::fs::create_dir_all(self.out_dir).map_err(io(self.out_dir))?;
        let settings = self.settings(task, shots);
        let settings_path = self.out_dir.join(format!("{}.settings.json", task.name()));
        let samples_path = self.out_dir.join(format!("{}.samples.jsonl", task.name()));
        if let Ok(old) = std::fs::read_to_string(&settings_path) {
            let old: Json = serde_json::from_str(&old).unwrap_or(Json::Null);
            if old != settings {
                return Err(Error::Invalid(format!(
                    "{} holds {} results made with other settings ({old}); use another --out folder or remove it",
                    self.out_dir.display(),
                    task.name()
                )));
            }
        }
        std::fs::write(&settings_path, settings.to_string()).map_err(io(&settings_path))?;
        let mut records = read_records(&samples_path)?;
        let done: HashSet<String> = records
            .iter()
            .filter_map(|r| r.get("id").and_then(Json::as_str).map(str::to_owned))
            .collect();

        let work = self.build(task, shots)?;
        let tok = self.model.tokenizer()?;
        let eot = self.model.eos_ids.first().copied().unwrap_or(0);
        let mut scorer = Scorer::new(&self.model.model, tok, self.cfg.ctx, eot);
        let mut out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&samples_path)
            .map_err(io(&samples_path))?;
        let limit = |n: usize| self.cfg.limit.map_or(n, |l| l.min(n));
        match work {
            Work::Mc(items) => {
                let items = &items[..limit(items.len())];
                let total = items.len();
                let mut n_done = items.iter().filter(|i| done.contains(&i.id)).count();
                progress(n_done, total);
                for item in items.iter().filter(|i| !done.contains(&i.id)) {
                    let rec = self.score_mc(&mut scorer, item)?;
                    append(&mut out, &samples_path, &rec)?;
                    records.push(rec);
                    n_done += 1;
                    progress(n_done, total);
                }
                let ids: HashSet<&str> = items.iter().map(|i| i.id.as_str()).collect();
                records.retain(|r| {
                    r.get("id")
                        .and_then(Json::as_str)
                        .is_some_and(|id| ids.contains(id))
                });
            }
            Work::Gen(items) => {
                let items = &items[..limit(items.len())];
                let total = items.len();
                let mut n_done = items.iter().filter(|i| done.contains(&i.id)).count();
                progress(n_done, total);
                for item in items.iter().filter(|i| !done.contains(&i.id)) {
                    let prompt = if self.cfg.chat {
                        self.chat_wrap(&item.prompt)?
                    } else {
                        item.prompt.clone()
                    };
                    let stop: &[&str] = match item.check {
                        Check::Number(_) => &tasks::gsm8k::STOP,
                        Check::HumanEval(_) => &tasks::humaneval::STOP,
                        Check::Math(_) => &tasks::math::STOP,
                        Check::Mbpp(_) => &tasks::mbpp::STOP,
                    };
                    let text = scorer.greedy(
                        &prompt,
                        self.cfg.max_gen_tokens,
                        stop,
                        &self.model.eos_ids,
                    )?;
                    let rec = judge(&item.id, &sha256_hex(&prompt), text, &item.check)?;
                    append(&mut out, &samples_path, &rec)?;
                    records.push(rec);
                    n_done += 1;
                    progress(n_done, total);
                }
                let ids: HashSet<&str> = items.iter().map(|i| i.id.as_str()).collect();
                records.retain(|r| {
                    r.get("id")
                        .and_then(Json::as_str)
                        .is_some_and(|id| ids.contains(id))
                });
            }
        }
        let metrics = aggregate(task, &records);
        Ok(TaskResult {
            task: task.name().into(),
            primary: task.primary().into(),
            metrics,
            n: records.len(),
            shots,
            seconds: t0.elapsed().as_secs_f64(),
            tokens_computed: scorer.computed_tokens,
            tokens_reused: scorer.reused_tokens,
        })
    }

    fn score_mc(&self, scorer: &mut Scorer<'_>, item: &McItem) -> Result<Json> {
        let mut lls = Vec::with_capacity(item.requests.len());
        let mut greedy = Vec::new();
        let mut ntok = Vec::new();
        let mut bytes = Vec::new();
        let mut h = Sha256::new();
        for r in &item.requests {
            let (ctx, cont) = if self.cfg.chat {
                (
                    self.chat_wrap(&r.context)?,
                    r.continuation.trim_start().to_string(),
                )
            } else {
                (r.context.clone(), r.continuation.clone())
            };
            h.update(ctx.as_bytes());
            h.update([0]);
            let s = scorer.score(&ctx, &cont)?;
            lls.push(s.loglik);
            greedy.push(s.is_greedy);
            ntok.push(s.n_tokens);
            bytes.push(cont.len());
        }
        let argmax = |v: &[f64]| {
            v.iter()
                .enumerate()
                .fold(0, |b, (i, x)| if *x > v[b] { i } else { b })
        };
        let normed: Vec<f64> = lls
            .iter()
            .zip(&item.choice_chars)
            .map(|(l, &c)| l / c.max(1) as f64)
            .collect();
        let pred = argmax(&lls);
        let pred_norm = argmax(&normed);
        Ok(json!({
            "id": item.id,
            "prompt_sha256": crate::data::hex(&h.finalize()),
            "loglik": lls,
            "n_tokens": ntok,
            "cont_bytes": bytes,
            "is_greedy": greedy,
            "gold": item.gold,
            "pred": pred,
            "pred_norm": pred_norm,
            "acc": f64::from(u8::from(pred == item.gold)),
            "acc_norm": f64::from(u8::from(pred_norm == item.gold)),
        }))
    }
}

/// The record of one generation, with its verdict.
fn judge(id: &str, prompt_sha: &str, text: String, check: &Check) -> Result<Json> {
    Ok(match check {
        Check::Number(target) => {
            let strict = tasks::gsm8k::extract_strict(&text);
            let flex = tasks::gsm8k::extract_flexible(&text);
            let em = |x: &Option<String>| {
                f64::from(u8::from(tasks::gsm8k::is_correct(x.as_deref(), target)))
            };
            json!({
                "id": id,
                "prompt_sha256": prompt_sha,
                "generated": text,
                "target": target,
                "extracted_strict": strict,
                "extracted_flexible": flex,
                "exact_match_strict": em(&strict),
                "exact_match_flexible": em(&flex),
            })
        }
        Check::HumanEval(doc) => {
            let program = tasks::humaneval::program(doc, &text);
            program_record(&program, id, prompt_sha, &text)?
        }
        Check::Math(target) => {
            let j = tasks::math::judge(&text, target);
            json!({
                "id": id,
                "prompt_sha256": prompt_sha,
                "generated": text,
                "target": target,
                "answer": j.answer,
                "answer_boxed": j.answer_boxed,
                "exact_match": f64::from(u8::from(j.exact_match)),
                "exact_match_boxed": f64::from(u8::from(j.exact_match_boxed)),
            })
        }
        Check::Mbpp(doc) => {
            let program = tasks::mbpp::program(doc, &text);
            program_record(&program, id, prompt_sha, &text)?
        }
    })
}

/// Runs a generated program (HumanEval, MBPP) in the sandbox; its sample record with pass@1.
fn program_record(program: &str, id: &str, prompt_sha: &str, text: &str) -> Result<Json> {
    let o = crate::sandbox::run_python(program, &crate::sandbox::Limits::default())?;
    let passed = o.verdict == crate::sandbox::Verdict::Passed;
    let tail: Vec<char> = o.stderr.chars().rev().take(400).collect();
    Ok(json!({
        "id": id,
        "prompt_sha256": prompt_sha,
        "generated": text,
        "verdict": format!("{:?}", o.verdict),
        "stderr_tail": tail.into_iter().rev().collect::<String>(),
        "isolation": format!("{:?}", o.isolation),
        "pass@1": f64::from(u8::from(passed)),
    }))
}

fn append(out: &mut File, path: &Path, rec: &Json) -> Result<()> {
    writeln!(out, "{rec}")
        .and_then(|_| out.flush())
        .map_err(io(path))
}

/// Records already written; a torn last line (an interrupted write) is dropped and the file
/// rewritten without it.
fn read_records(path: &PathBuf) -> Result<Vec<Json>> {
    let Ok(f) = File::open(path) else {
        return Ok(Vec::new());
    };
    let mut good = Vec::new();
    let mut torn = false;
    for line in BufReader::new(f).lines() {
        let line = line.map_err(io(path))?;
        match serde_json::from_str::<Json>(&line) {
            Ok(v) if v.get("id").is_some() => good.push(v),
            _ => torn = true,
        }
    }
    if torn {
        let text: String = good.iter().map(|r| format!("{r}\n")).collect();
        std::fs::write(path, text).map_err(io(path))?;
    }
    Ok(good)
}

fn field(records: &[Json], name: &str) -> Vec<f64> {
    records
        .iter()
        .filter_map(|r| r.get(name).and_then(Json::as_f64))
        .collect()
}

fn aggregate(task: Task, records: &[Json]) -> std::collections::BTreeMap<String, Metric> {
    let mut m = std::collections::BTreeMap::new();
    match task {
        Task::Gsm8k => {
            m.insert(
                "exact_match_strict".into(),
                mean_stderr(&field(records, "exact_match_strict")),
            );
            m.insert(
                "exact_match_flexible".into(),
                mean_stderr(&field(records, "exact_match_flexible")),
            );
        }
        Task::Humaneval | Task::Mbpp => {
            m.insert("pass@1".into(), mean_stderr(&field(records, "pass@1")));
        }
        Task::Math | Task::Math500 => {
            for name in ["exact_match", "exact_match_boxed"] {
                m.insert(name.into(), mean_stderr(&field(records, name)));
            }
        }
        Task::Lambada => {
            let ll: Vec<f64> = records
                .iter()
                .filter_map(|r| r.get("loglik")?.get(0)?.as_f64())
                .collect();
            let bytes: f64 = records
                .iter()
                .filter_map(|r| r.get("cont_bytes")?.get(0)?.as_f64())
                .sum();
            let greedy: Vec<f64> = records
                .iter()
                .filter_map(|r| {
                    r.get("is_greedy")?
                        .get(0)?
                        .as_bool()
                        .map(|b| f64::from(u8::from(b)))
                })
                .collect();
            let total: f64 = ll.iter().sum();
            if !ll.is_empty() {
                m.insert(
                    "perplexity".into(),
                    Metric {
                        value: (-total / ll.len() as f64).exp(),
                        stderr: None,
                    },
                );
                m.insert(
                    "bits_per_byte".into(),
                    Metric {
                        value: -total / (bytes.max(1.0) * std::f64::consts::LN_2),
                        stderr: None,
                    },
                );
            }
            m.insert("acc".into(), mean_stderr(&greedy));
        }
        _ => {
            m.insert("acc".into(), mean_stderr(&field(records, "acc")));
            if matches!(task, Task::Hellaswag | Task::ArcChallenge) {
                m.insert("acc_norm".into(), mean_stderr(&field(records, "acc_norm")));
            }
        }
    }
    m
}
