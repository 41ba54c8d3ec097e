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
use crate::loglik::{GenRequest, Scorer};
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
    HumanevalInstruct,
    MbppInstruct,
}

/// The generation limit of lm-eval's HFLM when a task's yaml sets no `max_gen_toks`
/// (`HFLM.max_gen_toks`, lm-eval 0.4.13 `models/huggingface.py`).
pub const LM_EVAL_DEFAULT_MAX_GEN_TOKS: usize = 256;

impl Task {
    pub const ALL: [Task; 12] = [
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
        Task::HumanevalInstruct,
        Task::MbppInstruct,
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
            Task::HumanevalInstruct => "humaneval_instruct",
            Task::MbppInstruct => "mbpp_instruct",
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
            Task::Mbpp | Task::MbppInstruct => 3,
            Task::Lambada | Task::Humaneval | Task::HumanevalInstruct => 0,
        }
    }

    /// The metric the card reports.
    pub fn primary(self) -> &'static str {
        match self {
            Task::Mmlu | Task::Winogrande => "acc",
            Task::Hellaswag | Task::ArcChallenge => "acc_norm",
            Task::Gsm8k => "exact_match_strict",
            Task::Lambada => "bits_per_byte",
            Task::Humaneval | Task::Mbpp | Task::HumanevalInstruct | Task::MbppInstruct => "pass@1",
            Task::Math | Task::Math500 => "exact_match",
        }
    }

    /// Most tokens generated per item, as lm-eval 0.4.13 sets it for the task we follow: the
    /// yaml's `generation_kwargs.max_gen_toks` (1024 in `humaneval.yaml`, which
    /// `humaneval_instruct.yaml` includes; 256 in `mbpp_instruct.yaml`), else HFLM's 256
    /// (`gsm8k-cot.yaml`, `minerva_math_*.yaml`, `mbpp.yaml` set none). `None`: no generation.
    pub fn default_max_gen_tokens(self) -> Option<usize> {
        match self {
            Task::Humaneval | Task::HumanevalInstruct => Some(1024),
            Task::MbppInstruct => Some(256),
            Task::Gsm8k | Task::Math | Task::Math500 | Task::Mbpp => {
                Some(LM_EVAL_DEFAULT_MAX_GEN_TOKS)
            }
            Task::Mmlu
            | Task::Hellaswag
            | Task::ArcChallenge
            | Task::Winogrande
            | Task::Lambada => None,
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
    /// Most tokens generated per item, for every generation task; `None`: each task's
    /// lm-eval limit ([`Task::default_max_gen_tokens`]).
    pub max_gen_tokens: Option<usize>,
    /// KV cache size in tokens.
    pub ctx: usize,
    /// Identifies the model in the settings fingerprint (its file hash).
    pub model_id: String,
}

impl EvalConfig {
    /// The generation limit `task` runs with (`None` for a task that generates nothing).
    pub fn max_gen_tokens_for(&self, task: Task) -> Option<usize> {
        task.default_max_gen_tokens()
            .map(|d| self.max_gen_tokens.unwrap_or(d))
    }
}

pub const ENGINE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What a task run needs from outside: the model and data.
pub struct Runner<'a> {
    pub model: &'a LoadedModel,
    pub data: &'a DataDir,
    pub cfg: &'a EvalConfig,
    pub out_dir: &'a Path,
}

/// Multiple-choice items scored per batch: enough that the weights' per-pass costs (unpacking
/// panels, the LM head) spread over several items; few enough that an interrupted run loses
/// little (records are written per batch).
const MC_BATCH: usize = 8;

