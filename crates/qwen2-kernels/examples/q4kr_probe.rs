//! Probe: Q4_K decode with a lane-major nibble layout (steps summed in i16, one vpmaddwd for
//! the scales per super-block) vs the current tile, hot and streamed, 1 thread.
use qwen2_kernels::{matmul_decode, quantize_row, GgmlType, QMatRef};
use std::arch::x86_64::*;
use std::time::Instant;

fn kpos(v: usize) -> usize {
    32 * ((v % 16) / 2) + 2 * (v / 16) + v % 2
}
fn vat(s: usize, p: usize) -> usize {
    16 * (p / 2) + 2 * s + (p % 2)
}
fn nib(b: &[u8], v: usize) -> u8 {
    let byte = b[16 + 32 * (v / 64) + (v % 32)];
    if v % 64 < 32 {
        byte & 15
    } else {
        byte >> 4
    }
}
fn repack_block(b: &[u8], o: &mut [u8]) {
    o[..16].copy_from_slice(&b[..16]);
    for k in 0..4 {
        for p in 0..32 {
            o[16 + 32 * k + p] = nib(b, vat(2 * k, p)) | (nib(b, vat(2 * k + 1, p)) << 4);
        }
    }
}
// prepared activation block: 256 permuted i8 + 8 i16 32-group sums (padded to 16 B) + d: 276 B -> use 288
const PB: usize = 288;
fn prep_block(a: &[u8], o: &mut [u8]) {
    for v in 0..256 {
        o[kpos(v)] = a[4 + v];
    }
    for g in 0..8 {
        let s0 = i16::from_le_bytes([a[260 + 4 * g], a[261 + 4 * g]]);
        let s1 = i16::from_le_bytes([a[262 + 4 * g], a[263 + 4 * g]]);
        o[256 + 2 * g..258 + 2 * g].copy_from_slice(&(s0 + s1).to_le_bytes());
    }
    o[272..276].copy_from_slice(&a[0..4]);
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn k4_unpack_v(p: *const u8) -> __m128i {
    unsafe {
        let v = _mm_loadu_si128(p as *const __m128i);
        let a = _mm_shuffle_epi8(
            v,
            _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11),
        );
        let low = _mm_and_si128(
            a,
            _mm_setr_epi8(
                0x3f, 0x3f, 0x3f, 0x3f, 0x0f, 0x0f, 0x0f, 0x0f, 0x3f, 0x3f, 0x3f, 0x3f, 0, 0, 0, 0,
            ),
        );
        let nib_hi = _mm_and_si128(
            _mm_srli_epi16::<4>(a),
            _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0f, 0x0f, 0x0f, 0x0f),
        );
        let top = _mm_and_si128(
            _mm_slli_epi64::<30>(a),
            _mm_setr_epi8(
                0, 0, 0, 0, 0x30, 0x30, 0x30, 0x30, 0, 0, 0, 0, 0x30, 0x30, 0x30, 0x30,
            ),
        );
        _mm_or_si128(_mm_or_si128(low, nib_hi), top)
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn kern<const C: usize>(nb: usize, w: *const u8, a: [*const u8; C]) -> [f32; C] {
    unsafe {
        let m4 = _mm256_set1_epi8(0x0F);
        let ctrl = _mm256_setr_epi8(
            0, -128, 0, -128, 1, -128, 1, -128, 2, -128, 2, -128, 3, -128, 3, -128, 4, -128, 4,
            -128, 5, -128, 5, -128, 6, -128, 6, -128, 7, -128, 7, -128,
        );
        let mctrl = _mm_setr_epi8(8, -1, 9, -1, 10, -1, 11, -1, 12, -1, 13, -1, 14, -1, 15, -1);
        let mut acc = [_mm256_setzero_ps(); C];
        let mut acc_m = [_mm_setzero_ps(); C];
        for i in 0..nb {
            let xp = w.add(i * 144);
            for l in 0..3 {
                _mm_prefetch::<_MM_HINT_T0>(xp.add(1152 + 64 * l) as *const i8);
            }
            let fdm = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(
                xp as *const i32,
            )));
            let sm = k4_unpack_v(xp.add(4));
            let mins = _mm_shuffle_epi8(sm, mctrl);
            let sc = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(sm), ctrl);
            let mut dd = [_mm_setzero_ps(); C];
            for c in 0..C {
                let yp = a[c].add(i * PB);
                dd[c] = _mm_mul_ps(_mm_broadcast_ss(&*(yp.add(272) as *const f32)), fdm);
                let ydm = _mm_permute_ps::<0x55>(dd[c]);
                let prod = _mm_madd_epi16(mins, _mm_loadu_si128(yp.add(256) as *const __m128i));
                acc_m[c] = _mm_fnmadd_ps(ydm, _mm_cvtepi32_ps(prod), acc_m[c]);
            }
            let mut s16 = [_mm256_setzero_si256(); C];
            for k in 0..4 {
                let bits = _mm256_loadu_si256(xp.add(16 + 32 * k) as *const __m256i);
                let lo = _mm256_and_si256(bits, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4);
                for c in 0..C {
                    let yp = a[c].add(i * PB + 64 * k);
                    let pl = _mm256_maddubs_epi16(lo, _mm256_loadu_si256(yp as *const __m256i));
                    let ph =
                        _mm256_maddubs_epi16(hi, _mm256_loadu_si256(yp.add(32) as *const __m256i));
                    s16[c] = _mm256_add_epi16(s16[c], _mm256_add_epi16(pl, ph));
                }
            }
            for c in 0..C {
                let sumi = _mm256_madd_epi16(s16[c], sc);
                acc[c] = _mm256_fmadd_ps(
                    _mm256_broadcastss_ps(dd[c]),
                    _mm256_cvtepi32_ps(sumi),
                    acc[c],
                );
            }
        }
        let mut out = [0f32; C];
        for c in 0..C {
            let v = acc[c];
            let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let h = _mm_add_ps(h, acc_m[c]);
            let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            let h = _mm_add_ss(h, _mm_movehdup_ps(h));
            out[c] = _mm_cvtss_f32(h);
        }
        out
    }
}

