//! `out = W · x` for a quantized weight matrix and a batch of f32 activations.
//!
//! Activations are quantized once to the weight type's `vec_dot_type` into a reusable
//! thread-local buffer; rows are split into chunks over the rayon global pool. Decode (batch 1)
//! streams each weight byte once. Large batches on AVX2 go to `gemm` (dequantized f32 panels
//! and a register-tile microkernel); small batches (and the scalar ISA) tile activations so a
//! row chunk that sits in L2 is reused against a tile of activations that sits in L1/L2.

use crate::isa::{detected_isa, vec_dot_fn, Isa, VecDotFn};
use crate::{decode, gemm, scalar, GgmlType, KernelError};
use rayon::prelude::*;
use std::cell::RefCell;

/// A borrowed `rows x cols` weight matrix in ggml layout (row-major, each row `cols` values
/// stored as consecutive `ty` blocks).
#[derive(Clone, Copy, Debug)]
pub struct QMatRef<'a> {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

impl<'a> QMatRef<'a> {
    /// Validates that `data` holds exactly `rows` rows of `cols` values of `ty`.
    pub fn new(
        ty: GgmlType,
        rows: usize,
        cols: usize,
        data: &'a [u8],
    ) -> Result<Self, KernelError> {
        let m = QMatRef {
            ty,
            rows,
            cols,
            data,
        };
        m.validate()?;
        Ok(m)
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.ty.row_bytes(self.cols).unwrap_or(0)
    }

    /// The bytes of row `r`. Panics if `r >= rows` (an indexing bug, like slice indexing).
    pub fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }

    fn validate(&self) -> Result<(), KernelError> {
        let expected =
            self.ty
                .row_bytes(self.cols)?
                .checked_mul(self.rows)
                .ok_or(KernelError::Overflow {
                    what: "matrix bytes",
                })?;
        if self.data.len() != expected {
            return Err(KernelError::Shape {
                what: "weight matrix bytes (rows * row_bytes(cols))",
                expected,
                got: self.data.len(),
            });
        }
        Ok(())
    }
}

fn check_shapes(w: &QMatRef, x: &[f32], batch: usize, out: &[f32]) -> Result<(), KernelError> {
    w.validate()?;
    let nx = batch.checked_mul(w.cols).ok_or(KernelError::Overflow {
        what: "batch * cols",
    })?;
    if x.len() != nx {
        return Err(KernelError::Shape {
            what: "x.len() (batch * cols)",
            expected: nx,
            got: x.len(),
        });
    }
    let no = batch.checked_mul(w.rows).ok_or(KernelError::Overflow {
        what: "batch * rows",
    })?;
    if out.len() != no {
        return Err(KernelError::Shape {
            what: "out.len() (batch * rows)",
            expected: no,
            got: out.len(),
        });
    }
    Ok(())
}

/// `out[b * w.rows + r] = sum_k w[r][k] * x[b * w.cols + k]` for `b in 0..batch`, on the
/// detected ISA (see [`crate::isa_name`]). Picks the path by batch size, so a row's rounding
/// depends on how many rows share the call; batch-invariant callers (the model) use
/// [`matmul_prompt`] / [`matmul_decode`] by the row's role instead.
pub fn matmul(w: &QMatRef, x: &[f32], batch: usize, out: &mut [f32]) -> Result<(), KernelError> {
    matmul_impl(detected_isa(), w, x, batch, out)
}

/// [`matmul`] on an explicit ISA (tests, benchmarks); errors if the CPU lacks it.
pub fn matmul_with_isa(
    isa: Isa,
    w: &QMatRef,
    x: &[f32],
    batch: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    isa.check_available()?;
    matmul_impl(isa, w, x, batch, out)
}

/// `out = W · x` for PROMPT rows: always the prefill GEMM (dequantized f32 panels with f32
/// activations, or for Q4_K / Q6_K / Q5_0 on AVX2 the int8 GEMM of `qgemm`, or for BF16 on
/// AVX-512 BF16 the `vdpbf16ps` tiles of `bf16dot`), for any number of rows, 1 included. Each output row is bitwise the same
/// whatever the batch size, the row's position in it and the thread count, so a prompt's
/// numerics never depend on its batch mates or on how it was chunked (issue 5).
pub fn matmul_prompt(
    w: &QMatRef,
    x: &[f32],
    batch: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    matmul_prompt_with_isa(detected_isa(), w, x, batch, out)
}

