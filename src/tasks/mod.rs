//! The classic long-range benchmarks, generated in code from a seed: the adding problem
//! (Hochreiter & Schmidhuber 1997; Le et al. 2015) and the copy task (Arjovsky et al. 2016),
//! and a small trainer that records every update (loss, pre-clip gradient norm, clip/skip).

use crate::cell::CellKind;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::net::{Head, Input, InputKind, LossKind, Net, NetConfig, Targets, Workspace};
use crate::optim::{Optimizer, OptimizerConfig};
use crate::train::{Clip, apply_update};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

/// Which task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskKind {
    /// Two marked numbers in a sequence of T (value, marker) pairs; predict their sum at the
    /// end (MSE, many-to-one). Always answering 1 scores MSE = 2 · Var U(0,1) = 1/6 ≈ 0.167.
    Adding,
    /// Read 10 symbols from an alphabet of 8, wait T steps, then reproduce them (cross-entropy
    /// at every one of the T + 20 steps). Blanks then guessing scores 10 ln 8 / (T + 20).
    Copy,
}

impl TaskKind {
    /// `adding` or `copy`.
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Adding => "adding",
            TaskKind::Copy => "copy",
        }
    }

    /// Steps per sequence for delay/length `t`.
    pub fn steps(self, t: usize) -> usize {
        match self {
            TaskKind::Adding => t,
            TaskKind::Copy => t + 20,
        }
    }

    /// The loss of the trivial baseline (see the variants).
    pub fn baseline(self, t: usize) -> f64 {
        match self {
            TaskKind::Adding => 1.0 / 6.0,
            TaskKind::Copy => 10.0 * 8f64.ln() / (t + 20) as f64,
        }
    }

    /// The network shape for this task.
    pub fn net_config(self, cell: CellKind, hidden: usize, layers: usize) -> NetConfig {
        let (input, output, loss) = match self {
            TaskKind::Adding => (2, 1, LossKind::Mse),
            TaskKind::Copy => (10, 10, LossKind::CrossEntropy),
        };
        let head = Head::PerStep;
        NetConfig {
            cell,
            input: InputKind::Dense { size: input },
            hidden,
            layers,
            output,
            loss,
            head,
            bidirectional: false,
            proj_size: 0,
            layer_norm: false,
            zoneout: crate::net::Zoneout::NONE,
        }
    }
}

impl std::str::FromStr for TaskKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "adding" => Ok(TaskKind::Adding),
            "copy" => Ok(TaskKind::Copy),
            _ => Err(Error::Config(format!("unknown task '{s}': use adding or copy"))),
        }
    }
}

/// One batch of a task, time-major.
#[derive(Clone, Debug)]
pub struct Batch<F> {
    /// (T, B, I) inputs.
    pub x: Vec<F>,
    /// (T, B) class targets (copy).
    pub classes: Vec<u32>,
    /// (T, B, 1) value targets (adding).
    pub values: Vec<F>,
    /// (T, B) weights: adding counts only the last step.
    pub mask: Vec<F>,
}

impl<F: Float> Batch<F> {
    /// A fresh batch of `b` sequences with delay/length `t`.
    pub fn generate(kind: TaskKind, t: usize, b: usize, rng: &mut ChaCha8Rng) -> Self {
        let steps = kind.steps(t);
        match kind {
            TaskKind::Adding => {
                let mut x = vec![F::zero(); steps * b * 2];
                let mut values = vec![F::zero(); steps * b];
                let mut mask = vec![F::zero(); steps * b];
                let half = (t / 2).max(1);
                for j in 0..b {
                    let first = rng.random_range(0..half);
                    let second = if t > half { rng.random_range(half..t) } else { first };
                    let mut sum = 0.0;
                    for s in 0..steps {
                        let v: f64 = rng.random();
                        let marked = s == first || s == second;
                        x[(s * b + j) * 2] = F::of(v);
                        x[(s * b + j) * 2 + 1] = if marked { F::one() } else { F::zero() };
                        if marked {
                            sum += v;
                        }
                    }
                    values[(steps - 1) * b + j] = F::of(sum);
                    mask[(steps - 1) * b + j] = F::one();
                }
                Batch { x, classes: Vec::new(), values, mask }
            }
            TaskKind::Copy => {
                let mut x = vec![F::zero(); steps * b * 10];
                let mut classes = vec![0u32; steps * b];
                for j in 0..b {
                    for s in 0..10 {
                        let sym = rng.random_range(1..9u32);
                        x[(s * b + j) * 10 + sym as usize] = F::one();
                        classes[((t + 10 + s) * b) + j] = sym;
                    }
                    for s in 10..steps {
                        let sym = if s == t + 9 { 9 } else { 0 };
                        x[(s * b + j) * 10 + sym] = F::one();
                    }
                }
                Batch { x, classes, values: Vec::new(), mask: vec![F::one(); steps * b] }
            }
        }
    }

