//! The real server (real 0.5B model, loopback, free port) driven over raw HTTP.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use qwen2_server::constrain::Schema;
use serde_json::{json, Value};

fn content(v: &Value, i: usize) -> String {
    v["choices"][i]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Greedy chat answer text.
fn greedy_chat(prompt: &str, max_tokens: usize, extra: Value) -> Value {
    let mut body = json!({"messages": user(prompt), "max_tokens": max_tokens, "temperature": 0});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let (s, v) = post(serial(), "/v1/chat/completions", &body);
    assert_eq!(s, 200, "{v}");
    v
}

#[test]
fn chat_completion_shape_and_usage() {
    let v = greedy_chat("What is 2+2? Answer with one number.", 16, json!({}));
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let text = content(&v, 0);
    assert!(text.contains('4'), "{text}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // prompt_tokens = the template rendered by the tokenizer crate, tokenized.
    let m = model();
    let msgs = [qwen2_tokenizer::ChatMessage::new(
        "user",
        "What is 2+2? Answer with one number.",
    )];
    let rendered = m
        .chat_template
        .as_ref()
        .unwrap()
        .render(&msgs, true, None)
        .unwrap();
    let n_prompt = m.tokenizer().unwrap().encode(&rendered).unwrap().len();
    let u = &v["usage"];
    assert_eq!(u["prompt_tokens"], n_prompt);
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );
    // The completion token count re-tokenizes to the same text (plus <|im_end|>).
    let ids = m.tokenizer().unwrap().encode(&text).unwrap();
    let c = u["completion_tokens"].as_u64().unwrap() as usize;
    assert!(c == ids.len() || c == ids.len() + 1, "{c} vs {}", ids.len());
}

#[test]
fn content_parts_and_system_messages() {
    let (s, v) = post(
        shared(),
        "/v1/chat/completions",
        &json!({"messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "What is 2+"}, {"type": "text", "text": "2?"}]}
        ], "max_tokens": 12, "temperature": 0}),
    );
    assert_eq!(s, 200, "{v}");
    assert!(content(&v, 0).contains('4'), "{v}");
}

#[test]
fn streaming_matches_non_streaming() {
    let prompt = "Write a haiku about the sea.";
    let full = greedy_chat(prompt, 40, json!({}));
    let chunks = post_stream(
        serial(),
        "/v1/chat/completions",
        &json!({"messages": user(prompt), "max_tokens": 40, "temperature": 0, "stream": true,
                "stream_options": {"include_usage": true}}),
    );
    assert_eq!(chunks.last().unwrap(), "[DONE]");
    let mut text = String::new();
    let mut finish = None;
    for c in &chunks[..chunks.len() - 2] {
        assert_eq!(c["object"], "chat.completion.chunk");
        let ch = &c["choices"][0];
        if let Some(t) = ch["delta"]["content"].as_str() {
            text.push_str(t);
        }
        if !ch["finish_reason"].is_null() {
            finish = Some(ch["finish_reason"].clone());
        }
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(text, content(&full, 0));
    assert_eq!(Some(full["choices"][0]["finish_reason"].clone()), finish);
    let usage_chunk = &chunks[chunks.len() - 2];
    assert_eq!(usage_chunk["choices"].as_array().unwrap().len(), 0);
    // Cached-token counts may differ (the prefix cache): compare the rest.
    for k in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(usage_chunk["usage"][k], full["usage"][k], "{k}");
    }
}

#[test]
fn stop_strings_cut_output_in_both_modes() {
    let prompt = "Count from 1 to 10, separated by commas.";
    let free = content(&greedy_chat(prompt, 40, json!({})), 0);
    let at = free.find('5').expect("the model counts to 5");
    let v = greedy_chat(prompt, 40, json!({"stop": ["5", "never-appears"]}));
    assert_eq!(content(&v, 0), free[..at]);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // Streaming: a multi-character stop string split over tokens never leaks.
    let stop = free[at - 2..at + 1].to_owned(); // e.g. "4,5" spans tokens
    let chunks = post_stream(
        serial(),
        "/v1/chat/completions",
        &json!({"messages": user(prompt), "max_tokens": 40, "temperature": 0, "stream": true, "stop": stop}),
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, free[..at - 2]);
}

