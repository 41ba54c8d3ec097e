use crate::KernelError;

/// ggml tensor types this crate understands (ids as in `ggml.h`).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    BF16,
    /// Q5_0 rows repacked at load for faster decode kernels (`crate::repack`): the same
    /// values and the same bytes per row as Q5_0, in another order. Internal to this process:
    /// not a ggml type, never read from nor written to a file (not in [`GgmlType::ALL`], so
    /// [`GgmlType::from_u32`] never returns it).
    Q5_0R8,
    /// Q4_K super-blocks with their nibbles reordered at load (`crate::repack`): the same
    /// header, values and size as Q4_K, so a decode tile sums a super-block's 8 steps in i16
    /// and applies the scales with one multiply. Internal, like [`GgmlType::Q5_0R8`].
    Q4KR,
}

/// Values per k-quant super-block (`QK_K`).
pub(crate) const QK_K: usize = 256;
/// Values per legacy block (`QK4_0` = `QK8_0` = ... = 32).
pub(crate) const QK: usize = 32;

impl GgmlType {
    /// Every supported type, in ggml id order.
    pub const ALL: [GgmlType; 15] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::Q8K,
        GgmlType::BF16,
    ];

    /// Parse a ggml type id (as stored in GGUF tensor infos).
    pub fn from_u32(v: u32) -> Result<GgmlType, KernelError> {
        Self::ALL
            .iter()
            .copied()
            .find(|t| t.id() == v)
            .ok_or(KernelError::UnknownType { id: v })
    }

    /// Whether the type exists only in memory (a load-time repack), never in a GGUF file.
    pub fn is_internal(self) -> bool {
        matches!(self, GgmlType::Q5_0R8 | GgmlType::Q4KR)
    }

    /// The ggml type id (for an internal type, an id no ggml type uses: writers must check
    /// [`GgmlType::is_internal`] first).
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q8_1 => 9,
            GgmlType::Q2K => 10,
            GgmlType::Q3K => 11,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::Q8K => 15,
            GgmlType::BF16 => 30,
            GgmlType::Q5_0R8 => u32::MAX,
            GgmlType::Q4KR => u32::MAX - 1,
        }
    }

    /// ggml's name for the type (`"Q4_K"`, `"BF16"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q8_1 => "Q8_1",
            GgmlType::Q2K => "Q2_K",
            GgmlType::Q3K => "Q3_K",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
            GgmlType::Q8K => "Q8_K",
            GgmlType::BF16 => "BF16",
            GgmlType::Q5_0R8 => "Q5_0_R8 (in-memory repack of Q5_0)",
            GgmlType::Q4KR => "Q4_K_R (in-memory repack of Q4_K)",
        }
    }

    /// Values per block.
    pub fn block_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::Q8_1
            | GgmlType::Q5_0R8 => QK,
            GgmlType::Q2K
            | GgmlType::Q3K
            | GgmlType::Q4K
            | GgmlType::Q4KR
            | GgmlType::Q5K
            | GgmlType::Q6K
            | GgmlType::Q8K => QK_K,
        }
    }

    /// Bytes per block (`sizeof(block_xxx)` in ggml-common.h).
    pub fn type_size(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 | GgmlType::Q5_0R8 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q8_1 => 36,
            GgmlType::Q2K => 84,
            GgmlType::Q3K => 110,
            GgmlType::Q4K | GgmlType::Q4KR => 144,
            GgmlType::Q5K => 176,
            GgmlType::Q6K => 210,
            GgmlType::Q8K => 292,
        }
    }

    /// Bytes of one row of `cols` values; errors if `cols` is not a multiple of the block size.
    pub fn row_bytes(self, cols: usize) -> Result<usize, KernelError> {
        let block = self.block_size();
        if !cols.is_multiple_of(block) {
            return Err(KernelError::NotBlockMultiple {
                ty: self,
                cols,
                block,
            });
        }
        (cols / block)
            .checked_mul(self.type_size())
            .ok_or(KernelError::Overflow { what: "row bytes" })
    }

    /// The activation format the dot product consumes (ggml's `vec_dot_type`).
    pub fn vec_dot_type(self) -> GgmlType {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => GgmlType::F32,
            GgmlType::Q4_0
            | GgmlType::Q5_0
            | GgmlType::Q5_0R8
            | GgmlType::Q8_0
            | GgmlType::Q8_1 => GgmlType::Q8_0,
            GgmlType::Q4_1 | GgmlType::Q5_1 => GgmlType::Q8_1,
            GgmlType::Q2K
            | GgmlType::Q3K
            | GgmlType::Q4K
            | GgmlType::Q4KR
            | GgmlType::Q5K
            | GgmlType::Q6K
            | GgmlType::Q8K => GgmlType::Q8K,
        }
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
