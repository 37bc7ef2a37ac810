//! Criterion benches: the fused cell steps and one full training step (forward, backward,
//! clip, Adam) of the char-LM. `cargo bench`; `bptt bench` reports tokens/s and GFLOP/s.

use bptt::cell::{gru, lstm};
use bptt::charlm::ModelSpec;
use bptt::{CellKind, Clip, Input, Net, Optimizer, OptimizerConfig, Targets, apply_update};
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

fn cell_steps(c: &mut Criterion) {
    let (b, h) = (32, 256);
    let pre: Vec<f32> = (0..b * 4 * h).map(|k| ((k * 37 % 101) as f32) / 25.0 - 2.0).collect();
    let c_prev = vec![0.1f32; b * h];
    let (mut cc, mut tc, mut hh) = (vec![0f32; b * h], vec![0f32; b * h], vec![0f32; b * h]);
    let mut gates = pre.clone();
    c.bench_function("lstm forward_step B=32 H=256", |bn| {
        bn.iter(|| {
            gates.copy_from_slice(&pre);
            lstm::forward_step(h, black_box(&mut gates), &c_prev, &mut cc, &mut tc, &mut hh);
        })
    });
    let dh = vec![0.01f32; b * h];
    let mut dc = vec![0f32; b * h];
    c.bench_function("lstm backward_step B=32 H=256", |bn| {
        bn.iter(|| {
            gates.copy_from_slice(&pre);
            lstm::backward_step(h, &dh, &mut dc, black_box(&mut gates), &c_prev, &tc);
        })
    });
    let pre3: Vec<f32> = pre[..b * 3 * h].to_vec();
    let mut g3 = pre3.clone();
    let hproj = pre3.clone();
    let mut hn = vec![0f32; b * h];
    c.bench_function("gru forward_step B=32 H=256", |bn| {
        bn.iter(|| {
            g3.copy_from_slice(&pre3);
            gru::forward_step(h, black_box(&mut g3), &hproj, &c_prev, &mut hn, &mut hh);
        })
    });
}

fn training_step(c: &mut Criterion) {
    for (cell, b) in [(CellKind::Lstm, 32), (CellKind::Lstm, 1), (CellKind::Gru, 32)] {
        let spec = ModelSpec {
            cell,
            embedding_dim: 64,
            hidden: 256,
            layers: 1,
            layer_norm: false,
            zoneout: bptt::Zoneout::NONE,
        };
        let net = Net::new(spec.net_config(65)).unwrap();
        let mut p = net.init_params::<f32>(1);
        let mut g = vec![0f32; p.len()];
        let t = 100;
        let mut ws = net.workspace::<f32>(t, b, 1).unwrap();
        let mut opt = Optimizer::new(OptimizerConfig::adam(), p.len()).unwrap();
        let x: Vec<u32> = (0..t * b).map(|k| (k * 7 % 65) as u32).collect();
        let y: Vec<u32> = (0..t * b).map(|k| (k * 11 % 65) as u32).collect();
        let clip = Clip { max_norm: Some(5.0), max_value: None };
        c.bench_function(&format!("train step {cell} H=256 B={b} T=100, 1 thread"), |bn| {
            bn.iter(|| {
                net.forward(&p, &mut ws, Input::Tokens(&x), Some(Targets::classes(&y)), None).unwrap();
                g.fill(0.0);
                net.backward(&p, &mut ws, &mut g).unwrap();
                apply_update(&mut p, &mut g, &mut opt, 2e-3, clip);
            })
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = cell_steps, training_step
}
criterion_main!(benches);
