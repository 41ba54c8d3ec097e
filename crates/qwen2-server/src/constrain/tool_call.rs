//! `tool_choice: "required"` / a named function: the output must be exactly one call in the
//! Qwen2.5 template's form,
//! `<tool_call>\n{"name": <one of the names>, "arguments": <JSON object>}\n</tool_call>`.
//! The name is recognized as a JSON enum; once it closes, the arguments are recognized with that
//! tool's `parameters` schema (when the schema subset supports it, else any JSON object).

use std::sync::Arc;

use serde_json::{json, Value};

use super::{ByteRecognizer, JsonRecognizer, Schema, SchemaError};

const HEAD: &[u8] = b"<tool_call>\n{\"name\": ";
const MID: &[u8] = b", \"arguments\": ";
const TAIL: &[u8] = b"}\n</tool_call>";

/// The tools a call may name, with the schema of each one's arguments.
#[derive(Debug)]
pub struct ToolCallSpec {
    names: Arc<Schema>,
    tools: Vec<(String, Arc<Schema>)>,
}

impl ToolCallSpec {
    /// `tools`: (name, its `parameters` JSON schema if given). Parameters the schema subset
    /// cannot enforce fall back to "any JSON object", so the call still parses.
    pub fn new(tools: &[(String, Option<Value>)]) -> Result<ToolCallSpec, SchemaError> {
        if tools.is_empty() {
            return Err(SchemaError("no tools to call".into()));
        }
        let names: Vec<&str> = tools.iter().map(|(n, _)| n.as_str()).collect();
        let name_schema = Schema::compile(&json!({"type": "string", "enum": names}))?;
        let tools = tools
            .iter()
            .map(|(name, params)| (name.clone(), Arc::new(args_schema(params.as_ref()))))
            .collect();
        Ok(ToolCallSpec {
            names: Arc::new(name_schema),
            tools,
        })
    }

    /// Does `args` satisfy the arguments schema of tool `name`? (Tests and checks.)
    pub fn validate(&self, name: &str, args: &Value) -> Result<(), String> {
        let (_, schema) = self
            .tools
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| format!("unknown tool {name:?}"))?;
        schema.validate(args)
    }
}

/// The arguments schema: the tool's parameters with `type` forced to object.
fn args_schema(params: Option<&Value>) -> Schema {
    let Some(Value::Object(p)) = params else {
        return Schema::json_object();
    };
    let mut p = p.clone();
    match p.get("type") {
        None => {
            p.insert("type".into(), json!("object"));
        }
        Some(t) if t == "object" => {}
        Some(_) => return Schema::json_object(),
    }
    Schema::compile(&Value::Object(p)).unwrap_or_else(|_| Schema::json_object())
}

#[derive(Debug, Clone)]
enum Stage {
    Head(usize),
    Name(JsonRecognizer, Vec<u8>),
    Mid(usize, Arc<Schema>),
    Args(JsonRecognizer),
    Tail(usize),
    Done,
}

/// Byte recognizer of one tool call (see the module docs).
#[derive(Debug, Clone)]
pub struct ToolCallRecognizer {
    spec: Arc<ToolCallSpec>,
    stage: Stage,
}

impl ToolCallRecognizer {
    pub fn new(spec: Arc<ToolCallSpec>) -> Self {
        ToolCallRecognizer {
            spec,
            stage: Stage::Head(0),
        }
    }
}

/// The arguments schema of the tool whose name (a JSON string) was recognized.
fn schema_for(spec: &ToolCallSpec, name_json: &[u8]) -> Option<Arc<Schema>> {
    let name: String = serde_json::from_slice(name_json).ok()?;
    spec.tools
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| s.clone())
}

impl ByteRecognizer for ToolCallRecognizer {
    fn feed(&mut self, b: u8) -> bool {
        loop {
            match &mut self.stage {
                Stage::Head(pos) => {
                    if HEAD[*pos] != b {
                        return false;
                    }
                    *pos += 1;
                    if *pos == HEAD.len() {
                        self.stage =
                            Stage::Name(JsonRecognizer::new(self.spec.names.clone()), Vec::new());
                    }
                    return true;
                }
                Stage::Name(rec, buf) => {
                    if !rec.is_complete() {
                        buf.push(b);
                        return rec.feed(b);
                    }
                    let Some(schema) = schema_for(&self.spec, buf) else {
                        return false;
                    };
                    self.stage = Stage::Mid(0, schema); // this byte starts MID
                }
                Stage::Mid(pos, schema) => {
                    if MID[*pos] != b {
                        return false;
                    }
                    *pos += 1;
                    if *pos == MID.len() {
                        self.stage = Stage::Args(JsonRecognizer::new(schema.clone()));
                    }
                    return true;
                }
                Stage::Args(rec) => {
                    if !rec.is_complete() {
                        return rec.feed(b);
                    }
                    self.stage = Stage::Tail(0); // this byte starts TAIL
                }
                Stage::Tail(pos) => {
                    if TAIL[*pos] != b {
                        return false;
                    }
                    *pos += 1;
                    if *pos == TAIL.len() {
                        self.stage = Stage::Done;
                    }
                    return true;
                }
                Stage::Done => return false,
            }
        }
    }