#[test]
fn chat_logprobs_have_tokens_bytes_and_alternatives() {
    let v = greedy_chat(
        "Name a color.",
        8,
        // Repetition penalty off: greedy then picks the argmax of the reported distribution.
        json!({"logprobs": true, "top_logprobs": 3, "repetition_penalty": 1.0}),
    );
    let entries = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert!(!entries.is_empty());
    let mut joined = String::new();
    for e in entries {
        let tok = e["token"].as_str().unwrap();
        let bytes: Vec<u8> = e["bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(String::from_utf8_lossy(&bytes), tok);
        joined.push_str(tok);
        let lp = e["logprob"].as_f64().unwrap();
        assert!(lp <= 0.0);
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the most likely one.
        let best = top
            .iter()
            .map(|t| t["logprob"].as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        assert!((best - lp).abs() < 1e-4, "{lp} vs {best}");
        // Alternatives are sorted and are real probabilities.
        assert!(top
            .windows(2)
            .all(|w| w[0]["logprob"].as_f64() >= w[1]["logprob"].as_f64()));
    }
    assert_eq!(joined, content(&v, 0));
}

#[test]
fn completions_prompt_forms_echo_and_logprobs() {
    let addr = serial();
    let prompt = "def fibonacci(n):";
    let (s, a) = post(
        addr,
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 10, "temperature": 0}),
    );
    assert_eq!(s, 200, "{a}");
    assert_eq!(a["object"], "text_completion");
    let text = a["choices"][0]["text"].as_str().unwrap().to_owned();
    assert!(!text.is_empty());
    // The same prompt as token ids gives the same text.
    let ids = model().tokenizer().unwrap().encode(prompt).unwrap();
    let (_, b) = post(
        addr,
        "/v1/completions",
        &json!({"prompt": ids, "max_tokens": 10, "temperature": 0}),
    );
    assert_eq!(b["choices"][0]["text"], text.as_str());
    // A list of prompts (strings and id lists): one choice per prompt, in order.
    let (_, c) = post(
        addr,
        "/v1/completions",
        &json!({"prompt": [prompt, ids, "import numpy as"], "max_tokens": 10, "temperature": 0}),
    );
    let choices = c["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    assert_eq!(choices[0]["text"], text.as_str());
    assert_eq!(choices[1]["text"], text.as_str());
    assert_eq!(choices[2]["index"], 2);
    let n3 = model()
        .tokenizer()
        .unwrap()
        .encode("import numpy as")
        .unwrap()
        .len();
    assert_eq!(c["usage"]["prompt_tokens"], 2 * ids.len() + n3);
    // echo + logprobs: prompt tokens first (no logprob), then the completion's.
    let (_, d) = post(
        addr,
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 10, "temperature": 0, "echo": true, "logprobs": 2, "repetition_penalty": 1.0}),
    );
    let ch = &d["choices"][0];
    assert_eq!(ch["text"], format!("{prompt}{text}"));
    let lp = &ch["logprobs"];
    let tokens = lp["tokens"].as_array().unwrap();
    assert_eq!(
        tokens.len(),
        ids.len() + d["usage"]["completion_tokens"].as_u64().unwrap() as usize
    );
    let joined: String = tokens.iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(joined, format!("{prompt}{text}"));
    assert!(lp["token_logprobs"][0].is_null());
    let offs = lp["text_offset"].as_array().unwrap();
    assert_eq!(offs[0], 0);
    for i in ids.len()..tokens.len() {
        let chosen = lp["token_logprobs"][i].as_f64().unwrap();
        let top = lp["top_logprobs"][i].as_object().unwrap();
        assert_eq!(top.len(), 2);
        let best = top
            .values()
            .map(|x| x.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        assert!((best - chosen).abs() < 1e-4);
    }
    // Streaming completions concatenate to the same text.
    let chunks = post_stream(
        addr,
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 10, "temperature": 0, "stream": true}),
    );
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(streamed, text);
    assert_eq!(chunks.last().unwrap(), "[DONE]");
}

