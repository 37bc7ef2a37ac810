//! Results do not depend on how a batch is split or on the thread count.

use bptt::tasks::{Batch, TaskKind};
use bptt::{CellKind, Input, Net, Targets};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The mean loss of a big batch equals the mean of its sub-batches' losses, and threads do
/// not change the loss or the gradient.
#[test]
fn batch_split_and_thread_count_do_not_change_results() {
    for cell in CellKind::ALL {
        let (t, b, parts) = (15, 256, 8);
        let net = Net::new(TaskKind::Copy.net_config(cell, 96, 2)).unwrap();
        let mut p = net.init_params::<f32>(9);
        p.iter_mut().for_each(|v| *v *= 3.0); // saturated gates, large logits
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let big = Batch::<f32>::generate(TaskKind::Copy, t, b, &mut rng);
        let steps = TaskKind::Copy.steps(t);
        let run = |threads: usize| {
            let mut ws = net.workspace::<f32>(steps, b, threads).unwrap();
            let loss = net.forward(&p, &mut ws, Input::Dense(&big.x), Some(big.targets()), None).unwrap();
            let mut g = vec![0.0f32; p.len()];
            net.backward(&p, &mut ws, &mut g).unwrap();
            (loss, g)
        };
        let (l1, g1) = run(1);
        for threads in [2, 4] {
            let (l2, g2) = run(threads);
            assert_eq!(l1, l2, "{cell}: loss depends on the thread count");
            assert!(g1 == g2, "{cell}: gradient depends on the thread count");
        }
        // Sub-batches: pick columns j*bs..(j+1)*bs of every step.
        let bs = b / parts;
        let mut ws = net.workspace::<f32>(steps, bs, 1).unwrap();
        let mut mean = 0.0f64;
        for k in 0..parts {
            let cols = |v: &[f32], w: usize| -> Vec<f32> {
                (0..steps).flat_map(|s| v[(s * b + k * bs) * w..(s * b + (k + 1) * bs) * w].to_vec()).collect()
            };
            let x = cols(&big.x, 10);
            let y: Vec<u32> =
                (0..steps).flat_map(|s| big.classes[s * b + k * bs..s * b + (k + 1) * bs].to_vec()).collect();
            let l = net.forward(&p, &mut ws, Input::Dense(&x), Some(Targets::classes(&y)), None).unwrap();
            mean += l as f64 / parts as f64;
        }
        assert!((mean - l1 as f64).abs() < 1e-5 * mean.abs().max(1.0), "{cell}: big batch {l1} vs sub-batches {mean}");
    }
}

