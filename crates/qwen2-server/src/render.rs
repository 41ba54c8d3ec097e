//! Response bodies: chat and completion objects, logprobs in both OpenAI shapes, tool calls.

use serde_json::{json, Map, Value};

use crate::api::{check_errors, AppState, RunCtx};
use crate::choice::{ChoiceResult, Finish, TokenLp};
use crate::error::ApiError;
use crate::openai::{TokenLogprob, ToolCall, TopLogprob, Usage};
use crate::tools::{call_id, parse_tool_calls};

/// A token's text and raw bytes (special tokens by their text).
pub fn token_text(state: &AppState, id: u32) -> (String, Vec<u8>) {
    let bytes = state
        .model
        .tokenizer()
        .ok()
        .and_then(|t| t.token_bytes(id, false))
        .unwrap_or_default();
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

/// A logprob as JSON: -inf (a token the mask excluded) is not valid JSON, so it becomes -9999.
fn lp_value(x: f32) -> f32 {
    if x.is_finite() {
        x
    } else {
        -9999.0
    }
}

/// Chat `logprobs` object: `{"content": [{token, logprob, bytes, top_logprobs}]}`.
pub fn chat_logprobs(state: &AppState, lps: &[TokenLp]) -> Value {
    let content: Vec<TokenLogprob> = lps
        .iter()
        .map(|t| {
            let (token, bytes) = token_text(state, t.id);
            TokenLogprob {
                token,
                logprob: lp_value(t.logprob),
                bytes,
                top_logprobs: t
                    .top
                    .iter()
                    .map(|&(id, lp)| {
                        let (token, bytes) = token_text(state, id);
                        TopLogprob {
                            token,
                            logprob: lp_value(lp),
                            bytes,
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    json!({ "content": content })
}

/// Completions `logprobs` object. `prompt`: echoed prompt ids (no logprobs for them), which come
/// first; `offset`: characters of text before the first token.
pub fn completion_logprobs(
    state: &AppState,
    prompt: &[u32],
    lps: &[TokenLp],
    offset: &mut usize,
) -> Value {
    let mut tokens = Vec::new();
    let mut token_logprobs = Vec::new();
    let mut top_logprobs = Vec::new();
    let mut text_offset = Vec::new();
    let mut push = |text: String, lp: Value, top: Value, offset: &mut usize| {
        text_offset.push(*offset);
        *offset += text.chars().count();
        tokens.push(text);
        token_logprobs.push(lp);
        top_logprobs.push(top);
    };
    for &id in prompt {
        push(token_text(state, id).0, Value::Null, Value::Null, offset);
    }
    for t in lps {
        let mut top = Map::new();
        for &(id, lp) in &t.top {
            top.insert(token_text(state, id).0, json!(lp_value(lp)));
        }
        push(
            token_text(state, t.id).0,
            json!(lp_value(t.logprob)),
            Value::Object(top),
            offset,
        );
    }
    json!({
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": text_offset,
    })
}

pub fn finish_str(f: &Finish) -> &'static str {
    match f {
        Finish::Stop => "stop",
        Finish::Length => "length",
        Finish::Error(_) => "error",
    }
}

/// Content and tool calls of a finished chat choice.
pub struct ChatOutcome {
    pub content: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    pub finish: &'static str,
}

pub fn chat_outcome(ctx: &RunCtx, r: &ChoiceResult) -> ChatOutcome {
    let mut full = r.text.clone();
    if let Some(c) = &r.captured {
        full.push_str(c);
    }
    if ctx.tool_mode {
        let (content, calls) = parse_tool_calls(&full, &ctx.tool_names);
        if !calls.is_empty() {
            return ChatOutcome {
                content: (!content.is_empty()).then_some(content),
                tool_calls: calls
                    .into_iter()
                    .enumerate()
                    .map(|(i, function)| ToolCall {
                        index: Some(i),
                        id: call_id(),
                        kind: "function",
                        function,
                    })
                    .collect(),
                finish: "tool_calls",
            };
        }
    }
    ChatOutcome {
        content: Some(full),
        tool_calls: Vec::new(),
        finish: finish_str(&r.finish),
    }
}

pub fn usage(ctx: &RunCtx, results: &[ChoiceResult]) -> Usage {
    Usage::new(
        ctx.prompt_tokens,
        results.iter().map(|r| r.completion_tokens).sum(),
        results.iter().map(|r| r.cached_tokens).max().unwrap_or(0),
    )
}

pub fn chat_response(ctx: &RunCtx, results: &[ChoiceResult]) -> Result<Value, ApiError> {
    check_errors(results)?;
    let choices: Vec<Value> = results
        .iter()
        .map(|r| {
            let o = chat_outcome(ctx, r);
            let mut message = json!({"role": "assistant", "content": o.content});
            if !o.tool_calls.is_empty() {
                let calls: Vec<Value> = o
                    .tool_calls
                    .iter()
                    .map(|c| {
                        let mut v = json!(c);
                        if let Some(m) = v.as_object_mut() {
                            m.remove("index");
                        }
                        v
                    })
                    .collect();
                message["tool_calls"] = Value::Array(calls);
            }
            json!({
                "index": r.index,
                "message": message,
                "logprobs": ctx.logprobs.then(|| chat_logprobs(&ctx.state, &r.logprobs)),
                "finish_reason": o.finish,
            })
        })
        .collect();
    Ok(json!({
        "id": ctx.id,
        "object": "chat.completion",
        "created": ctx.created,
        "model": ctx.model,
        "system_fingerprint": null,
        "choices": choices,
        "usage": usage(ctx, results),
    }))
}

pub fn completion_response(
    ctx: &RunCtx,
    results: &[ChoiceResult],
    n: usize,
    logprobs: Option<usize>,
) -> Result<Value, ApiError> {
    check_errors(results)?;
    let choices: Vec<Value> = results
        .iter()
        .map(|r| {
            let echo = ctx.echo.as_ref().and_then(|e| e.get(r.index / n.max(1)));
            let mut text = echo.map(|(t, _)| t.clone()).unwrap_or_default();
            text.push_str(&r.text);
            let lp = logprobs.map(|_| {
                let prompt = echo.map(|(_, ids)| ids.as_slice()).unwrap_or_default();
                completion_logprobs(&ctx.state, prompt, &r.logprobs, &mut 0)
            });
            json!({
                "index": r.index,
                "text": text,
                "logprobs": lp,
                "finish_reason": finish_str(&r.finish),
            })
        })
        .collect();
    Ok(json!({
        "id": ctx.id,
        "object": "text_completion",
        "created": ctx.created,
        "model": ctx.model,
        "system_fingerprint": null,
        "choices": choices,
        "usage": usage(ctx, results),
    }))
}
