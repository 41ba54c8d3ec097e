//! Flash attention (`attention.rs`) against a naive f64 reference, SIMD against its scalar
//! twin, and batch invariance: a query row's output is BITWISE the same under every schedule
//! and whether the prompt comes in one call or in chunks of 1, 7 or 64 rows.

use half::f16;
use qwen2_kernels::{
    attention_scheduled, attention_with_isa, available_isas, dequantize_row, quantize_row,
    AttnShape, GgmlType, Isa, KernelError, KvData, Schedule,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Dtype {
    F32,
    F16,
    Q8,
}

/// A cache of `len` rows of `kv_dim` values in one dtype, plus its exact f32 values.
struct Cache {
    f32s: Vec<f32>,
    f16s: Vec<f16>,
    q8: Vec<u8>,
    dtype: Dtype,
}

impl Cache {
    fn new(dtype: Dtype, x: Vec<f32>) -> Self {
        let mut c = Cache {
            f32s: x,
            f16s: Vec::new(),
            q8: Vec::new(),
            dtype,
        };
        match dtype {
            Dtype::F32 => {}
            Dtype::F16 => {
                c.f16s = c.f32s.iter().map(|&v| f16::from_f32(v)).collect();
                c.f32s = c.f16s.iter().map(|v| v.to_f32()).collect();
            }
            Dtype::Q8 => {
                let n = c.f32s.len();
                c.q8 = vec![0u8; GgmlType::Q8_0.row_bytes(n).unwrap()];
                quantize_row(GgmlType::Q8_0, &c.f32s, &mut c.q8).unwrap();
                dequantize_row(GgmlType::Q8_0, &c.q8, &mut c.f32s).unwrap();
            }
        }
        c
    }

    /// The first `rows` rows, as the kernel sees a cache holding that many.
    fn data(&self, rows: usize, kv_dim: usize) -> KvData<'_> {
        let n = rows * kv_dim;
        match self.dtype {
            Dtype::F32 => KvData::F32(&self.f32s[..n]),
            Dtype::F16 => KvData::F16(&self.f16s[..n]),
            Dtype::Q8 => KvData::Q8_0(&self.q8[..n / 32 * 34]),
        }
    }
}

struct Case {
    sh: AttnShape,
    q: Vec<f32>,
    k: Cache,
    v: Cache,
}

fn case(rng: &mut StdRng, sh: AttnShape, dtype: Dtype, q_scale: f32) -> Case {
    let len = sh.pos0 + sh.n_new;
    let kv_dim = sh.n_kv * sh.head_dim;
    let mut r =
        |n: usize, s: f32| -> Vec<f32> { (0..n).map(|_| rng.random_range(-s..s)).collect() };
    let q = r(sh.n_new * sh.n_heads * sh.head_dim, q_scale);
    let k = Cache::new(dtype, r(len * kv_dim, 1.0));
    let v = Cache::new(dtype, r(len * kv_dim, 1.0));
    Case { sh, q, k, v }
}

/// Softmax(q·k / sqrt(hd)) · v in f64 over the exact f32 values of the cache.
fn reference(c: &Case) -> Vec<f32> {
    let sh = &c.sh;
    let (hd, g) = (sh.head_dim, sh.n_heads / sh.n_kv);
    let kv_dim = sh.n_kv * hd;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut out = vec![0f32; c.q.len()];
    for t in 0..sh.n_new {
        let pos = sh.pos0 + t;
        let first = sh.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        for h in 0..sh.n_heads {
            let qv = &c.q[(t * sh.n_heads + h) * hd..][..hd];
            let kvh = h / g;
            let s: Vec<f64> = (first..=pos)
                .map(|j| {
                    let kr = &c.k.f32s[j * kv_dim + kvh * hd..][..hd];
                    qv.iter()
                        .zip(kr)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let p: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let sum: f64 = p.iter().sum();
            let o = &mut out[(t * sh.n_heads + h) * hd..][..hd];
            for (j, pj) in (first..=pos).zip(&p) {
                let vr = &c.v.f32s[j * kv_dim + kvh * hd..][..hd];
                for (od, &vd) in o.iter_mut().zip(vr) {
                    *od += (pj / sum * vd as f64) as f32;
                }
            }
        }
    }
    out
}

fn run(isa: Isa, sched: Schedule, c: &Case) -> Vec<f32> {
    let sh = &c.sh;
    let kv_dim = sh.n_kv * sh.head_dim;
    let rows = sh.pos0 + sh.n_new;
    let mut out = vec![f32::NAN; c.q.len()];
    let (k, v) = (c.k.data(rows, kv_dim), c.v.data(rows, kv_dim));
    attention_scheduled(isa, sched, &c.q, k, v, &mut out, sh).unwrap();
    out
}

fn max_abs(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |m, v| m.max(v.abs()))
}

fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert!(got.iter().all(|v| v.is_finite()));
    let e = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    e / max_abs(want).max(1e-30)
}

