//! The recognizer against serde_json: every valid document is accepted byte by byte, invalid
//! ones are rejected, and random walks guided only by the recognizer always end in documents
//! that parse and validate.

use super::*;
use serde_json::json;

fn rec(schema: &Schema) -> JsonRecognizer {
    JsonRecognizer::new(Arc::new(schema.clone()))
}

/// Feed the whole text; Some(complete) if every byte was accepted.
fn run(schema: &Schema, text: &str) -> Option<bool> {
    let mut r = rec(schema);
    r.feed_all(text.as_bytes()).then(|| r.is_complete())
}

/// serde_json's verdict: parses and validates.
fn valid(schema: &Schema, text: &str) -> bool {
    serde_json::from_str::<Value>(text).is_ok_and(|v| schema.validate(&v).is_ok())
}

/// Tiny deterministic RNG (xorshift) so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn random_value(rng: &mut Rng, depth: usize) -> Value {
    let k = if depth > 3 {
        rng.below(5)
    } else {
        rng.below(7)
    };
    match k {
        0 => Value::Null,
        1 => json!(rng.below(2) == 0),
        2 => {
            let choices = [
                json!(0),
                json!(-17),
                json!(3.25),
                json!(1e-7),
                json!(123456789012u64),
                json!(-0.5),
            ];
            choices[rng.below(choices.len())].clone()
        }
        3 | 4 => {
            let strs = [
                "",
                "plain",
                "quote\" and \\ backslash",
                "tab\tnew\nline",
                "ünïcödé 中文 😀",
                "\u{1}ctl",
                "/slash",
            ];
            json!(strs[rng.below(strs.len())])
        }
        5 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let mut m = serde_json::Map::new();
            for i in 0..rng.below(4) {
                m.insert(format!("k{i}é"), random_value(rng, depth + 1));
            }
            Value::Object(m)
        }
    }
}

#[test]
fn accepts_every_valid_document() {
    let any = Schema::any();
    let mut rng = Rng(0x9E3779B97F4A7C15);
    for _ in 0..500 {
        let v = random_value(&mut rng, 0);
        for text in [
            serde_json::to_string(&v).unwrap(),
            serde_json::to_string_pretty(&v).unwrap(),
        ] {
            let r = run(&any, &text);
            assert!(r.is_some(), "rejected valid JSON {text:?}");
            // Bare numbers are only complete after a terminator.
            if !v.is_number() {
                assert_eq!(r, Some(true), "{text:?} should be complete");
            } else {
                assert_eq!(run(&any, &format!("{text} ")), Some(true));
            }
        }
    }
}

#[test]
fn handwritten_cases_agree_with_serde() {
    let any = Schema::any();
    let cases = [
        r#"{"a": [1, 2.5e+3, -0, 0.0, true, false, null, "x\u00e9\ud83d\ude00"]}"#,
        r#"[]"#,
        r#"{}"#,
        r#"  { "a" : { "b" : [ [ ] ] } }"#,
        r#""\/\b\f\n\r\t\"\\""#,
        r#"01"#,
        r#"-"#,
        r#"1."#,
        r#"1e"#,
        r#".5"#,
        r#"[1,]"#,
        r#"{"a":1,}"#,
        r#"{"a" 1}"#,
        r#"{a:1}"#,
        r#"[1 2]"#,
        r#""\x""#,
        r#""\ud800""#,
        r#""\udc00""#,
        r#""\ud800\u0041""#,
        r#"tru"#,
        r#"nul"#,
        r#"truefalse"#,
        "\"a\u{1}\"",
        r#"{"a":1}}"#,
        r#"[1]]"#,
        r#"{"k":"v"}"#,
    ];
    for text in cases {
        let parses = serde_json::from_str::<Value>(text).is_ok();
        let ours = run(&any, text) == Some(true)
            || (run(&any, &format!("{text} ")) == Some(true)
                && serde_json::from_str::<Value>(text).is_ok_and(|v| v.is_number()));
        assert_eq!(ours, parses, "{text:?}");
    }
}

