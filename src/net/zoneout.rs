//! Zoneout (Krueger et al. 2016): at each step, each unit of the state keeps its previous value
//! with probability z instead of taking the cell's new one,
//!
//! ```text
//! h_t = (1 − m_t) ⊙ h̃_t + m_t ⊙ h_{t−1}        m_t ∈ {0, 1}, P(m = 1) = z_h
//! c_t = (1 − k_t) ⊙ c̃_t + k_t ⊙ c_{t−1}        (LSTM)  P(k = 1) = z_c
//! ```
//!
//! with h̃_t, c̃_t the cell's step from the zoned state. Training passes draw m and k (one value
//! per step, row and unit) from the pass's seed; evaluation replaces them by their expectation
//! (m = z_h, k = z_c), as the paper does — so zoneout is part of the model, not only of its
//! training. Backward: dh̃_t = (1 − m) ⊙ dh_t goes into the cell's step and m ⊙ dh_t passes
//! straight to h_{t−1}; the same for c. With m ∈ {0, 1} both blends are exact (a held unit is
//! bit for bit its previous value). The RNN keeps h̃_t for its backward step (tanh' = 1 − h̃²).

use crate::cell::CellKind;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::net::Dropout;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The zoneout rates of every layer's state (0 = none); see the module docs.
///
/// Two configs are equal when their rates are the same numbers (compared bit for bit, so a
/// config stays `Eq`).
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Zoneout {
    /// z_h: the probability that a unit of h keeps its previous value, in [0, 1).
    pub h: f64,
    /// z_c: the same for the LSTM's cell state c, in [0, 1) (0 for other cells).
    pub c: f64,
}

impl PartialEq for Zoneout {
    fn eq(&self, other: &Self) -> bool {
        // (+ 0.0 makes −0.0 and 0.0 the same rate.)
        let bits = |v: f64| (v + 0.0).to_bits();
        bits(self.h) == bits(other.h) && bits(self.c) == bits(other.c)
    }
}

impl Eq for Zoneout {}

impl Zoneout {
    /// No zoneout.
    pub const NONE: Zoneout = Zoneout { h: 0.0, c: 0.0 };

    /// True when neither rate is set.
    pub fn is_none(&self) -> bool {
        self.h == 0.0 && self.c == 0.0
    }

    /// Ok if both rates are in [0, 1) and z_c is only set for a cell with a cell state.
    pub(crate) fn validate(&self, cell: CellKind) -> Result<()> {
        for (name, z) in [("zoneout_h", self.h), ("zoneout_c", self.c)] {
            if !(0.0..1.0).contains(&z) {
                return Err(Error::Config(format!("`{name}` must be in [0, 1), got {z}")));
            }
        }
        if self.c > 0.0 && !cell.has_cell_state() {
            return Err(Error::Config(format!(
                "`zoneout_c` zones out an LSTM's cell state; the {cell} cell has none: use zoneout_h, or the lstm cell"
            )));
        }
        Ok(())
    }

    /// The probability a training pass holds a unit with rate `z`: z to 1/65,536, as the draws
    /// honour it (16 bits each), and the value evaluation uses, so that it is exactly the mean
    /// of the training masks.
    pub fn held(z: f64) -> f64 {
        threshold(z) as f64 / 65_536.0
    }
}

fn threshold(z: f64) -> u64 {
    (z * 65_536.0).round() as u64
}

/// The stream of one training pass's zoneout masks (apart from its dropout masks' stream, so
/// adding zoneout leaves a run's dropout masks as they were).
pub(crate) fn stream(d: &Dropout) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(d.seed ^ 0x2010_e0c7_5a1b_77f3)
}

/// Fills `mask` with 1 (hold) with probability z, else 0: one 16-bit draw per value, four from
/// each 64-bit word of `rng`.
pub(crate) fn fill<F: Float>(mask: &mut [F], z: f64, rng: &mut ChaCha8Rng) {
    let threshold = threshold(z);
    for chunk in mask.chunks_mut(4) {
        let word = rng.next_u64();
        for (k, v) in chunk.iter_mut().enumerate() {
            *v = if (word >> (16 * k)) & 0xffff < threshold { F::one() } else { F::zero() };
        }
    }
}

/// Fills `mask` with the expectation of a training mask, [`Zoneout::held`]`(z)` (evaluation).
pub(crate) fn fill_mean<F: Float>(mask: &mut [F], z: f64) {
    mask.fill(F::of(Zoneout::held(z)));
}

/// Forward: `v ← (1 − m) ⊙ v + m ⊙ prev` (v holds the cell's new value on entry).
pub(crate) fn blend<F: Float>(v: &mut [F], prev: &[F], m: &[F]) {
    for ((v, &p), &m) in v.iter_mut().zip(prev).zip(m) {
        *v = (F::one() - m) * *v + m * p;
    }
}

/// Backward into the cell: `out = (1 − m) ⊙ d`, the gradient at the cell's new value.
pub(crate) fn into_cell<F: Float>(out: &mut [F], d: &[F], m: &[F]) {
    for ((o, &d), &m) in out.iter_mut().zip(d).zip(m) {
        *o = (F::one() - m) * d;
    }
}

/// Backward past the cell: `acc += m ⊙ d`, the gradient a held unit passes to the previous
/// state.
pub(crate) fn past_cell<F: Float>(acc: &mut [F], d: &[F], m: &[F]) {
    for ((a, &d), &m) in acc.iter_mut().zip(d).zip(m) {
        *a += m * d;
    }
}

/// Backward of c's blend in place: `held = m ⊙ dc` (for [`past_cell`]'s sum after the cell's
/// step) and `dc ← (1 − m) ⊙ dc` (into the cell's step).
pub(crate) fn split_in_place<F: Float>(held: &mut [F], dc: &mut [F], m: &[F]) {
    for ((k, d), &m) in held.iter_mut().zip(dc.iter_mut()).zip(m) {
        *k = m * *d;
        *d = (F::one() - m) * *d;
    }
}