/// Reference logprobs of each prompt token after the first: the core model's forward with
/// logits at every position (one pass, f64 log-softmax).
fn reference_prompt_logprobs(ids: &[u32]) -> Vec<(f64, f64)> {
    let m = model();
    let mut cache = m.model.new_cache(ids.len());
    let logits = m
        .model
        .forward(ids, &mut cache, qwen2_core::Logits::All)
        .unwrap();
    let vocab = m.model.vocab_size();
    (1..ids.len())
        .map(|i| {
            let row = &logits[(i - 1) * vocab..i * vocab];
            let max = row.iter().copied().fold(f32::MIN, f32::max) as f64;
            let lse = max
                + row
                    .iter()
                    .map(|&x| (x as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            (row[ids[i] as usize] as f64 - lse, max - lse)
        })
        .collect()
}

#[test]
fn echo_logprobs_cover_the_prompt() {
    let m = model();
    let tok = m.tokenizer().unwrap();
    for prompt in [
        // Long enough to span several of the pass's 32-token chunks.
        "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    if n < 2:\n        \
         return n\n    a, b = 0, 1\n    for _ in range(n - 1):\n        a, b = b, a + b\n    \
         return b\n\n\ndef is_prime(k):\n    \"\"\"True when k is prime.\"\"\"\n    if k < 2:\n        \
         return False\n    i = 2\n    while i * i <= k:\n        if k % i == 0:\n            \
         return False\n        i += 1\n    return True\n",
        "Grüße aus Köln — 你好，世界! naïve café",
    ] {
        let ids = tok.encode(prompt).unwrap();
        let reference = reference_prompt_logprobs(&ids);
        let body = json!({"prompt": prompt, "max_tokens": 3, "temperature": 0, "echo": true,
                          "logprobs": 3});
        let (s, v) = post(shared(), "/v1/completions", &body);
        assert_eq!(s, 200, "{v}");
        let lp = &v["choices"][0]["logprobs"];
        let tokens = lp["tokens"].as_array().unwrap();
        let n_gen = v["usage"]["completion_tokens"].as_u64().unwrap() as usize;
        // A stop id ending the completion counts in usage but has no text or entry.
        let stopped = v["choices"][0]["finish_reason"] == "stop";
        let n_entries = tokens.len() - ids.len();
        assert!(
            n_entries == n_gen || (stopped && n_entries + 1 == n_gen),
            "{v}"
        );
        assert!(lp["token_logprobs"][0].is_null() && lp["top_logprobs"][0].is_null());
        let mut worst = 0f64;
        for i in 1..ids.len() {
            let (want, want_best) = reference[i - 1];
            let got = lp["token_logprobs"][i].as_f64().unwrap();
            worst = worst.max((got - want).abs());
            let top = lp["top_logprobs"][i].as_object().unwrap();
            assert_eq!(top.len(), 3, "{i}: {top:?}");
            let best = top
                .values()
                .map(|x| x.as_f64().unwrap())
                .fold(f64::MIN, f64::max);
            assert!(
                (best - want_best).abs() < 1e-4,
                "{i}: {best} vs {want_best}"
            );
        }
        eprintln!(
            "echo logprobs: {} prompt tokens, worst |diff| vs forward {worst:.2e}",
            ids.len()
        );
        assert!(
            worst < 1e-4,
            "prompt logprobs differ from the forward pass by {worst}"
        );
        // text_offset: where each token's text starts in the decoded text, in characters.
        let offs: Vec<usize> = lp["text_offset"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(offs[0], 0);
        for i in 1..=ids.len() {
            let before = tok.decode(&ids[..i], false).unwrap();
            if !before.contains('\u{FFFD}') {
                let want = before.chars().count();
                assert_eq!(offs.get(i).copied().unwrap_or(want), want, "offset {i}");
            }
        }
        // Streaming: the first chunk carries the same prompt logprobs.
        let mut sbody = body.clone();
        sbody["stream"] = json!(true);
        let chunks = post_stream(shared(), "/v1/completions", &sbody);
        let first = &chunks[0]["choices"][0];
        assert_eq!(first["text"], prompt);
        let slp = &first["logprobs"];
        assert_eq!(slp["tokens"].as_array().unwrap().len(), ids.len());
        assert_eq!(slp["text_offset"], json!(offs[..ids.len()]));
        for i in 1..ids.len() {
            let a = slp["token_logprobs"][i].as_f64().unwrap();
            let b = lp["token_logprobs"][i].as_f64().unwrap();
            assert!((a - b).abs() < 1e-5, "{i}: {a} vs {b}");
        }
    }
}

#[test]
fn n_choices_and_seeds() {
    let body = |seed: u64, n: usize| {
        json!({"messages": user("Invent a name for a cat."), "max_tokens": 12, "temperature": 1.0,
               "top_p": 1.0, "top_k": 0, "seed": seed, "n": n})
    };
    let (s, a) = post(shared(), "/v1/chat/completions", &body(7, 3));
    assert_eq!(s, 200, "{a}");
    let ch = a["choices"].as_array().unwrap();
    assert_eq!(ch.len(), 3);
    for (i, c) in ch.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert!(!content(&a, i).is_empty());
    }
    // usage counts the prompt once and every choice's tokens.
    let one = post(shared(), "/v1/chat/completions", &body(7, 1)).1;
    assert_eq!(a["usage"]["prompt_tokens"], one["usage"]["prompt_tokens"]);
    assert!(a["usage"]["completion_tokens"].as_u64().unwrap() >= 3);
    // Streaming with n: every index gets its finish chunk.
    let chunks = post_stream(
        shared(),
        "/v1/chat/completions",
        &json!({"messages": user("Say yes."), "max_tokens": 5, "n": 2, "stream": true}),
    );
    let finished: Vec<u64> = chunks
        .iter()
        .filter(|c| c["choices"][0]["finish_reason"].is_string())
        .map(|c| c["choices"][0]["index"].as_u64().unwrap())
        .collect();
    assert_eq!(finished.len(), 2);
    assert!(finished.contains(&0) && finished.contains(&1));
}

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    }}])
}

