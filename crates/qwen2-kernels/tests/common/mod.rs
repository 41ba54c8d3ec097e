//! Helpers shared by the kernel test files.

use rand::rngs::StdRng;
use rand::Rng;

/// `n` Gaussian values (Box–Muller) times `scale`.
pub fn randn(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f32 = rng.random_range(1e-7f32..1.0);
            let u2: f32 = rng.random::<f32>();
            (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos() * scale
        })
        .collect()
}
