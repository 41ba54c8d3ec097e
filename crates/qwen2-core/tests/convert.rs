//! `convert`: Hugging Face directory ⇄ GGUF, checked by what the engine computes from each.
//!
//! - tiny transformers checkpoints (fixtures/tiny) → GGUF f32: logits identical to the HF
//!   directory's (≤ 1e-5; in practice 0) and to transformers' (≤ 1e-4); f16 and q8_0 within
//!   stated budgets; back to HF f32: identical tensors and logits; bf16 within its budget;
//! - the real GGUF's tokenizer files are byte-identical to transformers' (fixtures/tokenizer),
//!   give the HF ids on the fixture corpus and render the chat template identically;
//! - the real Q4_K_M GGUF → HF f32 directory → `--exact`: the 32-token greedy continuations of
//!   fixtures/real/greedy.json, token for token;
//! - bad input is a clear error and leaves nothing behind.

mod common;
use std::path::Path;

use common::*;
use qwen2_core::convert::{
    gguf_to_hf, hf_to_gguf, qwen2_tensors, GgufOutType, HfDtype, ToGgufOptions, ToHfOptions,
    DEFAULT_MAX_SHARD_SIZE,
};
use qwen2_core::gguf::{GgufFile, Value};
use qwen2_core::qwen2_kernels::GgmlType;
use qwen2_core::qwen2_tokenizer::{ChatMessage, ChatTemplate, Tokenizer};
use qwen2_core::weights::WeightSource;
use qwen2_core::{Config, Logits, Precision};

/// Logits of every position of the fixture's input, `--exact` path.
fn logits(model: &Path, input: &[u32]) -> Vec<f32> {
    let lm = qwen2_core::load(model, Precision::Exact)
        .unwrap_or_else(|e| panic!("{}: {e}", model.display()));
    let mut cache = lm
        .model
        .new_cache_with(input.len() + 1, qwen2_core::KvDtype::F32);
    lm.model.forward(input, &mut cache, Logits::All).unwrap()
}

fn fixture_input(name: &str) -> Vec<u32> {
    ids(&read_json(&fixture(&format!("tiny/{name}/golden.json")))["input_ids"])
}

#[test]
fn tiny_hf_to_gguf_f32_gives_identical_logits() {
    let s = Scratch::new("convert-f32");
    // Untied and tied heads, shards, bf16 weights, transformers 4.x config, linear and YaRN rope.
    for name in [
        "untied", "tied", "sharded", "bf16", "v4config", "linear", "yarn", "yarn_v4",
    ] {
        let dir = fixture(&format!("tiny/{name}"));
        let gguf = s.join(&format!("{name}.gguf"));
        to_gguf(&dir, &gguf, GgufOutType::F32);
        let input = fixture_input(name);
        let from_hf = logits(&dir, &input);
        let from_gguf = logits(&gguf, &input);
        let d = max_abs_diff(&from_gguf, &from_hf);
        assert!(d <= 1e-5, "{name}: GGUF vs HF dir max |Δlogit| = {d}");
        let (_, want) = read_npy_f32(&dir.join("logits.npy"));
        let d = max_abs_diff(&from_gguf, &want);
        assert!(d <= 1e-4, "{name}: GGUF vs transformers max |Δlogit| = {d}");
        // The config survives the trip (GGUF carries no bos/eos ids without a tokenizer).
        let mut want_cfg =
            Config::from_json_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        let got_cfg = Config::from_gguf(&GgufFile::open(&gguf).unwrap()).unwrap();
        want_cfg.bos_token_id = got_cfg.bos_token_id;
        want_cfg.eos_token_ids = got_cfg.eos_token_ids.clone();
        // GGUF stores the epsilon as f32.
        want_cfg.rms_norm_eps = want_cfg.rms_norm_eps as f32 as f64;
        assert_eq!(got_cfg, want_cfg, "{name}: config changed");
    }
}

#[test]
fn tiny_hf_to_gguf_f16_and_q8_0_within_budget() {
    let s = Scratch::new("convert-quant");
    let dir = fixture("tiny/untied");
    let input = fixture_input("untied");
    let reference = logits(&dir, &input);
    let scale = max_abs(&reference);
    // Budgets relative to max |logit| (≈ 2.8): f16 rounds weights to 11 bits, q8_0 to 8 bits
    // with one scale per 32 values.
    for (ty, budget) in [(GgufOutType::F16, 2e-3), (GgufOutType::Q8_0, 2e-2)] {
        let gguf = s.join(&format!("{ty:?}.gguf"));
        to_gguf(&dir, &gguf, ty);
        let got = logits(&gguf, &input);
        let d = max_abs_diff(&got, &reference);
        eprintln!("{ty:?}: max |Δlogit| = {d:.2e} (max |logit| {scale:.2})");
        assert!(
            d <= budget * scale,
            "{ty:?}: max |Δlogit| {d} > {budget} × {scale}"
        );
        let g = GgufFile::open(&gguf).unwrap();
        let want_ty = if ty == GgufOutType::F16 {
            GgmlType::F16
        } else {
            GgmlType::Q8_0
        };
        assert_eq!(g.tensors["blk.0.ffn_down.weight"].ty, want_ty);
        assert_eq!(g.tensors["token_embd.weight"].ty, want_ty);
    }
}

