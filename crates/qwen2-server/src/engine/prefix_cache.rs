//! KV of recent prompts (and whole finished sequences), keyed by their tokens. A new request
//! copies the KV of its longest cached prefix and prefills only the rest. Bounded by a token
//! budget; the least recently used entries go first.

use qwen2_core::kv_cache::KvCache;

struct Entry {
    tokens: Vec<u32>,
    cache: KvCache,
    last_used: u64,
}

pub(super) struct PrefixCache {
    entries: Vec<Entry>,
    budget: usize,
    clock: u64,
}

impl PrefixCache {
    pub(super) fn new(budget_tokens: usize) -> Self {
        PrefixCache {
            entries: Vec::new(),
            budget: budget_tokens,
            clock: 0,
        }
    }

    pub(super) fn enabled(&self) -> bool {
        self.budget > 0
    }

    pub(super) fn tokens(&self) -> usize {
        self.entries.iter().map(|e| e.tokens.len()).sum()
    }

    pub(super) fn bytes(&self) -> usize {
        self.entries.iter().map(|e| e.cache.bytes()).sum()
    }

    /// Whether a cached entry already starts with all of `tokens` (or caching is off), so
    /// inserting them would add nothing.
    pub(super) fn covers(&self, tokens: &[u32]) -> bool {
        !self.enabled() || self.entries.iter().any(|e| e.tokens.starts_with(tokens))
    }

    /// The longest cached prefix of `tokens`: its length and a cache holding at least it.
    pub(super) fn lookup(&mut self, tokens: &[u32]) -> Option<(usize, &KvCache)> {
        self.clock += 1;
        let (best, n) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, super::common_prefix(&e.tokens, tokens)))
            .max_by_key(|&(_, n)| n)?;
        if n == 0 {
            return None;
        }
        let e = &mut self.entries[best];
        e.last_used = self.clock;
        Some((n, &e.cache))
    }

    /// Keep `cache` (holding exactly `tokens`), dropping entries it covers and then the least
    /// recently used ones while over budget.
    pub(super) fn insert(&mut self, mut tokens: Vec<u32>, mut cache: KvCache) {
        if !self.enabled() || tokens.is_empty() {
            return;
        }
        debug_assert_eq!(tokens.len(), cache.len());
        if tokens.len() > self.budget {
            tokens.truncate(self.budget);
            cache = cache.clone_prefix(self.budget);
        }
        self.clock += 1;
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.tokens.starts_with(&tokens))
        {
            e.last_used = self.clock;
            return;
        }
        self.entries.retain(|e| !tokens.starts_with(&e.tokens));
        self.entries.push(Entry {
            tokens,
            cache,
            last_used: self.clock,
        });
        while self.tokens() > self.budget {
            let Some(oldest) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i)
            else {
                break;
            };
            self.entries.swap_remove(oldest);
        }
    }
}
