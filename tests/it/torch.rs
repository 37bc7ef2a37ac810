//! Known answers from PyTorch (float64): loss and every gradient for fixed weights and inputs,
//! and a few optimizer steps. The numbers come from `reference/torch_reference.py`, whose
//! docstring defines the closed-form inputs rebuilt here.

use crate::torch_expected::{self as exp, BigCase, Case};
use bptt::{CellKind, Head, Input, InputKind, LossKind, Net, NetConfig, Optimizer, OptimizerConfig, State, Targets};

const T: usize = 4;
const B: usize = 2;
const I: usize = 3;
const H: usize = 4;
const O: usize = 3;
const V: usize = 5;
const L: usize = 2;

fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs() / w.abs().max(1e-3);
        assert!(err < tol, "{what}[{k}]: got {g}, PyTorch {w} (rel err {err:.2e})");
    }
}

fn run(case: &Case) {
    run_masked(case, false);
}

/// The dropout masks of the DROP_* cases (see the reference script): the input's and the
/// layers' outputs', 0 or 1/(1 − 0.4) by closed form.
fn masks() -> (Vec<f64>, Vec<f64>) {
    let keep = 1.0 / (1.0 - 0.4);
    let x = (0..T * B * I).map(|k| if (3 * k + 1) % 5 == 0 { 0.0 } else { keep }).collect();
    let h = (0..L * T * B * H).map(|k| if (7 * k + 2) % 4 == 0 { 0.0 } else { keep }).collect();
    (x, h)
}

/// With `dropped`, the forward passes use the fixed masks of [`masks`].
fn run_masked(case: &Case, dropped: bool) {
    let cell: CellKind = case.cell.parse().unwrap();
    let input =
        if case.tokens { InputKind::Tokens { vocab: V, embedding_dim: I } } else { InputKind::Dense { size: I } };
    let loss = if case.mse { LossKind::Mse } else { LossKind::CrossEntropy };
    let net = Net::new(NetConfig {
        cell,
        input,
        hidden: H,
        layers: L,
        output: O,
        loss,
        head: Head::PerStep,
        bidirectional: false,
        proj_size: 0,
        layer_norm: false,
        zoneout: bptt::Zoneout::NONE,
    })
    .unwrap();
    let params: Vec<f64> = (0..net.num_params()).map(|k| 0.6 * (1.3 * k as f64 + 0.5).sin()).collect();
    let x: Vec<f64> = (0..T * B * I).map(|k| (0.7 * k as f64 + 0.3).sin()).collect();
    let ids: Vec<u32> = (0..T * B).map(|k| ((5 * k + 1) % V) as u32).collect();
    let classes: Vec<u32> = (0..T * B).map(|k| ((7 * k + 3) % O) as u32).collect();
    let values: Vec<f64> = (0..T * B * O).map(|k| (0.9 * k as f64).cos()).collect();
    let mask: Vec<f64> = (0..T * B).map(|k| if k / B == T - 1 { 1.0 } else { 0.0 }).collect();
    let mut init = State::zeros(net.config(), B);
    init.h = (0..L * B * H).map(|k| 0.3 * (0.5 * k as f64 + 1.0).sin()).collect();
    if cell.has_cell_state() {
        init.c = (0..L * B * H).map(|k| 0.3 * (0.5 * k as f64 + 1.0).cos()).collect();
    }
    let input = if case.tokens { Input::Tokens(&ids) } else { Input::Dense(&x) };
    let targets = if case.mse { Targets::values(&values).with_mask(&mask) } else { Targets::classes(&classes) };

    let mut ws = net.workspace(T, B, 1).unwrap();
    let (mx, mh) = masks();
    if dropped {
        ws.set_dropout_masks(&mx, &mh).unwrap();
    }
    let loss = net.forward(&params, &mut ws, input, Some(targets), Some(&init)).unwrap();
    let mut grads = vec![0.0; net.num_params()];
    net.backward(&params, &mut ws, &mut grads).unwrap();
    let d0 = ws.initial_state_grad();
    assert_close(&format!("{} loss", case.cell), &[loss], &[case.loss], 1e-12);
    assert_close(&format!("{} grads", case.cell), &grads, case.grads, 1e-10);
    assert_close(&format!("{} dh0", case.cell), &d0.h, case.dh0, 1e-10);
    assert_close(&format!("{} dc0", case.cell), &d0.c, case.dc0, 1e-10);

    // The same network in f32 agrees to f32 precision.
    let p32: Vec<f32> = params.iter().map(|&v| v as f32).collect();
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let v32: Vec<f32> = values.iter().map(|&v| v as f32).collect();
    let m32: Vec<f32> = mask.iter().map(|&v| v as f32).collect();
    let init32 = State { h: init.h.iter().map(|&v| v as f32).collect(), c: init.c.iter().map(|&v| v as f32).collect() };
    let input = if case.tokens { Input::Tokens(&ids) } else { Input::Dense(&x32) };
    let targets = if case.mse { Targets::values(&v32).with_mask(&m32) } else { Targets::classes(&classes) };
    let mut ws = net.workspace(T, B, 1).unwrap();
    if dropped {
        let f32s = |v: &[f64]| v.iter().map(|&m| m as f32).collect::<Vec<f32>>();
        ws.set_dropout_masks(&f32s(&mx), &f32s(&mh)).unwrap();
    }
    let loss = net.forward(&p32, &mut ws, input, Some(targets), Some(&init32)).unwrap();
    let mut g32 = vec![0.0f32; net.num_params()];
    net.backward(&p32, &mut ws, &mut g32).unwrap();
    let g: Vec<f64> = g32.iter().map(|&v| v as f64).collect();
    assert_close(&format!("{} f32 loss", case.cell), &[loss as f64], &[case.loss], 1e-5);
    assert_close(&format!("{} f32 grads", case.cell), &g, case.grads, 1e-4);
}

