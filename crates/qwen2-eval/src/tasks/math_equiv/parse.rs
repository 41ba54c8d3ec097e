//! Parser: recursive descent over LaTeX.g4's rules. A loop continues when the next tokens can
//! start another round (ANTLR's adaptive prediction exits a loop it cannot continue), so the
//! top level stops after the longest expression, and a missing closer is an error.

use super::*;

/// sympy's `parse_latex`.
pub fn parse(s: &str) -> Result<Parsed, ParseError> {
    let mut p = Parser {
        toks: lex(s.trim()),
        pos: 0,
        abs_depth: 0,
        depth: 0,
        steps: 0,
    };
    p.relation()
}

pub(super) struct Parser {
    pub(super) toks: Vec<Tok>,
    pub(super) pos: usize,
    /// Inside `|…|`, a `|` closes the group rather than opening a new one.
    pub(super) abs_depth: usize,
    pub(super) depth: usize,
    /// Work done, bounded by [`MAX_STEPS`] (backtracking could otherwise blow up).
    pub(super) steps: usize,
}

pub(super) const MAX_STEPS: usize = 100_000;

pub(super) type PResult<T> = Result<T, ParseError>;

impl Parser {
    pub(super) fn err<T>(&self, msg: impl Into<String>) -> PResult<T> {
        Err(ParseError {
            at: self.pos,
            msg: msg.into(),
            fatal: false,
        })
    }

    pub(super) fn fatal<T>(&self, msg: impl Into<String>) -> PResult<T> {
        Err(ParseError {
            at: self.pos,
            msg: msg.into(),
            fatal: true,
        })
    }

    /// The token `k` ahead; reaching an unlexable character is an error, as in ANTLR, whose
    /// lexer runs as far as the parser looks.
    pub(super) fn peek_n(&self, k: usize) -> PResult<&Tok> {
        let t = self
            .toks
            .get(self.pos + k)
            .or(self.toks.last())
            .unwrap_or(&Tok::Eof);
        if *t == Tok::Bad {
            return Err(ParseError {
                at: self.pos + k,
                msg: "I don't understand this".into(),
                fatal: true,
            });
        }
        Ok(t)
    }

    pub(super) fn peek(&self) -> PResult<&Tok> {
        self.peek_n(0)
    }

    pub(super) fn bump(&mut self) {
        if self.pos < self.toks.len() {
            self.pos += 1;
        }
    }

    pub(super) fn expect(&mut self, t: Tok) -> PResult<()> {
        if *self.peek()? == t {
            self.bump();
            Ok(())
        } else {
            self.err(format!("expected {t:?}, found {:?}", self.peek()?))
        }
    }

    pub(super) fn enter(&mut self) -> PResult<()> {
        self.depth += 1;
        self.steps += 1;
        if self.depth > MAX_DEPTH || self.steps > MAX_STEPS {
            return self.fatal("nested too deeply or too long");
        }
        Ok(())
    }

