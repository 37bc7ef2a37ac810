//! Text → training data: the train/validation split and the B contiguous streams.
//!
//! Semantics (exact): the last `val_fraction` of the characters (rounded down) is validation,
//! the rest training. The training ids are cut into B contiguous streams of
//! S = ⌊(n_train − 1) / B⌋ steps; stream b covers ids [b·S, (b+1)·S) as inputs and the
//! following ids as targets. Update u of an epoch feeds the k1 steps [u·k1, (u+1)·k1) of every
//! stream; an epoch has ⌊S / k1⌋ updates, and the hidden state is carried from update to update
//! and reset at the start of each epoch. So with B = 1 and no validation the first update
//! trains text[0..k1] → text[1..k1+1].

use crate::error::{Error, Result};

/// Training and validation ids.
#[derive(Clone, Debug)]
pub struct Split {
    /// The training part.
    pub train: Vec<u32>,
    /// The validation part (possibly empty).
    pub val: Vec<u32>,
}

impl Split {
    /// Splits `ids` with the last `val_fraction` (in [0, 1)) as validation.
    pub fn new(mut ids: Vec<u32>, val_fraction: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&val_fraction) {
            return Err(Error::Config(format!("--val-fraction must be in [0, 1), got {val_fraction}")));
        }
        let n_val = (ids.len() as f64 * val_fraction) as usize;
        let val = ids.split_off(ids.len() - n_val);
        Ok(Split { train: ids, val })
    }
}

/// The B contiguous streams over a training part, and the chunk of update u.
#[derive(Clone, Debug)]
pub struct Streams {
    batch: usize,
    k1: usize,
    /// S, steps per stream.
    len: usize,
}

impl Streams {
    /// Streams over `n` ids for batch `batch` and `k1` steps per update; an error if not even
    /// one update fits.
    pub fn new(n: usize, batch: usize, k1: usize) -> Result<Self> {
        let len = n.saturating_sub(1) / batch.max(1);
        if batch == 0 || k1 == 0 || len < k1 {
            return Err(Error::Data(format!(
                "the training text ({n} characters) is too short for {batch} streams of at least {k1}+1 \
                 characters: use a longer text, a smaller --batch or a smaller --seq-len"
            )));
        }
        Ok(Streams { batch, k1, len })
    }

    /// Updates per epoch, ⌊S / k1⌋.
    pub fn updates_per_epoch(&self) -> usize {
        self.len / self.k1
    }

    /// Fills `x` and `y` (k1, B), time-major, with the inputs and targets of update `u`.
    pub fn chunk(&self, ids: &[u32], u: usize, x: &mut [u32], y: &mut [u32]) {
        let (b, k1, s) = (self.batch, self.k1, self.len);
        for t in 0..k1 {
            for j in 0..b {
                let p = j * s + u * k1 + t;
                x[t * b + j] = ids[p];
                y[t * b + j] = ids[p + 1];
            }
        }
    }
}
