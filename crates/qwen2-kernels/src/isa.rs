//! Runtime ISA selection, decided once and cached.

use crate::{scalar, GgmlType, KernelError};
use std::sync::OnceLock;

/// `vec_dot(n, weight_row_bytes, activation_row_bytes) -> f32`. Lengths are validated by callers.
pub(crate) type VecDotFn = fn(usize, &[u8], &[u8]) -> f32;

/// A SIMD instruction-set level. Ordered: a higher level implies the lower ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable scalar reference kernels.
    Scalar,
    /// AVX2 + FMA + F16C (Haswell and later, Zen).
    Avx2,
    /// AVX-512 F/BW/VL + VNNI (Ice Lake, Sapphire Rapids, Zen 4).
    Avx512,
}

impl Isa {
    /// Short name for logs: `"scalar"`, `"avx2"`, `"avx512vnni"`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512vnni",
        }
    }

    /// Whether this CPU can run kernels of this level.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.is_available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    pub(crate) fn check_available(self) -> Result<(), KernelError> {
        if self.is_available() {
            Ok(())
        } else {
            Err(KernelError::IsaUnavailable {
                isa: self.name(),
                detected: best_isa().name(),
            })
        }
    }
}

/// Every ISA level this CPU supports, lowest first (ignores `QWEN2_ISA`).
pub fn available_isas() -> Vec<Isa> {
    [Isa::Scalar, Isa::Avx2, Isa::Avx512]
        .into_iter()
        .filter(|i| i.is_available())
        .collect()
}

fn best_isa() -> Isa {
    available_isas().into_iter().max().unwrap_or(Isa::Scalar)
}

/// Whether default dispatch goes up to `Isa::Avx512` (its own `vec_dot` kernels for Q8_0,
/// Q5_0 and Q4_K, with other rounding than AVX2's). Their twin tests pass on an AVX-512 VNNI
/// CPU (AMD Zen 4, 2026-11-29), but the level stays opt-in (`QWEN2_ISA=avx512`): those formats
/// then leave the multi-row decode tiles for per-pair `vec_dot`, while the AVX2 tiles already
/// run their integer steps on VNNI where the CPU has it ([`vnni`]), bitwise as on AVX2.
const AVX512_VERIFIED: bool = false;

/// The ISA the kernels use: the best available, lowered by `QWEN2_ISA=scalar|avx2|avx512`
/// (a request above what the CPU supports is ignored). Decided once per process.
pub fn detected_isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let best = best_isa();
        let default = if AVX512_VERIFIED {
            best
        } else {
            best.min(Isa::Avx2)
        };
        let forced = match std::env::var("QWEN2_ISA").ok().as_deref().map(str::trim) {
            Some("scalar") => Some(Isa::Scalar),
            Some("avx2") => Some(Isa::Avx2),
            Some("avx512") | Some("avx512vnni") => Some(Isa::Avx512),
            _ => None,
        };
        forced.map_or(default, |f| f.min(best))
    })
}

/// Whether the AVX2 integer kernels run their dot-product steps on AVX-512 VNNI instructions
/// (256-bit EVEX `vpdpbusd` / `vpdpwssd`: Ice Lake, Sapphire Rapids, Zen 4). Not an ISA level
/// of its own: a VNNI step computes exactly the i32 sums of the `vpmaddubsw` + `vpmaddwd` +
/// `vpaddd` sequence it replaces (none of those can saturate on the operand ranges the kernels
/// feed them), so every result is bitwise the AVX2 kernel's and the `QWEN2_ISA=avx2` numerics
/// hold on every CPU. `QWEN2_NO_VNNI=1` turns it off (A/B benchmarks); decided once.
pub fn vnni() -> bool {
    static VNNI: OnceLock<bool> = OnceLock::new();
    *VNNI.get_or_init(|| {
        let off = std::env::var_os("QWEN2_NO_VNNI").is_some_and(|v| v == "1");
        !off && vnni_available() && detected_isa() >= Isa::Avx2
    })
}

/// Whether the CPU has 256-bit AVX-512 VNNI (ignores `QWEN2_NO_VNNI`; tests use it to run both
/// forms of a kernel).
pub fn vnni_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        Isa::Avx2.is_available()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether BF16 weights take `vdpbf16ps` (AVX-512 BF16: Zen 4, Cooper Lake, Sapphire Rapids)
/// with activations rounded to bf16, instead of f32 FMAs on widened weights (`crate::bf16dot`;
/// other rounding, as llama.cpp's and transformers' bf16 paths). `QWEN2_NO_BF16=1` turns it
/// off (A/B benchmarks), as does `QWEN2_ISA=scalar`; decided once.
pub fn bf16() -> bool {
    static BF16: OnceLock<bool> = OnceLock::new();
    *BF16.get_or_init(|| {
        let off = std::env::var_os("QWEN2_NO_BF16").is_some_and(|v| v == "1");
        !off && bf16_available() && detected_isa() >= Isa::Avx2
    })
}

/// Whether the CPU has 256-bit AVX-512 BF16 (ignores `QWEN2_NO_BF16`).
pub fn bf16_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        Isa::Avx2.is_available()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Which SIMD path runtime dispatch picked, for logging: `+vnni` where the AVX2 kernels take
/// their VNNI forms ([`vnni`]), `+bf16` where BF16 weights take `vdpbf16ps` ([`bf16`]).
pub fn isa_name() -> &'static str {
    match (detected_isa(), vnni(), bf16()) {
        (Isa::Avx2, true, true) => "avx2+vnni+bf16",
        (Isa::Avx2, true, false) => "avx2+vnni",
        (Isa::Avx2, false, true) => "avx2+bf16",
        (isa, _, _) => isa.name(),
    }
}

/// The `vec_dot` kernel for weight type `ty` on `isa`. `isa` must be available (callers check);
/// formats without a SIMD kernel at that level fall back to the next lower level.
pub(crate) fn vec_dot_fn(isa: Isa, ty: GgmlType) -> VecDotFn {
    // BF16 rows of a multiple of 16 values (`bf16dot`); others keep the f32 kernel.
    if ty == GgmlType::BF16 && isa >= Isa::Avx2 && bf16() {
        return |n, w, a| {
            if n.is_multiple_of(crate::bf16dot::STEP) {
                crate::bf16dot::vec_dot(n, w, a)
            } else {
                f32_vec_dot_fn(Isa::Avx2, GgmlType::BF16)(n, w, a)
            }
        };
    }
    f32_vec_dot_fn(isa, ty)
}

/// [`vec_dot_fn`] without the BF16 path.
fn f32_vec_dot_fn(isa: Isa, ty: GgmlType) -> VecDotFn {
    #[cfg(target_arch = "x86_64")]
    {
        if isa >= Isa::Avx512 {
            if let Some(f) = crate::x86::avx512::vec_dot_fn(ty) {
                return f;
            }
        }
        if isa >= Isa::Avx2 {
            if let Some(f) = crate::x86::avx2::vec_dot_fn(ty) {
                return f;
            }
        }
    }
    let _ = isa;
    scalar_vec_dot_fn(ty)
}

fn scalar_vec_dot_fn(ty: GgmlType) -> VecDotFn {
    macro_rules! table {
        ($($t:ident),*) => {
            match ty {
                $(GgmlType::$t => |n, w, a| scalar::vec_dot(GgmlType::$t, n, w, a),)*
            }
        };
    }
    table!(
        F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2K, Q3K, Q4K, Q5K, Q6K, Q8K, Q5_0R8,
        Q4KR
    )
}
