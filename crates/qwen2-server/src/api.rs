//! The HTTP layer: axum routes for the OpenAI-compatible API, request validation, auth,
//! metrics, panic containment and graceful shutdown. Generation runs on the engine's threads;
//! handlers only tokenize, submit and relay events.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::FutureExt;
use qwen2_core::loader::LoadedModel;
use qwen2_core::sampling::SamplingParams;
use qwen2_tokenizer::{ChatMessage, ChatTemplate};
use serde_json::{json, Value};
use tokio::sync::{mpsc, OnceCell};

use crate::choice::{drive, ChoiceOpts, ChoiceResult, Finish, TokenLp};
use crate::constrain::tool_call::{ToolCallRecognizer, ToolCallSpec};
use crate::constrain::{JsonConstraint, Schema, TokenConstraint, TokenTable};
use crate::engine::{Constraint, Engine, EngineConfig, GenRequest, Handle};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::openai::{
    ChatRequest, CompletionRequest, Content, InMessage, ResponseFormat, SamplingFields,
};
use crate::{render, sse};

/// Largest request body (long prompts as JSON).
const BODY_LIMIT: usize = 32 << 20;
const MAX_N: usize = 16;
const MAX_STOPS: usize = 16;
const MAX_TOP_LOGPROBS: usize = 20;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The id `/v1/models` reports; requests may name it or one of `aliases`.
    pub model_id: String,
    pub aliases: Vec<String>,
    pub api_key: Option<String>,
    /// How long in-flight requests may run after a shutdown signal.
    pub shutdown_grace: Duration,
}

impl ServerConfig {
    /// Id and aliases from the loaded model: its name, its file stem, "qwen2", "default".
    pub fn for_model(model: &LoadedModel) -> Self {
        let stem = model
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let id = if stem.is_empty() {
            model.name.clone()
        } else {
            stem.clone()
        };
        let mut aliases = vec![model.name.clone(), "qwen2".into(), "default".into()];
        aliases.retain(|a| !a.is_empty() && *a != id);
        ServerConfig {
            model_id: id,
            aliases,
            api_key: None,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

pub struct AppState {
    pub engine: Arc<Engine>,
    pub model: Arc<LoadedModel>,
    pub cfg: ServerConfig,
    pub ctx: usize,
    pub metrics: Metrics,
    token_table: OnceCell<Arc<TokenTable>>,
    pub shutting_down: AtomicBool,
}

impl AppState {
    pub fn new(engine: Arc<Engine>, model: Arc<LoadedModel>, cfg: ServerConfig) -> Arc<Self> {
        let ctx = engine.config().ctx;
        Arc::new(AppState {
            engine,
            model,
            cfg,
            ctx,
            metrics: Metrics::default(),
            token_table: OnceCell::new(),
            shutting_down: AtomicBool::new(false),
        })
    }

    fn check_model(&self, requested: Option<&str>) -> Result<(), ApiError> {
        match requested {
            None => Ok(()),
            Some(m) if m == self.cfg.model_id || self.cfg.aliases.iter().any(|a| a == m) => Ok(()),
            Some(m) => Err(ApiError::model_not_found(m, &self.cfg.model_id)),
        }
    }

    /// Byte strings of every token, built once (off the async runtime) on first use.
    async fn token_table(self: &Arc<Self>) -> Result<Arc<TokenTable>, ApiError> {
        let me = self.clone();
        self.token_table
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || {
                    let tok = me
                        .model
                        .tokenizer()
                        .map_err(|e| ApiError::internal(e.to_string()))?;
                    Ok(Arc::new(TokenTable::new(tok, me.model.model.vocab_size())))
                })
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?
            })
            .await
            .cloned()
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(list_models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|req: Request| async move { ApiError::not_found(req.uri().path()) })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Auth for `/v1/*`, request counting, and panic containment: a panic in a handler becomes a
/// 500 JSON error instead of a dropped connection.
async fn guard(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let endpoint = match path.as_str() {
        "/v1/chat/completions" | "/v1/completions" | "/v1/models" | "/health" | "/metrics" => {
            path.as_str()
        }
        _ => "other",
    }
    .to_owned();
    let resp = if path.starts_with("/v1/") && !authorized(&state, &req) {
        ApiError::unauthorized().into_response()
    } else {
        match std::panic::AssertUnwindSafe(next.run(req))
            .catch_unwind()
            .await
        {
            Ok(r) => r,
            Err(_) => {
                ApiError::internal("internal error while handling the request").into_response()
            }
        }
    };
    state
        .metrics
        .count_request(&endpoint, resp.status().as_u16());
    resp
}

fn authorized(state: &AppState, req: &Request) -> bool {
    let Some(key) = &state.cfg.api_key else {
        return true;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.shutting_down.load(Ordering::Relaxed) {
        return ApiError::unavailable("shutting down").into_response();
    }
    Json(json!({"status": "ok", "model": state.cfg.model_id})).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let body = state.metrics.render(&state.engine.stats());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn list_models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.cfg.model_id,
            "object": "model",
            "created": unix_now(),
            "owned_by": "qwen2",
            "max_model_len": state.ctx,
        }]
    }))
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The request body as `T`, with OpenAI-shaped 400s for malformed JSON and bad fields.
fn parse_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| ApiError {
        status: e.status(),
        ..ApiError::bad_request(format!("cannot read the request body: {e}"))
    })?;
    serde_json::from_slice(&bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            ApiError::bad_request(format!("malformed JSON in the request body: {e}"))
        }
        _ => ApiError::bad_request(format!("invalid request: {e}")),
    })
}