    /// The targets, as the network takes them.
    pub fn targets(&self) -> Targets<'_, F> {
        if self.classes.is_empty() {
            Targets::values(&self.values).with_mask(&self.mask)
        } else {
            Targets::classes(&self.classes).with_mask(&self.mask)
        }
    }
}

/// Settings of one task run.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskConfig {
    /// The task.
    pub kind: TaskKind,
    /// The cell.
    pub cell: CellKind,
    /// H.
    pub hidden: usize,
    /// L.
    pub layers: usize,
    /// T: sequence length (adding) or delay (copy).
    pub length: usize,
    /// B.
    pub batch: usize,
    /// Updates.
    pub steps: usize,
    /// Learning rate.
    pub lr: f64,
    /// Optimizer.
    pub optimizer: OptimizerConfig,
    /// Clipping.
    pub clip: Clip,
    /// Seed of the initialisation and the data.
    pub seed: u64,
    /// Threads.
    pub threads: usize,
    /// Rescale every W_hh to this largest singular value after initialisation (exploding
    /// gradients experiments).
    pub w_hh_scale: Option<f64>,
    /// LSTM forget-gate bias at initialisation.
    pub forget_bias: Option<f64>,
    /// Learn online instead of by BPTT (`crate::online`): one sequence at a time as a stream,
    /// the weights updated after every one of its steps with the method's gradient estimate of
    /// that step's loss, no stored window; `steps` then counts sequences (each T updates) and
    /// `batch` is unused.
    pub online: Option<crate::online::Method>,
    /// Truncated BPTT: each batch fed as windows of k steps (`crate::Tbptt`, k1 = k2 = k, the
    /// state carried between them), their gradients summed into one update per batch — the
    /// gradient BPTT would give with every path longer than k steps cut. `None`: full BPTT.
    pub tbptt: Option<usize>,
}

impl TaskConfig {
    /// The defaults `bptt task` uses: H = 64, one layer, B = 32, 2000 updates of Adam at
    /// lr 1e-2 with the gradient norm clipped to 1, seed 1, one thread.
    pub fn new(kind: TaskKind, cell: CellKind, length: usize) -> Self {
        TaskConfig {
            kind,
            cell,
            hidden: 64,
            layers: 1,
            length,
            batch: 32,
            steps: 2000,
            lr: 1e-2,
            optimizer: OptimizerConfig::adam(),
            clip: Clip { max_norm: Some(1.0), max_value: None },
            seed: 1,
            threads: 1,
            w_hh_scale: None,
            forget_bias: None,
            online: None,
            tbptt: None,
        }
    }
}

impl TaskConfig {
    /// The bytes a run of this task holds, computed without allocating: weights, gradients and
    /// optimizer buffers, the training and held-out (512 sequences) workspaces, one batch of
    /// each, and the per-update history. Saturates for sizes that cannot exist.
    pub fn estimate_bytes(&self) -> u64 {
        let net = self.kind.net_config(self.cell, self.hidden, self.layers);
        let params = Net::new(net).map_or(u64::MAX as u128, |n| n.num_params() as u128);
        let steps = self.kind.steps(self.length);
        let per_sequence = (steps * (net.input_width() + 3)) as u128 * 4;
        let held_out = 512;
        let total = params * (2 + self.optimizer.buffer_names().len() as u128) * 4
            + Workspace::<f32>::estimate_bytes(&net, steps, self.batch) as u128
            + Workspace::<f32>::estimate_bytes(&net, steps, held_out) as u128
            + (self.batch + held_out) as u128 * per_sequence
            + self.steps as u128 * std::mem::size_of::<TaskStep>() as u128;
        u64::try_from(total).unwrap_or(u64::MAX)
    }
}