/// Every split with at least four parts (net/layer.rs: row blocks at B = 128, unit blocks at
/// B = 1, H = 512, and two layers as a wavefront at B = 1 and 4, H = 256, GEMM tiles and Adam
/// ranges at H = 256, tiled whole steps at H = 1024): the loss, the gradient, dL/dh_0 and
/// the weights after three clipped Adam updates are bit-identical at 1, 2, 3, 4, 8 and 16
/// threads (oversubscribing a 2-core machine).
#[test]
fn results_do_not_depend_on_the_thread_count() {
    use bptt::{Clip, Optimizer, OptimizerConfig, apply_update};
    for cell in CellKind::ALL {
        // (B = 16 at H = 1024: whole steps with tiled recurrent products, every cell.)
        for (b, h, wavefront) in
            [(1, 256, true), (1, 512, false), (4, 256, true), (128, 16, false), (32, 256, false), (16, 1024, false)]
        {
            let t = 11; // (a wavefront runs 11 steps in runs of 2, the last one short)
            let (net, x, y) = dense_problem::<f32>(cell, h, t, b, 5, 6);
            let run = |threads: usize| {
                let mut p = net.init_params::<f32>(3);
                let mut ws = net.workspace::<f32>(t, b, threads).unwrap();
                ws.set_wavefront(wavefront);
                let mut opt = Optimizer::new(OptimizerConfig::adam(), p.len()).unwrap().with_threads(threads);
                let mut g = vec![0.0f32; p.len()];
                let (mut losses, mut grads) = (Vec::new(), Vec::new());
                for _ in 0..3 {
                    // Repeated passes on one workspace: every pass must start from its own inputs.
                    losses.push(net.forward(&p, &mut ws, Input::Dense(&x), Some(Targets::classes(&y)), None).unwrap());
                    g.fill(0.0);
                    net.backward(&p, &mut ws, &mut g).unwrap();
                    grads.push(g.clone());
                    apply_update(&mut p, &mut g, &mut opt, 1e-2, Clip { max_norm: Some(0.5), max_value: None });
                }
                (losses, grads, ws.initial_state_grad().h, p)
            };
            let (l1, g1, d1, p1) = run(1);
            assert!(g1[0].iter().all(|v| v.is_finite()) && g1[0].iter().any(|&v| v != 0.0));
            for threads in [2, 3, 4, 8, 16] {
                let (l, g, d, p) = run(threads);
                let at = format!("{cell} B={b} H={h} wavefront {wavefront} at {threads} threads");
                assert_eq!(l, l1, "{at}: loss differs from one thread");
                assert!(g == g1, "{at}: gradient differs from one thread");
                assert!(d == d1, "{at}: dL/dh0 differs from one thread");
                assert!(p == p1, "{at}: trained weights differ from one thread");
            }
        }
    }
}

/// Variable lengths on the unit split (B = 1, H = 512) and the wavefront over 2 layers (B = 4,
/// H = 256): the same losses and gradients at any thread count.
#[test]
fn lengths_on_unit_blocks_do_not_depend_on_the_thread_count() {
    for cell in CellKind::ALL {
        for (b, h, wavefront) in [(1, 512, false), (4, 256, true)] {
            let t = 7;
            let (net, x, y) = dense_problem::<f32>(cell, h, t, b, 5, 6);
            let lengths: Vec<usize> = (0..b).map(|r| 2 + (3 * r + 2) % (t - 1)).collect();
            let run = |threads: usize| pass_with_lengths(&net, &x, &y, t, &lengths, wavefront, threads);
            let one = run(1);
            assert!(one.1.iter().all(|v| v.is_finite()) && one.1.iter().any(|&v| v != 0.0));
            for threads in [2, 3, 8] {
                assert!(run(threads) == one, "{cell} B={b} H={h} lengths: {threads} threads differ from one");
            }
        }
    }
}

/// Row blocks cut into rows × units (`Workspace::set_grid`; B = 16, H = 64: 2 × 2 parts; B = 32,
/// H = 256: 2 × 4), 2 layers, one or both directions, every cell, with all rows full and with
/// mixed lengths, training with dropout: the same losses, gradients and trained weights at 1,
/// 2, 3, 4, 8 and 16 threads.
#[test]
fn grid_does_not_depend_on_the_thread_count() {
    use bptt::NetConfig;
    for cell in CellKind::ALL {
        for (b, h, bidirectional) in [(16, 64, false), (32, 256, false), (16, 64, true)] {
            let t = 6;
            let (net, x, y) = dense_problem::<f32>(cell, h, t, b, 5, 6);
            let net = Net::new(NetConfig { bidirectional, ..*net.config() }).unwrap();
            let mixed: Vec<usize> = (0..b).map(|r| 1 + (5 * r + 2) % t).collect();
            for lengths in [vec![t; b], mixed] {
                let run = |threads: usize| {
                    two_updates_with(&net, &x, &y, t, b, &lengths, true, threads, &|ws| ws.set_grid(true))
                };
                let one = run(1);
                assert!(one.iter().all(|v| v.is_finite()));
                for threads in [2, 3, 4, 8, 16] {
                    let at = format!("{cell} B={b} H={h} bidirectional={bidirectional} lengths={lengths:?}");
                    assert!(run(threads) == one, "{at}: the grid at {threads} threads differs from one");
                }
            }
        }
    }
}

