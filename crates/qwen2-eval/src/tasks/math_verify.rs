//! lm-eval 0.4.13's second MATH metric, `math_verify`: in `minerva_math/utils.py`
//! `process_results`, `verify(gold=parse(doc["solution"]), target=parse(generated))` from the
//! `math-verify` package (0.9.0) with every option at its default. Ported here in three steps:
//!
//! 1. **Extraction** ([`parse`]): math-verify's regexes, by priority (0: "final answer is … I
//!    hope", 50: a `\boxed{}` or "final answer … is", 100/200: after "answer", 300: any LaTeX
//!    environment, number or plain expression). Within a priority the match ending last is tried
//!    first; the first one that parses wins. The first match tried is also kept as a string
//!    (`fallback_mode="first_match"`), so two equal unparsable answers still agree.
//! 2. **Normalization** ([`normalize_latex`]): latex2sympy2_extended's `normalize_latex` with
//!    math-verify's settings (boxed content, `\left`/`\right`, `\dfrac`, `$`, units, malformed
//!    `\frac12`/`\sqrt2`, `a/b`, …).
//! 3. **Equivalence** ([`verify`]): a small LaTeX parser ([`Val`]) standing in for
//!    latex2sympy's grammar, and `sympy_expr_eq`'s decision: a decimal against a number
//!    compares rounded to 6 places (`float_rounding`), two integers exactly, other constants
//!    exactly as rationals or numerically (15 digits), expressions with symbols at a few
//!    pseudo-random points (for `simplify(a - b) == 0`); sets sorted and element-wise, tuples
//!    and intervals element-wise (an open interval is a pair), equations by `lhs - rhs`, an
//!    assignment `x = 5` against a plain answer by its right side; symbols by name.
//!
//! Agreement with the real package is measured on a fixture it made
//! (`scripts/fixtures/math_verify_cases.py`), see the tests. Matrices are compared entry by
//! entry. Known gaps: no `solve` of relations, no complex numbers, no set algebra beyond `\cup`
//! of intervals compared term by term, and sympy's structural quirks (e.g. `1+1` is not a
//! "Number").

use std::sync::OnceLock;

use fancy_regex::{Captures, Regex};

// ---------------------------------------------------------------- extraction

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Latex,
    Expr,
}

struct Pattern {
    re: Regex,
    priority: u32,
    kind: Kind,
}

/// math-verify's `make_latex_env_pattern(prefix, context)`.
fn latex_env(prefix: &str, boxed: bool) -> String {
    let pct = format!(r"(?P<{prefix}percent>(?:\\?%|[Pp]ercent|[Pp]ercentage|[Pp]ct))");
    let contents = [
        r"(?:[^$]|\$(?!\$))",
        r"(?:[^\\]|\\(?!\]))",
        r"(?:\\[$]|[^\n$])",
        r"(?:[^\\\n]|\\(?!\)))",
        r"[^\n\]\[]",
    ];
    let c: Vec<String> = contents
        .iter()
        .map(|c| {
            if boxed {
                format!(r"{c}*?\\boxed\{{{c}+?\}}{c}*?")
            } else {
                format!("{c}+?")
            }
        })
        .collect();
    let mut pats = vec![
        format!(
            r"(?<!\\)\$\$(?P<{prefix}latexDisplayDollar>{})(?<!\\)\$\$",
            c[0]
        ),
        format!(
            r"(?<!\\)\\\[(?P<{prefix}latexDisplayBracket>{})(?<!\\)\\\]",
            c[1]
        ),
        format!(
            r"(?<![\\\d])\$(?P<{prefix}latexInlineDollar>{})(?<!\\)\$",
            c[2]
        ),
        format!(
            r"(?<!\\)\\\((?P<{prefix}latexInlineParenthesis>{})(?<!\\)\\\)",
            c[3]
        ),
        format!(r"\s\[(?P<{prefix}latexInlineBracket>{})\]\s", c[4]),
    ];
    if !boxed {
        let n = r"-?\d+(?:[.,]\d+)?";
        pats.push(format!(
            r"(?P<{prefix}latexFraction>-?\\frac\{{{n}\}}\{{{n}\}})"
        ));
    }
    format!(r"(?:(?:{})\s*{pct}?)", pats.join("|"))
}

fn patterns() -> &'static [Pattern] {
    static P: OnceLock<Vec<Pattern>> = OnceLock::new();
    P.get_or_init(|| {
        let mut out = Vec::new();
        let mut add = |re: String, priority: u32, kind: Kind| {
            if let Ok(re) = Regex::new(&re) {
                out.push(Pattern { re, priority, kind });
            }
        };
        // LatexExtractionConfig (re.DOTALL).
        let next: String = (1..=5)
            .map(|i| format!(r"(?:\s*(?:,?and|,?or|,)\s*{})?", latex_env(&format!("next{i}_"), false)))
            .collect();
        let l = format!("(?:{}{next})", latex_env("first_", false));
        add(format!(r"(?s)(?i:final answer is):?\s*{l}\.?\s?I hope"), 0, Kind::Latex);
        add(format!(r"(?s)(?i:final answer.{{0,100}}?)\s+is:?\s*{l}"), 50, Kind::Latex);
        add(format!(r"(?s)(?i:answer):.{{0,50}}?{l}"), 100, Kind::Latex);
        add(format!(r"(?s)(?i:answer).{{0,50}}?{l}"), 200, Kind::Latex);
        add(format!("(?s){l}"), 300, Kind::Latex);
        let next_boxed: String = (1..=5)
            .map(|i| {
                format!(r"\s*(?:\s*(?:,?and|,?or|,)\s*{})?", latex_env(&format!("next{i}_"), true))
            })
            .collect();
        add(format!("(?s){}{next_boxed}", latex_env("first_", true)), 50, Kind::Latex);
        add(r"(?s)(?P<first_latexBoxed>\\boxed\{.+\})".to_string(), 50, Kind::Latex);
        // ExprExtractionConfig.
        let number = r"(?<!\d)(?:(?P<integer1>-?[1-9]\d{0,2}(?:[ ,]\d{3})+)(?P<decimal1>\.\d+)?|(?P<integer2>-?\d+)(?P<decimal2>[.,]\d+)|(?P<decimal3>\.\d+)|(?P<integer3>-?\d+))(?P<percent>\s*(?:%|[Pp]ercent|\s*[Pp]ercentage|\s*[Pp]ct))?";
        let ops = r"+\-*×/^()÷";
        let chars = format!(r"[\d.\s{ops}]");
        let expr = format!(r"(?P<expr>-?\(?-?\d{chars}*[{ops}]{chars}+\)?)");
        let prefix = r"(?:^|\s|=)(?:\*\*)?";
        let suffix = r"(?:\*\*)?(?:\.|,|:|\s|\)|\$|$)";
        let currency = "[$€£¥₹₽₪₩₫฿₡₢₣₤₥₦₧₨₭₮₯₰₱₲₳₴₵₶₷₸₺₻₼₾₿]";
        let ewa = format!("(?:{prefix}{expr}{suffix})");
        let nwa = format!("(?:{prefix}{currency}?{number})");
        let eon = format!("(?:{ewa}|{nwa})");
        add(format!(r"(?i:final answer is):?\s*{eon}\.?\s?I hope"), 0, Kind::Expr);
        add(format!(r"(?i:final answer.{{0,100}}?)\s+is:?{eon}"), 50, Kind::Expr);
        add(format!(r"(?i:answer):(?:.{{0,100}}=\s*|.{{0,50}}?){eon}(?!\s*=)"), 100, Kind::Expr);
        add(format!(r"(?i:answer)(?:.{{0,100}}=\s*|.{{0,50}}?){eon}(?!\s*=)"), 200, Kind::Expr);
        add(ewa, 300, Kind::Expr);
        add(nwa, 300, Kind::Expr);
        out.sort_by_key(|p| p.priority);
        out
    })
}

/// One result of [`parse`]: a parsed value, or the fallback string of the first match.
#[derive(Debug, Clone, PartialEq)]
pub enum Extracted {
    Value(Val),
    Str(String),
}

/// math-verify's `parse(text)` with its defaults: at most one parsed value, then the first
/// matched string.
pub fn parse(text: &str) -> Vec<Extracted> {
    let pats = patterns();
    let mut fallbacks: Vec<String> = Vec::new();
    let mut found = None;
    let mut i = 0;
    while i < pats.len() && found.is_none() {
        let prio = pats[i].priority;
        let mut matches: Vec<(usize, usize, Captures, Kind)> = Vec::new();
        while i < pats.len() && pats[i].priority == prio {
            let p = &pats[i];
            for c in p.re.captures_iter(text).flatten() {
                let m = c.get(0).map(|m| (m.start(), m.end())).unwrap_or((0, 0));
                matches.push((m.0, m.1, c, p.kind));
            }
            i += 1;
        }
        // Rightmost end first, then leftmost start (a stable sort, as Python's).
        matches.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        for (_, _, c, kind) in &matches {
            let (val, s) = match kind {
                Kind::Latex => extract_latex(c),
                Kind::Expr => extract_expr(c),
            };
            if !s.is_empty() {
                fallbacks.push(s);
            }
            if let Some(v) = val {
                found = Some(v);
                break;
            }
        }
    }
    let mut out: Vec<Extracted> = found.into_iter().map(Extracted::Value).collect();
    if let Some(f) = fallbacks.into_iter().next() {
        out.push(Extracted::Str(f));
    }
    out
}

