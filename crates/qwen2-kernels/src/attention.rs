//! Causal grouped-query attention over a KV cache, flash style (FlashAttention-2's loop order,
//! as llama.cpp's CPU `flash_attn_ext`): keys and values are walked in blocks, each block is
//! widened to f32 once per (KV head, query tile) and reused by every query head of the GQA
//! group and every query row of the tile; scores are a small GEMM, softmax is online (running
//! max and sum in f32) and P·V accumulates into f32. Nothing quadratic is ever materialised.
//!
//! Numerics are fixed per query row (batch invariance, issue 5): keys are cut into blocks at
//! fixed ABSOLUTE positions (multiples of [`KEY_BLOCK`]); for each block a row gets a partial
//! result `(max, sum, Σ p·v)` computed by code that does not depend on which other rows share
//! the call, and the partials are folded left to right in block order. So a row's output is
//! bitwise the same whether it comes alone (decode), in a prompt chunk of any size, in any
//! tile, or through the split-over-keys schedule that keeps threads busy when one row meets
//! few KV heads. (It does depend on the ISA and on `head_dim % 8`, which pick the kernel.)

use std::cell::RefCell;

use rayon::prelude::*;

use crate::isa::{detected_isa, Isa};
use crate::KernelError;

/// Keys per block. Block boundaries sit at multiples of this absolute key position.
pub const KEY_BLOCK: usize = 64;
const KB: usize = KEY_BLOCK;
/// Scores are computed for 16 keys at a time (two 8-lane registers); a block's key count is
/// padded to this with zero keys whose scores are masked.
const KEY_GROUP: usize = 16;
/// Query rows per tile at most (bounds the per-thread scratch).
const MAX_TILE_ROWS: usize = 32;
/// `Schedule::Auto` splits over keys only for calls this small (decode, a few draft rows).
const SPLIT_MAX_ROWS: usize = 4;

pub(crate) const Q8_BLOCK: usize = 32;
pub(crate) const Q8_BLOCK_BYTES: usize = 34;

/// One layer's cached keys or values, `[len, n_kv * head_dim]` values laid out row after row.
#[derive(Clone, Copy, Debug)]
pub enum KvData<'a> {
    F32(&'a [f32]),
    F16(&'a [half::f16]),
    /// ggml Q8_0 blocks (f16 scale, 32 i8) over the flat values: value `i` is in block
    /// `i / 32`. A head's slice may start inside a block when `head_dim < 32`.
    Q8_0(&'a [u8]),
}

/// The shape of one attention call: `n_new` query rows at positions `pos0..pos0 + n_new`
/// against the cache's first `pos0 + n_new` keys (the new ones already appended).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub n_new: usize,
    pub pos0: usize,
    pub n_heads: usize,
    pub n_kv: usize,
    pub head_dim: usize,
    /// Sliding window: the query at position `i` sees key `j` iff `j <= i` and `i - j < window`.
    pub window: Option<usize>,
}

impl AttnShape {
    /// Keys `[first, end)` visible to query row `t`.
    fn visible(&self, t: usize) -> (usize, usize) {
        let pos = self.pos0 + t;
        let first = self.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        (first, pos + 1)
    }

    fn group(&self) -> usize {
        self.n_heads / self.n_kv
    }

    /// The absolute key blocks row `t` reads, in fold order (empty for `window == 0`).
    fn blocks(&self, t: usize) -> std::ops::Range<usize> {
        let (first, end) = self.visible(t);
        if first >= end {
            return 0..0;
        }
        first / KB..(end - 1) / KB + 1
    }
}

/// How the work is spread over threads. Every schedule gives bitwise the same result; only
/// tests pick one other than `Auto`.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Split over keys for decode-sized calls with fewer KV heads than threads, else tiles.
    Auto,
    /// Tasks over (KV head, tile of this many query rows).
    Tiles(usize),
    /// Tasks over (KV head, run of key blocks), this many runs per head, then a merge.
    SplitKeys(usize),
}

/// Causal grouped-query attention (see [`AttnShape`]) with the detected ISA.
///
/// `q`, `out`: `[n_new, n_heads * head_dim]`; `k`, `v`: at least `pos0 + n_new` rows of
/// `n_kv * head_dim`. Scores use `1 / sqrt(head_dim)`; K·Q, softmax and P·V are f32.
pub fn attention(
    q: &[f32],
    k: KvData<'_>,
    v: KvData<'_>,
    out: &mut [f32],
    shape: &AttnShape,
) -> Result<(), KernelError> {
    attention_with_isa(detected_isa(), q, k, v, out, shape)
}

