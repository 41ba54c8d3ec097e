//! Per-sequence key/value cache, in f32 (the reference path), f16 (half the memory) or ggml
//! Q8_0 (32 values + an f16 scale per block: 34 bytes per 32 values, 53% of f16). Attention
//! widens each row to f32 as it reads it and keeps K·Q, softmax and sums in f32. It grows with what is used (not preallocated to the
//! model's maximum context), by at most a quarter over what is held, and refuses, with an
//! error, to grow past its context limit.

use half::f16;
use half::slice::HalfFloatSliceExt;
use qwen2_kernels::{quantize_row, GgmlType};

use crate::error::{Error, Result};

/// Element type of the cached keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvDtype {
    #[default]
    F32,
    F16,
    /// ggml Q8_0 blocks along each `kv_dim` row (which must be a multiple of 32).
    Q8_0,
}

/// Values per Q8_0 block, and bytes per block (f16 scale + 32 i8).
pub(crate) const Q8_BLOCK: usize = 32;
pub(crate) const Q8_BLOCK_BYTES: usize = 34;

impl KvDtype {
    /// Bytes one cached row of `kv_dim` values takes (K or V, one layer, one token).
    pub fn row_bytes(self, kv_dim: usize) -> usize {
        match self {
            KvDtype::F32 => 4 * kv_dim,
            KvDtype::F16 => 2 * kv_dim,
            KvDtype::Q8_0 => kv_dim.div_ceil(Q8_BLOCK) * Q8_BLOCK_BYTES,
        }
    }

    /// Whether rows of `kv_dim` values can be stored in this type.
    pub fn check(self, kv_dim: usize) -> Result<()> {
        if self == KvDtype::Q8_0 && !kv_dim.is_multiple_of(Q8_BLOCK) {
            return Err(Error::Invalid(format!(
                "a q8_0 KV cache needs a KV row length (num_key_value_heads * head_dim) that is a \
                 multiple of {Q8_BLOCK}; this model's is {kv_dim}: use the f16 or f32 KV cache"
            )));
        }
        Ok(())
    }

    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F32 => "f32",
            KvDtype::F16 => "f16",
            KvDtype::Q8_0 => "q8_0",
        }
    }
}

impl std::str::FromStr for KvDtype {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(KvDtype::F32),
            "f16" => Ok(KvDtype::F16),
            "q8_0" | "q8" => Ok(KvDtype::Q8_0),
            _ => Err(Error::Invalid(format!(
                "unknown KV cache type {s:?}; supported: f16, q8_0, f32"
            ))),
        }
    }
}

/// Lengths are in the buffer's own units: values for f32/f16, bytes for Q8_0.
#[derive(Clone)]
enum Buf {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Q8(Vec<u8>),
}

