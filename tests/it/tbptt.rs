//! Truncated BPTT: k1 = k2 ≥ T is full BPTT exactly; k1 = k2 < T is chunked training with the
//! state carried; k1 < k2 equals a naive reference written from the definition.

use crate::common::{Mode, Problem};
use bptt::{
    CellKind, Head, Input, InputKind, LossKind, Net, NetConfig, Optimizer, OptimizerConfig, State, Targets, Tbptt,
};
use std::collections::HashMap;

#[test]
fn k2_at_least_t_equals_full_bptt_exactly() {
    for cell in CellKind::ALL {
        for tokens in [false, true] {
            let p = Problem::new(cell, 2, Mode::ManyToManyCe, tokens, 3, 6, 7);
            let mut ws = p.net.workspace(6, 3, 1).unwrap();
            let full_loss = p.net.forward(&p.params, &mut ws, p.input(), Some(p.targets()), Some(&p.init)).unwrap();
            let mut full = vec![0.0; p.net.num_params()];
            p.net.backward(&p.params, &mut ws, &mut full).unwrap();
            for k in [6, 9] {
                let mut tb = Tbptt::new(&p.net, k, k, 3, 1).unwrap();
                tb.reset(Some(&p.init));
                let mut g = vec![0.0; p.net.num_params()];
                let loss = tb.step(&p.net, &p.params, p.input(), p.targets(), &mut g).unwrap();
                assert_eq!(loss, full_loss, "{cell} k={k}");
                assert_eq!(g, full, "{cell} k={k}: TBPTT gradient differs from full BPTT");
                assert_eq!(tb.carried_state(), &ws.final_state());
            }
        }
    }
}

/// A stream of `n` steps for a dense-input, class-target network of batch `b`.
struct Stream {
    net: Net,
    x: Vec<f64>,
    y: Vec<u32>,
    b: usize,
    i: usize,
}

impl Stream {
    fn new(cell: CellKind, n: usize, b: usize) -> Self {
        let i = 3;
        let cfg = NetConfig {
            cell,
            input: InputKind::Dense { size: i },
            hidden: 5,
            layers: 2,
            output: 4,
            loss: LossKind::CrossEntropy,
            head: Head::PerStep,
            bidirectional: false,
            proj_size: 0,
            layer_norm: false,
            zoneout: bptt::Zoneout::NONE,
        };
        let x = (0..n * b * i).map(|k| (0.61 * k as f64).sin()).collect();
        let y = (0..n * b).map(|k| ((k * 7 + k / 5) % 4) as u32).collect();
        Stream { net: Net::new(cfg).unwrap(), x, y, b, i }
    }
    fn x(&self, s: usize, e: usize) -> &[f64] {
        &self.x[s * self.b * self.i..e * self.b * self.i]
    }
    fn y(&self, s: usize, e: usize) -> &[u32] {
        &self.y[s * self.b..e * self.b]
    }
}

/// Runs TBPTT(k1, k2) with SGD over the whole stream with the driver; returns losses and the
/// final parameters.
fn driver(s: &Stream, n: usize, k1: usize, k2: usize) -> (Vec<f64>, Vec<f64>) {
    driver_with(s, n, k1, k2, 0)
}

/// [`driver`] with checkpointed windows of segments of `every` steps (0: plain windows).
fn driver_with(s: &Stream, n: usize, k1: usize, k2: usize, every: usize) -> (Vec<f64>, Vec<f64>) {
    let mut params = s.net.init_params::<f64>(3);
    let mut opt = Optimizer::new(OptimizerConfig::sgd(), params.len()).unwrap();
    let mut tb = Tbptt::with_checkpoints(&s.net, k1, k2, s.b, 1, every).unwrap();
    let mut losses = Vec::new();
    let mut e = 0;
    while e < n {
        let next = (e + k1).min(n);
        let mut g = vec![0.0; params.len()];
        let loss =
            tb.step(&s.net, &params, Input::Dense(s.x(e, next)), Targets::classes(s.y(e, next)), &mut g).unwrap();
        opt.step(&mut params, &g, 0.5);
        losses.push(loss);
        e = next;
    }
    (losses, params)
}

