//! Chat templates render exactly what transformers' apply_chat_template(tokenize=False) renders.

mod common;

use common::{hf_tokenizer, read};
use qwen2_tokenizer::{ChatMessage, ChatTemplate, CHATML_TEMPLATE};
use serde::Deserialize;

#[derive(Deserialize)]
struct ChatCase {
    name: String,
    template: String,
    messages: Vec<ChatMessage>,
    tools: Option<serde_json::Value>,
    add_generation_prompt: bool,
    expected: String,
}

#[test]
fn renders_like_transformers() {
    let tok = hf_tokenizer();
    let gguf = ChatTemplate::new(tok.chat_template().expect("fixture has a chat template"))
        .unwrap()
        .with_special_tokens(tok.bos_token(), tok.eos_token(), tok.pad_token());
    let qwen2 = ChatTemplate::new(&read("qwen2_chatml.jinja")).unwrap();
    let chatml = ChatTemplate::chatml_default();
    assert_eq!(CHATML_TEMPLATE, read("chatml.jinja"));
    let cases: Vec<ChatCase> = read("chat_cases.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(cases.len() >= 40);
    let mut with_tools = 0;
    for c in &cases {
        let t = match c.template.as_str() {
            "gguf" => &gguf,
            "qwen2_chatml" => &qwen2,
            "chatml" => &chatml,
            other => panic!("unknown template {other}"),
        };
        with_tools += usize::from(c.tools.is_some());
        let out = t
            .render(&c.messages, c.add_generation_prompt, c.tools.as_ref())
            .unwrap_or_else(|e| panic!("{} / {}: {e}", c.template, c.name));
        assert_eq!(out, c.expected, "{} / {}", c.template, c.name);
    }
    assert!(with_tools >= 4);
    eprintln!("{} chat cases identical to transformers", cases.len());
}

#[test]
fn message_json_shapes() {
    let m: ChatMessage = serde_json::from_str(
        r#"{"role": "assistant", "content": null, "tool_calls": [{"function": {"name": "f", "arguments": {}}}]}"#,
    )
    .unwrap();
    assert_eq!(m.content, "");
    let back = serde_json::to_value(ChatMessage::new("user", "hi")).unwrap();
    assert_eq!(back, serde_json::json!({"role": "user", "content": "hi"}));
}