/// Sampling and output options shared by both endpoints, validated.
struct GenOpts {
    sampling: SamplingParams,
    logit_bias: Vec<(u32, f32)>,
    max_tokens: Option<usize>,
    stops: Vec<String>,
    n: usize,
    stream: bool,
    include_usage: bool,
}

fn gen_opts(
    state: &AppState,
    f: SamplingFields,
    max_tokens_alt: Option<i64>,
) -> Result<GenOpts, ApiError> {
    let mut s = state.model.defaults.clone();
    if let Some(t) = f.temperature {
        if !(t.is_finite() && t >= 0.0) {
            return Err(ApiError::bad_param(
                "temperature",
                format!("temperature must be >= 0, got {t}"),
            ));
        }
        s.temperature = t;
    }
    if let Some(p) = f.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(ApiError::bad_param(
                "top_p",
                format!("top_p must be in (0, 1], got {p}"),
            ));
        }
        s.top_p = p;
    }
    if let Some(k) = f.top_k {
        s.top_k = k.max(0) as usize;
    }
    if let Some(m) = f.min_p {
        if !(0.0..=1.0).contains(&m) {
            return Err(ApiError::bad_param(
                "min_p",
                format!("min_p must be in [0, 1], got {m}"),
            ));
        }
        s.min_p = m;
    }
    if let Some(r) = f.repetition_penalty {
        s.repetition_penalty = r;
    }
    for (name, v, slot) in [
        (
            "presence_penalty",
            f.presence_penalty,
            &mut s.presence_penalty,
        ),
        (
            "frequency_penalty",
            f.frequency_penalty,
            &mut s.frequency_penalty,
        ),
    ] {
        if let Some(v) = v {
            if !(-2.0..=2.0).contains(&v) {
                return Err(ApiError::bad_param(
                    name,
                    format!("{name} must be in [-2, 2], got {v}"),
                ));
            }
            *slot = v;
        }
    }
    s.seed = f.seed.map(|x| x as u64);
    s.validate()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;

    let vocab = state.model.model.vocab_size();
    let mut logit_bias = Vec::new();
    for (k, v) in f.logit_bias.unwrap_or_default() {
        let id: u32 = k
            .parse()
            .ok()
            .filter(|&id| (id as usize) < vocab)
            .ok_or_else(|| {
                ApiError::bad_param(
                    "logit_bias",
                    format!("logit_bias key {k:?} is not a token id below {vocab}"),
                )
            })?;
        if !v.is_finite() {
            return Err(ApiError::bad_param(
                "logit_bias",
                "logit_bias values must be numbers in [-100, 100]",
            ));
        }
        logit_bias.push((id, v.clamp(-100.0, 100.0)));
    }

    let max_tokens = match max_tokens_alt.or(f.max_tokens) {
        None => None,
        Some(m) if m >= 1 => Some(m as usize),
        Some(m) => {
            return Err(ApiError::bad_param(
                "max_tokens",
                format!("max_tokens must be at least 1, got {m}"),
            ))
        }
    };
    let stops = f.stop.map(|s| s.into_vec()).unwrap_or_default();
    if stops.len() > MAX_STOPS || stops.iter().any(String::is_empty) {
        return Err(ApiError::bad_param(
            "stop",
            format!("stop must be at most {MAX_STOPS} non-empty strings"),
        ));
    }
    let n = match f.n {
        None => 1,
        Some(n) if (1..=MAX_N as i64).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::bad_param(
                "n",
                format!("n must be in 1..={MAX_N}, got {n}"),
            ))
        }
    };
    Ok(GenOpts {
        sampling: s,
        logit_bias,
        max_tokens,
        stops,
        n,
        stream: f.stream.unwrap_or(false),
        include_usage: f.stream_options.is_some_and(|o| o.include_usage),
    })
}