/// [`attention`] on an explicit ISA (for tests and benchmarks); errors if the CPU lacks it.
pub fn attention_with_isa(
    isa: Isa,
    q: &[f32],
    k: KvData<'_>,
    v: KvData<'_>,
    out: &mut [f32],
    shape: &AttnShape,
) -> Result<(), KernelError> {
    attention_scheduled(isa, Schedule::Auto, q, k, v, out, shape)
}

/// [`attention_with_isa`] with an explicit schedule (tests of schedule invariance).
#[doc(hidden)]
pub fn attention_scheduled(
    isa: Isa,
    schedule: Schedule,
    q: &[f32],
    k: KvData<'_>,
    v: KvData<'_>,
    out: &mut [f32],
    shape: &AttnShape,
) -> Result<(), KernelError> {
    isa.check_available()?;
    check_shape(q, k, v, out, shape)?;
    if shape.n_new == 0 {
        return Ok(());
    }
    let call = Call {
        kern: Kernel::pick(isa, shape.head_dim),
        q,
        k,
        v,
        sh: shape,
    };
    let threads = rayon::current_num_threads().max(1);
    let sh = shape;
    match schedule {
        Schedule::Auto => {
            let n_blocks = sh.blocks(0).start..sh.blocks(sh.n_new - 1).end;
            if sh.n_new <= SPLIT_MAX_ROWS && sh.n_kv < threads && n_blocks.len() >= 2 {
                let runs = (2 * threads).div_ceil(sh.n_kv);
                split_keys(&call, runs, out);
            } else {
                let rows = (sh.n_new * sh.n_kv).div_ceil(4 * threads);
                tiles(&call, rows.clamp(1, MAX_TILE_ROWS), out);
            }
        }
        Schedule::Tiles(rows) => tiles(&call, rows.max(1), out),
        Schedule::SplitKeys(runs) => split_keys(&call, runs.max(1), out),
    }
    Ok(())
}

fn shape_err(what: &'static str, expected: usize, got: usize) -> KernelError {
    KernelError::AttentionShape {
        what,
        expected,
        got,
    }
}