/// (head_dim, n_heads, n_kv): GQA groups 1, 2 and 7, tiny and real head sizes; every kv_dim
/// a multiple of 32 so Q8_0 caches work (head_dim 8/16 slices start inside Q8_0 blocks).
const HEADS: [(usize, usize, usize); 7] = [
    (4, 8, 8),
    (8, 8, 4),
    (16, 4, 2),
    (64, 14, 2),
    (128, 4, 2),
    (64, 2, 2),
    (24, 8, 4),
];

fn shapes() -> Vec<AttnShape> {
    let mut v = Vec::new();
    for &(head_dim, n_heads, n_kv) in &HEADS {
        for &(pos0, n_new) in &[(0, 1), (0, 70), (37, 5), (130, 1), (200, 33)] {
            for window in [None, Some(1), Some(17), Some(100)] {
                v.push(AttnShape {
                    n_new,
                    pos0,
                    n_heads,
                    n_kv,
                    head_dim,
                    window,
                });
            }
        }
    }
    v
}

#[test]
fn matches_naive_reference_on_every_isa_dtype_and_shape() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut worst = 0f32;
    for (ci, sh) in shapes().into_iter().enumerate() {
        let dtype = [Dtype::F32, Dtype::F16, Dtype::Q8][ci % 3];
        let c = case(&mut rng, sh, dtype, 2.0);
        let want = reference(&c);
        for isa in available_isas() {
            let got = run(isa, Schedule::Auto, &c);
            let e = rel_err(&got, &want);
            worst = worst.max(e);
            assert!(e < 1e-5, "{isa:?} {dtype:?} {sh:?}: rel err {e}");
        }
    }
    eprintln!("worst rel err vs f64 reference: {worst:e}");
}

#[test]
fn large_scores_stay_finite_and_accurate() {
    // Peaked softmax (scores in the hundreds): the online max must keep exp in range.
    let mut rng = StdRng::seed_from_u64(11);
    for dtype in [Dtype::F32, Dtype::F16, Dtype::Q8] {
        let sh = AttnShape {
            n_new: 20,
            pos0: 150,
            n_heads: 14,
            n_kv: 2,
            head_dim: 64,
            window: None,
        };
        let c = case(&mut rng, sh, dtype, 40.0);
        let want = reference(&c);
        for isa in available_isas() {
            let e = rel_err(&run(isa, Schedule::Auto, &c), &want);
            assert!(e < 1e-5, "{isa:?} {dtype:?}: rel err {e}");
        }
    }
}

