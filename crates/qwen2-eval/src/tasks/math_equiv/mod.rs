//! Mathematical equivalence of two normalized MATH answers, as lm-eval's `minerva_math`
//! `is_equiv` decides it (lm-eval 0.4.13 `tasks/minerva_math/utils.py`): equal non-empty
//! strings are equivalent; otherwise both strings go through sympy's `parse_latex` (ANTLR
//! grammar `sympy/parsing/latex/LaTeX.g4`) and are equivalent when `simplify(a - b) == 0`;
//! anything that does not parse, or does not subtract (equations, inequalities), is not.
//!
//! The parser below follows that grammar and its conversion to sympy, quirks included, because
//! they decide what "parses" means:
//! - every letter is a free symbol, `e`, `i` and `\pi` too (`\pi` is the symbol `pi`, `e^{i\pi}`
//!   is not -1); `xy` is `x*y`; `\ln` and a base-less `\log` use Euler's number;
//! - a letter or command followed by `(` is an undefined function (`x(y+1)` is not `xy+x`);
//! - unknown commands are symbols (`\pm2` is `pm*2`, `\cdote` the symbol `cdote`); `\left`,
//!   `\right`, `\!`, `\,`, `\;` and friends are skipped, `\%` and `\$` are lexing errors;
//! - digits run together into one number (`1,000` is 1000, `1,2` is 1), a decimal point must
//!   be followed by a digit (`5.` fails) and decimals are sympy Floats;
//! - a loop (sums, products, juxtaposition, powers) ends silently where its next round would
//!   not parse, as ANTLR's prediction does, so the top level keeps the longest expression that
//!   parses (`2)` is 2, `x^-1` is x, `1,2` is 1, `2+(1,2)` is 2), while a group whose closer
//!   is missing is an error (`(1,2)`, `[0,\infty)`, `\{1,2\}` fail);
//! - integers with leading zeros (`01`) fail, as `sympy.Number("01")` does;
//! - `2x3` is `2*3` (a lone `x` between two symbol-free factors is a times sign).
//!
//! Zero test, in place of `simplify`:
//! - both sides rational constants written without decimals: exact rational arithmetic
//!   (big integers), equal iff equal;
//! - rational constants with decimals: sympy's Float arithmetic, exactly: a decimal is a
//!   binary Float of max(15, its significant digits) decimal digits, a rational meeting a Float
//!   is rounded to its precision, and the difference must be exactly zero (`0.1` equals
//!   `\frac{1}{10}`, `0.1+0.2` does not equal `0.3`, `0.3333333333333333` does not equal
//!   `\frac13`); a decimal never equals an irrational constant (`1.4142135623730951` vs
//!   `\sqrt{2}`), since sympy keeps those symbolic;
//! - otherwise numeric: both sides are evaluated at [`POINTS`] pseudo-random complex points
//!   (one if there are no symbols; every symbol gets the same value on both sides at a point;
//!   principal branches for roots, logs and powers; an undefined function gets a fixed
//!   pseudo-random analytic function of its name), and are equivalent iff at every point both
//!   values are finite and `|a - b| <= REL_TOL * max(scale_a, scale_b)`, where the scale of a
//!   side bounds the magnitudes that enter its evaluation (sum of the absolute values of the
//!   terms, and so on), so rounding noise of cancelling terms passes and real differences fail.
//!
//! Known deviations from sympy (none shows on the 5000 MATH test references, their sympy
//! printings, or the 4482 reference pairs of the fixture):
//! - decimals next to symbols or irrationals compare within [`REL_TOL`], where sympy combines
//!   Float coefficients exactly (`0.1x+0.2x` vs `0.3x` is equivalent here, not there);
//! - anything with `\infty` is not equivalent to a different string (sympy agrees except for
//!   expressions where the infinity cancels, such as `\frac{1}{\infty}` vs `0`);
//! - sums, products, integrals, limits, derivatives, bras and kets are parse failures here;
//! - subscripted names use our own printing of the subscript (`x_{1+1}` and `x_{2}` are
//!   different symbols in both, but sympy spells them with its printer);
//! - where `simplify` fails to prove a true identity, sympy says "not equivalent" and we
//!   (numerically) say equivalent.

