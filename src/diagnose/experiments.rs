//! The experiments behind `bptt diagnose` and `bptt demo`, and the charts and CSV tables that
//! show them (no IO here: the CLI writes the files).

use crate::cell::CellKind;
use crate::diagnose::flow::CellFlow;
use crate::diagnose::plot::{Chart, Series};
use crate::diagnose::truncation::{TruncationPoint, truncation_bias};
use crate::error::Result;
use crate::tasks::{self, Batch, TaskConfig, TaskKind, TaskReport};
use crate::train::Clip;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::fmt::Write;

/// ‖∂L_T/∂h_t‖ against t, log scale, one line per cell and layer.
pub fn flow_chart(flows: &[CellFlow], title: &str) -> Chart {
    let mut series = Vec::new();
    for f in flows {
        for (l, norms) in f.dh_norms.iter().enumerate() {
            let name = if f.dh_norms.len() == 1 { f.cell.to_string() } else { format!("{} layer {}", f.cell, l + 1) };
            series.push(Series {
                name,
                points: norms.iter().enumerate().map(|(t, &n)| (t as f64, n)).collect(),
                marks: vec![],
            });
        }
    }
    // At most 20 decades below the largest norm: a vanilla RNN's norms fall 50 decades and more,
    // and an axis that long flattens the gated cells' difference. What falls below is drawn at
    // the floor, and its legend says so (the CSV keeps every value).
    let top = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).filter(|y| *y > 0.0).fold(0.0, f64::max);
    if top.is_finite() && top > 0.0 {
        let floor_exp = (top.log10() - 20.0).floor();
        let floor = 10f64.powf(floor_exp);
        for s in &mut series {
            if s.points.iter().any(|p| p.1 < floor) {
                s.points.iter_mut().for_each(|p| p.1 = p.1.max(floor));
                s.name = format!("{} (below 1e{floor_exp} drawn at it)", s.name);
            }
        }
    }
    Chart {
        title: title.into(),
        x_label: "time step t (the loss is at the last step)".into(),
        y_label: "‖∂L_T/∂h_t‖ (mean over batch)".into(),
        log_y: true,
        series,
        hlines: vec![],
        legend_below: true,
    }
}

/// `cell,layer,t,dh_norm` rows.
pub fn flow_csv(flows: &[CellFlow]) -> String {
    let mut s = String::from("cell,layer,t,dh_norm\n");
    for f in flows {
        for (l, norms) in f.dh_norms.iter().enumerate() {
            for (t, n) in norms.iter().enumerate() {
                let _ = writeln!(s, "{},{l},{t},{n:e}", f.cell);
            }
        }
    }
    s
}

/// The exploding-gradient experiment: a tanh RNN whose W_hh starts with largest singular value
/// `w_hh_scale`, trained by plain SGD on the adding task, without and with norm clipping.
pub fn explode(
    length: usize,
    steps: usize,
    w_hh_scale: f64,
    lr: f64,
    clip: f64,
    seed: u64,
    threads: usize,
) -> Result<[TaskReport; 2]> {
    let run = |max_norm: Option<f64>| {
        let cfg = TaskConfig {
            steps,
            lr,
            optimizer: crate::OptimizerConfig::sgd(),
            clip: Clip { max_norm, max_value: None },
            seed,
            threads,
            w_hh_scale: Some(w_hh_scale),
            ..TaskConfig::new(TaskKind::Adding, CellKind::RnnTanh, length)
        };
        tasks::run(&cfg, |_| {})
    };
    Ok([run(None)?, run(Some(clip))?])
}

fn run_name(r: &TaskReport, k: usize, clip: f64) -> String {
    let _ = r;
    if k == 0 { "no clipping".into() } else { format!("clip-norm {clip}") }
}

