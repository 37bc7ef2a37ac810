//! A model of your own sequences: standardise each feature → cut the steps into patches →
//! L-layer RNN/LSTM/GRU → features pooled over each sequence's own steps → a linear head (class
//! logits or values). Its file, `seq/1`: safetensors with PyTorch names (`rnn.*` as `nn.LSTM`
//! etc. with `batch_first` irrelevant, `head.weight`/`head.bias` as `nn.Linear(P·H, O)`) and two
//! more tensors, `standardize.mean` and `standardize.std` (F); metadata `bptt.format` = `seq/1`
//! and `spec` (a JSON object: task, cell, hidden_size, num_layers, bidirectional, proj_size, layer_norm, pool,
//! patch, features, classes, target_mean, target_std, outputs, forecast).

use crate::cell::CellKind;
use crate::error::{Error, Result};
use crate::files::{fsio, tensors};
use crate::net::{Head, Input, InputKind, LossKind, Net, NetConfig, Pool};
use crate::seq::{Dataset, Labels};
use std::collections::BTreeMap;
use std::path::Path;

/// The value of the `bptt.format` metadata key of a sequence model file.
pub const FORMAT: &str = "seq/1";
/// Bounds on what a model file may declare, checked before anything is allocated.
const MAX_WIDTH: usize = 1 << 16;
const MAX_LAYERS: usize = 64;
const MAX_CLASSES: usize = 1 << 16;
const MAX_PARAMS: usize = 1 << 31;

/// What a sequence model predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// One class per sequence (softmax cross-entropy).
    Classify,
    /// One real value per sequence (squared error on the standardised target).
    Regress,
    /// One class per step (softmax cross-entropy at every real step).
    Label,
}

impl std::str::FromStr for Task {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "classify" => Ok(Task::Classify),
            "regress" => Ok(Task::Regress),
            "label" => Ok(Task::Label),
            other => Err(Error::Config(format!("task '{other}' is unknown: use classify, regress, label or forecast"))),
        }
    }
}

/// The architecture and preprocessing of a sequence model: plain data, stored in its file.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SeqSpec {
    /// What it predicts.
    pub task: Task,
    /// The recurrent cell.
    #[serde(with = "crate::cell::serde_name")]
    pub cell: CellKind,
    /// H.
    pub hidden_size: usize,
    /// L.
    pub num_layers: usize,
    /// Every layer also reads each sequence backwards (`…_reverse` tensors; absent = false).
    #[serde(default)]
    pub bidirectional: bool,
    /// LSTM: each layer's output projected to this many values (`weight_hr_l{k}`; 0 = none).
    #[serde(default)]
    pub proj_size: usize,
    /// LSTM: the LayerNorm-LSTM (`ln_weight_…`/`ln_bias_…` tensors; absent = false).
    #[serde(default)]
    pub layer_norm: bool,
    /// Zoneout of h and (LSTM) c (`NetConfig::zoneout`; absent = 0).
    #[serde(default)]
    pub zoneout_h: f64,
    /// See `zoneout_h`.
    #[serde(default)]
    pub zoneout_c: f64,
    /// The poolings over time, e.g. `last+mean` (see [`Pool`]).
    pub pool: String,
    /// k: consecutive steps fed as one RNN step of k·F values (1 = one step per step).
    pub patch: usize,
    /// F, values per step of the data.
    pub features: usize,
    /// The class names, in output order (classification), else empty.
    pub classes: Vec<String>,
    /// The training targets' mean and standard deviation (regression: the head predicts the
    /// standardised target), else 0 and 1.
    pub target_mean: f64,
    /// See `target_mean`.
    pub target_std: f64,
    /// Regression: values predicted per sequence (a forecast's horizon).
    #[serde(default = "one")]
    pub outputs: usize,
    /// A forecaster: how it reads a series.
    #[serde(default)]
    pub forecast: Option<crate::seq::forecast::ForecastSpec>,
}

fn one() -> usize {
    1
}