/// Same seed, same text. On a server of its own (one request at a time, no prefix cache) so the
/// logits do not depend on what else is in the batch.
#[test]
fn same_seed_same_text() {
    let mut cfg = engine_cfg(2, 8);
    cfg.prefix_cache_tokens = 0;
    let srv = start(cfg, None);
    let body = |seed: u64| {
        json!({"messages": user("Invent a name for a cat."), "max_tokens": 16, "temperature": 1.0,
               "top_p": 1.0, "top_k": 0, "seed": seed})
    };
    let a = content(&post(srv.addr, "/v1/chat/completions", &body(7)).1, 0);
    let b = content(&post(srv.addr, "/v1/chat/completions", &body(7)).1, 0);
    assert_eq!(a, b);
    let texts: std::collections::HashSet<String> = (1..6)
        .map(|s| content(&post(srv.addr, "/v1/chat/completions", &body(s)).1, 0))
        .collect();
    assert!(texts.len() > 1, "different seeds should differ: {texts:?}");
    srv.shutdown().unwrap();
}

#[test]
fn tool_calls_end_to_end() {
    // The 0.5B model calls the tool for this prompt under greedy decoding (checked: it emits a
    // `<tool_call>` block with {"name": "get_weather", "arguments": {"city": "Paris"}}).
    let v = greedy_chat(
        "What is the weather in Paris right now?",
        80,
        json!({"tools": weather_tools()}),
    );
    let ch = &v["choices"][0];
    assert_eq!(ch["finish_reason"], "tool_calls", "{v}");
    let call = &ch["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].as_str().unwrap().contains("Paris"));
    // Streaming: the call arrives as a tool_calls delta, none of its text as content.
    let chunks = post_stream(
        shared(),
        "/v1/chat/completions",
        &json!({"messages": user("What is the weather in Paris right now?"), "max_tokens": 80,
                "temperature": 0, "stream": true, "tools": weather_tools()}),
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(!text.contains("<tool_call>"), "{text}");
    let delta = chunks
        .iter()
        .find(|c| c["choices"][0]["delta"]["tool_calls"].is_array())
        .expect("a tool_calls delta");
    assert_eq!(
        delta["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    assert_eq!(delta["choices"][0]["delta"]["tool_calls"][0]["index"], 0);
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));
    // The answer to a tool result goes back through the template.
    let (s, v2) = post(
        shared(),
        "/v1/chat/completions",
        &json!({"messages": [
            {"role": "user", "content": "What is the weather in Paris right now?"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "{\"temp_c\": 21, \"sky\": \"sunny\"}"}
        ], "max_tokens": 40, "temperature": 0, "tools": weather_tools()}),
    );
    assert_eq!(s, 200, "{v2}");
    // The 0.5B model tends to call the tool again rather than answer, so check the prompt: the
    // assistant call and the tool result were rendered into it.
    let grown = v2["usage"]["prompt_tokens"].as_u64().unwrap()
        - v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(grown >= 30, "tool turn adds {grown} prompt tokens");
}

fn two_tools() -> Value {
    let mut tools = weather_tools();
    tools
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "function", "function": {
            "name": "get_time",
            "description": "Get the current local time in a time zone",
            "parameters": {"type": "object",
                           "properties": {"zone": {"type": "string"}, "24h": {"type": "boolean"}},
                           "required": ["zone"], "additionalProperties": false}
        }}));
    tools
}

