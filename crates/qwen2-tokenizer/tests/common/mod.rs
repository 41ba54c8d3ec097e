//! Shared fixture loading for the integration tests (fixtures from scripts/fixtures/tokenizer.py).
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use qwen2_tokenizer::{token_type, GgufVocab, Tokenizer};
use serde::Deserialize;

pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tokenizer")
}

pub fn read(name: &str) -> String {
    let path = fixture_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}\nHINT: regenerate with /work/venv/bin/python scripts/fixtures/tokenizer.py",
            path.display()
        )
    })
}

#[derive(Deserialize)]
pub struct Case {
    pub text: String,
    pub ids: Vec<u32>,
    pub decoded: String,
    pub decoded_skip_special: String,
}

pub fn cases() -> &'static [Case] {
    static CASES: OnceLock<Vec<Case>> = OnceLock::new();
    CASES.get_or_init(|| {
        let cases: Vec<Case> = read("cases.jsonl")
            .lines()
            .map(|l| serde_json::from_str(l).expect("cases.jsonl line"))
            .collect();
        assert!(cases.len() >= 300, "only {} cases", cases.len());
        cases
    })
}

pub fn hf_tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| Tokenizer::from_hf_dir(&fixture_dir()).expect("load fixture HF dir"))
}

/// A `GgufVocab` like the converter writes it, built from the fixture tokenizer.json: model vocab as
/// normal tokens, special added tokens as control, other added tokens as user-defined, and (like the
/// real Qwen2.5 GGUF) unused `[PADn]` placeholders up to a padded embedding size.
pub fn gguf_vocab(pad_to: usize) -> GgufVocab {
    let json: serde_json::Value = serde_json::from_str(&read("tokenizer.json")).unwrap();
    let vocab = json["model"]["vocab"].as_object().unwrap();
    let added = json["added_tokens"].as_array().unwrap();
    let n = vocab.len() + added.len();
    let mut tokens = vec![None; n.max(pad_to)];
    let mut types = vec![token_type::UNUSED; n.max(pad_to)];
    for (tok, id) in vocab {
        let id = id.as_u64().unwrap() as usize;
        tokens[id] = Some(tok.clone());
        types[id] = token_type::NORMAL;
    }
    for t in added {
        let id = t["id"].as_u64().unwrap() as usize;
        tokens[id] = Some(t["content"].as_str().unwrap().to_owned());
        types[id] = if t["special"].as_bool().unwrap() {
            token_type::CONTROL
        } else {
            token_type::USER_DEFINED
        };
    }
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| format!("[PAD{i}]")))
        .collect();
    let merges = json["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(p) => {
                format!("{} {}", p[0].as_str().unwrap(), p[1].as_str().unwrap())
            }
            other => panic!("unexpected merge {other}"),
        })
        .collect();
    let id = |s: &str| tokens.iter().position(|t| t == s).map(|i| i as u32);
    GgufVocab {
        model: "gpt2".into(),
        pre: Some("qwen2".into()),
        bos_token_id: id("<|endoftext|>"),
        eos_token_id: id("<|im_end|>"),
        padding_token_id: id("<|endoftext|>"),
        add_bos_token: false,
        token_types: types,
        merges,
        tokens,
    }
}

pub fn gguf_tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| Tokenizer::from_gguf(&gguf_vocab(151_936)).expect("from_gguf"))
}

/// NFC via the tokenizers crate's own normalizer (what decode(encode(s)) must give back).
pub fn nfc(s: &str) -> String {
    use tokenizers::{NormalizedString, Normalizer};
    let mut n = NormalizedString::from(s);
    tokenizers::normalizers::unicode::NFC
        .normalize(&mut n)
        .unwrap();
    n.get().to_owned()
}
