//! The recurrent cells: one file per cell, each a fused forward step directly above its backward
//! step. Cells see only per-step slices; they know nothing of layers, losses or optimizers.
//!
//! Gate order and parameter shapes follow PyTorch (`nn.RNN`, `nn.LSTM`, `nn.GRU`): LSTM (i, f,
//! g, o), GRU (r, z, n); `weight_ih` is (G·H, I), `weight_hh` is (G·H, H), both biases (G·H).

pub mod gru;
pub mod lstm;
pub(crate) mod norm;
pub mod rnn;

use crate::error::Error;
use crate::float::Float;
use std::fmt;
use std::str::FromStr;

/// Which recurrent cell a layer uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CellKind {
    /// Elman RNN, h' = tanh(W_ih x + b_ih + W_hh h + b_hh).
    RnnTanh,
    /// Elman RNN with ReLU, h' = relu(W_ih x + b_ih + W_hh h + b_hh).
    RnnRelu,
    /// Long short-term memory (Hochreiter & Schmidhuber 1997), PyTorch formulation.
    Lstm,
    /// Gated recurrent unit (Cho et al. 2014), PyTorch formulation.
    Gru,
}

impl CellKind {
    /// All cells, in the order the CLI lists them.
    pub const ALL: [CellKind; 4] = [CellKind::Lstm, CellKind::Gru, CellKind::RnnTanh, CellKind::RnnRelu];

    /// G: the number of gate blocks stacked in the weight matrices (RNN 1, LSTM 4, GRU 3).
    pub fn gates(self) -> usize {
        match self {
            CellKind::RnnTanh | CellKind::RnnRelu => 1,
            CellKind::Lstm => 4,
            CellKind::Gru => 3,
        }
    }

    /// True for the LSTM, the only cell with a memory cell state `c` besides `h`.
    pub fn has_cell_state(self) -> bool {
        self == CellKind::Lstm
    }

    /// Whether the cell's output can be projected (PyTorch's `proj_size`: h_t = W_hr m_t with
    /// m_t the cell's own output, o ⊙ tanh(c_t), kept apart from the state c): the LSTM.
    pub fn projects(self) -> bool {
        self == CellKind::Lstm
    }

    /// True for the GRU, whose recurrent product W_hh·h + b_hh is kept apart from the input's
    /// (it enters as r ⊙ (W_hn h + b_hn)): `net/` then keeps b_hh on the recurrent side, stores
    /// the product per step and adds its own term to dL/dh_{t−1}.
    pub fn recurrent_apart(self) -> bool {
        self == CellKind::Gru
    }

    /// True if a step keeps a per-unit value for backward besides h and c (LSTM tanh(c_t), GRU
    /// n_t).
    pub fn has_aux(self) -> bool {
        matches!(self, CellKind::Lstm | CellKind::Gru)
    }

    /// The name used in files and on the command line (`rnn_tanh`, `rnn_relu`, `lstm`, `gru`).
    pub fn name(self) -> &'static str {
        match self {
            CellKind::RnnTanh => "rnn_tanh",
            CellKind::RnnRelu => "rnn_relu",
            CellKind::Lstm => "lstm",
            CellKind::Gru => "gru",
        }
    }
}

impl fmt::Display for CellKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CellKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        CellKind::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| Error::Config(format!("unknown cell '{s}': use one of lstm, gru, rnn_tanh, rnn_relu")))
    }
}

/// A cell kind in config and model files as its name (`lstm`, `gru`, `rnn_tanh`, `rnn_relu`):
/// `#[serde(with = "crate::cell::serde_name")]`.
pub(crate) mod serde_name {
    use super::CellKind;