/// The single tool call of a chat response: (name, arguments), checked against `tools`.
fn the_call(v: &Value, tools: &Value) -> (String, Value) {
    let ch = &v["choices"][0];
    assert_eq!(ch["finish_reason"], "tool_calls", "{v}");
    let calls = ch["message"]["tool_calls"].as_array().expect("tool_calls");
    assert_eq!(calls.len(), 1, "{v}");
    let name = calls[0]["function"]["name"].as_str().unwrap().to_owned();
    eprintln!("tool call: {}", calls[0]["function"]);
    let args: Value =
        serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    let tool = tools
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["function"]["name"] == name.as_str())
        .unwrap_or_else(|| panic!("{name} is not one of the tools"));
    Schema::compile(&tool["function"]["parameters"])
        .unwrap()
        .validate(&args)
        .unwrap_or_else(|e| panic!("{e}: {args}"));
    (name, args)
}

#[test]
fn tool_choice_required_named_none_and_errors() {
    let tools = two_tools();
    // "required": a prompt the model would answer in prose still yields a valid call, greedy
    // and sampled.
    for temperature in [0.0, 0.9] {
        let v = greedy_chat(
            "Tell me a short joke about cats.",
            80,
            json!({"tools": tools, "tool_choice": "required", "temperature": temperature, "seed": 5}),
        );
        the_call(&v, &tools);
    }
    // Named: that function, even when the question is about the other one.
    let v = greedy_chat(
        "What is the weather in Paris right now?",
        80,
        json!({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "get_time"}}}),
    );
    let (name, args) = the_call(&v, &tools);
    assert_eq!(name, "get_time");
    assert!(args["zone"].is_string());
    // Streaming "required": the call arrives as a tool_calls delta.
    let chunks = post_stream(
        shared(),
        "/v1/chat/completions",
        &json!({"messages": user("Hello!"), "max_tokens": 80, "temperature": 0, "stream": true,
                "tools": tools, "tool_choice": "required"}),
    );
    let delta = chunks
        .iter()
        .find(|c| c["choices"][0]["delta"]["tool_calls"].is_array())
        .expect("a tool_calls delta");
    let fname = delta["choices"][0]["delta"]["tool_calls"][0]["function"]["name"]
        .as_str()
        .unwrap();
    assert!(fname == "get_weather" || fname == "get_time", "{fname}");
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));
    // "none": the tools are not offered, so nothing is parsed as a call and the prompt is the
    // plain chat prompt.
    let plain = greedy_chat("What is the weather in Paris right now?", 30, json!({}));
    let v = greedy_chat(
        "What is the weather in Paris right now?",
        30,
        json!({"tools": tools, "tool_choice": "none"}),
    );
    assert!(v["choices"][0]["message"]["tool_calls"].is_null(), "{v}");
    assert_ne!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(v["usage"]["prompt_tokens"], plain["usage"]["prompt_tokens"]);
    // Errors: an unknown name, a malformed choice, "required" without tools.
    let chat = "/v1/chat/completions";
    for (body, param) in [
        (
            json!({"messages": user("hi"), "tools": tools,
                   "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            "tool_choice",
        ),
        (
            json!({"messages": user("hi"), "tools": tools, "tool_choice": "sometimes"}),
            "tool_choice",
        ),
        (
            json!({"messages": user("hi"), "tools": tools, "tool_choice": {"type": "function"}}),
            "tool_choice",
        ),
        (
            json!({"messages": user("hi"), "tool_choice": "required"}),
            "tool_choice",
        ),
    ] {
        let (s, v) = post(shared(), chat, &body);
        assert_eq!(assert_error(s, &v, 400)["param"], param, "{body}");
    }
}

#[test]
fn json_schema_output_parses_and_validates() {
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "languages": {"type": "array", "items": {"type": "string", "enum": ["python", "rust", "c"]}},
            "employed": {"type": "boolean"}
        },
        "required": ["name", "age", "languages", "employed"],
        "additionalProperties": false
    });
    let compiled = Schema::compile(&schema).unwrap();
    for temperature in [0.0, 0.9] {
        let v = greedy_chat(
            "Describe a fictional programmer as JSON.",
            120,
            json!({"temperature": temperature, "seed": 3,
                   "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}}),
        );
        let text = content(&v, 0);
        let parsed: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        compiled
            .validate(&parsed)
            .unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
    }
    // json_object: any object.
    let v = greedy_chat(
        "List three fruits as JSON.",
        80,
        json!({"response_format": {"type": "json_object"}}),
    );
    let parsed: Value = serde_json::from_str(&content(&v, 0)).unwrap();
    assert!(parsed.is_object());
}

#[test]
fn error_cases_have_openai_shape() {
    let addr = shared();
    let chat = "/v1/chat/completions";
    let ok_msgs = user("hi");
    let (s, v) = post_raw(addr, chat, "{\"messages\": [", None);
    assert_error(s, &v, 400);
    let (s, v) = post_raw(addr, chat, "not json at all", None);
    assert_error(s, &v, 400);
    let (s, v) = post(
        addr,
        chat,
        &json!({"messages": ok_msgs, "temperature": "hot"}),
    );
    assert_error(s, &v, 400);
    let (s, v) = post(addr, chat, &json!({"messages": []}));
    assert_error(s, &v, 400);
    let (s, v) = post(addr, chat, &json!({"prompt": "no messages"}));
    assert_error(s, &v, 400);
    let (s, v) = post(
        addr,
        chat,
        &json!({"messages": [{"role": "wizard", "content": "x"}]}),
    );
    assert_eq!(assert_error(s, &v, 400)["param"], "messages[0].role");
    for bad in [
        json!({"n": 0}),
        json!({"n": 100}),
        json!({"max_tokens": 0}),
        json!({"top_p": 0}),
        json!({"temperature": -1}),
        json!({"logit_bias": {"abc": 1}}),
        json!({"logit_bias": {"99999999": 1}}),
        json!({"top_logprobs": 3}),
        json!({"logprobs": true, "top_logprobs": 50}),
        json!({"stop": [""]}),
        json!({"response_format": {"type": "xml"}}),
        json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"anyOf": []}}}}),
        json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
    ] {
        let mut body = json!({"messages": ok_msgs});
        body.as_object_mut()
            .unwrap()
            .extend(bad.as_object().unwrap().clone());
        let (s, v) = post(addr, chat, &body);
        assert_error(s, &v, 400);
    }
    let (s, v) = post(addr, chat, &json!({"model": "gpt-4o", "messages": ok_msgs}));
    assert_eq!(assert_error(s, &v, 404)["code"], "model_not_found");
    // The served id and aliases are accepted.
    let id = ServerIds::get();
    for name in [id.as_str(), "qwen2", "default"] {
        let (s, v) = post(
            addr,
            chat,
            &json!({"model": name, "messages": ok_msgs, "max_tokens": 1}),
        );
        assert_eq!(s, 200, "{name}: {v}");
    }
    // Context length: a prompt longer than the context, and prompt + max_tokens over it.
    let long = "hello ".repeat(CTX + 100);
    let (s, v) = post(addr, chat, &json!({"messages": user(&long)}));
    assert_eq!(assert_error(s, &v, 400)["code"], "context_length_exceeded");
    let (s, v) = post(addr, chat, &json!({"messages": ok_msgs, "max_tokens": CTX}));
    assert_eq!(assert_error(s, &v, 400)["code"], "context_length_exceeded");
    let (s, v) = post(
        addr,
        "/v1/completions",
        &json!({"prompt": long, "max_tokens": 5}),
    );
    assert_eq!(assert_error(s, &v, 400)["code"], "context_length_exceeded");
    let (s, v) = post(addr, "/v1/completions", &json!({"prompt": {"a": 1}}));
    assert_error(s, &v, 400);
    let (s, v) = post(addr, "/v1/completions", &json!({"prompt": [-1, 5]}));
    assert_error(s, &v, 400);
    // Unknown route and wrong method.
    let (s, body) = get(addr, "/v1/nothing");
    assert_error(s, &serde_json::from_str(&body).unwrap(), 404);
    let (s, body) = get(addr, chat);
    assert_error(s, &serde_json::from_str(&body).unwrap(), 405);
}