fn extract_expr(c: &Captures) -> (Option<Val>, String) {
    let group = |p: &str| {
        (1..=3)
            .filter_map(|i| c.name(&format!("{p}{i}")))
            .map(|m| m.as_str().to_string())
            .find(|s| !s.is_empty())
            .unwrap_or_default()
    };
    let (integer, decimal) = (group("integer"), group("decimal"));
    let pct = c.name("percent").is_some_and(|m| !m.as_str().is_empty());
    if !integer.is_empty() || !decimal.is_empty() {
        let mut int: String = integer
            .chars()
            .filter(|&ch| ch != ',' && ch != ' ')
            .collect();
        let neg = int.starts_with('-');
        int = int
            .trim_start_matches('-')
            .trim_start_matches('0')
            .to_string();
        if int.is_empty() {
            int = "0".into();
        }
        let s = format!(
            "{}{int}{}",
            if neg { "-" } else { "" },
            decimal.replace(',', ".")
        );
        let v = number_literal(&s).map(|e| if pct { Val::Pct(e) } else { Val::Ex(e) });
        return (v, s);
    }
    let expr = c.name("expr").map(|m| m.as_str()).unwrap_or("");
    if expr.is_empty() {
        return (None, String::new());
    }
    let e = expr.replace('\n', " ").replace('×', "*").replace('÷', "/");
    // Python reads `33.` as a float.
    static DOT: OnceLock<Regex> = OnceLock::new();
    let e = sub(DOT.get_or_init(|| re(r"(\d)\.(?!\d)")), &e, "${1}.0");
    (parse_value(&e).ok(), expr.to_string())
}

fn extract_latex(c: &Captures) -> (Option<Val>, String) {
    let mut vals = Vec::new();
    let mut strs = Vec::new();
    for prefix in ["first", "next1", "next2", "next3", "next4", "next5"] {
        let hit = [
            "latexDisplayDollar",
            "latexDisplayBracket",
            "latexInlineDollar",
            "latexInlineParenthesis",
            "latexInlineBracket",
            "latexFraction",
            "latexBoxed",
        ]
        .iter()
        .find_map(|g| {
            c.name(&format!("{prefix}_{g}"))
                .filter(|m| !m.as_str().is_empty())
                .map(|m| (*g, m.as_str()))
        });
        let Some((group, latex)) = hit else { continue };
        let pct = c
            .name(&format!("{prefix}_percent"))
            .is_some_and(|m| !m.as_str().is_empty());
        let norm = normalize_latex(latex, group == "latexBoxed");
        let v = parse_latex(&norm).map(|v| match v {
            Val::Ex(e) if pct => Val::Pct(e),
            v => v,
        });
        vals.push(v);
        strs.push(norm);
    }
    if vals.is_empty() {
        return (None, String::new());
    }
    if vals.len() > 1 && vals.iter().all(Option::is_some) {
        let mut all = Vec::new();
        for v in vals.into_iter().flatten() {
            match v {
                Val::Set(xs) => all.extend(xs),
                v => all.push(v),
            }
        }
        return (Some(Val::Set(all)), strs.join(" and "));
    }
    (vals.swap_remove(0), strs.swap_remove(0))
}

/// math-verify's `parse_latex_cached`: the whole string, else its last side of a chain of
/// equations (`a = b = c`, no commas).
fn parse_latex(s: &str) -> Option<Val> {
    parse_value(s).ok().or_else(|| {
        if s.contains(',') || s.contains(';') {
            return None;
        }
        let parts = split_equals(s);
        if parts.len() > 2 {
            parse_value(parts.last()?).ok()
        } else {
            None
        }
    })
}

/// `re.split(r"(?<!\\|\<|\!|\>)=", s)`.
fn split_equals(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut from = 0;
    let mut prev = None;
    for (i, ch) in s.char_indices() {
        if ch == '=' && !matches!(prev, Some('\\' | '<' | '!' | '>')) {
            out.push(&s[from..i]);
            from = i + 1;
        }
        prev = Some(ch);
    }
    out.push(&s[from..]);
    out
}

// ---------------------------------------------------------------- normalization

fn re(p: &str) -> Regex {
    Regex::new(p).expect("constant regex")
}

fn sub(r: &Regex, s: &str, rep: &str) -> String {
    r.replace_all(s, rep).into_owned()
}

const UNITS: &[&str] = &[
    "integerpoint",
    "feet",
    "sue",
    "digit",
    "pound",
    "meal",
    "edge",
    "student",
    "children ticket",
    "multiple",
    "east",
    "degree",
    "mph",
    "kmph",
    "ft",
    "m square",
    " m east",
    "sq m",
    "deg",
    "mile",
    "q \\.",
    "monkey",
    "prime",
    "ratio",
    "profit of rs",
    "rd",
    "o",
    "gm",
    "p \\. m",
    "lb",
    "tile",
    "per",
    "dm",
    "lt",
    "gain",
    "ab",
    "way",
    "west",
    "a \\.",
    "b \\.",
    "c \\.",
    "d \\.",
    "e \\.",
    "f \\.",
    "g \\.",
    "h \\.",
    "t",
    "h",
    "no change",
    "men",
    "soldier",
    "pie",
    "bc",
    "excess",
    "st",
    "inches",
    "noon",
    "cent",
    "by",
    "gal",
    "kmh",
    "c",
    "acre",
    "rise",
    "a \\. m",
    "th",
    "π r 2",
    "sq",
    "mark",
    "l",
    "toy",
    "coin",
    "sq \\. m",
    "gallon",
    "° f",
    "profit",
    "minw",
    "yr",
    "women",
    "am",
    "pm",
    "hr",
    "cu cm",
    "square",
    "v â € ™",
    "are",
    "rupee",
    "rounds",
    "cubic",
    "cc",
    "mtr",
    "s",
    "ohm",
    "number",
    "kmph",
    "day",
    "hour",
    "minute",
    "min",
    "second",
    "man",
    "woman",
    "sec",
    "cube",
    "mt",
    "sq inch",
    "mp",
    "∏ cm ³",
    "hectare",
    "more",
    "sec",
    "unit",
    "cu \\. m",
    "cm 2",
    "rs \\.",
    "rs",
    "kg",
    "g",
    "month",
    "km",
    "m",
    "cm",
    "mm",
    "apple",
    "liter",
    "loss",
    "yard",
    "pure",
    "year",
    "increase",
    "decrease",
    "d",
    "less",
    "Surface",
    "litre",
    "pi sq m",
    "s \\.",
    "metre",
    "meter",
    "inch",
];

