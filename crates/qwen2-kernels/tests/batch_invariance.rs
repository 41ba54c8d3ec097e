//! Batch invariance by row role (issue 5): every output row of `matmul_prompt` and
//! `matmul_decode` must be BITWISE the same whether its activation row is computed alone or
//! at any position of a batch of 1..=40 rows, on any thread count and for every ISA. Shapes
//! cover the microkernel's row and column tile tails and the k-blocked path (cols > 1536).

use qwen2_kernels::{
    available_isas, matmul_decode_with_isa, matmul_prompt_with_isa, quantize_row, GgmlType, Isa,
    KernelError, QMatRef,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type MatmulFn = fn(Isa, &QMatRef, &[f32], usize, &mut [f32]) -> Result<(), KernelError>;

fn weights(rng: &mut StdRng, ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let rb = ty.row_bytes(cols).unwrap();
    let mut data = vec![0u8; rows * rb];
    for row in data.chunks_exact_mut(rb) {
        let x: Vec<f32> = (0..cols).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        quantize_row(ty, &x, row).unwrap();
    }
    data
}

fn check(name: &str, f: MatmulFn, ty: GgmlType, rows: usize, cols: usize, max_batch: usize) {
    let mut rng = StdRng::seed_from_u64(ty as u64 * 1000 + cols as u64);
    let data = weights(&mut rng, ty, rows, cols);
    let w = QMatRef::new(ty, rows, cols, &data).unwrap();
    let x: Vec<f32> = (0..max_batch * cols)
        .map(|_| rng.random_range(-2.0f32..2.0))
        .collect();
    for isa in available_isas() {
        // Each activation row alone is the reference.
        let solo: Vec<Vec<u32>> = (0..max_batch)
            .map(|b| {
                let mut o = vec![0f32; rows];
                f(isa, &w, &x[b * cols..(b + 1) * cols], 1, &mut o).unwrap();
                o.iter().map(|v| v.to_bits()).collect()
            })
            .collect();
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                for batch in 1..=max_batch {
                    // Different windows of x, so a row sits at different tile positions.
                    let start = (batch * 7) % (max_batch - batch + 1);
                    let xs = &x[start * cols..(start + batch) * cols];
                    let mut out = vec![f32::NAN; batch * rows];
                    f(isa, &w, xs, batch, &mut out).unwrap();
                    for b in 0..batch {
                        let got: Vec<u32> = out[b * rows..(b + 1) * rows]
                            .iter()
                            .map(|v| v.to_bits())
                            .collect();
                        assert!(
                            got == solo[start + b],
                            "{name} {ty} {isa:?} {rows}x{cols}: row {b} of a batch of {batch} \
                             ({threads} threads) differs from the row alone"
                        );
                    }
                }
            });
        }
    }
}

const SHAPES: &[(GgmlType, usize, usize)] = &[
    (GgmlType::Q5_0, 37, 896),
    (GgmlType::Q8_0, 29, 896),
    (GgmlType::Q8_0, 11, 2080),
    (GgmlType::Q4K, 13, 2560),
    // k-blocked integer GEMM (k-quant rows longer than 8192 values: blocks of 4096).
    (GgmlType::Q4K, 5, 8960),
    (GgmlType::Q6K, 17, 512),
    (GgmlType::F32, 10, 70),
    (GgmlType::F16, 7, 1601),
    // BF16: `vdpbf16ps` where the CPU has AVX-512 BF16 (896), the f32 path (67).
    (GgmlType::BF16, 9, 896),
    (GgmlType::BF16, 6, 67),
    (GgmlType::Q4_0, 5, 64),
];

#[test]
fn prompt_rows_are_bitwise_independent_of_batch_and_threads() {
    for &(ty, rows, cols) in SHAPES {
        check("matmul_prompt", matmul_prompt_with_isa, ty, rows, cols, 40);
    }
}

#[test]
fn decode_rows_are_bitwise_independent_of_batch_and_threads() {
    for &(ty, rows, cols) in SHAPES {
        check("matmul_decode", matmul_decode_with_isa, ty, rows, cols, 40);
    }
}
