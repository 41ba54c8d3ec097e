//! GGUF quantized block formats and the hot matmul kernels for the qwen2 engine.
//!
//! This crate plays ggml's role: bit-exact ggml block layouts (`ggml-common.h`), scalar
//! reference dequantizers / quantizers / dot products (ggml's `_ref` / `_generic` twins), and
//! SIMD dot products selected once at runtime (`is_x86_feature_detected!`, cached in a
//! `OnceLock`). A weight matrix is `(GgmlType, rows, cols, &[u8])`, each row `cols` values
//! stored as consecutive blocks, exactly as in a GGUF file.
//!
//! Layout:
//! - [`types`]: `GgmlType`, block sizes, ids.
//! - `scalar`: reference (de)quantizers and `vec_dot` twins for every format.
//! - `x86::avx2` / `x86::avx512`: SIMD `vec_dot`s (see [`Isa`]).
//! - `matmul`: quantize activations once, split rows over rayon (decode, small batches).
//! - `gemm`: prefill GEMM over dequantized f32 panels with a register-tile microkernel.
//! - `qgemm`: prefill GEMM for Q4_K / Q6_K in int8 (Q8_K activations) on unpacked panels.
//! - `activation`: SwiGLU's `silu(gate) * up` (scalar libm twin, AVX2 vector exp).
//! - `bf16dot`: BF16 weights on AVX-512 BF16 (`vdpbf16ps`, bf16-rounded activations).
//! - `repack`: load-time repacking of Q5_0 rows into the decode-friendly `Q5_0R8` layout;
//!   `repack_q4k`: of Q4_K super-blocks into `Q4KR` (lane-major nibbles).

mod activation;
mod attention;
mod bf16dot;
mod decode;
mod error;
mod gemm;
mod isa;
mod kquant;
mod matmul;
mod qgemm;
mod repack;
mod repack_q4k;
mod scalar;
mod types;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use activation::{silu_mul, silu_mul_with_isa};
pub use attention::{attention, attention_with_isa, AttnShape, KvData, KEY_BLOCK};
#[doc(hidden)]
pub use attention::{attention_scheduled, Schedule};
pub use error::KernelError;
pub use isa::{
    available_isas, bf16, bf16_available, detected_isa, isa_name, vnni, vnni_available, Isa,
};
pub use matmul::{
    matmul, matmul_decode, matmul_decode_many, matmul_decode_many_with_isa, matmul_decode_with_isa,
    matmul_prompt, matmul_prompt_with_isa, matmul_reference, matmul_vec_dot_with_isa,
    matmul_with_isa, QMatRef,
};
pub use repack::{repack_row, repacked_type};
pub use types::GgmlType;

/// Dequantize one row of `dst.len()` values stored as `ty` blocks in `src`.
///
/// `src.len()` must equal `ty.row_bytes(dst.len())`.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), KernelError> {
    let need = ty.row_bytes(dst.len())?;
    if src.len() != need {
        return Err(KernelError::BufferSize {
            what: "dequantize_row source bytes",
            ty,
            n: dst.len(),
            expected: need,
            got: src.len(),
        });
    }
    scalar::dequantize(ty, src, dst);
    Ok(())
}

/// Quantize `src.len()` values into `ty` blocks in `dst` with ggml's reference (`*_ref`) algorithm.
///
/// Supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q8_K,
/// and the k-quant weight formats Q2_K..Q6_K (ggml's scale searches without an importance
/// matrix, as `llama-quantize` does without `--imatrix`).
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), KernelError> {
    let need = ty.row_bytes(src.len())?;
    if dst.len() != need {
        return Err(KernelError::BufferSize {
            what: "quantize_row destination bytes",
            ty,
            n: src.len(),
            expected: need,
            got: dst.len(),
        });
    }
    if !scalar::can_quantize(ty) {
        return Err(KernelError::QuantizeUnsupported { ty });
    }
    scalar::quantize(ty, src, dst);
    Ok(())
}

/// Dot product of `n` values: a weight row stored as `ty` and an activation row stored as
/// `ty.vec_dot_type()` (quantize it with [`quantize_row`]). Uses the detected ISA.
pub fn vec_dot(ty: GgmlType, n: usize, w: &[u8], act: &[u8]) -> Result<f32, KernelError> {
    vec_dot_with_isa(detected_isa(), ty, n, w, act)
}

/// [`vec_dot`] on an explicit ISA (for tests and benchmarks); errors if the CPU lacks it.
pub fn vec_dot_with_isa(
    isa: Isa,
    ty: GgmlType,
    n: usize,
    w: &[u8],
    act: &[u8],
) -> Result<f32, KernelError> {
    isa.check_available()?;
    check_len("vec_dot weight bytes", ty, n, w.len())?;
    check_len("vec_dot activation bytes", ty.vec_dot_type(), n, act.len())?;
    Ok((isa::vec_dot_fn(isa, ty))(n, w, act))
}

fn check_len(what: &'static str, ty: GgmlType, n: usize, got: usize) -> Result<(), KernelError> {
    let expected = ty.row_bytes(n)?;
    if expected != got {
        return Err(KernelError::BufferSize {
            what,
            ty,
            n,
            expected,
            got,
        });
    }
    Ok(())
}
