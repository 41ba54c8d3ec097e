//! Running a task: build its items, skip those already recorded in the output folder, score
//! the rest (appending one JSON line per item, so an interrupted run resumes where it
//! stopped), and compute the task's metrics from every record.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use qwen2_core::qwen2_tokenizer::ChatTemplate;
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
    /// Render each prompt with the model's chat template (instruct models), as lm-eval's
    /// `--apply_chat_template` does.
    pub chat: bool,
    /// With `chat`: each few-shot example as its own user/assistant turns (lm-eval's
    /// `--fewshot_as_multiturn`, its default with a chat template), else all in one user turn.
    pub fewshot_as_multiturn: bool,
    /// The first N items of each subtask (MMLU's 57 subjects), as lm-eval's `--limit N` on a
    /// group; tasks without subtasks take their first N. Applied before `limit`.
    pub limit_per_subtask: Option<usize>,
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
    prompt: tasks::FewShotPrompt,
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
        let mut s = json!({
            "task": task.name(),
            "shots": shots,
            "seed": self.cfg.seed,
            "chat": self.cfg.chat,
            "max_gen_tokens": self.cfg.max_gen_tokens,
            "model": self.cfg.model_id,
            "engine_version": ENGINE_VERSION,
        });
        // Only with --chat, so that folders of plain runs keep resuming. Chat prompts are
        // rendered as lm-eval renders them ("lm-eval-0.4.13"); folders of earlier chat runs
        // (the whole prompt as one user turn) are refused rather than mixed. MATH and MBPP
        // examples became turns later ("…-gen-turns").
        if self.cfg.chat {
            let format = match task {
                Task::Math | Task::Math500 | Task::Mbpp => "lm-eval-0.4.13-gen-turns",
                _ => "lm-eval-0.4.13",
            };
            s["chat_format"] = json!(format);
            s["fewshot_as_multiturn"] = json!(self.cfg.fewshot_as_multiturn);
        }
        s
    }

    /// The text the model sees for `prompt`: plain, or rendered with the chat template.
    pub fn render(&self, prompt: &tasks::FewShotPrompt) -> Result<String> {
        if !self.cfg.chat {
            return Ok(prompt.text());
        }
        let tpl = self.model.chat_template.as_ref().ok_or_else(|| {
            Error::Invalid("--chat needs a model with a chat template (an instruct model)".into())
        })?;
        render_chat(tpl, prompt, self.cfg.fewshot_as_multiturn)
    }

    /// `limit_per_subtask`: MMLU keeps the first N items of each subject (in lm-eval's
    /// subject order), any other task its first N. (`limit` is applied after this, in `run`.)
    fn select(&self, task: Task, work: Work) -> Work {
        let Some(n) = self.cfg.limit_per_subtask else {
            return work;
        };
        match work {
            Work::Mc(items) if task == Task::Mmlu => {
                Work::Mc(tasks::mmlu::first_per_subject(items, n))
            }
            Work::Mc(mut items) => {
                items.truncate(n);
                Work::Mc(items)
            }
            Work::Gen(mut items) => {
                items.truncate(n);
                Work::Gen(items)
            }
        }
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
                        prompt: tasks::gsm8k::fewshot_prompt(
                            doc,
                            shots.min(tasks::gsm8k::EXEMPLARS.len()),
                        ),
                        check: Check::Number(tasks::gsm8k::target(doc)),
                    })
                    .collect(),
            ),
            Task::Humaneval => Work::Gen(
                d.humaneval()?
                    .into_iter()
                    .map(|doc| GenItem {
                        id: doc.task_id.clone(),
                        prompt: tasks::humaneval::fewshot_prompt(&doc),
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
                            prompt: tasks::math::fewshot_prompt(doc, k),
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
                            prompt: tasks::mbpp::fewshot_prompt(&doc, k),
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
                            prompt: std::sync::Arc::new(tasks::FewShotPrompt::single(
                                doc.context.clone(),
                            )),
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

        let work = self.select(task, self.build(task, shots)?);
        let tok = self.model.tokenizer()?;
        let eot = self.model.eos_ids.first().copied().unwrap_or(0);
        let mut scorer = Scorer::new(&self.model.model, tok, self.cfg.ctx, eot);
        let mut out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&samples_path)
            .map_err(io(&samples_path))?;
        let limit = |n: usize| self.cfg.limit.map_or(n, |l| l.min(n));
        // The ids of the items to run, and how to score item `i` into its record.
        type ScoreFn<'s> = Box<dyn FnMut(usize) -> Result<Json> + 's>;
        let sc = &mut scorer;
        let (ids, mut score): (Vec<&str>, ScoreFn<'_>) = match &work {
            Work::Mc(items) => {
                let items = &items[..limit(items.len())];
                let ids = items.iter().map(|i| i.id.as_str()).collect();
                (ids, Box::new(move |i| self.score_mc(sc, &items[i])))
            }
            Work::Gen(items) => {
                let items = &items[..limit(items.len())];
                let ids = items.iter().map(|i| i.id.as_str()).collect();
                (ids, Box::new(move |i| self.score_gen(sc, &items[i])))
            }
        };
        let total = ids.len();
        let mut n_done = ids.iter().filter(|id| done.contains(**id)).count();
        progress(n_done, total);
        for (i, id) in ids.iter().enumerate() {
            if done.contains(*id) {
                continue;
            }
            let rec = score(i)?;
            append(&mut out, &samples_path, &rec)?;
            records.push(rec);
            n_done += 1;
            progress(n_done, total);
        }
        drop(score);
        let ids: HashSet<&str> = ids.into_iter().collect();
        records.retain(|r| {
            r.get("id")
                .and_then(Json::as_str)
                .is_some_and(|id| ids.contains(id))
        });
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

    /// Greedy generation for `item`, judged.
    fn score_gen(&self, scorer: &mut Scorer<'_>, item: &GenItem) -> Result<Json> {
        let prompt = self.render(&item.prompt)?;
        let stop: &[&str] = match item.check {
            Check::Number(_) => &tasks::gsm8k::STOP,
            Check::HumanEval(_) => &tasks::humaneval::STOP,
            Check::Math(_) => &tasks::math::STOP,
            Check::Mbpp(_) => &tasks::mbpp::STOP,
        };
        let text = scorer.greedy(&prompt, self.cfg.max_gen_tokens, stop, &self.model.eos_ids)?;
        judge(&item.id, &sha256_hex(&prompt), text, &item.check)
    }

    fn score_mc(&self, scorer: &mut Scorer<'_>, item: &McItem) -> Result<Json> {
        let mut lls = Vec::with_capacity(item.requests.len());
        let mut greedy = Vec::new();
        let mut ntok = Vec::new();
        let mut bytes = Vec::new();
        let mut h = Sha256::new();
        for r in &item.requests {
            let (ctx, cont) = if self.cfg.chat {
                (self.render(&r.prompt)?, r.chat_continuation().to_string())
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

/// `prompt` rendered with a chat template as lm-eval 0.4.13 renders it (`fewshot_context`
/// with `apply_chat_template`): its messages, then the assistant's generation prompt.
pub fn render_chat(
    tpl: &ChatTemplate,
    prompt: &tasks::FewShotPrompt,
    multiturn: bool,
) -> Result<String> {
    tpl.render(&prompt.messages(multiturn), true, None)
        .map_err(|e| Error::Tokenizer(e.to_string()))
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
                "by_equivalence": j.by_equivalence,
                "by_equivalence_boxed": j.by_equivalence_boxed,
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