#[test]
fn gguf_metadata_is_what_llama_cpp_writes() {
    let s = Scratch::new("convert-meta");
    let gguf = s.join("untied.gguf");
    to_gguf(&fixture("tiny/untied"), &gguf, GgufOutType::F16);
    let g = GgufFile::open(&gguf).unwrap();
    let u = |k: &str| g.get_u64(k).unwrap_or_else(|| panic!("{k} missing"));
    assert_eq!(g.get_str("general.architecture"), Some("qwen2"));
    assert_eq!(u("qwen2.block_count"), 5);
    assert_eq!(u("qwen2.context_length"), 512);
    assert_eq!(u("qwen2.embedding_length"), 64);
    assert_eq!(u("qwen2.feed_forward_length"), 128);
    assert_eq!(u("qwen2.attention.head_count"), 4);
    assert_eq!(u("qwen2.attention.head_count_kv"), 2);
    assert_eq!(g.get_f64("qwen2.rope.freq_base"), Some(10000.0));
    assert_eq!(
        g.get("qwen2.attention.layer_norm_rms_epsilon"),
        Some(&Value::F32(1e-6))
    );
    assert_eq!(u("general.file_type"), 1);
    assert_eq!(u("general.quantization_version"), 2);
    // Norms and biases in f32, matrices in f16; the untied head is output.weight.
    for (name, t) in &g.tensors {
        let want = if t.dims.len() == 1 {
            GgmlType::F32
        } else {
            GgmlType::F16
        };
        assert_eq!(t.ty, want, "{name}");
    }
    assert!(g.tensors.contains_key("output.weight"));
    assert_eq!(g.tensors.len(), 2 + 5 * 12 + 1);

    // YaRN keys as convert_hf_to_gguf.py writes them.
    let y = s.join("yarn.gguf");
    to_gguf(&fixture("tiny/yarn"), &y, GgufOutType::F32);
    let g = GgufFile::open(&y).unwrap();
    assert_eq!(g.get_str("qwen2.rope.scaling.type"), Some("yarn"));
    assert_eq!(g.get_f64("qwen2.rope.scaling.factor"), Some(4.0));
    assert_eq!(
        g.get_u64("qwen2.rope.scaling.original_context_length"),
        Some(32)
    );
    assert!(!g.tensors.contains_key("output.weight"), "tied head");
}

#[test]
fn tiny_round_trip_back_to_hf() {
    let s = Scratch::new("convert-rt");
    let input = fixture_input("untied");
    let orig = fixture("tiny/untied");
    let gguf = s.join("untied.gguf");
    to_gguf(&orig, &gguf, GgufOutType::F32);

    // f32, in several shards: the very same tensors, so the very same logits.
    let hf = s.join("hf_f32");
    to_hf(&gguf, &hf, HfDtype::F32, 300_000);
    let index = read_json(&hf.join("model.safetensors.index.json"));
    let shards: std::collections::BTreeSet<&str> = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(shards.len() >= 3, "{shards:?}");
    assert!(shards.iter().all(|f| hf.join(f).is_file()));
    let a = WeightSource::from_safetensors_dir(&orig).unwrap();
    let b = WeightSource::from_safetensors_dir(&hf).unwrap();
    let cfg =
        Config::from_json_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
    assert!(!cfg.tie_word_embeddings);
    assert_eq!(a.names(), b.names());
    for (name, shape) in qwen2_tensors(&cfg, true) {
        let (x, y) = (a.get(&name, &shape).unwrap(), b.get(&name, &shape).unwrap());
        assert_eq!(x.bytes(), y.bytes(), "{name} differs");
    }
    assert_eq!(logits(&hf, &input), logits(&orig, &input));

    // bf16 (the default): weights rounded to 8 bits of mantissa.
    let hf16 = s.join("hf_bf16");
    to_hf(&gguf, &hf16, HfDtype::Bf16, DEFAULT_MAX_SHARD_SIZE);
    assert!(hf16.join("model.safetensors").is_file());
    let reference = logits(&orig, &input);
    let d = max_abs_diff(&logits(&hf16, &input), &reference);
    let budget = 2e-2 * max_abs(&reference);
    eprintln!("bf16 round trip: max |Δlogit| = {d:.2e} (budget {budget:.2e})");
    assert!(d <= budget, "bf16: max |Δlogit| {d} > {budget}");
}

