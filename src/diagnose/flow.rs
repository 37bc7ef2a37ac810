//! Gradient flow through time: ‖∂L_T/∂h_t‖ for every step t and layer, with the loss at the
//! last step only (so the curve is the pure backward signal), averaged over a batch; plus
//! per-parameter gradient norms, σ_max(W_hh) and σ_max of the step Jacobian ∂h_t/∂h_{t−1}.
//!
//! Pascanu et al. (2013): with ‖diag σ'‖ ≤ γ, ‖∂h_t/∂h_{t−1}‖ ≤ γ·σ_max(W_hh), so for a tanh
//! RNN (γ = 1) σ_max(W_hh) < 1 is sufficient for vanishing gradients and > 1 necessary for
//! exploding ones. Gated cells escape the bound: the LSTM's cell state passes through
//! ∂c_t/∂c_{t−1} = diag(f), the GRU's state through diag(z).

use crate::cell::CellKind;
use crate::error::Result;
use crate::net::{Input, Net, NetConfig, State, Workspace};
use crate::tasks::{self, Batch, TaskConfig, TaskKind, spectral_norm};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// What to measure.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowConfig {
    /// Cells to compare.
    pub cells: Vec<CellKind>,
    /// H.
    pub hidden: usize,
    /// L.
    pub layers: usize,
    /// T.
    pub length: usize,
    /// B of the measured batch (norms are averaged over it; training uses the task's B = 32).
    pub batch: usize,
    /// Seed of the initialisation and the data.
    pub seed: u64,
    /// Threads.
    pub threads: usize,
    /// Train on the adding task for this many updates first (0 = measure at initialisation).
    pub train_steps: usize,
    /// Rescale W_hh to this largest singular value at initialisation.
    pub w_hh_scale: Option<f64>,
    /// LSTM forget-gate bias at initialisation (other cells ignore it).
    pub forget_bias: Option<f64>,
    /// Steps t at which to estimate σ_max(∂h_t/∂h_{t−1}) (spread over the sequence).
    pub jacobian_samples: usize,
}

/// The step Jacobian's largest singular value over the sampled steps of one layer.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct JacobianSummary {
    /// Layer.
    pub layer: usize,
    /// The sampled steps t.
    pub steps: Vec<usize>,
    /// σ_max(∂h_t/∂h_{t−1}) at each sampled step (first sequence of the batch).
    pub sigma_max: Vec<f64>,
    /// Geometric mean: the per-step factor by which a gradient can at most grow.
    pub geometric_mean: f64,
}

/// The measurements for one cell.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CellFlow {
    /// The cell.
    pub cell: &'static str,
    /// [layer][t]: mean over the batch of ‖∂L_T/∂h_t‖₂.
    pub dh_norms: Vec<Vec<f64>>,
    /// (name, ‖∂L/∂θ‖₂) per parameter tensor.
    pub param_grad_norms: Vec<(String, f64)>,
    /// ‖∂L/∂θ‖₂ over each layer's four tensors.
    pub layer_grad_norms: Vec<f64>,
    /// σ_max of each layer's W_hh gate blocks (one per gate: i f g o, r z n, or the one).
    pub w_hh_sigma_max: Vec<Vec<f64>>,
    /// The step Jacobian per layer.
    pub jacobian: Vec<JacobianSummary>,
    /// The loss at the last step.
    pub loss: f64,
    /// Updates of adding-task training before measuring.
    pub trained_steps: usize,
}

impl CellFlow {
    /// ‖∂L_T/∂h_0‖ / ‖∂L_T/∂h_{T−1}‖ for the first layer: how much of the signal survives.
    pub fn survival(&self) -> f64 {
        let n = &self.dh_norms[0];
        n[0] / n[n.len() - 1]
    }
}

/// Measures every cell of `cfg` on the same adding-task batch.
pub fn gradient_flow(cfg: &FlowConfig, mut progress: impl FnMut(&str)) -> Result<Vec<CellFlow>> {
    let mut out = Vec::with_capacity(cfg.cells.len());
    for &cell in &cfg.cells {
        progress(cell.name());
        let (net, params32) = tasks::trained(&cfg.task(cell))?;
        let params: Vec<f64> = params32.iter().map(|&v| v as f64).collect();
        out.push(measure(&net, &params, cell, cfg, cfg.train_steps)?);
    }
    Ok(out)
}

impl FlowConfig {
    /// The adding-task run that trains the network of `cell` before it is measured.
    fn task(&self, cell: CellKind) -> TaskConfig {
        TaskConfig {
            hidden: self.hidden,
            layers: self.layers,
            steps: self.train_steps,
            seed: self.seed,
            threads: self.threads,
            w_hh_scale: self.w_hh_scale,
            forget_bias: self.forget_bias.filter(|_| cell == CellKind::Lstm),
            ..TaskConfig::new(TaskKind::Adding, cell, self.length)
        }
    }

