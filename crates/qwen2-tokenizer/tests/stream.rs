//! StreamDecoder: chunks are whole UTF-8 (no U+FFFD) and concatenate to the full decode.

mod common;

use common::{cases, hf_tokenizer};
use qwen2_tokenizer::{StreamDecoder, Tokenizer};

fn stream(tok: &Tokenizer, ids: &[u32], skip_special: bool) -> (Vec<String>, String) {
    let mut dec = StreamDecoder::new(tok, skip_special);
    let mut chunks = Vec::new();
    for &id in ids {
        if let Some(s) = dec.push(id).unwrap() {
            chunks.push(s);
        }
    }
    if let Some(s) = dec.flush().unwrap() {
        chunks.push(s);
    }
    let joined = chunks.concat();
    (chunks, joined)
}

#[test]
fn multibyte_text_streams_whole_characters() {
    let tok = hf_tokenizer();
    let texts = [
        "我爱自然语言处理。今天天气很好，我们去公园散步吧。",
        "👨‍👩‍👧‍👦 family, 👩🏽‍💻 coder, 🏳️‍🌈 flag, 🇨🇳🇺🇸🇯🇵",
        "こんにちは世界 안녕하세요 नमस्ते दुनिया مرحبا 😀😃😄",
        "𠀀𪛖 rare CJK ext-B",
    ];
    let mut split_chars = 0;
    for text in texts {
        let ids = tok.encode(text).unwrap();
        let (chunks, joined) = stream(tok, &ids, false);
        assert_eq!(joined, tok.decode(&ids, false).unwrap());
        assert_eq!(joined, text);
        for c in &chunks {
            assert!(
                !c.contains('\u{FFFD}'),
                "broken character in chunk {c:?} of {text:?}"
            );
        }
        // The test only means something if some ids carry partial characters.
        split_chars += ids
            .iter()
            .filter(|&&id| std::str::from_utf8(&tok_bytes(tok, id)).is_err())
            .count();
    }
    assert!(
        split_chars > 10,
        "no token carried a partial character ({split_chars})"
    );
}

/// Bytes of one id decoded alone, recovered through the lossy-free path: decode of [id] must not be
/// valid when the token holds part of a character.
fn tok_bytes(tok: &Tokenizer, id: u32) -> Vec<u8> {
    let s = tok.decode(&[id], false).unwrap();
    if s.contains('\u{FFFD}') {
        vec![0xFF]
    } else {
        s.into_bytes()
    }
}

#[test]
fn every_case_streams_to_its_full_decode() {
    let tok = hf_tokenizer();
    for c in cases() {
        for skip in [false, true] {
            let (chunks, joined) = stream(tok, &c.ids, skip);
            let full = tok.decode(&c.ids, skip).unwrap();
            assert_eq!(joined, full, "{:?} skip={skip}", c.text);
            if !full.contains('\u{FFFD}') {
                assert!(
                    chunks.iter().all(|s| !s.contains('\u{FFFD}')),
                    "{:?}",
                    c.text
                );
            }
            assert!(chunks.iter().all(|s| !s.is_empty()));
        }
    }
}

#[test]
fn invalid_and_truncated_sequences_match_decode() {
    let tok = hf_tokenizer();
    let ids = tok.encode("中文😀").unwrap();
    // Drop single ids to create invalid/truncated byte sequences; the stream must still equal decode.
    for drop in 0..ids.len() {
        let mut v = ids.clone();
        v.remove(drop);
        let (_, joined) = stream(tok, &v, false);
        assert_eq!(joined, tok.decode(&v, false).unwrap(), "dropped #{drop}");
    }
    // Truncated at the end: the remainder comes out at flush as U+FFFD.
    let emoji = tok.encode("😀").unwrap();
    if emoji.len() > 1 {
        let (chunks, joined) = stream(tok, &emoji[..emoji.len() - 1], false);
        assert_eq!(joined, "\u{FFFD}");
        assert_eq!(chunks.len(), 1);
    }
}

#[test]
fn special_tokens_in_stream() {
    let tok = hf_tokenizer();
    let ids = tok.encode("<|im_start|>assistant\n你好<|im_end|>").unwrap();
    assert_eq!(
        stream(tok, &ids, false).1,
        "<|im_start|>assistant\n你好<|im_end|>"
    );
    assert_eq!(stream(tok, &ids, true).1, "assistant\n你好");
}
