//! The recurrent cells: one file per cell, each a fused forward step directly above its backward
//! step. Cells see only per-step slices; they know nothing of layers, losses or optimizers.
//!
//! Gate order and parameter shapes follow PyTorch (`nn.RNN`, `nn.LSTM`, `nn.GRU`): LSTM (i, f,
//! g, o), GRU (r, z, n); `weight_ih` is (G·H, I), `weight_hh` is (G·H, H), both biases (G·H).

pub mod gru;
pub mod lstm;
pub mod rnn;

use crate::error::Error;
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
