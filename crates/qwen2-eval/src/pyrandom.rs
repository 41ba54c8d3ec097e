//! CPython's `random.Random` (MT19937), ported exactly, and lm-evaluation-harness's few-shot
//! `ContextSampler` on top of it, so `qwen2 eval` draws the same few-shot examples as lm-eval
//! for the same seed.
//!
//! The reference is CPython 3.11+ (`Modules/_randommodule.c` and `Lib/random.py`):
//! `Random(int)` seeds with `init_by_array` over the integer's 32-bit words,
//! `getrandbits(k)` takes the top `k` bits of each word, `_randbelow(n)` rejects
//! `getrandbits(n.bit_length())` draws until one is below `n`, and `sample(population, k)`
//! picks between a shrinking pool (small populations) and a set of seen indices (large ones).
//! `fixtures/eval/pyrandom.json` holds Python's own outputs to test against.

use crate::error::{Error, Result};

const N: usize = 624;
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// Python's `random.Random`.
#[derive(Clone)]
pub struct PyRandom {
    mt: [u32; N],
    index: usize,
}

impl PyRandom {
    /// `random.Random(seed)` for a non-negative integer seed.
    pub fn new(seed: u64) -> Self {
        // The integer's absolute value as little-endian 32-bit words; zero is one zero word.
        let key: Vec<u32> = if seed >> 32 == 0 {
            vec![seed as u32]
        } else {
            vec![seed as u32, (seed >> 32) as u32]
        };
        let mut r = PyRandom {
            mt: [0; N],
            index: N,
        };
        r.init_by_array(&key);
        r
    }

    fn init_genrand(&mut self, s: u32) {
        self.mt[0] = s;
        for i in 1..N {
            let prev = self.mt[i - 1];
            self.mt[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        self.index = N;
    }

    fn init_by_array(&mut self, key: &[u32]) {
        self.init_genrand(19_650_218);
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            let prev = self.mt[i - 1];
            self.mt[i] = (self.mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                self.mt[0] = self.mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = self.mt[i - 1];
            self.mt[i] = (self.mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_566_083_941))
                .wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                self.mt[0] = self.mt[N - 1];
                i = 1;
            }
        }
        self.mt[0] = 0x8000_0000; // MSB is 1, assuring a non-zero initial array
    }

    fn twist(&mut self) {
        let mag = |y: u32| if y & 1 == 0 { 0 } else { MATRIX_A };
        for kk in 0..N {
            let y = (self.mt[kk] & UPPER_MASK) | (self.mt[(kk + 1) % N] & LOWER_MASK);
            self.mt[kk] = self.mt[(kk + M) % N] ^ (y >> 1) ^ mag(y);
        }
        self.index = 0;
    }

    /// `genrand_uint32`: the next tempered 32-bit word.
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `getrandbits(k)` for `k <= 64`: words fill the result from the least significant end,
    /// and the last word keeps only its top bits.
    pub fn getrandbits(&mut self, k: u32) -> u64 {
        assert!(k <= 64, "getrandbits({k}): at most 64 bits here");
        if k == 0 {
            return 0;
        }
        if k <= 32 {
            return u64::from(self.next_u32() >> (32 - k));
        }
        let lo = u64::from(self.next_u32());
        let hi = u64::from(self.next_u32() >> (64 - k));
        lo | (hi << 32)
    }