#[test]
fn rejects_invalid_utf8_in_strings() {
    let any = Schema::any();
    let mut r = rec(&any);
    assert!(r.feed(b'"'));
    let mut bad = r.clone();
    assert!(!bad.feed(0xC0)); // overlong lead
    let mut bad = r.clone();
    assert!(bad.feed(0xED) && !bad.feed(0xA0)); // UTF-16 surrogate encoded in UTF-8
    let mut bad = r.clone();
    assert!(bad.feed(0xE4) && !bad.feed(b'"')); // truncated character
    assert!(r.feed_all("中".as_bytes()) && r.feed(b'"') && r.is_complete());
}

#[test]
fn every_mutation_matches_serde() {
    // Mutate valid documents one byte at a time: the recognizer says "complete" exactly when
    // serde_json parses the result.
    let any = Schema::any();
    let mut rng = Rng(42);
    let alphabet = b"{}[]\",:0123456789-.eE+ \ntrufalsn\\xu";
    for _ in 0..3000 {
        let v = random_value(&mut rng, 1);
        let mut text = serde_json::to_vec(&Value::Array(vec![v])).unwrap();
        let pos = rng.below(text.len());
        match rng.below(3) {
            0 => text[pos] = alphabet[rng.below(alphabet.len())],
            1 => {
                text.remove(pos);
            }
            _ => text.insert(pos, alphabet[rng.below(alphabet.len())]),
        }
        let parses = serde_json::from_slice::<Value>(&text).is_ok_and(|v| v.is_array());
        let mut r = rec(&any);
        let ours = r.feed_all(&text) && r.is_complete();
        // We are deliberately stricter on numbers (at most 18 integer and 2 exponent digits, so
        // nothing overflows); everything else must agree exactly.
        let long_number = text.windows(2).any(|w| {
            matches!(w[0], b'e' | b'E') && (w[1].is_ascii_digit() || w[1] == b'+' || w[1] == b'-')
        }) || text.windows(19).any(|w| w.iter().all(u8::is_ascii_digit));
        if ours || !long_number {
            assert_eq!(ours, parses, "{:?}", String::from_utf8_lossy(&text));
        }
    }
}

/// Random walk: at each step pick a random byte the recognizer accepts (preferring closers as the
/// text grows). Every finished document must parse and validate.
fn random_walks(schema: &Schema, walks: usize, seed: u64) -> usize {
    let mut rng = Rng(seed);
    let alphabet: Vec<u8> = b"{}[]\",:0123456789-.eE+ \ntrufalsnabcxyz_\\/"
        .iter()
        .copied()
        .chain([0xC3, 0xA9])
        .collect();
    let closers = b"}]\"0123456789 ";
    let mut finished = 0;
    for _ in 0..walks {
        let mut r = rec(schema);
        let mut text = Vec::new();
        for step in 0..4000 {
            if r.is_complete() {
                break;
            }
            let ok: Vec<u8> = alphabet
                .iter()
                .copied()
                .filter(|&b| r.accepts(&[b]))
                .collect();
            let ok_close: Vec<u8> = ok.iter().copied().filter(|b| closers.contains(b)).collect();
            let pool = if step > 60 && !ok_close.is_empty() && rng.below(4) > 0 {
                &ok_close
            } else {
                &ok
            };
            let candidates: Vec<u8> = if pool.is_empty() {
                (0u8..=255).filter(|&b| r.accepts(&[b])).collect()
            } else {
                pool.clone()
            };
            assert!(
                !candidates.is_empty(),
                "dead end after {:?}",
                String::from_utf8_lossy(&text)
            );
            let b = candidates[rng.below(candidates.len())];
            assert!(r.feed(b));
            text.push(b);
        }
        if r.is_complete() {
            let s = String::from_utf8(text.clone()).expect("valid UTF-8");
            assert!(valid(schema, &s), "walk produced invalid {s:?}");
            finished += 1;
        }
    }
    finished
}

