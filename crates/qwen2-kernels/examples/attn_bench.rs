//! Flash attention speed on the default model's attention shape (14 query heads, 2 KV heads,
//! head_dim 64), f16 KV cache: one prompt chunk of `n_new` rows after `ctx` cached tokens,
//! and one decode row at depth `ctx`. Prints one layer's time and the FMA rate (2 × head_dim
//! FMAs per visible (query, key, head) pair: K·Q and P·V).
//!
//! `cargo run --release -p qwen2-kernels --example attn_bench [-- ctx n_new reps]`
//! (defaults 4096 512 3). Besides wall time it prints process CPU time, which other load on
//! the machine inflates far less: with `RAYON_NUM_THREADS=1` that is the kernel's cost.

use half::f16;
use qwen2_kernels::{attention, AttnShape, KvData};
use std::time::Instant;

#[repr(C)]
struct Timespec {
    sec: i64,
    nsec: i64,
}

extern "C" {
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
}

/// CPU seconds used by this process (all threads).
fn cpu_time() -> f64 {
    const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: clock_gettime writes one timespec (two longs on x86_64 Linux) to a valid pointer.
    let rc = unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.sec as f64 + ts.nsec as f64 * 1e-9
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numeric arguments: ctx n_new reps"))
        .collect();
    let ctx = args.first().copied().unwrap_or(4096);
    let n_new = args.get(1).copied().unwrap_or(512);
    let reps = args.get(2).copied().unwrap_or(3);
    let (n_heads, n_kv, hd) = (14, 2, 64);
    let len = ctx + n_new;
    let mut s = 0x9E3779B97F4A7C15u64;
    let mut rnd = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    };
    let k: Vec<f16> = rnd(len * n_kv * hd)
        .into_iter()
        .map(f16::from_f32)
        .collect();
    let v: Vec<f16> = rnd(len * n_kv * hd)
        .into_iter()
        .map(f16::from_f32)
        .collect();
    for (rows, pos0) in [(n_new, ctx), (1, ctx + n_new - 1)] {
        let q = rnd(rows * n_heads * hd);
        let mut out = vec![0f32; q.len()];
        let sh = AttnShape {
            n_new: rows,
            pos0,
            n_heads,
            n_kv,
            head_dim: hd,
            window: None,
        };
        let kv_len = (pos0 + rows) * n_kv * hd;
        let (kd, vd) = (KvData::F16(&k[..kv_len]), KvData::F16(&v[..kv_len]));
        let (mut best, mut best_cpu) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..reps {
            let (t, c) = (Instant::now(), cpu_time());
            attention(&q, kd, vd, &mut out, &sh).expect("attention");
            best = best.min(t.elapsed().as_secs_f64());
            best_cpu = best_cpu.min(cpu_time() - c);
        }
        let pairs: f64 = (0..rows).map(|t| (pos0 + t + 1) as f64).sum();
        let fma = pairs * n_heads as f64 * 2.0 * hd as f64;
        println!(
            "{rows} rows after {pos0}: {:.3} ms per layer ({:.1} GFMA/s); CPU {:.3} ms \
             ({:.1} GFMA/s per CPU second)",
            best * 1e3,
            fma / best / 1e9,
            best_cpu * 1e3,
            fma / best_cpu / 1e9
        );
    }
}