/// [`matmul_prompt`] on an explicit ISA; errors if the CPU lacks it.
pub fn matmul_prompt_with_isa(
    isa: Isa,
    w: &QMatRef,
    x: &[f32],
    batch: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    if !prepare(isa, w, x, batch, out)? {
        return Ok(());
    }
    gemm::panel_matmul(isa, w, x, batch, out);
    Ok(())
}

/// [`matmul_with_isa`] forced onto the per-row `vec_dot` path even for large batches (the
/// pre-GEMM behaviour); for A/B benchmarks and tests only.
#[doc(hidden)]
pub fn matmul_vec_dot_with_isa(
    isa: Isa,
    w: &QMatRef,
    x: &[f32],
    batch: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    isa.check_available()?;
    matmul_impl_path(isa, w, x, batch, out, false)
}

/// `out = W · x` on the decode-row path for every batch size: each activation row's result is
/// bitwise the same alone or batched with any other rows, under any thread count, and equal
/// to [`crate::vec_dot`] of its quantized row (issue 5). Use it for generation rows; prompt
/// rows go through [`matmul_prompt`] (the GEMM, equally row-independent).
pub fn matmul_decode(
    w: &QMatRef,
    x: &[f32],
    batch: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    matmul_decode_with_isa(detected_isa(), w, x, batch, out)
}

/// [`matmul_decode`] on an explicit ISA (tests, benchmarks); errors if the CPU lacks it.
pub fn matmul_decode_with_isa(
    isa: Isa,
    w: &QMatRef,
    x: &[f32],
    batch: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    if !prepare(isa, w, x, batch, out)? {
        return Ok(());
    }
    decode::decode_rows(isa, w, x, batch, out);
    Ok(())
}

/// [`matmul_decode`] of several matrices against the same activation rows (a layer's q/k/v,
/// or gate/up): `outs[m] = ws[m] · x`. Matrices of one type and width (up to four) share one
/// activation quantization and one parallel section; each output is bitwise the separate
/// call's. Other mixes are computed one matrix at a time.
pub fn matmul_decode_many(
    ws: &[QMatRef],
    x: &[f32],
    batch: usize,
    outs: &mut [&mut [f32]],
) -> Result<(), KernelError> {
    matmul_decode_many_with_isa(detected_isa(), ws, x, batch, outs)
}

/// [`matmul_decode_many`] on an explicit ISA; errors if the CPU lacks it.
pub fn matmul_decode_many_with_isa(
    isa: Isa,
    ws: &[QMatRef],
    x: &[f32],
    batch: usize,
    outs: &mut [&mut [f32]],
) -> Result<(), KernelError> {
    if outs.len() != ws.len() {
        return Err(KernelError::Shape {
            what: "outputs (one per matrix)",
            expected: ws.len(),
            got: outs.len(),
        });
    }
    isa.check_available()?;
    for (w, o) in ws.iter().zip(outs.iter()) {
        check_shapes(w, x, batch, o)?;
    }
    let Some(w0) = ws.first() else {
        return Ok(());
    };
    let fused = (2..=decode::MAX_MATS).contains(&ws.len())
        && batch > 0
        && ws
            .iter()
            .all(|w| w.ty == w0.ty && w.cols == w0.cols && w.rows > 0 && w.cols > 0);
    if !fused {
        for (w, o) in ws.iter().zip(outs.iter_mut()) {
            matmul_decode_with_isa(isa, w, x, batch, o)?;
        }
        return Ok(());
    }
    decode::decode_rows_many(isa, ws, x, batch, outs);
    Ok(())
}

/// Checks the ISA and the shapes and settles the empty cases (no rows, or `cols == 0`: all
/// zeros); `Ok(true)` when there is a product left to compute.
fn prepare(
    isa: Isa,
    w: &QMatRef,
    x: &[f32],
    batch: usize,
    out: &mut [f32],
) -> Result<bool, KernelError> {
    isa.check_available()?;
    check_shapes(w, x, batch, out)?;
    if batch == 0 || w.rows == 0 {
        return Ok(false);
    }
    if w.cols == 0 {
        out.fill(0.0);
        return Ok(false);
    }
    Ok(true)
}

/// Reference: dequantize each weight row to f32 and take f64-accumulated dot products with the
/// unquantized activations. Slow; for tests.
pub fn matmul_reference(
    w: &QMatRef,
    x: &[f32],
    batch: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    check_shapes(w, x, batch, out)?;
    let mut row = vec![0.0f32; w.cols];
    for r in 0..w.rows {
        scalar::dequantize(w.ty, w.row(r), &mut row);
        for b in 0..batch {
            let xb = &x[b * w.cols..(b + 1) * w.cols];
            let s: f64 = row.iter().zip(xb).map(|(&a, &c)| a as f64 * c as f64).sum();
            out[b * w.rows + r] = s as f32;
        }
    }
    Ok(())
}