/// A bidirectional layer planned for 16 cores (`Workspace::set_plan_cores`) runs both
/// directions' row blocks at once (B = 32, H = 256 and B = 16, H = 64: 2 × 2 parts, no
/// meeting): the same losses, gradients and trained weights at 1, 2, 3, 4, 8 and 16 threads,
/// with all rows full and with mixed lengths, training with dropout.
#[test]
fn wide_bidirectional_does_not_depend_on_the_thread_count() {
    use bptt::NetConfig;
    for cell in CellKind::ALL {
        for (b, h) in [(32, 256), (16, 64)] {
            let t = 6;
            let (net, x, y) = dense_problem::<f32>(cell, h, t, b, 5, 6);
            let net = Net::new(NetConfig { bidirectional: true, ..*net.config() }).unwrap();
            let mut ws = net.workspace::<f32>(t, b, 2).unwrap();
            ws.set_plan_cores(16);
            net.forward(&net.init_params::<f32>(3), &mut ws, Input::Dense(&x), None, None).unwrap();
            assert_eq!(ws.schedule().as_deref(), Some("both directions at once, 2 row blocks each"));
            let mixed: Vec<usize> = (0..b).map(|r| 1 + (5 * r + 2) % t).collect();
            for lengths in [vec![t; b], mixed] {
                let run = |threads: usize| {
                    two_updates_with(&net, &x, &y, t, b, &lengths, true, threads, &|ws| ws.set_plan_cores(16))
                };
                let one = run(1);
                assert!(one.iter().all(|v| v.is_finite()));
                for threads in [2, 3, 4, 8, 16] {
                    assert!(run(threads) == one, "{cell} B={b} H={h} lengths={lengths:?}: {threads} threads differ");
                }
            }
        }
    }
}

/// The padding of a batch of mixed lengths is never read: a workspace that first ran a pass
/// without lengths over other data (every row of its buffers written) gives a padded pass the
/// same loss and gradients, bit for bit, as a fresh one — on whole steps, row blocks, unit
/// blocks, the wavefront, both directions at once, a projection, the LayerNorm-LSTM, zoneout
/// and the grid, with lengths sorted longest first but for short rows among them (T = 48: enough
/// padding that the input projection skips it, `layer::project`).
#[test]
fn padding_is_never_read() {
    use bptt::{NetConfig, Zoneout};
    let t = 48;
    for cell in CellKind::ALL {
        let lstm = cell == CellKind::Lstm;
        for (b, h, option) in [
            (2, 16, ""),
            (32, 256, ""),
            (4, 512, ""),
            (4, 256, "wavefront"),
            (4, 64, "bidirectional"),
            (8, 64, "zoneout"),
            (8, 64, "proj_size"),
            (8, 64, "layer_norm"),
            (16, 64, "grid"),
        ] {
            if !lstm && (option == "proj_size" || option == "layer_norm") {
                continue;
            }
            let (net, x, y) = dense_problem::<f32>(cell, h, t, b, 5, 6);
            let cfg = *net.config();
            let net = Net::new(match option {
                "bidirectional" => NetConfig { bidirectional: true, ..cfg },
                "zoneout" => NetConfig { zoneout: Zoneout { h: 0.2, c: if lstm { 0.3 } else { 0.0 } }, ..cfg },
                "proj_size" => NetConfig { proj_size: 16, ..cfg },
                "layer_norm" => NetConfig { layer_norm: true, ..cfg },
                _ => cfg,
            })
            .unwrap();
            let lengths: Vec<usize> =
                (0..b).map(|r| if r % 3 == 1 { 1 } else { 1 + (t - 1) * (b - 1 - r) / (b - 1) }).collect();
            let other: Vec<f32> = x.iter().map(|v| 3.0 - 2.0 * v).collect();
            let p = net.init_params::<f32>(3);
            let pass = |dirty: bool| {
                let mut ws = net.workspace::<f32>(t, b, 2).unwrap();
                ws.set_wavefront(option == "wavefront");
                ws.set_grid(option == "grid");
                if option == "zoneout" {
                    // (A training pass: zoneout's masks.)
                    ws.set_dropout(Some(bptt::net::Dropout { p: 0.0, locked: false, seed: 9 })).unwrap();
                }
                let mut g = vec![0.0f32; p.len()];
                if dirty {
                    net.forward(&p, &mut ws, Input::Dense(&other), Some(Targets::classes(&y)), None).unwrap();
                    net.backward(&p, &mut ws, &mut g).unwrap();
                    g.fill(0.0);
                }
                ws.set_lengths(Some(&lengths)).unwrap();
                let loss = net.forward(&p, &mut ws, Input::Dense(&x), Some(Targets::classes(&y)), None).unwrap();
                net.backward(&p, &mut ws, &mut g).unwrap();
                (loss, g, ws.initial_state_grad().h)
            };
            let fresh = pass(false);
            assert!(fresh.1.iter().all(|v| v.is_finite()) && fresh.1.iter().any(|&v| v != 0.0));
            assert!(pass(true) == fresh, "{cell} B={b} H={h} {option}: a used workspace read the padding");
        }
    }
}

