//! Deterministic draws for initial values: a generator per (seed, module path), so that adapters
//! and random models start the same whatever order they are made in, and its uniform and normal
//! draws.

use rand::{Rng, SeedableRng};

/// A tiny deterministic generator per (seed, path) so that inits do not depend on call order.
pub fn rng_for(seed: u64, path: &str) -> rand::rngs::StdRng {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut h);
    rand::rngs::StdRng::seed_from_u64(seed ^ h.finish())
}

pub fn uniform(rng: &mut impl Rng, n: usize, bound: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-bound..=bound)).collect()
}

pub fn normal(rng: &mut impl Rng, n: usize, std: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        // Box–Muller: two normals per pair of uniforms
        let u1: f64 = rng.random::<f64>().max(1e-300);
        let u2: f64 = rng.random();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (2.0 * std::f64::consts::PI * u2).sin_cos();
        out.push((r * c) as f32 * std);
        out.push((r * s) as f32 * std);
    }
    out.truncate(n);
    out
}
