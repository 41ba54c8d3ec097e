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

/// Character offsets of tokens in the text they decode to. A token may end inside a
/// multi-byte character; the next token then starts at that same character.
#[derive(Debug, Default, Clone)]
pub struct TextOffset {
    chars: usize,
    /// Bytes of a character not complete yet.
    pending: Vec<u8>,
}

impl TextOffset {
    /// The offset where a token of `bytes` starts; moves past it.
    pub fn advance(&mut self, bytes: &[u8]) -> usize {
        let at = self.chars;
        self.pending.extend_from_slice(bytes);
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    self.chars += s.chars().count();
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let valid = &rest[..e.valid_up_to()];
                    self.chars += std::str::from_utf8(valid).map_or(0, |s| s.chars().count());
                    match e.error_len() {
                        // Invalid bytes show as one U+FFFD each run.
                        Some(n) => {
                            self.chars += 1;
                            rest = &rest[e.valid_up_to() + n..];
                        }
                        None => {
                            rest = &rest[e.valid_up_to()..];
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        at
    }
}

/// Completions `logprobs` object. `prompt`: echoed prompt ids, which come first, with
/// `prompt_lps` the logprobs of all but the first (null without them); `offset`: where the text
/// of the first token starts.
pub fn completion_logprobs(
    state: &AppState,
    prompt: &[u32],
    prompt_lps: Option<&[TokenLp]>,
    lps: &[TokenLp],
    offset: &mut TextOffset,
) -> Value {
    let mut tokens = Vec::new();
    let mut token_logprobs = Vec::new();
    let mut top_logprobs = Vec::new();
    let mut text_offset = Vec::new();
    let mut push = |id: u32, lp: Value, top: Value, offset: &mut TextOffset| {
        let (text, bytes) = token_text(state, id);
        text_offset.push(offset.advance(&bytes));
        tokens.push(text);
        token_logprobs.push(lp);
        top_logprobs.push(top);
    };
    let entry = |t: &TokenLp| {
        let mut top = Map::new();
        for &(id, lp) in &t.top {
            top.insert(token_text(state, id).0, json!(lp_value(lp)));
        }
        (json!(lp_value(t.logprob)), Value::Object(top))
    };
    for (i, &id) in prompt.iter().enumerate() {
        let (lp, top) = match prompt_lps.and_then(|p| p.get(i.wrapping_sub(1))) {
            Some(t) if i > 0 && t.id == id => entry(t),
            _ => (Value::Null, Value::Null),
        };
        push(id, lp, top, offset);
    }
    for t in lps {
        let (lp, top) = entry(t);
        push(t.id, lp, top, offset);
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
                let p = r.index / n.max(1);
                let prompt = echo.map(|(_, ids)| ids.as_slice()).unwrap_or_default();
                let prompt_lps = ctx
                    .echo_logprobs
                    .as_ref()
                    .and_then(|e| e.get(p))
                    .map(Vec::as_slice);
                completion_logprobs(
                    &ctx.state,
                    prompt,
                    prompt_lps,
                    &r.logprobs,
                    &mut TextOffset::default(),
                )
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

#[cfg(test)]
mod tests {
    use super::TextOffset;

    #[test]
    fn text_offsets_count_characters_across_split_tokens() {
        // "héllo" with "é" split over two tokens, then a CJK char in one token, then ASCII.
        let e = "é".as_bytes();
        let tokens: [&[u8]; 5] = [b"h", &e[..1], &e[1..], "中".as_bytes(), b"llo"];
        let mut off = TextOffset::default();
        let starts: Vec<usize> = tokens.iter().map(|t| off.advance(t)).collect();
        assert_eq!(starts, [0, 1, 1, 2, 3]);
        assert_eq!(off.advance(b""), 6);
        // An invalid byte counts as one replacement character.
        let mut off = TextOffset::default();
        assert_eq!(off.advance(b"\xffa"), 0);
        assert_eq!(off.advance(b"b"), 2);
    }
}
