//! A/B of the decode-row path (`matmul_decode`, tile kernels) against the per-pair `vec_dot`
//! loop (`matmul_vec_dot_with_isa`) on the default model's decode shapes, batch 1/4/8.
//!
//! `cargo run --release -p qwen2-kernels --example decode_bench [-- filter]`
//!
//! Both paths run interleaved in one process, several rounds, best time each, on a 1-thread
//! pool (kernel cost, least sensitive to other load) and on the global pool (wall clock).
//! Prints `old/new` ratios: > 1 means the decode path is faster.
//!
//! `-- b8`: the decode tiles against the prompt GEMM on the same matrix (Q8_0 LM head slice,
//! Q5_0R8, Q4KR), 1 thread, batches 1-16, in GMAC/s.
//!
//! `-- repack`: the Q5_0 decode tiles on ggml's layout (old) vs the same rows repacked to
//! Q5_0R8 at load (new), same shapes and batches. `-- repack_q4k`: Q4_K vs Q4KR alike, on the
//! 0.5B's down, the 1.5B's gate/up and the 7B shape's gate/up.

use qwen2_kernels::{
    matmul_decode, matmul_prompt, matmul_vec_dot_with_isa, quantize_row, repack_row, GgmlType,
    QMatRef,
};
use std::time::Instant;

fn matrix(ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let rb = ty.row_bytes(cols).expect("block multiple");
    let mut s = 0x9E3779B97F4A7C15u64;
    let mut data = vec![0u8; rows * rb];
    let mut x = vec![0f32; cols];
    for row in data.chunks_mut(rb) {
        for v in x.iter_mut() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            *v = (s % 2001) as f32 / 1000.0 - 1.0;
        }
        quantize_row(ty, &x, row).expect("quantize");
    }
    data
}

fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

fn main() {
    let filter = std::env::args().nth(1).unwrap_or_default();
    let isa = qwen2_kernels::detected_isa();
    let shapes = [
        ("q5_0 gate/up 4864x896", GgmlType::Q5_0, 4864, 896),
        ("q5_0 q/o 896x896", GgmlType::Q5_0, 896, 896),
        ("q8_0 v 128x896", GgmlType::Q8_0, 128, 896),
        ("q8_0 lm_head/8 18992x896", GgmlType::Q8_0, 18992, 896),
        ("q4_k down 896x4864", GgmlType::Q4K, 896, 4864),
        ("q6_k down 896x4864", GgmlType::Q6K, 896, 4864),
    ];
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    println!(
        "isa {} threads {}",
        isa.name(),
        rayon::current_num_threads()
    );
    if filter.is_empty() || filter == "quant" {
        // Activation quantization: serial, once per matmul call (a 0.5B decode step makes ~250).
        for (ty, n) in [(GgmlType::Q8_0, 896), (GgmlType::Q8K, 4864)] {
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let mut q = vec![0u8; ty.row_bytes(n).expect("row bytes")];
            let t = best_of(200, || quantize_row(ty, &x, &mut q).expect("quantize"));
            println!("quantize {ty} x{n}: {:.2} us", t * 1e6);
        }
    }
    if filter == "repack" {
        return repack_ab(
            &one,
            GgmlType::Q5_0,
            &[
                ("q5_0 gate/up 4864x896", 4864, 896),
                ("q5_0 q/o 896x896", 896, 896),
            ],
        );
    }
    if filter == "repack_q4k" {
        return repack_ab(
            &one,
            GgmlType::Q4K,
            &[
                ("q4_k down 896x4864", 896, 4864),
                ("q4_k 1.5B up 8960x1536", 8960, 1536),
                ("q4_k 7B up 18944x3584", 18944, 3584),
            ],
        );
    }
    if filter == "b8" {
        return decode_vs_prompt(&one);
    }
    for (name, ty, rows, cols) in shapes {
        if !filter.is_empty() && !name.contains(&filter) {
            continue;
        }
        let data = matrix(ty, rows, cols);
        let w = QMatRef::new(ty, rows, cols, &data).expect("shape");
        let reps = (40_000_000 / data.len()).clamp(3, 200);
        for batch in [1, 4, 8] {
            let x: Vec<f32> = (0..batch * cols)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let mut out = vec![0f32; batch * rows];
            let (mut old1, mut new1, mut old2, mut new2) = (f64::MAX, f64::MAX, f64::MAX, f64::MAX);
            for _round in 0..5 {
                one.install(|| {
                    old1 = old1.min(best_of(reps, || {
                        matmul_vec_dot_with_isa(isa, &w, &x, batch, &mut out).expect("old")
                    }));
                    new1 = new1.min(best_of(reps, || {
                        matmul_decode(&w, &x, batch, &mut out).expect("new")
                    }));
                });
                old2 = old2.min(best_of(reps, || {
                    matmul_vec_dot_with_isa(isa, &w, &x, batch, &mut out).expect("old")
                }));
                new2 = new2.min(best_of(reps, || {
                    matmul_decode(&w, &x, batch, &mut out).expect("new")
                }));
            }
            println!(
                "{name:26} b{batch}: 1 thread {:8.1} -> {:8.1} us (x{:.2}) | pool {:8.1} -> {:8.1} us (x{:.2})",
                old1 * 1e6,
                new1 * 1e6,
                old1 / new1,
                old2 * 1e6,
                new2 * 1e6,
                old2 / new2
            );
        }
    }
}

