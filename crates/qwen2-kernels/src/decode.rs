//! Decode rows: `out = W · x` for activation rows whose results must not depend on their batch
//! mates (issue 5: a request's numerics are chosen by the row's role, never by batch size).
//!
//! Every `(weight row, activation row)` pair is computed by the same per-pair sequence of
//! float operations as the single-row `vec_dot` of the ISA, whichever tile it lands in: the
//! multi-row tile kernels (`x86::avx2_decode`) only share loads and weight unpacking between
//! pairs, each pair keeps its own accumulators. So a row's result is bitwise identical alone
//! (GEMV), in a batch of 2..N decode rows, and under any thread count or row chunking.
//!
//! Work split: each task owns a chunk of weight rows and runs every activation row against it,
//! so each weight byte is streamed from memory once per call; within a tile of up to `TILE_C`
//! activation rows, one unpacked weight block is dotted against up to 4 activation rows.

use crate::isa::{vec_dot_fn, Isa, VecDotFn};
use crate::matmul::{OutPtr, QMatRef};
use crate::{scalar, GgmlType};
use rayon::prelude::*;
use std::cell::RefCell;

/// Quantized activation rows: `rows * stride` bytes of `vec_dot_type` blocks, plus (for Q8_0
/// activations) each block's f16 scale widened to f32 once, `d_stride` per row, so tile
/// kernels do not convert the same activation scale once per weight row.
#[derive(Clone, Copy)]
pub(crate) struct ActRows<'a> {
    pub q: &'a [u8],
    pub stride: usize,
    pub d: &'a [f32],
    pub d_stride: usize,
}

impl<'a> ActRows<'a> {
    // (The tiles that count rows are x86_64 only.)
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn rows(&self) -> usize {
        self.q.len() / self.stride.max(1)
    }

    /// Rows `c0..c1`.
    fn sub(&self, c0: usize, c1: usize) -> ActRows<'a> {
        ActRows {
            q: &self.q[c0 * self.stride..c1 * self.stride],
            stride: self.stride,
            d: &self.d
                [(c0 * self.d_stride).min(self.d.len())..(c1 * self.d_stride).min(self.d.len())],
            d_stride: self.d_stride,
        }
    }
}

/// `out[r * nc + c] = vec_dot(n, w row r, act row c)` for the `w.len() / rb` weight rows in `w`
/// and the `nc = acts.rows()` activation rows; bitwise equal to the ISA's `vec_dot`.
pub(crate) type DotTileFn = fn(n: usize, w: &[u8], rb: usize, acts: &ActRows, out: &mut [f32]);

/// Activation rows per tile call (bounds the caller's scratch: `ROWS_PER_TILE * TILE_C`).
const TILE_C: usize = 16;
/// Weight rows per tile call.
const ROWS_PER_TILE: usize = 16;

/// Lays out one quantized activation row of `nb` blocks for a repacked format's tiles.
type PrepFn = fn(nb: usize, a: &[u8], out: &mut [u8]);

#[derive(Clone, Copy)]
enum Kernel {
    Tile(DotTileFn),
    Dot(VecDotFn),
}

/// The tile kernel for `ty` on `isa`, or `None` where the per-pair `vec_dot` is used (scalar,
/// formats without tile kernels, and AVX-512 formats whose `vec_dot` differs from AVX2's).
pub(crate) fn dot_tile_fn(isa: Isa, ty: GgmlType) -> Option<DotTileFn> {
    #[cfg(target_arch = "x86_64")]
    {
        if isa >= Isa::Avx512 && crate::x86::avx512::vec_dot_fn(ty).is_some() {
            return None;
        }
        if isa >= Isa::Avx2 {
            return crate::x86::avx2_decode::dot_tile_fn(ty);
        }
    }
    let _ = (isa, ty);
    None
}

