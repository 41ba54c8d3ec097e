//! Tool calls in model output: the Qwen2.5 template's `<tool_call>{json}</tool_call>` blocks,
//! and bare JSON calls (`{"name": ..., "arguments": ...}` as the whole answer, PITFALLS 5).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::openai::FunctionCall;

pub const OPEN_TAG: &str = "<tool_call>";
pub const CLOSE_TAG: &str = "</tool_call>";

/// Split generated text into plain content and tool calls. `known`: the request's tool names;
/// bare JSON only counts as a call when it names one of them (otherwise it is an answer).
pub fn parse_tool_calls(text: &str, known: &[String]) -> (String, Vec<FunctionCall>) {
    let mut calls = Vec::new();
    let mut content = String::new();
    let mut rest = text;
    while let Some(start) = rest.find(OPEN_TAG) {
        let after = &rest[start + OPEN_TAG.len()..];
        let (body, next) = match after.find(CLOSE_TAG) {
            Some(end) => (&after[..end], &after[end + CLOSE_TAG.len()..]),
            None => (after, ""),
        };
        match parse_call(body) {
            Some(c) => {
                content.push_str(&rest[..start]);
                calls.push(c);
            }
            None => content.push_str(&rest[..start + OPEN_TAG.len() + body.len()]),
        }
        rest = next;
    }
    content.push_str(rest);
    if calls.is_empty() {
        let bare = bare_calls(text.trim());
        if !bare.is_empty() && bare.iter().all(|c| known.contains(&c.name)) {
            return (String::new(), bare);
        }
    }
    (content.trim().to_owned(), calls)
}

/// One call object; tolerates a missing closing brace or two (small models drop them).
fn parse_call(body: &str) -> Option<FunctionCall> {
    let body = body.trim();
    let mut candidate = body.to_owned();
    for _ in 0..3 {
        if let Ok(v) = serde_json::from_str::<Value>(&candidate) {
            return call_from_value(&v);
        }
        candidate.push('}');
    }
    None
}

fn call_from_value(v: &Value) -> Option<FunctionCall> {
    let obj = v.as_object()?;
    let name = obj.get("name")?.as_str()?.to_owned();
    let args = obj
        .get("arguments")
        .or_else(|| obj.get("parameters"))
        .cloned()
        .unwrap_or(Value::Object(Default::default()));
    let arguments = match args {
        Value::String(s) => s,
        other => other.to_string(),
    };
    Some(FunctionCall { name, arguments })
}

/// The whole answer is a call object, a list of them, or one inside a ```json fence.
fn bare_calls(text: &str) -> Vec<FunctionCall> {
    let text = text
        .strip_prefix("```json")
        .or_else(|| text.strip_prefix("```"))
        .and_then(|t| t.trim_end().strip_suffix("```"))
        .map(str::trim)
        .unwrap_or(text);
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => call_from_value(&v).into_iter().collect(),
        Ok(Value::Array(items)) => {
            let calls: Vec<_> = items.iter().filter_map(call_from_value).collect();
            if calls.len() == items.len() {
                calls
            } else {
                Vec::new()
            }
        }
        _ => Vec::new(),
    }
}

/// A fresh `call_...` id.
pub fn call_id() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    // splitmix64 so ids look random and never repeat within a process.
    let mut z = nanos ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    format!("call_{:016x}{:08x}", z ^ (z >> 31), n as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn qwen_template_output() {
        // Verbatim shape of Qwen2.5-Coder-0.5B-Instruct output for a weather tool.
        let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}\n</tool_call>";
        let (content, calls) = parse_tool_calls(text, &names(&["get_weather"]));
        assert_eq!(content, "");
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].name, "get_weather");
        let args: Value = serde_json::from_str(&calls[0].arguments).unwrap();
        assert_eq!(args["city"], "Paris");
    }

    #[test]
    fn several_calls_with_text_and_missing_brace() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"a\", \"arguments\": {\"x\": 1}\n</tool_call>\n<tool_call>\n{\"name\": \"b\", \"arguments\": \"{\\\"y\\\": 2}\"}\n</tool_call>";
        let (content, calls) = parse_tool_calls(text, &[]);
        assert_eq!(content, "Let me check.");
        assert_eq!(calls[0].name, "a");
        assert_eq!(calls[0].arguments, "{\"x\":1}");
        assert_eq!(calls[1].name, "b");
        assert_eq!(calls[1].arguments, "{\"y\": 2}");
    }

    #[test]
    fn unterminated_block_at_end_of_output() {
        let (_, calls) = parse_tool_calls("<tool_call>\n{\"name\": \"f\", \"arguments\": {}}", &[]);
        assert_eq!(calls.len(), 1);
    }

    #[test]
    fn bare_json_calls_only_for_known_tools() {
        let text = "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}";
        let (_, calls) = parse_tool_calls(text, &names(&["get_weather"]));
        assert_eq!(calls.len(), 1);
        let (content, calls) = parse_tool_calls(text, &names(&["other"]));
        assert!(calls.is_empty());
        assert_eq!(content, text);
        let fenced = "```json\n[{\"name\": \"f\", \"parameters\": {\"a\": true}}]\n```";
        let (_, calls) = parse_tool_calls(fenced, &names(&["f"]));
        assert_eq!(calls[0].arguments, "{\"a\":true}");
    }

    #[test]
    fn garbage_inside_tags_stays_content() {
        let text = "<tool_call>not json</tool_call>";
        let (content, calls) = parse_tool_calls(text, &[]);
        assert!(calls.is_empty());
        assert!(content.contains("not json"));
    }

    #[test]
    fn ids_are_unique() {
        let a = call_id();
        let b = call_id();
        assert_ne!(a, b);
        assert!(a.starts_with("call_"));
    }
}
