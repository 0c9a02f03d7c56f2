//! Top-r singular triplets of a weight matrix (PiSSA init): subspace iteration to convergence,
//! then Rayleigh–Ritz with a Jacobi eigen-solve of the small projected matrix.

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};

/// `w` `[m, n]` → (U `[m, r]` row-major, S `[r]` descending, Vᵀ `[r, n]` row-major), f32.
pub fn top_r(w: &Tensor, r: usize) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let (m, n) = w.dims2()?;
    if r == 0 || r > m.min(n) {
        return Err(Error::msg(format!("rank {r} for a {m}×{n} matrix")));
    }
    let w = w.to_dtype(DType::F64)?.to_device(&Device::Cpu)?;
    let k = (r + 8).min(m.min(n));
    // start from a deterministic pseudo-random block
    let mut rng = crate::peft::lora::rng_for(7, "svd");
    let q0: Vec<f64> = crate::peft::lora::normal(&mut rng, n * k, 1.0)
        .into_iter()
        .map(|x| x as f64)
        .collect();
    let mut q = orthonormalize(q0, n, k);
    let wt = w.t()?.contiguous()?;
    let mut prev = vec![0f64; k];
    for _ in 0..300 {
        // Q ← orth(Wᵀ W Q)
        let qt = Tensor::from_vec(q.clone(), (n, k), &Device::Cpu)?;
        let z = wt.matmul(&w.matmul(&qt)?)?;
        let zv: Vec<f64> = z.flatten_all()?.to_vec1()?;
        // Rayleigh quotients per column, for convergence
        let mut ray = vec![0f64; k];
        for j in 0..k {
            ray[j] = (0..n).map(|i| q[i * k + j] * zv[i * k + j]).sum();
        }
        q = orthonormalize(zv, n, k);
        let done = ray
            .iter()
            .zip(&prev)
            .take(r)
            .all(|(a, b)| (a - b).abs() <= 1e-13 * a.abs().max(1e-300));
        prev = ray;
        if done {
            break;
        }
    }
    // B = W Q  [m, k];  BᵀB = Qᵀ WᵀW Q  [k, k] → eigen → V = Q·E, σ = √λ, U = W V / σ
    let qt = Tensor::from_vec(q.clone(), (n, k), &Device::Cpu)?;
    let b = w.matmul(&qt)?;
    let g: Vec<f64> = b.t()?.matmul(&b)?.flatten_all()?.to_vec1()?;
    let (vals, vecs) = jacobi_eigen(g, k);
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| vals[b].partial_cmp(&vals[a]).unwrap());
    let bv: Vec<f64> = b.flatten_all()?.to_vec1()?;
    let mut u = vec![0f32; m * r];
    let mut s = vec![0f32; r];
    let mut vt = vec![0f32; r * n];
    for (c, &j) in order.iter().take(r).enumerate() {
        let sigma = vals[j].max(0.0).sqrt();
        s[c] = sigma as f32;
        for i in 0..n {
            vt[c * n + i] = (0..k).map(|t| q[i * k + t] * vecs[t * k + j]).sum::<f64>() as f32;
        }
        for i in 0..m {
            let x: f64 = (0..k).map(|t| bv[i * k + t] * vecs[t * k + j]).sum();
            u[i * r + c] = if sigma > 0.0 { (x / sigma) as f32 } else { 0.0 };
        }
    }
    Ok((u, s, vt))
}

/// Modified Gram–Schmidt on the columns of a row-major `[n, k]` matrix.
fn orthonormalize(mut a: Vec<f64>, n: usize, k: usize) -> Vec<f64> {
    for j in 0..k {
        for _ in 0..2 {
            for p in 0..j {
                let d: f64 = (0..n).map(|i| a[i * k + p] * a[i * k + j]).sum();
                for i in 0..n {
                    a[i * k + j] -= d * a[i * k + p];
                }
            }
        }
        let nrm = (0..n)
            .map(|i| a[i * k + j] * a[i * k + j])
            .sum::<f64>()
            .sqrt();
        let inv = if nrm > 0.0 { 1.0 / nrm } else { 0.0 };
        for i in 0..n {
            a[i * k + j] *= inv;
        }
    }
    a
}

/// Cyclic Jacobi on a symmetric `[k, k]` matrix: (eigenvalues, eigenvectors as columns).
fn jacobi_eigen(mut a: Vec<f64>, k: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0f64; k * k];
    for i in 0..k {
        v[i * k + i] = 1.0;
    }
    for _ in 0..100 {
        let off: f64 = (0..k)
            .flat_map(|i| (0..k).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * k + j].powi(2))
            .sum();
        if off < 1e-30 {
            break;
        }
        for p in 0..k {
            for q in p + 1..k {
                let apq = a[p * k + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * k + q] - a[p * k + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for r in 0..k {
                    let (arp, arq) = (a[r * k + p], a[r * k + q]);
                    a[r * k + p] = c * arp - s * arq;
                    a[r * k + q] = s * arp + c * arq;
                }
                for r in 0..k {
                    let (apr, aqr) = (a[p * k + r], a[q * k + r]);
                    a[p * k + r] = c * apr - s * aqr;
                    a[q * k + r] = s * apr + c * aqr;
                }
                for r in 0..k {
                    let (vrp, vrq) = (v[r * k + p], v[r * k + q]);
                    v[r * k + p] = c * vrp - s * vrq;
                    v[r * k + q] = s * vrp + c * vrq;
                }
            }
        }
    }
    ((0..k).map(|i| a[i * k + i]).collect(), v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconstructs_a_low_rank_matrix() -> Result<()> {
        // W = U diag(5, 3, 1) Vᵀ plus nothing else: top-2 must give the first two terms exactly
        let w = crate::ops::testutil::randn(&[12, 9], 3)?;
        let (u, s, vt) = top_r(&w, 9)?;
        // all 9: U S Vᵀ == W
        let mut rec = vec![0f32; 12 * 9];
        for i in 0..12 {
            for j in 0..9 {
                rec[i * 9 + j] = (0..9).map(|c| u[i * 9 + c] * s[c] * vt[c * 9 + j]).sum();
            }
        }
        let rec = Tensor::from_vec(rec, (12, 9), &Device::Cpu)?;
        let e = crate::ops::testutil::rel(&rec, &w);
        assert!(e < 1e-5, "{e}");
        assert!(s.windows(2).all(|p| p[0] >= p[1]));
        Ok(())
    }
}
