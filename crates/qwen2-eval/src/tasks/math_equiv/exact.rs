//! Exact rationals.

use super::*;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Q {
    pub(super) n: BigInt,
    /// Positive, coprime with `n`.
    pub(super) d: BigInt,
}

impl Q {
    pub(super) fn int(n: BigInt) -> Q {
        Q {
            n,
            d: BigInt::one(),
        }
    }

    pub(super) fn new(n: BigInt, d: BigInt) -> Option<Q> {
        if d.is_zero() {
            return None;
        }
        let g = n.gcd(&d);
        let (mut n, mut d) = (n / &g, d / &g);
        if d.is_negative() {
            n = -n;
            d = -d;
        }
        Some(Q { n, d })
    }

    pub(super) fn is_int(&self) -> bool {
        self.d.is_one()
    }
}

pub(super) enum Exact {
    Value(Q),
    /// Division by zero and the like (sympy's `zoo`/`nan`).
    Undefined,
    /// Not a rational constant: compare numerically.
    Unknown,
}

/// Bits allowed in an exact power or factorial before falling back to floating point.
pub(super) const MAX_EXACT_BITS: u64 = 1 << 16;

/// The value of a rational constant; decimals count as their binary value with `floats`, and
/// make the expression `Unknown` without. Roots of perfect powers are rational, as sympy
/// evaluates them on sight (`\sqrt{4}` is 2).
pub(super) fn exact(e: &Expr, floats: bool) -> Exact {
    use Exact::*;
    let two = |a: &Expr, b: &Expr, f: &dyn Fn(Q, Q) -> Exact| match (
        exact(a, floats),
        exact(b, floats),
    ) {
        (Value(x), Value(y)) => f(x, y),
        (Undefined, _) | (_, Undefined) => Undefined,
        _ => Unknown,
    };
    let some = |q: Option<Q>| q.map_or(Undefined, Value);
    match e {
        Expr::Int(n) => Value(Q::int(n.clone())),
        Expr::Float(f) if floats => decimal(f).map_or(Unknown, |(q, _)| Value(q)),
        Expr::Call(Fun::Sqrt, a) => two(a, &Expr::Int(2.into()), &exact_root),
        Expr::Root(a, n) => two(a, n, &exact_root),
        Expr::Neg(a) => match exact(a, floats) {
            Value(q) => Value(Q { n: -q.n, d: q.d }),
            other => other,
        },
        Expr::Add(a, b) => two(a, b, &|x, y| {
            some(Q::new(x.n * &y.d + y.n * &x.d, x.d * y.d))
        }),
        Expr::Mul(a, b) => two(a, b, &|x, y| some(Q::new(x.n * y.n, x.d * y.d))),
        Expr::Div(a, b) => two(a, b, &|x, y| some(Q::new(x.n * y.d, x.d * y.n))),
        Expr::Pow(a, b) => two(a, b, &|x, y| {
            if !y.is_int() {
                return Unknown;
            }
            let Some(k) = y.n.to_i64() else {
                return Unknown;
            };
            let bits = x.n.bits().max(x.d.bits()).max(1);
            if k.unsigned_abs().saturating_mul(bits) > MAX_EXACT_BITS {
                return Unknown;
            }
            let k32 = k.unsigned_abs() as u32;
            let (n, d) = (
                num_traits::pow(x.n, k32 as usize),
                num_traits::pow(x.d, k32 as usize),
            );
            if k >= 0 {
                some(Q::new(n, d))
            } else {
                some(Q::new(d, n))
            }
        }),
        Expr::Binom(a, b) => two(a, b, &|n, k| {
            let (Some(n), Some(k)) = (n.is_int().then_some(n.n), k.is_int().then_some(k.n)) else {
                return Unknown;
            };
            if n.is_negative() || k.is_negative() || k.bits() > 16 || n.bits() > 64 {
                return Unknown;
            }
            if k > n {
                return Value(Q::int(BigInt::zero()));
            }
            let mut r = BigInt::one();
            let mut i = BigInt::zero();
            while i < k {
                r = r * (&n - &i) / (&i + 1);
                i += 1;
            }
            Value(Q::int(r))
        }),
        Expr::Call(f, a) => {
            let x = match exact(a, floats) {
                Value(x) => x,
                other => return other,
            };
            match f {
                Fun::Abs => Value(Q {
                    n: x.n.abs(),
                    d: x.d,
                }),
                Fun::Conj => Value(x),
                Fun::Floor => Value(Q::int(x.n.div_floor(&x.d))),
                Fun::Ceil => Value(Q::int(-((-x.n).div_floor(&x.d)))),
                Fun::Factorial if x.is_int() => {
                    if x.n.is_negative() {
                        return Undefined;
                    }
                    match x.n.to_u64() {
                        Some(k) if k <= 5000 => {
                            Value(Q::int((1..=k).fold(BigInt::one(), |acc, i| acc * i)))
                        }
                        _ => Unknown,
                    }
                }
                _ => Unknown,
            }
        }
        _ => Unknown,
    }
}

