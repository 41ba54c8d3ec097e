use crate::GgmlType;

/// Errors from the kernel API. Kernels never panic on caller-supplied lengths; they return these.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "unknown or unsupported ggml type id {id}; supported: F32(0), F16(1), Q4_0(2), Q4_1(3), \
         Q5_0(6), Q5_1(7), Q8_0(8), Q8_1(9), Q2_K(10), Q3_K(11), Q4_K(12), Q5_K(13), Q6_K(14), \
         Q8_K(15), BF16(30)"
    )]
    UnknownType { id: u32 },

    #[error(
        "{cols} values is not a multiple of the {ty:?} block size {block}\nHINT: this tensor \
         cannot be stored as {ty:?}; requantize it with a format whose block size divides its rows"
    )]
    NotBlockMultiple {
        ty: GgmlType,
        cols: usize,
        block: usize,
    },

    #[error("{what}: {n} values of {ty:?} need {expected} bytes, got {got}")]
    BufferSize {
        what: &'static str,
        ty: GgmlType,
        n: usize,
        expected: usize,
        got: usize,
    },

    #[error("matmul shape mismatch: {what}: expected {expected}, got {got}")]
    Shape {
        what: &'static str,
        expected: usize,
        got: usize,
    },

    #[error("attention shape mismatch: {what}: expected {expected}, got {got}")]
    AttentionShape {
        what: &'static str,
        expected: usize,
        got: usize,
    },

    #[error("size overflow computing {what}")]
    Overflow { what: &'static str },

    #[error("quantization to {ty:?} is not implemented (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q8_K)")]
    QuantizeUnsupported { ty: GgmlType },

    #[error("{ty:?} has no repacked in-memory layout (only Q5_0 has one)")]
    RepackUnsupported { ty: GgmlType },

    #[error("ISA {isa} is not available on this CPU (detected: {detected})")]
    IsaUnavailable {
        isa: &'static str,
        detected: &'static str,
    },
}
