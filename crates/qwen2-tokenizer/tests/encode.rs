//! Exact-id parity with Hugging Face on fixtures/tokenizer/cases.jsonl, from tokenizer.json and
//! from GGUF metadata.

mod common;

use common::{cases, gguf_tokenizer, hf_tokenizer, nfc};
use qwen2_tokenizer::Tokenizer;

fn check_cases(tok: &Tokenizer, label: &str) {
    let cases = cases();
    let mut failures = Vec::new();
    for c in cases {
        let ids = tok.encode(&c.text).unwrap();
        if ids != c.ids {
            failures.push(format!(
                "{:?}\n  ours {:?}\n  hf   {:?}",
                c.text, ids, c.ids
            ));
            continue;
        }
        let decoded = tok.decode(&ids, false).unwrap();
        assert_eq!(decoded, c.decoded, "{label}: decode of {:?}", c.text);
        assert_eq!(
            tok.decode(&ids, true).unwrap(),
            c.decoded_skip_special,
            "{label}: decode(skip_special) of {:?}",
            c.text
        );
        // The round trip gives back the text up to NFC (the normalizer), exactly for NFC text.
        let normalized = nfc(&c.text);
        assert_eq!(decoded, normalized, "{label}: round trip of {:?}", c.text);
        if normalized == c.text {
            assert_eq!(decoded, c.text);
        }
    }
    assert!(
        failures.is_empty(),
        "{label}: {} of {} cases differ from Hugging Face:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    eprintln!("{label}: {} cases identical to Hugging Face", cases.len());
}

#[test]
fn hf_dir_matches_hugging_face_ids() {
    check_cases(hf_tokenizer(), "tokenizer.json");
}

#[test]
fn gguf_matches_hugging_face_ids() {
    check_cases(gguf_tokenizer(), "gguf");
}

#[test]
fn gguf_and_tokenizer_json_build_the_same_pipeline() {
    let hf: serde_json::Value =
        serde_json::from_str(&hf_tokenizer().to_json_string().unwrap()).unwrap();
    let gg: serde_json::Value =
        serde_json::from_str(&gguf_tokenizer().to_json_string().unwrap()).unwrap();
    for part in [
        "normalizer",
        "pre_tokenizer",
        "post_processor",
        "decoder",
        "added_tokens",
        "truncation",
        "padding",
    ] {
        assert_eq!(hf[part], gg[part], "{part} differs");
    }
    let (hm, gm) = (&hf["model"], &gg["model"]);
    for (k, v) in hm.as_object().unwrap() {
        assert_eq!(v, &gm[k], "model.{k} differs");
    }
    assert_eq!(hf, gg);
    // And the tokenizer.json we write loads back to the same thing.
    let again = Tokenizer::from_json_str(&gguf_tokenizer().to_json_string().unwrap()).unwrap();
    assert_eq!(
        again.encode("a<|im_end|>b 123").unwrap(),
        gguf_tokenizer().encode("a<|im_end|>b 123").unwrap()
    );
}

#[test]
fn special_token_facts() {
    for tok in [hf_tokenizer(), gguf_tokenizer()] {
        let im_end = tok.token_to_id("<|im_end|>").unwrap();
        let eot = tok.token_to_id("<|endoftext|>").unwrap();
        let eos = tok.eos_ids();
        assert!(eos.contains(&im_end) && eos.contains(&eot), "{eos:?}");
        assert_eq!(eos.len(), 2);
        assert!(tok.is_special(im_end));
        let tool_call = tok.token_to_id("<tool_call>").unwrap();
        assert!(
            !tok.is_special(tool_call),
            "<tool_call> is user-defined, not special"
        );
        let hello = tok.encode("Hello").unwrap();
        assert!(!tok.is_special(hello[0]));
        assert_eq!(tok.id_to_token(im_end).as_deref(), Some("<|im_end|>"));
        assert_eq!(tok.id_to_token(u32::MAX), None);
        // Placeholder rows of the embedding are not tokens (as in Hugging Face).
        assert_eq!(tok.vocab_size(), hf_tokenizer().vocab_size());
        assert_eq!(
            tok.vocab_size() as u32,
            tok.token_to_id("<|file_sep|>").unwrap() + 1
        );
        // Unknown ids are skipped by decode, never a panic.
        assert_eq!(
            tok.decode(&[hello[0], 151_900, u32::MAX], false).unwrap(),
            "Hello"
        );
    }
    assert_eq!(hf_tokenizer().eos_token(), Some("<|im_end|>"));
    assert_eq!(gguf_tokenizer().eos_token(), Some("<|im_end|>"));
    assert_eq!(
        hf_tokenizer().eos_ids()[0],
        hf_tokenizer().token_to_id("<|im_end|>").unwrap()
    );
    assert!(hf_tokenizer().chat_template().unwrap().contains("<tools>"));
}