#[test]
fn simd_matches_scalar_twin() {
    let isas = available_isas();
    if isas.len() < 2 {
        return;
    }
    let mut rng = StdRng::seed_from_u64(3);
    for (ci, sh) in shapes().into_iter().enumerate() {
        let dtype = [Dtype::Q8, Dtype::F32, Dtype::F16][ci % 3];
        let c = case(&mut rng, sh, dtype, 2.0);
        let scalar = run(Isa::Scalar, Schedule::Auto, &c);
        for &isa in &isas[1..] {
            let e = rel_err(&run(isa, Schedule::Auto, &c), &scalar);
            assert!(e < 1e-5, "{isa:?} {dtype:?} {sh:?}: rel err {e}");
        }
    }
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn every_schedule_gives_the_same_bits() {
    let mut rng = StdRng::seed_from_u64(5);
    for (ci, sh) in shapes().into_iter().enumerate() {
        let dtype = [Dtype::F16, Dtype::Q8, Dtype::F32][ci % 3];
        let c = case(&mut rng, sh, dtype, 2.0);
        for isa in available_isas() {
            let want = bits(&run(isa, Schedule::Auto, &c));
            for sched in [
                Schedule::Tiles(1),
                Schedule::Tiles(3),
                Schedule::Tiles(16),
                Schedule::Tiles(100),
                Schedule::SplitKeys(1),
                Schedule::SplitKeys(2),
                Schedule::SplitKeys(5),
            ] {
                assert_eq!(bits(&run(isa, sched, &c)), want, "{isa:?} {sched:?} {sh:?}");
            }
        }
    }
}

#[test]
fn prompt_in_one_call_or_in_chunks_gives_the_same_bits() {
    let mut rng = StdRng::seed_from_u64(9);
    for &(head_dim, n_heads, n_kv) in &HEADS {
        for window in [None, Some(50)] {
            for dtype in [Dtype::F32, Dtype::F16, Dtype::Q8] {
                let n = 200;
                let sh = AttnShape {
                    n_new: n,
                    pos0: 0,
                    n_heads,
                    n_kv,
                    head_dim,
                    window,
                };
                let c = case(&mut rng, sh, dtype, 2.0);
                let q_row = n_heads * head_dim;
                let kv_dim = n_kv * head_dim;
                for isa in available_isas() {
                    let whole = bits(&run(isa, Schedule::Auto, &c));
                    for chunk in [1, 7, 64] {
                        let mut got = Vec::with_capacity(n * q_row);
                        let mut pos0 = 0;
                        while pos0 < n {
                            let m = chunk.min(n - pos0);
                            let csh = AttnShape {
                                n_new: m,
                                pos0,
                                ..sh
                            };
                            let q = &c.q[pos0 * q_row..(pos0 + m) * q_row];
                            let mut out = vec![0f32; m * q_row];
                            let (k, v) = (c.k.data(pos0 + m, kv_dim), c.v.data(pos0 + m, kv_dim));
                            attention_with_isa(isa, q, k, v, &mut out, &csh).unwrap();
                            got.extend_from_slice(&out);
                            pos0 += m;
                        }
                        assert_eq!(bits(&got), whole, "{isa:?} {dtype:?} chunk {chunk} {sh:?}");
                    }
                }
            }
        }
    }
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let sh = AttnShape {
        n_new: 2,
        pos0: 3,
        n_heads: 4,
        n_kv: 2,
        head_dim: 8,
        window: None,
    };
    let q = vec![0f32; 2 * 4 * 8];
    let kv = vec![0f32; 5 * 2 * 8];
    let mut out = vec![0f32; q.len()];
    let isa = Isa::Scalar;
    let run = |sh: &AttnShape, q: &[f32], k: &[f32], out: &mut [f32]| {
        attention_with_isa(isa, q, KvData::F32(k), KvData::F32(&kv), out, sh)
    };
    assert!(run(&sh, &q, &kv, &mut out).is_ok());
    let short = &kv[..kv.len() - 1];
    assert!(matches!(
        run(&sh, &q, short, &mut out),
        Err(KernelError::AttentionShape { .. })
    ));
    assert!(run(&sh, &q[1..], &kv, &mut out).is_err());
    assert!(run(&sh, &q, &kv, &mut out[1..]).is_err());
    let bad_group = AttnShape { n_kv: 3, ..sh };
    assert!(run(&bad_group, &q, &kv, &mut out).is_err());
    let q8 = vec![0u8; 10];
    assert!(
        attention_with_isa(isa, &q, KvData::Q8_0(&q8), KvData::Q8_0(&q8), &mut out, &sh).is_err()
    );
}
