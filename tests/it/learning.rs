//! A small learning test: an LSTM learns to echo the input it saw 5 steps earlier.

use bptt::{
    CellKind, Clip, Head, Input, InputKind, LossKind, Net, NetConfig, Optimizer, OptimizerConfig, Targets, apply_update,
};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[test]
fn lstm_learns_to_echo_five_steps_back() {
    let (t, b, v, lag) = (20, 32, 4, 5);
    let cfg = NetConfig {
        cell: CellKind::Lstm,
        input: InputKind::Dense { size: v },
        hidden: 32,
        layers: 1,
        output: v,
        loss: LossKind::CrossEntropy,
        head: Head::PerStep,
        bidirectional: false,
        proj_size: 0,
        layer_norm: false,
        zoneout: bptt::Zoneout::NONE,
    };
    let net = Net::new(cfg).unwrap();
    let mut params = net.init_params::<f32>(42);
    let mut grads = vec![0.0; params.len()];
    let mut ws = net.workspace(t, b, 1).unwrap();
    let mut opt = Optimizer::new(OptimizerConfig::adam(), params.len()).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mask: Vec<f32> = (0..t * b).map(|k| if k / b >= lag { 1.0 } else { 0.0 }).collect();
    let mut batch = || {
        let ids: Vec<u32> = (0..t * b).map(|_| rng.random_range(0..v as u32)).collect();
        let mut x = vec![0.0f32; t * b * v];
        for (k, &id) in ids.iter().enumerate() {
            x[k * v + id as usize] = 1.0;
        }
        let y: Vec<u32> = (0..t * b).map(|k| if k >= lag * b { ids[k - lag * b] } else { 0 }).collect();
        (x, y)
    };
    let (mut first, mut last) = (None, f32::INFINITY);
    for _ in 0..600 {
        let (x, y) = batch();
        let loss =
            net.forward(&params, &mut ws, Input::Dense(&x), Some(Targets::classes(&y).with_mask(&mask)), None).unwrap();
        first.get_or_insert(loss);
        last = loss;
        grads.fill(0.0);
        net.backward(&params, &mut ws, &mut grads).unwrap();
        apply_update(&mut params, &mut grads, &mut opt, 1e-2, Clip { max_norm: Some(5.0), max_value: None });
    }
    let first = first.unwrap();
    assert!((first - (v as f32).ln()).abs() < 0.2, "initial loss {first} should be near ln 4");
    assert!(last < 0.02, "loss after training {last} (from {first}) is not near zero");
}