/// One pass of `net` over `x` with `lengths` (and the wavefront setting) at `threads` threads:
/// its loss, gradient and dL/dh0.
fn pass_with_lengths(
    net: &Net,
    x: &[f32],
    y: &[u32],
    t: usize,
    lengths: &[usize],
    wavefront: bool,
    threads: usize,
) -> (f32, Vec<f32>, Vec<f32>) {
    let p = net.init_params::<f32>(3);
    let mut ws = net.workspace::<f32>(t, lengths.len(), threads).unwrap();
    ws.set_wavefront(wavefront);
    ws.set_lengths(Some(lengths)).unwrap();
    let mut g = vec![0.0f32; p.len()];
    let loss = net.forward(&p, &mut ws, Input::Dense(x), Some(Targets::classes(y)), None).unwrap();
    net.backward(&p, &mut ws, &mut g).unwrap();
    (loss, g, ws.initial_state_grad().h)
}

/// A projected LSTM (`proj_size`), whose per-step GEMMs are cut into tiles at this size (B = 64,
/// H = 512, P = 256), with lengths: the same losses and gradients at any thread count.
#[test]
fn projected_lstm_does_not_depend_on_the_thread_count() {
    use bptt::NetConfig;
    let (t, b) = (5, 64);
    let (net, x, y) = dense_problem::<f32>(CellKind::Lstm, 512, t, b, 5, 6);
    let net = Net::new(NetConfig { proj_size: 256, ..*net.config() }).unwrap();
    let lengths: Vec<usize> = (0..b).map(|r| 1 + r % t).collect();
    let run = |threads: usize| pass_with_lengths(&net, &x, &y, t, &lengths, false, threads);
    let one = run(1);
    assert!(one.1.iter().all(|v| v.is_finite()) && one.1.iter().any(|&v| v != 0.0));
    for threads in [2, 3, 8] {
        assert!(run(threads) == one, "projected LSTM: {threads} threads differ from one");
    }
}

/// A LayerNorm-LSTM (`layer_norm`) on both of its paths — whole steps whose per-step GEMMs are
/// cut into tiles (B = 64, H = 512) and 4 row blocks (B = 128, H = 64) — with lengths: the same
/// losses and gradients at any thread count.
#[test]
fn layer_norm_lstm_does_not_depend_on_the_thread_count() {
    use bptt::NetConfig;
    for (h, b) in [(512, 64), (64, 128)] {
        let t = 5;
        let (net, x, y) = dense_problem::<f32>(CellKind::Lstm, h, t, b, 5, 6);
        let net = Net::new(NetConfig { layer_norm: true, ..*net.config() }).unwrap();
        let lengths: Vec<usize> = (0..b).map(|r| 1 + r % t).collect();
        let run = |threads: usize| pass_with_lengths(&net, &x, &y, t, &lengths, false, threads);
        let one = run(1);
        assert!(one.1.iter().all(|v| v.is_finite()) && one.1.iter().any(|&v| v != 0.0));
        for threads in [2, 3, 4, 8, 16] {
            assert!(run(threads) == one, "LayerNorm-LSTM H={h} B={b}: {threads} threads differ from one");
        }
    }
}