    /// `random()`: a float in [0, 1) with 53 random bits.
    pub fn random(&mut self) -> f64 {
        let a = self.next_u32() >> 5;
        let b = self.next_u32() >> 6;
        (f64::from(a) * 67_108_864.0 + f64::from(b)) * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `_randbelow(n)` (the getrandbits variant) for `n > 0`.
    pub fn randbelow(&mut self, n: u64) -> u64 {
        assert!(n > 0, "randbelow(0)");
        let k = 64 - n.leading_zeros();
        loop {
            let r = self.getrandbits(k);
            if r < n {
                return r;
            }
        }
    }

    /// `sample(range(n), k)`: `k` distinct indices below `n`, in draw order.
    pub fn sample(&mut self, n: u64, k: usize) -> Result<Vec<u64>> {
        if k as u64 > n {
            return Err(Error::Invalid(format!(
                "sample larger than population: {k} of {n}"
            )));
        }
        let mut out = Vec::with_capacity(k);
        if n <= sample_setsize(k) {
            // A pool that shrinks by moving its last element into each drawn slot.
            let mut pool: Vec<u64> = (0..n).collect();
            for i in 0..k as u64 {
                let j = self.randbelow(n - i) as usize;
                out.push(pool[j]);
                pool[j] = pool[(n - i - 1) as usize];
            }
        } else {
            let mut seen = std::collections::HashSet::with_capacity(k);
            for _ in 0..k {
                let mut j = self.randbelow(n);
                while !seen.insert(j) {
                    j = self.randbelow(n);
                }
                out.push(j);
            }
        }
        Ok(out)
    }
}

/// `random.sample`'s threshold between its two methods: `21`, plus
/// `4 ** ceil(log(3k, 4))` when `k > 5` (3k is never a power of 4, so rounding in `log`
/// cannot move the ceiling).
fn sample_setsize(k: usize) -> u64 {
    let mut setsize = 21u64;
    if k > 5 {
        let e = ((k as f64 * 3.0).ln() / 4f64.ln()).ceil() as u32;
        setsize = setsize.saturating_add(4u64.saturating_pow(e));
    }
    setsize
}

/// lm-eval's `ContextSampler` (`lm_eval/api/samplers.py`): one generator, seeded once with
/// the few-shot seed (`--fewshot_random_seed`, default 1234), draws each document's examples
/// in document order, so the examples of document `i` depend on every draw before it (and
/// `--limit N` keeps the first `N` documents' prompts unchanged).
pub struct ContextSampler {
    rnd: PyRandom,
}

impl ContextSampler {
    pub fn new(seed: u64) -> Self {
        ContextSampler {
            rnd: PyRandom::new(seed),
        }
    }

    /// Indices of `n` examples from a pool of `pool` documents.
    ///
    /// `eval_doc` is `Some` when lm-eval passes the evaluated document (its few-shot split
    /// equals its test split, which is also true when both are unset, as for HellaSwag and
    /// Winogrande): it then draws `n + 1` and drops every drawn document equal to the
    /// evaluated one (the closure says which are), keeping the first `n`; if that leaves
    /// fewer than `n`, it draws again from the pool without them. lm-eval refuses pools
    /// smaller than the draw; here the draw shrinks to the pool instead.
    pub fn sample(
        &mut self,
        pool: usize,
        n: usize,
        eval_doc: Option<&dyn Fn(usize) -> bool>,
    ) -> Vec<usize> {
        if n == 0 {
            return Vec::new();
        }
        let draw = |rnd: &mut PyRandom, pool: usize, k: usize| -> Vec<usize> {
            rnd.sample(pool as u64, k.min(pool))
                .unwrap_or_default()
                .into_iter()
                .map(|j| j as usize)
                .collect()
        };
        let Some(is_eval_doc) = eval_doc else {
            return draw(&mut self.rnd, pool, n);
        };
        let res: Vec<usize> = draw(&mut self.rnd, pool, n + 1)
            .into_iter()
            .filter(|&j| !is_eval_doc(j))
            .take(n)
            .collect();
        if res.len() >= n {
            return res;
        }
        let rest: Vec<usize> = (0..pool).filter(|&j| !is_eval_doc(j)).collect();
        draw(&mut self.rnd, rest.len(), n)
            .into_iter()
            .map(|j| rest[j])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value as Json;

    fn fixture() -> Json {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/eval/pyrandom.json"
        );
        let text = std::fs::read_to_string(path).expect("fixtures/eval/pyrandom.json");
        serde_json::from_str(&text).expect("valid JSON")
    }

