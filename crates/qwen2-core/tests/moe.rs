//! Tiny random Qwen2-MoE checkpoints made by transformers (scripts/fixtures/moe.py): our logits
//! must match transformers' to 1e-4 in f32, from the safetensors (hub per-expert layout and
//! transformers 5's fused layout) and from the same weights written as a llama.cpp `qwen2moe`
//! GGUF; cached decoding must match; greedy continuations must be identical.

mod common;
use std::path::{Path, PathBuf};

use common::*;
use qwen2_core::gguf::GgufFile;
use qwen2_core::gguf_write::GgufWriter;
use qwen2_core::kv_cache::KvDtype;
use qwen2_core::qwen2_kernels::{quantize_row, GgmlType};
use qwen2_core::{Logits, Precision};

const TOL: f32 = 1e-4;

fn check(name: &str, model: &Path, precision: Precision) {
    let dir = fixture(&format!("tiny/{name}"));
    let lm =
        qwen2_core::load(model, precision).unwrap_or_else(|e| panic!("{}: {e}", model.display()));
    let what = format!("{} {precision:?}", model.display());
    assert!(lm.model.cfg.moe.is_some(), "{what}: not loaded as MoE");
    let golden = read_json(&dir.join("golden.json"));
    let input = ids(&golden["input_ids"]);
    let (shape, want) = read_npy_f32(&dir.join("logits.npy"));
    let vocab = lm.model.vocab_size();
    assert_eq!(shape, vec![input.len(), vocab]);

    // Prefill: the rows are grouped by expert.
    let mut cache = lm.model.new_cache_with(64, KvDtype::F32);
    let got = lm.model.forward(&input, &mut cache, Logits::All).unwrap();
    let d = max_abs_diff(&got, &want);
    assert!(d <= TOL, "{what}: max |Δlogit| = {d} > {TOL}");

    // Decode: one row at a time, each through its own top-k experts.
    let mut cache = lm.model.new_cache_with(64, KvDtype::F32);
    for (t, &id) in input.iter().enumerate() {
        let step = lm.model.forward(&[id], &mut cache, Logits::Last).unwrap();
        let d = max_abs_diff(&step, &want[t * vocab..(t + 1) * vocab]);
        assert!(d <= TOL, "{what}: cached step {t}: max |Δ| = {d}");
    }

    let want_greedy = ids(&golden["greedy"]);
    let got_greedy = greedy(&lm.model, &input, want_greedy.len(), &[]);
    assert_eq!(
        got_greedy, want_greedy,
        "{what}: greedy continuation differs"
    );
}

fn both_precisions(name: &str, model: &Path) {
    check(name, model, Precision::Exact);
    check(name, model, Precision::Fast);
}

#[test]
fn top2_of_8_with_shared_expert() {
    let dir = fixture("tiny/moe_topk");
    both_precisions("moe_topk", &dir);
    both_precisions("moe_topk", &dir.join("model.gguf"));
    let lm = qwen2_core::load(&dir, Precision::Fast).unwrap();
    let m = lm.model.cfg.moe.as_ref().unwrap();
    assert_eq!((m.num_experts, m.num_experts_per_tok), (8, 2));
    assert!(!m.norm_topk_prob);
    assert_eq!(m.sparse_layers, vec![true; 3]);
}

#[test]
fn norm_topk_prob_and_dense_layers() {
    let dir = fixture("tiny/moe_norm_mixed");
    both_precisions("moe_norm_mixed", &dir);
    both_precisions("moe_norm_mixed", &dir.join("model.gguf"));
    // decoder_sparse_step 2 and mlp_only_layers [3]: only layer 1 is sparse, in both formats.
    for p in [dir.clone(), dir.join("model.gguf")] {
        let lm = qwen2_core::load(&p, Precision::Fast).unwrap();
        let m = lm.model.cfg.moe.as_ref().unwrap();
        assert!(m.norm_topk_prob, "{}", p.display());
        assert_eq!(
            m.sparse_layers,
            vec![false, true, false, false],
            "{}",
            p.display()
        );
    }
}

/// transformers 5 holds the experts fused (`mlp.experts.gate_up_proj`, `mlp.experts.down_proj`);
/// a file in that layout loads too (save_pretrained writes the hub's per-expert layout).
#[test]
fn fused_expert_layout() {
    let dir = fixture("tiny/moe_fused");
    both_precisions("moe_fused", &dir);
}

/// Rewrite moe_topk's GGUF: `edit(name, info, bytes)` returns the tensor to write (HF-order
/// shape, type, bytes) or `None` to leave it out.
fn gguf_copy(
    path: &Path,
    edit: impl Fn(&str, Vec<usize>, &[u8]) -> Option<(Vec<usize>, GgmlType, Vec<u8>)>,
) {
    let src = GgufFile::open(fixture("tiny/moe_topk/model.gguf")).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in &src.metadata {
        w.set(k.clone(), v.clone());
    }
    let mut data = Vec::new();
    for (name, info) in &src.tensors {
        if let Some((shape, ty, bytes)) = edit(name, info.shape(), src.tensor_data(info)) {
            w.add_tensor(name, &shape, ty).unwrap();
            data.push((name.clone(), bytes));
        }
    }
    let mut out = w.create(path).unwrap();
    for (name, bytes) in data {
        out.write_tensor(&name, &bytes).unwrap();
    }
    out.finish().unwrap();
}

