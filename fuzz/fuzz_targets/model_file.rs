//! Fuzzes the model-file loader: safetensors header, bptt metadata, shape and size checks.
//! Any input must give a model or an error, never a panic, a huge allocation or a hang; a
//! model that loads must evaluate and sample to a result or a clean error.
#![no_main]

use bptt::charlm::{CharModel, Sampler};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = CharModel::from_bytes(data) {
        assert!(m.params.iter().all(|v| v.is_finite()));
        if m.params.len() < 1 << 16 {
            let ids = [0u32, (m.vocab.len() - 1) as u32, 0];
            if let Ok(e) = m.evaluate(&ids[..].into(), 1, 2, 1) {
                assert!(e.loss.is_finite());
            }
            let mut s = Sampler::new(&m, 1, 1).unwrap();
            s.feed(&ids).unwrap();
            let _ = s.next(1.0, Some(2));
        }
    }
});
