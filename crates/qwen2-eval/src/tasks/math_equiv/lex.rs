//! Lexer: the token rules of LaTeX.g4, longest match first (a command name is the whole run
//! of letters after the backslash, so `\cdote` is a symbol, not `\cdot` + `e`).

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    Plus,
    Minus,
    Star,
    Slash,
    LParen,
    RParen,
    LBrace,
    RBrace,
    LBraceLit,
    RBraceLit,
    LBracket,
    RBracket,
    Bar,
    /// `\left|` and `\langle`: they only open kets and bras, which we do not parse.
    BraKet,
    /// `\int`, `\sum`, `\prod`, `\lim`: valid starts in sympy, unsupported here.
    Unsupported(&'static str),
    /// Tokens that start nothing (`\rangle`, `\right|`, `\to`, ...).
    Other,
    Func(&'static str),
    LFloor,
    RFloor,
    LCeil,
    RCeil,
    Sqrt,
    Overline,
    Times,
    Cdot,
    CmdDiv,
    Frac,
    Binom,
    Mathit,
    Underscore,
    Caret,
    Colon,
    Differential(String),
    Letter(char),
    Digit(char),
    Rel,
    Bang,
    Quotes(usize),
    Symbol(String),
    Comma,
    Dot,
    /// A character no token rule matches: sympy's lexer raises when the parser reaches it.
    Bad,
    Eof,
}

pub(super) const FUNCS: [&str; 22] = [
    "exp", "log", "lg", "ln", "sin", "cos", "tan", "csc", "sec", "cot", "arcsin", "arccos",
    "arctan", "arccsc", "arcsec", "arccot", "sinh", "cosh", "tanh", "arsinh", "arcosh", "artanh",
];

/// The token of `\name`: `Some(None)` for the skipped ones, `None` for a plain symbol.
pub(super) fn command(name: &str) -> Option<Option<Tok>> {
    if let Some(f) = FUNCS.iter().find(|f| **f == name) {
        return Some(Some(Tok::Func(f)));
    }
    let tok = match name {
        "thinspace" | "medspace" | "thickspace" | "quad" | "qquad" | "negthinspace"
        | "negmedspace" | "negthickspace" | "left" | "right" | "vrule" | "vcenter" | "vbox"
        | "vskip" | "vspace" | "hfil" => return Some(None),
        "langle" => Tok::BraKet,
        "rangle" | "to" | "rightarrow" | "Rightarrow" | "longrightarrow" | "Longrightarrow" => {
            Tok::Other
        }
        "int" => Tok::Unsupported("integral"),
        "sum" => Tok::Unsupported("sum"),
        "prod" => Tok::Unsupported("product"),
        "lim" => Tok::Unsupported("limit"),
        "lfloor" => Tok::LFloor,
        "rfloor" => Tok::RFloor,
        "lceil" => Tok::LCeil,
        "rceil" => Tok::RCeil,
        "sqrt" => Tok::Sqrt,
        "overline" => Tok::Overline,
        "times" => Tok::Times,
        "cdot" => Tok::Cdot,
        "div" => Tok::CmdDiv,
        "frac" | "dfrac" | "tfrac" => Tok::Frac,
        "binom" | "dbinom" | "tbinom" => Tok::Binom,
        "mathit" => Tok::Mathit,
        "neq" | "le" | "leq" | "leqq" | "leqslant" | "ge" | "geq" | "geqq" | "geqslant" => Tok::Rel,
        _ => return None,
    };
    Some(Some(tok))
}

pub(super) fn is_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

pub(super) fn lex(s: &str) -> Vec<Tok> {
    let c: Vec<char> = s.chars().collect();
    let n = c.len();
    let letters_from = |mut k: usize| {
        let start = k;
        while k < n && c[k].is_ascii_alphabetic() {
            k += 1;
        }
        (c[start..k].iter().collect::<String>(), k)
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        let ch = c[i];
        let tok = match ch {
            _ if is_ws(ch) => {
                i += 1;
                continue;
            }
            '\\' if i + 1 < n && c[i + 1].is_ascii_alphabetic() => {
                let (name, k) = letters_from(i + 1);
                i = k;
                // Longer literal tokens that run past the letters.
                if k < n && c[k] == '|' && (name == "left" || name == "right") {
                    i = k + 1;
                    out.push(if name == "left" {
                        Tok::BraKet
                    } else {
                        Tok::Other
                    });
                    continue;
                }
                match command(&name) {
                    Some(None) => continue,
                    Some(Some(t)) => t,
                    None => Tok::Symbol(name),
                }
            }
            '\\' => {
                i += 2;
                match c.get(i - 1) {
                    Some('{') => Tok::LBraceLit,
                    Some('}') => Tok::RBraceLit,
                    Some(',' | ':' | ';' | '!' | '*' | '-' | '.' | '/' | '"' | '(' | '=') => {
                        continue
                    }
                    _ => Tok::Bad,
                }
            }
            'd' => {
                // DIFFERENTIAL: 'd' WS*? ([a-zA-Z] | '\\' [a-zA-Z]+), longer than LETTER 'd'.
                let mut k = i + 1;
                while k < n && is_ws(c[k]) {
                    k += 1;
                }
                if k < n && c[k].is_ascii_alphabetic() {
                    i = k + 1;
                    Tok::Differential(c[k].to_string())
                } else if k + 1 < n && c[k] == '\\' && c[k + 1].is_ascii_alphabetic() {
                    let (name, end) = letters_from(k + 1);
                    i = end;
                    Tok::Differential(name)
                } else {
                    i += 1;
                    Tok::Letter('d')
                }
            }
            '&' => {
                let mut k = i + 1;
                while k < n && is_ws(c[k]) {
                    k += 1;
                }
                if k < n && c[k] == '=' {
                    i = k + 1;
                    Tok::Rel
                } else {
                    i += 1;
                    Tok::Bad
                }
            }
            '=' => {
                let mut k = i + 1;
                while k < n && is_ws(c[k]) {
                    k += 1;
                }
                i = if k < n && c[k] == '&' { k + 1 } else { i + 1 };
                Tok::Rel
            }
            '\'' => {
                let mut k = i;
                while k < n && c[k] == '\'' {
                    k += 1;
                }
                let q = k - i;
                i = k;
                Tok::Quotes(q)
            }
            _ => {
                i += 1;
                match ch {
                    '+' => Tok::Plus,
                    '-' => Tok::Minus,
                    '*' => Tok::Star,
                    '/' => Tok::Slash,
                    '(' => Tok::LParen,
                    ')' => Tok::RParen,
                    '{' => Tok::LBrace,
                    '}' => Tok::RBrace,
                    '[' => Tok::LBracket,
                    ']' => Tok::RBracket,
                    '|' => Tok::Bar,
                    '_' => Tok::Underscore,
                    '^' => Tok::Caret,
                    ':' => Tok::Colon,
                    '<' | '>' => Tok::Rel,
                    '!' => Tok::Bang,
                    ',' => Tok::Comma,
                    '.' => Tok::Dot,
                    _ if ch.is_ascii_alphabetic() => Tok::Letter(ch),
                    _ if ch.is_ascii_digit() => Tok::Digit(ch),
                    _ => Tok::Bad,
                }
            }
        };
        let bad = tok == Tok::Bad;
        out.push(tok);
        if bad {
            break;
        }
    }
    out.push(Tok::Eof);
    out
}
