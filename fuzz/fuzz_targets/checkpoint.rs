//! Fuzzes resuming from a checkpoint file: the model part, the optimizer buffers, the stored
//! training config (JSON in the metadata) and the data position. Any input must resume or give
//! an error, never a panic, a huge allocation or a hang; a run that resumes must train a step.
#![no_main]

use bptt::charlm::Trainer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A fixed text of 2 000 characters over a small alphabet, as token ids.
    let ids: Vec<u32> = (0..2000u32).map(|k| (k * 7 + k / 13) % 5).collect();
    if let Ok(mut t) = Trainer::resume(data, ids.into(), Some(3), 1)
        && t.model.params.len() < 1 << 16
        && !t.done()
    {
        let _ = t.train_step();
    }
});