    fn u64s(v: &Json) -> Vec<u64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect()
    }

    #[test]
    fn matches_cpython() {
        let doc = fixture();
        let cases = doc["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 8);
        for c in cases {
            let seed = c["seed"].as_u64().unwrap();
            let mut r = PyRandom::new(seed);
            let words: Vec<u64> = (0..8).map(|_| r.getrandbits(32)).collect();
            assert_eq!(words, u64s(&c["getrandbits32"]), "seed {seed}");

            let mut r = PyRandom::new(seed);
            for kv in c["getrandbits_mixed"].as_array().unwrap() {
                let k = kv[0].as_u64().unwrap() as u32;
                assert_eq!(
                    r.getrandbits(k),
                    kv[1].as_u64().unwrap(),
                    "seed {seed} k {k}"
                );
            }

            let mut r = PyRandom::new(seed);
            for x in u64s(&c["random_2p53"]) {
                assert_eq!(
                    r.random() * 9_007_199_254_740_992.0,
                    x as f64,
                    "seed {seed}"
                );
            }

            let mut r = PyRandom::new(seed);
            for nv in c["randbelow"].as_array().unwrap() {
                let n = nv[0].as_u64().unwrap();
                assert_eq!(r.randbelow(n), nv[1].as_u64().unwrap(), "seed {seed} n {n}");
            }

            for chain in c["chains"].as_array().unwrap() {
                let mut r = PyRandom::new(seed);
                for call in chain.as_array().unwrap() {
                    let (n, k) = (call[0].as_u64().unwrap(), call[1].as_u64().unwrap());
                    let got = r.sample(n, k as usize).unwrap();
                    assert_eq!(got, u64s(&call[2]), "seed {seed} sample({n}, {k})");
                }
            }
        }
    }

    #[test]
    fn setsize_rule() {
        assert_eq!(sample_setsize(0), 21);
        assert_eq!(sample_setsize(5), 21);
        assert_eq!(sample_setsize(6), 21 + 64);
        assert_eq!(sample_setsize(21), 21 + 64);
        assert_eq!(sample_setsize(22), 21 + 256);
        assert_eq!(sample_setsize(25), 21 + 256);
        assert_eq!(sample_setsize(85), 21 + 256);
        assert_eq!(sample_setsize(86), 21 + 1024);
    }

    #[test]
    fn too_large_a_sample_is_an_error() {
        assert!(PyRandom::new(1).sample(3, 4).is_err());
        assert_eq!(PyRandom::new(1).sample(0, 0).unwrap(), Vec::<u64>::new());
    }

    #[test]
    fn context_sampler_drops_the_eval_doc() {
        // Without an eval doc the sampler is `sample(pool, n)`; with one, `sample(pool, n+1)`
        // minus the eval doc, truncated to n, from the same generator state.
        let mut plain = PyRandom::new(1234);
        let a = plain.sample(50, 3).unwrap();
        let mut s = ContextSampler::new(1234);
        let got = s.sample(50, 3, None);
        assert_eq!(got, a.iter().map(|&j| j as usize).collect::<Vec<_>>());

        let mut plain = PyRandom::new(1234);
        let b: Vec<usize> = plain
            .sample(50, 4)
            .unwrap()
            .into_iter()
            .map(|j| j as usize)
            .collect();
        let never = |_: usize| false;
        assert_eq!(
            ContextSampler::new(1234).sample(50, 3, Some(&never)),
            b[..3]
        );
        let target = b[1];
        let is_target = move |j: usize| j == target;
        let got = ContextSampler::new(1234).sample(50, 3, Some(&is_target));
        assert_eq!(got, vec![b[0], b[2], b[3]]);
        // Every doc "equal" to the eval doc but two: the fallback draws from those two.
        let only = |j: usize| j != 7 && j != 9;
        let mut got = ContextSampler::new(1).sample(50, 2, Some(&only));
        got.sort();
        assert_eq!(got, vec![7, 9]);
    }
}
