//! The numbers behind the pictures: vanishing and persistent gradient flow, clipping bounds,
//! truncation bias, task baselines, the unrolled graph, and the demo report.

use crate::cli::{bptt, stderr};
use bptt::diagnose::experiments::truncation_of;
use bptt::diagnose::flow::{FlowConfig, measure};
use bptt::diagnose::graph::{GraphFormat, unrolled};
use bptt::tasks::{self, Batch, TaskConfig, TaskKind, spectral_norm};
use bptt::{CellKind, Clip, Optimizer, OptimizerConfig, apply_update};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn flow(cell: CellKind, length: usize, w_hh_scale: Option<f64>, forget_bias: Option<f64>) -> Vec<f64> {
    let cfg = FlowConfig {
        cells: vec![cell],
        hidden: 32,
        layers: 1,
        length,
        batch: 8,
        seed: 3,
        threads: 1,
        train_steps: 0,
        w_hh_scale,
        forget_bias,
        jacobian_samples: 2,
    };
    let task =
        TaskConfig { steps: 0, hidden: 32, w_hh_scale, forget_bias, ..TaskConfig::new(TaskKind::Adding, cell, length) };
    let (net, p) = tasks::trained(&task).unwrap();
    let p: Vec<f64> = p.iter().map(|&v| v as f64).collect();
    let f = measure(&net, &p, cell, &cfg, 0).unwrap();
    // σmax of W_hh's first gate block: the scale it was set to, or, at PyTorch's init, what an
    // independent computation (the Gram matrix's largest eigenvalue) says.
    let w = net.param("rnn.weight_hh_l0").unwrap().of(&p);
    let want = w_hh_scale.unwrap_or_else(|| gram_sigma_max(&w[..32 * 32], 32));
    let got = f.w_hh_sigma_max[0][0];
    assert!((got - want).abs() < 1e-6 * want, "σmax {got}, expected {want}");
    f.dh_norms[0].clone()
}

/// The largest singular value of an (n, n) matrix as √λmax(WᵀW), by power iteration on the
/// explicit Gram matrix (a different computation from `spectral_norm`'s alternating products).
fn gram_sigma_max(w: &[f64], n: usize) -> f64 {
    let gram: Vec<f64> = (0..n * n).map(|ij| (0..n).map(|r| w[r * n + ij / n] * w[r * n + ij % n]).sum()).collect();
    let mut v: Vec<f64> = (0..n).map(|k| 1.0 + k as f64 / n as f64).collect();
    let mut lambda = 0.0;
    for _ in 0..5000 {
        let gv: Vec<f64> = (0..n).map(|i| (0..n).map(|j| gram[i * n + j] * v[j]).sum()).collect();
        let norm = gv.iter().map(|x| x * x).sum::<f64>().sqrt();
        lambda = norm / v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v = gv.iter().map(|x| x / norm).collect();
    }
    lambda.sqrt()
}

/// A W_hh with known singular values (a permuted diagonal: σ = |d|) gives them back.
#[test]
fn sigma_max_of_a_known_matrix() {
    let cell = CellKind::Lstm;
    let task = TaskConfig { steps: 0, hidden: 32, ..TaskConfig::new(TaskKind::Adding, cell, 5) };
    let (net, p) = tasks::trained(&task).unwrap();
    let mut p: Vec<f64> = p.iter().map(|&v| v as f64).collect();
    let (h, w) = (32, net.param("rnn.weight_hh_l0").unwrap().clone());
    let w = w.of_mut(&mut p);
    w.fill(0.0);
    for q in 0..4 {
        for r in 0..h {
            // Row r of block q has one entry, in column (5r + q) mod H: d = ±(0.1 + 0.03 r) · (q + 1).
            let d = (0.1 + 0.03 * r as f64) * (q + 1) as f64 * if r % 3 == 0 { -1.0 } else { 1.0 };
            w[(q * h + r) * h + (5 * r + q) % h] = d;
        }
    }
    let cfg = FlowConfig {
        cells: vec![cell],
        hidden: h,
        layers: 1,
        length: 5,
        batch: 2,
        seed: 3,
        threads: 1,
        train_steps: 0,
        w_hh_scale: None,
        forget_bias: None,
        jacobian_samples: 1,
    };
    let f = measure(&net, &p, cell, &cfg, 0).unwrap();
    for q in 0..4 {
        let want = (0.1 + 0.03 * 31.0) * (q + 1) as f64;
        let got = f.w_hh_sigma_max[0][q];
        assert!((got - want).abs() < 1e-6 * want, "block {q}: σmax {got}, expected {want}");
    }
}