/// Loss and pre-clip gradient norm per update of the two explode runs; clipped updates are
/// marked on the with-clipping line, skipped (non-finite) ones on either.
pub fn explode_charts(runs: &[TaskReport; 2], clip: f64) -> (Chart, Chart) {
    let mut loss = Vec::new();
    let mut norm = Vec::new();
    for (k, r) in runs.iter().enumerate() {
        let name = run_name(r, k, clip);
        let pts =
            |f: &dyn Fn(&tasks::TaskStep) -> f64| r.history.iter().map(|s| (s.step as f64, f(s))).collect::<Vec<_>>();
        // Skipped (non-finite) updates have no norm to plot: mark them above the largest one.
        let top = r.history.iter().map(|s| s.grad_norm).filter(|g| g.is_finite()).fold(1.0, f64::max) * 10.0;
        let skipped: Vec<(f64, f64)> = r.history.iter().filter(|s| s.skipped).map(|s| (s.step as f64, top)).collect();
        // Where the loss stops being a number, a dot at the last value it had: the line would
        // otherwise just end.
        let broke = r.history.iter().position(|s| !s.loss.is_finite());
        let loss_marks: Vec<(f64, f64)> = broke
            .map(|i| {
                let last = r.history[..i].iter().rev().map(|s| s.loss).find(|l| l.is_finite()).unwrap_or(top);
                (r.history[i].step as f64, last)
            })
            .into_iter()
            .collect();
        let loss_name = if broke.is_some() { format!("{name} (dot: non-finite from here on)") } else { name.clone() };
        loss.push(Series { name: loss_name, points: pts(&|s| s.loss), marks: loss_marks });
        let clipped = r.history.iter().filter(|s| s.clipped).map(|s| (s.step as f64, s.grad_norm));
        norm.push(Series {
            name: format!("{name}{}", if k == 1 { " (dots: clipped updates)" } else { " (dots: skipped, non-finite)" }),
            points: pts(&|s| s.grad_norm),
            marks: clipped.chain(skipped).collect(),
        });
    }
    let baseline = runs[0].baseline;
    (
        Chart {
            title: "Exploding gradients: training loss, tanh RNN with σmax(W_hh) > 1, plain SGD".into(),
            x_label: "update".into(),
            y_label: "MSE (log scale)".into(),
            log_y: true,
            series: loss,
            hlines: vec![(baseline, "baseline (always answer 1)".into())],
            legend_below: false,
        },
        Chart {
            title: "Gradient norm before clipping".into(),
            x_label: "update".into(),
            y_label: "‖∇L‖₂ (log scale)".into(),
            log_y: true,
            series: norm,
            hlines: vec![(clip, format!("clip threshold {clip}"))],
            legend_below: false,
        },
    )
}

/// `run,step,loss,grad_norm,clipped,skipped` rows of the explode runs.
pub fn explode_csv(runs: &[TaskReport; 2], clip: f64) -> String {
    let mut s = String::from("run,step,loss,grad_norm,clipped,skipped\n");
    for (k, r) in runs.iter().enumerate() {
        for h in &r.history {
            let _ = writeln!(
                s,
                "{},{},{:e},{:e},{},{}",
                run_name(r, k, clip),
                h.step,
                h.loss,
                h.grad_norm,
                h.clipped,
                h.skipped
            );
        }
    }
    s
}

/// Trains `cell` on the adding task for `train_steps` updates, then compares TBPTT(1, k)
/// gradients on a fresh batch with the full gradient for every k in `ks`.
#[allow(clippy::too_many_arguments)]
pub fn truncation(
    cell: CellKind,
    hidden: usize,
    length: usize,
    train_steps: usize,
    ks: &[usize],
    seed: u64,
    threads: usize,
) -> Result<Vec<TruncationPoint>> {
    let cfg =
        TaskConfig { hidden, steps: train_steps, seed, threads, ..TaskConfig::new(TaskKind::Adding, cell, length) };
    let (net, params) = tasks::trained(&cfg)?;
    truncation_of(&net, &params, TaskKind::Adding, length, ks, seed, threads)
}

/// The bytes [`truncation`] holds at most, computed without allocating: the training run, then
/// the f64 full-gradient workspace and a truncated-BPTT driver over the whole length.
pub fn truncation_bytes(cell: CellKind, hidden: usize, length: usize, train_steps: usize) -> u64 {
    let cfg = TaskConfig { hidden, steps: train_steps, ..TaskConfig::new(TaskKind::Adding, cell, length) };
    let net = TaskKind::Adding.net_config(cell, hidden, 1);
    let params = crate::Net::new(net).map_or(u64::MAX, |n| n.num_params() as u64);
    let b = 32;
    [
        cfg.estimate_bytes(),
        crate::net::Workspace::<f64>::estimate_bytes(&net, length, b),
        crate::train::Tbptt::<f64>::estimate_bytes(&net, length, b, 0),
        params.saturating_mul(8 * 5),
        (length * b * 5 * 8) as u64,
    ]
    .into_iter()
    .fold(0, u64::saturating_add)
}