struct ServerIds;
impl ServerIds {
    fn get() -> String {
        let (_, body) = get(shared(), "/v1/models");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["data"][0]["id"].as_str().unwrap().to_owned()
    }
}

#[test]
fn api_key_is_required_on_v1_only() {
    let srv = start(engine_cfg(1, 4), Some("sekret"));
    let body = json!({"messages": user("hi"), "max_tokens": 2}).to_string();
    let (s, v) = post_raw(srv.addr, "/v1/chat/completions", &body, None);
    assert_eq!(assert_error(s, &v, 401)["code"], "invalid_api_key");
    let (s, v) = post_raw(srv.addr, "/v1/chat/completions", &body, Some("wrong"));
    assert_error(s, &v, 401);
    let (s, v) = post_raw(srv.addr, "/v1/chat/completions", &body, Some("sekret"));
    assert_eq!(s, 200, "{v}");
    assert_eq!(get(srv.addr, "/health").0, 200);
    assert_eq!(get(srv.addr, "/v1/models").0, 401);
    srv.shutdown().unwrap();
}

#[test]
fn queue_full_is_429() {
    // One slot, one queue place: a running stream plus a queued one fill the server.
    let srv = start(engine_cfg(1, 1), None);
    let addr = srv.addr;
    let long = json!({"messages": user("Write a long essay about rivers."), "max_tokens": 400, "stream": true});
    let open = |body: &Value| {
        let mut s = TcpStream::connect(addr).unwrap();
        let b = body.to_string();
        write!(s, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len()).unwrap();
        let mut r = BufReader::new(s);
        let mut status = String::new();
        r.read_line(&mut status).unwrap();
        assert!(status.contains("200"), "{status}");
        r
    };
    let mut first = open(&long);
    // Wait for its first token so it holds the slot.
    let mut line = String::new();
    while !line.contains("\"content\":\"") || line.contains("\"content\":\"\"") {
        line.clear();
        first.read_line(&mut line).unwrap();
    }
    let _second = open(&long); // queued
    let (s, v) = post(
        addr,
        "/v1/chat/completions",
        &json!({"messages": user("hi"), "max_tokens": 2}),
    );
    assert_eq!(assert_error(s, &v, 429)["type"], "rate_limit_error");
    drop(first);
    drop(_second);
    assert!(wait_idle(addr, 30), "cancelled streams must free the slots");
    srv.shutdown().unwrap();
}

