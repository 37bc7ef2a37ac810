//! Fuzzes a run folder's `metrics.jsonl` as `plot` and `train --resume` read it: any text must
//! parse to series or give an error (plot), and keep its lines up to a step (resume), never a
//! panic or a hang.
#![no_main]

use bptt::charlm::Metrics;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = Metrics::parse(&text, Path::new("metrics.jsonl"));
    let kept = Metrics::until(&text, 7);
    assert!(kept.len() <= text.len() + text.lines().count());
});
