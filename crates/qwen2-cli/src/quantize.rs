//! `qwen2 quantize IN OUT --type T`: a GGUF in one of llama.cpp's file types, from a Hugging Face
//! directory or another GGUF, with a progress bar over the elements written.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use qwen2_core::quantize::{quantize, FileType, Progress};

#[derive(Args)]
pub struct QuantizeArgs {
    /// A .gguf file (requantized from its dequantized values) or a Hugging Face model directory.
    pub input: PathBuf,
    /// The .gguf file to write (written to OUT.tmp, renamed when complete).
    pub output: PathBuf,
    /// Q4_K_M, Q4_K_S, Q5_K_M, Q5_K_S, Q6_K, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, F16, BF16 or F32.
    #[arg(long = "type", short = 't', default_value = "Q4_K_M")]
    pub ty: String,
    /// Replace OUT if it exists.
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: QuantizeArgs) -> Result<()> {
    let ftype: FileType = a.ty.parse()?;
    if a.output.exists() && !a.force {
        bail!("{} exists; pass --force to replace it", a.output.display());
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {percent:>3}% {msg} (eta {eta})",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    let report = quantize(&a.input, &a.output, ftype, |p| match p {
        Progress::Start { total_elements } => bar.set_length(total_elements),
        Progress::Tensor { plan, index, count } => bar.set_message(format!(
            "[{}/{count}] {} {} -> {}",
            index + 1,
            plan.name,
            plan.from.name(),
            plan.to.name()
        )),
        Progress::Elements(n) => bar.inc(n),
    })
    .with_context(|| format!("quantizing {} to {ftype}", a.input.display()))?;
    bar.finish_and_clear();
    let mut counts = std::collections::BTreeMap::new();
    for t in &report.tensors {
        *counts.entry(t.to.name()).or_insert(0usize) += 1;
    }
    let mix: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "[qwen2] wrote {} ({ftype}): {:.1} MiB from {:.1} MiB; tensors: {}",
        a.output.display(),
        mib(report.bytes_out),
        mib(report.bytes_in),
        mix.join(", ")
    );
    Ok(())
}

/// `qwen2 perplexity -m MODEL --kl-base BASE -f FILE`: both models on the same chunks.
pub fn cmd_kl_divergence(
    m: &crate::ModelArg,
    base: &str,
    file: &std::path::Path,
    ctx: usize,
) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let lm = crate::load(m)?;
    let base_arg = crate::ModelArg {
        model: Some(base.to_string()),
        exact: m.exact,
        kv_type: m.kv_type,
        threads: m.threads,
    };
    let lb = crate::load(&base_arg)?;
    let ids = lm.tokenizer()?.encode(&text)?;
    let r = qwen2_core::perplexity::kl_divergence(&lm.model, &lb.model, &ids, ctx, |i, n, kl| {
        eprint!("[{}/{}] KL {:.6}  ", i + 1, n, kl);
    })?;
    eprintln!();
    println!(
        "chunks: {}, tokens scored: {}, ctx: {ctx}",
        r.model.n_chunks, r.model.n_scored
    );
    println!("base perplexity: {:.4}", r.base.ppl);
    println!("perplexity: {:.4}", r.model.ppl);
    println!(
        "delta ppl: {:+.4} ({:+.3}%)",
        r.delta_ppl,
        100.0 * r.delta_ppl / r.base.ppl
    );
    println!("KL mean: {:.6} ± {:.6}", r.kl_mean, r.kl_stderr);
    println!("KL median: {:.6}", r.kl_median);
    println!("KL p99: {:.6}", r.kl_p99);
    println!("KL max: {:.6}", r.kl_max);
    println!("top-1 agreement: {:.3}%", 100.0 * r.top1_agreement);
    Ok(())
}