impl SeqSpec {
    /// The poolings.
    pub fn pool(&self) -> Result<Pool> {
        self.pool.parse()
    }

    /// O, the head's outputs: the classes, or the values predicted.
    pub fn outputs(&self) -> usize {
        match self.task {
            Task::Classify | Task::Label => self.classes.len(),
            Task::Regress => self.outputs,
        }
    }

    /// The network this spec describes.
    pub fn net_config(&self) -> Result<NetConfig> {
        Ok(NetConfig {
            cell: self.cell,
            input: InputKind::Dense { size: self.features.saturating_mul(self.patch) },
            hidden: self.hidden_size,
            layers: self.num_layers,
            output: self.outputs(),
            loss: match self.task {
                Task::Classify | Task::Label => LossKind::CrossEntropy,
                Task::Regress => LossKind::Mse,
            },
            // Labelling reads every step; the others one pooled readout per sequence.
            head: if self.task == Task::Label { Head::PerStep } else { Head::Pooled(self.pool()?) },
            bidirectional: self.bidirectional,
            proj_size: self.proj_size,
            layer_norm: self.layer_norm,
            zoneout: crate::net::Zoneout { h: self.zoneout_h, c: self.zoneout_c },
        })
    }

    /// Checks every size against the bounds a model file may declare.
    pub fn validate(&self) -> Result<()> {
        let check = |what: &str, v: usize, max: usize| {
            if v == 0 || v > max {
                Err(Error::Config(format!("{what} must be between 1 and {max}, got {v}")))
            } else {
                Ok(())
            }
        };
        check("hidden size", self.hidden_size, MAX_WIDTH)?;
        check("number of layers", self.num_layers, MAX_LAYERS)?;
        check("features per step", self.features, MAX_WIDTH)?;
        check("patch", self.patch, MAX_WIDTH)?;
        check("patch × features", self.patch * self.features, MAX_WIDTH)?;
        if self.task == Task::Label && self.patch != 1 {
            return Err(Error::Config("labelling reads one label per step: the patch must be 1".into()));
        }
        match self.task {
            Task::Classify | Task::Label if self.classes.len() < 2 => {
                return Err(Error::Config(format!(
                    "classification needs at least 2 classes, the training data has {}",
                    self.classes.len()
                )));
            }
            Task::Classify | Task::Label => check("number of classes", self.classes.len(), MAX_CLASSES)?,
            Task::Regress => {
                check("outputs", self.outputs, MAX_CLASSES)?;
                if !(self.target_mean.is_finite() && self.target_std.is_finite() && self.target_std > 0.0) {
                    return Err(Error::Config("the target's mean and standard deviation must be finite".into()));
                }
            }
        }
        let cfg = self.net_config()?;
        cfg.validate()?;
        let (g, h, i, l) =
            (cfg.cell.gates() as u128, cfg.hidden as u128, cfg.input_width() as u128, cfg.layers as u128);
        // (An upper bound: each direction's tensors, a projection's W_hr, inputs D·H wide.)
        let d = cfg.directions() as u128;
        let n = d * g * h * (i + h + 2)
            + d * (l - 1) * g * h * (d * h + h + 2)
            + d * l * h * h
            + cfg.output as u128 * (cfg.readout_width() as u128 + 1);
        if n > MAX_PARAMS as u128 {
            return Err(Error::Config(format!("a model of {n} parameters is larger than the {MAX_PARAMS} supported")));
        }
        Ok(())
    }
}

/// A sequence model: spec, the training data's per-feature statistics, layout and parameters.
#[derive(Clone, Debug)]
pub struct SeqModel {
    /// The architecture and preprocessing.
    pub spec: SeqSpec,
    /// (F) the training data's per-feature mean and standard deviation (over real steps only).
    pub mean: Vec<f32>,
    /// See `mean`; a constant feature has 1.
    pub std: Vec<f32>,
    /// The network layout.
    pub net: Net,
    /// The parameter slab, laid out by `net`.
    pub params: Vec<f32>,
}

