//! Per-sequence key/value cache, in f32 (the reference path) or f16 (half the memory; attention
//! widens to f32 and accumulates in f32). It grows with what is used (not preallocated to the
//! model's maximum context), by at most a quarter over what is held, and refuses, with an
//! error, to grow past its context limit.

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::error::{Error, Result};

/// Element type of the cached keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvDtype {
    #[default]
    F32,
    F16,
}

impl KvDtype {
    pub fn bytes(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 => 2,
        }
    }
}

#[derive(Clone)]
enum Buf {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl Buf {
    fn len(&self) -> usize {
        match self {
            Buf::F32(b) => b.len(),
            Buf::F16(b) => b.len(),
        }
    }
    fn capacity_bytes(&self) -> usize {
        match self {
            Buf::F32(b) => b.capacity() * 4,
            Buf::F16(b) => b.capacity() * 2,
        }
    }
    fn truncate(&mut self, n: usize) {
        match self {
            Buf::F32(b) => b.truncate(n),
            Buf::F16(b) => b.truncate(n),
        }
    }
    /// Grow by 1/4 (not Vec's doubling) so that capacity tracks use; never past `max`.
    fn reserve(&mut self, extra: usize, max: usize) {
        fn grow<T>(b: &mut Vec<T>, extra: usize, max: usize) {
            let need = b.len() + extra;
            if need > b.capacity() {
                let target = (b.capacity() + b.capacity() / 4).min(max).max(need);
                b.reserve_exact(target - b.len());
            }
        }
        match self {
            Buf::F32(b) => grow(b, extra, max),
            Buf::F16(b) => grow(b, extra, max),
        }
    }
    fn extend(&mut self, x: &[f32]) {
        match self {
            Buf::F32(b) => b.extend_from_slice(x),
            Buf::F16(b) => {
                let start = b.len();
                b.resize(start + x.len(), f16::ZERO);
                b[start..].convert_from_f32_slice(x);
            }
        }
    }
}

/// One layer's keys and values, `[len, kv_dim]` each.
pub enum KvView<'a> {
    F32(&'a [f32], &'a [f32]),
    F16(&'a [f16], &'a [f16]),
}

pub struct KvCache {
    /// Per layer: `[len, kv_dim]` keys and values.
    k: Vec<Buf>,
    v: Vec<Buf>,
    kv_dim: usize,
    len: usize,
    ctx: usize,
    dtype: KvDtype,
    /// Dynamic-NTK rope state of this sequence: transformers' `max_seq_len_cached`
    /// (0 = not grown yet).
    pub(crate) rope_len: usize,
}

impl KvCache {
    /// An f32 cache.
    pub fn new(n_layers: usize, kv_dim: usize, ctx: usize) -> Self {
        Self::with_dtype(n_layers, kv_dim, ctx, KvDtype::F32)
    }

    pub fn with_dtype(n_layers: usize, kv_dim: usize, ctx: usize, dtype: KvDtype) -> Self {
        let empty = match dtype {
            KvDtype::F32 => Buf::F32(Vec::new()),
            KvDtype::F16 => Buf::F16(Vec::new()),
        };
        KvCache {
            k: vec![empty.clone(); n_layers],
            v: vec![empty; n_layers],
            kv_dim,
            len: 0,
            ctx,
            dtype,
            rope_len: 0,
        }
    }

    pub fn dtype(&self) -> KvDtype {
        self.dtype
    }

    /// Bytes `tokens` tokens take in a cache of this shape and type (K and V, every layer).
    pub fn bytes_for(n_layers: usize, kv_dim: usize, tokens: usize, dtype: KvDtype) -> usize {
        2 * n_layers * kv_dim * tokens * dtype.bytes()
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
        self.k.iter().chain(&self.v).map(Buf::capacity_bytes).sum()
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
        let max = self.ctx * self.kv_dim;
        for (b, x) in [(&mut self.k[layer], k), (&mut self.v[layer], v)] {
            b.reserve(x.len(), max);
            b.extend(x);
        }
    }

    pub(crate) fn layer(&self, layer: usize) -> KvView<'_> {
        match (&self.k[layer], &self.v[layer]) {
            (Buf::F32(k), Buf::F32(v)) => KvView::F32(k, v),
            (Buf::F16(k), Buf::F16(v)) => KvView::F16(k, v),
            _ => unreachable!("K and V of a layer share one dtype"),
        }
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

    /// A new cache (same context limit and type) holding a copy of the first `len` tokens:
    /// prefix caching, where another sequence that starts with the same tokens goes on from
    /// there.
    pub fn clone_prefix(&self, len: usize) -> KvCache {
        let len = len.min(self.len);
        let n = len * self.kv_dim;
        let cut = |b: &Buf| match b {
            Buf::F32(v) => Buf::F32(v[..n].to_vec()),
            Buf::F16(v) => Buf::F16(v[..n].to_vec()),
        };
        KvCache {
            k: self.k.iter().map(cut).collect(),
            v: self.v.iter().map(cut).collect(),
            kv_dim: self.kv_dim,
            len,
            ctx: self.ctx,
            dtype: self.dtype,
            rope_len: self.rope_len,
        }
    }

    /// Empty the cache for a new sequence (this also resets dynamic-NTK rope state).
    pub fn clear(&mut self) {
        self.truncate(0);
        self.rope_len = 0;
    }
}