thread_local! {
    static DECODE_BUF: RefCell<(Vec<u8>, Vec<f32>, Vec<u8>)> =
        const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// Most matrices one [`decode_rows_many`] call takes (a layer's q/k/v or gate/up).
pub(crate) const MAX_MATS: usize = 4;

/// `out[b * w.rows + r] = W[r] · x[b]` on the decode-row path. Shapes were checked by the caller
/// (`matmul::check_shapes`), `batch >= 1`, `w.rows >= 1`, `w.cols >= 1`.
pub(crate) fn decode_rows(isa: Isa, w: &QMatRef, x: &[f32], batch: usize, out: &mut [f32]) {
    decode_rows_many(isa, &[*w], x, batch, &mut [out]);
}

/// [`decode_rows`] for up to [`MAX_MATS`] matrices of one type and width against the same
/// activation rows: the rows are quantized (and prepared) once and every matrix's row chunks
/// share one parallel section. Each output is bitwise the separate call's (same tiles, same
/// per-pair arithmetic; only who computes a chunk, and when, differs). Shapes were checked by
/// the caller, as for [`decode_rows`].
pub(crate) fn decode_rows_many(
    isa: Isa,
    ws: &[QMatRef],
    x: &[f32],
    batch: usize,
    outs: &mut [&mut [f32]],
) {
    let ty = ws[0].ty;
    // BF16 rows on AVX-512 BF16: activations rounded to bf16, `bf16dot`'s arithmetic.
    let kernel = if crate::bf16dot::applies(isa, ty, ws[0].cols) {
        Kernel::Tile(crate::bf16dot::decode_tile)
    } else {
        match dot_tile_fn(isa, ty) {
            Some(t) => Kernel::Tile(t),
            None => Kernel::Dot(vec_dot_fn(isa, ty)),
        }
    };
    // Reuse this thread's buffers; if they are already borrowed (a nested matmul on a rayon
    // worker that stole work while waiting), fall back to fresh allocations.
    DECODE_BUF.with(|cell| match cell.try_borrow_mut() {
        Ok(mut bufs) => {
            let (q, d, p) = &mut *bufs;
            run(isa, kernel, ws, x, batch, outs, q, d, p);
        }
        Err(_) => run(
            isa,
            kernel,
            ws,
            x,
            batch,
            outs,
            &mut Vec::new(),
            &mut Vec::new(),
            &mut Vec::new(),
        ),
    });
}

/// One activation row into `vdt` blocks: `scalar::quantize`, or its bitwise AVX2 twin.
fn quantize_act(isa: Isa, vdt: GgmlType, x: &[f32], out: &mut [u8]) {
    if vdt == GgmlType::BF16 {
        return crate::bf16dot::round_row(x, out);
    }
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        match vdt {
            GgmlType::Q8_0 => return crate::x86::avx2_decode::quantize_q8_0(x, out),
            GgmlType::Q8K => return crate::x86::avx2_decode::quantize_q8_k(x, out),
            _ => {}
        }
    }
    let _ = isa;
    scalar::quantize(vdt, x, out)
}

