//! The library's files, whatever the model: explicit IO (`fsio`) and the safetensors layout every
//! model and checkpoint file uses (`tensors`).

pub mod fsio;
pub(crate) mod tensors;