    pub fn serialize<S: serde::Serializer>(c: &CellKind, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(c.name())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<CellKind, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One forward step of a cell as `net/` hands it over, for whole rows or for a block of units
/// of one row; the slices a cell does not use are empty. With [`CellKind::forward_rows`] /
/// [`CellKind::forward_units`], `net/` runs any cell without naming one.
pub(crate) struct Step<'a, F> {
    /// The gates' pre-activations, activated in place: whole rows (r, G·H) in `g[0]`, or for a
    /// block of units one slice per gate block.
    pub g: [&'a mut [F]; 4],
    /// The GRU's recurrent products W_h·h + b_h, laid out as `g`.
    pub hp: [&'a [F]; 3],
    /// h_{t−1} (GRU).
    pub h_prev: &'a [F],
    /// c_{t−1} (LSTM).
    pub c_prev: &'a [F],
    /// Out: c_t (LSTM).
    pub c: &'a mut [F],
    /// Out: tanh(c_t) (LSTM) or n_t (GRU), kept for backward.
    pub aux: &'a mut [F],
    /// Out: h_t.
    pub h: &'a mut [F],
}

/// One backward step of a cell, laid out as [`Step`].
pub(crate) struct BackStep<'a, F> {
    /// dL/dh_t (total).
    pub dh: &'a [F],
    /// In: the activated gates; out: dL/d(input-side pre-activations).
    pub g: [&'a mut [F]; 4],
    /// Out: dL/d(recurrent pre-activations) (GRU).
    pub dgh: [&'a mut [F]; 3],
    /// h_t (RNN).
    pub h: &'a [F],
    /// h_{t−1} (GRU).
    pub h_prev: &'a [F],
    /// c_{t−1} (LSTM).
    pub c_prev: &'a [F],
    /// dL/dc: in from t + 1, out to t − 1 (LSTM).
    pub dc: &'a mut [F],
    /// tanh(c_t) (LSTM) or n_t (GRU).
    pub aux: &'a [F],
    /// Out: the direct part of dL/dh_{t−1} (GRU; the layer adds the recurrent GEMM).
    pub dh_prev: &'a mut [F],
}

impl CellKind {
    /// The forward step over whole rows.
    #[inline(always)]
    pub(crate) fn forward_rows<F: Float>(self, hidden: usize, s: Step<'_, F>) {
        let Step { g: [g, ..], hp: [hp, ..], h_prev, c_prev, c, aux, h } = s;
        match self {
            CellKind::RnnTanh | CellKind::RnnRelu => rnn::forward_step(self == CellKind::RnnRelu, g, h),
            CellKind::Lstm => lstm::forward_step(hidden, g, c_prev, c, aux, h),
            CellKind::Gru => gru::forward_step(hidden, g, hp, h_prev, aux, h),
        }
    }

    /// The forward step over a block of units of one row (inlined into the SIMD-compiled
    /// caller).
    #[inline(always)]
    pub(crate) fn forward_units<F: Float>(self, s: Step<'_, F>) {
        let Step { g: [g0, g1, g2, g3], hp: [p0, p1, p2], h_prev, c_prev, c, aux, h } = s;
        match self {
            CellKind::RnnTanh | CellKind::RnnRelu => rnn::forward_step(self == CellKind::RnnRelu, g0, h),
            CellKind::Lstm => lstm::forward_row(g0, g1, g2, g3, c_prev, c, aux, h),
            CellKind::Gru => gru::forward_row(g0, g1, g2, p0, p1, p2, h_prev, aux, h),
        }
    }

    /// The backward step over whole rows.
    #[inline(always)]
    pub(crate) fn backward_rows<F: Float>(self, hidden: usize, s: BackStep<'_, F>) {
        let BackStep { dh, g: [g, ..], dgh: [dgh, ..], h, h_prev, c_prev, dc, aux, dh_prev } = s;
        match self {
            CellKind::RnnTanh | CellKind::RnnRelu => rnn::backward_step(self == CellKind::RnnRelu, dh, h, g),
            CellKind::Lstm => lstm::backward_step(hidden, dh, dc, g, c_prev, aux),
            CellKind::Gru => gru::backward_step(hidden, dh, g, dgh, aux, h_prev, dh_prev),
        }
    }

    /// The backward step over a block of units of one row.
    #[inline(always)]
    pub(crate) fn backward_units<F: Float>(self, s: BackStep<'_, F>) {
        let BackStep { dh, g: [g0, g1, g2, g3], dgh: [d0, d1, d2], h, h_prev, c_prev, dc, aux, dh_prev } = s;
        match self {
            CellKind::RnnTanh | CellKind::RnnRelu => rnn::backward_step(self == CellKind::RnnRelu, dh, h, g0),
            CellKind::Lstm => lstm::backward_row(g0, g1, g2, g3, dh, dc, c_prev, aux),
            CellKind::Gru => gru::backward_row(g0, g1, g2, d0, d1, d2, dh, aux, h_prev, dh_prev),
        }
    }
}
