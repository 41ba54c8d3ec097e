//! `qwen2 convert IN OUT`: a GGUF file into a Hugging Face model directory, or a Hugging Face
//! directory into a GGUF file (the direction follows from IN).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use qwen2_core::convert::{self, GgufOutType, HfDtype, ToGgufOptions, ToHfOptions};

#[derive(Args)]
pub struct ConvertArgs {
    /// A .gguf file (converted to a Hugging Face directory) or a Hugging Face model directory
    /// (converted to a .gguf file).
    pub input: PathBuf,
    /// The Hugging Face directory or .gguf file to write.
    pub output: PathBuf,
    /// GGUF → HF: safetensors dtype: bf16 (default), f16 or f32. Weights are dequantized.
    #[arg(long)]
    pub dtype: Option<String>,
    /// GGUF → HF: largest safetensors shard, e.g. 2GB (default), 500MB, 1GiB.
    #[arg(long)]
    pub max_shard_size: Option<String>,
    /// HF → GGUF: type of the weight matrices: f16 (default), bf16, f32 or q8_0. Norms and
    /// biases stay f32.
    #[arg(long)]
    pub outtype: Option<String>,
    /// Replace OUT if it exists.
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: ConvertArgs) -> Result<()> {
    let to_hf = a.input.is_file();
    if to_hf && a.outtype.is_some() {
        bail!(
            "--outtype applies to Hugging Face → GGUF; {} is a GGUF file (use --dtype)",
            a.input.display()
        );
    }
    if !to_hf && (a.dtype.is_some() || a.max_shard_size.is_some()) {
        bail!(
            "--dtype and --max-shard-size apply to GGUF → Hugging Face; {} is not a GGUF file (use --outtype)",
            a.input.display()
        );
    }
    let hf = ToHfOptions {
        dtype: match &a.dtype {
            Some(d) => d.parse::<HfDtype>()?,
            None => HfDtype::default(),
        },
        max_shard_size: match &a.max_shard_size {
            Some(s) => convert::parse_size(s)?,
            None => convert::DEFAULT_MAX_SHARD_SIZE,
        },
        force: a.force,
    };
    let gguf = ToGgufOptions {
        outtype: match &a.outtype {
            Some(t) => t.parse::<GgufOutType>()?,
            None => GgufOutType::default(),
        },
        force: a.force,
    };
    let what = if to_hf {
        format!("GGUF → Hugging Face ({})", hf.dtype.torch_name())
    } else {
        format!("Hugging Face → GGUF ({:?})", gguf.outtype)
    };
    eprintln!(
        "[qwen2] converting {} → {} [{what}]",
        a.input.display(),
        a.output.display()
    );
    let t0 = std::time::Instant::now();
    let done = convert::convert(&a.input, &a.output, &hf, &gguf)
        .with_context(|| format!("converting {}", a.input.display()))?;
    for n in &done.notes {
        eprintln!("[qwen2] note: {n}");
    }
    for f in &done.files {
        println!("{}", f.display());
    }
    eprintln!(
        "[qwen2] wrote {} tensors ({:.1} MB of tensor data) to {} in {:.1} s",
        done.tensors,
        done.tensor_bytes as f64 / 1e6,
        done.output.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