/// Generation items per batch: four times the sequences that decode at once
/// (`Scorer::greedy_batch`), so a finished one's place is taken by the next item for most of
/// the batch (GSM8K, 64 items: 47.6 s against 49.7–51.1 s with 16); records are written per
/// batch.
const GEN_BATCH: usize = 32;

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
    /// MATH: the normalized answer against this normalized reference; the solution is
    /// math-verify's gold (lm-eval's `math_verify` metric).
    Math(String, String),
    /// MBPP: the completion followed by the problem's asserts must pass.
    Mbpp(Box<crate::data::MbppDoc>),
    /// HumanEval for instruct models: the completion cut at its closing fence.
    HumanEvalInstruct(Box<crate::data::HumanEvalDoc>),
    /// MBPP for instruct models: the code extracted from the completion's fence.
    MbppInstruct(Box<crate::data::MbppDoc>),
}

pub fn sha256_hex(s: &str) -> String {
    crate::data::hex(&Sha256::digest(s.as_bytes()))
}

impl Runner<'_> {
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
                            check: Check::Math(doc.answer.clone(), doc.solution.clone()),
                        })
                        .collect(),
                )
            }
            Task::HumanevalInstruct => Work::Gen(
                d.humaneval()?
                    .into_iter()
                    .map(|doc| GenItem {
                        id: doc.task_id.clone(),
                        prompt: tasks::humaneval_instruct::fewshot_prompt(&doc),
                        check: Check::HumanEvalInstruct(Box::new(doc)),
                    })
                    .collect(),
            ),
            Task::Mbpp | Task::MbppInstruct => {
                let k = shots.min(tasks::mbpp::EXEMPLARS.len());
                let instruct = task == Task::MbppInstruct;
                Work::Gen(
                    d.mbpp_test()?
                        .into_iter()
                        .map(|doc| {
                            let id = doc.task_id.to_string();
                            if instruct {
                                let prompt = tasks::mbpp_instruct::fewshot_prompt(&doc, k);
                                let check = Check::MbppInstruct(Box::new(doc));
                                GenItem { id, prompt, check }
                            } else {
                                let prompt = tasks::mbpp::fewshot_prompt(&doc, k);
                                GenItem {
                                    id,
                                    prompt,
                                    check: Check::Mbpp(Box::new(doc)),
                                }
                            }
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
        let settings = settings(self.cfg, task, shots);
        let settings_path = self.out_dir.join(format!("{}.settings.json", task.name()));
        let samples_path = self.out_dir.join(format!("{}.samples.jsonl", task.name()));
        if let Ok(old) = std::fs::read_to_string(&settings_path) {
            check_settings(task, &old, &settings, self.out_dir)?;
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
        // The ids of the items to run, how to score a batch of them into their records, and
        // how many to batch: multiple-choice items share passes (`Scorer::score_batch`).
        type ScoreFn<'s> = Box<dyn FnMut(&[usize]) -> Result<Vec<Json>> + 's>;
        let sc = &mut scorer;
        let max_gen = self.cfg.max_gen_tokens_for(task).unwrap_or(0);
        let (ids, mut score, batch): (Vec<&str>, ScoreFn<'_>, usize) = match &work {
            Work::Mc(items) => {
                let items = &items[..limit(items.len())];
                let ids = items.iter().map(|i| i.id.as_str()).collect();
                let score = move |b: &[usize]| {
                    let batch: Vec<&McItem> = b.iter().map(|&i| &items[i]).collect();
                    self.score_mc(sc, &batch)
                };
                (ids, Box::new(score), MC_BATCH)
            }
            Work::Gen(items) => {
                let items = &items[..limit(items.len())];
                let ids = items.iter().map(|i| i.id.as_str()).collect();
                let score = move |b: &[usize]| {
                    let batch: Vec<&GenItem> = b.iter().map(|&i| &items[i]).collect();
                    self.score_gen(sc, &batch, max_gen)
                };
                (ids, Box::new(score), GEN_BATCH)
            }
        };
        let total = ids.len();
        let todo: Vec<usize> = (0..total).filter(|&i| !done.contains(ids[i])).collect();
        let mut n_done = total - todo.len();
        progress(n_done, total);
        for b in todo.chunks(batch) {
            for rec in score(b)? {
                append(&mut out, &samples_path, &rec)?;
                records.push(rec);
                n_done += 1;
            }
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
            max_gen_tokens: self.cfg.max_gen_tokens_for(task),
        })
    }

    /// Greedy generations for `items` (at most `max_tokens` tokens each, see
    /// [`Scorer::greedy_batch`]), judged, their records in order.
    fn score_gen(
        &self,
        scorer: &mut Scorer<'_>,
        items: &[&GenItem],
        max_tokens: usize,
    ) -> Result<Vec<Json>> {
        let prompts = items
            .iter()
            .map(|item| self.render(&item.prompt))
            .collect::<Result<Vec<String>>>()?;
        let reqs: Vec<GenRequest<'_>> = items
            .iter()
            .zip(&prompts)
            .map(|(item, prompt)| GenRequest {
                prompt,
                max_new: max_tokens,
                stop: match item.check {
                    Check::Number(_) => &tasks::gsm8k::STOP,
                    Check::HumanEval(_) => &tasks::humaneval::STOP,
                    Check::Math(..) => &tasks::math::STOP,
                    Check::Mbpp(_) => &tasks::mbpp::STOP,
                    Check::HumanEvalInstruct(_) => &tasks::humaneval_instruct::STOP,
                    Check::MbppInstruct(_) => &tasks::mbpp_instruct::STOP,
                },
            })
            .collect();
        let texts = scorer.greedy_batch(&reqs, &self.model.eos_ids)?;
        items
            .iter()
            .zip(&prompts)
            .zip(texts)
            .map(|((item, prompt), text)| judge(&item.id, &sha256_hex(prompt), text, &item.check))
            .collect()
    }

    /// Multiple-choice items scored together (see [`Scorer::score_batch`]), their records in
    /// order.
    fn score_mc(&self, scorer: &mut Scorer<'_>, items: &[&McItem]) -> Result<Vec<Json>> {
        let mut groups = Vec::with_capacity(items.len());
        let mut metas = Vec::with_capacity(items.len());
        for item in items {
            let mut pairs = Vec::with_capacity(item.requests.len());
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
                pairs.push(scorer.encode_pair(&ctx, &cont)?);
                bytes.push(cont.len());
            }
            groups.push(pairs);
            metas.push((crate::data::hex(&h.finalize()), bytes));
        }
        let scores = scorer.score_batch(&groups)?;
        let argmax = |v: &[f64]| {
            v.iter()
                .enumerate()
                .fold(0, |b, (i, x)| if *x > v[b] { i } else { b })
        };
        let mut recs = Vec::with_capacity(items.len());
        for ((item, (sha, bytes)), s) in items.iter().zip(metas).zip(scores) {
            let lls: Vec<f64> = s.iter().map(|c| c.loglik).collect();
            let greedy: Vec<bool> = s.iter().map(|c| c.is_greedy).collect();
            let ntok: Vec<usize> = s.iter().map(|c| c.n_tokens).collect();
            let normed: Vec<f64> = lls
                .iter()
                .zip(&item.choice_chars)
                .map(|(l, &c)| l / c.max(1) as f64)
                .collect();
            let mut rec = json!({
                "id": item.id,
                "prompt_sha256": sha,
                "loglik": lls,
                "n_tokens": ntok,
                "cont_bytes": bytes,
                "is_greedy": greedy,
            });
            let fields = if let [g] = greedy[..] {
                // One continuation (LAMBADA): no choice to pick; its accuracy is lm-eval's,
                // whether greedy decoding produces it.
                json!({ "acc": f64::from(u8::from(g)) })
            } else {
                let (pred, pred_norm) = (argmax(&lls), argmax(&normed));
                json!({
                    "gold": item.gold,
                    "pred": pred,
                    "pred_norm": pred_norm,
                    "acc": f64::from(u8::from(pred == item.gold)),
                    "acc_norm": f64::from(u8::from(pred_norm == item.gold)),
                })
            };
            if let (Some(r), Json::Object(f)) = (rec.as_object_mut(), fields) {
                r.extend(f);
            }
            recs.push(rec);
        }
        Ok(recs)
    }
}

/// What a task's results depend on, written to `<task>.settings.json`.
fn settings(cfg: &EvalConfig, task: Task, shots: usize) -> Json {
    let mut s = json!({
        "task": task.name(),
        "shots": shots,
        "seed": cfg.seed,
        "chat": cfg.chat,
        "model": cfg.model_id,
        "engine_version": ENGINE_VERSION,
    });
    // The limit the task really runs with; none for log-likelihood tasks.
    if let Some(n) = cfg.max_gen_tokens_for(task) {
        s["max_gen_tokens"] = json!(n);
    }
    // Only with --chat, so that folders of plain runs keep resuming. Chat prompts are
    // rendered as lm-eval renders them ("lm-eval-0.4.13"); folders of earlier chat runs
    // (the whole prompt as one user turn) are refused rather than mixed. MATH and MBPP
    // examples became turns later ("…-gen-turns").
    if cfg.chat {
        let format = match task {
            Task::Math | Task::Math500 | Task::Mbpp | Task::MbppInstruct => {
                "lm-eval-0.4.13-gen-turns"
            }
            _ => "lm-eval-0.4.13",
        };
        s["chat_format"] = json!(format);
        s["fewshot_as_multiturn"] = json!(cfg.fewshot_as_multiturn);
    }
    s
}

/// Refuses a folder whose results were made with `old` settings (the text of its
/// `<task>.settings.json`) other than `new`, naming the settings that differ.
fn check_settings(task: Task, old: &str, new: &Json, dir: &Path) -> Result<()> {
    let mut old: Json = serde_json::from_str(old).unwrap_or(Json::Null);
    // Earlier versions recorded the generation limit for log-likelihood tasks too, where it
    // changes nothing.
    if task.default_max_gen_tokens().is_none() {
        if let Some(o) = old.as_object_mut() {
            o.remove("max_gen_tokens");
        }
    }
    if &old == new {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "{} holds {} results made with other settings ({}); use another --out folder or remove it",
        dir.display(),
        task.name(),
        settings_diff(&old, new)
    )))
}