use std::collections::BTreeSet;

use num_bigint::BigInt;
use num_complex::Complex64 as C64;
use num_integer::Integer;
use num_traits::{One, Signed, ToPrimitive, Zero};

mod exact;
mod lex;
mod numeric;
mod parse;

use exact::*;
use lex::*;
use numeric::*;
pub use parse::parse;

/// Random points per numeric comparison (with free symbols). A branch difference such as
/// `\sqrt{x}\sqrt{y}` vs `\sqrt{xy}` shows at a point with probability 1/4, so 12 points miss
/// it with probability 3%.
pub const POINTS: usize = 12;

/// Tolerance of the numeric comparison, relative to the scale of the evaluation.
pub const REL_TOL: f64 = 1e-12;

/// Nesting deeper than this is refused (a parse failure), so that no input can overflow the
/// stack.
const MAX_DEPTH: usize = 200;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("LaTeX parse error at token {at}: {msg}")]
pub struct ParseError {
    pub at: usize,
    pub msg: String,
    /// Raised by sympy's lexer or its conversion to sympy objects rather than by the parser's
    /// prediction, so no backtracking hides it.
    pub fatal: bool,
}

/// lm-eval's `is_equiv(x1, x2)` on two normalized answers: identical non-empty strings, or
/// [`equivalent`].
pub fn is_equiv(candidate: &str, reference: &str) -> bool {
    (!candidate.is_empty() && candidate == reference) || equivalent(candidate, reference)
}

/// Whether both strings parse as expressions and their difference is zero (see the module
/// notes for the rule).
pub fn equivalent(a: &str, b: &str) -> bool {
    let (Ok(Parsed::Expr(x)), Ok(Parsed::Expr(y))) = (parse(a), parse(b)) else {
        return false;
    };
    if x.has_infinity() || y.has_infinity() {
        return false;
    }
    match (exact(&x, false), exact(&y, false)) {
        (Exact::Value(p), Exact::Value(q)) => p == q,
        (Exact::Undefined, _) | (_, Exact::Undefined) => false,
        _ if x.has_float() || y.has_float() => {
            if let (Some(a), Some(b)) = (sympy_number(&x), sympy_number(&y)) {
                // Float - Rational rounds the rational to the Float's precision; two Floats
                // differ unless equal.
                return match (a.prec, b.prec) {
                    (Some(p), None) => a.q == round_bits(&b.q, p),
                    (None, Some(p)) => round_bits(&a.q, p) == b.q,
                    _ => a.q == b.q,
                };
            }
            // sympy keeps irrational constants symbolic and a Float only cancels rationals,
            // so a rational constant with decimals never equals an irrational constant
            // (`1.4142135623730951` vs `\sqrt{2}`), however many digits agree.
            let rational = |e: &Expr| matches!(exact(e, true), Exact::Value(_));
            let constant = |e: &Expr| !e.has_symbols();
            let (rx, ry) = (rational(&x), rational(&y));
            if rx != ry && constant(&x) && constant(&y) {
                return false;
            }
            numerically_equal(&x, &y)
        }
        _ => numerically_equal(&x, &y),
    }
}