fn main() {
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let cols = 3584usize;
    let nb = cols / 256;
    let mut s = 99u64;
    let mut rnd = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    for (label, rows, copies) in [("hot", 256usize, 1usize), ("stream", 18944, 3)] {
        let rb = GgmlType::Q4K.row_bytes(cols).unwrap();
        let mut orig = Vec::new();
        let mut rep = Vec::new();
        let mut x = vec![0f32; cols];
        for _ in 0..copies {
            let mut q = vec![0u8; rows * rb];
            for row in q.chunks_mut(rb) {
                for v in x.iter_mut() {
                    *v = (rnd() % 2001) as f32 / 1000.0 - 1.0;
                }
                quantize_row(GgmlType::Q4K, &x, row).unwrap();
            }
            let mut r = vec![0u8; q.len()];
            for (b, o) in q.chunks(144).zip(r.chunks_mut(144)) {
                repack_block(b, o);
            }
            orig.push(q);
            rep.push(r);
        }
        for batch in [1usize, 4] {
            let xs: Vec<f32> = (0..batch * cols)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let arb = GgmlType::Q8K.row_bytes(cols).unwrap();
            let mut aq = vec![0u8; batch * arb];
            for (xr, ar) in xs.chunks(cols).zip(aq.chunks_mut(arb)) {
                quantize_row(GgmlType::Q8K, xr, ar).unwrap();
            }
            let mut ap = vec![0u8; batch * nb * PB];
            for c in 0..batch {
                for i in 0..nb {
                    prep_block(
                        &aq[c * arb + i * 292..c * arb + (i + 1) * 292],
                        &mut ap[(c * nb + i) * PB..(c * nb + i + 1) * PB],
                    );
                }
            }
            let mut out_old = vec![0f32; batch * rows];
            let mut out_new = vec![0f32; batch * rows];
            let reps = if label == "hot" { 400 } else { 2 };
            let (mut to, mut tn) = (f64::MAX, f64::MAX);
            for _ in 0..5 {
                one.install(|| {
                    let t = Instant::now();
                    for _ in 0..reps {
                        for o in &orig {
                            let m = QMatRef::new(GgmlType::Q4K, rows, cols, o).unwrap();
                            matmul_decode(&m, &xs, batch, &mut out_old).unwrap();
                        }
                    }
                    to = to.min(t.elapsed().as_secs_f64());
                });
                let t = Instant::now();
                for _ in 0..reps {
                    for r in &rep {
                        for row in 0..rows {
                            let w = r.as_ptr().wrapping_add(row * rb);
                            unsafe {
                                if batch == 1 {
                                    let o = kern::<1>(nb, w, [ap.as_ptr()]);
                                    out_new[row] = o[0];
                                } else {
                                    let a = [0, 1, 2, 3].map(|c| ap.as_ptr().add(c * nb * PB));
                                    let o = kern::<4>(nb, w, a);
                                    for c in 0..4 {
                                        out_new[c * rows + row] = o[c];
                                    }
                                }
                            }
                        }
                    }
                }
                tn = tn.min(t.elapsed().as_secs_f64());
            }
            // check against the last copy's old output
            let m = QMatRef::new(GgmlType::Q4K, rows, cols, orig.last().unwrap()).unwrap();
            matmul_decode(&m, &xs, batch, &mut out_old).unwrap();
            let maxd = out_old
                .iter()
                .zip(&out_new)
                .map(|(a, b)| ((a - b) / a.abs().max(1.0)).abs())
                .fold(0f32, f32::max);
            let bytes = (reps * copies * rows * rb) as f64;
            println!("{label:6} b{batch}: old {:.1} GB/s, new {:.1} GB/s (x{:.2}), max rel diff {maxd:.2e}", bytes / to / 1e9, bytes / tn / 1e9, to / tn);
        }
    }
}