    /// One more round of a loop, or `None` (state restored) when it does not parse: ANTLR's
    /// prediction then leaves the loop, since what follows a loop in its global follow set
    /// covers the same tokens; a closer that is then missing is the error (`(2+(1,2))`), and
    /// at the top level nothing is (`2+(1,2)` is 2).
    pub(super) fn attempt<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> PResult<T>,
    ) -> PResult<Option<T>> {
        let (pos, abs_depth, depth) = (self.pos, self.abs_depth, self.depth);
        match f(self) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.fatal => Err(e),
            Err(_) => {
                self.pos = pos;
                self.abs_depth = abs_depth;
                self.depth = depth;
                Ok(None)
            }
        }
    }

    pub(super) fn relation(&mut self) -> PResult<Parsed> {
        let e = self.expr()?;
        if *self.peek()? == Tok::Rel && self.starts_unary(1)? {
            self.bump();
            self.expr()?;
            // sympy cannot build a relation of a relation (`f(2)<f(1)<f(4)`).
            if *self.peek()? == Tok::Rel && self.starts_unary(1)? {
                return self.fatal("chained relation");
            }
            return Ok(Parsed::Relation);
        }
        Ok(Parsed::Expr(e))
    }

    pub(super) fn expr(&mut self) -> PResult<Expr> {
        self.enter()?;
        let mut e = self.mp(false)?;
        loop {
            let neg = match self.peek()? {
                Tok::Plus => false,
                Tok::Minus => true,
                _ => break,
            };
            if !self.starts_unary(1)? {
                break;
            }
            let Some(r) = self.attempt(|p| {
                p.bump();
                p.mp(false)
            })?
            else {
                break;
            };
            e = Expr::Add(e.b(), if neg { Expr::Neg(r.b()) } else { r }.b());
        }
        self.depth -= 1;
        Ok(e)
    }

    /// `mp` (or `mp_nofunc`): products and quotients with explicit operators.
    pub(super) fn mp(&mut self, nofunc: bool) -> PResult<Expr> {
        let mut e = self.unary(nofunc)?;
        loop {
            let div = match self.peek()? {
                Tok::Star | Tok::Times | Tok::Cdot => false,
                Tok::Slash | Tok::CmdDiv | Tok::Colon => true,
                _ => break,
            };
            if !self.starts_unary(1)? {
                break;
            }
            let Some(r) = self.attempt(|p| {
                p.bump();
                p.unary(nofunc)
            })?
            else {
                break;
            };
            e = if div {
                Expr::Div(e.b(), r.b())
            } else {
                Expr::Mul(e.b(), r.b())
            };
        }
        Ok(e)
    }

    pub(super) fn starts_unary(&self, k: usize) -> PResult<bool> {
        Ok(matches!(self.peek_n(k)?, Tok::Plus | Tok::Minus) || self.starts_postfix(k, true)?)
    }

    pub(super) fn starts_atom(&self, k: usize) -> PResult<bool> {
        Ok(matches!(
            self.peek_n(k)?,
            Tok::Letter(_)
                | Tok::Symbol(_)
                | Tok::Digit(_)
                | Tok::Differential(_)
                | Tok::Mathit
                | Tok::Frac
                | Tok::Binom
                | Tok::BraKet
        ))
    }

    pub(super) fn starts_postfix(&self, k: usize, allow_func: bool) -> PResult<bool> {
        Ok(match self.peek_n(k)? {
            Tok::LParen
            | Tok::LBracket
            | Tok::LBrace
            | Tok::LBraceLit
            | Tok::LFloor
            | Tok::LCeil => true,
            Tok::Bar => self.abs_depth == 0 && self.starts_unary(k + 1)?,
            Tok::Func(_) | Tok::Sqrt | Tok::Overline | Tok::Unsupported(_) => allow_func,
            _ => self.starts_atom(k)?,
        })
    }

    /// `unary` / `unary_nofunc`: signs, then juxtaposed factors (implicit multiplication).
    pub(super) fn unary(&mut self, nofunc: bool) -> PResult<Expr> {
        self.enter()?;
        let e = match self.peek()? {
            Tok::Plus => {
                self.bump();
                self.unary(nofunc)?
            }
            Tok::Minus => {
                self.bump();
                Expr::Neg(self.unary(nofunc)?.b())
            }
            _ => {
                if !self.starts_postfix(0, true)? {
                    return self.err(format!("unexpected {:?}", self.peek()?));
                }
                let mut list = vec![self.postfix(true)?];
                while self.starts_postfix(0, !nofunc)? {
                    match self.attempt(|p| p.postfix(!nofunc))? {
                        Some(e) => list.push(e),
                        None => break,
                    }
                }
                product_list(list)
            }
        };
        self.depth -= 1;
        Ok(e)
    }

    pub(super) fn postfix(&mut self, allow_func: bool) -> PResult<Expr> {
        let mut e = self.exp(allow_func)?;
        while *self.peek()? == Tok::Bang {
            self.bump();
            e = Expr::Call(Fun::Factorial, e.b());
        }
        Ok(e)
    }

    pub(super) fn exp(&mut self, allow_func: bool) -> PResult<Expr> {
        let mut e = self.comp(allow_func)?;
        while *self.peek()? == Tok::Caret && self.starts_script(1)? {
            let Some(p) = self.attempt(|p| {
                p.bump();
                p.script()
            })?
            else {
                break;
            };
            // A subscript after the exponent is parsed and dropped (`x^2_3` is x**2).
            if *self.peek()? == Tok::Underscore && self.starts_script(1)? {
                self.attempt(|p| {
                    p.bump();
                    p.script()
                })?;
            }
            e = Expr::Pow(e.b(), p.b());
        }
        Ok(e)
    }

    pub(super) fn starts_script(&self, k: usize) -> PResult<bool> {
        Ok(*self.peek_n(k)? == Tok::LBrace || self.starts_atom(k)?)
    }

    /// The argument of `^` or `_`: an atom or a braced expression.
    pub(super) fn script(&mut self) -> PResult<Expr> {
        if *self.peek()? == Tok::LBrace {
            self.bump();
            let e = self.expr()?;
            self.expect(Tok::RBrace)?;
            Ok(e)
        } else {
            self.atom()
        }
    }

    pub(super) fn group(&mut self, close: Tok) -> PResult<Expr> {
        self.bump();
        let e = self.expr()?;
        self.expect(close)?;
        Ok(e)
    }

    pub(super) fn comp(&mut self, allow_func: bool) -> PResult<Expr> {
        let t = self.peek()?.clone();
        match t {
            Tok::LParen => self.group(Tok::RParen),
            Tok::LBracket => self.group(Tok::RBracket),
            Tok::LBrace => self.group(Tok::RBrace),
            Tok::LBraceLit => self.group(Tok::RBraceLit),
            Tok::Bar => {
                self.abs_depth += 1;
                let e = self.group(Tok::Bar);
                self.abs_depth -= 1;
                Ok(Expr::Call(Fun::Abs, e?.b()))
            }
            Tok::LFloor => Ok(Expr::Call(Fun::Floor, self.group(Tok::RFloor)?.b())),
            Tok::LCeil => Ok(Expr::Call(Fun::Ceil, self.group(Tok::RCeil)?.b())),
            Tok::Func(name) if allow_func => self.func_normal(name),
            Tok::Sqrt if allow_func => {
                self.bump();
                let root = if *self.peek()? == Tok::LBracket {
                    Some(self.group(Tok::RBracket)?)
                } else {
                    None
                };
                if *self.peek()? != Tok::LBrace {
                    return self.err("\\sqrt needs a braced argument");
                }
                let base = self.group(Tok::RBrace)?;
                Ok(match root {
                    Some(n) => Expr::Root(base.b(), n.b()),
                    None => Expr::Call(Fun::Sqrt, base.b()),
                })
            }
            Tok::Overline if allow_func => {
                self.bump();
                if *self.peek()? != Tok::LBrace {
                    return self.err("\\overline needs a braced argument");
                }
                Ok(Expr::Call(Fun::Conj, self.group(Tok::RBrace)?.b()))
            }
            Tok::Unsupported(what) if allow_func => self.fatal(format!("unsupported: {what}")),
            Tok::Letter(_) | Tok::Symbol(_) if allow_func => {
                // `func` comes before `atom` in `comp`: a name followed by `(` is a call.
                let call = self.attempt(|p| {
                    let name = p.name(true)?;
                    p.expect(Tok::LParen)?;
                    let mut args = vec![p.expr()?];
                    while *p.peek()? == Tok::Comma {
                        p.bump();
                        args.push(p.expr()?);
                    }
                    p.expect(Tok::RParen)?;
                    Ok(Expr::Apply(name, args))
                })?;
                match call {
                    Some(e) => Ok(e),
                    None => self.atom(),
                }
            }
            _ => self.atom(),
        }
    }

    /// A LETTER or SYMBOL with its optional subscript and primes, as sympy names it
    /// (`x_{1}`, `f'`); `as_func` keeps the primes of a command too, as `convert_func` does.
    pub(super) fn name(&mut self, as_func: bool) -> PResult<String> {
        let (mut name, is_letter) = match self.peek()? {
            Tok::Letter(c) => (c.to_string(), true),
            Tok::Symbol(s) => (s.clone(), false),
            t => return self.err(format!("expected a name, found {t:?}")),
        };
        self.bump();
        let mut quotes = 0;
        if let Tok::Quotes(q) = self.peek()? {
            quotes = *q;
            self.bump();
        }
        if *self.peek()? == Tok::Underscore && self.starts_script(1)? {
            self.bump();
            let sub = self.script()?;
            if name == "infty" && !is_letter && !as_func {
                return Ok(name);
            }
            name = format!("{name}_{{{}}}", sub.show());
        }
        if quotes == 0 {
            if let Tok::Quotes(q) = self.peek()? {
                quotes = *q;
                self.bump();
            }
        }
        if is_letter || as_func {
            name.push_str(&"'".repeat(quotes));
        }
        Ok(name)
    }

    pub(super) fn atom(&mut self) -> PResult<Expr> {
        let t = self.peek()?.clone();
        match t {
            Tok::Letter(_) => Ok(Expr::Sym(self.name(false)?)),
            Tok::Symbol(s) => {
                let name = self.name(false)?;
                Ok(if s == "infty" {
                    Expr::Infinity
                } else {
                    Expr::Sym(name)
                })
            }
            Tok::Digit(_) => self.number(),
            Tok::Differential(v) => {
                self.bump();
                Ok(Expr::Sym(format!("d{v}")))
            }
            Tok::Mathit => {
                self.bump();
                self.expect(Tok::LBrace)?;
                let mut text = String::new();
                while let Tok::Letter(c) = self.peek()? {
                    text.push(*c);
                    self.bump();
                }
                self.expect(Tok::RBrace)?;
                Ok(Expr::Sym(text))
            }
            Tok::Frac => self.frac(),
            Tok::Binom => {
                self.bump();
                let n = self.braced()?;
                let k = self.braced()?;
                Ok(Expr::Binom(n.b(), k.b()))
            }
            Tok::BraKet => self.fatal("unsupported: bra/ket"),
            t => self.err(format!("unexpected {t:?}")),
        }
    }

    pub(super) fn braced(&mut self) -> PResult<Expr> {
        if *self.peek()? != Tok::LBrace {
            return self.err(format!("expected {{, found {:?}", self.peek()?));
        }
        self.group(Tok::RBrace)
    }

    /// `number: DIGIT+ (',' DIGIT DIGIT DIGIT)* ('.' DIGIT+)?`
    pub(super) fn number(&mut self) -> PResult<Expr> {
        let mut text = String::new();
        while let Tok::Digit(d) = self.peek()? {
            text.push(*d);
            self.bump();
        }
        while *self.peek()? == Tok::Comma
            && (1..=3).all(|k| matches!(self.peek_n(k), Ok(Tok::Digit(_))))
        {
            self.bump();
            for _ in 0..3 {
                if let Tok::Digit(d) = self.peek()? {
                    text.push(*d);
                }
                self.bump();
            }
        }
        if *self.peek()? == Tok::Dot {
            self.bump();
            if !matches!(self.peek()?, Tok::Digit(_)) {
                return self.err("a decimal point needs digits after it");
            }
            text.push('.');
            while let Tok::Digit(d) = self.peek()? {
                text.push(*d);
                self.bump();
            }
            return Ok(Expr::Float(text));
        }
        // sympy's `Number("01")` refuses leading zeros ("00" is fine).
        if text.starts_with('0') && text.bytes().any(|b| b != b'0') {
            return self.fatal("leading zero");
        }
        match text.parse::<BigInt>() {
            Ok(n) => Ok(Expr::Int(n)),
            Err(_) => self.err("bad integer"),
        }
    }

    /// `\frac` with a single digit or a braced expression on each side.
    pub(super) fn frac(&mut self) -> PResult<Expr> {
        self.bump();
        let side = |p: &mut Parser| -> PResult<(Expr, usize, usize)> {
            match p.peek()?.clone() {
                Tok::Digit(d) => {
                    p.bump();
                    Ok((Expr::Int(BigInt::from(d.to_digit(10).unwrap_or(0))), 0, 0))
                }
                Tok::LBrace => {
                    let start = p.pos + 1;
                    let e = p.group(Tok::RBrace)?;
                    Ok((e, start, p.pos - 1))
                }
                t => p.err(format!("\\frac expects a digit or {{, found {t:?}")),
            }
        };
        let (upper, _, _) = side(self)?;
        let (lower, lo, hi) = side(self)?;
        // `\frac{d}{dx}` and `\frac{\partial}{\partial x}` are derivatives in sympy.
        let low = &self.toks[lo..hi];
        let derivative = matches!(low, [Tok::Differential(_)])
            || matches!(low, [Tok::Symbol(p), Tok::Letter(_) | Tok::Symbol(_)] if p == "partial");
        if derivative {
            return self.fatal("unsupported: derivative");
        }
        Ok(Expr::Div(upper.b(), lower.b()))
    }

    /// A function's sub- or superscript. A bare run of digits leaves its last digit to the
    /// argument when nothing else could be one (`\log_28` is log(8, 2)): ANTLR's full-context
    /// prediction only ends the digit loop where the rest still parses.
    pub(super) fn func_script(&mut self) -> PResult<Expr> {
        let start = self.pos;
        let e = self.script()?;
        let digits = self.pos - start;
        let all_digits = self.toks[start..self.pos]
            .iter()
            .all(|t| matches!(t, Tok::Digit(_)));
        if digits > 1 && all_digits && *self.peek()? != Tok::LParen && !self.starts_unary(0)? {
            self.pos = start + digits - 1;
            let text: String = self.toks[start..self.pos]
                .iter()
                .filter_map(|t| match t {
                    Tok::Digit(d) => Some(*d),
                    _ => None,
                })
                .collect();
            return match text.parse::<BigInt>() {
                Ok(n) => Ok(Expr::Int(n)),
                Err(_) => self.err("bad integer"),
            };
        }
        Ok(e)
    }

    pub(super) fn func_normal(&mut self, name: &'static str) -> PResult<Expr> {
        self.bump();
        let (mut sub, mut sup) = (None, None);
        for _ in 0..2 {
            match self.peek()? {
                Tok::Underscore if sub.is_none() && self.starts_script(1)? => {
                    self.bump();
                    sub = Some(self.func_script()?);
                }
                Tok::Caret if sup.is_none() && self.starts_script(1)? => {
                    self.bump();
                    sup = Some(self.func_script()?);
                }
                _ => break,
            }
        }
        let arg = if *self.peek()? == Tok::LParen {
            // `func_arg`: only its first expression is used.
            self.bump();
            let a = self.expr()?;
            while *self.peek()? == Tok::Comma {
                self.bump();
                self.expr()?;
            }
            self.expect(Tok::RParen)?;
            a
        } else {
            self.mp(true)?
        };
        let trig = |f: Fun, inv: Fun, sup: &Option<Expr>| {
            if sup.as_ref().is_some_and(is_minus_one) {
                (inv, false)
            } else {
                (f, true)
            }
        };
        let (fun, may_pow) = match name {
            "log" | "lg" | "ln" => {
                let base = match sub {
                    Some(b) => b,
                    None if name == "lg" => Expr::Int(10.into()),
                    None => Expr::E,
                };
                let e = Expr::Log(arg.b(), base.b());
                return Ok(with_pow(e, sup));
            }
            "exp" => (Fun::Exp, true),
            "arcsin" => (Fun::Asin, true),
            "arccos" => (Fun::Acos, true),
            "arctan" => (Fun::Atan, true),
            "arccsc" => (Fun::Acsc, true),
            "arcsec" => (Fun::Asec, true),
            "arccot" => (Fun::Acot, true),
            "arsinh" => (Fun::Asinh, true),
            "arcosh" => (Fun::Acosh, true),
            "artanh" => (Fun::Atanh, true),
            "sin" => trig(Fun::Sin, Fun::Asin, &sup),
            "cos" => trig(Fun::Cos, Fun::Acos, &sup),
            "tan" => trig(Fun::Tan, Fun::Atan, &sup),
            "csc" => trig(Fun::Csc, Fun::Acsc, &sup),
            "sec" => trig(Fun::Sec, Fun::Asec, &sup),
            "cot" => trig(Fun::Cot, Fun::Acot, &sup),
            "sinh" => trig(Fun::Sinh, Fun::Asinh, &sup),
            "cosh" => trig(Fun::Cosh, Fun::Acosh, &sup),
            "tanh" => trig(Fun::Tanh, Fun::Atanh, &sup),
            _ => return self.err(format!("unknown function {name}")),
        };
        let e = Expr::Call(fun, arg.b());
        Ok(if may_pow { with_pow(e, sup) } else { e })
    }
}

