//! Forward-mode gradients (`bptt::online`): RTRL equals BPTT, UORO is unbiased, SnAp-1 equals
//! RTRL where the influence stays diagonal.

use crate::common::{Mode, Problem};
use bptt::CellKind;
use bptt::online::{self, Method, Sequences};

/// BPTT's loss and gradient of a problem.
fn bptt_gradient(p: &Problem) -> (f64, Vec<f64>) {
    let mut ws = p.net.workspace::<f64>(p.steps, p.batch, 1).unwrap();
    let loss = p.net.forward(&p.params, &mut ws, p.input(), Some(p.targets()), Some(&p.init)).unwrap();
    let mut g = vec![0.0; p.net.num_params()];
    p.net.backward(&p.params, &mut ws, &mut g).unwrap();
    (loss, g)
}

fn online_gradient(p: &Problem, method: Method) -> (f64, Vec<f64>) {
    let mut g = vec![0.0; p.net.num_params()];
    let seqs = Sequences { input: p.input(), targets: p.targets(), batch: p.batch, init: Some(&p.init) };
    let loss = online::gradient(&p.net, &p.params, method, seqs, &mut g).unwrap();
    (loss, g)
}

/// The largest |a − b| / max(1, |b|).
fn worst(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs() / y.abs().max(1.0)).fold(0.0, f64::max)
}

/// RTRL carries the same gradient forward that BPTT sweeps backward: equal to 1e-10 (f64) for
/// every cell, 1 and 2 layers, dense and token input, per-step, weighted and last-step losses,
/// from a random initial state.
#[test]
fn rtrl_equals_bptt_for_every_cell() {
    let mut seed = 7100;
    for cell in CellKind::ALL {
        for (layers, tokens, mode) in
            [(1, false, Mode::ManyToManyCe), (2, true, Mode::WeightedCe), (2, false, Mode::ManyToOneMse)]
        {
            seed += 1;
            let p = Problem::new(cell, layers, mode, tokens, 2, 5, seed);
            let (loss, g) = bptt_gradient(&p);
            let (rtrl_loss, rtrl) = online_gradient(&p, Method::Rtrl);
            assert!((loss - rtrl_loss).abs() < 1e-12, "{cell} L={layers}: loss {rtrl_loss} vs BPTT {loss}");
            let err = worst(&rtrl, &g);
            assert!(err < 1e-10, "{cell} L={layers} tokens={tokens} {mode:?}: RTRL differs from BPTT by {err:.2e}");
        }
        // From a zero state (no `init`): B = 3 sequences still told apart.
        let p = Problem::new(cell, 1, Mode::ManyToOneMse, false, 3, 4, seed);
        let mut ws = p.net.workspace::<f64>(p.steps, p.batch, 1).unwrap();
        let loss = p.net.forward(&p.params, &mut ws, p.input(), Some(p.targets()), None).unwrap();
        let mut g = vec![0.0; p.net.num_params()];
        p.net.backward(&p.params, &mut ws, &mut g).unwrap();
        let mut r = vec![0.0; p.net.num_params()];
        let seqs = Sequences { input: p.input(), targets: p.targets(), batch: p.batch, init: None };
        let rtrl_loss = online::gradient(&p.net, &p.params, Method::Rtrl, seqs, &mut r).unwrap();
        assert!((loss - rtrl_loss).abs() < 1e-12 && worst(&r, &g) < 1e-10, "{cell} from a zero state");
    }
}

/// UORO's estimates scatter around BPTT's gradient and their mean converges to it: over 4,000
/// sequences of random signs, every coordinate's mean lies within 6 standard errors of the true
/// gradient (the standard error measured from the same samples), while single estimates differ
/// from it.
#[test]
fn uoro_is_unbiased() {
    for (cell, seed) in [(CellKind::Lstm, 7201), (CellKind::Gru, 7202), (CellKind::RnnTanh, 7203)] {
        let p = Problem::new(cell, 1, Mode::ManyToManyCe, false, 1, 4, seed);
        let (_, truth) = bptt_gradient(&p);
        let n = 4000;
        let (mut sum, mut sum_sq) = (vec![0.0; truth.len()], vec![0.0; truth.len()]);
        let mut spread = 0.0f64;
        for k in 0..n {
            let (_, g) = online_gradient(&p, Method::Uoro { seed: k });
            spread = spread.max(worst(&g, &truth));
            for ((s, q), v) in sum.iter_mut().zip(&mut sum_sq).zip(&g) {
                *s += v;
                *q += v * v;
            }
        }
        assert!(spread > 1e-3, "{cell}: UORO's estimates are all the true gradient (spread {spread:.2e})");
        for (j, ((s, q), t)) in sum.iter().zip(&sum_sq).zip(&truth).enumerate() {
            let mean = s / n as f64;
            let var = (q / n as f64 - mean * mean).max(0.0);
            let se = (var / n as f64).sqrt();
            assert!(
                (mean - t).abs() <= 6.0 * se + 1e-12,
                "{cell} coordinate {j}: mean {mean} vs BPTT {t} (standard error {se:.2e})"
            );
        }
    }
}