/// `x^(1/n)` when `x >= 0` and both its numerator and denominator are perfect `n`-th powers.
pub(super) fn exact_root(x: Q, n: Q) -> Exact {
    let k = match n.n.to_u32() {
        Some(k) if n.is_int() && (1..=64).contains(&k) => k,
        _ => return Exact::Unknown,
    };
    if x.n.is_negative() {
        return Exact::Unknown;
    }
    let (rn, rd) = (x.n.nth_root(k), x.d.nth_root(k));
    if num_traits::pow(rn.clone(), k as usize) == x.n
        && num_traits::pow(rd.clone(), k as usize) == x.d
    {
        Exact::Value(Q { n: rn, d: rd })
    } else {
        Exact::Unknown
    }
}

/// A decimal literal's exact value and its sympy precision in bits: `Float("…")` keeps
/// max(15, significant digits) decimal digits (`dps_to_prec`), so `0.3333333333333333` (16
/// digits) is a 56-bit Float and differs from 1/3 rounded to 56 bits.
pub(super) fn decimal(text: &str) -> Option<(Q, u64)> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = format!("{int}{frac}");
    let n: BigInt = digits.parse().ok()?;
    let d = num_traits::pow(BigInt::from(10), frac.len());
    let significant = digits.trim_start_matches('0').len().max(1) as u64;
    let dps = significant.max(15);
    let prec = (((dps + 1) as f64) * std::f64::consts::LOG2_10).round() as u64;
    Some((Q::new(n, d)?, prec))
}

/// `q` rounded to `prec` significant bits, ties to even (mpmath's round-nearest).
pub(super) fn round_bits(q: &Q, prec: u64) -> Q {
    if q.n.is_zero() {
        return q.clone();
    }
    // Scale |q| by 2^-e into [2^(prec-1), 2^prec), round to an integer, scale back.
    let e = q.n.bits() as i64 - q.d.bits() as i64 - prec as i64;
    let two = BigInt::from(2);
    let (num, den) = if e >= 0 {
        (q.n.abs(), &q.d * num_traits::pow(two.clone(), e as usize))
    } else {
        (
            q.n.abs() * num_traits::pow(two.clone(), (-e) as usize),
            q.d.clone(),
        )
    };
    let (mut m, r) = num.div_rem(&den);
    let twice = r * 2;
    if twice > den || (twice == den && m.is_odd()) {
        m += 1;
    }
    if q.n.is_negative() {
        m = -m;
    }
    let scaled = if e >= 0 {
        Q::new(m * num_traits::pow(two, e as usize), BigInt::one())
    } else {
        Q::new(m, num_traits::pow(two, (-e) as usize))
    };
    scaled.unwrap_or_else(|| q.clone())
}

/// A rational constant as sympy holds it: exact, or a Float of some precision.
#[derive(Debug, Clone)]
pub(super) struct SymNum {
    pub(super) q: Q,
    pub(super) prec: Option<u64>,
}

/// sympy's arithmetic on rational constants with decimals: a Float turns the rationals it
/// meets into Floats of its precision and rounds every result; `None` if the expression is
/// not such a constant.
pub(super) fn sympy_number(e: &Expr) -> Option<SymNum> {
    let combine = |a: SymNum, b: SymNum, f: &dyn Fn(&Q, &Q) -> Option<Q>| {
        let prec = match (a.prec, b.prec) {
            (Some(x), Some(y)) => Some(x.max(y)),
            (x, y) => x.or(y),
        };
        let round = |v: Q| match prec {
            Some(p) => round_bits(&v, p),
            None => v,
        };
        let q = f(&round(a.q), &round(b.q))?;
        Some(SymNum { q: round(q), prec })
    };
    match e {
        Expr::Int(n) => Some(SymNum {
            q: Q::int(n.clone()),
            prec: None,
        }),
        Expr::Float(f) => {
            let (q, prec) = decimal(f)?;
            Some(SymNum {
                q: round_bits(&q, prec),
                prec: Some(prec),
            })
        }
        Expr::Neg(a) => {
            let a = sympy_number(a)?;
            Some(SymNum {
                q: Q {
                    n: -a.q.n,
                    d: a.q.d,
                },
                prec: a.prec,
            })
        }
        Expr::Add(a, b) => combine(sympy_number(a)?, sympy_number(b)?, &|x, y| {
            Q::new(&x.n * &y.d + &y.n * &x.d, &x.d * &y.d)
        }),
        Expr::Mul(a, b) => combine(sympy_number(a)?, sympy_number(b)?, &|x, y| {
            Q::new(&x.n * &y.n, &x.d * &y.d)
        }),
        Expr::Div(a, b) => combine(sympy_number(a)?, sympy_number(b)?, &|x, y| {
            Q::new(&x.n * &y.d, &x.d * &y.n)
        }),
        _ => None,
    }
}
