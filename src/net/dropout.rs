//! Dropout on the non-recurrent connections (Zaremba et al. 2014; PyTorch's word-language-model
//! example): the first layer's input (the embedding output), each layer's output where it feeds
//! the next layer, and the top layer's output where it feeds the readout. The recurrent state is
//! never dropped. Masks are drawn from a seeded ChaCha8 stream at each forward pass that has
//! dropout set, kept for the backward pass, and scaled by 1/(1 − p) (inverted dropout, as in
//! PyTorch), so evaluation runs the same network without any change. `locked` (variational)
//! dropout draws one mask per sequence and unit and reuses it at every step (Gal & Ghahramani
//! 2016).

use crate::error::{Error, Result};
use crate::float::Float;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Dropout for the training forward passes of a workspace (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    /// The probability that a value is dropped, in [0, 1).
    pub p: f64,
    /// One mask per sequence and unit for all steps (variational) instead of one per step.
    pub locked: bool,
    /// The seed of the masks: a training loop sets a fresh one for each update.
    pub seed: u64,
}

impl Dropout {
    /// Ok if `p` is in [0, 1).
    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.p) {
            return Err(Error::Config(format!("dropout must be in [0, 1), got {}", self.p)));
        }
        Ok(())
    }
}

/// Fills `mask` (T, B, W), for `steps` steps of `b` rows of width `w`, with 0 (dropped, with
/// probability p) or 1/(1 − p), drawing from `rng`: T·B·W draws, or B·W reused at every step
/// when locked.
pub(crate) fn fill<F: Float>(mask: &mut [F], steps: usize, bw: usize, d: &Dropout, rng: &mut ChaCha8Rng) {
    // Drop when a uniform 32-bit draw falls below p · 2³².
    let threshold = (d.p * 4_294_967_296.0) as u64;
    let keep = F::of(1.0 / (1.0 - d.p));
    let draws = if d.locked { bw } else { steps * bw };
    for v in &mut mask[..draws] {
        *v = if (rng.next_u32() as u64) < threshold { F::zero() } else { keep };
    }
    if d.locked {
        let (first, rest) = mask[..steps * bw].split_at_mut(bw);
        rest.chunks_exact_mut(bw).for_each(|row| row.copy_from_slice(first));
    }
}

/// A fresh stream for the masks of one forward pass.
pub(crate) fn stream(d: &Dropout) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(d.seed ^ 0x000d_8090_u64)
}

/// `out = x ⊙ mask`, elementwise.
pub(crate) fn apply<F: Float>(out: &mut [F], x: &[F], mask: &[F]) {
    for ((o, &v), &m) in out.iter_mut().zip(x).zip(mask) {
        *o = v * m;
    }
}

/// `g ⊙= mask`: a dropout in place, or the gradient through one (the same mask and scale).
pub(crate) fn scale<F: Float>(g: &mut [F], mask: &[F]) {
    for (v, &m) in g.iter_mut().zip(mask) {
        *v *= m;
    }
}