/// The definition, naively: at each update feeding [e_prev, e), take the window
/// [max(0, e_prev − (k2 − k1)), e),
/// start it from the most recently computed state at its first position, count only the steps
/// fed since the last update, backpropagate through the whole window.
fn naive(s: &Stream, n: usize, k1: usize, k2: usize) -> (Vec<f64>, Vec<f64>) {
    let net = &s.net;
    let mut params = net.init_params::<f64>(3);
    let mut opt = Optimizer::new(OptimizerConfig::sgd(), params.len()).unwrap();
    let mut states: HashMap<usize, State<f64>> = HashMap::new();
    states.insert(0, State::zeros(net.config(), s.b));
    let mut losses = Vec::new();
    let mut e_prev = 0;
    while e_prev < n {
        let e = (e_prev + k1).min(n);
        let start = e_prev.saturating_sub(k2 - k1);
        let mask: Vec<f64> = (start..e).flat_map(|t| vec![if t >= e_prev { 1.0 } else { 0.0 }; s.b]).collect();
        let mut ws = net.workspace(e - start, s.b, 1).unwrap();
        let targets = Targets::classes(s.y(start, e)).with_mask(&mask);
        let loss =
            net.forward(&params, &mut ws, Input::Dense(s.x(start, e)), Some(targets), Some(&states[&start])).unwrap();
        for t in 1..=e - start {
            let mut st = State { h: vec![], c: vec![] };
            ws.state_at(t, &mut st);
            states.insert(start + t, st);
        }
        let mut g = vec![0.0; params.len()];
        net.backward(&params, &mut ws, &mut g).unwrap();
        opt.step(&mut params, &g, 0.5);
        losses.push(loss);
        e_prev = e;
    }
    (losses, params)
}

#[test]
fn k1_below_k2_equals_the_definition() {
    for cell in CellKind::ALL {
        for (n, k1, k2) in [(11, 3, 5), (13, 2, 7), (9, 4, 4), (10, 1, 3), (7, 3, 20)] {
            let s = Stream::new(cell, n, 2);
            let (l1, p1) = driver(&s, n, k1, k2);
            let (l2, p2) = naive(&s, n, k1, k2);
            assert_eq!(l1, l2, "{cell} n={n} k1={k1} k2={k2}: losses");
            assert_eq!(p1, p2, "{cell} n={n} k1={k1} k2={k2}: parameters");
        }
    }
}

/// Windows run as checkpointed BPTT (any segment length, carried states taken from the
/// recomputed segments) train like plain windows, to rounding, for every cell and both k1 = k2
/// and k1 < k2.
#[test]
fn checkpointed_windows_equal_plain_windows() {
    for cell in CellKind::ALL {
        for (n, k1, k2) in [(11, 3, 5), (13, 2, 7), (12, 4, 4), (10, 1, 3)] {
            let s = Stream::new(cell, n, 2);
            let (l1, p1) = driver(&s, n, k1, k2);
            for every in [1, 2, 3, 10] {
                let (l2, p2) = driver_with(&s, n, k1, k2, every);
                let close =
                    |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-12 * x.abs().max(1.0));
                assert!(close(&l1, &l2), "{cell} n={n} k1={k1} k2={k2} K={every}: losses {l1:?} vs {l2:?}");
                assert!(close(&p1, &p2), "{cell} n={n} k1={k1} k2={k2} K={every}: parameters differ");
            }
        }
    }
}

#[test]
fn bad_k_is_an_error() {
    let s = Stream::new(CellKind::Lstm, 4, 1);
    assert!(Tbptt::<f32>::new(&s.net, 5, 3, 1, 1).is_err());
    assert!(Tbptt::<f32>::new(&s.net, 0, 3, 1, 1).is_err());
}

