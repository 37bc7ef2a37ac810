//! Dropout on the non-recurrent connections (Zaremba et al. 2014; PyTorch's word-language-model
//! example): the first layer's input (the embedding output), each layer's output where it feeds
//! the next layer, and the top layer's output where it feeds the readout. The recurrent state is
//! never dropped. Masks are drawn from a seeded ChaCha8 stream at each forward pass that has
//! dropout set, kept for the backward pass, and scaled by 1/(1 − p) (inverted dropout, as in
//! PyTorch), so evaluation runs the same network without any change. `locked` (variational)
//! dropout draws one mask per sequence and unit and reuses it at every step (Gal & Ghahramani
//! 2016).

use crate::error::{Error, Result, check_len};
use crate::float::Float;
use crate::net::Net;
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
        check_rate("dropout", self.p)
    }

    /// This dropout for the training passes of a net with `zoneout`, or `None` where a pass has
    /// no use for it: no dropout (p = 0) and no zoneout, whose training masks are drawn from the
    /// same seed (a pass with a `Dropout` set is a training pass; see `net/zoneout.rs`).
    pub fn when_needed(self, zoneout: &crate::net::Zoneout) -> Option<Self> {
        (self.p > 0.0 || !zoneout.is_none()).then_some(self)
    }
}

/// A drop probability must lie in [0, 1) (NaN included in the refusal).
fn check_rate(what: &str, p: f64) -> Result<()> {
    if !(0.0..1.0).contains(&p) {
        return Err(Error::Config(format!("{what} must be in [0, 1), got {p}")));
    }
    Ok(())
}

/// Fills `mask` (T, B, W), for `steps` steps of `b` rows of width `w`, with 0 (dropped, with
/// probability p) or 1/(1 − p), drawing from `rng`: T·B·W draws, or B·W reused at every step
/// when locked. Each draw is 16 bits (four from one 64-bit word): a value is dropped when its
/// draw falls below p · 2¹⁶ rounded, so p is honoured to 1/65,536.
pub(crate) fn fill<F: Float>(mask: &mut [F], steps: usize, bw: usize, d: &Dropout, rng: &mut ChaCha8Rng) {
    let threshold = (d.p * 65_536.0).round() as u64;
    let keep = F::of(1.0 / (1.0 - d.p));
    let draws = if d.locked { bw } else { steps * bw };
    for chunk in mask[..draws].chunks_mut(4) {
        let word = rng.next_u64();
        for (k, v) in chunk.iter_mut().enumerate() {
            *v = if (word >> (16 * k)) & 0xffff < threshold { F::zero() } else { keep };
        }
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

/// DropConnect on the recurrent weights (the weight drop of AWD-LSTM, Merity et al. 2018):
/// every layer's W_hh is masked elementwise with one mask per update, shared by all sequences
/// and steps, and scaled by 1/(1 − p). The network then runs unchanged on the dropped copy of
/// the weights; the gradient w.r.t. the raw W_hh is the mask times the gradient at the copy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WeightDrop {
    /// The probability that a recurrent weight is dropped, in [0, 1).
    pub p: f64,
    /// The seed of the mask: a training loop sets a fresh one for each update.
    pub seed: u64,
}

impl WeightDrop {
    /// Ok if `p` is in [0, 1).
    pub fn validate(&self) -> Result<()> {
        check_rate("weight drop", self.p)
    }

    /// The number of recurrent weights (the length of a mask).
    pub fn mask_len(net: &Net) -> usize {
        net.w_hh_ranges().map(|r| r.len()).sum()
    }

    /// Copies `params` into `dropped` with every W_hh masked, and writes the mask (the W_hh
    /// entries in slab order, [`WeightDrop::mask_len`] of them).
    pub fn apply<F: Float>(&self, net: &Net, params: &[F], dropped: &mut [F], mask: &mut [F]) -> Result<()> {
        self.validate()?;
        check_len("parameter slab", net.num_params(), params.len())?;
        check_len("dropped parameter slab", net.num_params(), dropped.len())?;
        check_len("weight-drop mask", Self::mask_len(net), mask.len())?;
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x5eed_0d20_9c0e_11aa);
        let d = Dropout { p: self.p, locked: false, seed: 0 };
        dropped.copy_from_slice(params);
        let mut at = 0;
        for r in net.w_hh_ranges() {
            let m = &mut mask[at..at + r.len()];
            fill(m, 1, r.len(), &d, &mut rng);
            scale(&mut dropped[r.clone()], m);
            at += r.len();
        }
        Ok(())
    }

    /// Turns the gradient at the dropped weights into the gradient at the raw ones: each W_hh
    /// entry of `grads` times its mask (the other entries are unchanged).
    pub fn backward<F: Float>(net: &Net, grads: &mut [F], mask: &[F]) -> Result<()> {
        check_len("gradient slab", net.num_params(), grads.len())?;
        check_len("weight-drop mask", Self::mask_len(net), mask.len())?;
        let mut at = 0;
        for r in net.w_hh_ranges() {
            scale(&mut grads[r.clone()], &mask[at..at + r.len()]);
            at += r.len();
        }
        Ok(())
    }
}
