//! The library's files, whatever the model: explicit IO (`fsio`) and the safetensors layout every
//! model and checkpoint file uses (`tensors`).

pub mod fsio;
pub(crate) mod tensors;

/// FNV-1a 64 of `bytes`: the hash a run records of its data and the ranks of a data-parallel
/// run compare at the start.
pub fn fnv1a64(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}