/// Decode tiles, ggml layout vs repacked (`repack_row`), on a model's shapes of `ty`: `hot`
/// reuses one matrix (cache-resident for the small ones: kernel cost), `stream` cycles
/// through copies (at least ~70 MB, up to 24, as a decode step streams its layers from DRAM).
/// `prompt` is the GEMM (`matmul_prompt`, 64 rows) on panels of either layout.
fn repack_ab(one: &rayon::ThreadPool, ty: GgmlType, shapes: &[(&str, usize, usize)]) {
    let to = qwen2_kernels::repacked_type(ty).expect("a repacked type");
    for &(name, rows, cols) in shapes {
        let rb = ty.row_bytes(cols).expect("row bytes");
        let copies = (70_000_000 / (rows * rb)).clamp(2, 24);
        let data: Vec<Vec<u8>> = (0..copies).map(|_| matrix(ty, rows, cols)).collect();
        let packed: Vec<Vec<u8>> = data
            .iter()
            .map(|m| {
                let mut p = vec![0u8; m.len()];
                for (s, d) in m.chunks(rb).zip(p.chunks_mut(rb)) {
                    repack_row(ty, cols, s, d).expect("repack");
                }
                p
            })
            .collect();
        let (w, wr): (Vec<QMatRef>, Vec<QMatRef>) = data
            .iter()
            .zip(&packed)
            .map(|(a, b)| {
                (
                    QMatRef::new(ty, rows, cols, a).expect("shape"),
                    QMatRef::new(to, rows, cols, b).expect("shape"),
                )
            })
            .unzip();
        let reps = (40_000_000 / data[0].len()).clamp(3, 200);
        for (mode, batch) in [
            ("hot", 1),
            ("hot", 4),
            ("hot", 8),
            ("stream", 1),
            ("stream", 4),
            ("prompt", 64),
        ] {
            let x: Vec<f32> = (0..batch * cols)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let mut out = vec![0f32; batch * rows];
            let (mut old1, mut new1, mut old2, mut new2) = (f64::MAX, f64::MAX, f64::MAX, f64::MAX);
            let mut i = 0;
            let mut run = |m: &[QMatRef]| {
                if mode == "prompt" {
                    matmul_prompt(&m[0], &x, batch, &mut out).expect("prompt");
                    return;
                }
                // `stream`: one pass over all copies per timed call, like 24 layers.
                let n = if mode == "stream" { m.len() } else { 1 };
                for _ in 0..n {
                    i = (i + 1) % n;
                    matmul_decode(&m[i], &x, batch, &mut out).expect("decode");
                }
            };
            let reps = if mode == "hot" { reps } else { 5 };
            for _round in 0..7 {
                one.install(|| {
                    old1 = old1.min(best_of(reps, || run(&w)));
                    new1 = new1.min(best_of(reps, || run(&wr)));
                });
                old2 = old2.min(best_of(reps, || run(&w)));
                new2 = new2.min(best_of(reps, || run(&wr)));
            }
            println!(
                "repack {name:22} {mode:6} b{batch:<2}: 1 thread {:8.1} -> {:8.1} us (x{:.2}) | pool {:8.1} -> {:8.1} us (x{:.2})",
                old1 * 1e6,
                new1 * 1e6,
                old1 / new1,
                old2 * 1e6,
                new2 * 1e6,
                old2 / new2
            );
        }
    }
}

/// Decode tiles against the prompt GEMM on the same matrix, 1 thread, cache-hot, batches 1-16.
fn decode_vs_prompt(one: &rayon::ThreadPool) {
    for (name, ty, rows, cols) in [
        ("q8_0 lm_head/8 18992x896", GgmlType::Q8_0, 18992, 896),
        ("q5_0r8 gate/up 4864x896", GgmlType::Q5_0, 4864, 896),
        ("q4kr down 896x4864", GgmlType::Q4K, 896, 4864),
    ] {
        let mut data = matrix(ty, rows, cols);
        let mut ty = ty;
        if let Some(to) = qwen2_kernels::repacked_type(ty) {
            let rb = ty.row_bytes(cols).expect("row bytes");
            let mut p = vec![0u8; data.len()];
            for (s, d) in data.chunks(rb).zip(p.chunks_mut(rb)) {
                repack_row(ty, cols, s, d).expect("repack");
            }
            data = p;
            ty = to;
        }
        let w = QMatRef::new(ty, rows, cols, &data).expect("shape");
        for batch in [1, 4, 8, 16] {
            let x: Vec<f32> = (0..batch * cols)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let mut out = vec![0f32; batch * rows];
            let (mut d, mut p) = (f64::MAX, f64::MAX);
            for _ in 0..5 {
                one.install(|| {
                    d = d.min(best_of(20, || {
                        matmul_decode(&w, &x, batch, &mut out).expect("d")
                    }));
                    p = p.min(best_of(20, || {
                        matmul_prompt(&w, &x, batch, &mut out).expect("p")
                    }));
                });
            }
            let gmac = (rows * cols * batch) as f64 * 1e-9;
            println!(
                "{name:26} b{batch:<2}: decode {:8.1} us ({:5.1} GMAC/s) | prompt {:8.1} us ({:5.1} GMAC/s)",
                d * 1e6, gmac / d, p * 1e6, gmac / p
            );
        }
    }
}
