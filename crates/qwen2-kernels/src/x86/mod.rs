//! x86_64 SIMD kernels. Each level's public entry points are safe `fn`s that are only handed
//! out by `isa::vec_dot_fn` / `gemm` after the level was detected at runtime.
/// `$f::<…, true>(…)` where the integer steps run on VNNI (`isa::vnni`), else `…, false`:
/// the call of a kernel's two forms (bitwise the same results).
macro_rules! vnni_form {
    ($f:ident::<$($g:tt),+>($($arg:expr),*)) => {
        if crate::isa::vnni() {
            $f::<$($g,)* true>($($arg),*)
        } else {
            $f::<$($g,)* false>($($arg),*)
        }
    };
    ($f:ident($($arg:expr),*)) => {
        if crate::isa::vnni() {
            $f::<true>($($arg),*)
        } else {
            $f::<false>($($arg),*)
        }
    };
}

pub(crate) mod avx2;
pub(crate) mod avx2_attn;
pub(crate) mod avx2_decode;
pub(crate) mod avx2_gemm;
pub(crate) mod avx2_qgemm;
pub(crate) mod avx512;
pub(crate) mod avx512_bf16;
pub(crate) mod vnni_qgemm;