#[test]
fn random_walks_any_json_always_valid() {
    let done = random_walks(&Schema::any(), 300, 7);
    assert!(done > 250, "only {done} of 300 walks finished");
}

#[test]
fn random_walks_json_object_always_valid() {
    let s = Schema::json_object();
    let done = random_walks(&s, 200, 11);
    assert!(done > 150, "only {done} of 200 walks finished");
    assert_eq!(run(&s, "[1]"), None);
    assert_eq!(run(&s, "\"x\""), None);
}

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "score": {"type": "number"},
            "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "bc", "b"]}},
            "kind": {"enum": [1, 12, "x", null, {"deep": [true]}]},
            "address": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "zip": {"type": ["string", "null"]}},
                "required": ["city"],
                "additionalProperties": false
            },
            "ok": {"type": "boolean"},
            "nothing": {"type": "null"}
        },
        "required": ["name", "age", "address"],
        "additionalProperties": false
    })
}

#[test]
fn random_walks_schema_always_valid() {
    let s = Schema::compile(&person_schema()).unwrap();
    let done = random_walks(&s, 300, 99);
    assert!(done > 200, "only {done} of 300 walks finished");
}

#[test]
fn schema_enforces_types_keys_and_required() {
    let s = Schema::compile(&person_schema()).unwrap();
    let good = r#"{"name": "Ann", "age": 30, "address": {"city": "Oslo", "zip": null}, "tags": ["bc", "a"], "kind": 12, "score": 1.5}"#;
    assert_eq!(run(&s, good), Some(true));
    assert!(valid(&s, good));
    for bad in [
        r#"{"name": "Ann", "age": 30.5"#,                      // integer
        r#"{"name": 5"#,                                       // string
        r#"{"nme""#,                                           // unknown key
        r#"{"name": "A", "name""#,                             // duplicate
        r#"{"name": "A", "age": 1}"#,                          // missing address
        r#"{"name": "A", "age": 1, "address": {"zip": "1"}}"#, // missing city
        r#"{"tags": ["c"#,                                     // not in enum
        r#"{"kind": 13"#,                                      // enum number
        r#"{"ok": nul"#,                                       // boolean, not null
        r#"{"address": {"city": "x", "country""#,              // closed nested object
    ] {
        let mut r = rec(&s);
        assert!(!r.feed_all(bad.as_bytes()) || !r.is_complete(), "{bad}");
        assert_eq!(run(&s, bad), None, "accepted {bad}");
    }
    // Enum prefixes: 1 vs 12 need lookahead.
    assert_eq!(
        run(
            &s,
            r#"{"kind": 1, "name": "", "age": 0, "address": {"city": ""}}"#
        ),
        Some(true)
    );
    // With every property used, a comma cannot start another key.
    let all = r#"{"name": "", "age": 0, "score": 0, "tags": [], "kind": "x", "address": {"city": ""}, "ok": true, "nothing": null"#;
    let mut r = rec(&s);
    assert!(r.feed_all(all.as_bytes()));
    assert!(!r.accepts(b","));
    assert!(r.accepts(b"}"));
}

