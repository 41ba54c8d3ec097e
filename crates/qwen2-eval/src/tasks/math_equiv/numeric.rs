//! Numeric evaluation: a value and the scale of what went into it.

use super::*;

#[derive(Debug, Clone, Copy)]
pub(super) struct Num {
    pub(super) v: C64,
    /// A bound on the magnitudes combined to make `v`; rounding error is ~1e-16 of it.
    pub(super) m: f64,
}

pub(super) struct Env {
    pub(super) names: Vec<String>,
    pub(super) values: Vec<C64>,
}

impl Env {
    pub(super) fn get(&self, name: &str) -> Option<C64> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| self.values[i])
    }
}

pub(super) fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

pub(super) fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

pub(super) fn unit(x: u64) -> f64 {
    (splitmix(x) >> 11) as f64 / (1u64 << 53) as f64
}

/// A complex number of modulus in [0.5, 2) and any argument, fixed by `seed`.
pub(super) fn random_point(seed: u64) -> C64 {
    let r = 0.5 + 1.5 * unit(seed);
    let theta = std::f64::consts::TAU * unit(seed ^ 0x5555_5555_5555_5555);
    C64::from_polar(r, theta)
}

pub(super) fn numerically_equal(x: &Expr, y: &Expr) -> bool {
    let mut names = BTreeSet::new();
    x.symbols(&mut names);
    y.symbols(&mut names);
    let names: Vec<String> = names.into_iter().collect();
    let points = if names.is_empty() { 1 } else { POINTS };
    (0..points as u64).all(|p| {
        let values = names
            .iter()
            .map(|n| random_point(fnv(n) ^ splitmix(p + 1)))
            .collect();
        let env = Env {
            names: names.clone(),
            values,
        };
        match (num(x, &env), num(y, &env)) {
            (Some(a), Some(b)) => {
                finite(a.v) && finite(b.v) && (a.v - b.v).norm() <= REL_TOL * a.m.max(b.m)
            }
            _ => false,
        }
    })
}

pub(super) fn finite(z: C64) -> bool {
    z.re.is_finite() && z.im.is_finite()
}

pub(super) fn leaf(v: C64) -> Num {
    Num { v, m: v.norm() }
}

/// The value of a call `f(a)` with the scale grown by `|f'(a)|` times the scale of `a`.
pub(super) fn call(f: impl Fn(C64) -> C64, a: Num) -> Option<Num> {
    let v = f(a.v);
    let h = 1e-6 * a.v.norm().max(1.0);
    let slope = ((f(a.v + h) - f(a.v - h)) / (2.0 * h)).norm();
    let m = v.norm() + if slope.is_finite() { slope * a.m } else { 0.0 };
    finite(v).then_some(Num { v, m })
}

pub(super) fn num(e: &Expr, env: &Env) -> Option<Num> {
    let r = match e {
        Expr::Int(n) => leaf(C64::new(n.to_f64()?, 0.0)),
        Expr::Float(f) => leaf(C64::new(f.parse().ok()?, 0.0)),
        Expr::Sym(s) => leaf(env.get(s)?),
        Expr::Infinity => return None,
        Expr::E => leaf(C64::new(std::f64::consts::E, 0.0)),
        Expr::Neg(a) => {
            let a = num(a, env)?;
            Num { v: -a.v, m: a.m }
        }
        Expr::Add(a, b) => {
            let (a, b) = (num(a, env)?, num(b, env)?);
            Num {
                v: a.v + b.v,
                m: a.m + b.m,
            }
        }
        Expr::Mul(a, b) => {
            let (a, b) = (num(a, env)?, num(b, env)?);
            Num {
                v: a.v * b.v,
                m: a.m * b.m,
            }
        }
        Expr::Div(a, b) => div(num(a, env)?, num(b, env)?)?,
        Expr::Pow(a, b) => {
            let base = num(a, env)?;
            match exact(b, false) {
                Exact::Value(q) if q.is_int() && q.n.bits() <= 20 => powi(base, q.n.to_i32()?)?,
                _ => powc(base, num(b, env)?)?,
            }
        }
        Expr::Root(a, n) => {
            let n = num(n, env)?;
            let inv = div(leaf(C64::new(1.0, 0.0)), n)?;
            powc(num(a, env)?, inv)?
        }
        Expr::Log(a, b) => {
            let (a, b) = (num(a, env)?, num(b, env)?);
            div(call(C64::ln, a)?, call(C64::ln, b)?)?
        }
        Expr::Binom(n, k) => binom(num(n, env)?, num(k, env)?, k)?,
        Expr::Call(f, a) => {
            let a = num(a, env)?;
            let one = C64::new(1.0, 0.0);
            match f {
                Fun::Sin => call(C64::sin, a)?,
                Fun::Cos => call(C64::cos, a)?,
                Fun::Tan => call(C64::tan, a)?,
                Fun::Csc => call(|z| one / z.sin(), a)?,
                Fun::Sec => call(|z| one / z.cos(), a)?,
                Fun::Cot => call(|z| z.cos() / z.sin(), a)?,
                Fun::Asin => call(C64::asin, a)?,
                Fun::Acos => call(C64::acos, a)?,
                Fun::Atan => call(C64::atan, a)?,
                Fun::Acsc => call(|z| (one / z).asin(), a)?,
                Fun::Asec => call(|z| (one / z).acos(), a)?,
                Fun::Acot => call(|z| (one / z).atan(), a)?,
                Fun::Sinh => call(C64::sinh, a)?,
                Fun::Cosh => call(C64::cosh, a)?,
                Fun::Tanh => call(C64::tanh, a)?,
                Fun::Asinh => call(C64::asinh, a)?,
                Fun::Acosh => call(C64::acosh, a)?,
                Fun::Atanh => call(C64::atanh, a)?,
                Fun::Exp => call(C64::exp, a)?,
                Fun::Sqrt => call(C64::sqrt, a)?,
                Fun::Abs => Num {
                    v: C64::new(a.v.norm(), 0.0),
                    m: a.m,
                },
                Fun::Conj => Num {
                    v: a.v.conj(),
                    m: a.m,
                },
                // sympy's floor/ceiling of a complex number act on both parts.
                Fun::Floor => leaf(C64::new(a.v.re.floor(), a.v.im.floor())),
                Fun::Ceil => leaf(C64::new(a.v.re.ceil(), a.v.im.ceil())),
                Fun::Factorial => call(|z| gamma(z + 1.0), a)?,
            }
        }
        Expr::Apply(name, args) => {
            // exp(sum c_j a_j) + d with constants drawn from the name: a fixed function that
            // no expression of ours equals by accident.
            let seed = fnv(name) ^ (args.len() as u64).wrapping_mul(0x9E37);
            let mut s = Num {
                v: random_point(seed),
                m: 0.0,
            };
            for (j, a) in args.iter().enumerate() {
                let a = num(a, env)?;
                let c = random_point(seed ^ splitmix(j as u64 + 7));
                s = Num {
                    v: s.v + c * a.v,
                    m: s.m + c.norm() * a.m,
                };
            }
            let v = s.v.exp() + random_point(seed ^ 0xABCD);
            Num {
                v,
                m: v.norm() + s.v.exp().norm() * s.m,
            }
        }
    };
    finite(r.v).then_some(r)
}