    fn is_complete(&self) -> bool {
        matches!(self.stage, Stage::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constrain::{TokenConstraint, TokenTable};
    use crate::engine::Constraint;

    fn spec() -> Arc<ToolCallSpec> {
        Arc::new(
            ToolCallSpec::new(&[
                (
                    "get_weather".into(),
                    Some(
                        json!({"type": "object", "properties": {"city": {"type": "string"}},
                                "required": ["city"], "additionalProperties": false}),
                    ),
                ),
                ("get".into(), None),
                // `pattern` is outside the subset: any object.
                (
                    "lookup".into(),
                    Some(json!({"properties": {"q": {"type": "string", "pattern": "x"}}})),
                ),
            ])
            .unwrap(),
        )
    }

    fn feed(text: &str) -> Option<bool> {
        let mut r = ToolCallRecognizer::new(spec());
        for &b in text.as_bytes() {
            if !r.feed(b) {
                return None;
            }
        }
        Some(r.is_complete())
    }

    #[test]
    fn accepts_calls_in_the_template_form() {
        let ok = [
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
            "<tool_call>\n{\"name\": \"get\", \"arguments\": {\"a\": [1, {\"b\": null}]}}\n</tool_call>",
            "<tool_call>\n{\"name\": \"lookup\", \"arguments\": {}}\n</tool_call>",
        ];
        for t in ok {
            assert_eq!(feed(t), Some(true), "{t}");
            // Every proper prefix is alive but incomplete.
            for cut in 1..t.len() {
                assert_eq!(feed(&t[..cut]), Some(false), "{}", &t[..cut]);
            }
        }
    }

    #[test]
    fn rejects_other_names_bad_arguments_and_other_shapes() {
        let bad = [
            "Sure! <tool_call>",
            "<tool_call>\n{\"name\": \"set_weather\"",
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"town\": \"Paris\"}}",
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n</tool_call>",
            "<tool_call>\n{\"name\": \"get\", \"arguments\": [1]}",
            "<tool_call>\n{\"name\": \"get\", \"arguments\": \"{}\"}",
            "<tool_call>\n{\"name\": \"get\", \"arguments\": {}}\n</tool_call>\n",
        ];
        for t in bad {
            assert_eq!(feed(t), None, "{t}");
        }
        assert!(spec()
            .validate("get_weather", &json!({"city": "Oslo"}))
            .is_ok());
        assert!(spec().validate("get_weather", &json!({})).is_err());
        assert!(ToolCallSpec::new(&[]).is_err());
    }

    /// Greedy decoding over random logits with a toy vocabulary always yields a call that parses.
    #[test]
    fn constraint_output_always_parses() {
        let pieces = [
            "<tool_call>",
            "\n",
            "{\"",
            "name",
            "\":",
            " \"",
            "get",
            "_weather",
            "\",",
            " \"arguments",
            "\": {",
            "city",
            "Paris",
            "\"}}",
            "}\n",
            "</tool_call>",
            "{",
            "}",
            "\"",
            " ",
            ":",
            ",",
            "x",
        ];
        let mut bytes: Vec<Option<Vec<u8>>> =
            pieces.iter().map(|p| Some(p.as_bytes().to_vec())).collect();
        bytes.extend((0x20u8..0x7F).map(|b| Some(vec![b])));
        let table = Arc::new(TokenTable::from_bytes(bytes));
        let mut seed = 0x1234_5678u64;
        let mut completed = 0;
        for trial in 0..100 {
            let mut c = TokenConstraint::with_recognizer(
                ToolCallRecognizer::new(spec()),
                table.clone(),
                1 + trial % 2,
            );
            let mut out = Vec::new();
            for _ in 0..300 {
                if c.is_complete() {
                    break;
                }
                let mut logits: Vec<f32> = (0..table.len())
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        (seed % 1000) as f32
                    })
                    .collect();
                c.mask(&mut logits);
                let id = (0..logits.len())
                    .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
                    .unwrap() as u32;
                assert!(logits[id as usize].is_finite());
                assert!(c.accept(id));
                out.extend_from_slice(table.get(id).unwrap());
            }
            if c.is_complete() {
                completed += 1;
                let text = String::from_utf8(out).unwrap();
                let body = text
                    .strip_prefix("<tool_call>\n")
                    .and_then(|t| t.strip_suffix("\n</tool_call>"))
                    .unwrap_or_else(|| panic!("{text}"));
                let call: Value =
                    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
                let name = call["name"].as_str().unwrap();
                spec().validate(name, &call["arguments"]).unwrap();
                // The tool-call parser agrees, unless a string inside spells the closing tag.
                if text.matches("</tool_call>").count() == 1 {
                    let (_, calls) = crate::tools::parse_tool_calls(&text, &[]);
                    assert_eq!(calls.len(), 1, "{text}");
                    assert_eq!(calls[0].name, name);
                }
            }
        }
        assert!(completed >= 10, "only {completed} of 100 walks finished");
    }
}