#[derive(serde::Deserialize)]
struct ChatCase {
    name: String,
    template: String,
    messages: Vec<ChatMessage>,
    tools: Option<serde_json::Value>,
    add_generation_prompt: bool,
    expected: String,
}

/// The converted directory's tokenizer gives the HF ids on the fixture corpus and renders the
/// GGUF's chat template as transformers does.
fn check_hf_tokenizer_dir(dir: &Path) {
    let tok = Tokenizer::from_hf_dir(dir).unwrap();
    let cases = std::fs::read_to_string(fixture("tokenizer/cases.jsonl")).unwrap();
    let mut n = 0;
    for line in cases.lines().filter(|l| !l.trim().is_empty()) {
        let c: serde_json::Value = serde_json::from_str(line).unwrap();
        let text = c["text"].as_str().unwrap();
        assert_eq!(tok.encode(text).unwrap(), ids(&c["ids"]), "ids of {text:?}");
        n += 1;
    }
    assert!(n >= 300, "only {n} cases");
    assert_eq!(tok.eos_ids(), vec![151645, 151643]);

    let tpl = ChatTemplate::new(tok.chat_template().expect("chat template"))
        .unwrap()
        .with_special_tokens(tok.bos_token(), tok.eos_token(), tok.pad_token());
    let chat = std::fs::read_to_string(fixture("tokenizer/chat_cases.jsonl")).unwrap();
    let mut rendered = 0;
    for line in chat.lines().filter(|l| !l.trim().is_empty()) {
        let c: ChatCase = serde_json::from_str(line).unwrap();
        if c.template != "gguf" {
            continue;
        }
        let out = tpl
            .render(&c.messages, c.add_generation_prompt, c.tools.as_ref())
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        assert_eq!(out, c.expected, "chat case {}", c.name);
        rendered += 1;
    }
    assert!(rendered >= 10, "only {rendered} chat cases");
}

#[test]
fn real_gguf_tokenizer_files_are_transformers_own() {
    let g = GgufFile::open(real_model()).unwrap();
    let files = qwen2_core::convert::hf_tokenizer_files(&g, 32768)
        .unwrap()
        .expect("the real GGUF has a tokenizer");
    // fixtures/tokenizer holds what transformers' Qwen2TokenizerFast saves for this vocabulary.
    let want = std::fs::read_to_string(fixture("tokenizer/tokenizer.json")).unwrap();
    assert!(
        files.tokenizer_json == want,
        "tokenizer.json differs from transformers'"
    );
    let want_cfg = read_json(&fixture("tokenizer/tokenizer_config.json"));
    assert_eq!(files.tokenizer_config, want_cfg);
}