fn check_shape(
    q: &[f32],
    k: KvData<'_>,
    v: KvData<'_>,
    out: &[f32],
    sh: &AttnShape,
) -> Result<(), KernelError> {
    if sh.head_dim == 0 || sh.n_kv == 0 {
        return Err(shape_err("head_dim and n_kv (non-zero)", 1, 0));
    }
    if sh.n_heads == 0 || !sh.n_heads.is_multiple_of(sh.n_kv) {
        return Err(shape_err(
            "n_heads (a non-zero multiple of n_kv)",
            sh.n_kv,
            sh.n_heads,
        ));
    }
    let overflow = || KernelError::Overflow {
        what: "attention sizes",
    };
    let q_len = sh
        .n_new
        .checked_mul(sh.n_heads)
        .and_then(|x| x.checked_mul(sh.head_dim))
        .ok_or_else(overflow)?;
    if q.len() != q_len {
        return Err(shape_err("q values", q_len, q.len()));
    }
    if out.len() != q_len {
        return Err(shape_err("out values", q_len, out.len()));
    }
    let kv_values = (sh.pos0 + sh.n_new)
        .checked_mul(sh.n_kv * sh.head_dim)
        .ok_or_else(overflow)?;
    for (what, kv) in [
        ("k cache units (values, or q8_0 bytes)", k),
        ("v cache units (values, or q8_0 bytes)", v),
    ] {
        let (need, got) = match kv {
            KvData::F32(s) => (kv_values, s.len()),
            KvData::F16(s) => (kv_values, s.len()),
            KvData::Q8_0(s) => (kv_values.div_ceil(Q8_BLOCK) * Q8_BLOCK_BYTES, s.len()),
        };
        if got < need {
            return Err(shape_err(what, need, got));
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Kernel selection: the block operations, scalar or SIMD.
// ------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    fn pick(isa: Isa, hd: usize) -> Kernel {
        #[cfg(target_arch = "x86_64")]
        if isa >= Isa::Avx2 && hd.is_multiple_of(8) {
            return Kernel::Avx2;
        }
        let _ = (isa, hd);
        Kernel::Scalar
    }

    /// Rows `row0..row0 + n` of one head (element offset `off` inside a row of `stride`) into
    /// `dst` as `[n, hd]` f32.
    #[allow(clippy::too_many_arguments)]
    fn load_rows(
        self,
        kv: KvData<'_>,
        row0: usize,
        n: usize,
        stride: usize,
        off: usize,
        hd: usize,
        dst: &mut [f32],
    ) {
        let start = row0 * stride + off;
        match self {
            Kernel::Scalar => scalar::load_rows(kv, start, n, stride, hd, dst),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => crate::x86::avx2_attn::load_rows(kv, start, n, stride, hd, dst),
        }
    }

    /// `[nk, hd]` keys into `[hd, KEY_BLOCK]` (key index fastest) for the score GEMM.
    fn pack_keys(self, kb: &[f32], nk: usize, hd: usize, kt: &mut [f32]) {
        match self {
            Kernel::Scalar => scalar::pack_keys(kb, nk, hd, kt),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => crate::x86::avx2_attn::pack_keys(kb, nk, hd, kt),
        }
    }

    /// `s[i][j] = Σ_d qs[i][d] · kt[d][j]` for `nq` queries and keys `0..nk` (`s` rows are
    /// `KEY_BLOCK` long). Each score's summation order depends only on `hd`.
    fn scores(self, qs: &[f32], nq: usize, hd: usize, kt: &[f32], nk: usize, s: &mut [f32]) {
        match self {
            Kernel::Scalar => scalar::scores(qs, nq, hd, kt, nk, s),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => crate::x86::avx2_attn::scores(qs, nq, hd, kt, nk, s),
        }
    }

    /// Over keys `lo..hi` of one score row: its max `m`, `p = exp(s - m)` in place, and `Σ p`.
    fn block_softmax(self, s: &mut [f32], lo: usize, hi: usize) -> (f32, f32) {
        match self {
            Kernel::Scalar => scalar::block_softmax(s, lo, hi),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => crate::x86::avx2_attn::block_softmax(s, lo, hi),
        }
    }

    /// `acc[i][d] = Σ_{j in lo..hi} p[i][j] · vb[j][d]` for `nq` probability rows.
    #[allow(clippy::too_many_arguments)]
    fn weighted_values(
        self,
        p: &[f32],
        nq: usize,
        lo: usize,
        hi: usize,
        vb: &[f32],
        hd: usize,
        acc: &mut [f32],
    ) {
        match self {
            Kernel::Scalar => scalar::weighted_values(p, nq, lo, hi, vb, hd, acc),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => crate::x86::avx2_attn::weighted_values(p, nq, lo, hi, vb, hd, acc),
        }
    }

    /// `o = o · c_old + acc · c_new`.
    fn rescale_add(self, o: &mut [f32], acc: &[f32], c_old: f32, c_new: f32) {
        match self {
            Kernel::Scalar => scalar::rescale_add(o, acc, c_old, c_new),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => crate::x86::avx2_attn::rescale_add(o, acc, c_old, c_new),
        }
    }
}

/// What every task of one call reads: the block kernel, the queries, the cache and the shape.
#[derive(Clone, Copy)]
struct Call<'a> {
    kern: Kernel,
    q: &'a [f32],
    k: KvData<'a>,
    v: KvData<'a>,
    sh: &'a AttnShape,
}

/// The running softmax state of one (row, head): max `m`, sum `l`, unnormalised output `o`.
struct RowState<'a> {
    m: &'a mut f32,
    l: &'a mut f32,
    o: &'a mut [f32],
}

/// Fold one block's partial `(m_b, l_b, acc)` into a row's state. The one place both schedules
/// combine blocks, so they combine them identically.
#[inline]
fn fold(kern: Kernel, st: RowState<'_>, (m_b, l_b): (f32, f32), acc: &[f32]) {
    let m = st.m.max(m_b);
    // One of the two is exp(0) = 1: skip that libm call (same bits).
    let exp = |x: f32| if x == 0.0 { 1.0 } else { x.exp() };
    let c_old = exp(*st.m - m);
    let c_new = exp(m_b - m);
    *st.l = *st.l * c_old + l_b * c_new;
    *st.m = m;
    kern.rescale_add(st.o, acc, c_old, c_new);
}

