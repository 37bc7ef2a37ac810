//! Fuzzes a run folder's `config.json` as `train --resume` reads it: any bytes must parse to a
//! run whose settings a fresh run would accept, or give an error, never a panic, a huge
//! allocation or a hang; what parses must also give a memory estimate and an epoch length.
#![no_main]

use bptt::charlm::RunFile;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(run) = RunFile::parse(data, Path::new("config.json")) {
        let _ = run.train.estimate_bytes(65);
        let _ = run.train.updates_per_epoch(100_000);
        let _ = run.to_json();
    }
});
