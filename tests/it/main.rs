//! The integration tests, one binary (`cargo test --release`), one module per topic.

mod alloc;
mod common;
mod gradcheck;
mod learning;
mod optim;
mod tbptt;
mod torch;
mod torch_expected;
