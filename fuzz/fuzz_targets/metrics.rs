//! Fuzzes a run folder's `metrics.jsonl` as `plot` and `train --resume` read it: any bytes must
//! parse to series (plot), and the streaming rewrite of a resume (`Metrics::keep_until`) must
//! keep every line except metrics lines logged after the checkpoint, byte for byte, and count
//! the rest — never a panic or a hang.
#![no_main]

use bptt::charlm::Metrics;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let m = Metrics::parse(&String::from_utf8_lossy(data));
    assert!(m.train_loss.len() + m.other.len() <= data.split(|&b| b == b'\n').count());
    let dir = std::env::temp_dir().join(format!("bptt-fuzz-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("metrics.jsonl");
    std::fs::write(&path, data).unwrap();
    let kept = Metrics::keep_until(&path, 7).unwrap();
    let after = std::fs::read(&path).unwrap();
    // What the rewrite must be: each line (the last one given a newline) kept unless it is a
    // JSON object with a whole-number step above 7.
    let mut want = Vec::new();
    let mut dropped = 0;
    for line in data.split_inclusive(|&b| b == b'\n') {
        let step = serde_json::from_slice::<serde_json::Value>(line)
            .ok()
            .filter(|_| line.ends_with(b"\n") && line.len() < 1 << 20)
            .and_then(|v| v["step"].as_u64());
        if step.is_some_and(|s| s > 7) {
            dropped += 1;
            continue;
        }
        want.extend_from_slice(line);
        if !line.ends_with(b"\n") && step.is_none() && !line.iter().all(u8::is_ascii_whitespace) {
            want.push(b'\n');
        }
    }
    assert_eq!(kept.dropped, dropped);
    assert_eq!(after, want);
});