/// `dst = o / l` (zero where no key was visible: a zero window).
#[inline]
fn finish(o: &[f32], l: f32, dst: &mut [f32]) {
    let inv = if l > 0.0 { 1.0 / l } else { 0.0 };
    for (d, &x) in dst.iter_mut().zip(o) {
        *d = x * inv;
    }
}

/// The query vectors of KV head `h`'s group for rows `t0..t1`, pre-scaled by `1/sqrt(hd)`, as
/// `[(t - t0) * group + gi][hd]`.
fn load_queries(q: &[f32], sh: &AttnShape, h: usize, t0: usize, t1: usize, qs: &mut [f32]) {
    let (hd, g) = (sh.head_dim, sh.group());
    let scale = 1.0 / (hd as f32).sqrt();
    let q_row = sh.n_heads * hd;
    for t in t0..t1 {
        let src = &q[t * q_row + h * g * hd..][..g * hd];
        let dst = &mut qs[(t - t0) * g * hd..][..g * hd];
        for (d, &x) in dst.iter_mut().zip(src) {
            *d = x * scale;
        }
    }
}

/// Per-task buffers for `nq` query vectors, carved from one thread-local allocation.
struct Scratch<'a> {
    /// Running state of the query vectors (tile schedule): output, max, sum.
    o: &'a mut [f32],
    m: &'a mut [f32],
    l: &'a mut [f32],
    qs: &'a mut [f32],
    /// Scores, then probabilities: `[nq][KEY_BLOCK]`.
    s: &'a mut [f32],
    /// The block's keys (`[KEY_BLOCK][hd]`, then packed `[hd][KEY_BLOCK]`) and values.
    kb: &'a mut [f32],
    kt: &'a mut [f32],
    vb: &'a mut [f32],
    /// Block partials per query vector: `Σ p·v`, and `(m_b, l_b)`.
    acc: &'a mut [f32],
    stats: &'a mut [(f32, f32)],
}

impl<'a> Scratch<'a> {
    fn len(nq: usize, hd: usize) -> usize {
        3 * nq * hd + 2 * nq + nq * KB + 3 * KB * hd
    }

    fn carve(buf: &'a mut [f32], stats: &'a mut [(f32, f32)], nq: usize, hd: usize) -> Self {
        let (o, rest) = buf.split_at_mut(nq * hd);
        let (m, rest) = rest.split_at_mut(nq);
        let (l, rest) = rest.split_at_mut(nq);
        let (qs, rest) = rest.split_at_mut(nq * hd);
        let (s, rest) = rest.split_at_mut(nq * KB);
        let (kb, rest) = rest.split_at_mut(KB * hd);
        let (kt, rest) = rest.split_at_mut(KB * hd);
        let (vb, rest) = rest.split_at_mut(KB * hd);
        let acc = &mut rest[..nq * hd];
        Scratch {
            o,
            m,
            l,
            qs,
            s,
            kb,
            kt,
            vb,
            acc,
            stats: &mut stats[..nq],
        }
    }
}

type ScratchBufs = (Vec<f32>, Vec<(f32, f32)>);