struct NormRes {
    left: Regex,
    right: Regex,
    remove: Regex,
    replace: Regex,
    slash_fix: Regex,
    unit_sup: Regex,
    units: Regex,
    malformed: Vec<(Regex, &'static str)>,
}

const REPLACEMENTS: &[(&str, &str, &str)] = &[
    ("math", r"\\math(?:rm|it|bf)", r"\text"),
    ("text", r"\\text(?:normal|bf|it|rm)", r"\text"),
    ("frac", r"\\(?:d|t|c)frac", r"\frac"),
    ("decimal_space", r"\s\.", r" 0."),
    ("decimal_brace", r"\{\.", r"{0."),
    ("approx", r"~=", r"\approx"),
    ("comma", r"\s*\{\s*,\s*\}", r","),
    (
        "and_or",
        r"(?<![a-zA-Z])(,?\s*(?:and|or))(?![a-zA-Z])",
        r",",
    ),
    ("and_or_text", r"(,?\s*\\text\{\s*(?:and|or)\s*\})", r","),
    ("backslash_space", r"(?<!\\)\\\s", r" "),
    ("infinity", r"infinity", r"\infty"),
    ("dot", r",?(\\ldots)", r" "),
    ("percentage", r"\s*\bpercentage\b", r"\%"),
    ("percentage_in_text", r"\\text\{percentage\}", r"%"),
    ("percent", r"\s*\bpercent\b", r"\%"),
    ("percent_in_text", r"\\text\{percent\}", r"%"),
    ("pct", r"\s*\bpct\b", r"\%"),
    ("pct_in_text", r"\\text\{pct\}", r"%"),
    ("inf", r"((?<!\\)inf(?!inity))", r"\infty"),
    ("sqrt", r" sqrt", r"\sqrt"),
];

fn norm_res() -> &'static NormRes {
    static R: OnceLock<NormRes> = OnceLock::new();
    R.get_or_init(|| NormRes {
        left: re(r"\\m?left(\\\{|\{|\\\||\||\[|\(|\\rbracl|\\lgroup|\\lbrace|\\lbrack|\\vert|\\lvert|\\lceil|\\lfloor|\\vert|\\lvert|\\langle|\\llcorner|\\ulcorner)"),
        right: re(r"\\m?right(\\\}|\}|\\\||\||\]|\)|\\rbrack|\\rgroup|\\rbrace|\\rbrack|\\vert|\\rvert|\\rceil|\\rfloor|\\vert|\\rvert|\\rangle|\\lrcorner|\\urcorner)"),
        remove: re(r#"\\mathrm\{th\}|\\!\s*|\\text\s*\{\s*\}|\\\$|\$|(?<!\\)["']|\\displaystyle"#),
        replace: re(&REPLACEMENTS
            .iter()
            .map(|(n, p, _)| format!("(?P<{n}>{p})"))
            .collect::<Vec<_>>()
            .join("|")),
        slash_fix: re(r"\\\\(?=[a-zA-Z])"),
        unit_sup: re(r"(\\(?:text|mbox)\{.*?\})(\^\d|\{\^\d\})?$"),
        units: re(&format!(r"(\d|\}}|\s)\s*(?:(?:{})(?:s|es)?)\s*$", UNITS.join("|"))),
        malformed: vec![
            (re(r"\^\s?\((.*?)\)"), r"^{$1}"),
            (re(r"sqrt\s?\((.*?)\)"), r"\sqrt{$1}"),
            (re(r"\\frac\s?(\d)\s?(\d+)"), r"\frac{$1}{$2}"),
            (re(r"\\log_\s?(\d)\s?(\d+)"), r"\log_{$1}{$2}"),
            (re(r"\\frac\s?\{(.*?)\}\s?(\d)"), r"\frac{$1}{$2}"),
            (re(r"\\frac\s?(\d)\s?\{(.*?)\}"), r"\frac{$1}{$2}"),
            (re(r"\\sqrt\s?(\d)"), r"\sqrt{$1}"),
        ],
    })
}

/// latex2sympy2_extended's `normalize_latex` with math-verify's `NormalizationConfig`
/// (basic_latex, units, malformed_operators, nits; boxed "all", or "last" for a plain
/// `\boxed{…}` match).
pub fn normalize_latex(text: &str, boxed_last: bool) -> String {
    let r = norm_res();
    let mut t = extract_boxed_content(text, boxed_last);
    t = t
        .replace(r"\mathrm{T}", "T")
        .replace(r"\mathrm{d}", "d")
        .replace(r"{\rm d}", "d")
        .replace(r"\left[\begin{matrix}", r"\begin{bmatrix}")
        .replace(r"\end{matrix}\right]", r"\end{bmatrix}");
    t = sub(&r.left, &t, "$1");
    t = sub(&r.right, &t, "$1");
    t = sub(&r.remove, &t, "");
    t = r
        .replace
        .replace_all(&t, |c: &Captures| {
            REPLACEMENTS
                .iter()
                .find(|(n, _, _)| c.name(n).is_some())
                .map(|(_, _, rep)| rep.to_string())
                .unwrap_or_default()
        })
        .into_owned();
    t = t.replace(['\n', '\t'], " ");
    if !t.contains("matrix") {
        t = sub(&r.slash_fix, &t, r"\");
    }
    // Units.
    let u = sub(&r.unit_sup, &t, "").trim().to_string();
    if !u.is_empty() && u != t {
        t = u;
    }
    for _ in 0..2 {
        let u = sub(&r.units, &t, "$1");
        if !u.is_empty() && u != t {
            t = u;
        }
    }
    // Nits.
    if t.starts_with('.') {
        t.insert(0, '0');
    }
    if t == "0.5" {
        t = r"\frac{1}{2}".into();
    }
    // Malformed operators.
    for (re, rep) in &r.malformed {
        t = sub(re, &t, rep);
    }
    t = t.replace(" sqrt", r"\sqrt");
    t = fix_sqrt(&t);
    t = fix_fracs(&t);
    fix_a_slash_b(&t)
}

/// `extract_boxed_content(text, mode)`: the boxed contents, right to left; "all" joins every
/// box with commas, "last" only boxes close to each other.
fn extract_boxed_content(text: &str, last: bool) -> String {
    let b = text.as_bytes();
    let mut results: Vec<String> = Vec::new();
    let (mut current, mut max_pos) = (text.len(), text.len());
    let mut last_start: Option<usize> = None;
    loop {
        let bi = text[..current].rfind("\\boxed");
        let fi = text[..current].rfind("\\fbox");
        let (start, cmd_len) = match (bi, fi) {
            (None, None) => break,
            (Some(x), Some(y)) if y > x => (y, 5),
            (Some(x), _) => (x, 6),
            (None, Some(y)) => (y, 5),
        };
        let mut p = start + cmd_len;
        while p < max_pos && b[p].is_ascii_whitespace() {
            p += 1;
        }
        if p >= max_pos {
            break;
        }
        if b[p] != b'{' {
            if results.is_empty() {
                results.push(text[p..].to_string());
            }
            break;
        }
        let mut depth = 1;
        let mut end = None;
        for (j, &ch) in b.iter().enumerate().take(max_pos).skip(p + 1) {
            if ch == b'{' {
                depth += 1;
            } else if ch == b'}' {
                depth -= 1;
                if depth == 0 {
                    end = Some(j);
                    break;
                }
            }
        }
        let Some(end) = end else {
            if results.is_empty() {
                results.push(text[p..].to_string());
            }
            break;
        };
        let content = text[p + 1..end].trim().to_string();
        if let (true, Some(ls)) = (last, last_start) {
            let between = text.get(end + 1..ls).unwrap_or("");
            let prev = results.last().cloned().unwrap_or_default();
            static SEP: OnceLock<Regex> = OnceLock::new();
            let sep = SEP.get_or_init(|| re(r"\b(and|or)\b|,|;"));
            let ok = between.chars().count() < 10
                || (prev != content
                    && between.chars().count() < 70
                    && sep.is_match(between).unwrap_or(false));
            if !ok {
                break;
            }
        }
        if results.last() != Some(&content) {
            results.push(content);
        }
        last_start = Some(start);
        max_pos = start;
        current = start;
    }
    if results.is_empty() {
        return text.to_string();
    }
    results.reverse();
    results.join(",")
}

/// Hendrycks' `_fix_sqrt`: `\sqrt3` -> `\sqrt{3}`.
fn fix_sqrt(t: &str) -> String {
    if !t.contains("\\sqrt") {
        return t.to_string();
    }
    let mut parts = t.split("\\sqrt");
    let mut out = parts.next().unwrap_or("").to_string();
    for s in parts {
        let s = s.trim_start();
        match s.chars().next() {
            Some(c) if c != '{' && c != '[' => {
                out.push_str(&format!("\\sqrt{{{c}}}{}", &s[c.len_utf8()..]));
            }
            _ => out.push_str(&format!("\\sqrt{s}")),
        }
    }
    out
}

/// Hendrycks' `_fix_fracs`: `\frac12` -> `\frac{1}{2}`, `\frac1{2}` -> `\frac{1}{2}`.
fn fix_fracs(t: &str) -> String {
    let mut parts = t.split("\\frac");
    let mut out = parts.next().unwrap_or("").to_string();
    for s in parts {
        let s = s.trim_start();
        out.push_str("\\frac");
        let cs: Vec<char> = s.chars().collect();
        if cs.first() == Some(&'{') {
            out.push_str(s);
        } else if cs.len() < 2 {
            return t.to_string();
        } else {
            let rest: String = cs[2..].iter().collect();
            if cs[1] != '{' {
                out.push_str(&format!("{{{}}}{{{}}}{rest}", cs[0], cs[1]));
            } else {
                out.push_str(&format!("{{{}}}{}{rest}", cs[0], cs[1]));
            }
        }
    }
    out
}

/// Hendrycks' `_fix_a_slash_b`: `2/3` -> `\frac{2}{3}` for plain integers.
fn fix_a_slash_b(t: &str) -> String {
    let parts: Vec<&str> = t.split('/').collect();
    if parts.len() == 2 {
        if let (Ok(a), Ok(b)) = (parts[0].parse::<i64>(), parts[1].parse::<i64>()) {
            if t == format!("{a}/{b}") {
                return format!("\\frac{{{a}}}{{{b}}}");
            }
        }
    }
    t.to_string()
}

// ---------------------------------------------------------------- values

/// A scalar expression, as latex2sympy would build it (numbers stay atomic where sympy keeps
/// them atomic: integer and rational literals, decimals).
#[derive(Debug, Clone, PartialEq)]
pub enum Ex {
    Rat(i128, i128),
    Float(f64),
    Sym(String),
    Pi,
    E,
    Inf,
    Add(Vec<Ex>),
    Mul(Vec<Ex>),
    Pow(Box<Ex>, Box<Ex>),
    Fun(String, Vec<Ex>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelOp {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A parsed answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Ex(Ex),
    /// `x\%`: sympy's `x * UnevaluatedExpr(1/100)`.
    Pct(Ex),
    Tuple(Vec<Val>),
    Set(Vec<Val>),
    Interval {
        lo: Ex,
        hi: Ex,
        lo_open: bool,
        hi_open: bool,
    },
    Union(Vec<Val>),
    /// `\begin{pmatrix}…\end{pmatrix}`: rows of entries.
    Matrix(Vec<Vec<Val>>),
    /// `x \in S`: sympy's `Eq(x, S)`, an assignment.
    In(Ex, Box<Val>),
    /// One relation, or a chain `a = b = c` (sympy's `And`).
    Rel(Vec<(Ex, RelOp, Ex)>),
}

fn number_literal(s: &str) -> Option<Ex> {
    if s.contains('.') {
        s.parse::<f64>().ok().map(Ex::Float)
    } else {
        s.parse::<i128>().ok().map(|n| Ex::Rat(n, 1))
    }
}

fn gcd(a: i128, b: i128) -> i128 {
    let (mut a, mut b) = (a.abs(), b.abs());
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn rat(n: i128, d: i128) -> Option<Ex> {
    if d == 0 {
        return None;
    }
    let g = gcd(n, d).max(1);
    let s = if d < 0 { -1 } else { 1 };
    Some(Ex::Rat(s * n / g, s * d / g))
}

fn neg(e: Ex) -> Ex {
    match e {
        Ex::Rat(n, d) => Ex::Rat(-n, d),
        Ex::Float(f) => Ex::Float(-f),
        e => Ex::Mul(vec![Ex::Rat(-1, 1), e]),
    }
}

#[derive(Debug)]
pub struct ParseError;

/// Parses a normalized LaTeX (or plain) answer into a [`Val`].
pub fn parse_value(s: &str) -> Result<Val, ParseError> {
    let toks = lex(s)?;
    let mut p = Parser { t: toks, i: 0 };
    let v = p.top()?;
    if p.i != p.t.len() {
        return Err(ParseError);
    }
    Ok(v)
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(String),
    Letter(char),
    Cmd(String),
    P(char),
}

fn lex(s: &str) -> Result<Vec<Tok>, ParseError> {
    let cs: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit()
            || (c == '.' && cs.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let st = i;
            while i < cs.len() && (cs[i].is_ascii_digit() || cs[i] == '.') {
                i += 1;
            }
            let mut n: String = cs[st..i].iter().collect();
            // Thousands groups: 1,234,567 (latex2sympy reads them as one number).
            if !n.contains('.') && n.len() <= 3 {
                while cs.get(i) == Some(&',')
                    && (1..=3).all(|k| cs.get(i + k).is_some_and(char::is_ascii_digit))
                    && !cs.get(i + 4).is_some_and(char::is_ascii_digit)
                {
                    n.extend(&cs[i + 1..i + 4]);
                    i += 4;
                }
                // and their decimals: 16,386.16.
                if cs.get(i) == Some(&'.') && cs.get(i + 1).is_some_and(char::is_ascii_digit) {
                    n.push('.');
                    i += 1;
                    while cs.get(i).is_some_and(char::is_ascii_digit) {
                        n.push(cs[i]);
                        i += 1;
                    }
                }
            }
            if n.ends_with('.') {
                return Err(ParseError);
            }
            out.push(Tok::Num(n));
        } else if c == '\\' {
            let st = i + 1;
            let mut j = st;
            while j < cs.len() && cs[j].is_ascii_alphabetic() {
                j += 1;
            }
            if j == st {
                // \{ \} \% \, \; \! \  and friends.
                let Some(&n) = cs.get(st) else {
                    return Err(ParseError);
                };
                match n {
                    '{' | '}' | '%' | '|' => out.push(Tok::Cmd(n.to_string())),
                    // A matrix row break.
                    '\\' => out.push(Tok::P('\n')),
                    ',' | ';' | '!' | ':' | ' ' => {}
                    _ => return Err(ParseError),
                }
                i = st + 1;
            } else {
                let mut name: String = cs[st..j].iter().collect();
                // `\cotx` is `\cot x` to latex2sympy.
                const FUNS: [&str; 6] = ["cot", "sin", "cos", "tan", "sec", "csc"];
                if name.len() > 3
                    && FUNS.contains(&&name[..3])
                    && !name.starts_with("sinh")
                    && !name.starts_with("cosh")
                    && !name.starts_with("tanh")
                {
                    j = st + 3;
                    name.truncate(3);
                }
                match name.as_str() {
                    "left" | "right" | "displaystyle" | "quad" | "qquad" | "mathrm" | "circ" => {
                        if name == "circ" {
                            // `^\circ`: drop a pending `^`.
                            if out.last() == Some(&Tok::P('^')) {
                                out.pop();
                            }
                        }
                    }
                    _ => out.push(Tok::Cmd(name)),
                }
                i = j;
            }
        } else if c.is_alphabetic() {
            out.push(Tok::Letter(c));
            i += 1;
        } else if "+-*/^_()[]{},=<>!|%:;&".contains(c) || c == '°' || c == 'π' {
            match c {
                '°' => {
                    if out.last() == Some(&Tok::P('^')) {
                        out.pop();
                    }
                }
                'π' => out.push(Tok::Cmd("pi".into())),
                _ => out.push(Tok::P(c)),
            }
            i += 1;
        } else {
            return Err(ParseError);
        }
    }
    // `^{\circ}` leaves `^{}`: drop it.
    let mut k = 0;
    while k + 2 < out.len() {
        if out[k] == Tok::P('^') && out[k + 1] == Tok::P('{') && out[k + 2] == Tok::P('}') {
            out.drain(k..k + 3);
        } else {
            k += 1;
        }
    }
    Ok(out)
}

struct Parser {
    t: Vec<Tok>,
    i: usize,
}

type R<T> = Result<T, ParseError>;

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.t.get(self.i)
    }
    fn is(&self, c: char) -> bool {
        self.peek() == Some(&Tok::P(c))
    }
    fn is_cmd(&self, n: &str) -> bool {
        matches!(self.peek(), Some(Tok::Cmd(c)) if c == n)
    }
    fn eat(&mut self, c: char) -> R<()> {
        if self.is(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(ParseError)
        }
    }

    /// A comma list (a set), a union of intervals, a relation chain, or one expression.
    fn top(&mut self) -> R<Val> {
        if let (Some(Tok::Letter(c)), Some(Tok::Cmd(op))) = (self.peek(), self.t.get(self.i + 1)) {
            if op == "in" {
                let x = Ex::Sym(c.to_lowercase().to_string());
                self.i += 2;
                return Ok(Val::In(x, Box::new(self.top()?)));
            }
        }
        if self.is_cmd("begin") {
            return self.matrix();
        }
        let mut items = vec![self.union()?];
        while self.is(',') {
            self.i += 1;
            items.push(self.union()?);
        }
        if items.len() == 1 {
            return Ok(items.pop().unwrap_or(Val::Set(vec![])));
        }
        Ok(Val::Set(items))
    }

    fn union(&mut self) -> R<Val> {
        let first = self.relation()?;
        if !self.is_cmd("cup") {
            return Ok(first);
        }
        let mut parts = vec![first];
        while self.is_cmd("cup") {
            self.i += 1;
            parts.push(self.relation()?);
        }
        Ok(Val::Union(parts))
    }

    /// `\begin{…matrix}` rows of `&`-separated entries `\\`-separated, `\end{…}`.
    fn matrix(&mut self) -> R<Val> {
        self.i += 1;
        if !self.raw_group()?.contains("matrix") {
            return Err(ParseError);
        }
        let mut rows = vec![vec![]];
        loop {
            if self.is_cmd("end") {
                self.i += 1;
                self.raw_group()?;
                break;
            }
            let e = self.expr()?;
            rows.last_mut().ok_or(ParseError)?.push(Val::Ex(e));
            if self.is('&') {
                self.i += 1;
            } else if self.is('\n') {
                self.i += 1;
                if !self.is_cmd("end") {
                    rows.push(vec![]);
                }
            } else if !self.is_cmd("end") {
                return Err(ParseError);
            }
        }
        Ok(Val::Matrix(rows))
    }

    fn relop(&mut self) -> Option<RelOp> {
        let op = match self.peek()? {
            Tok::P('=') => RelOp::Eq,
            Tok::P('<') => RelOp::Lt,
            Tok::P('>') => RelOp::Gt,
            Tok::Cmd(c) => match c.as_str() {
                "le" | "leq" | "leqslant" => RelOp::Le,
                "ge" | "geq" | "geqslant" => RelOp::Ge,
                "lt" => RelOp::Lt,
                "gt" => RelOp::Gt,
                _ => return None,
            },
            _ => return None,
        };
        self.i += 1;
        // `<=`, `>=`.
        if self.is('=') && matches!(op, RelOp::Lt | RelOp::Gt) {
            self.i += 1;
            return Some(if op == RelOp::Lt {
                RelOp::Le
            } else {
                RelOp::Ge
            });
        }
        Some(op)
    }

    fn relation(&mut self) -> R<Val> {
        let first = self.pm_expr()?;
        let mut chain = Vec::new();
        let mut lhs = match &first {
            Val::Ex(e) => Some(e.clone()),
            _ => None,
        };
        while let Some(op) = self.relop() {
            let rhs = match self.pm_expr()? {
                Val::Ex(e) => e,
                _ => return Err(ParseError),
            };
            chain.push((lhs.ok_or(ParseError)?, op, rhs.clone()));
            lhs = Some(rhs);
        }
        if chain.is_empty() {
            Ok(first)
        } else {
            Ok(Val::Rel(chain))
        }
    }

    /// `a \pm b` (and a leading `\pm b`): the set {a - b, a + b}.
    fn pm_expr(&mut self) -> R<Val> {
        if self.is_cmd("pm") {
            self.i += 1;
            let b = self.expr()?;
            return Ok(Val::Set(vec![Val::Ex(neg(b.clone())), Val::Ex(b)]));
        }
        let v = self.value_expr()?;
        if self.is_cmd("pm") {
            let Val::Ex(a) = v else {
                return Err(ParseError);
            };
            self.i += 1;
            let b = self.expr()?;
            return Ok(Val::Set(vec![
                Val::Ex(Ex::Add(vec![a.clone(), neg(b.clone())])),
                Val::Ex(Ex::Add(vec![a, b])),
            ]));
        }
        Ok(v)
    }

    /// An expression, or a bracketed tuple/interval/set standing alone.
    fn value_expr(&mut self) -> R<Val> {
        let save = self.i;
        if self.is('(') || self.is('[') || self.is_cmd("{") {
            if let Ok(v) = self.bracketed() {
                let end = self.peek().is_none()
                    || self.is(',')
                    || self.is_cmd("cup")
                    || matches!(self.peek(), Some(Tok::P('=' | '<' | '>')));
                if end && !matches!(v, Val::Ex(_)) {
                    return Ok(v);
                }
            }
            self.i = save;
        }
        let e = self.expr()?;
        if self.is_cmd("%") || self.is('%') {
            self.i += 1;
            // `-3\%` is `-1 * 3 * 1/100` to sympy, no longer an atomic percentage.
            return Ok(match e {
                Ex::Rat(n, _) if n < 0 => Val::Ex(Ex::Mul(vec![e, Ex::Rat(1, 100)])),
                Ex::Float(f) if f < 0.0 => Val::Ex(Ex::Mul(vec![e, Ex::Rat(1, 100)])),
                e => Val::Pct(e),
            });
        }
        Ok(Val::Ex(e))
    }

    fn bracketed(&mut self) -> R<Val> {
        let open = match self.peek() {
            Some(Tok::P(c)) => *c,
            Some(Tok::Cmd(c)) if c == "{" => '{',
            _ => return Err(ParseError),
        };
        self.i += 1;
        let mut items = vec![self.expr_val()?];
        while self.is(',') {
            self.i += 1;
            items.push(self.expr_val()?);
        }
        let close = match self.peek() {
            Some(Tok::P(c)) => *c,
            Some(Tok::Cmd(c)) if c == "}" => '}',
            _ => return Err(ParseError),
        };
        self.i += 1;
        match (open, close) {
            ('{', '}') => Ok(Val::Set(items)),
            ('(', ')') if items.len() == 1 => Ok(items.pop().unwrap_or(Val::Set(vec![]))),
            ('(' | '[', ')' | ']') if items.len() == 2 => {
                let hi = ex_of(items.pop())?;
                let lo = ex_of(items.pop())?;
                if open == '(' && close == ')' {
                    return Ok(Val::Interval {
                        lo,
                        hi,
                        lo_open: true,
                        hi_open: true,
                    });
                }
                Ok(Val::Interval {
                    lo,
                    hi,
                    lo_open: open == '(',
                    hi_open: close == ')',
                })
            }
            ('(', ')') => Ok(Val::Tuple(items)),
            _ => Err(ParseError),
        }
    }

    fn expr_val(&mut self) -> R<Val> {
        if self.is('(') || self.is('[') || self.is_cmd("{") {
            let save = self.i;
            if let Ok(v) = self.bracketed() {
                if self.is(',') || self.is(')') || self.is(']') || self.is_cmd("}") {
                    return Ok(v);
                }
            }
            self.i = save;
        }
        self.pm_expr()
    }

    fn expr(&mut self) -> R<Ex> {
        let mut terms = vec![];
        let first = if self.is('-') {
            self.i += 1;
            neg(self.term()?)
        } else {
            if self.is('+') {
                self.i += 1;
            }
            self.term()?
        };
        terms.push(first);
        loop {
            if self.is('+') {
                self.i += 1;
                terms.push(self.term()?);
            } else if self.is('-') {
                self.i += 1;
                let t = self.term()?;
                terms.push(neg_term(t));
            } else {
                break;
            }
        }
        Ok(if terms.len() == 1 {
            terms.pop().unwrap_or(Ex::Rat(0, 1))
        } else {
            Ex::Add(terms)
        })
    }

    fn term(&mut self) -> R<Ex> {
        let mut f = vec![self.factor()?];
        loop {
            if self.is('*') || self.is_cmd("cdot") || self.is_cmd("times") {
                self.i += 1;
                f.push(self.factor()?);
            } else if self.is('/') || self.is(':') || self.is_cmd("div") {
                self.i += 1;
                let d = self.factor()?;
                f.push(Ex::Pow(Box::new(d), Box::new(Ex::Rat(-1, 1))));
            } else if self.starts_factor() {
                // Juxtaposition; where it does not parse, the term ends there.
                let save = self.i;
                match self.factor() {
                    Ok(x) => f.push(x),
                    Err(_) => {
                        self.i = save;
                        break;
                    }
                }
            } else {
                break;
            }
        }
        Ok(if f.len() == 1 {
            f.pop().unwrap_or(Ex::Rat(1, 1))
        } else {
            Ex::Mul(f)
        })
    }

    fn starts_factor(&self) -> bool {
        match self.peek() {
            Some(Tok::Num(_)) | Some(Tok::Letter(_)) => true,
            Some(Tok::P(c)) => matches!(c, '(' | '{' | '|'),
            Some(Tok::Cmd(c)) => !matches!(
                c.as_str(),
                "cdot"
                    | "times"
                    | "div"
                    | "pm"
                    | "cup"
                    | "le"
                    | "leq"
                    | "ge"
                    | "geq"
                    | "lt"
                    | "gt"
                    | "%"
                    | "}"
                    | "|"
                    | "leqslant"
                    | "geqslant"
                    | "neq"
                    | "ne"
            ),
            None => false,
        }
    }

    fn factor(&mut self) -> R<Ex> {
        if self.is('-') {
            self.i += 1;
            return Ok(neg(self.factor()?));
        }
        let mut base = self.atom()?;
        loop {
            if self.is('^') {
                self.i += 1;
                let e = self.script()?;
                base = Ex::Pow(Box::new(base), Box::new(e));
            } else if self.is('!') {
                self.i += 1;
                base = Ex::Fun("factorial".into(), vec![base]);
            } else {
                break;
            }
        }
        Ok(base)
    }

    /// A superscript or subscript: `{…}` or one token.
    fn script(&mut self) -> R<Ex> {
        if self.is('{') {
            self.i += 1;
            let e = self.expr()?;
            self.eat('}')?;
            return Ok(e);
        }
        if self.is('-') {
            self.i += 1;
            return Ok(neg(self.script()?));
        }
        match self.peek().cloned() {
            Some(Tok::Num(n)) => {
                self.i += 1;
                // `^23` is `^{2}3`: one digit only.
                let first: String = n.chars().take(1).collect();
                if n.len() > 1 {
                    self.t.insert(self.i, Tok::Num(n[1..].to_string()));
                }
                number_literal(&first).ok_or(ParseError)
            }
            _ => self.atom(),
        }
    }

    fn group(&mut self) -> R<Ex> {
        self.eat('{')?;
        let e = self.expr()?;
        self.eat('}')?;
        Ok(e)
    }

    fn raw_group(&mut self) -> R<String> {
        self.eat('{')?;
        let mut depth = 1;
        let mut s = String::new();
        while let Some(t) = self.peek().cloned() {
            self.i += 1;
            match t {
                Tok::P('{') => depth += 1,
                Tok::P('}') => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(s);
                    }
                }
                _ => {}
            }
            match t {
                Tok::Num(n) => s.push_str(&n),
                Tok::Letter(c) => s.push(c),
                Tok::Cmd(c) => s.push_str(&c),
                Tok::P(c) => s.push(c),
            }
        }
        Err(ParseError)
    }