/// (c): Q4_K_M GGUF → HF f32 → the same greedy continuations as the GGUF (and transformers).
/// f32 keeps the dequantized weights bit-exact, so any difference would be a conversion bug;
/// the 2 GB directory is removed at the end.
#[test]
fn real_gguf_to_hf_f32_keeps_greedy_continuations() {
    let s = Scratch::new("convert-real");
    let hf = s.join("qwen2.5-coder-0.5b-instruct");
    let t0 = std::time::Instant::now();
    to_hf(&real_model(), &hf, HfDtype::F32, DEFAULT_MAX_SHARD_SIZE);
    eprintln!("converted in {:.1} s", t0.elapsed().as_secs_f64());
    check_hf_tokenizer_dir(&hf);

    let lm = qwen2_core::load(&hf, Precision::Exact).unwrap();
    assert_eq!(lm.eos_ids, vec![151645, 151643]);
    assert!(lm.is_chat());
    assert_eq!(lm.defaults.temperature, 0.7);
    assert_eq!(lm.defaults.top_k, 20);
    let want = read_json(&fixture("real/greedy.json"));
    let prompts = read_json(&fixture("real/prompts.json"));
    for (i, p) in prompts.as_array().unwrap().iter().enumerate() {
        let c = &want["continuations"][i];
        assert_eq!(c["prompt_index"].as_u64(), Some(i as u64));
        let w = ids(&c["ids"]);
        let got = greedy(&lm.model, &ids(&p["ids"]), w.len(), &lm.eos_ids);
        assert_eq!(got, w, "prompt {i}: greedy continuation differs");
    }
    eprintln!("total {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn bad_input_is_a_clear_error_and_leaves_nothing() {
    let s = Scratch::new("convert-bad");

    // A GGUF of another architecture.
    let llama = s.join("llama.gguf");
    let mut w = qwen2_core::gguf_write::GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()));
    w.add_tensor("token_embd.weight", &[4, 32], GgmlType::F32)
        .unwrap();
    let mut o = w.create(&llama).unwrap();
    o.write_tensor("token_embd.weight", &[0u8; 4 * 32 * 4])
        .unwrap();
    o.finish().unwrap();
    let out = s.join("llama_hf");
    let e = gguf_to_hf(&llama, &out, &ToHfOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unsupported architecture") && e.contains("llama"),
        "{e}"
    );
    assert!(!out.exists());

    // A directory without config.json.
    let empty = s.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = hf_to_gguf(&empty, &s.join("x.gguf"), &ToGgufOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no config.json"), "{e}");

    // Unknown types.
    let e = "q4_k".parse::<GgufOutType>().unwrap_err().to_string();
    assert!(e.contains("q4_k") && e.contains("q8_0"), "{e}");
    let e = "int8".parse::<HfDtype>().unwrap_err().to_string();
    assert!(e.contains("bf16"), "{e}");
    assert!(qwen2_core::convert::parse_size("2XB").is_err());
    assert_eq!(
        qwen2_core::convert::parse_size("2GB").unwrap(),
        2_000_000_000
    );
    assert_eq!(qwen2_core::convert::parse_size("1GiB").unwrap(), 1 << 30);

    // What a qwen2 GGUF cannot express is refused, not silently changed.
    for (name, what) in [("sliding", "sliding-window"), ("dynamic", "dynamic")] {
        let e = hf_to_gguf(
            &fixture(&format!("tiny/{name}")),
            &s.join(&format!("{name}.gguf")),
            &ToGgufOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(what), "{name}: {e}");
        assert!(!s.join(&format!("{name}.gguf")).exists());
    }

    // Existing outputs are kept unless forced.
    let gguf = s.join("t.gguf");
    to_gguf(&fixture("tiny/tied"), &gguf, GgufOutType::F32);
    let e = hf_to_gguf(&fixture("tiny/tied"), &gguf, &ToGgufOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("--force"), "{e}");
    let busy = s.join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("keep.txt"), "mine").unwrap();
    let e = gguf_to_hf(&gguf, &busy, &ToHfOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("not empty") && e.contains("--force"), "{e}");
    assert!(busy.join("keep.txt").exists());
    let forced = ToHfOptions {
        force: true,
        ..Default::default()
    };
    gguf_to_hf(&gguf, &busy, &forced).unwrap();
    assert!(!busy.join("keep.txt").exists() && busy.join("config.json").exists());
    // No staging directory is left next to the outputs.
    let leftovers: Vec<_> = std::fs::read_dir(&s.0)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// HF tokenizer files → GGUF `tokenizer.*` metadata reproduces the real GGUF's own (which
/// llama.cpp's converter wrote from Qwen's files): tokens, types, merges, ids, template.
#[test]
fn hf_tokenizer_to_gguf_metadata_matches_the_real_gguf() {
    let s = Scratch::new("convert-tokmeta");
    let dir = s.join("tok");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture(&format!("tokenizer/{f}")), dir.join(f)).unwrap();
    }
    let raw = serde_json::json!({"bos_token_id": 151643, "eos_token_id": 151645});
    let meta = qwen2_core::convert::gguf_tokenizer_metadata(&dir, &raw, 151936)
        .unwrap()
        .expect("tokenizer metadata");
    let g = GgufFile::open(real_model()).unwrap();
    let want_keys: Vec<&str> = g
        .metadata
        .keys()
        .map(String::as_str)
        .filter(|k| k.starts_with("tokenizer."))
        .collect();
    let mut got_keys: Vec<&str> = meta.iter().map(|(k, _)| k.as_str()).collect();
    got_keys.sort();
    assert_eq!(got_keys, want_keys);
    for (k, v) in &meta {
        let want = g.get(k).unwrap();
        let same = match (v, want) {
            // Token types: the writer uses i32 as gguf-py does; compare values.
            (Value::Array(a), Value::Array(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|(x, y)| match (x.as_i64(), y.as_i64()) {
                            (Some(x), Some(y)) => x == y,
                            _ => x == y,
                        })
            }
            _ => v.as_u64().map_or(v == want, |x| Some(x) == want.as_u64()),
        };
        assert!(same, "{k} differs from the real GGUF's");
    }
}