/// What constrained decoding enforces on the output.
enum OutputRule {
    /// `response_format`: JSON, optionally with a schema.
    Json(Arc<Schema>),
    /// `tool_choice` "required" or a named function: exactly one tool call.
    ToolCall(Arc<ToolCallSpec>),
}

/// Submit `n` engine requests for one prompt. Any failure drops the handles already made, which
/// cancels them.
async fn submit_all(
    state: &Arc<AppState>,
    prompt: &[u32],
    o: &GenOpts,
    logprobs: Option<usize>,
    rule: Option<&OutputRule>,
) -> Result<Vec<Handle>, ApiError> {
    let max_tokens = match o.max_tokens {
        Some(m) => m,
        None => state.ctx.saturating_sub(prompt.len()),
    };
    if prompt.len() >= state.ctx || prompt.len() + max_tokens > state.ctx {
        return Err(ApiError::context_length(
            prompt.len(),
            max_tokens.max(1),
            state.ctx,
        ));
    }
    let table = match rule {
        Some(_) => Some(state.token_table().await?),
        None => None,
    };
    let mut handles = Vec::with_capacity(o.n);
    for i in 0..o.n {
        let mut sampling = o.sampling.clone();
        sampling.seed = o.sampling.seed.map(|s| s.wrapping_add(i as u64));
        let keep = if sampling.temperature == 0.0 {
            1
        } else if sampling.top_k > 0 {
            sampling.top_k
        } else {
            64
        };
        let constraint: Option<Box<dyn Constraint>> = match (rule, &table) {
            (Some(OutputRule::Json(s)), Some(t)) => {
                Some(Box::new(JsonConstraint::new(s.clone(), t.clone(), keep)))
            }
            (Some(OutputRule::ToolCall(spec)), Some(t)) => {
                Some(Box::new(TokenConstraint::with_recognizer(
                    ToolCallRecognizer::new(spec.clone()),
                    t.clone(),
                    keep,
                )))
            }
            _ => None,
        };
        let req = GenRequest {
            prompt: prompt.to_vec(),
            sampling,
            logit_bias: o.logit_bias.clone(),
            max_tokens,
            stop_ids: state.model.eos_ids.clone(),
            logprobs,
            constraint,
        };
        handles.push(state.engine.submit(req)?);
    }
    Ok(handles)
}