#[test]
fn rnn_tanh_matches_pytorch() {
    run(&exp::RNN_TANH);
    run(&exp::RNN_TANH_MSE);
}

#[test]
fn rnn_relu_matches_pytorch() {
    run(&exp::RNN_RELU);
}

#[test]
fn lstm_matches_pytorch() {
    run(&exp::LSTM);
    run(&exp::LSTM_TOKENS);
}

#[test]
fn gru_matches_pytorch() {
    run(&exp::GRU);
    run(&exp::GRU_TOKENS_MSE);
}

/// Dropout where PyTorch's word-language-model example puts it (input, between layers, before
/// the decoder), fed the same masks: loss, every gradient, dh0 and dc0.
#[test]
fn dropout_matches_pytorch_given_the_same_masks() {
    for case in [&exp::DROP_RNN_TANH, &exp::DROP_LSTM_TOKENS, &exp::DROP_GRU, &exp::DROP_GRU_TOKENS_MSE] {
        run_masked(case, true);
    }
    // The masks matter: without them the answer differs.
    let r = std::panic::catch_unwind(|| run_masked(&exp::DROP_LSTM_TOKENS, false));
    assert!(r.is_err(), "the dropout case passed without its masks");
}

/// Packed variable-length batches (`pack_padded_sequence`, lengths 4 and 1, unsorted): the
/// loss over the valid positions plus a term on the final states, every gradient, dh0, dc0 and
/// the final states themselves, taken at each sequence's length.
#[test]
fn packed_sequences_match_pytorch() {
    for case in [&exp::PACKED_LSTM, &exp::PACKED_GRU_TOKENS, &exp::PACKED_RNN_TANH] {
        let cell: CellKind = case.cell.parse().unwrap();
        let input =
            if case.tokens { InputKind::Tokens { vocab: V, embedding_dim: I } } else { InputKind::Dense { size: I } };
        let loss = LossKind::CrossEntropy;
        let net = Net::new(NetConfig {
            cell,
            input,
            hidden: H,
            layers: L,
            output: O,
            loss,
            head: Head::PerStep,
            bidirectional: false,
            proj_size: 0,
            layer_norm: false,
            zoneout: bptt::Zoneout::NONE,
        })
        .unwrap();
        let params: Vec<f64> = (0..net.num_params()).map(|k| 0.6 * (1.3 * k as f64 + 0.5).sin()).collect();
        let x: Vec<f64> = (0..T * B * I).map(|k| (0.7 * k as f64 + 0.3).sin()).collect();
        let ids: Vec<u32> = (0..T * B).map(|k| ((5 * k + 1) % V) as u32).collect();
        let classes: Vec<u32> = (0..T * B).map(|k| ((7 * k + 3) % O) as u32).collect();
        let mut init = State::zeros(net.config(), B);
        init.h = (0..L * B * H).map(|k| 0.3 * (0.5 * k as f64 + 1.0).sin()).collect();
        if cell.has_cell_state() {
            init.c = (0..L * B * H).map(|k| 0.3 * (0.5 * k as f64 + 1.0).cos()).collect();
        }
        let w: Vec<f64> = (0..L * B * H).map(|k| 0.1 * (0.3 * k as f64 + 0.2).cos()).collect();
        let input = if case.tokens { Input::Tokens(&ids) } else { Input::Dense(&x) };
        let mut ws = net.workspace(T, B, 1).unwrap();
        ws.set_lengths(Some(case.lengths)).unwrap();
        let ce = net.forward(&params, &mut ws, input, Some(Targets::classes(&classes)), Some(&init)).unwrap();
        let mut last = State::zeros(net.config(), B);
        ws.state_at(T, &mut last);
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let loss = ce + dot(&w, &last.h) + if cell.has_cell_state() { dot(&w, &last.c) } else { 0.0 };
        let dfinal = State { h: w.clone(), c: if cell.has_cell_state() { w.clone() } else { Vec::new() } };
        let mut grads = vec![0.0; net.num_params()];
        net.backward_from(&params, &mut ws, &mut grads, Some(&dfinal)).unwrap();
        let d0 = ws.initial_state_grad();
        assert_close(&format!("{} packed loss", case.cell), &[loss], &[case.loss], 1e-12);
        assert_close(&format!("{} packed h_n", case.cell), &last.h, case.h_n, 1e-10);
        assert_close(&format!("{} packed c_n", case.cell), &last.c, case.c_n, 1e-10);
        assert_close(&format!("{} packed grads", case.cell), &grads, case.grads, 1e-10);
        assert_close(&format!("{} packed dh0", case.cell), &d0.h, case.dh0, 1e-10);
        assert_close(&format!("{} packed dc0", case.cell), &d0.c, case.dc0, 1e-10);
    }
}

