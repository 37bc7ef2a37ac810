//! The bias of truncated BPTT made visible: the truncated gradient of a sequence, at fixed
//! weights, against the full-BPTT gradient of the same losses, as the horizon k grows.
//!
//! For each k, TBPTT(1, k) runs over the sequence: the loss of every step is back-propagated
//! through exactly the k steps ending at it (fewer at the start), the state entering each
//! window without gradient. The per-step gradients are added with the weight of their counted
//! positions, so every loss counts exactly as in the full gradient and only the truncation
//! differs. k ≥ T gives the full gradient (cosine 1, relative norm 1).

use crate::error::Result;
use crate::float::Float;
use crate::net::{Input, Net, Target, Targets};
use crate::train::Tbptt;

/// One truncation length and how its gradient compares with the full one.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct TruncationPoint {
    /// The truncation horizon k (TBPTT(1, k)).
    pub k: usize,
    /// cos(g_k, g_full).
    pub cosine: f64,
    /// ‖g_k‖ / ‖g_full‖.
    pub relative_norm: f64,
}

/// Compares TBPTT(1, k) gradients for every k in `ks` with the full gradient of `targets`
/// over dense `x` (T, B, I) from a zero state.
pub fn truncation_bias<F: Float>(
    net: &Net,
    params: &[F],
    x: &[F],
    targets: Targets<'_, F>,
    steps: usize,
    ks: &[usize],
    threads: usize,
) -> Result<Vec<TruncationPoint>> {
    let b = x.len() / (steps * net.config().input_width());
    let weights: Vec<f64> = match targets.mask {
        Some(m) => m.iter().map(|w| w.f64()).collect(),
        None => vec![1.0; steps * b],
    };
    let total: f64 = weights.iter().sum();
    let mut ws = net.workspace::<F>(steps, b, threads)?;
    net.forward(params, &mut ws, Input::Dense(x), Some(targets), None)?;
    let mut full = vec![F::zero(); net.num_params()];
    net.backward(params, &mut ws, &mut full)?;
    let full: Vec<f64> = full.iter().map(|v| v.f64()).collect();
    let full_norm = full.iter().map(|v| v * v).sum::<f64>().sqrt();

    let (iw, o) = (x.len() / (steps * b), net.config().output);
    let mut out = Vec::with_capacity(ks.len());
    let mut g = vec![F::zero(); net.num_params()];
    for &k in ks {
        let k = k.clamp(1, steps);
        let mut tb = Tbptt::<F>::new(net, 1, k, b, threads)?;
        let mut sum = vec![0.0f64; net.num_params()];
        for s in 0..steps {
            let e = s + 1;
            let w: f64 = weights[s * b..e * b].iter().sum();
            let mask = targets.mask.map(|m| &m[s * b..e * b]);
            let target = match targets.target {
                Target::Classes(y) => Target::Classes(&y[s * b..e * b]),
                Target::Values(y) => Target::Values(&y[s * b * o..e * b * o]),
            };
            g.fill(F::zero());
            tb.step(net, params, Input::Dense(&x[s * b * iw..e * b * iw]), Targets { target, mask }, &mut g)?;
            if w > 0.0 {
                for (acc, v) in sum.iter_mut().zip(&g) {
                    *acc += v.f64() * w / total;
                }
            }
        }
        let norm = sum.iter().map(|v| v * v).sum::<f64>().sqrt();
        let dot: f64 = sum.iter().zip(&full).map(|(a, b)| a * b).sum();
        let cosine = if norm > 0.0 && full_norm > 0.0 { dot / (norm * full_norm) } else { 0.0 };
        out.push(TruncationPoint { k, cosine, relative_norm: norm / full_norm });
    }
    Ok(out)
}