    fn atom(&mut self) -> R<Ex> {
        let t = self.peek().cloned().ok_or(ParseError)?;
        self.i += 1;
        match t {
            Tok::Num(n) => {
                let x = number_literal(&n).ok_or(ParseError)?;
                // A base subscript (`1200_7`): latex2sympy keeps the digits only.
                if self.is('_') {
                    self.i += 1;
                    if self.is('{') {
                        self.raw_group()?;
                    } else {
                        self.token_text()?;
                    }
                    return Ok(x);
                }
                // A mixed number: `2\frac{1}{2}` is 5/2 to latex2sympy.
                if let (Ex::Rat(w, 1), true) = (&x, self.is_cmd("frac")) {
                    let save = self.i;
                    self.i += 1;
                    if let Ok(Ex::Rat(p, q)) = self.command("frac") {
                        if let Some(r) = w
                            .checked_mul(q)
                            .and_then(|wq| wq.checked_add(p))
                            .and_then(|n| rat(n, q))
                        {
                            return Ok(r);
                        }
                    }
                    self.i = save;
                }
                Ok(x)
            }
            Tok::Letter(c) => {
                // latex2sympy lowercases single-letter symbols (`C` is `c`).
                let mut name = c.to_lowercase().to_string();
                if self.is('_') {
                    self.i += 1;
                    let sub = if self.is('{') {
                        self.raw_group()?
                    } else {
                        self.token_text()?
                    };
                    name = format!("{name}_{sub}");
                }
                if name == "e" {
                    return Ok(Ex::E);
                }
                Ok(Ex::Sym(name))
            }
            Tok::P('(') => {
                let e = self.expr()?;
                self.eat(')')?;
                Ok(e)
            }
            Tok::P('{') => {
                let e = self.expr()?;
                self.eat('}')?;
                Ok(e)
            }
            Tok::P('[') => {
                let e = self.expr()?;
                self.eat(']')?;
                Ok(e)
            }
            Tok::P('|') => {
                let e = self.expr()?;
                self.eat('|')?;
                Ok(Ex::Fun("abs".into(), vec![e]))
            }
            Tok::Cmd(c) => self.command(&c),
            _ => Err(ParseError),
        }
    }