/// One update of a task run.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct TaskStep {
    /// Update number, from 1.
    pub step: usize,
    /// Training loss of the update's batch.
    pub loss: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Clipping changed the gradient.
    pub clipped: bool,
    /// Non-finite gradient, not applied.
    pub skipped: bool,
}

/// The outcome of a task run.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TaskReport {
    /// `adding` or `copy`.
    pub task: &'static str,
    /// The cell's name.
    pub cell: &'static str,
    /// T.
    pub length: usize,
    /// Updates done.
    pub steps: usize,
    /// Loss on a held-out batch of 512 sequences after training.
    pub final_loss: f64,
    /// The trivial baseline's loss.
    pub baseline: f64,
    /// Copy: accuracy on the copied symbols of the held-out batch; adding: null.
    pub accuracy: Option<f64>,
    /// Adding: MSE < 0.01; copy: accuracy > 99 %.
    pub solved: bool,
    /// Wall time of the run.
    pub seconds: f64,
    /// Every update.
    #[serde(skip)]
    pub history: Vec<TaskStep>,
}

/// Largest singular value of the (rows, cols) row-major matrix `m`, by power iteration on mᵀm.
pub fn spectral_norm(m: &[f64], rows: usize, cols: usize) -> f64 {
    let mut v = vec![1.0 / (cols as f64).sqrt(); cols];
    let mut u = vec![0.0; rows];
    let mut sigma = 0.0;
    for _ in 0..100 {
        for (r, ur) in u.iter_mut().enumerate() {
            *ur = (0..cols).map(|c| m[r * cols + c] * v[c]).sum();
        }
        for (c, vc) in v.iter_mut().enumerate() {
            *vc = (0..rows).map(|r| m[r * cols + c] * u[r]).sum();
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            return 0.0;
        }
        let next = norm.sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        if (next - sigma).abs() <= 1e-9 * next {
            return next;
        }
        sigma = next;
    }
    sigma
}

/// Scales every layer's `weight_hh` so its largest singular value is `target`.
pub fn scale_w_hh<F: Float>(net: &Net, params: &mut [F], target: f64) {
    let h = net.config().hidden;
    for p in net.params().iter().filter(|p| p.name.contains("weight_hh")) {
        let w: Vec<f64> = p.of(params).iter().map(|v| v.f64()).collect();
        let sigma = spectral_norm(&w, w.len() / h, h);
        if sigma > 0.0 {
            let s = F::of(target / sigma);
            p.of_mut(params).iter_mut().for_each(|v| *v *= s);
        }
    }
}

/// Loss and (copy) accuracy of `params` on `batch`.
fn evaluate<F: Float>(
    net: &Net,
    params: &[F],
    ws: &mut Workspace<F>,
    kind: TaskKind,
    t: usize,
    batch: &Batch<F>,
) -> Result<(f64, Option<f64>)> {
    let loss = net.forward(params, ws, Input::Dense(&batch.x), Some(batch.targets()), None)?.f64();
    if kind == TaskKind::Adding {
        return Ok((loss, None));
    }
    let (b, logits) = (ws.batch(), ws.logits());
    let mut right = 0;
    for s in t + 10..t + 20 {
        for j in 0..b {
            let z = &logits[(s * b + j) * 10..(s * b + j + 1) * 10];
            let pred = (0..10).fold(0, |best, k| if z[k] > z[best] { k } else { best });
            right += usize::from(pred as u32 == batch.classes[s * b + j]);
        }
    }
    Ok((loss, Some(right as f64 / (10 * b) as f64)))
}

