//! Seeing BPTT: gradient flow through time, the per-step Jacobian and W_hh spectra, the bias
//! of truncated BPTT, the unrolled graph, and the plots and HTML report that show them. Every
//! number comes from a real forward/backward pass; nothing is drawn in.

pub mod experiments;
pub mod flow;
pub mod graph;
pub mod online;
pub mod plot;
pub mod report;
pub mod truncation;

pub use flow::{CellFlow, FlowConfig, gradient_flow};
pub use online::{OnlinePoint, online_bias};
pub use truncation::{TruncationPoint, truncation_bias};