fn chat_messages(msgs: Vec<InMessage>) -> Result<Vec<ChatMessage>, ApiError> {
    if msgs.is_empty() {
        return Err(ApiError::bad_param(
            "messages",
            "messages must not be empty",
        ));
    }
    let mut out = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            "tool" | "function" => "tool",
            other => {
                return Err(ApiError::bad_param(
                    &format!("messages[{i}].role"),
                    format!("unknown role {other:?} (expected system, user, assistant or tool)"),
                ))
            }
        };
        let content = match m.content {
            None => String::new(),
            Some(Content::Text(t)) => t,
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for p in parts {
                    match (p.kind.as_str(), p.text) {
                        ("text", Some(t)) => text.push_str(&t),
                        (kind, _) => {
                            return Err(ApiError::bad_param(
                                &format!("messages[{i}].content"),
                                format!("content part type {kind:?} is not supported (text only)"),
                            ))
                        }
                    }
                }
                text
            }
        };
        let mut msg = ChatMessage::new(role, content);
        msg.name = m.name;
        msg.tool_call_id = m.tool_call_id;
        // Templates print `arguments | tojson`: give them the object, not a JSON string.
        msg.tool_calls = m.tool_calls.map(|calls| {
            Value::Array(
                calls
                    .into_iter()
                    .map(|mut c| {
                        if let Some(args) = c.pointer_mut("/function/arguments") {
                            if let Some(parsed) = args
                                .as_str()
                                .and_then(|s| serde_json::from_str::<Value>(s).ok())
                            {
                                *args = parsed;
                            }
                        }
                        c
                    })
                    .collect(),
            )
        });
        out.push(msg);
    }
    Ok(out)
}