/// Bidirectional nets of 1 and 2 layers (`bidirectional=True`), projected LSTMs (`proj_size`,
/// one or both directions) and LayerNorm-LSTMs (`layer_norm`, against `LnLstm` in the script),
/// packed lengths (4, 2, 3): the top layer's outputs at every valid position, the final states of
/// both directions (the reverse one's taken after each sequence's first step), the loss, every
/// gradient (`weight_hr` and the norms' too), dh0, dc0.
#[test]
fn bidirectional_and_projected_nets_match_pytorch() {
    let cases = [
        &exp::BIDIR_LSTM,
        &exp::BIDIR_GRU_2,
        &exp::BIDIR_LSTM_TOKENS_2,
        &exp::BIDIR_RNN_TANH_2,
        &exp::PROJ_LSTM_2,
        &exp::PROJ_LSTM_TOKENS,
        &exp::PROJ_BIDIR_LSTM_2,
        &exp::LN_LSTM_2,
        &exp::LN_LSTM_TOKENS,
    ];
    for case in cases {
        let (b, l, bidirectional, proj_size, layer_norm) =
            (3, case.layers, case.bidirectional, case.proj, case.layer_norm);
        let cell: CellKind = case.cell.parse().unwrap();
        let input =
            if case.tokens { InputKind::Tokens { vocab: V, embedding_dim: I } } else { InputKind::Dense { size: I } };
        let (loss, head) = (LossKind::CrossEntropy, Head::PerStep);
        let cfg = NetConfig {
            cell,
            input,
            hidden: H,
            layers: l,
            output: O,
            loss,
            head,
            bidirectional,
            proj_size,
            layer_norm,
            zoneout: bptt::Zoneout::NONE,
        };
        let net = Net::new(cfg).unwrap();
        let params: Vec<f64> = (0..net.num_params()).map(|k| 0.6 * (1.3 * k as f64 + 0.5).sin()).collect();
        let x: Vec<f64> = (0..T * b * I).map(|k| (0.7 * k as f64 + 0.3).sin()).collect();
        let ids: Vec<u32> = (0..T * b).map(|k| ((5 * k + 1) % V) as u32).collect();
        let classes: Vec<u32> = (0..T * b).map(|k| ((7 * k + 3) % O) as u32).collect();
        let (d, p) = (cfg.directions(), cfg.state_width());
        let (n, nc) = (d * l * b * p, d * l * b * H);
        let mut init = State::zeros(net.config(), b);
        init.h = (0..n).map(|k| 0.3 * (0.5 * k as f64 + 1.0).sin()).collect();
        if cell.has_cell_state() {
            init.c = (0..nc).map(|k| 0.3 * (0.5 * k as f64 + 1.0).cos()).collect();
        }
        let w: Vec<f64> = (0..n).map(|k| 0.1 * (0.3 * k as f64 + 0.2).cos()).collect();
        let wc: Vec<f64> = (0..nc).map(|k| 0.1 * (0.3 * k as f64 + 0.2).cos()).collect();
        let input = if case.tokens { Input::Tokens(&ids) } else { Input::Dense(&x) };
        let mut ws = net.workspace(T, b, 1).unwrap();
        ws.set_lengths(Some(case.lengths)).unwrap();
        let ce = net.forward(&params, &mut ws, input, Some(Targets::classes(&classes)), Some(&init)).unwrap();
        let last = ws.final_state();
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let loss = ce + dot(&w, &last.h) + if cell.has_cell_state() { dot(&wc, &last.c) } else { 0.0 };
        // PyTorch pads past each length with zeros: compare the valid positions.
        let out = ws.hidden_states(l - 1).to_vec();
        let valid = |k: usize| (k / (d * p)) / b < case.lengths[(k / (d * p)) % b];
        let pick = |v: &[f64]| v.iter().enumerate().filter(|(k, _)| valid(*k)).map(|(_, &x)| x).collect::<Vec<_>>();
        let dfinal = State { h: w.clone(), c: if cell.has_cell_state() { wc.clone() } else { Vec::new() } };
        let mut grads = vec![0.0; net.num_params()];
        net.backward_from(&params, &mut ws, &mut grads, Some(&dfinal)).unwrap();
        let d0 = ws.initial_state_grad();
        let what = |s: &str| format!("{} L={l} tokens={} D={d} P={p} {s}", case.cell, case.tokens);
        assert_close(&what("out"), &pick(&out), &pick(case.out), 1e-10);
        assert_close(&what("loss"), &[loss], &[case.loss], 1e-12);
        assert_close(&what("h_n"), &last.h, case.h_n, 1e-10);
        assert_close(&what("c_n"), &last.c, case.c_n, 1e-10);
        assert_close(&what("grads"), &grads, case.grads, 1e-10);
        assert_close(&what("dh0"), &d0.h, case.dh0, 1e-10);
        assert_close(&what("dc0"), &d0.c, case.dc0, 1e-10);
    }
}

