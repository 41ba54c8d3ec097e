//! Constrained decoding for `response_format`: an incremental JSON recognizer over bytes, with
//! an optional JSON-schema subset (type, properties, required, enum/const, items,
//! additionalProperties, nested), and the engine [`Constraint`] that masks every token whose
//! bytes the recognizer would reject. Whatever the model samples under the mask is a prefix of
//! a valid document; once the value closes the engine stops, so the output parses and validates.

use std::sync::Arc;

use serde_json::Value;

use crate::engine::Constraint;

/// Deepest nesting of objects/arrays the recognizer accepts (keeps the stack and the output sane).
const MAX_DEPTH: usize = 48;
/// Most consecutive whitespace bytes outside strings, so a model cannot loop on blank lines.
const MAX_WS_RUN: u16 = 24;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unsupported or invalid JSON schema: {0}")]
pub struct SchemaError(pub String);

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Kinds {
    object: bool,
    array: bool,
    string: bool,
    number: bool,
    integer: bool,
    boolean: bool,
    null: bool,
}

impl Kinds {
    const ALL: Kinds = Kinds {
        object: true,
        array: true,
        string: true,
        number: true,
        integer: true,
        boolean: true,
        null: true,
    };
}

#[derive(Debug, Clone)]
struct Node {
    kinds: Kinds,
    /// Known properties and their schema nodes.
    props: Vec<(String, usize)>,
    /// Indices into `props` that must be present.
    required: Vec<usize>,
    /// Schema of other keys; `None`: no other keys (additionalProperties false).
    additional: Option<usize>,
    items: usize,
    /// enum / const: the value must be one of these compact JSON texts.
    literals: Option<Vec<Vec<u8>>>,
}

/// A compiled schema: nodes in an arena, node 0 is "any JSON value".
#[derive(Debug, Clone)]
pub struct Schema {
    nodes: Vec<Node>,
    root: usize,
}

const ANY: usize = 0;

/// Keywords that would change which documents are valid and that we do not enforce: refusing
/// them keeps the promise that the output validates.
const UNSUPPORTED: &[&str] = &[
    "$ref",
    "anyOf",
    "oneOf",
    "allOf",
    "not",
    "if",
    "then",
    "else",
    "pattern",
    "patternProperties",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "prefixItems",
    "contains",
    "dependentRequired",
    "dependentSchemas",
    "propertyNames",
    "unevaluatedProperties",
    "unevaluatedItems",
];

impl Schema {
    /// Any JSON value whose top level is an object (`response_format: json_object`).
    pub fn json_object() -> Schema {
        let mut s = Schema::empty();
        s.nodes.push(Node {
            kinds: Kinds {
                object: true,
                ..Kinds::default()
            },
            ..s.nodes[ANY].clone()
        });
        s.root = 1;
        s
    }

    /// Any JSON value.
    pub fn any() -> Schema {
        Schema::empty()
    }

    fn empty() -> Schema {
        Schema {
            nodes: vec![Node {
                kinds: Kinds::ALL,
                props: Vec::new(),
                required: Vec::new(),
                additional: Some(ANY),
                items: ANY,
                literals: None,
            }],
            root: ANY,
        }
    }

    /// Compile a JSON schema (the subset listed in the module docs).
    pub fn compile(schema: &Value) -> Result<Schema, SchemaError> {
        let mut s = Schema::empty();
        s.root = s.compile_node(schema, 0)?;
        Ok(s)
    }