#[test]
fn open_objects_accept_extra_keys_with_their_schema() {
    let s = Schema::compile(&json!({
        "type": "object",
        "properties": {"a": {"type": "integer"}},
        "additionalProperties": {"type": "boolean"},
        "required": ["a"]
    }))
    .unwrap();
    assert_eq!(run(&s, r#"{"a": 1, "b": true}"#), Some(true));
    assert_eq!(run(&s, r#"{"a": 1, "b": 2"#), None);
    assert_eq!(run(&s, r#"{"ab": true, "a": 3}"#), Some(true));
}

#[test]
fn unsupported_keywords_and_bad_schemas_are_errors() {
    for bad in [
        json!({"anyOf": [{"type": "string"}]}),
        json!({"type": "string", "pattern": "^a"}),
        json!({"type": "strin"}),
        json!({"type": "object", "required": ["x"], "additionalProperties": false}),
        json!({"enum": []}),
        json!(3),
        json!({"type": "array", "items": [{"type": "string"}]}),
    ] {
        assert!(Schema::compile(&bad).is_err(), "{bad}");
    }
    // Annotations are fine.
    assert!(Schema::compile(&json!({"type": "string", "description": "x", "title": "t"})).is_ok());
}

#[test]
fn whitespace_runs_are_bounded() {
    let any = Schema::any();
    let mut r = rec(&any);
    assert!(r.feed(b'['));
    for _ in 0..MAX_WS_RUN {
        assert!(r.feed(b' '));
    }
    assert!(!r.accepts(b" "));
    assert!(r.accepts(b"1"));
}

#[test]
fn nesting_depth_is_bounded() {
    let any = Schema::any();
    let mut r = rec(&any);
    for _ in 0..MAX_DEPTH - 1 {
        assert!(r.feed(b'['));
    }
    assert!(!r.accepts(b"["));
    assert!(r.accepts(b"]"));
}

/// A toy vocabulary: the constraint masks by whole tokens, keeps only the best `keep`, and a
/// greedy loop over arbitrary logits always produces a valid document.
#[test]
fn constraint_masks_tokens_and_greedy_output_validates() {
    let pieces: Vec<&str> = vec![
        "{",
        "}",
        "[",
        "]",
        "\"",
        ",",
        ":",
        " ",
        "\n  ",
        "{\"",
        "\":",
        "\": ",
        "\",",
        "name",
        "age",
        "address",
        "city",
        "zip",
        "\"name\"",
        "12",
        "3.5",
        "-",
        "true",
        "null",
        "fal",
        "se",
        "hello world",
        "}\n",
        "\"}",
        "\"]",
        "é",
        "<|im_end|>",
        "x\"",
        "0",
        "e5",
        "\\n",
        "\\u00e9",
        "ok",
    ];
    let mut bytes: Vec<Option<Vec<u8>>> =
        pieces.iter().map(|p| Some(p.as_bytes().to_vec())).collect();
    // Like the real byte-level vocabulary: every printable ASCII byte is a token of its own.
    bytes.extend((0x20u8..0x7F).map(|b| Some(vec![b])));
    bytes[31] = None; // a special token: never allowed
    bytes.push(Some(vec![0xC3])); // half a character
    bytes.push(Some(vec![0xA9]));
    let table = Arc::new(TokenTable::from_bytes(bytes));
    let schema = Arc::new(Schema::compile(&person_schema()).unwrap());
    let mut rng = Rng(5);
    for trial in 0..200 {
        let mut c = JsonConstraint::new(schema.clone(), table.clone(), 1 + trial % 3);
        let mut out = Vec::new();
        for _ in 0..400 {
            if c.is_complete() {
                break;
            }
            let mut logits: Vec<f32> = (0..table.len())
                .map(|_| (rng.below(1000) as f32) / 100.0)
                .collect();
            c.mask(&mut logits);
            let kept = logits.iter().filter(|l| l.is_finite()).count();
            assert!(kept >= 1 && kept <= 1 + trial % 3, "kept {kept}");
            assert_eq!(logits[31], f32::NEG_INFINITY);
            // Sample uniformly among the kept tokens.
            let kept_ids: Vec<usize> = (0..logits.len())
                .filter(|&i| logits[i].is_finite())
                .collect();
            let id = kept_ids[rng.below(kept_ids.len())] as u32;
            assert!(c.accept(id));
            out.extend_from_slice(table.get(id).unwrap());
        }
        if c.is_complete() {
            let s = String::from_utf8(out).unwrap();
            assert!(valid(&schema, s.trim_end()), "{s}");
        }
    }
    // A token the state rejects is refused by accept().
    let mut c = JsonConstraint::new(schema, table, 4);
    assert!(!c.accept(1)); // "}" first
    assert!(c.accept(0));
}
