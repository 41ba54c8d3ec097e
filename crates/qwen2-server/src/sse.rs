//! Server-sent-event streams: one task per request relays every choice's deltas as OpenAI
//! chunks, then the finish chunks, the optional usage chunk and `data: [DONE]`. When the client
//! goes away the task ends, which aborts the choice tasks and drops their engine handles
//! (cancelling the requests).

use std::convert::Infallible;
use std::sync::atomic::Ordering;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::api::RunCtx;
use crate::choice::{drive, ChoiceMsg, ChoiceResult, Finish, TokenLp};
use crate::engine::Handle;
use crate::error::ApiError;
use crate::render::{
    chat_logprobs, chat_outcome, completion_logprobs, finish_str, usage, TextOffset,
};

/// Aborts the choice tasks when the relay ends early.
struct AbortOnDrop(Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

fn data(v: &Value) -> Event {
    Event::default().data(v.to_string())
}

fn into_sse(rx: mpsc::Receiver<Event>) -> Response {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Start one task per choice; returns the message receiver and the task guard.
fn spawn_choices(
    ctx: &RunCtx,
    handles: Vec<(usize, usize, Handle)>,
) -> (mpsc::Receiver<ChoiceMsg>, AbortOnDrop) {
    let (tx, rx) = mpsc::channel(256);
    let tasks = handles
        .into_iter()
        .map(|(index, plen, h)| {
            let tx = tx.clone();
            let fut = drive(
                ctx.state.clone(),
                h,
                ctx.opts(index, plen),
                Some(tx.clone()),
            );
            tokio::spawn(async move {
                let r = fut.await;
                let _ = tx.send(ChoiceMsg::Done(r)).await;
            })
        })
        .collect();
    (rx, AbortOnDrop(tasks))
}

fn error_event(m: &str) -> Event {
    data(&json!(ApiError::internal(format!(
        "generation failed: {m}"
    ))
    .body()))
}

/// One streamed chunk of `object` holding `choice`. With usage on, every chunk but the last
/// says `"usage": null`, as OpenAI's do.
fn chunk_event(ctx: &RunCtx, object: &str, choice: Value) -> Event {
    let mut c = json!({
        "id": ctx.id,
        "object": object,
        "created": ctx.created,
        "model": ctx.model,
        "system_fingerprint": null,
        "choices": [choice],
    });
    if ctx.include_usage {
        c["usage"] = Value::Null;
    }
    data(&c)
}

/// Sends `events`, then what each choice message turns into (`on_delta` for a delta,
/// `on_finish` for a choice that ended without error), until every choice is done. Returns the
/// choices' results, or `None` when the client went away.
async fn relay(
    ctx: &RunCtx,
    out: &mpsc::Sender<Event>,
    rx: &mut mpsc::Receiver<ChoiceMsg>,
    mut events: Vec<Event>,
    mut on_delta: impl FnMut(usize, String, Vec<TokenLp>) -> Event,
    mut on_finish: impl FnMut(&ChoiceResult, &mut Vec<Event>),
) -> Option<Vec<ChoiceResult>> {
    let mut results = Vec::new();
    loop {
        for e in events.drain(..) {
            if out.send(e).await.is_err() {
                ctx.state
                    .metrics
                    .disconnects
                    .fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
        let Some(msg) = rx.recv().await else { break };
        match msg {
            ChoiceMsg::Delta {
                index,
                text,
                logprobs,
            } => events.push(on_delta(index, text, logprobs)),
            ChoiceMsg::Done(r) => {
                if let Finish::Error(m) = &r.finish {
                    events.push(error_event(m));
                } else {
                    on_finish(&r, &mut events);
                }
                results.push(r);
            }
        }
    }
    Some(results)
}

/// Sends the usage chunk (when asked for) and `[DONE]`, then records the request's latency.
async fn close(ctx: &RunCtx, out: &mpsc::Sender<Event>, usage_chunk: Option<Value>) {
    let events = usage_chunk
        .map(|u| data(&u))
        .into_iter()
        .chain([Event::default().data("[DONE]")]);
    for e in events {
        if out.send(e).await.is_err() {
            return;
        }
    }
    ctx.state.metrics.latency.observe(ctx.started.elapsed());
}

pub fn chat_stream(ctx: RunCtx, handles: Vec<Handle>) -> Response {
    let (out, rx_out) = mpsc::channel::<Event>(64);
    let n = handles.len();
    tokio::spawn(async move {
        let (mut rx, _tasks) = spawn_choices(
            &ctx,
            handles
                .into_iter()
                .enumerate()
                .map(|(i, h)| (i, ctx.prompt_tokens, h))
                .collect(),
        );
        let chunk = |index: usize, delta: Value, logprobs: Value, finish: Value| {
            let choice = json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish});
            chunk_event(&ctx, "chat.completion.chunk", choice)
        };
        let first: Vec<Event> = (0..n)
            .map(|i| {
                chunk(
                    i,
                    json!({"role": "assistant", "content": ""}),
                    Value::Null,
                    Value::Null,
                )
            })
            .collect();
        let on_delta = |index: usize, text: String, logprobs: Vec<TokenLp>| {
            let lp = if ctx.logprobs {
                chat_logprobs(&ctx.state, &logprobs)
            } else {
                Value::Null
            };
            chunk(index, json!({"content": text}), lp, Value::Null)
        };
        let on_finish = |r: &ChoiceResult, events: &mut Vec<Event>| {
            let o = chat_outcome(&ctx, r);
            if !o.tool_calls.is_empty() {
                if let Some(c) = o.content.filter(|c| *c != r.text) {
                    let extra = c.strip_prefix(r.text.as_str()).unwrap_or(&c).to_owned();
                    if !extra.is_empty() {
                        events.push(chunk(
                            r.index,
                            json!({"content": extra}),
                            Value::Null,
                            Value::Null,
                        ));
                    }
                }
                events.push(chunk(
                    r.index,
                    json!({"tool_calls": o.tool_calls}),
                    Value::Null,
                    Value::Null,
                ));
            } else if let Some(cap) = &r.captured {
                // Tool-call text that did not parse: it is plain content after all.
                events.push(chunk(
                    r.index,
                    json!({"content": cap}),
                    Value::Null,
                    Value::Null,
                ));
            }
            events.push(chunk(r.index, json!({}), Value::Null, json!(o.finish)));
        };
        let Some(results) = relay(&ctx, &out, &mut rx, first, on_delta, on_finish).await else {
            return;
        };
        let usage_chunk = ctx.include_usage.then(|| {
            json!({
                "id": ctx.id,
                "object": "chat.completion.chunk",
                "created": ctx.created,
                "model": ctx.model,
                "system_fingerprint": null,
                "choices": [],
                "usage": usage(&ctx, &results),
            })
        });
        close(&ctx, &out, usage_chunk).await;
    });
    into_sse(rx_out)
}

pub fn completion_stream(ctx: RunCtx, all: Vec<(usize, Vec<Handle>)>, n: usize) -> Response {
    let (out, rx_out) = mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        let mut flat = Vec::new();
        for (p, (plen, hs)) in all.into_iter().enumerate() {
            for (i, h) in hs.into_iter().enumerate() {
                flat.push((p * n + i, plen, h));
            }
        }
        let total = flat.len();
        let (mut rx, _tasks) = spawn_choices(&ctx, flat);
        let chunk = |index: usize, text: &str, logprobs: Value, finish: Value| {
            let choice = json!({"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish});
            chunk_event(&ctx, "text_completion", choice)
        };
        let mut offsets = vec![TextOffset::default(); total];
        let mut first = Vec::new();
        if let Some(echo) = &ctx.echo {
            for (index, offset) in offsets.iter_mut().enumerate() {
                let p = index / n.max(1);
                if let Some((text, ids)) = echo.get(p) {
                    let lp = if ctx.logprobs {
                        let prompt_lps = ctx
                            .echo_logprobs
                            .as_ref()
                            .and_then(|e| e.get(p))
                            .map(Vec::as_slice);
                        completion_logprobs(&ctx.state, ids, prompt_lps, &[], offset)
                    } else {
                        Value::Null
                    };
                    first.push(chunk(index, text, lp, Value::Null));
                }
            }
        }
        let on_delta = |index: usize, text: String, logprobs: Vec<TokenLp>| {
            let lp = if ctx.logprobs {
                let mut spare = TextOffset::default();
                let off = offsets.get_mut(index).unwrap_or(&mut spare);
                completion_logprobs(&ctx.state, &[], None, &logprobs, off)
            } else {
                Value::Null
            };
            chunk(index, &text, lp, Value::Null)
        };
        let on_finish = |r: &ChoiceResult, events: &mut Vec<Event>| {
            events.push(chunk(
                r.index,
                "",
                Value::Null,
                json!(finish_str(&r.finish)),
            ));
        };
        let Some(results) = relay(&ctx, &out, &mut rx, first, on_delta, on_finish).await else {
            return;
        };
        let usage_chunk = ctx.include_usage.then(|| {
            json!({
                "id": ctx.id,
                "object": "text_completion",
                "created": ctx.created,
                "model": ctx.model,
                "choices": [],
                "usage": usage(&ctx, &results),
            })
        });
        close(&ctx, &out, usage_chunk).await;
    });
    into_sse(rx_out)
}