/// Per-feature mean and standard deviation of the real steps of sequences `which` (never
/// padding), in f64; a feature with standard deviation below 1e-8 gets 1.
pub fn feature_stats(data: &Dataset, which: &[usize]) -> (Vec<f32>, Vec<f32>) {
    let f = data.features;
    let (mut sum, mut sq, mut n) = (vec![0.0f64; f], vec![0.0f64; f], 0usize);
    let starts = data.starts();
    for &i in which {
        let seq = &data.values[starts[i]..starts[i] + data.lengths[i] * f];
        for step in seq.chunks_exact(f) {
            for (j, &v) in step.iter().enumerate() {
                sum[j] += v as f64;
            }
            n += 1;
        }
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / n.max(1) as f64).collect();
    for &i in which {
        let seq = &data.values[starts[i]..starts[i] + data.lengths[i] * f];
        for step in seq.chunks_exact(f) {
            for (j, &v) in step.iter().enumerate() {
                sq[j] += (v as f64 - mean[j]).powi(2);
            }
        }
    }
    let std = sq.iter().map(|s| (s / n.max(1) as f64).sqrt()).map(|s| if s < 1e-8 { 1.0 } else { s as f32 }).collect();
    (mean.iter().map(|&m| m as f32).collect(), std)
}

/// p = softmax(z), summed in f64.
fn softmax(z: &[f32], p: &mut [f32]) {
    let max = z.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0f64;
    for (pv, &zv) in p.iter_mut().zip(z) {
        *pv = (zv - max).exp();
        sum += *pv as f64;
    }
    p.iter_mut().for_each(|v| *v = (*v as f64 / sum) as f32);
}

/// A padded, time-major batch of standardised, patched sequences, reused across batches.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// (T, B, k·F) inputs, zero after each sequence's end.
    pub x: Vec<f32>,
    /// (B) lengths in RNN steps, ⌈len/k⌉.
    pub lengths: Vec<usize>,
    /// T, the longest of `lengths`.
    pub steps: usize,
}

impl SeqModel {
    /// A freshly initialised model (PyTorch's default init from `seed`) with the given
    /// per-feature statistics.
    pub fn new(spec: SeqSpec, mean: Vec<f32>, std: Vec<f32>, seed: u64) -> Result<Self> {
        spec.validate()?;
        crate::error::check_len("feature means", spec.features, mean.len())?;
        crate::error::check_len("feature standard deviations", spec.features, std.len())?;
        let net = Net::new(spec.net_config()?)?;
        let params = net.init_params(seed);
        Ok(SeqModel { spec, mean, std, net, params })
    }

    /// RNN steps of a sequence of `len` steps: ⌈len / k⌉.
    pub fn steps_of(&self, len: usize) -> usize {
        len.div_ceil(self.spec.patch)
    }

    /// Checks that `data` has this model's features per step and only classes it knows.
    pub fn check_data(&self, data: &Dataset) -> Result<()> {
        if data.features != self.spec.features {
            return Err(Error::Data(format!(
                "the data has {} values per step but the model was trained on {}: use data of the same kind",
                data.features, self.spec.features
            )));
        }
        Ok(())
    }

    /// Fills `out` with sequences `which` of `data`: each feature standardised with the model's
    /// statistics, k steps per RNN step (the last patch zero-padded), time-major and padded.
    pub fn fill_batch(&self, data: &Dataset, which: &[usize], starts: &[usize], out: &mut Batch) {
        let (f, k, b) = (self.spec.features, self.spec.patch, which.len());
        let width = f * k;
        out.lengths.clear();
        out.lengths.extend(which.iter().map(|&i| self.steps_of(data.lengths[i])));
        out.steps = out.lengths.iter().copied().max().unwrap_or(0);
        out.x.clear();
        out.x.resize(out.steps * b * width, 0.0);
        let inv: Vec<f32> = self.std.iter().map(|s| 1.0 / s).collect();
        for (j, &i) in which.iter().enumerate() {
            let seq = &data.values[starts[i]..starts[i] + data.lengths[i] * f];
            for (s, step) in seq.chunks_exact(f).enumerate() {
                let (t, slot) = (s / k, s % k);
                let dst = &mut out.x[(t * b + j) * width + slot * f..(t * b + j) * width + (slot + 1) * f];
                for (((d, &v), &m), &r) in dst.iter_mut().zip(step).zip(&self.mean).zip(&inv) {
                    *d = (v - m) * r;
                }
            }
        }
    }

