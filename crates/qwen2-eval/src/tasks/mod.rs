//! The benchmarks, formatted as lm-evaluation-harness formats them (its task yaml files and
//! `utils.py` are the reference: each module names the file it follows).
//!
//! A log-likelihood task turns each document into an [`McItem`]: one (context, continuation)
//! pair per choice. Most tasks share the context and vary the continuation; Winogrande
//! ("partial scoring") varies the context and shares the continuation. Both go through the
//! same scorer, which reuses the KV cache of whatever prefix two requests share.

pub mod arc;
pub mod gsm8k;
pub mod hellaswag;
pub mod humaneval;
pub mod mmlu;
pub mod winogrande;

/// One log-likelihood request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub context: String,
    pub continuation: String,
}

/// A multiple-choice document: the model picks the choice whose continuation it finds most
/// likely.
#[derive(Debug, Clone)]
pub struct McItem {
    /// Stable id of the document (for resuming and for the samples file).
    pub id: String,
    pub requests: Vec<Request>,
    pub gold: usize,
    /// lm-eval's `acc_norm` divides each log-likelihood by the length, in characters, of the
    /// choice text (`doc_to_choice`).
    pub choice_chars: Vec<usize>,
}

/// lm-eval's defaults: `target_delimiter` joins a question and its answer, and
/// `fewshot_delimiter` follows every example.
pub const TARGET_DELIMITER: &str = " ";
pub const FEWSHOT_DELIMITER: &str = "\n\n";

/// Python's `str.capitalize()`: first character upper case, the rest lower case.
pub fn py_capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f
            .to_uppercase()
            .chain(c.flat_map(char::to_lowercase))
            .collect(),
        None => String::new(),
    }
}

/// SplitMix64: a tiny, stable generator (the same numbers on every platform and version).
#[derive(Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0), without modulo bias.
    pub fn below(&mut self, n: usize) -> usize {
        let n = n as u64;
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return (x % n) as usize;
            }
        }
    }
}

/// `k` distinct indices into a pool of `pool` few-shot candidates for item `item`, drawn
/// from a generator seeded by (`seed`, `item`): each item gets its own examples (as with
/// lm-eval's random sampler) and the draw does not depend on which other items run, so
/// `--limit` and resuming give the same prompts. `exclude` keeps an item out of its own
/// examples when pool and test set are the same split.
pub fn sample_fewshot(
    pool: usize,
    k: usize,
    seed: u64,
    item: usize,
    exclude: Option<usize>,
) -> Vec<usize> {
    let avail = pool - usize::from(exclude.is_some_and(|e| e < pool));
    let k = k.min(avail);
    let mut rng = SplitMix64::new(seed ^ (item as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
    let mut out = Vec::with_capacity(k);
    while out.len() < k {
        let i = rng.below(pool);
        if Some(i) != exclude && !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capitalize_like_python() {
        assert_eq!(py_capitalize("then, the MAN"), "Then, the man");
        assert_eq!(py_capitalize(""), "");
    }

    #[test]
    fn fewshot_is_stable_distinct_and_excludes() {
        let a = sample_fewshot(10, 5, 1234, 3, Some(2));
        assert_eq!(a, sample_fewshot(10, 5, 1234, 3, Some(2)));
        assert_eq!(a.len(), 5);
        assert!(!a.contains(&2));
        let mut s = a.clone();
        s.sort();
        s.dedup();
        assert_eq!(s.len(), 5);
        assert_ne!(a, sample_fewshot(10, 5, 1234, 4, Some(2)));
        assert_eq!(sample_fewshot(3, 5, 1, 0, Some(0)).len(), 2);
    }
}