/// Zoneout (training masks, lengths) on the paths it takes — row blocks (B = 64, H = 64), whole
/// steps with tiled GEMMs (B = 64, H = 512, LSTM), both directions at once (B = 4, H = 64,
/// bidirectional) — gives the same losses, gradients and trained weights at any thread count.
#[test]
fn zoneout_does_not_depend_on_the_thread_count() {
    use bptt::{NetConfig, Zoneout};
    for cell in CellKind::ALL {
        let z = Zoneout { h: 0.2, c: if cell == CellKind::Lstm { 0.4 } else { 0.0 } };
        let tiled = if cell == CellKind::Lstm { &[(64, 512, false)][..] } else { &[] };
        for &(b, h, bidirectional) in [(64, 64, false), (4, 64, true)].iter().chain(tiled) {
            let t = 5;
            let (net, x, y) = dense_problem::<f32>(cell, h, t, b, 5, 6);
            let net = Net::new(NetConfig { zoneout: z, bidirectional, ..*net.config() }).unwrap();
            let lengths: Vec<usize> = (0..b).map(|r| 1 + (3 * r + 2) % t).collect();
            let run = |threads: usize| two_updates(&net, &x, &y, t, b, &lengths, true, threads);
            let one = run(1);
            assert!(one.iter().all(|v| v.is_finite()));
            for threads in [2, 3, 8, 16] {
                assert!(run(threads) == one, "{cell} B={b} H={h} zoneout: {threads} threads differ from one");
            }
        }
    }
}

/// Bidirectional nets on every schedule they take — the two directions at once as two parts
/// (B = 1, 4), each direction cut into row blocks (B = 32) or, for the LSTM, tiled whole steps
/// (B = 16, H = 512) — give the same losses, gradients and trained weights at any thread count.
#[test]
fn bidirectional_results_do_not_depend_on_the_thread_count() {
    use bptt::NetConfig;
    for cell in CellKind::ALL {
        let tiled = if cell == CellKind::Lstm { &[(16, 512)][..] } else { &[] };
        for &(b, h) in [(1, 64), (4, 256), (32, 256)].iter().chain(tiled) {
            let t = 7;
            let (net, x, y) = dense_problem::<f32>(cell, h, t, b, 5, 6);
            let net = Net::new(NetConfig { bidirectional: true, ..*net.config() }).unwrap();
            let lengths: Vec<usize> = (0..b).map(|r| 1 + (5 * r + 6) % t).collect();
            let run = |threads: usize| two_updates(&net, &x, &y, t, b, &lengths, false, threads);
            let one = run(1);
            assert!(one.iter().all(|v| v.is_finite()));
            for threads in [2, 3, 8] {
                assert!(run(threads) == one, "{cell} B={b} H={h} bidirectional: {threads} threads differ from one");
            }
        }
    }
}

/// Two Adam updates of `net` from seeded weights on `threads` threads with `lengths`, and with
/// `training` a fresh dropout seed (p = 0.1; zoneout's masks too) per update: the losses, the
/// gradients and the final weights, one after another.
#[allow(clippy::too_many_arguments)]
fn two_updates(
    net: &Net,
    x: &[f32],
    y: &[u32],
    t: usize,
    b: usize,
    lengths: &[usize],
    training: bool,
    threads: usize,
) -> Vec<f32> {
    two_updates_with(net, x, y, t, b, lengths, training, threads, &|_| {})
}