    /// The head's outputs for every sequence of `data`, (N, O): class probabilities
    /// (softmax), or predicted values (in the target's units), run `batch` sequences at a time.
    /// Labelling gives a row per step instead, (Σ lengths, O), sequence after sequence.
    pub fn predict(&self, data: &Dataset, batch: usize, threads: usize) -> Result<Vec<f32>> {
        self.check_data(data)?;
        let n = data.len();
        let o = self.spec.outputs();
        let rows = if self.spec.task == Task::Label { data.lengths.iter().sum() } else { n };
        let mut out = vec![0.0f32; rows * o];
        if n == 0 {
            return Ok(out);
        }
        let b = batch.clamp(1, n);
        let max_steps = data.lengths.iter().map(|&l| self.steps_of(l)).max().unwrap_or(1).max(1);
        let starts = data.starts();
        let mut ws = self.net.workspace::<f32>(max_steps, b, threads)?;
        let mut tail =
            if !n.is_multiple_of(b) { Some(self.net.workspace::<f32>(max_steps, n % b, threads)?) } else { None };
        let mut buf = Batch::default();
        // Longest first, so each batch holds sequences of similar lengths and the net skips each
        // step's ended rows (a batch's rows longest first); each output goes to its sequence.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(data.lengths[i]));
        let mut first_row = Vec::with_capacity(if self.spec.task == Task::Label { n } else { 0 });
        if self.spec.task == Task::Label {
            data.lengths.iter().fold(0, |at, &len| {
                first_row.push(at);
                at + len
            });
        }
        for which in order.chunks(b) {
            let ws = match tail.as_mut() {
                Some(t) if which.len() < b => t,
                _ => &mut ws,
            };
            self.fill_batch(data, which, &starts, &mut buf);
            ws.set_lengths(Some(&buf.lengths))?;
            self.net.forward(&self.params, ws, Input::Dense(&buf.x), None, None)?;
            let logits = ws.logits();
            if self.spec.task == Task::Label {
                // (T, B, O) time-major: each sequence's real steps, in order.
                let bb = which.len();
                for (j, (&len, &i)) in buf.lengths.iter().zip(which).enumerate() {
                    for t in 0..len {
                        let z = &logits[(t * bb + j) * o..(t * bb + j + 1) * o];
                        let row = first_row[i] + t;
                        softmax(z, &mut out[row * o..(row + 1) * o]);
                    }
                }
                continue;
            }
            for (z, &i) in logits.chunks_exact(o).zip(which) {
                let dst = &mut out[i * o..(i + 1) * o];
                match self.spec.task {
                    Task::Label => {}
                    Task::Classify => softmax(z, dst),
                    Task::Regress => {
                        let (m, s) = (self.spec.target_mean, self.spec.target_std);
                        for (d, &z) in dst.iter_mut().zip(z) {
                            *d = (z as f64 * s + m) as f32;
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// The class ids this model's classes give the labels of `data` (an unseen class is an error
    /// naming it).
    pub fn class_ids(&self, data: &Dataset) -> Result<Vec<usize>> {
        match &data.labels {
            Labels::Classes { names, ids } | Labels::Steps { names, ids } => {
                let map: Result<Vec<usize>> = names
                    .iter()
                    .map(|n| {
                        self.spec.classes.iter().position(|c| c == n).ok_or_else(|| {
                            Error::Data(format!(
                                "class '{n}' is not one the model was trained on ({}): evaluate on data with the \
                                 training classes",
                                self.spec.classes.join(", ")
                            ))
                        })
                    })
                    .collect();
                // (A declared class no sequence has is no error: only those that occur map.)
                let map = map?;
                Ok(ids.iter().map(|&i| map[i]).collect())
            }
            _ => Err(Error::Data("the data has no class labels".into())),
        }
    }

    /// The model as safetensors bytes, with `extra` tensors and metadata (checkpoints).
    pub fn to_bytes_with(&self, extra: &[(String, Vec<usize>, &[f32])], meta: &[(String, String)]) -> Result<Vec<u8>> {
        let mut t: BTreeMap<String, (Vec<usize>, &[f32])> =
            self.net.params().iter().map(|p| (p.name.clone(), (p.shape.clone(), p.of(&self.params)))).collect();
        t.insert("standardize.mean".into(), (vec![self.spec.features], &self.mean));
        t.insert("standardize.std".into(), (vec![self.spec.features], &self.std));
        t.extend(extra.iter().map(|(n, s, v)| (n.clone(), (s.clone(), *v))));
        let spec = serde_json::to_string(&self.spec).map_err(|e| Error::Config(e.to_string()))?;
        let mut metadata =
            BTreeMap::from([("bptt.format".to_string(), FORMAT.to_string()), ("spec".to_string(), spec)]);
        metadata.extend(meta.iter().cloned());
        Ok(tensors::to_bytes(&t, &metadata))
    }

    /// Saves the model to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        fsio::write_atomic(path, &self.to_bytes_with(&[], &[])?)
    }

    /// Loads a `seq/1` model file; every size is checked before anything is allocated.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = fsio::read_bounded(path, 8 + tensors::MAX_HEADER + 4 * MAX_PARAMS as u64)?;
        Self::from_bytes(&bytes).map_err(|e| e.in_file(path))
    }

    /// Parses model-file bytes (an [`Error::Malformed`] names what is wrong;
    /// [`Error::in_file`] adds the path).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let (model, _) = Self::parse(bytes).map_err(Error::Malformed)?;
        Ok(model)
    }

    /// The model and the file's metadata (checkpoints keep more there).
    pub(crate) fn parse(bytes: &[u8]) -> std::result::Result<(Self, tensors::Parsed<'_>), String> {
        let header = tensors::Header::parse(bytes, FORMAT).map_err(|e| {
            if e.contains("expected 'seq/1'") && e.contains("charlm") {
                format!("{e}: this is a character language model (use bptt sample / eval)")
            } else {
                e
            }
        })?;
        let spec: SeqSpec =
            serde_json::from_str(header.get("spec")?).map_err(|e| format!("metadata 'spec' is unreadable: {e}"))?;
        spec.validate().map_err(|e| format!("metadata 'spec': {e}"))?;
        let net = Net::new(spec.net_config().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        let f = [spec.features];
        let mut expected: Vec<(&str, &[usize])> =
            net.params().iter().map(|p| (p.name.as_str(), &p.shape[..])).collect();
        expected.push(("standardize.mean", &f));
        expected.push(("standardize.std", &f));
        let tensors = header.tensors(bytes, &expected)?;
        let mut params = vec![0.0f32; net.num_params()];
        for p in net.params() {
            p.of_mut(&mut params).copy_from_slice(&tensors::floats(&tensors, &p.name)?);
        }
        let mean = tensors::floats(&tensors, "standardize.mean")?;
        let std = tensors::floats(&tensors, "standardize.std")?;
        if let Some(bad) = std.iter().find(|&&s| s <= 0.0) {
            return Err(format!("tensor 'standardize.std' holds {bad}: standard deviations must be positive"));
        }
        let parsed = tensors::Parsed { tensors, metadata: header.metadata };
        Ok((SeqModel { spec, mean, std, net, params }, parsed))
    }
}