#[test]
fn tanh_rnn_with_small_recurrent_weights_decays_geometrically() {
    // |tanh'| ≤ 1, so ‖∂h_t/∂h_{t−1}‖ ≤ σmax(W_hh) = 0.5: each step back at least halves it.
    let n = flow(CellKind::RnnTanh, 40, Some(0.5), None);
    for t in 0..n.len() - 1 {
        assert!(n[t] <= 0.5 * n[t + 1] * (1.0 + 1e-9), "step {t}: {} vs {}", n[t], n[t + 1]);
    }
    assert!(n[0] < 1e-11 * n[n.len() - 1]);
}

#[test]
fn lstm_with_a_large_forget_bias_keeps_the_gradient() {
    let n = flow(CellKind::Lstm, 60, None, Some(5.0));
    // Away from the last step (which also gets the loss directly) the norm stays within a
    // bounded factor, where the tanh RNN of the same size loses many orders of magnitude.
    // (With f ≈ 1 the cell state carries dc back undiminished, and each step adds to it.)
    let body = &n[..n.len() - 2];
    let (lo, hi) = body.iter().fold((f64::MAX, 0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    assert!(hi / lo < 30.0, "LSTM norms vary by {}", hi / lo);
    let rnn = flow(CellKind::RnnTanh, 60, None, None);
    assert!(rnn[0] / rnn[rnn.len() - 2] < 1e-6);
}

#[test]
fn clipping_bounds_the_applied_update() {
    let n = 50;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for scale in [1e-3, 1.0, 1e6, 1e30] {
        let mut p = vec![0.0f64; n];
        let mut opt = Optimizer::new(OptimizerConfig::sgd(), n).unwrap();
        let mut g: Vec<f64> = (0..n).map(|_| rand::RngExt::random_range(&mut rng, -scale..scale)).collect();
        let r = apply_update(&mut p, &mut g, &mut opt, 0.1, Clip { max_norm: Some(1.0), max_value: None });
        let step = p.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!(step <= 0.1 * (1.0 + 1e-9), "scale {scale}: update of norm {step}");
        assert_eq!(r.clipped, r.grad_norm > 1.0);
    }
}

#[test]
fn full_horizon_truncation_is_the_full_gradient() {
    let task = TaskConfig { steps: 20, hidden: 16, ..TaskConfig::new(TaskKind::Adding, CellKind::Lstm, 12) };
    let (net, p) = tasks::trained(&task).unwrap();
    let pts = truncation_of(&net, &p, TaskKind::Adding, 12, &[1, 3, 12, 40], 1, 1).unwrap();
    for p in &pts[2..] {
        assert!((p.cosine - 1.0).abs() < 1e-12 && (p.relative_norm - 1.0).abs() < 1e-12, "{p:?}");
    }
    assert!(pts[0].cosine < 1.0 - 1e-9, "k = 1 should differ: {:?}", pts[0]);
    // The copy task's loss sits at every step: truncation applies there too.
    let task = TaskConfig { steps: 5, hidden: 16, ..TaskConfig::new(TaskKind::Copy, CellKind::Gru, 3) };
    let (net, p) = tasks::trained(&task).unwrap();
    let pts = truncation_of(&net, &p, TaskKind::Copy, 3, &[23], 1, 1).unwrap();
    assert!((pts[0].cosine - 1.0).abs() < 1e-12);
}

#[test]
fn task_baselines_match_their_formulas() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (t, b) = (20, 20_000);
    let batch = Batch::<f64>::generate(TaskKind::Adding, t, b, &mut rng);
    let last = &batch.values[(t - 1) * b..];
    let mse = last.iter().map(|s| (s - 1.0) * (s - 1.0)).sum::<f64>() / b as f64;
    assert!((mse - TaskKind::Adding.baseline(t)).abs() < 0.005, "always-1 MSE {mse}");
    for j in 0..50 {
        let marks: usize = (0..t).map(|s| batch.x[(s * b + j) * 2 + 1] as usize).sum();
        assert_eq!(marks, 2);
    }
    // Copy: blanks until the delimiter, then the 10 symbols (1..=8) seen at the start, so the
    // blank-then-uniform guess scores exactly 10 ln 8 / (T + 20).
    let (t, b) = (7, 64);
    let c = Batch::<f64>::generate(TaskKind::Copy, t, b, &mut rng);
    for j in 0..b {
        for s in 0..t + 20 {
            let y = c.classes[s * b + j];
            if s < t + 10 {
                assert_eq!(y, 0);
            } else {
                assert!((1..=8).contains(&y));
                assert_eq!(c.x[((s - t - 10) * b + j) * 10 + y as usize], 1.0);
            }
        }
        assert_eq!(c.x[((t + 9) * b + j) * 10 + 9], 1.0, "delimiter");
    }
    let guess = (10.0 * (8f64).ln()) / (t + 20) as f64;
    assert!((TaskKind::Copy.baseline(t) - guess).abs() < 1e-15);
}

#[test]
fn spectral_norm_of_a_known_matrix() {
    // [[3, 0], [4, 5]] has singular values √45 and √5.
    let s = spectral_norm(&[3.0, 0.0, 4.0, 5.0], 2, 2);
    assert!((s - 45f64.sqrt()).abs() < 1e-9);
}

#[test]
fn the_unrolled_graph_has_the_figure_s_nodes_and_edges() {
    let g = unrolled(3, 1, GraphFormat::Mermaid);
    for t in 0..3 {
        for node in [format!("X{t}"), format!("H{t}"), format!("Y{t}"), format!("Loss{t}")] {
            assert!(g.contains(&format!("    {node}(")), "node {node} missing:\n{g}");
        }
        for edge in
            [format!("X{t} --> H{t}"), format!("H{t} --> Y{t}"), format!("Y{t} --> Loss{t}"), format!("Loss{t} -.->")]
        {
            assert!(g.contains(&edge), "edge {edge} missing:\n{g}");
        }
    }
    for edge in ["H0 -->|h0| H1", "H1 -->|h1| H2", "H2 -.->|dL/dh1| H1", "H1 -.->|dL/dh0| H0"] {
        assert!(g.contains(edge), "edge {edge} missing:\n{g}");
    }
    let dot = unrolled(3, 2, GraphFormat::Dot);
    assert!(dot.starts_with("digraph") && dot.contains("H2_1 -> H2_0") && dot.contains("H0_1 -> H1_1"));
    let svg = unrolled(3, 1, GraphFormat::Svg);
    assert!(svg.starts_with("<svg") && svg.contains("∂L/∂h1"));
    let o = bptt(&["graph", "--steps", "3"]);
    assert!(o.status.success());
    assert_eq!(String::from_utf8(o.stdout).unwrap(), g);
}

#[test]
fn demo_quick_writes_a_complete_report() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("demo");
    let o = bptt(&["demo", "--quick", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let files = [
        "report.html",
        "unrolled.svg",
        "flow_init.png",
        "flow_init.svg",
        "flow_init.csv",
        "adding.png",
        "flow_trained.png",
    ];
    let more = ["explode_loss.png", "explode_grad_norm.svg", "explode.csv", "truncation.png", "truncation.csv"];
    let more = [&more[..], &["online.png", "online.svg", "online.csv", "online_tradeoff.png", "online_gradients.csv"]]
        .concat();
    for f in files.iter().chain(&more) {
        let len = std::fs::metadata(out.join(f)).map(|m| m.len()).unwrap_or(0);
        assert!(len > 0, "{f} missing or empty");
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    for s in [
        "1. Unrolling",
        "2. Vanishing",
        "3. Long-range",
        "4. Gradient flow after",
        "5. Exploding",
        "6. The bias",
        "7. Learning online",
        "8. A character",
    ] {
        assert!(html.contains(s), "section {s} missing");
    }
    assert!(!html.contains("<script") && !html.contains("src=\"http"), "the report must be self-contained");
    // Every figure has its numbers beside it as CSV, and so has every table.
    let names: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    for png in names.iter().filter(|n| n.ends_with(".png")) {
        let csv = png.replace(".png", ".csv");
        assert!(names.contains(&csv), "{png} has no {csv}");
        let text = std::fs::read_to_string(out.join(&csv)).unwrap();
        assert!(text.lines().count() > 2, "{csv} is empty");
    }
    let tables = html.matches("<table>").count();
    assert_eq!(names.iter().filter(|n| n.starts_with("table_") && n.ends_with(".csv")).count(), tables);
}
