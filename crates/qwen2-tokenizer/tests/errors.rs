//! Bad input gives a typed error, never a panic.

mod common;

use common::gguf_vocab;
use qwen2_tokenizer::{ChatMessage, ChatTemplate, GgufVocab, Tokenizer, TokenizerError};

#[test]
fn malformed_tokenizer_json() {
    for bad in [
        "",
        "{",
        "[]",
        "{\"model\": 3}",
        "{\"version\": \"1.0\", \"model\": {\"type\": \"Nope\"}}",
    ] {
        let err = Tokenizer::from_json_str(bad).unwrap_err();
        assert!(
            matches!(err, TokenizerError::Json { .. } | TokenizerError::Load(_)),
            "{bad:?}: {err}"
        );
    }
    let dir = std::env::temp_dir().join("qwen2-tokenizer-missing-dir");
    assert!(matches!(
        Tokenizer::from_hf_dir(&dir),
        Err(TokenizerError::Io { .. })
    ));
}

#[test]
fn added_token_ids_that_cannot_be_honoured() {
    // The tokenizers crate renumbers added tokens silently; we refuse instead.
    let json = r#"{"version": "1.0", "added_tokens": [
        {"id": 7, "content": "<|x|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
        "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []}}"#;
    let err = Tokenizer::from_json_str(json).unwrap_err();
    assert!(
        matches!(
            err,
            TokenizerError::AddedTokenId {
                expected: 7,
                actual: 2,
                ..
            }
        ),
        "{err}"
    );
}

fn tiny_vocab() -> GgufVocab {
    GgufVocab {
        model: "gpt2".into(),
        pre: Some("qwen2".into()),
        tokens: ["a", "b", "ab", "<|endoftext|>", "<|im_end|>"]
            .map(String::from)
            .to_vec(),
        token_types: vec![1, 1, 1, 3, 3],
        merges: vec!["a b".into()],
        bos_token_id: None,
        eos_token_id: Some(4),
        padding_token_id: Some(3),
        add_bos_token: false,
    }
}

#[test]
fn tiny_gguf_vocab_works() {
    let tok = Tokenizer::from_gguf(&tiny_vocab()).unwrap();
    assert_eq!(tok.encode("ab<|im_end|>").unwrap(), vec![2, 4]);
    assert_eq!(tok.eos_ids(), vec![4, 3]);
}

#[test]
fn unsupported_or_broken_gguf_vocab() {
    let mut v = tiny_vocab();
    v.pre = Some("llama3".into());
    let err = Tokenizer::from_gguf(&v).unwrap_err();
    assert!(matches!(err, TokenizerError::Unsupported { .. }));
    assert!(
        err.to_string().contains("\"gpt2\" with pre \"qwen2\""),
        "{err}"
    );

    let mut v = tiny_vocab();
    v.model = "llama".into();
    assert!(matches!(
        Tokenizer::from_gguf(&v),
        Err(TokenizerError::Unsupported { .. })
    ));

    let mut v = tiny_vocab();
    v.pre = None; // pre-2024 Qwen2 GGUFs: accepted as qwen2
    assert!(Tokenizer::from_gguf(&v).is_ok());

    let broken: [fn(&mut GgufVocab); 6] = [
        |v| v.tokens.clear(),
        |v| v.token_types.pop().map(drop).unwrap_or(()),
        |v| v.merges.push("nospace".into()),
        |v| v.merges.push("a zzz".into()),
        |v| v.tokens[1] = "a".into(),
        |v| v.eos_token_id = Some(99),
    ];
    for (k, f) in broken.iter().enumerate() {
        let mut v = tiny_vocab();
        f(&mut v);
        let err = Tokenizer::from_gguf(&v).unwrap_err();
        assert!(
            matches!(err, TokenizerError::InvalidVocab(_)),
            "case {k}: {err}"
        );
    }
}

#[test]
fn special_tokens_in_the_middle_of_a_gguf_vocab_keep_their_ids() {
    let mut v = gguf_vocab(0);
    // Move <|im_end|> into the middle: swap it with token 100.
    let im_end = v.tokens.iter().position(|t| t == "<|im_end|>").unwrap();
    v.tokens.swap(100, im_end);
    v.token_types.swap(100, im_end);
    let tok = Tokenizer::from_gguf(&v).unwrap();
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(100));
    assert_eq!(tok.token_to_id(&v.tokens[im_end]), Some(im_end as u32));
    assert_eq!(tok.encode("x<|im_end|>").unwrap()[1], 100);
}

#[test]
fn bad_templates() {
    for bad in [
        "{% for m in messages %}",
        "{{ messages[0].content | no_such_filter }}",
        "{% if %}",
    ] {
        let r = ChatTemplate::new(bad)
            .and_then(|t| t.render(&[ChatMessage::new("user", "hi")], true, None));
        assert!(
            matches!(r, Err(TokenizerError::Template(_))),
            "{bad:?}: {r:?}"
        );
    }
    // Runtime errors (raise_exception, out-of-range index) are errors too.
    let t = ChatTemplate::new(
        "{% if messages[0].role != 'system' %}{{ raise_exception('need system') }}{% endif %}",
    )
    .unwrap();
    let err = t
        .render(&[ChatMessage::new("user", "hi")], false, None)
        .unwrap_err();
    assert!(err.to_string().contains("need system"), "{err}");
    let t = ChatTemplate::new("{{ messages[5].content.strip() }}").unwrap();
    assert!(t.render(&[], false, None).is_err());
}