/// The truncation bias of a task network (f32 parameters, measured in f64) on a fresh batch.
pub fn truncation_of(
    net: &crate::Net,
    params: &[f32],
    kind: TaskKind,
    length: usize,
    ks: &[usize],
    seed: u64,
    threads: usize,
) -> Result<Vec<TruncationPoint>> {
    let params: Vec<f64> = params.iter().map(|&v| v as f64).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7bc);
    let batch = Batch::<f64>::generate(kind, length, 32, &mut rng);
    truncation_bias(net, &params, &batch.x, batch.targets(), kind.steps(length), ks, threads)
}

/// Trains `cell` on the adding task for `train_steps` updates, then compares TBPTT(1, k) for
/// every k in `ks`, RTRL, SnAp-1 and `draws` draws of UORO with full BPTT on `batch` fresh
/// sequences (forward-mode gradients cost S one-step passes per step: keep H and the batch small).
#[allow(clippy::too_many_arguments)]
pub fn online(
    cell: CellKind,
    hidden: usize,
    length: usize,
    train_steps: usize,
    ks: &[usize],
    draws: u64,
    batch: usize,
    seed: u64,
    threads: usize,
) -> Result<Vec<crate::diagnose::OnlinePoint>> {
    let cfg =
        TaskConfig { hidden, steps: train_steps, seed, threads, ..TaskConfig::new(TaskKind::Adding, cell, length) };
    let (net, params) = tasks::trained(&cfg)?;
    let params: Vec<f64> = params.iter().map(|&v| v as f64).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7bc);
    let kind = TaskKind::Adding;
    let data = Batch::<f64>::generate(kind, length, batch.max(1), &mut rng);
    let steps = kind.steps(length);
    crate::diagnose::online_bias(&net, &params, &data.x, data.targets(), steps, ks, draws, threads)
}

/// Cosine similarity and relative norm of the truncated gradient against k.
pub fn truncation_chart(points: &[TruncationPoint], what: &str) -> Chart {
    let xs = |f: &dyn Fn(&TruncationPoint) -> f64| points.iter().map(|p| (p.k as f64, f(p))).collect::<Vec<_>>();
    Chart {
        title: format!("Truncation bias of TBPTT(1, k): {what}"),
        x_label: "truncation horizon k (steps each loss is back-propagated through)".into(),
        y_label: "vs the full-BPTT gradient".into(),
        log_y: false,
        series: vec![
            Series { name: "cosine similarity".into(), points: xs(&|p| p.cosine), marks: xs(&|p| p.cosine) },
            Series { name: "relative norm ‖g_k‖/‖g‖".into(), points: xs(&|p| p.relative_norm), marks: vec![] },
        ],
        hlines: vec![(1.0, "full BPTT".into())],
        legend_below: true,
    }
}

/// `k,cosine,relative_norm` rows.
pub fn truncation_csv(points: &[TruncationPoint]) -> String {
    let mut s = String::from("k,cosine,relative_norm\n");
    for p in points {
        let _ = writeln!(s, "{},{},{}", p.k, p.cosine, p.relative_norm);
    }
    s
}

/// Training loss of task runs against the update, with the task's baseline.
pub fn task_chart(runs: &[TaskReport], title: &str) -> Chart {
    let series = runs
        .iter()
        .map(|r| {
            // A running mean over 20 updates keeps the lines readable.
            let mut pts = Vec::with_capacity(r.history.len());
            let mut acc = 0.0;
            for (k, s) in r.history.iter().enumerate() {
                acc += s.loss;
                if k >= 20 {
                    acc -= r.history[k - 20].loss;
                }
                pts.push((s.step as f64, acc / (k + 1).min(20) as f64));
            }
            Series { name: r.cell.to_string(), points: pts, marks: vec![] }
        })
        .collect();
    Chart {
        title: title.into(),
        x_label: "update".into(),
        y_label: "training loss (mean of 20 updates, log scale)".into(),
        log_y: true,
        series,
        hlines: runs.first().map(|r| vec![(r.baseline, "baseline".into())]).unwrap_or_default(),
        legend_below: false,
    }
}

/// One learner of [`online_training`]: its name, its learning curve (seconds of training — the
/// run's time spread evenly over its sequences — and the training loss averaged over the last
/// 100 sequences) and its report.
#[derive(Clone, Debug)]
pub struct LearningRun {
    pub name: String,
    pub curve: Vec<(f64, f64)>,
    pub report: TaskReport,
}