    fn compile_node(&mut self, v: &Value, depth: usize) -> Result<usize, SchemaError> {
        let err = |m: String| Err(SchemaError(m));
        if depth > MAX_DEPTH {
            return err(format!("nested deeper than {MAX_DEPTH} levels"));
        }
        let obj = match v {
            Value::Bool(true) => return Ok(ANY),
            Value::Object(o) => o,
            other => return err(format!("a schema must be an object or true, got {other}")),
        };
        if let Some(k) = UNSUPPORTED.iter().find(|k| obj.contains_key(**k)) {
            return err(format!(
                "keyword {k:?} is not supported (supported: type, properties, required, enum, \
                 const, items, additionalProperties)"
            ));
        }
        let mut kinds = match obj.get("type") {
            None => None,
            Some(Value::String(t)) => Some(kinds_of(&[t.as_str()])?),
            Some(Value::Array(ts)) => {
                let names: Option<Vec<&str>> = ts.iter().map(Value::as_str).collect();
                match names {
                    Some(n) if !n.is_empty() => Some(kinds_of(&n)?),
                    _ => return err("\"type\" must be a string or a list of strings".into()),
                }
            }
            Some(other) => return err(format!("\"type\" must be a string, got {other}")),
        };
        if kinds.is_none() {
            if obj.contains_key("properties") || obj.contains_key("required") {
                kinds = Some(Kinds {
                    object: true,
                    ..Kinds::default()
                });
            } else if obj.contains_key("items") {
                kinds = Some(Kinds {
                    array: true,
                    ..Kinds::default()
                });
            }
        }
        let literals = match (obj.get("enum"), obj.get("const")) {
            (Some(Value::Array(vals)), _) if !vals.is_empty() => Some(vals.clone()),
            (Some(_), _) => return err("\"enum\" must be a non-empty list".into()),
            (None, Some(c)) => Some(vec![c.clone()]),
            (None, None) => None,
        };
        let id = self.nodes.len();
        self.nodes.push(Node {
            kinds: kinds.unwrap_or(Kinds::ALL),
            props: Vec::new(),
            required: Vec::new(),
            additional: Some(ANY),
            items: ANY,
            literals: None,
        });
        let mut props = Vec::new();
        match obj.get("properties") {
            None => {}
            Some(Value::Object(p)) => {
                for (name, sub) in p {
                    let n = self.compile_node(sub, depth + 1)?;
                    props.push((name.clone(), n));
                }
            }
            Some(_) => return err("\"properties\" must be an object".into()),
        }
        let additional = match obj.get("additionalProperties") {
            None | Some(Value::Bool(true)) => Some(ANY),
            Some(Value::Bool(false)) => None,
            Some(sub @ Value::Object(_)) => Some(self.compile_node(sub, depth + 1)?),
            Some(_) => return err("\"additionalProperties\" must be a boolean or a schema".into()),
        };
        let mut required = Vec::new();
        match obj.get("required") {
            None => {}
            Some(Value::Array(names)) => {
                for name in names {
                    let Some(name) = name.as_str() else {
                        return err("\"required\" must list strings".into());
                    };
                    let idx = match props.iter().position(|(p, _)| p == name) {
                        Some(i) => i,
                        None => match additional {
                            Some(a) => {
                                props.push((name.to_owned(), a));
                                props.len() - 1
                            }
                            None => {
                                return err(format!(
                                "required property {name:?} is not in \"properties\" and additionalProperties is false"
                            ))
                            }
                        },
                    };
                    if !required.contains(&idx) {
                        required.push(idx);
                    }
                }
            }
            Some(_) => return err("\"required\" must be a list".into()),
        }
        let items = match obj.get("items") {
            None => ANY,
            Some(sub @ (Value::Object(_) | Value::Bool(true))) => {
                self.compile_node(sub, depth + 1)?
            }
            Some(_) => {
                return err("\"items\" must be a schema object (tuple form unsupported)".into())
            }
        };
        let literals = match literals {
            None => None,
            Some(vals) => {
                let mut texts = Vec::new();
                for v in &vals {
                    let t = serde_json::to_vec(v).map_err(|e| SchemaError(e.to_string()))?;
                    texts.push(t);
                }
                Some(texts)
            }
        };
        let node = &mut self.nodes[id];
        node.props = props;
        node.required = required;
        node.additional = additional;
        node.items = items;
        node.literals = literals;
        Ok(id)
    }