    fn token_text(&mut self) -> R<String> {
        let t = self.peek().cloned().ok_or(ParseError)?;
        self.i += 1;
        Ok(match t {
            Tok::Num(n) => n,
            Tok::Letter(c) => c.to_string(),
            Tok::Cmd(c) => c,
            Tok::P(c) => c.to_string(),
        })
    }

    fn command(&mut self, c: &str) -> R<Ex> {
        Ok(match c {
            "frac" | "dfrac" | "tfrac" => {
                let a = self.group()?;
                let b = self.group()?;
                match (&a, &b) {
                    (Ex::Rat(p, 1), Ex::Rat(q, 1)) => rat(*p, *q).ok_or(ParseError)?,
                    _ => Ex::Mul(vec![a, Ex::Pow(Box::new(b), Box::new(Ex::Rat(-1, 1)))]),
                }
            }
            "sqrt" => {
                let idx = if self.is('[') {
                    self.i += 1;
                    let e = self.expr()?;
                    self.eat(']')?;
                    e
                } else {
                    Ex::Rat(2, 1)
                };
                let x = if self.is('{') {
                    self.group()?
                } else {
                    self.atom()?
                };
                Ex::Pow(
                    Box::new(x),
                    Box::new(Ex::Pow(Box::new(idx), Box::new(Ex::Rat(-1, 1)))),
                )
            }
            "binom" | "dbinom" | "tbinom" => {
                let a = self.group()?;
                let b = self.group()?;
                Ex::Fun("binom".into(), vec![a, b])
            }
            "pi" => Ex::Pi,
            "infty" => Ex::Inf,
            "text" | "textbf" | "mathbf" | "mathit" | "operatorname" | "mbox" => {
                let s = self.raw_group()?;
                if c == "text" || c == "mbox" {
                    let inner = s.trim();
                    if let Some(n) = number_literal(inner) {
                        return Ok(n);
                    }
                    let name: String = inner.chars().filter(|ch| !"() ".contains(*ch)).collect();
                    return Ok(Ex::Sym(name.to_lowercase()));
                }
                Ex::Sym(format!("{c}{{{s}}}"))
            }
            "sin" | "cos" | "tan" | "cot" | "sec" | "csc" | "arcsin" | "arccos" | "arctan"
            | "ln" | "log" | "exp" | "sinh" | "cosh" | "tanh" => {
                let mut base = None;
                if c == "log" && self.is('_') {
                    self.i += 1;
                    base = Some(self.script()?);
                }
                let mut power = None;
                if self.is('^') {
                    self.i += 1;
                    power = Some(self.script()?);
                }
                let arg = self.factor()?;
                let mut args = vec![arg];
                args.extend(base);
                let f = Ex::Fun(c.to_string(), args);
                match power {
                    Some(p) => Ex::Pow(Box::new(f), Box::new(p)),
                    None => f,
                }
            }
            "{" => {
                let e = self.expr()?;
                if !self.is_cmd("}") {
                    return Err(ParseError);
                }
                self.i += 1;
                e
            }
            "|" => {
                let e = self.expr()?;
                if !self.is_cmd("|") {
                    return Err(ParseError);
                }
                self.i += 1;
                Ex::Fun("abs".into(), vec![e])
            }
            "alpha" | "beta" | "gamma" | "delta" | "theta" | "lambda" | "mu" | "phi" | "omega"
            | "sigma" | "tau" | "rho" | "epsilon" => Ex::Sym(c.to_string()),
            _ => return Err(ParseError),
        })
    }
}