thread_local! {
    static ACT_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: only used to write disjoint indices of one `&mut [f32]` that outlives the parallel
// section (see `matmul_impl`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Method access makes closures capture the whole (Send) wrapper, not the raw field.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

fn matmul_impl(
    isa: Isa,
    w: &QMatRef,
    x: &[f32],
    batch: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    matmul_impl_path(isa, w, x, batch, out, true)
}

fn matmul_impl_path(
    isa: Isa,
    w: &QMatRef,
    x: &[f32],
    batch: usize,
    out: &mut [f32],
    allow_panel: bool,
) -> Result<(), KernelError> {
    check_shapes(w, x, batch, out)?;
    if batch == 0 || w.rows == 0 {
        return Ok(());
    }
    if w.cols == 0 {
        out.fill(0.0);
        return Ok(());
    }
    if allow_panel && isa >= Isa::Avx2 && batch >= gemm::panel_min_batch(w.ty) {
        gemm::panel_matmul(isa, w, x, batch, out);
        return Ok(());
    }
    if allow_panel {
        decode::decode_rows(isa, w, x, batch, out);
        return Ok(());
    }
    let vdt = w.ty.vec_dot_type();
    let arb = vdt.row_bytes(w.cols)?;
    let need = arb * batch;
    let dot = vec_dot_fn(isa, w.ty);

    // Reuse this thread's buffer; if it is already borrowed (a nested matmul running on a rayon
    // worker that stole work while waiting), fall back to a fresh allocation.
    ACT_BUF.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < need {
                buf.resize(need, 0);
            }
            run(dot, w, x, batch, out, vdt, arb, &mut buf[..need]);
        }
        Err(_) => {
            let mut buf = vec![0u8; need];
            run(dot, w, x, batch, out, vdt, arb, &mut buf);
        }
    });
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run(
    dot: VecDotFn,
    w: &QMatRef,
    x: &[f32],
    batch: usize,
    out: &mut [f32],
    vdt: GgmlType,
    arb: usize,
    act: &mut [u8],
) {
    let cols = w.cols;
    if batch >= 4 {
        act.par_chunks_mut(arb)
            .zip(x.par_chunks(cols))
            .for_each(|(a, xb)| scalar::quantize(vdt, xb, a));
    } else {
        for (a, xb) in act.chunks_mut(arb).zip(x.chunks(cols)) {
            scalar::quantize(vdt, xb, a);
        }
    }
    let act: &[u8] = act;
    let rows = w.rows;
    let rb = w.row_bytes();
    let threads = rayon::current_num_threads().max(1);

    if batch == 1 {
        // Decode GEMV: ~8 chunks per thread for load balance, at least 16 rows each.
        let chunk = (rows / (threads * 8)).clamp(16, 256);
        out.par_chunks_mut(chunk).enumerate().for_each(|(ci, o)| {
            let r0 = ci * chunk;
            for (i, ov) in o.iter_mut().enumerate() {
                *ov = dot(cols, w.row(r0 + i), act);
            }
        });
        return;
    }

    // Prefill: a row chunk of ~256 KiB of weights (L2) is reused for every activation; the
    // activations are walked in tiles of ~32 KiB (L1) so each weight row is hot for a tile.
    let by_cache = ((256 << 10) / rb.max(1)).max(16);
    let by_par = rows.div_ceil(threads * 2).max(1);
    let chunk = by_cache.min(by_par).max(1);
    let btile = ((32 << 10) / arb.max(1)).clamp(1, 16);
    let n_chunks = rows.div_ceil(chunk);
    let optr = OutPtr(out.as_mut_ptr());
    (0..n_chunks).into_par_iter().for_each(|ci| {
        let r0 = ci * chunk;
        let r1 = (r0 + chunk).min(rows);
        let mut b0 = 0;
        while b0 < batch {
            let b1 = (b0 + btile).min(batch);
            for r in r0..r1 {
                let wr = w.row(r);
                for b in b0..b1 {
                    let v = dot(cols, wr, &act[b * arb..(b + 1) * arb]);
                    // SAFETY: b < batch and r < rows, so the index is within `out`
                    // (len == batch * rows, checked above); row chunks are disjoint across
                    // tasks, so no two tasks write the same element, and `out` is mutably
                    // borrowed for the whole parallel section.
                    unsafe { *optr.get().add(b * rows + r) = v };
                }
            }
            b0 = b1;
        }
    });
}