    /// Does `v` satisfy the schema? (The same subset the recognizer enforces; used by tests and
    /// as a final check.)
    pub fn validate(&self, v: &Value) -> Result<(), String> {
        self.validate_node(self.root, v, "$")
    }

    fn validate_node(&self, id: usize, v: &Value, path: &str) -> Result<(), String> {
        let node = &self.nodes[id];
        if let Some(lits) = &node.literals {
            let ok = lits
                .iter()
                .any(|l| serde_json::from_slice::<Value>(l).is_ok_and(|x| &x == v));
            return if ok {
                Ok(())
            } else {
                Err(format!("{path}: not one of the enum values"))
            };
        }
        let k = node.kinds;
        let kind_ok = match v {
            Value::Null => k.null,
            Value::Bool(_) => k.boolean,
            Value::Number(n) => k.number || (k.integer && (n.is_i64() || n.is_u64())),
            Value::String(_) => k.string,
            Value::Array(_) => k.array,
            Value::Object(_) => k.object,
        };
        if !kind_ok {
            return Err(format!("{path}: wrong type"));
        }
        match v {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.validate_node(node.items, item, &format!("{path}[{i}]"))?;
                }
            }
            Value::Object(map) => {
                for &r in &node.required {
                    if !map.contains_key(&node.props[r].0) {
                        return Err(format!("{path}: missing {:?}", node.props[r].0));
                    }
                }
                for (key, val) in map {
                    let sub = match node.props.iter().find(|(p, _)| p == key) {
                        Some((_, n)) => *n,
                        None => match node.additional {
                            Some(a) => a,
                            None => return Err(format!("{path}: unexpected key {key:?}")),
                        },
                    };
                    self.validate_node(sub, val, &format!("{path}.{key}"))?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn kinds_of(names: &[&str]) -> Result<Kinds, SchemaError> {
    let mut k = Kinds::default();
    for n in names {
        match *n {
            "object" => k.object = true,
            "array" => k.array = true,
            "string" => k.string = true,
            "number" => k.number = true,
            "integer" => k.integer = true,
            "boolean" => k.boolean = true,
            "null" => k.null = true,
            other => return Err(SchemaError(format!("unknown type {other:?}"))),
        }
    }
    Ok(k)
}

/// Allowed range of the next byte of a multi-byte UTF-8 character (RFC 3629 table).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Utf8 {
    need: u8,
    lo: u8,
    hi: u8,
}

impl Utf8 {
    /// Feed one byte of string content (>= 0x80, or any byte while a character is open).
    fn feed(&mut self, b: u8) -> bool {
        if self.need > 0 {
            if b < self.lo || b > self.hi {
                return false;
            }
            self.need -= 1;
            self.lo = 0x80;
            self.hi = 0xBF;
            return true;
        }
        let (need, lo, hi) = match b {
            0xC2..=0xDF => (1, 0x80, 0xBF),
            0xE0 => (2, 0xA0, 0xBF),
            0xE1..=0xEC | 0xEE..=0xEF => (2, 0x80, 0xBF),
            0xED => (2, 0x80, 0x9F),
            0xF0 => (3, 0x90, 0xBF),
            0xF1..=0xF3 => (3, 0x80, 0xBF),
            0xF4 => (3, 0x80, 0x8F),
            _ => return false,
        };
        *self = Utf8 { need, lo, hi };
        true
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Esc {
    None,
    Backslash,
    /// Inside `\uXXXX`; `low`: this escape must be a low surrogate.
    Hex {
        count: u8,
        val: u16,
        low: bool,
    },
    /// After a high surrogate: a `\u` low surrogate must follow.
    NeedBackslash,
    NeedU,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ObjSt {
    Start,
    ExpectKey,
    Colon,
    AfterValue,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ArrSt {
    Start,
    AfterItem,
}

const KEYWORDS: [&[u8]; 3] = [b"true", b"false", b"null"];

#[derive(Debug, Clone, PartialEq)]
enum Frame {
    /// A value is expected (leading whitespace allowed).
    Value(usize),
    Object {
        node: usize,
        seen: Vec<bool>,
        st: ObjSt,
        value_node: usize,
    },
    /// An object key (no escapes); the object is the frame below.
    Key {
        buf: Vec<u8>,
        utf8: Utf8,
    },
    Array {
        node: usize,
        st: ArrSt,
    },
    Str {
        esc: Esc,
        utf8: Utf8,
    },
    Number {
        st: Num,
        integer: bool,
        /// Digits in the current part (integer or exponent), capped so serde_json's f64/i64
        /// parsing never overflows.
        digits: u8,
    },
    /// One of several literal texts: `node`'s enum, or the keywords (`node` = None).
    Lit {
        node: Option<usize>,
        alive: Vec<u16>,
        pos: usize,
    },
}

enum Step {
    Consumed,
    Reject,
    /// The value ended with this byte.
    Pop,
    /// The value ended before this byte; the parent must read it.
    PopReprocess,
    Replace(Frame, bool),
    Push(Frame, bool),
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\r' | b'\t')
}

/// Incremental JSON recognizer: feed bytes; a rejected byte leaves the state unusable, so callers
/// test on a clone ([`JsonRecognizer::accepts`]).
#[derive(Debug, Clone)]
pub struct JsonRecognizer {
    schema: Arc<Schema>,
    stack: Vec<Frame>,
    done: bool,
    ws_run: u16,
}

impl JsonRecognizer {
    pub fn new(schema: Arc<Schema>) -> Self {
        let root = schema.root;
        JsonRecognizer {
            schema,
            stack: vec![Frame::Value(root)],
            done: false,
            ws_run: 0,
        }
    }

    /// The document is one complete value.
    pub fn is_complete(&self) -> bool {
        self.done
    }

    /// Would these bytes be accepted from the current state?
    pub fn accepts(&self, bytes: &[u8]) -> bool {
        let mut r = self.clone();
        r.feed_all(bytes)
    }

    pub fn feed_all(&mut self, bytes: &[u8]) -> bool {
        bytes.iter().all(|&b| self.feed(b))
    }

    pub fn feed(&mut self, b: u8) -> bool {
        if self.done {
            return is_ws(b); // trailing whitespace inside the last token is harmless
        }
        let in_string = matches!(
            self.stack.last(),
            Some(Frame::Str { .. } | Frame::Key { .. })
        );
        if !in_string {
            if is_ws(b) {
                self.ws_run += 1;
                if self.ws_run > MAX_WS_RUN {
                    return false;
                }
            } else {
                self.ws_run = 0;
            }
        }
        loop {
            let depth = self.stack.len();
            if matches!(self.stack.last(), Some(Frame::Key { .. })) {
                return self.key_step(b);
            }
            let schema = &*self.schema;
            let Some(top) = self.stack.last_mut() else {
                // The root (a number or literal) ended before this byte.
                self.done = true;
                return is_ws(b);
            };
            let step = match top {
                Frame::Value(node) => value_step(schema, *node, b, depth),
                Frame::Object {
                    node,
                    seen,
                    st,
                    value_node,
                } => object_step(&schema.nodes[*node], seen, st, *value_node, b),
                Frame::Key { .. } => Step::Reject,
                Frame::Array { node, st } => array_step(st, schema.nodes[*node].items, b),
                Frame::Str { esc, utf8 } => string_step(esc, utf8, b),
                Frame::Number {
                    st,
                    integer,
                    digits,
                } => number_step(st, *integer, digits, b),
                Frame::Lit { node, alive, pos } => match node {
                    Some(n) => {
                        let lits: Vec<&[u8]> = schema.nodes[*n]
                            .literals
                            .as_deref()
                            .unwrap_or_default()
                            .iter()
                            .map(Vec::as_slice)
                            .collect();
                        lit_step(&lits, alive, pos, b)
                    }
                    None => lit_step(&KEYWORDS, alive, pos, b),
                },
            };
            match step {
                Step::Consumed => return true,
                Step::Reject => return false,
                Step::Pop => {
                    self.stack.pop();
                    if self.stack.is_empty() {
                        self.done = true;
                    }
                    return true;
                }
                Step::PopReprocess => {
                    self.stack.pop();
                    if self.stack.is_empty() {
                        self.done = true;
                        return is_ws(b);
                    }
                }
                Step::Replace(f, reprocess) => {
                    if let Some(top) = self.stack.last_mut() {
                        *top = f;
                    }
                    if !reprocess {
                        return true;
                    }
                }
                Step::Push(f, reprocess) => {
                    self.stack.push(f);
                    if !reprocess {
                        return true;
                    }
                }
            }
        }
    }

    fn key_step(&mut self, b: u8) -> bool {
        if b == b'"' {
            return self.finish_key();
        }
        let Some(Frame::Key { buf, utf8 }) = self.stack.last_mut() else {
            return false;
        };
        if b == b'\\' || b < 0x20 || ((b >= 0x80 || utf8.need > 0) && !utf8.feed(b)) {
            return false;
        }
        buf.push(b);
        let buf = buf.clone();
        self.key_prefix_ok(&buf)
    }

    /// The object below the key frame.
    fn parent_object(&self) -> Option<(&Node, &Vec<bool>)> {
        match self.stack.get(self.stack.len().checked_sub(2)?) {
            Some(Frame::Object { node, seen, .. }) => Some((&self.schema.nodes[*node], seen)),
            _ => None,
        }
    }

    /// With additionalProperties false, a key must stay a prefix of an unused property name.
    fn key_prefix_ok(&self, buf: &[u8]) -> bool {
        let Some((node, seen)) = self.parent_object() else {
            return false;
        };
        if node.additional.is_some() {
            return true;
        }
        node.props
            .iter()
            .zip(seen)
            .any(|((name, _), &s)| !s && name.as_bytes().starts_with(buf))
    }

    fn finish_key(&mut self) -> bool {
        let Some(Frame::Key { buf, utf8 }) = self.stack.pop() else {
            return false;
        };
        if utf8.need > 0 {
            return false;
        }
        let Some(Frame::Object {
            node,
            seen,
            st,
            value_node,
        }) = self.stack.last_mut()
        else {
            return false;
        };
        let n = &self.schema.nodes[*node];
        match n.props.iter().position(|(p, _)| p.as_bytes() == buf) {
            Some(i) => {
                if seen[i] {
                    return false;
                }
                seen[i] = true;
                *value_node = n.props[i].1;
            }
            None => match n.additional {
                Some(a) => *value_node = a,
                None => return false,
            },
        }
        *st = ObjSt::Colon;
        true
    }
}

fn value_step(schema: &Schema, id: usize, b: u8, depth: usize) -> Step {
    if is_ws(b) {
        return Step::Consumed;
    }
    let node = &schema.nodes[id];
    if let Some(lits) = &node.literals {
        let alive = (0..lits.len() as u16).collect();
        return Step::Replace(
            Frame::Lit {
                node: Some(id),
                alive,
                pos: 0,
            },
            true,
        );
    }
    let k = node.kinds;
    match b {
        b'{' if k.object && depth < MAX_DEPTH => Step::Replace(
            Frame::Object {
                node: id,
                seen: vec![false; node.props.len()],
                st: ObjSt::Start,
                value_node: ANY,
            },
            false,
        ),
        b'[' if k.array && depth < MAX_DEPTH => Step::Replace(
            Frame::Array {
                node: id,
                st: ArrSt::Start,
            },
            false,
        ),
        b'"' if k.string => Step::Replace(
            Frame::Str {
                esc: Esc::None,
                utf8: Utf8::default(),
            },
            false,
        ),
        b'-' | b'0'..=b'9' if k.number || k.integer => {
            let st = match b {
                b'-' => Num::Minus,
                b'0' => Num::Zero,
                _ => Num::Int,
            };
            Step::Replace(
                Frame::Number {
                    st,
                    integer: !k.number,
                    digits: u8::from(b != b'-'),
                },
                false,
            )
        }
        b't' | b'f' | b'n' => {
            let alive = (0..KEYWORDS.len() as u16)
                .filter(|&i| match i {
                    0 | 1 => k.boolean,
                    _ => k.null,
                })
                .collect();
            Step::Replace(
                Frame::Lit {
                    node: None,
                    alive,
                    pos: 0,
                },
                true,
            )
        }
        _ => Step::Reject,
    }
}

fn object_step(node: &Node, seen: &[bool], st: &mut ObjSt, value_node: usize, b: u8) -> Step {
    if is_ws(b) {
        return Step::Consumed;
    }
    let required_done = || node.required.iter().all(|&r| seen[r]);
    let key_available = || node.additional.is_some() || seen.iter().any(|s| !s);
    let new_key = || {
        Step::Push(
            Frame::Key {
                buf: Vec::new(),
                utf8: Utf8::default(),
            },
            false,
        )
    };
    match (*st, b) {
        (ObjSt::Start, b'"') | (ObjSt::ExpectKey, b'"') if key_available() => new_key(),
        (ObjSt::Start, b'}') | (ObjSt::AfterValue, b'}') if required_done() => Step::Pop,
        (ObjSt::Colon, b':') => {
            *st = ObjSt::AfterValue;
            Step::Push(Frame::Value(value_node), false)
        }
        (ObjSt::AfterValue, b',') if key_available() => {
            *st = ObjSt::ExpectKey;
            Step::Consumed
        }
        _ => Step::Reject,
    }
}

fn array_step(st: &mut ArrSt, items: usize, b: u8) -> Step {
    if is_ws(b) {
        return Step::Consumed;
    }
    match (*st, b) {
        (_, b']') => Step::Pop,
        (ArrSt::Start, _) => {
            *st = ArrSt::AfterItem;
            Step::Push(Frame::Value(items), true)
        }
        (ArrSt::AfterItem, b',') => Step::Push(Frame::Value(items), false),
        _ => Step::Reject,
    }
}

fn string_step(esc: &mut Esc, utf8: &mut Utf8, b: u8) -> Step {
    let ok = |c: bool| if c { Step::Consumed } else { Step::Reject };
    match *esc {
        Esc::None => {
            if utf8.need > 0 || b >= 0x80 {
                return ok(utf8.feed(b));
            }
            match b {
                b'"' => Step::Pop,
                b'\\' => {
                    *esc = Esc::Backslash;
                    Step::Consumed
                }
                0..=0x1F => Step::Reject,
                _ => Step::Consumed,
            }
        }
        Esc::Backslash => match b {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                *esc = Esc::None;
                Step::Consumed
            }
            b'u' => {
                *esc = Esc::Hex {
                    count: 0,
                    val: 0,
                    low: false,
                };
                Step::Consumed
            }
            _ => Step::Reject,
        },
        Esc::Hex { count, val, low } => {
            let Some(d) = (b as char).to_digit(16) else {
                return Step::Reject;
            };
            let val = val * 16 + d as u16;
            if count < 3 {
                *esc = Esc::Hex {
                    count: count + 1,
                    val,
                    low,
                };
                return Step::Consumed;
            }
            let is_high = (0xD800..=0xDBFF).contains(&val);
            let is_low = (0xDC00..=0xDFFF).contains(&val);
            *esc = match (low, is_high, is_low) {
                (true, _, true) => Esc::None,
                (true, _, false) => return Step::Reject,
                (false, true, _) => Esc::NeedBackslash,
                (false, _, true) => return Step::Reject, // lone low surrogate
                (false, false, false) => Esc::None,
            };
            Step::Consumed
        }
        Esc::NeedBackslash if b == b'\\' => {
            *esc = Esc::NeedU;
            Step::Consumed
        }
        Esc::NeedU if b == b'u' => {
            *esc = Esc::Hex {
                count: 0,
                val: 0,
                low: true,
            };
            Step::Consumed
        }
        Esc::NeedBackslash | Esc::NeedU => Step::Reject,
    }
}

/// Most digits before the point (18: fits i64/u64) and in the exponent (2: no f64 overflow).
const MAX_INT_DIGITS: u8 = 18;
const MAX_EXP_DIGITS: u8 = 2;

fn number_step(st: &mut Num, integer: bool, digits: &mut u8, b: u8) -> Step {
    let digit = b.is_ascii_digit();
    let room = match *st {
        Num::Minus | Num::Int => *digits < MAX_INT_DIGITS,
        Num::Exp | Num::ExpSign | Num::ExpDigits => *digits < MAX_EXP_DIGITS,
        _ => true,
    };
    let digit = digit && room;
    let next = match (*st, b) {
        // serde_json reads -0 as a float, so integers may not be -0.
        (Num::Minus, b'0') => (!integer).then_some(Num::Zero),
        (Num::Minus, _) if digit => Some(Num::Int),
        (Num::Int, _) if digit => Some(Num::Int),
        (Num::Zero | Num::Int, b'.') if !integer => Some(Num::Dot),
        (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') if !integer => Some(Num::Exp),
        (Num::Dot | Num::Frac, _) if digit => Some(Num::Frac),
        (Num::Exp, b'+' | b'-') => Some(Num::ExpSign),
        (Num::Exp | Num::ExpSign | Num::ExpDigits, _) if digit => Some(Num::ExpDigits),
        _ => None,
    };
    match next {
        Some(n) => {
            if matches!(n, Num::Exp) {
                *digits = 0;
            } else if b.is_ascii_digit() {
                *digits += 1;
            }
            *st = n;
            Step::Consumed
        }
        None if matches!(*st, Num::Zero | Num::Int | Num::Frac | Num::ExpDigits) => {
            Step::PopReprocess
        }
        None => Step::Reject,
    }
}

fn lit_step(lits: &[&[u8]], alive: &mut Vec<u16>, pos: &mut usize, b: u8) -> Step {
    let complete_before = alive.iter().any(|&i| lits[i as usize].len() == *pos);
    let next: Vec<u16> = alive
        .iter()
        .copied()
        .filter(|&i| lits[i as usize].get(*pos) == Some(&b))
        .collect();
    if next.is_empty() {
        return if complete_before && *pos > 0 {
            Step::PopReprocess
        } else {
            Step::Reject
        };
    }
    *pos += 1;
    let complete_now = next.iter().any(|&i| lits[i as usize].len() == *pos);
    let longer = next.iter().any(|&i| lits[i as usize].len() > *pos);
    *alive = next;
    if complete_now && !longer {
        Step::Pop
    } else {
        Step::Consumed
    }
}

/// The bytes each token id decodes to (special tokens and unknown ids: none, never allowed).
pub struct TokenTable {
    bytes: Vec<Option<Box<[u8]>>>,
}

impl TokenTable {
    pub fn new(tok: &qwen2_tokenizer::Tokenizer, n_vocab: usize) -> Self {
        let bytes = (0..n_vocab as u32)
            .map(|id| {
                if tok.is_special(id) {
                    return None;
                }
                tok.token_bytes(id, true)
                    .filter(|b| !b.is_empty())
                    .map(Vec::into_boxed_slice)
            })
            .collect();
        TokenTable { bytes }
    }

    pub fn from_bytes(bytes: Vec<Option<Vec<u8>>>) -> Self {
        TokenTable {
            bytes: bytes
                .into_iter()
                .map(|b| b.filter(|b| !b.is_empty()).map(Vec::into_boxed_slice))
                .collect(),
        }
    }

    pub fn get(&self, id: u32) -> Option<&[u8]> {
        self.bytes.get(id as usize)?.as_deref()
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// A byte-level recognizer the token constraint drives: JSON (with a schema) or a tool call.
/// A rejected byte may leave the state unusable, so the constraint feeds clones.
pub trait ByteRecognizer: Clone + Send {
    fn feed(&mut self, b: u8) -> bool;
    /// The output is complete: the engine stops.
    fn is_complete(&self) -> bool;
}

impl ByteRecognizer for JsonRecognizer {
    fn feed(&mut self, b: u8) -> bool {
        JsonRecognizer::feed(self, b)
    }

    fn is_complete(&self) -> bool {
        JsonRecognizer::is_complete(self)
    }
}

/// The engine-side constraint: keeps the `keep` best-scoring tokens the recognizer accepts (in
/// descending logit order; every other logit becomes -inf). `keep` = 1 for greedy decoding, else
/// at least the sampler's top-k, so sampling sees the same candidates it would without the mask.
pub struct TokenConstraint<R> {
    rec: R,
    table: Arc<TokenTable>,
    keep: usize,
}

/// `response_format` constraints: JSON, optionally with a schema.
pub type JsonConstraint = TokenConstraint<JsonRecognizer>;

impl JsonConstraint {
    pub fn new(schema: Arc<Schema>, table: Arc<TokenTable>, keep: usize) -> Self {
        TokenConstraint::with_recognizer(JsonRecognizer::new(schema), table, keep)
    }
}

impl<R: ByteRecognizer> TokenConstraint<R> {
    pub fn with_recognizer(rec: R, table: Arc<TokenTable>, keep: usize) -> Self {
        TokenConstraint {
            rec,
            table,
            keep: keep.max(1),
        }
    }

    fn accepts(&self, bytes: &[u8]) -> bool {
        let mut r = self.rec.clone();
        bytes.iter().all(|&b| r.feed(b))
    }
}

impl<R: ByteRecognizer> Constraint for TokenConstraint<R> {
    fn mask(&mut self, logits: &mut [f32]) {
        // Bytes the state accepts next: rejects most tokens without cloning the recognizer.
        let mut first_ok = [false; 256];
        for (b, ok) in first_ok.iter_mut().enumerate() {
            *ok = self.accepts(&[b as u8]);
        }
        let mut cand: Vec<u32> = (0..logits.len() as u32)
            .filter(|&id| {
                logits[id as usize] > f32::NEG_INFINITY
                    && self.table.get(id).is_some_and(|b| first_ok[b[0] as usize])
            })
            .collect();
        let cmp = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
        let mut allowed: Vec<(u32, f32)> = Vec::with_capacity(self.keep);
        let (mut start, mut chunk) = (0, 256usize);
        'outer: while start < cand.len() {
            let end = (start + chunk).min(cand.len());
            if end < cand.len() {
                cand[start..].select_nth_unstable_by(end - start - 1, cmp);
            }
            cand[start..end].sort_unstable_by(cmp);
            for &id in &cand[start..end] {
                if let Some(bytes) = self.table.get(id) {
                    if self.accepts(bytes) {
                        allowed.push((id, logits[id as usize]));
                        if allowed.len() >= self.keep {
                            break 'outer;
                        }
                    }
                }
            }
            start = end;
            chunk *= 4;
        }
        logits.fill(f32::NEG_INFINITY);
        for (id, l) in allowed {
            logits[id as usize] = l;
        }
    }

    fn accept(&mut self, token: u32) -> bool {
        match self.table.get(token) {
            Some(bytes) => {
                let mut next = self.rec.clone();
                if bytes.iter().all(|&b| next.feed(b)) {
                    self.rec = next;
                    true
                } else {
                    false
                }
            }
            None => false,
        }
    }

    fn is_complete(&self) -> bool {
        self.rec.is_complete()
    }
}

pub mod tool_call;

#[cfg(test)]
mod tests;