/// Trains a fresh network on the task and evaluates it on a held-out batch; `progress` sees
/// every update.
pub fn run(cfg: &TaskConfig, progress: impl FnMut(&TaskStep)) -> Result<TaskReport> {
    if cfg.steps == 0 {
        return Err(Error::Config("`steps` must be at least 1".into()));
    }
    Ok(train(cfg, progress)?.2)
}

/// The network and parameters after `cfg.steps` updates (0 = at initialisation).
pub fn trained(cfg: &TaskConfig) -> Result<(Net, Vec<f32>)> {
    let (net, params, _) = train(cfg, |_| {})?;
    Ok((net, params))
}

/// One batch through TBPTT(k, k) windows (see [`TaskConfig::tbptt`]): the gradients summed into
/// `grads`; the loss of the whole batch (its windows' losses weighted by their targets' weights).
fn truncated(
    net: &Net,
    params: &[f32],
    tb: &mut crate::train::Tbptt<f32>,
    batch: &Batch<f32>,
    (b, k): (usize, usize),
    grads: &mut [f32],
) -> Result<f32> {
    let (rows, width) = (batch.mask.len(), batch.x.len() / batch.mask.len());
    let steps = rows / b;
    tb.reset(None);
    let (mut loss, mut weight) = (0.0f64, 0.0f64);
    for t0 in (0..steps).step_by(k) {
        let t1 = (t0 + k).min(steps);
        let (r0, r1) = (t0 * b, t1 * b);
        let mask = &batch.mask[r0..r1];
        let target = if batch.classes.is_empty() {
            let o = batch.values.len() / rows;
            crate::net::Target::Values(&batch.values[r0 * o..r1 * o])
        } else {
            crate::net::Target::Classes(&batch.classes[r0..r1])
        };
        let w: f64 = mask.iter().map(|&v| v as f64).sum();
        let x = Input::Dense(&batch.x[r0 * width..r1 * width]);
        let l = tb.step(net, params, x, Targets { target, mask: Some(mask) }, grads)?;
        if w > 0.0 {
            (loss, weight) = (loss + l as f64 * w, weight + w);
        }
    }
    Ok(if weight > 0.0 { (loss / weight) as f32 } else { 0.0 })
}

/// Online training (see [`TaskConfig::online`]): `cfg.steps` sequences, each a stream of T steps
/// with an update after every step; one history row per sequence (its loss, the largest
/// pre-clip gradient norm of its updates, whether any was clipped or skipped).
#[allow(clippy::too_many_arguments)]
fn train_online(
    cfg: &TaskConfig,
    net: &Net,
    params: &mut [f32],
    opt: &mut Optimizer<f32>,
    method: crate::online::Method,
    rng: &mut ChaCha8Rng,
    history: &mut Vec<TaskStep>,
    progress: &mut impl FnMut(&TaskStep),
) -> Result<()> {
    use crate::net::Target;
    let (steps, o, i) = (cfg.kind.steps(cfg.length), net.config().output, net.config().input_width());
    let mut learner = crate::online::Learner::<f32>::new(net, method)?;
    for step in 1..=cfg.steps {
        let seq = Batch::<f32>::generate(cfg.kind, cfg.length, 1, rng);
        learner.reset(net, None);
        let mut row = TaskStep { step, loss: 0.0, grad_norm: 0.0, clipped: false, skipped: false };
        let (mut loss, mut weight) = (0.0, 0.0);
        for t in 0..steps {
            let w = seq.mask[t];
            let y = match cfg.kind {
                TaskKind::Adding => Target::Values(&seq.values[t * o..(t + 1) * o]),
                TaskKind::Copy => Target::Classes(&seq.classes[t..t + 1]),
            };
            let l = learner.step(net, params, Input::Dense(&seq.x[t * i..(t + 1) * i]), y, w)?;
            (loss, weight) = (loss + w as f64 * l as f64, weight + w as f64);
            let r = apply_update(params, learner.grads_mut(), opt, cfg.lr, cfg.clip);
            row.grad_norm = row.grad_norm.max(r.grad_norm);
            row.clipped |= r.clipped;
            row.skipped |= r.skipped;
        }
        row.loss = if weight > 0.0 { loss / weight } else { 0.0 };
        progress(&row);
        history.push(row);
    }
    Ok(())
}