/// Checkpointed BPTT (recompute each segment in the backward pass) gives plain BPTT's loss and
/// gradients, for every cell, input kind and segment length, masks included.
#[test]
fn checkpointed_bptt_equals_plain_bptt() {
    use bptt::CheckpointedBptt;
    for cell in CellKind::ALL {
        for (tokens, mode) in [(false, Mode::WeightedCe), (true, Mode::ManyToManyCe), (false, Mode::ManyToOneMse)] {
            let p = Problem::new(cell, 2, mode, tokens, 3, 11, 21);
            let mut ws = p.net.workspace(11, 3, 1).unwrap();
            let loss = p.net.forward(&p.params, &mut ws, p.input(), Some(p.targets()), Some(&p.init)).unwrap();
            let mut plain = vec![0.0; p.net.num_params()];
            p.net.backward(&p.params, &mut ws, &mut plain).unwrap();
            for k in [1, 2, 3, 4, 11, 16] {
                let mut ck = CheckpointedBptt::new(&p.net, k, 3, 1).unwrap();
                let mut g = vec![0.0; p.net.num_params()];
                let l = ck.run(&p.net, &p.params, p.input(), p.targets(), Some(&p.init), &mut g).unwrap();
                assert!((l - loss).abs() <= 1e-13 * loss.abs(), "{cell} k={k}: loss {l} vs {loss}");
                for (j, (a, b)) in g.iter().zip(&plain).enumerate() {
                    assert!((a - b).abs() <= 1e-12 * b.abs().max(1e-3), "{cell} {mode:?} k={k}: grad[{j}] {a} vs {b}");
                }
                let d0 = ws.initial_state_grad();
                for (a, b) in ck.initial_state_grad().h.iter().zip(&d0.h) {
                    assert!((a - b).abs() <= 1e-12 * b.abs().max(1e-3), "{cell} k={k}: dh0 {a} vs {b}");
                }
            }
        }
    }
}

/// Dropout under checkpointed BPTT: locked masks are the same in every segment, so the run
/// equals plain BPTT with the same dropout; per-step masks differ by segment but are drawn
/// again identically when a segment is recomputed, so the gradient matches f64 finite
/// differences of the run's own loss.
#[test]
fn checkpointed_bptt_with_dropout() {
    use bptt::CheckpointedBptt;
    use bptt::net::Dropout;
    for cell in CellKind::ALL {
        let p = Problem::new(cell, 2, Mode::WeightedCe, true, 3, 7, 33);
        let locked = Dropout { p: 0.3, locked: true, seed: 5 };
        let mut ws = p.net.workspace(7, 3, 1).unwrap();
        ws.set_dropout(Some(locked)).unwrap();
        let loss = p.net.forward(&p.params, &mut ws, p.input(), Some(p.targets()), Some(&p.init)).unwrap();
        let mut plain = vec![0.0; p.net.num_params()];
        p.net.backward(&p.params, &mut ws, &mut plain).unwrap();
        let mut ck = CheckpointedBptt::new(&p.net, 3, 3, 1).unwrap();
        ck.set_dropout(Some(locked)).unwrap();
        let mut g = vec![0.0; p.net.num_params()];
        let l = ck.run(&p.net, &p.params, p.input(), p.targets(), Some(&p.init), &mut g).unwrap();
        assert!((l - loss).abs() <= 1e-13 * loss.abs(), "{cell} locked: loss {l} vs {loss}");
        for (j, (a, b)) in g.iter().zip(&plain).enumerate() {
            assert!((a - b).abs() <= 1e-12 * b.abs().max(1e-3), "{cell} locked: grad[{j}] {a} vs {b}");
        }
        // Per-step masks: finite differences of θ ↦ run(θ).
        ck.set_dropout(Some(Dropout { locked: false, ..locked })).unwrap();
        let mut g = vec![0.0; p.net.num_params()];
        ck.run(&p.net, &p.params, p.input(), p.targets(), Some(&p.init), &mut g).unwrap();
        let mut theta = p.params.clone();
        let mut scratch = vec![0.0; p.net.num_params()];
        let h = 1e-5;
        for k in (0..theta.len()).step_by(7) {
            let mut at = |d: f64| {
                theta[k] = p.params[k] + d;
                ck.run(&p.net, &theta, p.input(), p.targets(), Some(&p.init), &mut scratch).unwrap()
            };
            let n = (at(h) - at(-h)) / (2.0 * h);
            theta[k] = p.params[k];
            assert!((n - g[k]).abs() <= 1e-6 * n.abs().max(1e-2), "{cell} per step: grad[{k}] {} vs numeric {n}", g[k]);
        }
    }
}