    /// The bytes measuring a network of shape `net` holds, computed without allocating: the
    /// f64 workspace for T × B with its weights, gradients and batch, and a one-step workspace.
    pub fn measure_bytes(&self, net: &NetConfig) -> u64 {
        let params = Net::new(*net).map_or(u64::MAX as u128, |n| n.num_params() as u128);
        let positions = (self.length * self.batch) as u128;
        let total = Workspace::<f64>::estimate_bytes(net, self.length, self.batch) as u128
            + Workspace::<f64>::estimate_bytes(net, 1, 1) as u128
            + params * 3 * 8
            + positions * (net.input_width() as u128 + 4) * 8;
        u64::try_from(total).unwrap_or(u64::MAX)
    }

    /// The bytes [`gradient_flow`] holds at most: one cell's training run and its measurement.
    pub fn estimate_bytes(&self) -> u64 {
        let one = |&cell: &CellKind| {
            let task = self.task(cell);
            let net = task.kind.net_config(cell, self.hidden, self.layers);
            task.estimate_bytes().saturating_add(self.measure_bytes(&net))
        };
        self.cells.iter().map(one).max().unwrap_or(0)
    }
}

/// The measurements of one network (f64) on a fresh adding batch.
pub fn measure(net: &Net, params: &[f64], cell: CellKind, cfg: &FlowConfig, trained_steps: usize) -> Result<CellFlow> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xf10e);
    let batch = Batch::<f64>::generate(TaskKind::Adding, cfg.length, cfg.batch, &mut rng);
    measure_on(net, params, cell, cfg, trained_steps, Input::Dense(&batch.x), batch.targets())
}

/// The measurements of a char model (f64) on `cfg.batch` windows of `cfg.length` characters
/// spread evenly over `ids`, the loss on the last character of each window only.
pub fn measure_text(
    model: &crate::charlm::CharModel,
    ids: &crate::charlm::data::TokenIds,
    cfg: &FlowConfig,
) -> Result<CellFlow> {
    let (t, b) = (cfg.length, cfg.batch);
    if ids.len() < t + 2 {
        return Err(crate::Error::Data(format!("the text needs more than {} characters for windows of {t}", t + 1)));
    }
    let (mut x, mut y, mut mask) = (vec![0u32; t * b], vec![0u32; t * b], vec![0.0f64; t * b]);
    for j in 0..b {
        let start = j * (ids.len() - t - 1) / b.max(1);
        for s in 0..t {
            x[s * b + j] = ids.get(start + s);
            y[s * b + j] = ids.get(start + s + 1);
        }
        mask[(t - 1) * b + j] = 1.0;
    }
    let params: Vec<f64> = model.params.iter().map(|&v| v as f64).collect();
    let targets = crate::net::Targets::classes(&y).with_mask(&mask);
    measure_on(&model.net, &params, model.spec.cell, cfg, 0, Input::Tokens(&x), targets)
}

/// The measurements of a sequence model (f64) on its own data: up to `cfg.batch` sequences of
/// the most common length (in RNN steps, after patching), so every sequence runs every step; the
/// loss is the model's own per-sequence loss on their labels. Returns the flow and that length.
pub fn measure_seq(
    model: &crate::seq::SeqModel,
    data: &crate::seq::Dataset,
    cfg: &FlowConfig,
) -> Result<(CellFlow, usize)> {
    use crate::seq::fit::Truth;
    if model.spec.bidirectional {
        return Err(crate::Error::Config(
            "diagnose measures the flow through time of one direction; this model is bidirectional \
             (its reverse direction runs from each sequence's end): refit without `bidirectional` to measure it"
                .into(),
        ));
    }
    model.check_data(data)?;
    let truth = model.truth(data)?;
    let steps: Vec<usize> = data.lengths.iter().map(|&l| model.steps_of(l)).collect();
    let mut counts = std::collections::BTreeMap::new();
    steps.iter().for_each(|&t| *counts.entry(t).or_insert(0usize) += 1);
    // The most common length; among equals, the longest.
    let (&t, _) =
        counts.iter().max_by_key(|&(&t, &c)| (c, t)).ok_or_else(|| crate::Error::Data("no sequences".into()))?;
    if t < 2 {
        return Err(crate::Error::Data(
            "the sequences are 1 RNN step long: there is no flow through time to measure".into(),
        ));
    }
    let which: Vec<usize> = (0..data.len()).filter(|&i| steps[i] == t).take(cfg.batch.max(1)).collect();
    let mut batch = crate::seq::model::Batch::default();
    model.fill_batch(data, &which, &data.starts(), &mut batch);
    let x: Vec<f64> = batch.x.iter().map(|&v| v as f64).collect();
    let o = model.spec.outputs();
    let (classes, values): (Vec<u32>, Vec<f64>) = match &truth {
        Truth::Classes(y) => (which.iter().map(|&i| y[i] as u32).collect(), Vec::new()),
        Truth::Values(v) => {
            let (m, s) = (model.spec.target_mean, model.spec.target_std);
            (
                Vec::new(),
                which.iter().flat_map(|&i| v[i * o..(i + 1) * o].iter().map(move |&y| (y as f64 - m) / s)).collect(),
            )
        }
    };
    let targets =
        if classes.is_empty() { crate::net::Targets::values(&values) } else { crate::net::Targets::classes(&classes) };
    let params: Vec<f64> = model.params.iter().map(|&v| v as f64).collect();
    let cfg = FlowConfig {
        hidden: model.spec.hidden_size,
        layers: model.spec.num_layers,
        length: t,
        batch: which.len(),
        ..cfg.clone()
    };
    let flow = measure_on(&model.net, &params, model.spec.cell, &cfg, 0, Input::Dense(&x), targets)?;
    Ok((flow, t))
}