fn response_schema(rf: Option<ResponseFormat>) -> Result<Option<Arc<Schema>>, ApiError> {
    let Some(rf) = rf else { return Ok(None) };
    match rf.kind.as_str() {
        "text" => Ok(None),
        "json_object" => Ok(Some(Arc::new(Schema::json_object()))),
        "json_schema" => {
            let schema = rf.json_schema.and_then(|j| j.schema).ok_or_else(|| {
                ApiError::bad_param(
                    "response_format.json_schema.schema",
                    "json_schema needs a `schema`",
                )
            })?;
            Schema::compile(&schema)
                .map(|s| Some(Arc::new(s)))
                .map_err(|e| {
                    ApiError::bad_param("response_format.json_schema.schema", e.to_string())
                })
        }
        other => Err(ApiError::bad_param(
            "response_format.type",
            format!("unknown response_format type {other:?} (text, json_object, json_schema)"),
        )),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum ToolChoice {
    None,
    Auto,
    Required,
    Named(String),
}

/// `tool_choice`: "none", "auto" (the default), "required", or
/// `{"type": "function", "function": {"name": ...}}`.
fn tool_choice(v: Option<&Value>) -> Result<ToolChoice, ApiError> {
    let bad = || {
        ApiError::bad_param(
            "tool_choice",
            "tool_choice must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}",
        )
    };
    match v {
        None | Some(Value::Null) => Ok(ToolChoice::Auto),
        Some(Value::String(s)) => match s.as_str() {
            "none" => Ok(ToolChoice::None),
            "auto" => Ok(ToolChoice::Auto),
            "required" => Ok(ToolChoice::Required),
            _ => Err(bad()),
        },
        Some(obj @ Value::Object(_)) => {
            if obj.get("type").is_some_and(|t| t != "function") {
                return Err(bad());
            }
            obj.pointer("/function/name")
                .and_then(Value::as_str)
                .map(|n| ToolChoice::Named(n.to_owned()))
                .ok_or_else(bad)
        }
        Some(_) => Err(bad()),
    }
}

fn tool_spec(defs: &[(String, Option<Value>)]) -> Result<Arc<ToolCallSpec>, ApiError> {
    if defs.is_empty() {
        return Err(ApiError::bad_param(
            "tool_choice",
            "tool_choice requires a tool call but `tools` is empty",
        ));
    }
    ToolCallSpec::new(defs)
        .map(Arc::new)
        .map_err(|e| ApiError::bad_param("tools", e.to_string()))
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let req: ChatRequest = parse_body(body)?;
    state.check_model(req.model.as_deref())?;
    let o = gen_opts(&state, req.sampling, req.max_completion_tokens)?;
    let logprobs = match (req.logprobs.unwrap_or(false), req.top_logprobs) {
        (_, Some(k)) if !(0..=MAX_TOP_LOGPROBS as i64).contains(&k) => {
            return Err(ApiError::bad_param(
                "top_logprobs",
                format!("top_logprobs must be in 0..={MAX_TOP_LOGPROBS}"),
            ))
        }
        (true, k) => Some(k.unwrap_or(0) as usize),
        (false, Some(_)) => {
            return Err(ApiError::bad_param(
                "top_logprobs",
                "top_logprobs needs logprobs: true",
            ))
        }
        (false, None) => None,
    };
    let schema = response_schema(req.response_format)?;
    let choice = tool_choice(req.tool_choice.as_ref())?;
    let tools = req
        .tools
        .filter(|t| !t.is_empty() && choice != ToolChoice::None)
        .map(Value::Array);
    let tool_defs: Vec<(String, Option<Value>)> = tools
        .as_ref()
        .and_then(Value::as_array)
        .map(|ts| {
            ts.iter()
                .filter_map(|t| {
                    let f = t.get("function").unwrap_or(t);
                    let name = f.get("name").and_then(Value::as_str)?;
                    Some((name.to_owned(), f.get("parameters").cloned()))
                })
                .collect()
        })
        .unwrap_or_default();
    let tool_names: Vec<String> = tool_defs.iter().map(|(n, _)| n.clone()).collect();
    let rule = match (&choice, schema) {
        (ToolChoice::Required | ToolChoice::Named(_), Some(_)) => {
            return Err(ApiError::bad_param(
                "tool_choice",
                "a required tool call cannot be combined with a JSON response_format",
            ))
        }
        (ToolChoice::Required, None) => Some(OutputRule::ToolCall(tool_spec(&tool_defs)?)),
        (ToolChoice::Named(name), None) => {
            let Some(def) = tool_defs.iter().find(|(n, _)| n == name) else {
                return Err(ApiError::bad_param(
                    "tool_choice",
                    format!("tool_choice names {name:?}, which is not in `tools`"),
                ));
            };
            Some(OutputRule::ToolCall(tool_spec(std::slice::from_ref(def))?))
        }
        (_, schema) => schema.map(OutputRule::Json),
    };
    let messages = chat_messages(req.messages)?;

    let tok = state
        .model
        .tokenizer()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let default_tpl;
    let tpl = match &state.model.chat_template {
        Some(t) => t,
        None => {
            default_tpl = ChatTemplate::chatml_default();
            &default_tpl
        }
    };
    let text = tpl
        .render(&messages, true, tools.as_ref())
        .map_err(|e| ApiError::bad_param("messages", e.to_string()))?;
    let prompt = tok
        .encode(&text)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;

    let handles = submit_all(&state, &prompt, &o, logprobs, rule.as_ref()).await?;
    let ctx = RunCtx {
        state: state.clone(),
        id: format!("chatcmpl-{}", &crate::tools::call_id()[5..]),
        created: unix_now(),
        model: state.cfg.model_id.clone(),
        started,
        prompt_tokens: prompt.len(),
        stops: o.stops.clone(),
        tool_mode: tools.is_some() && !matches!(rule, Some(OutputRule::Json(_))),
        tool_names,
        logprobs: logprobs.is_some(),
        include_usage: o.include_usage,
        echo: None,
        echo_logprobs: None,
    };
    if o.stream {
        Ok(sse::chat_stream(ctx, handles))
    } else {
        let results = run_all(&ctx, handles, 0).await;
        let resp = render::chat_response(&ctx, &results)?;
        state.metrics.latency.observe(started.elapsed());
        Ok(Json(resp).into_response())
    }
}

/// What every choice of one request shares.
pub struct RunCtx {
    pub state: Arc<AppState>,
    pub id: String,
    pub created: u64,
    pub model: String,
    pub started: Instant,
    pub prompt_tokens: usize,
    pub stops: Vec<String>,
    pub tool_mode: bool,
    pub tool_names: Vec<String>,
    pub logprobs: bool,
    pub include_usage: bool,
    /// Completions with `echo`: the prompt text and ids, per prompt.
    pub echo: Option<Vec<(String, Vec<u32>)>>,
    /// Completions with `echo` and `logprobs`: per prompt, the logprobs of its tokens after
    /// the first.
    pub echo_logprobs: Option<Vec<Vec<TokenLp>>>,
}

impl RunCtx {
    pub fn opts(&self, index: usize, prompt_tokens: usize) -> ChoiceOpts {
        ChoiceOpts {
            index,
            stops: self.stops.clone(),
            tool_mode: self.tool_mode,
            logprobs: self.logprobs,
            prompt_tokens,
            started: self.started,
        }
    }
}

/// Non-streaming: run every choice to its end (concurrently; the engine batches them).
async fn run_all(ctx: &RunCtx, handles: Vec<Handle>, first_index: usize) -> Vec<ChoiceResult> {
    let futs = handles.into_iter().enumerate().map(|(i, h)| {
        drive(
            ctx.state.clone(),
            h,
            ctx.opts(first_index + i, ctx.prompt_tokens),
            None,
        )
    });
    futures_util::future::join_all(futs).await
}

/// `prompt` of /v1/completions: a string, a list of strings, a list of ids, or a list of lists.
fn completion_prompts(
    state: &AppState,
    prompt: &Value,
) -> Result<Vec<(String, Vec<u32>)>, ApiError> {
    let tok = state
        .model
        .tokenizer()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let bad = || {
        ApiError::bad_param("prompt", "prompt must be a string, a list of strings, a list of token ids, or a list of such lists")
    };
    let from_ids = |ids: &[Value]| -> Result<(String, Vec<u32>), ApiError> {
        let ids: Vec<u32> = ids
            .iter()
            .map(|v| {
                v.as_u64()
                    .filter(|&x| x <= u32::MAX as u64)
                    .map(|x| x as u32)
            })
            .collect::<Option<_>>()
            .ok_or_else(bad)?;
        let text = tok
            .decode(&ids, false)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok((text, ids))
    };
    let from_text = |t: &str| -> Result<(String, Vec<u32>), ApiError> {
        let ids = tok
            .encode(t)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok((t.to_owned(), ids))
    };
    let prompts = match prompt {
        Value::String(s) => vec![from_text(s)?],
        Value::Array(items) if items.is_empty() => return Err(bad()),
        Value::Array(items) if items.iter().all(Value::is_number) => vec![from_ids(items)?],
        Value::Array(items) => items
            .iter()
            .map(|it| match it {
                Value::String(s) => from_text(s),
                Value::Array(ids) => from_ids(ids),
                _ => Err(bad()),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(bad()),
    };
    if prompts.iter().any(|(_, ids)| ids.is_empty()) {
        return Err(ApiError::bad_param("prompt", "the prompt is empty"));
    }
    Ok(prompts)
}

async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let req: CompletionRequest = parse_body(body)?;
    state.check_model(req.model.as_deref())?;
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad_param("suffix", "suffix is not supported"));
    }
    let o = gen_opts(&state, req.sampling, None)?;
    let logprobs = match req.logprobs {
        None => None,
        Some(k) if (0..=MAX_TOP_LOGPROBS as i64).contains(&k) => Some(k as usize),
        Some(_) => {
            return Err(ApiError::bad_param(
                "logprobs",
                format!("logprobs must be in 0..={MAX_TOP_LOGPROBS}"),
            ))
        }
    };
    let prompts = completion_prompts(&state, &req.prompt)?;
    if prompts.len() * o.n > MAX_N * 4 {
        return Err(ApiError::bad_param(
            "prompt",
            "too many prompts × n in one request",
        ));
    }
    let mut all = Vec::new();
    for (_, ids) in &prompts {
        let hs = submit_all(&state, ids, &o, logprobs, None).await?;
        all.push((ids.len(), hs));
    }
    let echo_logprobs = match (req.echo, logprobs) {
        (true, Some(k)) => Some(echo_logprobs(&state, &prompts, k).await?),
        _ => None,
    };
    let prompt_tokens = prompts.iter().map(|(_, ids)| ids.len()).sum();
    let ctx = RunCtx {
        state: state.clone(),
        id: format!("cmpl-{}", &crate::tools::call_id()[5..]),
        created: unix_now(),
        model: state.cfg.model_id.clone(),
        started,
        prompt_tokens,
        stops: o.stops.clone(),
        tool_mode: false,
        tool_names: Vec::new(),
        logprobs: logprobs.is_some(),
        include_usage: o.include_usage,
        echo: req.echo.then(|| prompts.clone()),
        echo_logprobs,
    };
    if o.stream {
        Ok(sse::completion_stream(ctx, all, o.n))
    } else {
        let mut results = Vec::new();
        for (p, (plen, hs)) in all.into_iter().enumerate() {
            let futs = hs
                .into_iter()
                .enumerate()
                .map(|(i, h)| drive(state.clone(), h, ctx.opts(p * o.n + i, plen), None));
            results.extend(futures_util::future::join_all(futs).await);
        }
        let resp = render::completion_response(&ctx, &results, o.n, logprobs)?;
        state.metrics.latency.observe(started.elapsed());
        Ok(Json(resp).into_response())
    }
}

/// Logprobs of the prompts' own tokens (off the async runtime; the engine keeps generating).
async fn echo_logprobs(
    state: &Arc<AppState>,
    prompts: &[(String, Vec<u32>)],
    top: usize,
) -> Result<Vec<Vec<TokenLp>>, ApiError> {
    let model = state.model.clone();
    let ids: Vec<Vec<u32>> = prompts.iter().map(|(_, ids)| ids.clone()).collect();
    tokio::task::spawn_blocking(move || {
        ids.iter()
            .map(|ids| crate::prompt_logprobs::prompt_logprobs(&model.model, ids, top))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::internal(format!("prompt logprobs: {e}")))
}

/// An error finish becomes a 500 for non-streaming responses.
pub fn check_errors(results: &[ChoiceResult]) -> Result<(), ApiError> {
    match results.iter().find_map(|r| match &r.finish {
        Finish::Error(m) => Some(m.clone()),
        _ => None,
    }) {
        Some(m) => Err(ApiError::internal(format!("generation failed: {m}"))),
        None => Ok(()),
    }
}

/// Serve until `shutdown` resolves; then stop accepting, give in-flight requests
/// `cfg.shutdown_grace` to finish (the engine cancels what is left), and return.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state.clone());
    let (started_tx, mut started_rx) = mpsc::channel::<()>(1);
    let st = state.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        st.shutting_down.store(true, Ordering::Relaxed);
        let engine = st.engine.clone();
        let grace = st.cfg.shutdown_grace;
        // Blocks until the engine stops; streams end as their requests finish or are cancelled.
        tokio::task::spawn_blocking(move || engine.shutdown(grace));
        let _ = started_tx.send(()).await;
    });
    let grace = state.cfg.shutdown_grace;
    tokio::select! {
        r = std::future::IntoFuture::into_future(server) => r,
        _ = async {
            started_rx.recv().await;
            tokio::time::sleep(grace + Duration::from_secs(5)).await;
        } => Ok(()),
    }
}

/// A server on its own thread and runtime (tests, and `qwen2 serve`'s plumbing).
pub struct RunningServer {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl RunningServer {
    /// Start the engine and bind `addr` (port 0: any free port).
    pub fn start(
        model: Arc<LoadedModel>,
        engine_cfg: EngineConfig,
        cfg: ServerConfig,
        addr: SocketAddr,
    ) -> std::io::Result<RunningServer> {
        let engine = Arc::new(Engine::start(model.clone(), engine_cfg));
        let state = AppState::new(engine, model, cfg);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let listener = rt.block_on(tokio::net::TcpListener::bind(addr))?;
        let addr = listener.local_addr()?;
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name("qwen2-http".into())
            .spawn(move || {
                rt.block_on(serve(listener, st, async {
                    let _ = stop_rx.await;
                }))
            })?;
        Ok(RunningServer {
            addr,
            state,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Graceful shutdown (as on SIGTERM); waits for the server thread.
    pub fn shutdown(mut self) -> std::io::Result<()> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> std::io::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("server thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}