/// `prompt` rendered with a chat template as lm-eval 0.4.13 renders it (`fewshot_context`
/// with `apply_chat_template`): its messages, then the assistant's generation prompt; or, for
/// a task with a `gen_prefix`, the messages up to the prefix's assistant turn left open
/// (transformers' `continue_final_message`, which lm-eval asks for then).
pub fn render_chat(
    tpl: &ChatTemplate,
    prompt: &tasks::FewShotPrompt,
    multiturn: bool,
) -> Result<String> {
    let mut messages = prompt.messages(multiturn);
    let tok_err = |e: qwen2_core::qwen2_tokenizer::TokenizerError| Error::Tokenizer(e.to_string());
    if prompt.gen_prefix.is_none() {
        return tpl.render(&messages, true, None).map_err(tok_err);
    }
    // As transformers does it: mark the end of the last message, render, cut at the mark.
    const TAG: &str = "CONTINUE_FINAL_MESSAGE_TAG ";
    if let Some(last) = messages.last_mut() {
        last.content.push_str(TAG);
    }
    let rendered = tpl.render(&messages, false, None).map_err(tok_err)?;
    let at = rendered.rfind(TAG.trim_end()).ok_or_else(|| {
        Error::Invalid(
            "the chat template drops the answer's start (gen_prefix) of the prompt".into(),
        )
    })?;
    Ok(if rendered[at..].starts_with(TAG) {
        rendered[..at].to_string()
    } else {
        // The template trimmed the message's trailing space.
        rendered[..at].trim_end().to_string()
    })
}

