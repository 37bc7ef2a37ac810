//! The integration tests, one binary (`cargo test --release`), one module per topic.

mod alloc;
mod bad_input;
mod cli;
mod common;
mod determinism;
mod diagnose;
mod dist;
mod fit;
mod gradcheck;
mod learning;
mod misuse;
#[cfg(feature = "mpi")]
mod mpi;
mod never_lose;
mod online;
mod optim;
mod precision;
mod reliability;
mod seq;
mod shakespeare;
mod tbptt;
mod tidy;
mod torch;
mod torch_expected;
