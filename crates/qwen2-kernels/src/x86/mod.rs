//! x86_64 SIMD kernels. Each level's public entry points are safe `fn`s that are only handed
//! out by `isa::vec_dot_fn` / `gemm` after the level was detected at runtime.
pub(crate) mod avx2;
pub(crate) mod avx2_attn;
pub(crate) mod avx2_decode;
pub(crate) mod avx2_gemm;
pub(crate) mod avx2_qgemm;
pub(crate) mod avx512;
pub(crate) mod vnni_qgemm;
