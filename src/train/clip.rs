//! Gradient clipping over the whole gradient slab, as `torch.nn.utils.clip_grad_norm_` and
//! `clip_grad_value_` do it.

use crate::float::Float;
use crate::kernels;

/// The global L2 norm of the slab, accumulated in f64 (NaN or ∞ if any element is).
pub fn global_norm<F: Float>(grads: &[F]) -> f64 {
    kernels::sum_sq(grads).sqrt()
}

/// Scales `grads` so their global L2 norm is at most `max_norm` (coefficient
/// `max_norm / (norm + 1e-6)` when below 1, as PyTorch). Returns the norm before clipping.
pub fn clip_grad_norm<F: Float>(grads: &mut [F], max_norm: f64) -> f64 {
    let norm = global_norm(grads);
    scale_to_norm(grads, max_norm, norm);
    norm
}

/// [`clip_grad_norm`] for a slab whose global norm is known to be `norm`.
pub(crate) fn scale_to_norm<F: Float>(grads: &mut [F], max_norm: f64, norm: f64) {
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        let c = F::of(coef);
        for g in grads.iter_mut() {
            *g *= c;
        }
    }
}

/// Clamps every gradient element into [−clip, clip].
pub fn clip_grad_value<F: Float>(grads: &mut [F], clip: f64) {
    let c = F::of(clip);
    for g in grads.iter_mut() {
        *g = g.max(-c).min(c);
    }
}
