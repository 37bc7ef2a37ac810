//! What a pass reads and returns besides the weights: inputs, targets, and the carried state.

use super::*;

/// Recurrent state of all layers: h (L·D, B, H) and, for the LSTM, c (L·D, B, H); D = 2 for a
/// bidirectional net, layer by layer, forward direction first (PyTorch's `h_n`). With a
/// projection h is (L·D, B, P).
#[derive(Clone, Debug, PartialEq)]
pub struct State<F> {
    /// Hidden states, (L, B, H).
    pub h: Vec<F>,
    /// Cell states, (L, B, H) for the LSTM, empty otherwise.
    pub c: Vec<F>,
}

impl<F: Float> State<F> {
    /// The all-zero state for `config` and batch `batch`.
    pub fn zeros(config: &NetConfig, batch: usize) -> Self {
        let n = config.layers * config.directions() * batch;
        let c = if config.cell.has_cell_state() { n * config.hidden } else { 0 };
        State { h: vec![F::zero(); n * config.state_width()], c: vec![F::zero(); c] }
    }
}

/// The network input for one forward pass.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a, F> {
    /// (T, B, I) real values, for `InputKind::Dense`.
    Dense(&'a [F]),
    /// (T, B) token ids, for `InputKind::Tokens`.
    Tokens(&'a [u32]),
}

impl<F> Input<'_, F> {
    pub(crate) fn len(&self) -> usize {
        match self {
            Input::Dense(x) => x.len(),
            Input::Tokens(x) => x.len(),
        }
    }
}

/// What the readout is compared with.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a, F> {
    /// (T, B) class ids in `0..O`, for `LossKind::CrossEntropy`.
    Classes(&'a [u32]),
    /// (T, B, O) real targets, for `LossKind::Mse`.
    Values(&'a [F]),
}

/// Targets plus an optional weight per row: per (t, b) for a per-step head (0 excludes a
/// position), per sequence for a pooled head (e.g. class weights). For one label per sequence
/// use a pooled head ([`Head::Pooled`]) — targets (B) and each sequence read at its own length —
/// not a mask that is 1 only at step T − 1: with variable lengths such a mask would zero every
/// shorter sequence.
#[derive(Clone, Copy, Debug)]
pub struct Targets<'a, F> {
    /// The targets.
    pub target: Target<'a, F>,
    /// (T, B) non-negative weights; `None` counts every position with weight 1.
    pub mask: Option<&'a [F]>,
}

impl<'a, F> Targets<'a, F> {
    /// Class targets, every position counted.
    pub fn classes(y: &'a [u32]) -> Self {
        Targets { target: Target::Classes(y), mask: None }
    }

    /// Real targets, every position counted.
    pub fn values(y: &'a [F]) -> Self {
        Targets { target: Target::Values(y), mask: None }
    }

    /// The same targets with a (T, B) weight mask.
    pub fn with_mask(self, mask: &'a [F]) -> Self {
        Targets { mask: Some(mask), ..self }
    }
}