/// What sympy's `parse_latex` returns: an expression, or a relation (which lm-eval cannot
/// subtract, so it is never equivalent to anything but its own string).
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    Expr(Expr),
    Relation,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Int(BigInt),
    /// A decimal literal, as written (a sympy Float, whose precision its digits set).
    Float(String),
    Sym(String),
    Infinity,
    /// Euler's number (only from `\ln`, `\log`; the letter `e` is a symbol).
    E,
    Add(Box<Expr>, Box<Expr>),
    Neg(Box<Expr>),
    Mul(Box<Expr>, Box<Expr>),
    Div(Box<Expr>, Box<Expr>),
    Pow(Box<Expr>, Box<Expr>),
    /// `\sqrt[n]{x}`: the principal `x^(1/n)`.
    Root(Box<Expr>, Box<Expr>),
    /// `log(x, base)`.
    Log(Box<Expr>, Box<Expr>),
    Call(Fun, Box<Expr>),
    Binom(Box<Expr>, Box<Expr>),
    /// An undefined function applied to arguments (`f(x)`, `x(y+1)`).
    Apply(String, Vec<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fun {
    Sin,
    Cos,
    Tan,
    Csc,
    Sec,
    Cot,
    Asin,
    Acos,
    Atan,
    Acsc,
    Asec,
    Acot,
    Sinh,
    Cosh,
    Tanh,
    Asinh,
    Acosh,
    Atanh,
    Exp,
    Sqrt,
    Abs,
    Floor,
    Ceil,
    Conj,
    Factorial,
}

impl Expr {
    pub(super) fn b(self) -> Box<Expr> {
        Box::new(self)
    }

    pub(super) fn children(&self) -> Vec<&Expr> {
        match self {
            Expr::Int(_) | Expr::Float(_) | Expr::Sym(_) | Expr::Infinity | Expr::E => vec![],
            Expr::Neg(a) | Expr::Call(_, a) => vec![a],
            Expr::Add(a, b)
            | Expr::Mul(a, b)
            | Expr::Div(a, b)
            | Expr::Pow(a, b)
            | Expr::Root(a, b)
            | Expr::Log(a, b)
            | Expr::Binom(a, b) => vec![a, b],
            Expr::Apply(_, args) => args.iter().collect(),
        }
    }

    pub(super) fn any(&self, f: &dyn Fn(&Expr) -> bool) -> bool {
        f(self) || self.children().into_iter().any(|c| c.any(f))
    }

    pub(super) fn has_float(&self) -> bool {
        self.any(&|e| matches!(e, Expr::Float(_)))
    }

    pub(super) fn has_infinity(&self) -> bool {
        self.any(&|e| matches!(e, Expr::Infinity))
    }

    /// sympy's `expr.atoms(Symbol)` is non-empty.
    pub(super) fn has_symbols(&self) -> bool {
        self.any(&|e| matches!(e, Expr::Sym(_)))
    }

    pub(super) fn symbols(&self, out: &mut BTreeSet<String>) {
        if let Expr::Sym(s) = self {
            out.insert(s.clone());
        }
        for c in self.children() {
            c.symbols(out);
        }
    }

    /// A printing for subscripted names (`x_{1}`): the same tree prints the same.
    pub(super) fn show(&self) -> String {
        let two = |op: &str, a: &Expr, b: &Expr| format!("({}{op}{})", a.show(), b.show());
        match self {
            Expr::Int(n) => n.to_string(),
            Expr::Float(f) => f.clone(),
            Expr::Sym(s) => s.clone(),
            Expr::Infinity => "oo".into(),
            Expr::E => "E".into(),
            Expr::Add(a, b) => two(" + ", a, b),
            Expr::Neg(a) => format!("-{}", a.show()),
            Expr::Mul(a, b) => two("*", a, b),
            Expr::Div(a, b) => two("/", a, b),
            Expr::Pow(a, b) => two("**", a, b),
            Expr::Root(a, b) => format!("root({}, {})", a.show(), b.show()),
            Expr::Log(a, b) => format!("log({}, {})", a.show(), b.show()),
            Expr::Binom(a, b) => format!("binomial({}, {})", a.show(), b.show()),
            Expr::Call(f, a) => format!("{f:?}({})", a.show()),
            Expr::Apply(f, args) => {
                let a: Vec<String> = args.iter().map(Expr::show).collect();
                format!("{f}({})", a.join(", "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Expr {
        match parse(s) {
            Ok(Parsed::Expr(e)) => e,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn lexing_follows_the_grammar() {
        assert_eq!(lex("\\cdote"), vec![Tok::Symbol("cdote".into()), Tok::Eof]);
        assert_eq!(
            lex("\\left|x\\right|"),
            vec![Tok::BraKet, Tok::Letter('x'), Tok::Other, Tok::Eof]
        );
        assert_eq!(
            lex("dx + d \\alpha"),
            vec![
                Tok::Differential("x".into()),
                Tok::Plus,
                Tok::Differential("alpha".into()),
                Tok::Eof
            ]
        );
        assert_eq!(lex("1\\!000"), lex("1000"));
        assert_eq!(lex("5\\%").last(), Some(&Tok::Eof));
        assert!(lex("5\\%").contains(&Tok::Bad));
    }

    #[test]
    fn sympy_shapes() {
        assert_eq!(p("1,000"), Expr::Int(1000.into()));
        assert_eq!(p("1,2"), Expr::Int(1.into()));
        assert_eq!(p("x^-1"), Expr::Sym("x".into()));
        assert_eq!(p("x_1"), Expr::Sym("x_{1}".into()));
        assert_eq!(p("x_{1}'"), Expr::Sym("x_{1}'".into()));
        assert_eq!(p("\\infty"), Expr::Infinity);
        assert!(matches!(p("x(y+1)"), Expr::Apply(f, _) if f == "x"));
        assert!(matches!(p("f'(x)"), Expr::Apply(f, _) if f == "f'"));
        // `2x3` reads x as a times sign; `2x y` does not.
        assert!(equivalent("2x3", "6"));
        assert!(!equivalent("2xy", "2y"));
        assert!(matches!(parse("x=1"), Ok(Parsed::Relation)));
        for bad in [
            "(1,2)",
            "[0,\\infty)",
            "5.",
            ".5",
            "10\\%",
            "\\$5",
            "",
            "\\sqrt2",
            "\\frac1x",
        ] {
            assert!(parse(bad).is_err(), "{bad} should not parse");
        }
        assert!(parse(&"(".repeat(10_000)).is_err());
    }

    #[test]
    fn exact_rationals() {
        assert!(equivalent("\\frac{4}{6}", "\\frac{2}{3}"));
        assert!(!equivalent("2^{100}", "2^{100}+1"));
        assert!(equivalent("2^{-2}", "\\frac14"));
        assert!(equivalent("\\binom{10}{3}", "120"));
        assert!(equivalent("5!", "120"));
        assert!(!equivalent("\\frac{1}{0}", "\\frac{1}{0}"));
        assert!(is_equiv("\\frac{1}{0}", "\\frac{1}{0}"));
        assert!(!is_equiv("", ""));
    }

    #[test]
    fn numeric() {
        assert!(equivalent("\\sqrt{2}\\sqrt{2}", "2"));
        assert!(equivalent("\\sqrt{2}\\sqrt{2}-2", "0"));
        assert!(!equivalent("\\sqrt{x}\\sqrt{y}", "\\sqrt{xy}"));
        assert!(equivalent("\\sqrt{x}\\sqrt{x}", "x"));
        assert!(equivalent("\\log_2 8", "3"));
        assert!(equivalent("\\frac{(x+1)!}{x!}", "x+1"));
        assert!(equivalent("\\binom{x}{2}", "\\frac{x^2-x}{2}"));
        assert!(equivalent("f(x+1)", "f(1+x)"));
        assert!(!equivalent("f(x)", "g(x)"));
        assert!(!equivalent("\\tan^{-1}(1)", "\\frac{\\pi}{4}"));
        assert!(equivalent("4\\arctan(1)", "\\arccos(-1)"));
        assert!(!equivalent("1.41421356", "\\sqrt{2}"));
        assert!(!equivalent("1.4142135623730951", "\\sqrt{2}"));
        assert!(equivalent("2.0", "\\sqrt{4}"));
        assert!(equivalent("0.5\\sqrt{2}", "\\frac{\\sqrt{2}}{2}"));
        assert!(equivalent("0.2\\sqrt{5}", "\\frac{\\sqrt{5}}{5}"));
        assert!(equivalent(
            "\\frac{x^{10}-1}{x-1}",
            "x^9+x^8+x^7+x^6+x^5+x^4+x^3+x^2+x+1"
        ));
    }
}
