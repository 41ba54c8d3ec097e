//! Drives one engine request ("choice"): detokenizes its tokens with `StreamDecoder`, applies
//! stop strings (cancelling the engine request when one appears), captures tool-call text, and
//! reports text deltas as they become safe to show plus the final result.

use std::sync::Arc;
use std::time::Instant;

use qwen2_tokenizer::StreamDecoder;
use tokio::sync::mpsc;

use crate::api::AppState;
use crate::engine::{Event, FinishReason, Handle};
use crate::stop::{StopMatcher, StopOutcome};
use crate::tools::OPEN_TAG;

/// A token with its log-probability and alternatives (ids; names are resolved when rendering).
#[derive(Debug, Clone)]
pub struct TokenLp {
    pub id: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    Stop,
    Length,
    Error(String),
}

#[derive(Debug, Clone)]
pub struct ChoiceResult {
    pub index: usize,
    /// Visible content (stop string and captured tool text excluded).
    pub text: String,
    /// Text from the first `<tool_call>` (or a leading `{` in tool mode) to the end.
    pub captured: Option<String>,
    pub logprobs: Vec<TokenLp>,
    pub finish: Finish,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub cached_tokens: usize,
}

pub enum ChoiceMsg {
    Delta {
        index: usize,
        text: String,
        logprobs: Vec<TokenLp>,
    },
    Done(ChoiceResult),
}

pub struct ChoiceOpts {
    pub index: usize,
    pub stops: Vec<String>,
    /// Tools were offered: hold back tool-call text instead of streaming it.
    pub tool_mode: bool,
    pub logprobs: bool,
    pub prompt_tokens: usize,
    pub started: Instant,
}

/// Run one choice to its end. With `tx`, text deltas are sent as they become final; a closed
/// `tx` (client gone) cancels the engine request.
pub async fn drive(
    state: Arc<AppState>,
    mut handle: Handle,
    opts: ChoiceOpts,
    tx: Option<mpsc::Sender<ChoiceMsg>>,
) -> ChoiceResult {
    let mut out = ChoiceResult {
        index: opts.index,
        text: String::new(),
        captured: None,
        logprobs: Vec::new(),
        finish: Finish::Stop,
        prompt_tokens: opts.prompt_tokens,
        completion_tokens: 0,
        cached_tokens: 0,
    };
    let tok = match state.model.tokenizer() {
        Ok(t) => t,
        Err(e) => {
            out.finish = Finish::Error(e.to_string());
            return out;
        }
    };
    let eos = &state.model.eos_ids;
    let mut dec = StreamDecoder::new(tok, true);
    let markers = if opts.tool_mode {
        vec![OPEN_TAG.to_owned()]
    } else {
        Vec::new()
    };
    let mut matcher = StopMatcher::new(opts.stops.clone(), markers);
    let mut pending_lp: Vec<TokenLp> = Vec::new();
    let mut first_token = true;
    let mut shown_any = false;
    let mut sink = Sink {
        tx,
        index: opts.index,
    };

    loop {
        let Some(ev) = handle.events.recv().await else {
            out.finish = Finish::Error("the engine dropped the request".into());
            break;
        };
        let (piece, finished) = match ev {
            Event::Token {
                id,
                logprob,
                top_logprobs,
            } => {
                if first_token {
                    first_token = false;
                    state.metrics.ttft.observe(opts.started.elapsed());
                }
                out.completion_tokens += 1;
                if opts.logprobs && !eos.contains(&id) {
                    pending_lp.push(TokenLp {
                        id,
                        logprob: logprob.unwrap_or(f32::NAN),
                        top: top_logprobs,
                    });
                }
                (dec.push(id).ok().flatten().unwrap_or_default(), None)
            }
            Event::Finished {
                reason,
                completion_tokens,
                cached_prompt_tokens,
                ..
            } => {
                out.completion_tokens = completion_tokens;
                out.cached_tokens = cached_prompt_tokens;
                let finish = match reason {
                    FinishReason::Stop | FinishReason::Cancelled => Finish::Stop,
                    FinishReason::Length | FinishReason::Timeout => Finish::Length,
                    FinishReason::Error(m) => Finish::Error(m),
                };
                (dec.flush().ok().flatten().unwrap_or_default(), Some(finish))
            }
        };

        if let Some(cap) = out.captured.as_mut() {
            cap.push_str(&piece);
        } else if opts.tool_mode && !shown_any && piece.trim_start().starts_with('{') {
            // A bare JSON tool call: keep the whole answer until it can be parsed.
            out.captured = Some(piece);
        } else {
            match matcher.push(&piece) {
                StopOutcome::Text(t) if t.is_empty() => {}
                StopOutcome::Text(t) => {
                    shown_any |= !t.trim().is_empty();
                    if !sink.emit(&mut out, t, &mut pending_lp).await {
                        handle.cancel();
                        return out;
                    }
                }
                StopOutcome::Stopped(t) => {
                    let _ = sink.emit(&mut out, t, &mut pending_lp).await;
                    // The engine may still be computing: stop it; the handle drop cancels too.
                    handle.cancel();
                    out.finish = Finish::Stop;
                    break;
                }
                StopOutcome::Captured(before, rest) => {
                    let _ = sink.emit(&mut out, before, &mut pending_lp).await;
                    out.captured = Some(rest);
                }
            }
        }
        if let Some(finish) = finished {
            let rest = matcher.finish();
            let _ = sink.emit(&mut out, rest, &mut pending_lp).await;
            out.logprobs.append(&mut pending_lp);
            out.finish = finish;
            break;
        }
    }
    out.logprobs.append(&mut pending_lp);
    out
}

struct Sink {
    tx: Option<mpsc::Sender<ChoiceMsg>>,
    index: usize,
}

impl Sink {
    /// Record (and stream) final text; false when the client has gone away.
    async fn emit(&mut self, out: &mut ChoiceResult, text: String, lp: &mut Vec<TokenLp>) -> bool {
        if text.is_empty() && lp.is_empty() {
            return true;
        }
        out.text.push_str(&text);
        let lps = std::mem::take(lp);
        match &self.tx {
            Some(tx) => {
                let sent = tx
                    .send(ChoiceMsg::Delta {
                        index: self.index,
                        text,
                        logprobs: lps.clone(),
                    })
                    .await;
                out.logprobs.extend(lps);
                sent.is_ok()
            }
            None => {
                out.logprobs.extend(lps);
                true
            }
        }
    }
}