pub(super) fn div(a: Num, b: Num) -> Option<Num> {
    let bn = b.v.norm();
    if bn == 0.0 {
        return None;
    }
    let v = a.v / b.v;
    Some(Num {
        v,
        m: (a.m + v.norm() * b.m) / bn,
    })
}

pub(super) fn powi(a: Num, k: i32) -> Option<Num> {
    if k == 0 {
        return Some(leaf(C64::new(1.0, 0.0)));
    }
    let an = a.v.norm();
    if an == 0.0 {
        return (k > 0).then_some(Num {
            v: C64::new(0.0, 0.0),
            m: 0.0,
        });
    }
    let v = a.v.powi(k);
    Some(Num {
        v,
        m: v.norm() * (1.0 + f64::from(k).abs() * a.m / an),
    })
}

pub(super) fn powc(a: Num, b: Num) -> Option<Num> {
    let an = a.v.norm();
    if an == 0.0 {
        // 0^w is 0 for Re w > 0 (sympy: zoo or nan otherwise).
        return (b.v.re > 0.0).then_some(Num {
            v: C64::new(0.0, 0.0),
            m: 0.0,
        });
    }
    let ln = a.v.ln();
    let v = (b.v * ln).exp();
    Some(Num {
        v,
        m: v.norm() * (1.0 + b.v.norm() * a.m / an + ln.norm() * b.m),
    })
}

/// `binomial(n, k)`: a product when `k` is a small non-negative integer, gamma otherwise.
pub(super) fn binom(n: Num, k: Num, k_expr: &Expr) -> Option<Num> {
    if let Exact::Value(q) = exact(k_expr, false) {
        if q.is_int() && !q.n.is_negative() && q.n.bits() <= 10 {
            let mut r = leaf(C64::new(1.0, 0.0));
            for i in 0..q.n.to_u32()? {
                let f = f64::from(i);
                let top = Num {
                    v: n.v - f,
                    m: n.m + f,
                };
                r = div(
                    Num {
                        v: r.v * top.v,
                        m: r.m * top.m,
                    },
                    leaf(C64::new(f + 1.0, 0.0)),
                )?;
            }
            return Some(r);
        }
    }
    let one = C64::new(1.0, 0.0);
    let v = gamma(n.v + one) / (gamma(k.v + one) * gamma(n.v - k.v + one));
    finite(v).then_some(Num {
        v,
        m: v.norm() * (1.0 + n.m + k.m),
    })
}

/// The gamma function on complex numbers (Lanczos, g = 7; about 1e-15 relative), exact
/// products for small positive integers.
pub(super) fn gamma(z: C64) -> C64 {
    if z.im == 0.0 && z.re.fract() == 0.0 && z.re >= 1.0 && z.re <= 171.0 {
        return C64::new((1..z.re as u32).map(f64::from).product(), 0.0);
    }
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    let pi = std::f64::consts::PI;
    if z.re < 0.5 {
        return pi / ((pi * z).sin() * gamma(1.0 - z));
    }
    let z = z - 1.0;
    let mut x = C64::new(G[0], 0.0);
    for (i, g) in G.iter().enumerate().skip(1) {
        x += *g / (z + i as f64);
    }
    let t = z + 7.5;
    (2.0 * pi).sqrt() * t.powc(z + 0.5) * (-t).exp() * x
}