/// Stacked experts in block formats (Q8_0 gate/up, F16 down): each expert is a byte view into
/// the stacked tensor, which the fast path reads in place and the exact path dequantizes.
#[test]
fn quantized_stacked_experts() {
    let dir = scratch("quant");
    let path = dir.join("q8.gguf");
    gguf_copy(&path, |name, shape, bytes| {
        let ty = if name.contains("_exps") && !name.contains("down") {
            GgmlType::Q8_0
        } else if name.contains("_exps") {
            GgmlType::F16
        } else {
            return Some((shape, GgmlType::F32, bytes.to_vec()));
        };
        let cols = *shape.last().unwrap();
        let vals: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let row_bytes = ty.row_bytes(cols).unwrap();
        let mut out = vec![0u8; vals.len() / cols * row_bytes];
        for (src, dst) in vals.chunks_exact(cols).zip(out.chunks_exact_mut(row_bytes)) {
            quantize_row(ty, src, dst).unwrap();
        }
        Some((shape, ty, out))
    });
    let golden = read_json(&fixture("tiny/moe_topk/golden.json"));
    let input = ids(&golden["input_ids"]);
    let (_, f32_ref) = read_npy_f32(&fixture("tiny/moe_topk/logits.npy"));
    let logits = |p: Precision| {
        let lm = qwen2_core::load(&path, p).unwrap();
        let mut cache = lm.model.new_cache_with(64, KvDtype::F32);
        lm.model.forward(&input, &mut cache, Logits::All).unwrap()
    };
    let exact = logits(Precision::Exact);
    let fast = logits(Precision::Fast);
    // Q8_0 experts move the logits a little from the f32 model; a wrong expert slice would
    // move them by O(1).
    let d_quant = max_abs_diff(&exact, &f32_ref);
    assert!(d_quant < 0.02, "Q8_0 experts vs f32: max |Δ| = {d_quant}");
    // The fast path also quantizes the activations of Q8_0 matmuls to 8 bits.
    let d_fast = max_abs_diff(&fast, &exact);
    assert!(
        d_fast < 0.02,
        "fast vs exact on Q8_0 experts: max |Δ| = {d_fast}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qwen2-moe-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn load_err(p: &Path) -> String {
    match qwen2_core::load(p, Precision::Fast) {
        Ok(_) => panic!("{} loaded", p.display()),
        Err(e) => e.to_string(),
    }
}

/// A copy of moe_topk's safetensors keeping the tensors `keep` accepts, with its config edited.
fn safetensors_copy(
    tag: &str,
    edit: impl Fn(&str) -> String,
    keep: impl Fn(&str) -> bool,
) -> PathBuf {
    use safetensors::SafeTensors;
    let src = fixture("tiny/moe_topk");
    let dir = scratch(tag);
    let cfg = std::fs::read_to_string(src.join("config.json")).unwrap();
    std::fs::write(dir.join("config.json"), edit(&cfg)).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<_> = st.tensors().into_iter().filter(|(n, _)| keep(n)).collect();
    safetensors::serialize_to_file(kept, None, &dir.join("model.safetensors")).unwrap();
    dir
}

#[test]
fn truncated_experts_are_clear_errors() {
    // The last expert of layer 2 is missing.
    let dir = safetensors_copy("st", str::to_string, |n| {
        !n.starts_with("model.layers.2.mlp.experts.7.")
    });
    let e = load_err(&dir);
    assert!(
        e.contains("missing tensor `model.layers.2.mlp.experts.7.gate_proj.weight`")
            && e.contains("all 8 experts"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();

    // GGUF: a stacked tensor holding 7 of the 8 experts, and one missing altogether.
    let dir = scratch("gguf");
    let cases = [
        (
            "short.gguf",
            "tensor `blk.1.ffn_down_exps.weight`: expected shape [8, 64, 16], found [7, 64, 16]",
        ),
        ("missing.gguf", "missing tensor `blk.2.ffn_up_exps.weight`"),
    ];
    for (file, want) in cases {
        let path = dir.join(file);
        gguf_copy(&path, |name, mut shape, bytes| {
            let mut bytes = bytes.to_vec();
            if file == "short.gguf" && name == "blk.1.ffn_down_exps.weight" {
                shape[0] = 7;
                bytes.truncate(bytes.len() / 8 * 7);
            }
            if file == "missing.gguf" && name == "blk.2.ffn_up_exps.weight" {
                return None;
            }
            Some((shape, GgmlType::F32, bytes))
        });
        let e = load_err(&path);
        assert!(e.contains(want), "{file}: `{e}` does not mention `{want}`");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_moe_configs_are_clear_errors() {
    let cases = [
        (
            "\"num_experts_per_tok\": 2",
            "\"num_experts_per_tok\": 9",
            "num_experts_per_tok (9) must be between 1 and num_experts (8)",
        ),
        (
            "\"decoder_sparse_step\": 1",
            "\"decoder_sparse_step\": 0",
            "decoder_sparse_step",
        ),
        (
            "\"qwen2_moe\"",
            "\"qwen3_moe\"",
            "supported: qwen2, qwen2_moe",
        ),
    ];
    for (i, (from, to, want)) in cases.into_iter().enumerate() {
        let dir = safetensors_copy(
            &format!("cfg{i}"),
            |c| {
                assert!(c.contains(from), "fixture config lacks {from}");
                c.replace(from, to)
            },
            |_| true,
        );
        let e = load_err(&dir);
        assert!(e.contains(want), "`{e}` does not mention `{want}`");
        std::fs::remove_dir_all(&dir).ok();
    }
}
