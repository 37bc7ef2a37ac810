//! `bptt`: recurrent networks (RNN, LSTM, GRU) trained by hand-written backpropagation
//! through time.
//!
//! Dimension key used in every doc comment and buffer annotation:
//! T = time steps, B = batch, I = input width, E = embedding width, H = hidden width,
//! G = gates per cell (rnn 1, gru 3, lstm 4), L = layers, V = vocabulary, O = readout width.
//! Activations are time-major: x is (T, B, I), hidden states (T+1, B, H) with row 0 the
//! initial state.

pub mod cell;
pub mod charlm;
pub mod diagnose;
pub mod dist;
pub mod error;
pub mod files;
pub mod float;
pub mod kernels;
pub mod net;
pub mod online;
pub mod optim;
pub mod seq;
pub mod tasks;
pub mod train;

pub use cell::CellKind;
pub use error::{Error, Result};
pub use float::Float;
pub use net::{
    Head, Input, InputKind, LossKind, Net, NetConfig, ParamInfo, Pool, State, Target, Targets, Workspace, Zoneout,
};
pub use optim::{LrSchedule, Optimizer, OptimizerConfig, OptimizerState, Schedule};
pub use train::{CheckpointedBptt, Clip, Tbptt, UpdateReport, apply_update};

/// The README's code blocks, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
