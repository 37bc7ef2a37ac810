//! Training machinery on top of `net` and `optim`: clipping, the guarded update (a non-finite
//! gradient is never applied) and the `Updater` every training loop shares, and the
//! truncated-BPTT driver.

mod checkpointed;
pub mod clip;
mod tbptt;
mod updater;

pub use checkpointed::CheckpointedBptt;
pub use tbptt::Tbptt;
pub use updater::Updater;

use crate::error::{Error, Result};
use crate::float::Float;
use crate::optim::Optimizer;

/// Gradient clipping settings; `None` switches a kind off.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Clip {
    /// Global L2-norm threshold (`clip_grad_norm_`).
    pub max_norm: Option<f64>,
    /// Per-element threshold (`clip_grad_value_`), applied before the norm clip.
    pub max_value: Option<f64>,
}

impl Clip {
    /// Checks thresholds are positive and finite.
    pub fn validate(&self) -> Result<()> {
        for (what, v) in [("clip norm", self.max_norm), ("clip value", self.max_value)] {
            if let Some(v) = v
                && !(v.is_finite() && v > 0.0)
            {
                return Err(Error::Config(format!("{what} must be positive (or off), got {v}")));
            }
        }
        Ok(())
    }
}

/// What happened in one guarded update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UpdateReport {
    /// Global L2 norm of the gradient before any clipping.
    pub grad_norm: f64,
    /// True if clipping changed the gradient.
    pub clipped: bool,
    /// True if the gradient was not finite: nothing was applied, the optimizer state is
    /// untouched.
    pub skipped: bool,
}

/// Clips `grads` and applies one optimizer update, unless the gradient has a NaN or ∞, in
/// which case the parameters and optimizer state are left as they were (`skipped`).
pub fn apply_update<F: Float>(
    params: &mut [F],
    grads: &mut [F],
    optimizer: &mut Optimizer<F>,
    lr: f64,
    clip: Clip,
) -> UpdateReport {
    let grad_norm = clip::global_norm(grads);
    if !grad_norm.is_finite() {
        return UpdateReport { grad_norm, clipped: false, skipped: true };
    }
    let mut clipped = false;
    if let Some(v) = clip.max_value {
        clipped |= grads.iter().any(|g| g.abs().f64() > v);
        clip::clip_grad_value(grads, v);
    }
    if let Some(max_norm) = clip.max_norm {
        let norm = if clipped { clip::global_norm(grads) } else { grad_norm };
        clipped |= max_norm / (norm + 1e-6) < 1.0;
        clip::scale_to_norm(grads, max_norm, norm);
    }
    optimizer.step(params, grads, lr);
    UpdateReport { grad_norm, clipped, skipped: false }
}
