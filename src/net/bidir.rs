//! Bidirectional layers: the reverse direction is the same layer code run over each sequence's
//! steps in reverse order — its input rows gathered as x_{len−1}, …, x_0 (each sequence from its
//! own last step, so padding is never read), its outputs put back in step order beside the
//! forward direction's. These are the maps between the two orders.

use crate::float::Float;
use crate::kernels;

/// The reverse order of a pass of `steps` steps of `b` rows: row r's step t is its step
/// len_r − 1 − t, for t < len_r (len_r its length, or T without lengths).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reverse<'a> {
    pub steps: usize,
    pub b: usize,
    pub lengths: &'a [usize],
}

impl Reverse<'_> {
    fn len(&self, r: usize) -> usize {
        self.lengths.get(r).map_or(self.steps, |&l| l.min(self.steps))
    }

    /// The (t, r) pairs of real steps with their mirror, as offsets of rows of `w` values in a
    /// (T, B, w) buffer: (t, r) and (len_r − 1 − t, r).
    fn pairs(&self, w: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.b).flat_map(move |r| {
            let len = self.len(r);
            (0..len).map(move |t| ((t * self.b + r) * w, ((len - 1 - t) * self.b + r) * w))
        })
    }

    /// dst (T, B, w) = src in the reverse order; zeros past each row's length.
    pub fn copy<F: Float>(&self, src: &[F], dst: &mut [F], w: usize) {
        dst[..self.steps * self.b * w].fill(F::zero());
        for (at, from) in self.pairs(w) {
            dst[at..at + w].copy_from_slice(&src[from..from + w]);
        }
    }

    /// dst (T, B, w) += src in the reverse order (src's rows past each length are ignored).
    pub fn add<F: Float>(&self, src: &[F], dst: &mut [F], w: usize) {
        for (at, from) in self.pairs(w) {
            kernels::add_into(&mut dst[at..at + w], &src[from..from + w]);
        }
    }

    /// A layer's outputs (T, B, 2H): the forward direction's h_t (T, B, H) and the reverse
    /// direction's, taken back into step order (zeros past each length), side by side.
    pub fn join<F: Float>(&self, fwd: &[F], rev: &[F], out: &mut [F], h: usize) {
        let n = self.steps * self.b;
        for (k, row) in out[..n * 2 * h].chunks_exact_mut(2 * h).enumerate() {
            row[..h].copy_from_slice(&fwd[k * h..(k + 1) * h]);
            row[h..].fill(F::zero());
        }
        for (at, from) in self.pairs(h) {
            out[2 * at + h..2 * at + 2 * h].copy_from_slice(&rev[from..from + h]);
        }
    }

    /// The gradient of [`Reverse::join`]: dL/d(outputs) (T, B, 2H) into each direction's
    /// dL/dh_t (T, B, H), the reverse one in its own order (zeros past each length).
    pub fn split<F: Float>(&self, dout: &[F], dfwd: &mut [F], drev: &mut [F], h: usize) {
        let n = self.steps * self.b;
        for (k, row) in dout[..n * 2 * h].chunks_exact(2 * h).enumerate() {
            dfwd[k * h..(k + 1) * h].copy_from_slice(&row[..h]);
        }
        drev[..n * h].fill(F::zero());
        for (at, from) in self.pairs(h) {
            drev[from..from + h].copy_from_slice(&dout[2 * at + h..2 * at + 2 * h]);
        }
    }
}