fn neg_term(t: Ex) -> Ex {
    neg(t)
}

fn ex_of(v: Option<Val>) -> R<Ex> {
    match v {
        Some(Val::Ex(e)) => Ok(e),
        _ => Err(ParseError),
    }
}

// ---------------------------------------------------------------- evaluation

fn sym_value(name: &str, point: usize) -> f64 {
    // FNV-1a of the name and the point: a fixed pseudo-random value in [0.3, 1.7).
    let mut h: u64 = 0xcbf29ce484222325;
    for b in name.bytes().chain([point as u8]) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    0.3 + (h >> 11) as f64 / (1u64 << 53) as f64 * 1.4
}

fn eval(e: &Ex, point: usize) -> f64 {
    match e {
        Ex::Rat(n, d) => *n as f64 / *d as f64,
        Ex::Float(f) => *f,
        Ex::Sym(s) => sym_value(s, point),
        Ex::Pi => std::f64::consts::PI,
        Ex::E => std::f64::consts::E,
        Ex::Inf => f64::INFINITY,
        Ex::Add(xs) => xs.iter().map(|x| eval(x, point)).sum(),
        Ex::Mul(xs) => xs.iter().map(|x| eval(x, point)).product(),
        Ex::Pow(b, x) => {
            let (b, x) = (eval(b, point), eval(x, point));
            if x == -1.0 {
                return 1.0 / b;
            }
            if b < 0.0 && x.fract() != 0.0 {
                // Odd roots of negatives: sympy's principal branch is complex; keep real cube
                // roots out (no equivalence claimed).
                return f64::NAN;
            }
            b.powf(x)
        }
        Ex::Fun(f, args) => {
            let a = args.first().map(|a| eval(a, point)).unwrap_or(f64::NAN);
            match f.as_str() {
                "sin" => a.sin(),
                "cos" => a.cos(),
                "tan" => a.tan(),
                "cot" => 1.0 / a.tan(),
                "sec" => 1.0 / a.cos(),
                "csc" => 1.0 / a.sin(),
                "arcsin" => a.asin(),
                "arccos" => a.acos(),
                "arctan" => a.atan(),
                "sinh" => a.sinh(),
                "cosh" => a.cosh(),
                "tanh" => a.tanh(),
                "ln" => a.ln(),
                "exp" => a.exp(),
                "log" => match args.get(1) {
                    Some(b) => a.ln() / eval(b, point).ln(),
                    None => a.ln(),
                },
                "abs" => a.abs(),
                "factorial" if a >= 0.0 && a.fract() == 0.0 && a < 171.0 => {
                    (1..=a as u64).map(|k| k as f64).product()
                }
                "binom" => {
                    let b = args.get(1).map(|b| eval(b, point)).unwrap_or(f64::NAN);
                    if a.fract() != 0.0 || b.fract() != 0.0 || b < 0.0 {
                        return f64::NAN;
                    }
                    (0..b as u64)
                        .map(|k| (a - k as f64) / (k as f64 + 1.0))
                        .product()
                }
                _ => f64::NAN,
            }
        }
    }
}

fn has_float(e: &Ex) -> bool {
    match e {
        Ex::Float(_) => true,
        Ex::Add(xs) | Ex::Mul(xs) | Ex::Fun(_, xs) => xs.iter().any(has_float),
        Ex::Pow(a, b) => has_float(a) || has_float(b),
        _ => false,
    }
}

fn has_symbols(e: &Ex) -> bool {
    match e {
        Ex::Sym(_) => true,
        Ex::Add(xs) | Ex::Mul(xs) | Ex::Fun(_, xs) => xs.iter().any(has_symbols),
        Ex::Pow(a, b) => has_symbols(a) || has_symbols(b),
        _ => false,
    }
}

/// Exact value of a rational constant expression.
fn exact(e: &Ex) -> Option<(i128, i128)> {
    match e {
        Ex::Rat(n, d) => Some((*n, *d)),
        Ex::Add(xs) => xs.iter().try_fold((0i128, 1i128), |(n, d), x| {
            let (p, q) = exact(x)?;
            let n = n.checked_mul(q)?.checked_add(p.checked_mul(d)?)?;
            let d = d.checked_mul(q)?;
            let g = gcd(n, d).max(1);
            Some((n / g, d / g))
        }),
        Ex::Mul(xs) => xs.iter().try_fold((1i128, 1i128), |(n, d), x| {
            let (p, q) = exact(x)?;
            let (n, d) = (n.checked_mul(p)?, d.checked_mul(q)?);
            if d == 0 {
                return None;
            }
            let g = gcd(n, d).max(1);
            let s = if d < 0 { -1 } else { 1 };
            Some((s * n / g, s * d / g))
        }),
        Ex::Pow(b, x) => {
            let (p, q) = exact(b)?;
            let (k, 1) = exact(x)? else { return None };
            let k32 = u32::try_from(k.unsigned_abs()).ok().filter(|k| *k <= 64)?;
            let (n, d) = (p.checked_pow(k32)?, q.checked_pow(k32)?);
            if k < 0 {
                if n == 0 {
                    return None;
                }
                let s = if n < 0 { -1 } else { 1 };
                Some((s * d, s * n))
            } else {
                Some((n, d))
            }
        }
        _ => None,
    }
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    a.is_finite() && b.is_finite() && (a - b).abs() <= rel * a.abs().max(b.abs()).max(1.0)
}

