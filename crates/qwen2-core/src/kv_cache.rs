//! Per-sequence key/value cache. It grows with what is used (not preallocated to the model's
//! maximum context) and refuses, with an error, to grow past its context limit.

use crate::error::{Error, Result};

pub struct KvCache {
    /// Per layer: `[len, kv_dim]` keys and values.
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    kv_dim: usize,
    len: usize,
    ctx: usize,
}

impl KvCache {
    pub fn new(n_layers: usize, kv_dim: usize, ctx: usize) -> Self {
        KvCache {
            k: vec![Vec::new(); n_layers],
            v: vec![Vec::new(); n_layers],
            kv_dim,
            len: 0,
            ctx,
        }
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most tokens this cache may hold.
    pub fn ctx(&self) -> usize {
        self.ctx
    }

    /// Bytes held by the cache's buffers.
    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|b| b.capacity() * 4).sum()
    }

    /// Fail early, before any work, if `n` more tokens would not fit.
    pub fn check_room(&self, n: usize) -> Result<()> {
        if self.len + n > self.ctx {
            return Err(Error::Invalid(format!(
                "the KV cache holds {} of {} tokens; {n} more do not fit (context length exceeded)",
                self.len, self.ctx
            )));
        }
        Ok(())
    }

    /// Append `n` rows of keys and values for `layer` (called once per layer per step, in
    /// layer order; `commit` advances the length afterwards).
    pub(crate) fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        debug_assert_eq!(k.len(), v.len());
        debug_assert_eq!(self.k[layer].len(), self.len * self.kv_dim);
        self.k[layer].extend_from_slice(k);
        self.v[layer].extend_from_slice(v);
    }

    pub(crate) fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.k[layer], &self.v[layer])
    }

    pub(crate) fn commit(&mut self, n: usize) {
        self.len += n;
    }

    /// Undo appends that were not committed (a forward pass that failed half way).
    pub(crate) fn rollback(&mut self) {
        let keep = self.len * self.kv_dim;
        for b in self.k.iter_mut().chain(self.v.iter_mut()) {
            b.truncate(keep);
        }
    }

    /// Drop everything after the first `len` tokens (to rewind a turn, or to branch).
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            for b in self.k.iter_mut().chain(self.v.iter_mut()) {
                b.truncate(len * self.kv_dim);
            }
            self.len = len;
        }
    }

    pub fn clear(&mut self) {
        self.truncate(0);
    }
}