/// sympy applies `func^{p}` as a power unless `p` is falsy (zero).
pub(super) fn with_pow(e: Expr, sup: Option<Expr>) -> Expr {
    match sup {
        Some(p) if !matches!(&p, Expr::Int(n) if n.is_zero()) => Expr::Pow(e.b(), p.b()),
        _ => e,
    }
}

pub(super) fn is_minus_one(e: &Expr) -> bool {
    match e {
        Expr::Neg(a) => matches!(&**a, Expr::Int(n) if n.is_one()),
        Expr::Int(n) => *n == BigInt::from(-1),
        _ => false,
    }
}

/// sympy's `convert_postfix_list`: juxtaposed factors multiply, except that a lone `x` between
/// two symbol-free factors is read as a times sign (`2x3` is 6).
pub(super) fn product_list(list: Vec<Expr>) -> Expr {
    let last = list.len() - 1;
    let mut kept: Vec<Expr> = Vec::with_capacity(list.len());
    for i in 0..=last {
        let times_sign = i > 0
            && i < last
            && list[i] == Expr::Sym("x".into())
            && !list[i - 1].has_symbols()
            && !list[i + 1].has_symbols();
        if !times_sign {
            kept.push(list[i].clone());
        }
    }
    let mut it = kept.into_iter().rev();
    let mut e = it.next().unwrap_or(Expr::Int(BigInt::one()));
    for f in it {
        e = Expr::Mul(f.b(), e.b());
    }
    e
}