/// [`two_updates`] with the workspace set up by `setup` first.
#[allow(clippy::too_many_arguments)]
fn two_updates_with(
    net: &Net,
    x: &[f32],
    y: &[u32],
    t: usize,
    b: usize,
    lengths: &[usize],
    training: bool,
    threads: usize,
    setup: &dyn Fn(&mut bptt::Workspace<f32>),
) -> Vec<f32> {
    use bptt::{Clip, Optimizer, OptimizerConfig, apply_update, net::Dropout};
    let mut p = net.init_params::<f32>(3);
    let mut ws = net.workspace::<f32>(t, b, threads).unwrap();
    setup(&mut ws);
    ws.set_lengths(Some(lengths)).unwrap();
    let mut opt = Optimizer::new(OptimizerConfig::adam(), p.len()).unwrap().with_threads(threads);
    let mut g = vec![0.0f32; p.len()];
    let mut out = Vec::new();
    for seed in 0..2 {
        if training {
            ws.set_dropout(Some(Dropout { p: 0.1, locked: false, seed })).unwrap();
        }
        out.push(net.forward(&p, &mut ws, Input::Dense(x), Some(Targets::classes(y)), None).unwrap());
        g.fill(0.0);
        net.backward(&p, &mut ws, &mut g).unwrap();
        out.extend_from_slice(&g);
        apply_update(&mut p, &mut g, &mut opt, 1e-2, Clip { max_norm: Some(0.5), max_value: None });
    }
    out.extend_from_slice(&p);
    out
}

/// Large enough steps are computed as blocks of rows (net/layer.rs); in f64 the gradient of
/// such a batch equals the mean of the gradients of its halves, each computed unsplit.
#[test]
fn split_steps_give_the_gradient_of_their_halves() {
    for cell in CellKind::ALL {
        let (t, b, h, i) = (4, 32, 256, 8);
        let (net, x, y) = dense_problem::<f64>(cell, h, t, b, i, 5);
        let p = net.init_params::<f64>(4);
        let grad = |bs: usize, part: usize| {
            let xs: Vec<f64> =
                (0..t).flat_map(|s| x[(s * b + part * bs) * i..(s * b + (part + 1) * bs) * i].to_vec()).collect();
            let ys: Vec<u32> = (0..t).flat_map(|s| y[s * b + part * bs..s * b + (part + 1) * bs].to_vec()).collect();
            let mut ws = net.workspace::<f64>(t, bs, 4).unwrap();
            net.forward(&p, &mut ws, Input::Dense(&xs), Some(Targets::classes(&ys)), None).unwrap();
            let mut g = vec![0.0; p.len()];
            net.backward(&p, &mut ws, &mut g).unwrap();
            g
        };
        let full = grad(b, 0);
        let (g0, g1) = (grad(b / 2, 0), grad(b / 2, 1));
        for (k, &f) in full.iter().enumerate() {
            let half = (g0[k] + g1[k]) / 2.0;
            assert!((f - half).abs() <= 1e-12 * f.abs().max(1e-6), "{cell}: grad[{k}] {f} vs {half}");
        }
    }
}

/// A 2-layer cross-entropy net on dense input of width `i` with `o` classes, and fixed inputs
/// (T·B, I) and targets (T·B) for it.
fn dense_problem<F: bptt::Float>(
    cell: CellKind,
    h: usize,
    t: usize,
    b: usize,
    i: usize,
    o: usize,
) -> (Net, Vec<F>, Vec<u32>) {
    use bptt::{Head, InputKind, LossKind, NetConfig};
    let cfg = NetConfig {
        cell,
        input: InputKind::Dense { size: i },
        hidden: h,
        layers: 2,
        output: o,
        loss: LossKind::CrossEntropy,
        head: Head::PerStep,
        bidirectional: false,
        proj_size: 0,
        layer_norm: false,
        zoneout: bptt::Zoneout::NONE,
    };
    let x = (0..t * b * i).map(|k| F::of((k * 37 % 101) as f64 / 50.0 - 1.0)).collect();
    let y = (0..t * b).map(|k| (k * 7 % o) as u32).collect();
    (Net::new(cfg).unwrap(), x, y)
}
