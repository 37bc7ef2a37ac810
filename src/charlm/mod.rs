//! The character-level language model: vocabulary, data streams, model files, evaluation,
//! sampling and the training loop (`bptt train | sample | eval` are thin shells over this).

pub mod data;
pub use crate::files::fsio;
pub mod model;
pub mod run;
pub mod sample;
pub mod train;
pub mod vocab;

pub use data::{Split, Streams, TokenIds};
pub use model::{CharModel, Eval, ModelSpec};
pub use run::{Cadence, Kept, Metrics, RunFile};
pub use sample::Sampler;
pub use train::{StepMetrics, TrainConfig, Trainer};
pub use vocab::Vocab;