fn optim_run<F: bptt::Float>(config: OptimizerConfig, lr: f64) -> Vec<f64> {
    let n = 6;
    let mut p: Vec<F> = (0..n).map(|k| F::of(0.5 * (0.8 * k as f64 + 0.2).sin())).collect();
    let mut opt = Optimizer::<F>::new(config, n).unwrap();
    for s in 0..5 {
        let g: Vec<F> = (0..n).map(|k| F::of((1.7 * k as f64 + 0.9 * s as f64 + 0.4).sin() * (1 + s) as f64)).collect();
        opt.step(&mut p, &g, lr);
    }
    p.iter().map(|v| v.f64()).collect()
}

#[test]
fn optimizers_match_pytorch() {
    use OptimizerConfig as C;
    let sgd = |momentum, dampening, nesterov, weight_decay| C::Sgd { momentum, dampening, nesterov, weight_decay };
    let adam = |beta1, beta2, eps, weight_decay, amsgrad, decoupled| C::Adam {
        beta1,
        beta2,
        eps,
        weight_decay,
        amsgrad,
        decoupled,
    };
    type Case = (&'static str, OptimizerConfig, f64, &'static [f64], &'static [f64]);
    let cases: &[Case] = &[
        ("sgd", C::sgd(), 0.1, exp::OPT_SGD_F64, exp::OPT_SGD_F32),
        ("sgd momentum", sgd(0.9, 0.1, false, 0.01), 0.1, exp::OPT_SGD_MOMENTUM_F64, exp::OPT_SGD_MOMENTUM_F32),
        ("sgd nesterov", sgd(0.9, 0.0, true, 0.01), 0.1, exp::OPT_SGD_NESTEROV_F64, exp::OPT_SGD_NESTEROV_F32),
        ("adam", C::adam(), 0.01, exp::OPT_ADAM_F64, exp::OPT_ADAM_F32),
        (
            "adam amsgrad wd",
            adam(0.8, 0.99, 1e-6, 0.1, true, false),
            0.01,
            exp::OPT_ADAM_AMSGRAD_WD_F64,
            exp::OPT_ADAM_AMSGRAD_WD_F32,
        ),
        ("adamw", C::adamw(), 0.01, exp::OPT_ADAMW_F64, exp::OPT_ADAMW_F32),
        ("rmsprop", C::rmsprop(), 0.01, exp::OPT_RMSPROP_F64, exp::OPT_RMSPROP_F32),
        (
            "rmsprop centered momentum",
            C::RmsProp { alpha: 0.9, eps: 1e-8, momentum: 0.5, centered: true, weight_decay: 0.05 },
            0.01,
            exp::OPT_RMSPROP_CENTERED_MOMENTUM_F64,
            exp::OPT_RMSPROP_CENTERED_MOMENTUM_F32,
        ),
        (
            "adagrad",
            C::Adagrad { lr_decay: 0.01, weight_decay: 0.02, initial_accumulator_value: 0.1, eps: 1e-10 },
            0.1,
            exp::OPT_ADAGRAD_F64,
            exp::OPT_ADAGRAD_F32,
        ),
    ];
    for &(name, config, lr, want64, want32) in cases {
        assert_close(&format!("{name} f64"), &optim_run::<f64>(config, lr), want64, 1e-13);
        assert_close(&format!("{name} f32"), &optim_run::<f32>(config, lr), want32, 2e-6);
    }
}

/// The known answers at sizes where the passes are cut into parts (row blocks at B = 128, unit
/// blocks at B = 1, 4 with H = 256 and H = 512, GEMM tiles and softmax blocks at B = 32, H = 256),
/// on 1, 2, 3, 4 and 8 threads, and stacked layers as a wavefront: the loss, every tensor's gradient norm and sampled entries, and
/// dL/d(initial state).
fn run_big(case: &BigCase) {
    let cell: CellKind = case.cell.parse().unwrap();
    let (t, b, h, l) = (case.t, case.b, case.h, case.l);
    let input = if case.tokens {
        InputKind::Tokens { vocab: case.v, embedding_dim: case.i }
    } else {
        InputKind::Dense { size: case.i }
    };
    let cfg = NetConfig {
        cell,
        input,
        hidden: h,
        layers: l,
        output: case.o,
        loss: LossKind::CrossEntropy,
        head: Head::PerStep,
        bidirectional: false,
        proj_size: 0,
        layer_norm: false,
        zoneout: bptt::Zoneout::NONE,
    };
    let net = Net::new(cfg).unwrap();
    let scale = 1.5 / (h as f64).sqrt();
    let params: Vec<f64> = (0..net.num_params()).map(|k| scale * (1.3 * k as f64 + 0.5).sin()).collect();
    let x: Vec<f64> = (0..t * b * case.i).map(|k| (0.7 * k as f64 + 0.3).sin()).collect();
    let ids: Vec<u32> = (0..t * b).map(|k| ((5 * k + 1) % case.v.max(1)) as u32).collect();
    let classes: Vec<u32> = (0..t * b).map(|k| ((7 * k + 3) % case.o) as u32).collect();
    let mut init = State::zeros(net.config(), b);
    init.h = (0..l * b * h).map(|k| 0.3 * (0.5 * k as f64 + 1.0).sin()).collect();
    if cell.has_cell_state() {
        init.c = (0..l * b * h).map(|k| 0.3 * (0.5 * k as f64 + 1.0).cos()).collect();
    }
    let input = if case.tokens { Input::Tokens(&ids) } else { Input::Dense(&x) };
    for (threads, wavefront) in [(1, false), (2, false), (3, false), (4, false), (8, false), (1, true), (4, true)] {
        let what = |s: &str| format!("{} B={b} H={h} {threads} threads (wavefront {wavefront}): {s}", case.cell);
        let mut ws = net.workspace(t, b, threads).unwrap();
        ws.set_wavefront(wavefront);
        let loss = net.forward(&params, &mut ws, input, Some(Targets::classes(&classes)), Some(&init)).unwrap();
        let mut grads = vec![0.0; net.num_params()];
        net.backward(&params, &mut ws, &mut grads).unwrap();
        let d0 = ws.initial_state_grad();
        assert_close(&what("loss"), &[loss], &[case.loss], 1e-12);
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let norms: Vec<f64> = net.params().iter().map(|p| norm(p.of(&grads))).collect();
        assert_close(&what("gradient norms"), &norms, case.grad_norms, 1e-10);
        let picks = |v: &[f64], at: &[(usize, f64)]| -> (Vec<f64>, Vec<f64>) {
            at.iter().map(|&(i, want)| (v[i], want)).unzip()
        };
        let per = case.grad_picks.len() / net.params().len();
        for (k, p) in net.params().iter().enumerate() {
            let (got, want) = picks(p.of(&grads), &case.grad_picks[k * per..(k + 1) * per]);
            assert_close(&what(&p.name), &got, &want, 1e-9);
        }
        assert_close(&what("dh0 norm"), &[norm(&d0.h)], &[case.dh0_norm], 1e-10);
        let (got, want) = picks(&d0.h, case.dh0_picks);
        assert_close(&what("dh0"), &got, &want, 1e-9);
        if cell.has_cell_state() {
            assert_close(&what("dc0 norm"), &[norm(&d0.c)], &[case.dc0_norm], 1e-10);
            let (got, want) = picks(&d0.c, case.dc0_picks);
            assert_close(&what("dc0"), &got, &want, 1e-9);
        }
    }
}

#[test]
fn split_sizes_match_pytorch() {
    for case in [
        &exp::BIG_LSTM_ROWS,
        &exp::BIG_GRU_ROWS,
        &exp::BIG_LSTM_WAVEFRONT,
        &exp::BIG_LSTM_TILES,
        &exp::BIG_GRU_TOKENS_UNITS_B1,
        &exp::BIG_RNN_TANH_UNITS_B4,
        &exp::BIG_LSTM_UNITS_H512,
        &exp::BIG_LSTM_TOKENS_TILES,
    ] {
        run_big(case);
    }
}
