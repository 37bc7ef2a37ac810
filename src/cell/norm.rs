//! Layer normalisation of one row (Ba, Kiros & Hinton 2016), forward above backward, as the
//! LayerNorm-LSTM uses it on W_ih·x_t, on W_hh·h_{t−1} and on c_t:
//!
//! ```text
//! μ = mean(x)   σ² = mean((x − μ)²)   r = 1/√(σ² + ε)   x̂ = (x − μ)·r   y = γ ⊙ x̂ + β
//! ```
//! Backward, from dx̂ = dy ⊙ γ (dγ = Σ dy ⊙ x̂ and dβ = Σ dy over all rows, kept by the layer):
//!
//! ```text
//! dx = r · (dx̂ − mean(dx̂) − x̂ ⊙ mean(dx̂ ⊙ x̂))
//! ```
//! ε = 10⁻⁵ and the biased variance, as PyTorch's `nn.LayerNorm`.

use crate::float::Float;
use crate::kernels;

/// ε, added to the variance (PyTorch's `nn.LayerNorm` default).
pub const EPS: f64 = 1e-5;

/// Normalises the row `x` in place to x̂ and returns r = 1/√(σ² + ε).
#[inline]
pub fn normalize<F: Float>(x: &mut [F]) -> F {
    let n = F::of(x.len() as f64);
    let mean = kernels::sum(x) / n;
    x.iter_mut().for_each(|v| *v -= mean);
    let var = dot(x, x) / n;
    let r = F::one() / (var + F::of(EPS)).sqrt();
    x.iter_mut().for_each(|v| *v *= r);
    r
}

/// Σ a ⊙ b in 8 interleaved partial sums (a fixed order that vectorises, as `kernels::sum`).
#[inline]
fn dot<F: Float>(a: &[F], b: &[F]) -> F {
    let mut acc = [F::zero(); 8];
    let (ca, cb) = (a.chunks_exact(8), b[..a.len()].chunks_exact(8));
    let tail: F = ca.remainder().iter().zip(cb.remainder()).map(|(&x, &y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for ((s, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    acc.iter().copied().sum::<F>() + tail
}

/// `y += γ ⊙ x̂ + β` for one row.
#[inline]
pub fn add_affine<F: Float>(y: &mut [F], x_hat: &[F], gain: &[F], bias: &[F]) {
    let n = y.len();
    let (x_hat, gain, bias) = (&x_hat[..n], &gain[..n], &bias[..n]);
    for j in 0..n {
        y[j] += gain[j] * x_hat[j] + bias[j];
    }
}

/// One row's backward: `d` holds dL/dx̂ on entry and dL/dx on return (`x_hat` and `r` from the
/// forward pass).
#[inline]
pub fn backward<F: Float>(d: &mut [F], x_hat: &[F], r: F) {
    let n = d.len();
    let x_hat = &x_hat[..n];
    let inv_n = F::one() / F::of(n as f64);
    let mean_d = kernels::sum(d) * inv_n;
    let mean_dx = dot(d, x_hat) * inv_n;
    for j in 0..n {
        d[j] = r * (d[j] - mean_d - x_hat[j] * mean_dx);
    }
}

#[cfg(test)]
mod tests {
    /// The backward row against central differences of the forward row, in f64.
    #[test]
    fn backward_matches_finite_differences() {
        let x: Vec<f64> = (0..7).map(|k| ((k * 37 % 11) as f64 - 5.0) * 0.3).collect();
        let w: Vec<f64> = (0..7).map(|k| (k as f64 - 3.0) * 0.7 + 0.1).collect();
        let loss = |x: &[f64]| {
            let mut y = x.to_vec();
            super::normalize(&mut y);
            y.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>()
        };
        let mut x_hat = x.clone();
        let r = super::normalize(&mut x_hat);
        let mut d = w.clone();
        super::backward(&mut d, &x_hat, r);
        for j in 0..x.len() {
            let (mut up, mut down) = (x.clone(), x.clone());
            up[j] += 1e-6;
            down[j] -= 1e-6;
            let fd = (loss(&up) - loss(&down)) / 2e-6;
            assert!((fd - d[j]).abs() < 1e-8, "unit {j}: analytic {} vs {fd}", d[j]);
        }
    }
}