/// `sympy_numeric_eq` then `sympy_symbolic_eq`, for two scalars.
fn scalar_eq(g: &Val, p: &Val) -> bool {
    let (ge, gp) = match g {
        Val::Ex(e) => (e, false),
        Val::Pct(e) => (e, true),
        _ => return false,
    };
    let (pe, pp) = match p {
        Val::Ex(e) => (e, false),
        Val::Pct(e) => (e, true),
        _ => return false,
    };
    let value = |e: &Ex, pct: bool| eval(e, 0) / if pct { 100.0 } else { 1.0 };
    let is_num = |e: &Ex| matches!(e, Ex::Rat(..) | Ex::Float(_));
    let is_float = |e: &Ex| matches!(e, Ex::Float(_));
    let is_int = |e: &Ex| matches!(e, Ex::Rat(_, 1));
    if is_num(ge) || is_num(pe) {
        if is_float(ge) || is_float(pe) {
            if !has_symbols(ge) && !has_symbols(pe) {
                let (a, b) = (value(ge, gp), value(pe, pp));
                if a.is_finite() && b.is_finite() {
                    return (a * 1e6).round() == (b * 1e6).round();
                }
            }
            return false;
        }
        if is_int(ge) && is_int(pe) {
            return ge == pe;
        }
        // A rational against a constant expression holding a decimal (`58/7.`): sympy's
        // `simplify(a - b)` is the 53-bit float difference, zero only if bit-equal.
        let (g_int, p_int) = (matches!(ge, Ex::Rat(..)), matches!(pe, Ex::Rat(..)));
        if (g_int && has_float(pe) || p_int && has_float(ge))
            && !has_symbols(ge)
            && !has_symbols(pe)
        {
            return value(ge, gp) == value(pe, pp);
        }
        // `doit()` then `==`: exact where both are rational constants.
        let scale = |(n, d): (i128, i128), pct: bool| if pct { (n, d * 100) } else { (n, d) };
        if let (Some(a), Some(b)) = (exact(ge), exact(pe)) {
            let (a, b) = (scale(a, gp), scale(b, pp));
            return a.0.checked_mul(b.1) == b.0.checked_mul(a.1);
        }
    }
    // `(a - b).evalf(15) == 0` or `simplify(a - b) == 0`: numerically, at a few points when
    // there are symbols.
    let points = if has_symbols(ge) || has_symbols(pe) {
        3
    } else {
        1
    };
    (0..points).all(|k| {
        let a = eval(ge, k) / if gp { 100.0 } else { 1.0 };
        let b = eval(pe, k) / if pp { 100.0 } else { 1.0 };
        close(a, b, 1e-10)
    })
}

fn is_only_symbols(e: &Ex) -> bool {
    match e {
        Ex::Sym(_) | Ex::E => true,
        Ex::Mul(xs) => xs.iter().all(is_only_symbols),
        _ => false,
    }
}

fn sort_key(v: &Val) -> (f64, String) {
    let x = match v {
        Val::Ex(e) => eval(e, 0),
        Val::Pct(e) => eval(e, 0) / 100.0,
        Val::Rel(c) => c.last().map(|r| eval(&r.2, 0)).unwrap_or(f64::NAN),
        _ => f64::NAN,
    };
    (if x.is_nan() { f64::INFINITY } else { x }, format!("{v:?}"))
}

fn sorted(xs: &[Val]) -> Vec<Val> {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| {
        let (ka, kb) = (sort_key(a), sort_key(b));
        ka.0.total_cmp(&kb.0).then(ka.1.cmp(&kb.1))
    });
    v
}

/// A FiniteSet holds each (structurally) equal element once.
/// Sums and products compare up to the order of their terms, as sympy's canonical forms do.
fn dedup(mut xs: Vec<Val>) -> Vec<Val> {
    let mut out: Vec<Val> = Vec::new();
    let mut keys: Vec<String> = Vec::new();
    for x in xs.drain(..) {
        let k = match &x {
            Val::Ex(e) => format!("{:?}", canon(e)),
            v => format!("{v:?}"),
        };
        if !keys.contains(&k) {
            keys.push(k);
            out.push(x);
        }
    }
    out
}

fn canon(e: &Ex) -> Ex {
    let sorted = |xs: &[Ex]| {
        let mut v: Vec<Ex> = xs.iter().map(canon).collect();
        v.sort_by_key(|x| format!("{x:?}"));
        v
    };
    match e {
        Ex::Add(xs) => Ex::Add(sorted(xs)),
        Ex::Mul(xs) => Ex::Mul(sorted(xs)),
        Ex::Pow(a, b) => Ex::Pow(Box::new(canon(a)), Box::new(canon(b))),
        Ex::Fun(f, xs) => Ex::Fun(f.clone(), xs.iter().map(canon).collect()),
        e => e.clone(),
    }
}

fn seq_eq(g: &[Val], p: &[Val]) -> bool {
    g.len() == p.len() && g.iter().zip(p).all(|(a, b)| expr_eq(a, b))
}

/// `sympy_compare_sets`.
fn sets_eq(g: &Val, p: &Val) -> bool {
    let wrap = |v: &Val| match v {
        Val::Set(xs) => Val::Set(dedup(xs.clone())),
        Val::Tuple(_) | Val::Interval { .. } | Val::Union(_) => v.clone(),
        v => Val::Set(vec![v.clone()]),
    };
    let (g, p) = (wrap(g), wrap(p));
    match (&g, &p) {
        (
            Val::Interval {
                lo,
                hi,
                lo_open,
                hi_open,
            },
            Val::Interval {
                lo: l2,
                hi: h2,
                lo_open: o2,
                hi_open: c2,
            },
        ) => {
            lo_open == o2
                && hi_open == c2
                && expr_eq(&Val::Ex(lo.clone()), &Val::Ex(l2.clone()))
                && expr_eq(&Val::Ex(hi.clone()), &Val::Ex(h2.clone()))
        }
        // sympy's Union is a set of its parts: any order.
        (Val::Union(a), Val::Union(b)) => {
            a.len() == b.len() && {
                let mut used = vec![false; b.len()];
                a.iter().all(|x| {
                    let hit = (0..b.len()).find(|&j| !used[j] && expr_eq(x, &b[j]));
                    hit.map(|j| used[j] = true).is_some()
                })
            }
        }
        (Val::Set(a), Val::Set(b)) => seq_eq(&sorted(a), &sorted(b)),
        (Val::Tuple(a), Val::Set(b)) | (Val::Tuple(a), Val::Tuple(b)) => seq_eq(a, b),
        (Val::Set(a), Val::Tuple(b)) => seq_eq(&sorted(a), b),
        (
            Val::Interval {
                lo,
                hi,
                lo_open: true,
                hi_open: true,
            },
            Val::Set(b) | Val::Tuple(b),
        ) if b.len() == 2 => seq_eq(&[Val::Ex(lo.clone()), Val::Ex(hi.clone())], b),
        (
            Val::Set(a) | Val::Tuple(a),
            Val::Interval {
                lo,
                hi,
                lo_open: true,
                hi_open: true,
            },
        ) if a.len() == 2 => {
            let a = if matches!(g, Val::Set(_)) {
                sorted(a)
            } else {
                a.clone()
            };
            seq_eq(&a, &[Val::Ex(lo.clone()), Val::Ex(hi.clone())])
        }
        _ => false,
    }
}

fn inverse(op: RelOp) -> RelOp {
    match op {
        RelOp::Eq => RelOp::Eq,
        RelOp::Lt => RelOp::Gt,
        RelOp::Gt => RelOp::Lt,
        RelOp::Le => RelOp::Ge,
        RelOp::Ge => RelOp::Le,
    }
}

fn diff(a: &Ex, b: &Ex) -> Ex {
    Ex::Add(vec![a.clone(), neg(b.clone())])
}

fn rel_eq(g: &[(Ex, RelOp, Ex)], p: &[(Ex, RelOp, Ex)]) -> bool {
    g.len() == p.len()
        && g.iter().zip(p).all(|((gl, go, gr), (pl, po, pr))| {
            (go == po && expr_eq(&Val::Ex(diff(gl, gr)), &Val::Ex(diff(pl, pr))))
                || (inverse(*go) == *po && expr_eq(&Val::Ex(diff(gl, gr)), &Val::Ex(diff(pr, pl))))
        })
}