/// The measurements of `net` on one batch (T = `cfg.length`, B = `cfg.batch`).
fn measure_on(
    net: &Net,
    params: &[f64],
    cell: CellKind,
    cfg: &FlowConfig,
    trained_steps: usize,
    input: Input<'_, f64>,
    targets: crate::net::Targets<'_, f64>,
) -> Result<CellFlow> {
    let (t, b, h, l) = (cfg.length, cfg.batch, cfg.hidden, cfg.layers);
    let mut ws = net.workspace::<f64>(t, b, cfg.threads)?;
    ws.set_record_dh_norms(true);
    let loss = net.forward(params, &mut ws, input, Some(targets), None)?;
    let mut grads = vec![0.0; net.num_params()];
    net.backward(params, &mut ws, &mut grads)?;
    let dh_norms: Vec<Vec<f64>> = (0..l).map(|k| ws.dh_norms(k).to_vec()).collect();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let param_grad_norms: Vec<(String, f64)> =
        net.params().iter().map(|p| (p.name.clone(), norm(p.of(&grads)))).collect();
    let layer_grad_norms = (0..l)
        .map(|k| {
            let suffix = format!("_l{k}");
            param_grad_norms.iter().filter(|(n, _)| n.ends_with(&suffix)).map(|(_, g)| g * g).sum::<f64>().sqrt()
        })
        .collect();
    let g = cell.gates();
    let w_hh_sigma_max = (0..l)
        .map(|k| {
            let w = net.param(&format!("rnn.weight_hh_l{k}")).map_or(&[][..], |p| p.of(params));
            w.chunks(h * h).take(g).map(|block| spectral_norm(block, h, h)).collect()
        })
        .collect();

    // Step Jacobians by central differences on the first sequence, one layer at a time.
    let samples = cfg.jacobian_samples.clamp(1, t);
    let steps: Vec<usize> = (0..samples).map(|k| 1 + k * (t - 1) / samples.max(1)).collect();
    let mut one = net.workspace::<f64>(1, 1, 1)?;
    let mut states = State { h: Vec::new(), c: Vec::new() };
    let bh = b * h;
    let mut jacobian = Vec::with_capacity(l);
    for layer in 0..l {
        let mut sigma = Vec::with_capacity(samples);
        for &s in &steps {
            ws.state_at(s, &mut states);
            let mut start = State::zeros(net.config(), 1);
            for k in 0..l {
                start.h[k * h..(k + 1) * h].copy_from_slice(&states.h[k * bh..k * bh + h]);
                if !start.c.is_empty() {
                    start.c[k * h..(k + 1) * h].copy_from_slice(&states.c[k * bh..k * bh + h]);
                }
            }
            // The input of step s for the first sequence of the batch.
            let x = match input {
                Input::Dense(x) => {
                    let w = x.len() / (t * b);
                    Input::Dense(&x[s * b * w..s * b * w + w])
                }
                Input::Tokens(ids) => Input::Tokens(&ids[s * b..s * b + 1]),
            };
            let mut jac = vec![0.0; h * h];
            let eps = 1e-6;
            for col in 0..h {
                let mut probe = |d: f64| -> Result<Vec<f64>> {
                    let mut st = start.clone();
                    st.h[layer * h + col] += d;
                    net.forward(params, &mut one, x, None, Some(&st))?;
                    Ok(one.hidden_states(layer).to_vec())
                };
                let (plus, minus) = (probe(eps)?, probe(-eps)?);
                for row in 0..h {
                    jac[row * h + col] = (plus[row] - minus[row]) / (2.0 * eps);
                }
            }
            sigma.push(spectral_norm(&jac, h, h));
        }
        let geometric_mean = (sigma.iter().map(|s| s.max(1e-300).ln()).sum::<f64>() / sigma.len() as f64).exp();
        jacobian.push(JacobianSummary { layer, steps: steps.clone(), sigma_max: sigma, geometric_mean });
    }
    Ok(CellFlow {
        cell: cell.name(),
        dh_norms,
        param_grad_norms,
        layer_grad_norms,
        w_hh_sigma_max,
        jacobian,
        loss,
        trained_steps,
    })
}