#[test]
fn client_disconnect_frees_the_sequence() {
    let srv = start(engine_cfg(2, 8), None);
    let addr = srv.addr;
    let body = json!({"messages": user("Write a long story about a dragon."), "max_tokens": 500, "stream": true}).to_string();
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut buf = [0u8; 2048];
    let _ = s.read(&mut buf).unwrap();
    let t0 = std::time::Instant::now();
    while metric(addr, "qwen2_generated_tokens_total") < 3.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no tokens generated"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(metric(addr, "qwen2_active_sequences"), 1.0);
    drop(s);
    assert!(wait_idle(addr, 20), "disconnect must cancel the request");
    assert!(metric(addr, "qwen2_generated_tokens_total") < 500.0);
    srv.shutdown().unwrap();
}

#[test]
fn graceful_shutdown_ends_streams_cleanly() {
    let srv = start(engine_cfg(2, 8), None);
    let addr = srv.addr;
    let reader = std::thread::spawn(move || {
        post_stream(
            addr,
            "/v1/chat/completions",
            &json!({"messages": user("Write a long story."), "max_tokens": 1000, "stream": true}),
        )
    });
    std::thread::sleep(Duration::from_millis(1500));
    let t0 = std::time::Instant::now();
    srv.shutdown().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(15));
    let chunks = reader.join().unwrap();
    assert_eq!(
        chunks.last().unwrap(),
        "[DONE]",
        "the stream ends with [DONE]"
    );
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"].is_string()));
    // Nothing listens any more.
    assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err());
}

#[test]
fn health_models_and_metrics() {
    let addr = shared();
    let (s, body) = get(addr, "/health");
    assert_eq!(s, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["status"],
        "ok"
    );
    let (s, body) = get(addr, "/v1/models");
    assert_eq!(s, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["object"], "model");
    let _ = greedy_chat("hi", 2, json!({}));
    let (_, text) = get(addr, "/metrics");
    for name in [
        "qwen2_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"}",
        "qwen2_prompt_tokens_total",
        "qwen2_generated_tokens_total",
        "qwen2_queue_depth",
        "qwen2_active_sequences",
        "qwen2_kv_cache_used_bytes",
        "qwen2_kv_cache_capacity_bytes",
        "qwen2_time_to_first_token_seconds_bucket{le=\"+Inf\"}",
        "qwen2_request_duration_seconds_count",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
    assert!(metric(addr, "qwen2_kv_cache_capacity_bytes") > 0.0);
}