thread_local! {
    static SCRATCH: RefCell<ScratchBufs> = const { RefCell::new((Vec::new(), Vec::new())) };
    static PARTIALS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` on this thread's scratch (grown as needed, so steady-state calls allocate nothing);
/// a fresh buffer if it is busy (a nested call on the same thread).
fn with_scratch<R>(nq: usize, hd: usize, f: impl FnOnce(Scratch<'_>) -> R) -> R {
    let len = Scratch::len(nq, hd);
    SCRATCH.with(|c| match c.try_borrow_mut() {
        Ok(mut b) => {
            let (buf, stats) = &mut *b;
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            if stats.len() < nq {
                stats.resize(nq, (0.0, 0.0));
            }
            f(Scratch::carve(buf, stats, nq, hd))
        }
        Err(_) => {
            let (mut buf, mut stats) = (vec![0.0; len], vec![(0.0, 0.0); nq]);
            f(Scratch::carve(&mut buf, &mut stats, nq, hd))
        }
    })
}

/// Widen keys and values `kstart..kend` of KV head `h` into the scratch; keys are zero-padded
/// to a multiple of `KEY_GROUP` and packed for the score GEMM. Returns the padded key count.
fn load_block(
    c: &Call<'_>,
    h: usize,
    (kstart, kend): (usize, usize),
    sc: &mut Scratch<'_>,
) -> usize {
    let Call { kern, k, v, sh, .. } = *c;
    let hd = sh.head_dim;
    let stride = sh.n_kv * hd;
    let nk = kend - kstart;
    let nk_pad = nk.next_multiple_of(KEY_GROUP);
    kern.load_rows(k, kstart, nk, stride, h * hd, hd, sc.kb);
    sc.kb[nk * hd..nk_pad * hd].fill(0.0);
    kern.pack_keys(sc.kb, nk_pad, hd, sc.kt);
    kern.load_rows(v, kstart, nk, stride, h * hd, hd, sc.vb);
    nk_pad
}

/// Keys of the block `kstart..kend` that row `t` sees, relative to `kstart`, if any.
fn row_keys(sh: &AttnShape, t: usize, (kstart, kend): (usize, usize)) -> Option<(usize, usize)> {
    let (first, end) = sh.visible(t);
    let (lo, hi) = (first.max(kstart), end.min(kend));
    (lo < hi).then(|| (lo - kstart, hi - kstart))
}

/// One block's partials for query rows `t0..t1` (scratch rows from 0): `sc.stats` and `sc.acc`
/// of query vector `(t - t0) * group + gi`, for the rows that see the block. Runs of rows that
/// see the same keys (all but the diagonal and window-edge blocks) share one P·V call.
fn block_partials(
    kern: Kernel,
    sh: &AttnShape,
    (t0, t1): (usize, usize),
    keys: (usize, usize),
    sc: &mut Scratch<'_>,
) {
    let (hd, g) = (sh.head_dim, sh.group());
    let mut t = t0;
    while t < t1 {
        let Some(range) = row_keys(sh, t, keys) else {
            t += 1;
            continue;
        };
        let mut run_end = t + 1;
        while run_end < t1 && row_keys(sh, run_end, keys) == Some(range) {
            run_end += 1;
        }
        let (i0, i1) = ((t - t0) * g, (run_end - t0) * g);
        let p = &mut sc.s[i0 * KB..i1 * KB];
        for (i, st) in sc.stats[i0..i1].iter_mut().enumerate() {
            *st = kern.block_softmax(&mut p[i * KB..(i + 1) * KB], range.0, range.1);
        }
        let acc = &mut sc.acc[i0 * hd..i1 * hd];
        kern.weighted_values(p, i1 - i0, range.0, range.1, sc.vb, hd, acc);
        t = run_end;
    }
}

/// Key block `b` for query rows `t0..t1` of KV head `h` (their queries already in `sc.qs`):
/// widen and pack its keys and values, score them, and compute the partials; then `visit` each
/// query vector `i` (scratch index `(t - t0) * group + gi`) whose row sees the block, in order.
/// The one per-block step both schedules run, so they compute blocks identically.
fn each_block_partial(
    c: &Call<'_>,
    h: usize,
    (t0, t1): (usize, usize),
    b: usize,
    sc: &mut Scratch<'_>,
    mut visit: impl FnMut(&mut Scratch<'_>, usize),
) {
    let Call { kern, sh, .. } = *c;
    let (hd, g) = (sh.head_dim, sh.group());
    let keys = (b * KB, ((b + 1) * KB).min(sh.pos0 + t1));
    let nk = load_block(c, h, keys, sc);
    kern.scores(sc.qs, (t1 - t0) * g, hd, sc.kt, nk, sc.s);
    block_partials(kern, sh, (t0, t1), keys, sc);
    for t in t0..t1 {
        if row_keys(sh, t, keys).is_some() {
            for i in (t - t0) * g..(t - t0 + 1) * g {
                visit(sc, i);
            }
        }
    }
}

/// Raw output pointer for tasks that write disjoint `(row, head)` slices of one `&mut [f32]`.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: only used by `tiles`, whose tasks write disjoint slices of an `out` that outlives the
// parallel section.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Method access makes closures capture the whole (Send) wrapper, not the raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Tasks over (KV head, tile of `rows` query rows); each walks its keys block by block.
fn tiles(c: &Call<'_>, rows: usize, out: &mut [f32]) {
    let Call { kern, q, sh, .. } = *c;
    let (hd, g) = (sh.head_dim, sh.group());
    let n_tiles = sh.n_new.div_ceil(rows);
    let out_len = out.len();
    let out_ptr = OutPtr(out.as_mut_ptr());
    (0..sh.n_kv * n_tiles).into_par_iter().for_each(|task| {
        let (h, tile) = (task / n_tiles, task % n_tiles);
        let (t0, t1) = (tile * rows, ((tile + 1) * rows).min(sh.n_new));
        let nq = (t1 - t0) * g;
        with_scratch(nq, hd, |mut sc| {
            sc.o.fill(0.0);
            sc.m.fill(f32::NEG_INFINITY);
            sc.l.fill(0.0);
            load_queries(q, sh, h, t0, t1, sc.qs);
            for b in sh.blocks(t0).start..sh.blocks(t1 - 1).end {
                each_block_partial(c, h, (t0, t1), b, &mut sc, |sc, i| {
                    let st = RowState {
                        m: &mut sc.m[i],
                        l: &mut sc.l[i],
                        o: &mut sc.o[i * hd..(i + 1) * hd],
                    };
                    fold(kern, st, sc.stats[i], &sc.acc[i * hd..(i + 1) * hd]);
                });
            }
            let q_row = sh.n_heads * hd;
            for t in t0..t1 {
                let off = t * q_row + h * g * hd;
                assert!(off + g * hd <= out_len);
                // SAFETY: in bounds (checked above); task (h, tile) is the only writer of heads
                // `h*g..(h+1)*g` of rows `t0..t1`, and `out` is borrowed mutably for the call.
                let dst = unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(off), g * hd) };
                for (gi, d) in dst.chunks_exact_mut(hd).enumerate() {
                    let i = (t - t0) * g + gi;
                    finish(&sc.o[i * hd..(i + 1) * hd], sc.l[i], d);
                }
            }
        });
    });
}

/// Tasks over (KV head, run of key blocks) write per-block partials `[m_b, l_b, acc[hd]]`;
/// then each (row, head) folds its blocks in order. For decode: one row meets only `n_kv`
/// KV heads, fewer than the threads.
fn split_keys(c: &Call<'_>, runs: usize, out: &mut [f32]) {
    let Call { kern, q, sh, .. } = *c;
    let (hd, g, n_new) = (sh.head_dim, sh.group(), sh.n_new);
    let (b0, b1) = (sh.blocks(0).start, sh.blocks(n_new - 1).end);
    if b0 >= b1 {
        out.fill(0.0);
        return;
    }
    let nb = b1 - b0;
    let e = hd + 2;
    // The partial of (KV head h, block b, row t, group head gi) is entry
    // ((h * nb + b - b0) * n_new + t) * g + gi, each `e` long.
    let per_block = n_new * g * e;
    let run_blocks = nb.div_ceil(runs);
    let mut work = |parts: &mut [f32]| {
        parts
            .par_chunks_mut(nb * per_block)
            .enumerate()
            .for_each(|(h, ph)| {
                ph.par_chunks_mut(run_blocks * per_block)
                    .enumerate()
                    .for_each(|(ri, pr)| {
                        with_scratch(n_new * g, hd, |mut sc| {
                            load_queries(q, sh, h, 0, n_new, sc.qs);
                            for (bi, pb) in pr.chunks_mut(per_block).enumerate() {
                                let b = b0 + ri * run_blocks + bi;
                                each_block_partial(c, h, (0, n_new), b, &mut sc, |sc, i| {
                                    let ent = &mut pb[i * e..][..e];
                                    (ent[0], ent[1]) = sc.stats[i];
                                    ent[2..].copy_from_slice(&sc.acc[i * hd..(i + 1) * hd]);
                                });
                            }
                        })
                    })
            });
        let parts = &*parts;
        out.par_chunks_mut(hd).enumerate().for_each(|(i, dst)| {
            let (t, head) = (i / sh.n_heads, i % sh.n_heads);
            let (h, gi) = (head / g, head % g);
            let (mut m, mut l) = (f32::NEG_INFINITY, 0.0f32);
            let mut o_stack = [0f32; 256];
            let mut o_heap = Vec::new();
            let o: &mut [f32] = if hd <= o_stack.len() {
                &mut o_stack[..hd]
            } else {
                o_heap.resize(hd, 0.0);
                &mut o_heap
            };
            for b in sh.blocks(t) {
                let ent = &parts[(((h * nb + b - b0) * n_new + t) * g + gi) * e..][..e];
                let st = RowState {
                    m: &mut m,
                    l: &mut l,
                    o: &mut *o,
                };
                fold(kern, st, (ent[0], ent[1]), &ent[2..]);
            }
            finish(o, l, dst);
        });
    };
    let len = sh.n_kv * nb * per_block;
    PARTIALS.with(|c| match c.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            work(&mut buf[..len]);
        }
        Err(_) => work(&mut vec![0.0; len]),
    });
}

// ------------------------------------------------------------------------------------------
// Scalar twins of the block operations (also the path for head_dim % 8 != 0).
// ------------------------------------------------------------------------------------------

pub(crate) mod scalar {
    use super::{KvData, KB, Q8_BLOCK, Q8_BLOCK_BYTES};

    /// Rows of one head: row `r` starts at flat element `start + r * stride`.
    pub(crate) fn load_rows(
        kv: KvData<'_>,
        start: usize,
        n: usize,
        stride: usize,
        hd: usize,
        dst: &mut [f32],
    ) {
        for (r, d) in dst[..n * hd].chunks_exact_mut(hd).enumerate() {
            let at = start + r * stride;
            match kv {
                KvData::F32(s) => d.copy_from_slice(&s[at..at + hd]),
                KvData::F16(s) => {
                    use half::slice::HalfFloatSliceExt;
                    s[at..at + hd].convert_to_f32_slice(d);
                }
                KvData::Q8_0(s) => q8_values(s, at, d),
            }
        }
    }

    /// Values `at..at + dst.len()` of flat Q8_0 data, which may start or end inside a block.
    pub(crate) fn q8_values(s: &[u8], at: usize, dst: &mut [f32]) {
        let end = at + dst.len();
        let (mut i, mut out) = (at, 0);
        while i < end {
            let blk = &s[(i / Q8_BLOCK) * Q8_BLOCK_BYTES..][..Q8_BLOCK_BYTES];
            let d = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
            let stop = end.min((i / Q8_BLOCK + 1) * Q8_BLOCK);
            for (o, &q) in dst[out..out + (stop - i)]
                .iter_mut()
                .zip(&blk[2 + i % Q8_BLOCK..])
            {
                *o = d * f32::from(q as i8);
            }
            out += stop - i;
            i = stop;
        }
    }

    pub(crate) fn pack_keys(kb: &[f32], nk: usize, hd: usize, kt: &mut [f32]) {
        for (j, row) in kb[..nk * hd].chunks_exact(hd).enumerate() {
            for (d, &x) in row.iter().enumerate() {
                kt[d * KB + j] = x;
            }
        }
    }

    pub(crate) fn scores(qs: &[f32], nq: usize, hd: usize, kt: &[f32], nk: usize, s: &mut [f32]) {
        for i in 0..nq {
            let qi = &qs[i * hd..(i + 1) * hd];
            let si = &mut s[i * KB..i * KB + nk];
            si.fill(0.0);
            for (d, &qd) in qi.iter().enumerate() {
                for (sj, &k) in si.iter_mut().zip(&kt[d * KB..d * KB + nk]) {
                    *sj += qd * k;
                }
            }
        }
    }

    pub(crate) fn block_softmax(s: &mut [f32], lo: usize, hi: usize) -> (f32, f32) {
        let m = s[lo..hi].iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for x in &mut s[lo..hi] {
            *x = (*x - m).exp();
            sum += *x;
        }
        (m, sum)
    }

    pub(crate) fn weighted_values(
        p: &[f32],
        nq: usize,
        lo: usize,
        hi: usize,
        vb: &[f32],
        hd: usize,
        acc: &mut [f32],
    ) {
        for (i, a) in acc[..nq * hd].chunks_exact_mut(hd).enumerate() {
            a.fill(0.0);
            for j in lo..hi {
                let pj = p[i * KB + j];
                for (x, &v) in a.iter_mut().zip(&vb[j * hd..(j + 1) * hd]) {
                    *x += pj * v;
                }
            }
        }
    }

    pub(crate) fn rescale_add(o: &mut [f32], acc: &[f32], c_old: f32, c_new: f32) {
        for (x, &a) in o.iter_mut().zip(acc) {
            *x = *x * c_old + a * c_new;
        }
    }
}
