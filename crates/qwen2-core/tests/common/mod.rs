//! Shared test helpers: fixture paths, a .npy reader, the real model's location.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use qwen2_core::convert::{
    gguf_to_hf, hf_to_gguf, GgufOutType, HfDtype, ToGgufOptions, ToHfOptions,
};
use qwen2_core::gguf::GgufFile;
use qwen2_core::quantize::FileType;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn fixture(rel: &str) -> PathBuf {
    repo_root().join("fixtures").join(rel)
}

/// Read a little-endian float32 .npy file: (shape, values).
pub fn read_npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&b[..6], b"\x93NUMPY", "{} is not .npy", path.display());
    let (hlen, start) = if b[6] == 1 {
        (u16::from_le_bytes([b[8], b[9]]) as usize, 10)
    } else {
        (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
    };
    let header = std::str::from_utf8(&b[start..start + hlen]).unwrap();
    assert!(
        header.contains("'<f4'"),
        "{}: not float32: {header}",
        path.display()
    );
    assert!(header.contains("'fortran_order': False"));
    let shape_txt = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let data: Vec<f32> = b[start + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(data.len(), shape.iter().product::<usize>());
    (shape, data)
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let t = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&t).unwrap()
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The real default model: $QWEN2_MODEL, else the `qwen2 pull` location. Tests that need it
/// fail (not skip) when it is absent: `scripts/test.sh` fetches it first.
pub fn real_model() -> PathBuf {
    if let Some(p) = std::env::var_os("QWEN2_MODEL") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("QWEN2_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/qwen2")
        });
    let p = home.join("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    assert!(
        p.exists(),
        "the real model is missing at {}: run `qwen2 pull` (scripts/test.sh does)",
        p.display()
    );
    p
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn max_abs(a: &[f32]) -> f32 {
    a.iter().map(|x| x.abs()).fold(0.0, f32::max)
}

pub fn argmax(x: &[f32]) -> u32 {
    qwen2_core::sampling::argmax(x)
}

/// The per-tensor types llama.cpp chose for `case` at `ftype`, from a fixture made by
/// scripts/fixtures/{quant_types,moe_quant_types}.py (`rel` under fixtures/).
pub fn llama_cpp_types(rel: &str, case: &str, ftype: FileType) -> BTreeMap<String, String> {
    let r = read_json(&fixture(rel));
    let m = r[case]["types"][ftype.name()]
        .as_object()
        .unwrap_or_else(|| panic!("{rel} has no {case}/{ftype}"));
    m.iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

/// Each tensor's type name in a GGUF file.
pub fn file_types(path: &Path) -> BTreeMap<String, String> {
    let g = GgufFile::open(path).unwrap();
    g.tensors
        .values()
        .map(|t| (t.name.clone(), t.ty.name().to_string()))
        .collect()
}

pub fn log_softmax(x: &[f32]) -> Vec<f64> {
    let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let lse = x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln() + m;
    x.iter().map(|&v| v as f64 - lse).collect()
}

/// Mean over positions of KL(p_ref || p_q), and the fraction of positions with the same argmax.
pub fn kl_and_top1(reference: &[f32], quant: &[f32], vocab: usize) -> (f64, f64) {
    let n = reference.len() / vocab;
    let (mut kl, mut same) = (0.0, 0usize);
    for (r, q) in reference.chunks(vocab).zip(quant.chunks(vocab)) {
        let (lr, lq) = (log_softmax(r), log_softmax(q));
        kl += lr
            .iter()
            .zip(&lq)
            .map(|(a, b)| a.exp() * (a - b))
            .sum::<f64>();
        same += (argmax(r) == argmax(q)) as usize;
    }
    (kl / n as f64, same as f64 / n as f64)
}

/// Layer `i`'s norms and attention tensors (GGUF names, HF-order shapes) for a Qwen2 of width
/// `h` with `heads` query and `kv` KV heads: the part dense and MoE layers share.
pub fn gguf_attn_tensors(i: usize, h: usize, heads: usize, kv: usize) -> Vec<(String, Vec<usize>)> {
    let hd = h / heads;
    let p = |n: &str| format!("blk.{i}.{n}");
    vec![
        (p("attn_norm.weight"), vec![h]),
        (p("ffn_norm.weight"), vec![h]),
        (p("attn_q.weight"), vec![heads * hd, h]),
        (p("attn_q.bias"), vec![heads * hd]),
        (p("attn_k.weight"), vec![kv * hd, h]),
        (p("attn_k.bias"), vec![kv * hd]),
        (p("attn_v.weight"), vec![kv * hd, h]),
        (p("attn_v.bias"), vec![kv * hd]),
        (p("attn_output.weight"), vec![h, heads * hd]),
    ]
}

/// The logits the fast-path KL tests judge, each from a fresh cache: every position of one
/// prefill over `ids` (the prompt kernels), and the last position of each one-token step over
/// `ids[..n_decode]` (the decode kernels).
pub fn prefill_and_decode_logits(
    model: &qwen2_core::Qwen2,
    ids: &[u32],
    n_decode: usize,
) -> (Vec<f32>, Vec<f32>) {
    let mut cache = model.new_cache(ids.len());
    let prefill = model
        .forward(ids, &mut cache, qwen2_core::Logits::All)
        .unwrap();
    let mut cache = model.new_cache(n_decode);
    let mut decode = Vec::with_capacity(n_decode * model.vocab_size());
    for &t in &ids[..n_decode] {
        decode.extend(
            model
                .forward(&[t], &mut cache, qwen2_core::Logits::Last)
                .unwrap(),
        );
    }
    (prefill, decode)
}

/// Greedy decoding by ids only (no tokenizer), with the KV cache.
pub fn greedy(model: &qwen2_core::Qwen2, prompt: &[u32], n: usize, stop: &[u32]) -> Vec<u32> {
    let mut cache = model.new_cache(prompt.len() + n + 1);
    let mut logits = model
        .forward(prompt, &mut cache, qwen2_core::Logits::Last)
        .unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let t = argmax(&logits);
        out.push(t);
        if stop.contains(&t) {
            break;
        }
        logits = model
            .forward(&[t], &mut cache, qwen2_core::Logits::Last)
            .unwrap();
    }
    out
}

/// A scratch directory under the system temp dir, removed when dropped (also when a test fails).
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("qwen2-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `hf_to_gguf` or panic with the input path.
pub fn to_gguf(input: &Path, out: &Path, outtype: GgufOutType) {
    hf_to_gguf(
        input,
        out,
        &ToGgufOptions {
            outtype,
            force: false,
        },
    )
    .unwrap_or_else(|e| panic!("{} → GGUF: {e}", input.display()));
}

/// `gguf_to_hf` or panic with the input path.
pub fn to_hf(input: &Path, out: &Path, dtype: HfDtype, max_shard_size: u64) {
    gguf_to_hf(
        input,
        out,
        &ToHfOptions {
            dtype,
            max_shard_size,
            force: false,
        },
    )
    .unwrap_or_else(|e| panic!("{} → HF: {e}", input.display()));
}