/// Trains a fresh network (possibly for 0 updates), evaluates it on the held-out batch and
/// returns the network, its parameters and the report.
pub fn train(cfg: &TaskConfig, mut progress: impl FnMut(&TaskStep)) -> Result<(Net, Vec<f32>, TaskReport)> {
    if cfg.length < 2 || cfg.batch == 0 {
        return Err(Error::Config("`length` must be at least 2 and `batch` at least 1".into()));
    }
    if cfg.tbptt == Some(0) {
        return Err(Error::Config("`tbptt` must be at least 1 step".into()));
    }
    let started = Instant::now();
    let net = Net::new(cfg.kind.net_config(cfg.cell, cfg.hidden, cfg.layers))?;
    let mut params = net.init_params::<f32>(cfg.seed);
    if let Some(s) = cfg.w_hh_scale {
        scale_w_hh(&net, &mut params, s);
    }
    if let Some(fb) = cfg.forget_bias {
        net.set_forget_bias(&mut params, fb as f32)?;
    }
    let steps = cfg.kind.steps(cfg.length);
    let mut opt = Optimizer::new(cfg.optimizer, params.len())?.with_threads(cfg.threads);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5eed_da7a);
    let mut history = Vec::with_capacity(cfg.steps);
    /// How each batch is differentiated: whole, or in TBPTT(k, k) windows. (Built once.)
    #[allow(clippy::large_enum_variant)]
    enum Pass {
        Whole(Workspace<f32>),
        Windows(crate::train::Tbptt<f32>, usize),
    }
    let mut pass = match (cfg.online, cfg.tbptt) {
        (Some(method), _) => {
            train_online(cfg, &net, &mut params, &mut opt, method, &mut rng, &mut history, &mut progress)?;
            None
        }
        (None, None) => Some(Pass::Whole(net.workspace::<f32>(steps, cfg.batch, cfg.threads)?)),
        (None, Some(k)) => {
            let k = k.min(steps);
            Some(Pass::Windows(crate::train::Tbptt::new(&net, k, k, cfg.batch, cfg.threads)?, k))
        }
    };
    let mut grads = vec![0.0f32; if pass.is_some() { params.len() } else { 0 }];
    for step in 1..=pass.as_ref().map_or(0, |_| cfg.steps) {
        let batch = Batch::generate(cfg.kind, cfg.length, cfg.batch, &mut rng);
        grads.fill(0.0);
        let loss = match pass.as_mut() {
            Some(Pass::Whole(ws)) => {
                let loss = net.forward(&params, ws, Input::Dense(&batch.x), Some(batch.targets()), None)?;
                net.backward(&params, ws, &mut grads)?;
                loss
            }
            Some(Pass::Windows(tb, k)) => truncated(&net, &params, tb, &batch, (cfg.batch, *k), &mut grads)?,
            None => break, // (online: trained above)
        };
        let r = apply_update(&mut params, &mut grads, &mut opt, cfg.lr, cfg.clip);
        let row = TaskStep { step, loss: loss.f64(), grad_norm: r.grad_norm, clipped: r.clipped, skipped: r.skipped };
        progress(&row);
        history.push(row);
    }
    let held_out = 512;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x0ddba11);
    let batch = Batch::generate(cfg.kind, cfg.length, held_out, &mut rng);
    let mut ws = net.workspace::<f32>(steps, held_out, cfg.threads)?;
    let (final_loss, accuracy) = evaluate(&net, &params, &mut ws, cfg.kind, cfg.length, &batch)?;
    let solved = match cfg.kind {
        TaskKind::Adding => final_loss < 0.01,
        TaskKind::Copy => accuracy.is_some_and(|a| a > 0.99),
    };
    let report = TaskReport {
        task: cfg.kind.name(),
        cell: cfg.cell.name(),
        length: cfg.length,
        steps: cfg.steps,
        final_loss,
        baseline: cfg.kind.baseline(cfg.length),
        accuracy,
        solved,
        seconds: started.elapsed().as_secs_f64(),
        history,
    };
    Ok((net, params, report))
}