#[allow(clippy::too_many_arguments)]
fn run(
    isa: Isa,
    kernel: Kernel,
    ws: &[QMatRef],
    x: &[f32],
    batch: usize,
    outs: &mut [&mut [f32]],
    qbuf: &mut Vec<u8>,
    dbuf: &mut Vec<f32>,
    pbuf: &mut Vec<u8>,
) {
    assert!(
        (1..=MAX_MATS).contains(&ws.len()) && outs.len() == ws.len(),
        "decode_rows_many operands"
    );
    let (ty, cols) = (ws[0].ty, ws[0].cols);
    assert!(
        ws.iter().all(|w| w.ty == ty && w.cols == cols),
        "decode_rows_many: one type and width"
    );
    let vdt = if crate::bf16dot::applies(isa, ty, cols) {
        GgmlType::BF16
    } else {
        ty.vec_dot_type()
    };
    let arb = vdt.row_bytes(cols).unwrap_or(0);
    qbuf.resize(arb * batch, 0);
    // Each activation row is quantized on its own, so its bytes never depend on the batch.
    // A row takes ~1 us on AVX2: a parallel section pays only for large batches.
    if batch >= 32 {
        qbuf.par_chunks_mut(arb)
            .zip(x.par_chunks(cols))
            .for_each(|(a, xb)| quantize_act(isa, vdt, xb, a));
    } else {
        for (a, xb) in qbuf.chunks_mut(arb).zip(x.chunks(cols)) {
            quantize_act(isa, vdt, xb, a);
        }
    }
    // The repacked formats' tiles read each row prepared once (Q5_0R8: pair layout,
    // lane-ordered scales and offsets, `repack::prep_act_row`; Q4KR: step order and sub-block
    // sums, `repack_q4k::prep_act_row`); the other Q8_0 tiles read the widened scales.
    let tile = matches!(kernel, Kernel::Tile(_));
    let prepared = tile && matches!(ty, GgmlType::Q5_0R8 | GgmlType::Q4KR);
    let d_stride = if vdt == GgmlType::Q8_0 && !prepared && tile {
        cols / 32
    } else {
        0
    };
    dbuf.clear();
    for a in qbuf.chunks(arb.max(1)) {
        dbuf.extend(
            a.chunks_exact(34)
                .take(d_stride)
                .map(|b| scalar::f16_at(b, 0)),
        );
    }
    let acts = if prepared {
        let nb = cols / ty.block_size();
        let (prb, prep): (usize, PrepFn) = if ty == GgmlType::Q4KR {
            (
                crate::repack_q4k::act_row_bytes(nb),
                crate::repack_q4k::prep_act_row,
            )
        } else {
            (
                crate::repack::act_row_bytes(nb),
                crate::repack::prep_act_row,
            )
        };
        pbuf.resize(prb * batch, 0);
        for (p, a) in pbuf.chunks_mut(prb).zip(qbuf.chunks(arb)) {
            prep(nb, a, p);
        }
        ActRows {
            q: pbuf,
            stride: prb,
            d: &[],
            d_stride: 0,
        }
    } else {
        ActRows {
            q: qbuf,
            stride: arb,
            d: dbuf,
            d_stride,
        }
    };

    let threads = rayon::current_num_threads().max(1);
    // Per matrix: its row chunk, and the first global task index of its chunks.
    // ~4 chunks per thread (load balance on a shared machine), but at least ~128 KiB of weight
    // work per task: a k/v projection (88-122 KiB) runs inline, measured 2x faster than split
    // over two rayon threads (wake-up latency). The split never changes a pair's arithmetic,
    // only who computes it.
    let mut chunks = [0usize; MAX_MATS];
    let mut first = [0usize; MAX_MATS + 1];
    for (m, w) in ws.iter().enumerate() {
        let min_rows = (128 << 10) / (w.row_bytes() * batch).max(1);
        chunks[m] = (w.rows / (threads * 4)).clamp(16, 512).max(min_rows);
        first[m + 1] = first[m] + w.rows.div_ceil(chunks[m]);
    }
    let n_tasks = first[ws.len()];
    let mut optrs = [OutPtr(std::ptr::null_mut()); MAX_MATS];
    for (p, o) in optrs.iter_mut().zip(outs.iter_mut()) {
        *p = OutPtr(o.as_mut_ptr());
    }
    let task = |g: usize| {
        let m = (0..ws.len()).rfind(|&m| first[m] <= g).unwrap_or(0);
        let (w, chunk, optr, ci) = (&ws[m], chunks[m], optrs[m], g - first[m]);
        let (rows, rb) = (w.rows, w.row_bytes());
        let mut tile = [0.0f32; ROWS_PER_TILE * TILE_C];
        let r_end = ((ci + 1) * chunk).min(rows);
        let mut b0 = 0;
        while b0 < batch {
            let b1 = (b0 + TILE_C).min(batch);
            let a = acts.sub(b0, b1);
            let nc = b1 - b0;
            let mut r0 = ci * chunk;
            while r0 < r_end {
                let r1 = (r0 + ROWS_PER_TILE).min(r_end);
                let nr = r1 - r0;
                // The next tile's output lines, one run per activation row: each lies a whole
                // output row away from the others (600 KB for the LM head), and a store that
                // misses holds up the store queue behind it (~3% of a batch-8 step).
                #[cfg(target_arch = "x86_64")]
                if r1 < r_end {
                    for c in 0..nc {
                        let p = optr.get().wrapping_add((b0 + c) * rows + r1);
                        for q in [p, p.wrapping_add(ROWS_PER_TILE - 1)] {
                            // SAFETY: a prefetch hint never faults, whatever the address.
                            unsafe {
                                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                                    q as *const i8,
                                )
                            };
                        }
                    }
                }
                let t = &mut tile[..nr * nc];
                match kernel {
                    Kernel::Tile(f) => f(cols, &w.data[r0 * rb..r1 * rb], rb, &a, t),
                    Kernel::Dot(f) => {
                        for (r, tr) in t.chunks_exact_mut(nc).enumerate() {
                            let wr = w.row(r0 + r);
                            for (c, v) in tr.iter_mut().enumerate() {
                                *v = f(cols, wr, &a.q[c * arb..(c + 1) * arb]);
                            }
                        }
                    }
                }
                for (r, tr) in t.chunks_exact(nc).enumerate() {
                    for (c, &v) in tr.iter().enumerate() {
                        // SAFETY: b0 + c < batch and r0 + r < rows, so the index is within
                        // matrix m's output (len == batch * rows, checked by the caller); row
                        // chunks are disjoint across tasks and every output is mutably borrowed
                        // for the whole parallel section.
                        unsafe { *optr.get().add((b0 + c) * rows + r0 + r) = v };
                    }
                }
                r0 = r1;
            }
            b0 = b1;
        }
    };
    if n_tasks == 1 {
        task(0);
    } else {
        (0..n_tasks).into_par_iter().for_each(task);
    }
}
