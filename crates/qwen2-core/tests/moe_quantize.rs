//! `quantize` for Qwen2-MoE: per-tensor types equal llama.cpp's `llama_model_quantize` for the
//! same `qwen2moe` GGUFs (fixtures/quant/moe_types.json, made by
//! scripts/fixtures/moe_quant_types.py), from the GGUF and from the HF directory (experts
//! stacked); the output loads and its logits stay close to transformers' f32 ones.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::path::Path;

use qwen2_core::kv_cache::KvDtype;
use qwen2_core::quantize::{plan_with_experts, quantize, FileType};
use qwen2_core::qwen2_kernels::GgmlType;
use qwen2_core::{Logits, Precision};

fn expected_types(case: &str, ftype: FileType) -> BTreeMap<String, String> {
    llama_cpp_types("quant/moe_types.json", case, ftype)
}

fn kl_to_transformers(case: &str, model: &Path) -> f64 {
    let dir = fixture(&format!("tiny/{case}"));
    let golden = read_json(&dir.join("golden.json"));
    let input = ids(&golden["input_ids"]);
    let (_, want) = read_npy_f32(&dir.join("logits.npy"));
    let lm = qwen2_core::load(model, Precision::Exact)
        .unwrap_or_else(|e| panic!("{}: {e}", model.display()));
    assert!(lm.model.cfg.moe.is_some());
    let mut cache = lm.model.new_cache_with(64, KvDtype::F32);
    let got = lm.model.forward(&input, &mut cache, Logits::All).unwrap();
    // Mean over positions of KL(p_transformers || p_ours).
    kl_and_top1(&want, &got, lm.model.vocab_size()).0
}

/// Largest mean KL accepted on the tiny MoE fixtures (hidden 64, vocab 256, 8 experts).
/// Measured: Q8_0 4.0e-5 / 7.4e-5, Q4_K_M 9.8e-4 / 8.1e-4 (moe_topk / moe_norm_mixed; most rows
/// fall back to Q5_0/Q5_1/Q8_0/F16 since 64-wide rows are no k-quant block); bounds leave
/// about 7-10x headroom.
fn kl_bound(f: FileType) -> f64 {
    match f {
        FileType::Q8_0 => 5e-4,
        _ => 1e-2,
    }
}

#[test]
fn tiny_moe_types_match_llama_cpp_and_logits_stay_close() {
    let s = Scratch::new("moequant-tiny");
    for case in ["moe_topk", "moe_norm_mixed"] {
        let dir = fixture(&format!("tiny/{case}"));
        for ftype in FileType::ALL {
            let want = expected_types(case, ftype);
            for (src, tag) in [(dir.join("model.gguf"), "gguf"), (dir.clone(), "hf")] {
                let out = s.join(&format!("{case}-{tag}-{ftype}.gguf"));
                quantize(&src, &out, ftype, |_| {})
                    .unwrap_or_else(|e| panic!("{case} {tag} {ftype}: {e}"));
                assert_eq!(file_types(&out), want, "{case} from {tag}, {ftype}");
                if matches!(ftype, FileType::Q8_0 | FileType::Q4_K_M) {
                    let kl = kl_to_transformers(case, &out);
                    eprintln!("{case} from {tag} {ftype}: mean KL {kl:.2e}");
                    assert!(kl <= kl_bound(ftype), "{case} {tag} {ftype}: KL {kl}");
                }
                std::fs::remove_file(&out).unwrap();
            }
        }
    }
}

#[test]
fn wide_moe_plan_matches_llama_cpp() {
    // Rows of 256: real k-quants, and ffn_down{,_exps,_shexp} picked by the layer in the name.
    let r = read_json(&fixture("quant/moe_types.json"));
    let s = &r["moe_wide"]["shape"];
    let g = |k: &str| s[k].as_u64().unwrap() as usize;
    let (h, heads, kv, layers, ne, eff, sff, vocab) = (
        g("hidden"),
        g("heads"),
        g("kv_heads"),
        g("layers"),
        g("experts"),
        g("eff"),
        g("sff"),
        g("vocab"),
    );
    let mut list: Vec<(String, Vec<usize>)> = vec![
        ("token_embd.weight".into(), vec![vocab, h]),
        ("output_norm.weight".into(), vec![h]),
        ("output.weight".into(), vec![vocab, h]),
    ];
    for i in 0..layers {
        let p = |n: &str| format!("blk.{i}.{n}");
        list.extend(gguf_attn_tensors(i, h, heads, kv));
        list.extend([
            (p("ffn_gate_inp.weight"), vec![ne, h]),
            (p("ffn_gate_exps.weight"), vec![ne, eff, h]),
            (p("ffn_up_exps.weight"), vec![ne, eff, h]),
            (p("ffn_down_exps.weight"), vec![ne, h, eff]),
            (p("ffn_gate_shexp.weight"), vec![sff, h]),
            (p("ffn_up_shexp.weight"), vec![sff, h]),
            (p("ffn_down_shexp.weight"), vec![h, sff]),
            (p("ffn_gate_inp_shexp.weight"), vec![h]),
        ]);
    }
    let list: Vec<_> = list
        .into_iter()
        .map(|(n, s)| (n, s, GgmlType::F32))
        .collect();
    for ftype in FileType::ALL {
        let got: BTreeMap<String, String> = plan_with_experts(ftype, &list, layers, ne)
            .unwrap()
            .into_iter()
            .map(|p| (p.name, p.to.name().to_string()))
            .collect();
        assert_eq!(got, expected_types("moe_wide", ftype), "moe_wide {ftype}");
    }
}