/// SnAp-1 keeps the influence entries one step reaches: with a diagonal W_hh (each unit feeds
/// only itself, in every gate) that is all of them, so it equals RTRL, for every cell (the
/// GRU and LSTM by the per-unit form of `online/snap.rs`); with a full W_hh it is an
/// approximation that differs.
#[test]
fn snap1_equals_rtrl_where_the_influence_is_diagonal() {
    for cell in CellKind::ALL {
        let mut p = Problem::new(cell, 1, Mode::ManyToManyCe, false, 2, 5, 7301);
        let (_, full_rtrl) = online_gradient(&p, Method::Rtrl);
        let (_, full_snap) = online_gradient(&p, Method::Snap1);
        assert!(worst(&full_snap, &full_rtrl) > 1e-6, "{cell}: SnAp-1 is exact with a full W_hh");
        let info = p.net.param("rnn.weight_hh_l0").unwrap().clone();
        let h = info.shape[1];
        for (k, w) in info.of_mut(&mut p.params).iter_mut().enumerate() {
            if (k / h) % h != k % h {
                *w = 0.0;
            }
        }
        let (_, rtrl) = online_gradient(&p, Method::Rtrl);
        let (_, snap) = online_gradient(&p, Method::Snap1);
        let (_, bptt) = bptt_gradient(&p);
        assert!(worst(&rtrl, &bptt) < 1e-10);
        let err = worst(&snap, &rtrl);
        assert!(err < 1e-12, "{cell}: SnAp-1 differs from RTRL by {err:.2e} with a diagonal W_hh");
    }
}

/// The online learner (`online::Learner`) with the weights held still: its per-step gradients
/// of one stream, summed, are BPTT's gradient of the stream's summed losses (RTRL, every cell,
/// 1–2 layers), and its state is the forward pass's final state.
#[test]
fn an_online_learner_with_fixed_weights_sums_to_bptt() {
    use bptt::{Input, State, Target};
    let mut seed = 7300;
    for cell in CellKind::ALL {
        for layers in [1, 2] {
            seed += 1;
            let p = Problem::new(cell, layers, Mode::WeightedCe, false, 1, 5, seed);
            let w = p.mask.clone().unwrap();
            // BPTT of Σ_t w_t ℓ_t: the net's weighted mean times Σ w.
            let mut ws = p.net.workspace::<f64>(p.steps, 1, 1).unwrap();
            let loss = p.net.forward(&p.params, &mut ws, p.input(), Some(p.targets()), Some(&p.init)).unwrap();
            let mut g = vec![0.0; p.net.num_params()];
            p.net.backward(&p.params, &mut ws, &mut g).unwrap();
            let total: f64 = w.iter().sum();
            g.iter_mut().for_each(|v| *v *= total);
            let mut learner = online::Learner::<f64>::new(&p.net, Method::Rtrl).unwrap();
            learner.reset(&p.net, Some(&p.init));
            let (mut sum, mut online_loss) = (vec![0.0; g.len()], 0.0);
            for (t, &wt) in w.iter().enumerate() {
                let (x, y) = (Input::Dense(&p.x[t * 3..(t + 1) * 3]), Target::Classes(&p.classes[t..t + 1]));
                online_loss += wt * learner.step(&p.net, &p.params, x, y, wt).unwrap();
                sum.iter_mut().zip(learner.grads()).for_each(|(s, &v)| *s += v);
            }
            assert!((online_loss - loss * total).abs() < 1e-12, "{cell} L={layers}: loss {online_loss}");
            let err = worst(&sum, &g);
            assert!(err < 1e-10, "{cell} L={layers}: the learner's summed gradient differs from BPTT by {err:.2e}");
            let mut last = State { h: Vec::new(), c: Vec::new() };
            ws.state_at(p.steps, &mut last);
            assert!(worst(&learner.state().h, &last.h) < 1e-12, "{cell} L={layers}: the learner's state");
        }
    }
}

/// Learning while streaming: SnAp-1 and RTRL on the adding task (T = 20, a GRU with H = 16), one
/// sequence at a time with an update after every step, end well below the baseline (always
/// answering 1) on held-out sequences; as full BPTT does with one update per sequence.
#[test]
fn online_learners_learn_the_adding_task() {
    use bptt::tasks::{self, TaskConfig, TaskKind};
    let base = TaskConfig {
        hidden: 16,
        batch: 1,
        lr: 3e-3,
        steps: 800,
        ..TaskConfig::new(TaskKind::Adding, CellKind::Gru, 20)
    };
    for method in [Method::Snap1, Method::Rtrl] {
        let r = tasks::run(&TaskConfig { online: Some(method), ..base.clone() }, |_| {}).unwrap();
        assert!(r.final_loss < 0.3 * r.baseline, "{method:?}: held-out MSE {} (baseline {})", r.final_loss, r.baseline);
        assert_eq!(r.history.len(), 800);
    }
}
