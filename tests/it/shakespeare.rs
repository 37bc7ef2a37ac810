//! A learning test on tiny-shakespeare (`data/tinyshakespeare.txt`, shipped in the repository):
//! validation loss falls well below the unigram entropy within a bounded number of updates.

use bptt::CellKind;
use bptt::charlm::train::TrainConfig;
use bptt::charlm::{CharModel, ModelSpec, Trainer, Vocab};
use std::path::Path;

pub fn corpus() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/tinyshakespeare.txt");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{} is part of the repository: {e}", p.display()))
}

#[test]
fn lstm_learns_shakespeare_below_unigram_entropy() {
    let text = corpus();
    let vocab = Vocab::from_text(&text).unwrap();
    let ids = vocab.encode(&text).unwrap();
    let mut counts = vec![0usize; vocab.len()];
    ids.iter().for_each(|i| counts[i as usize] += 1);
    let n = ids.len() as f64;
    let unigram: f64 = counts.iter().filter(|&&c| c > 0).map(|&c| -(c as f64 / n) * (c as f64 / n).ln()).sum();

    let spec = ModelSpec {
        cell: CellKind::Lstm,
        embedding_dim: 32,
        hidden: 128,
        layers: 1,
        layer_norm: false,
        zoneout: bptt::Zoneout::NONE,
    };
    let cfg = TrainConfig {
        seq_len: 64,
        k1: 64,
        lr: 3e-3,
        steps: 250,
        val_fraction: 0.02,
        seed: 1,
        ..TrainConfig::new(spec)
    };
    let model = CharModel::new(spec, vocab, 1).unwrap();
    let mut t = Trainer::new(cfg, model, ids, 2).unwrap();
    let before = t.validate().unwrap().unwrap().loss;
    while !t.done() {
        t.train_step().unwrap();
    }
    let after = t.validate().unwrap().unwrap().loss;
    eprintln!("unigram entropy {unigram:.3} nats; validation loss {before:.3} -> {after:.3} after 250 updates");
    assert!((before - (65f64).ln()).abs() < 0.3, "initial loss {before} should be near ln 65");
    assert!(after < unigram - 0.8, "validation loss {after} is not well below the unigram entropy {unigram}");
}

/// Learning online (`online: snap`): one stream of tiny-shakespeare, an update after every
/// character by SnAp-1's gradient, no stored window; 20,000 characters take the validation
/// loss well below the unigram entropy.
#[test]
fn lstm_learns_shakespeare_online_by_snap() {
    let text = corpus();
    let vocab = Vocab::from_text(&text).unwrap();
    let ids = vocab.encode(&text).unwrap();
    let spec = ModelSpec {
        cell: CellKind::Lstm,
        embedding_dim: 32,
        hidden: 64,
        layers: 1,
        layer_norm: false,
        zoneout: bptt::Zoneout::NONE,
    };
    let cfg = TrainConfig {
        batch: 1,
        lr: 3e-3,
        steps: 200,
        val_fraction: 0.02,
        seed: 1,
        online: Some("snap".into()),
        ..TrainConfig::new(spec)
    };
    let model = CharModel::new(spec, vocab, 1).unwrap();
    let mut t = Trainer::new(cfg, model, ids, 2).unwrap();
    let before = t.validate().unwrap().unwrap().loss;
    while !t.done() {
        let m = t.train_step().unwrap();
        assert!(!m.skipped);
    }
    assert_eq!(t.tokens, 20_000, "one update per character, 100 characters per step");
    let after = t.validate().unwrap().unwrap().loss;
    eprintln!("online SnAp-1: validation loss {before:.3} -> {after:.3} after 20,000 characters");
    assert!(after < before - 1.2, "validation loss {before} -> {after}: online SnAp-1 did not learn");
}