/// The settings that differ, "name: old there, new now", for the refusal message.
fn settings_diff(old: &Json, new: &Json) -> String {
    let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else {
        return format!("{old}");
    };
    let mut keys: Vec<&String> = o.keys().chain(n.keys()).collect();
    keys.sort();
    keys.dedup();
    let show = |v: Option<&Json>| v.map_or("unset".to_string(), Json::to_string);
    keys.into_iter()
        .filter(|k| o.get(*k) != n.get(*k))
        .map(|k| format!("{k}: {} there, {} now", show(o.get(k)), show(n.get(k))))
        .collect::<Vec<_>>()
        .join("; ")
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
        Check::Math(target, solution) => {
            let j = tasks::math::judge(&text, target);
            let mv = tasks::math_verify::math_verify(solution, &text);
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
                "math_verify": f64::from(u8::from(mv)),
            })
        }
        Check::Mbpp(doc) => {
            let program = tasks::mbpp::program(doc, &text);
            program_record(&program, id, prompt_sha, &text)?
        }
        Check::HumanEvalInstruct(doc) => {
            let program = tasks::humaneval_instruct::program(doc, &text);
            program_record(&program, id, prompt_sha, &text)?
        }
        Check::MbppInstruct(doc) => {
            // lm-eval 0.4.13's extraction (its score), and the same with the language-tag fix;
            // the second program runs only when the extracted code differs.
            let code = tasks::mbpp_instruct::extract_code(&text);
            let fixed = tasks::mbpp_instruct::extract_code_fixed(&text);
            let mut rec = program_record(
                &tasks::mbpp_instruct::program(doc, &code),
                id,
                prompt_sha,
                &text,
            )?;
            let pass_fixed = if fixed == code {
                rec["pass@1"].clone()
            } else {
                let r = program_record(
                    &tasks::mbpp_instruct::program(doc, &fixed),
                    id,
                    prompt_sha,
                    &text,
                )?;
                rec["verdict_fixed_extraction"] = r["verdict"].clone();
                r["pass@1"].clone()
            };
            rec["extracted"] = json!(code);
            rec["extracted_fixed"] = json!(fixed);
            rec["pass@1_fixed_extraction"] = pass_fixed;
            rec
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
        Task::Humaneval | Task::Mbpp | Task::HumanevalInstruct => {
            m.insert("pass@1".into(), mean_stderr(&field(records, "pass@1")));
        }
        Task::MbppInstruct => {
            for name in ["pass@1", "pass@1_fixed_extraction"] {
                m.insert(name.into(), mean_stderr(&field(records, name)));
            }
        }
        Task::Math | Task::Math500 => {
            for name in ["exact_match", "exact_match_boxed"] {
                m.insert(name.into(), mean_stderr(&field(records, name)));
            }
            // Only where every record has it (items cached before it existed do not).
            let mv = field(records, "math_verify");
            if mv.len() == records.len() {
                m.insert("math_verify".into(), mean_stderr(&mv));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max_gen_tokens: Option<usize>) -> EvalConfig {
        EvalConfig {
            shots: None,
            limit: None,
            seed: 1234,
            chat: false,
            fewshot_as_multiturn: true,
            limit_per_subtask: None,
            max_gen_tokens,
            ctx: 4096,
            model_id: "m".into(),
        }
    }

    #[test]
    fn generation_limits_default_to_lm_evals_and_the_flag_overrides_all() {
        // lm-eval 0.4.13, lm_eval/tasks/: humaneval/humaneval.yaml `max_gen_toks: 1024` (and
        // humaneval_instruct.yaml, which includes it), mbpp/mbpp_instruct.yaml
        // `max_gen_toks: 256`; gsm8k/gsm8k-cot.yaml, minerva_math/minerva_math_algebra.yaml
        // (and minerva_math500.yaml) and mbpp/mbpp.yaml set none, so HFLM's `max_gen_toks`
        // property (models/huggingface.py) gives 256. tests/lm_eval_instruct.rs checks these
        // against lm-eval's built tasks (fixtures/eval/lm_eval_instruct_prompts.json).
        let want = [
            (Task::Humaneval, 1024),
            (Task::HumanevalInstruct, 1024),
            (Task::MbppInstruct, 256),
            (Task::Gsm8k, 256),
            (Task::Math, 256),
            (Task::Math500, 256),
            (Task::Mbpp, 256),
        ];
        for (t, n) in want {
            assert_eq!(t.default_max_gen_tokens(), Some(n), "{}", t.name());
            assert_eq!(cfg(None).max_gen_tokens_for(t), Some(n));
            assert_eq!(cfg(Some(64)).max_gen_tokens_for(t), Some(64));
        }
        for t in Task::ALL {
            if !want.iter().any(|(w, _)| *w == t) {
                assert_eq!(cfg(Some(64)).max_gen_tokens_for(t), None, "{}", t.name());
            }
        }
    }

    #[test]
    fn settings_record_the_real_limit_and_refuse_another() {
        let dir = Path::new("out");
        let he = settings(&cfg(None), Task::Humaneval, 0);
        assert_eq!(he["max_gen_tokens"], 1024);
        assert_eq!(
            settings(&cfg(Some(300)), Task::Humaneval, 0)["max_gen_tokens"],
            300
        );
        assert!(settings(&cfg(None), Task::Mmlu, 5)
            .get("max_gen_tokens")
            .is_none());
        // A humaneval folder of the single 256-token default is refused, saying why.
        let old = json!({
            "task": "humaneval", "shots": 0, "seed": 1234, "chat": false,
            "max_gen_tokens": 256, "model": "m", "engine_version": ENGINE_VERSION,
        });
        let err = check_settings(Task::Humaneval, &old.to_string(), &he, dir)
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_gen_tokens: 256 there, 1024 now"), "{err}");
        // Given explicitly, the old limit resumes it.
        let he256 = settings(&cfg(Some(256)), Task::Humaneval, 0);
        check_settings(Task::Humaneval, &old.to_string(), &he256, dir).unwrap();
        // GSM8K's lm-eval limit is the old default: its folders resume as they were.
        let mut g = old.clone();
        g["task"] = json!("gsm8k");
        g["shots"] = json!(4);
        check_settings(
            Task::Gsm8k,
            &g.to_string(),
            &settings(&cfg(None), Task::Gsm8k, 4),
            dir,
        )
        .unwrap();
        // Log-likelihood folders recorded a limit they never used: ignored.
        let mut m = old;
        m["task"] = json!("mmlu");
        m["shots"] = json!(5);
        check_settings(
            Task::Mmlu,
            &m.to_string(),
            &settings(&cfg(None), Task::Mmlu, 5),
            dir,
        )
        .unwrap();
        m["seed"] = json!(7);
        let err = check_settings(
            Task::Mmlu,
            &m.to_string(),
            &settings(&cfg(None), Task::Mmlu, 5),
            dir,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("seed: 7 there, 1234 now") && !err.contains("max_gen"),
            "{err}"
        );
    }

    #[test]
    fn math_records_carry_math_verify() {
        let check = Check::Math("\\frac{1}{2}".into(), "So $\\boxed{\\frac12}$.".into());
        let text =
            " Thus $x = 0.5$.\nFinal Answer: The final answer is $0.5$. I hope it is correct.";
        let ok = judge("0", "sha", text.into(), &check).expect("record");
        assert_eq!(ok["math_verify"], 1.0);
        let bad = judge(
            "1",
            "sha",
            "Final Answer: The final answer is $2$.".into(),
            &check,
        )
        .expect("record");
        assert_eq!(bad["math_verify"], 0.0);
        let m = aggregate(Task::Math, &[ok.clone(), bad]);
        assert_eq!(m["math_verify"].value, 0.5);
        // A record cached before the metric existed: no partial mean.
        let mut old = ok.clone();
        old.as_object_mut().expect("object").remove("math_verify");
        assert!(!aggregate(Task::Math, &[ok, old]).contains_key("math_verify"));
    }
}