/// `sympy_expr_eq(gold, pred)` with math-verify's defaults (strict, float_rounding 6).
pub fn expr_eq(gold: &Val, pred: &Val) -> bool {
    let assignment = |v: &Val| match v {
        Val::Rel(c) => c.iter().all(|r| r.1 == RelOp::Eq) && is_only_symbols(&c[0].0),
        _ => false,
    };
    let equation = |v: &Val| matches!(v, Val::Rel(c) if c.iter().all(|r| r.1 == RelOp::Eq));
    let (mut g, mut p) = (gold.clone(), pred.clone());
    match (&g, &p) {
        (Val::In(a, x), Val::In(b, y)) => return a == b && expr_eq(x, y),
        (Val::In(_, x), _) => g = (**x).clone(),
        (_, Val::In(_, y)) => p = (**y).clone(),
        _ => {}
    }
    let (ga, pa, ge, pe) = (assignment(&g), assignment(&p), equation(&g), equation(&p));
    let collapse = |v: &Val| match v {
        Val::Rel(c) if c.len() > 1 => {
            Val::Rel(vec![(c[0].0.clone(), RelOp::Eq, c[c.len() - 1].2.clone())])
        }
        v => v.clone(),
    };
    if ga {
        g = collapse(&g);
    }
    if pa {
        p = collapse(&p);
    }
    let rhs = |v: &Val| match v {
        Val::Rel(c) => c.last().map(|r| Val::Ex(r.2.clone())).unwrap_or(v.clone()),
        v => v.clone(),
    };
    if pe && !ge {
        p = rhs(&p);
    } else if ga && !pe {
        g = rhs(&g);
    }
    if g == p {
        return true;
    }
    match (&g, &p) {
        (Val::Rel(a), Val::Rel(b)) => rel_eq(a, b),
        (Val::Matrix(a), Val::Matrix(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| seq_eq(x, y))
        }
        (Val::Matrix(_), _) | (_, Val::Matrix(_)) => false,
        (Val::Rel(_), _) | (_, Val::Rel(_)) => false,
        (Val::Set(_) | Val::Tuple(_) | Val::Interval { .. } | Val::Union(_), _)
        | (_, Val::Set(_) | Val::Tuple(_) | Val::Interval { .. } | Val::Union(_)) => {
            sets_eq(&g, &p)
        }
        (Val::Ex(Ex::Sym(_)), _) | (_, Val::Ex(Ex::Sym(_))) => symbols_eq(&g, &p),
        _ => scalar_eq(&g, &p),
    }
}

/// `sympy_compare_symbols`.
fn symbols_eq(g: &Val, p: &Val) -> bool {
    let name = |v: &Val| match v {
        Val::Ex(Ex::Sym(s)) => Some(if s.chars().count() > 1 {
            s.to_lowercase()
        } else {
            s.clone()
        }),
        _ => None,
    };
    let concat = |v: &Val| match v {
        Val::Ex(Ex::Mul(xs)) => xs
            .iter()
            .map(|x| match x {
                Ex::Sym(s) => Some(s.clone()),
                Ex::E => Some("e".into()),
                _ => None,
            })
            .collect::<Option<String>>(),
        _ => None,
    };
    match (name(g), name(p)) {
        (Some(a), Some(b)) => a == b,
        (Some(a), None) => {
            matches!(p, Val::Ex(Ex::E)) && a == "e"
                || concat(p).is_some_and(|c| c.to_lowercase() == a.to_lowercase())
        }
        (None, Some(b)) => {
            matches!(g, Val::Ex(Ex::E)) && b == "e"
                || concat(g).is_some_and(|c| c.to_lowercase() == b.to_lowercase())
        }
        (None, None) => false,
    }
}

/// math-verify's `verify(gold, target)`: any pair of extractions equal (values by
/// [`expr_eq`], fallback strings when equal and non-empty).
pub fn verify(gold: &[Extracted], pred: &[Extracted]) -> bool {
    gold.iter().any(|g| {
        pred.iter().any(|p| match (g, p) {
            (Extracted::Value(a), Extracted::Value(b)) => expr_eq(a, b),
            (Extracted::Str(a), Extracted::Str(b)) => {
                let (a, b) = (a.trim(), b.trim());
                !a.is_empty() && a == b
            }
            _ => false,
        })
    })
}

/// lm-eval's `math_verify` for one generation: `verify(parse(solution), parse(generated))`.
pub fn math_verify(solution: &str, generated: &str) -> bool {
    verify(&parse(solution), &parse(generated))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values were checked against math-verify 0.9.0 (`normalize_latex` with its
    // LatexExtractionConfig, `parse`, `verify`).

    fn v(s: &str) -> Val {
        parse_value(s).unwrap_or_else(|_| panic!("{s:?} does not parse"))
    }

    fn same(gold: &str, pred: &str) -> bool {
        verify(&parse(&format!("${gold}$")), &parse(&format!("${pred}$")))
    }

    #[test]
    fn normalizes_latex_like_latex2sympy() {
        let n = |s: &str| normalize_latex(s, false);
        assert_eq!(n(r"\dfrac{1}{2}"), r"\frac{1}{2}");
        assert_eq!(n(r"\left( 1, 2 \right)"), "( 1, 2 )");
        assert_eq!(n(r"\$5"), "5");
        assert_eq!(n(r"10\text{ cm}"), "10");
        assert_eq!(n(r"5 \text{ inches}"), "5");
        assert_eq!(n(r"\frac12"), r"\frac{1}{2}");
        assert_eq!(n(r"\sqrt2"), r"\sqrt{2}");
        assert_eq!(n("3/4"), r"\frac{3}{4}");
        assert_eq!(n(".5"), r"\frac{1}{2}");
        assert_eq!(n(r"\boxed{3}, \boxed{4}"), "3,4");
        assert_eq!(n(r"45^\circ"), r"45^\circ");
        assert_eq!(n(r"1,\!000"), "1,000");
    }

    #[test]
    fn parses_values() {
        assert_eq!(v(r"\frac{1}{2}"), Val::Ex(Ex::Rat(1, 2)));
        assert_eq!(v(r"-\frac{2}{3}"), Val::Ex(Ex::Rat(-2, 3)));
        assert_eq!(v(r"2\frac{1}{2}"), Val::Ex(Ex::Rat(5, 2)));
        assert_eq!(v("1,234"), Val::Ex(Ex::Rat(1234, 1)));
        assert_eq!(v("0.5"), Val::Ex(Ex::Float(0.5)));
        assert_eq!(v(r"45^\circ"), Val::Ex(Ex::Rat(45, 1)));
        assert_eq!(v("1200_7"), Val::Ex(Ex::Rat(1200, 1)));
        assert_eq!(v(r"\text{(C)}"), Val::Ex(Ex::Sym("c".into())));
        assert_eq!(v("X"), Val::Ex(Ex::Sym("x".into())));
        assert_eq!(v(r"50\%"), Val::Pct(Ex::Rat(50, 1)));
        assert!(matches!(v("1, 2"), Val::Set(x) if x.len() == 2));
        assert!(matches!(v("(1,2,3)"), Val::Tuple(x) if x.len() == 3));
        assert!(matches!(
            v("[0,1)"),
            Val::Interval {
                lo_open: false,
                hi_open: true,
                ..
            }
        ));
        assert!(matches!(
            v(r"(-\infty,3]"),
            Val::Interval {
                lo_open: true,
                hi_open: false,
                ..
            }
        ));
        assert!(matches!(v(r"\pm 2"), Val::Set(x) if x.len() == 2));
        assert!(matches!(v("x=5"), Val::Rel(c) if c.len() == 1));
        assert!(matches!(v("a=b=3"), Val::Rel(c) if c.len() == 2));
        assert!(matches!(v(r"x \in [-2,7]"), Val::In(..)));
        let m = v(r"\begin{pmatrix} 2/5 \\ -1/5 \\ 0 \end{pmatrix}");
        assert!(matches!(&m, Val::Matrix(rows) if rows.len() == 3), "{m:?}");
        assert!(parse_value(r"\frac{1}{").is_err());
        assert!(parse_value("5.").is_err());
    }

    #[test]
    fn equivalence_like_math_verify() {
        assert!(same(r"\frac{1}{2}", "0.5"));
        // Decimals against numbers: rounded to 6 places.
        assert!(same(r"\frac{1}{3}", "0.333333"));
        assert!(!same(r"\frac{1}{3}", "0.33"));
        assert!(same(r"\frac{\pi}{2}", "1.570796"));
        assert!(same(r"2\sqrt{3}", r"\sqrt{12}"));
        assert!(same("3", "x=3"));
        assert!(same(r"\{1,2\}", r"\{2,1\}"));
        assert!(!same("(1,2)", "(2,1)"));
        assert!(!same("[0,1)", "[0,1]"));
        assert!(same("x^2-1", "(x-1)(x+1)"));
        assert!(same(r"\text{B}", "b"));
        assert!(same(r"50\%", "50"));
        assert!(same("0.5", r"50\%"));
        assert!(same("10^{3}", "1000"));
        assert!(!same("10^{3}", "1001"));
    }

    #[test]
    fn extraction_priorities() {
        // A "final answer is … I hope" line beats an earlier box (priority 0 over 50).
        let p =
            parse(r"So x is $\boxed{7}$ and later the final answer is $8$. I hope it is correct.");
        assert_eq!(p[0], Extracted::Value(Val::Ex(Ex::Rat(8, 1))));
        // A box beats plain LaTeX; the last box wins.
        let p = parse(r"We find $\frac{1}{2}$ then $\boxed{3}$.");
        assert_eq!(p[0], Extracted::Value(Val::Ex(Ex::Rat(3, 1))));
        // Plain text: "answer … 1/2." is an expression (Python reads `2.` as a float).
        let p = parse("The answer is 1/2.");
        assert_eq!(p.get(1), Some(&Extracted::Str("1/2.".into())));
        assert!(math_verify(r"$\boxed{\frac{1}{2}}$", "The answer is 1/2."));
        assert!(parse("no math here").is_empty());
        // An unknown command: the fallback strings agree (math-verify parses a symbol).
        assert!(math_verify(
            r"$\boxed{\clubsuit}$",
            r"Final answer: $\clubsuit$"
        ));
    }
}