impl Buf {
    fn len(&self) -> usize {
        match self {
            Buf::F32(b) => b.len(),
            Buf::F16(b) => b.len(),
            Buf::Q8(b) => b.len(),
        }
    }
    fn capacity_bytes(&self) -> usize {
        match self {
            Buf::F32(b) => b.capacity() * 4,
            Buf::F16(b) => b.capacity() * 2,
            Buf::Q8(b) => b.capacity(),
        }
    }
    fn truncate(&mut self, n: usize) {
        match self {
            Buf::F32(b) => b.truncate(n),
            Buf::F16(b) => b.truncate(n),
            Buf::Q8(b) => b.truncate(n),
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
            Buf::Q8(b) => grow(b, extra, max),
        }
    }
    /// Append whole rows (`x.len()` a multiple of the row length, itself a multiple of 32 for
    /// Q8_0, so blocks never straddle rows).
    fn extend(&mut self, x: &[f32]) -> Result<()> {
        match self {
            Buf::F32(b) => b.extend_from_slice(x),
            Buf::F16(b) => {
                let start = b.len();
                b.resize(start + x.len(), f16::ZERO);
                b[start..].convert_from_f32_slice(x);
            }
            Buf::Q8(b) => {
                let start = b.len();
                b.resize(start + KvDtype::Q8_0.row_bytes(x.len()), 0);
                if let Err(e) = quantize_row(GgmlType::Q8_0, x, &mut b[start..]) {
                    b.truncate(start);
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }
}

/// One layer's keys and values, `[len, kv_dim]` each (Q8_0: `[len, kv_dim / 32]` blocks).
pub enum KvView<'a> {
    F32(&'a [f32], &'a [f32]),
    F16(&'a [f16], &'a [f16]),
    Q8_0(&'a [u8], &'a [u8]),
}

pub struct KvCache {
    /// Per layer: `[len, kv_dim]` keys and values.
    k: Vec<Buf>,
    v: Vec<Buf>,
    kv_dim: usize,
    /// Buffer units per token per layer: `kv_dim` values, or Q8_0 bytes.
    row_units: usize,
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
            KvDtype::Q8_0 => Buf::Q8(Vec::new()),
        };
        let row_units = match dtype {
            KvDtype::F32 | KvDtype::F16 => kv_dim,
            KvDtype::Q8_0 => dtype.row_bytes(kv_dim),
        };
        KvCache {
            k: vec![empty.clone(); n_layers],
            v: vec![empty; n_layers],
            kv_dim,
            row_units,
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
        2 * n_layers * tokens * dtype.row_bytes(kv_dim)
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

    /// Fail early, before any work, if `n` more tokens would not fit (or this cache's type
    /// cannot hold this model's rows).
    pub fn check_room(&self, n: usize) -> Result<()> {
        self.dtype.check(self.kv_dim)?;
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
    pub(crate) fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) -> Result<()> {
        debug_assert_eq!(k.len(), v.len());
        debug_assert_eq!(self.k[layer].len(), self.len * self.row_units);
        let max = self.ctx * self.row_units;
        let extra = k.len() / self.kv_dim.max(1) * self.row_units;
        for (b, x) in [(&mut self.k[layer], k), (&mut self.v[layer], v)] {
            b.reserve(extra, max);
            b.extend(x)?;
        }
        Ok(())
    }

    pub(crate) fn layer(&self, layer: usize) -> KvView<'_> {
        match (&self.k[layer], &self.v[layer]) {
            (Buf::F32(k), Buf::F32(v)) => KvView::F32(k, v),
            (Buf::F16(k), Buf::F16(v)) => KvView::F16(k, v),
            (Buf::Q8(k), Buf::Q8(v)) => KvView::Q8_0(k, v),
            _ => unreachable!("K and V of a layer share one dtype"),
        }
    }

    pub(crate) fn commit(&mut self, n: usize) {
        self.len += n;
    }

    /// Undo appends that were not committed (a forward pass that failed half way).
    pub(crate) fn rollback(&mut self) {
        let keep = self.len * self.row_units;
        for b in self.k.iter_mut().chain(self.v.iter_mut()) {
            b.truncate(keep);
        }
    }

    /// Drop everything after the first `len` tokens (to rewind a turn, or to branch).
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            for b in self.k.iter_mut().chain(self.v.iter_mut()) {
                b.truncate(len * self.row_units);
            }
            self.len = len;
        }
    }

    /// A new cache (same context limit and type) holding a copy of the first `len` tokens:
    /// prefix caching, where another sequence that starts with the same tokens goes on from
    /// there.
    pub fn clone_prefix(&self, len: usize) -> KvCache {
        self.clone_prefix_with_room(len, 0)
    }

    /// [`KvCache::clone_prefix`] with room for `room` more tokens allocated up front (a
    /// branch that is about to grow by a known count is not copied again as it grows).
    pub fn clone_prefix_with_room(&self, len: usize, room: usize) -> KvCache {
        let len = len.min(self.len);
        let n = len * self.row_units;
        let cap = (len + room).min(self.ctx) * self.row_units;
        fn copy<T: Copy>(v: &[T], cap: usize) -> Vec<T> {
            let mut out = Vec::with_capacity(cap.max(v.len()));
            out.extend_from_slice(v);
            out
        }
        let cut = |b: &Buf| match b {
            Buf::F32(v) => Buf::F32(copy(&v[..n], cap)),
            Buf::F16(v) => Buf::F16(copy(&v[..n], cap)),
            Buf::Q8(v) => Buf::Q8(copy(&v[..n], cap)),
        };
        KvCache {
            k: self.k.iter().map(cut).collect(),
            v: self.v.iter().map(cut).collect(),
            kv_dim: self.kv_dim,
            row_units: self.row_units,
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