/// Online learning against BPTT on the adding task (T = `length`, a GRU with H = 16, one
/// sequence per update, seed 1): full BPTT and TBPTT(10) over `bptt_sequences` sequences; SnAp-1,
/// RTRL (Adam at 3e-3) and UORO (1e-3) learning online — an update after every step, no stored
/// window — over `online_sequences`.
pub fn online_training(
    length: usize,
    bptt_sequences: usize,
    online_sequences: usize,
    threads: usize,
) -> Result<Vec<LearningRun>> {
    use crate::online::Method;
    let base = TaskConfig {
        hidden: 16,
        batch: 1,
        lr: 3e-3,
        threads,
        ..TaskConfig::new(TaskKind::Adding, CellKind::Gru, length)
    };
    let k = 10.min(length - 1);
    let runs = [
        ("BPTT".to_string(), TaskConfig { steps: bptt_sequences, ..base.clone() }),
        (format!("TBPTT({k})"), TaskConfig { steps: bptt_sequences, tbptt: Some(k), ..base.clone() }),
        ("SnAp-1 online".into(), TaskConfig { steps: online_sequences, online: Some(Method::Snap1), ..base.clone() }),
        ("RTRL online".into(), TaskConfig { steps: online_sequences, online: Some(Method::Rtrl), ..base.clone() }),
        (
            "UORO online".into(),
            TaskConfig { steps: online_sequences, lr: 1e-3, online: Some(Method::Uoro { seed: 1 }), ..base },
        ),
    ];
    runs.into_iter()
        .map(|(name, cfg)| {
            let report = tasks::run(&cfg, |_| {})?;
            let losses: Vec<f64> = report.history.iter().map(|s| s.loss).collect();
            let curve = (0..losses.len())
                .step_by(20)
                .map(|n| {
                    let window = &losses[n.saturating_sub(99)..=n];
                    let seconds = report.seconds * (n + 1) as f64 / losses.len() as f64;
                    (seconds, window.iter().sum::<f64>() / window.len() as f64)
                })
                .collect();
            Ok(LearningRun { name, curve, report })
        })
        .collect()
}

/// The learning curves of [`online_training`], log scale, with the baseline.
pub fn online_training_chart(runs: &[LearningRun], length: usize) -> Chart {
    Chart {
        title: format!("Adding task (T = {length}), GRU H = 16, one sequence at a time: BPTT and online learners"),
        x_label: "seconds of training (the same compute for every learner at any x)".into(),
        y_label: "training MSE (mean of the last 100 sequences)".into(),
        log_y: true,
        series: runs.iter().map(|r| Series { name: r.name.clone(), points: r.curve.clone(), marks: vec![] }).collect(),
        hlines: vec![(TaskKind::Adding.baseline(length), "baseline (always answer 1)".into())],
        legend_below: true,
    }
}

/// The trade-off of [`crate::diagnose::online_bias`]'s points: the cosine of each method's
/// gradient with BPTT's against the values it carries per sequence (log10), TBPTT(1, k) as a line
/// over k, the others as points.
pub fn online_tradeoff_chart(points: &[crate::diagnose::OnlinePoint], what: &str) -> Chart {
    let at = |p: &crate::diagnose::OnlinePoint| ((p.carried.max(1) as f64).log10(), p.cosine);
    let tbptt: Vec<(f64, f64)> = points.iter().filter(|p| p.method.starts_with("tbptt")).map(at).collect();
    let mut series = vec![Series { name: "TBPTT(1, k), k growing to the right".into(), points: tbptt, marks: vec![] }];
    for (method, name) in [("bptt", "BPTT"), ("rtrl", "RTRL"), ("snap1", "SnAp-1"), ("uoro", "UORO (mean over draws)")]
    {
        if let Some(p) = points.iter().find(|p| p.method == method) {
            series.push(Series { name: name.into(), points: vec![at(p)], marks: vec![at(p)] });
        }
    }
    Chart {
        title: format!("What each gradient costs and how right it is: {what}"),
        x_label: "log10 of the values carried per sequence (stored history, or influence)".into(),
        y_label: "cosine with the BPTT gradient".into(),
        log_y: false,
        series,
        hlines: vec![],
        legend_below: true,
    }
}
