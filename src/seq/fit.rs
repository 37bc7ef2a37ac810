//! Training a [`SeqModel`] on a [`Dataset`]: epochs of shuffled mini-batches (padded, with each
//! sequence's length, so padding never counts), one loss per sequence (optionally class-weighted),
//! the shared guarded update ([`Updater`]), validation after each epoch with the best model kept
//! and early stopping, and checkpoints that resume bit for bit (the order of every epoch and the
//! dropout of every update come from the seed and their number alone).

use crate::cell::CellKind;
use crate::dist::{GradReducer, Group};
use crate::error::{Error, Result};
use crate::net::{Dropout, Input, Target, Targets, Workspace};
use crate::optim::{LrSchedule, Optimizer, OptimizerConfig};
use crate::seq::model::{Batch, SeqModel, SeqSpec, Task, feature_stats};
use crate::seq::{Dataset, Labels};
use crate::train::{Clip, Updater};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The value of the `bptt.checkpoint` metadata key of a `fit` checkpoint.
pub const CHECKPOINT_FORMAT: &str = "seq-checkpoint/1";

/// Everything that defines a `fit` run (written to `config.json`); see `bptt fit --help` for
/// the defaults and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FitConfig {
    /// classify or regress.
    pub task: Task,
    /// The recurrent cell.
    #[serde(with = "crate::cell::serde_name")]
    pub cell: CellKind,
    /// H.
    pub hidden: usize,
    /// L.
    pub layers: usize,
    /// Every layer also reads each sequence backwards (PyTorch's `bidirectional=True`).
    #[serde(default)]
    pub bidirectional: bool,
    /// LSTM: project each layer's output to this many values, PyTorch's `proj_size` (0 = none).
    #[serde(default)]
    pub proj_size: usize,
    /// LSTM: the LayerNorm-LSTM (Ba et al. 2016; see `NetConfig::layer_norm`).
    #[serde(default)]
    pub layer_norm: bool,
    /// Zoneout of h (every cell) and of c (LSTM), in [0, 1) (Krueger et al. 2016; see
    /// `NetConfig::zoneout`).
    #[serde(default)]
    pub zoneout_h: f64,
    /// See `zoneout_h`.
    #[serde(default)]
    pub zoneout_c: f64,
    /// Poolings over time (`last`, `mean`, `max` joined by `+`).
    pub pool: String,
    /// Steps per RNN step; 0 = chosen from the data ([`FitConfig::auto_patch`]).
    pub patch: usize,
    /// Passes over the training sequences; `None` = chosen from the data
    /// ([`FitConfig::auto_epochs`]). A run's `config.json` records the number it used.
    pub epochs: Option<u64>,
    /// Sequences per update.
    pub batch: usize,
    /// Batches of sequences of similar lengths (Hugging Face's `group_by_length`): each epoch's
    /// shuffled order is cut into groups of 50 batches, each group sorted by length, so a batch
    /// pads little; the batches of a group follow each other. Off: batches drawn at random.
    #[serde(default)]
    pub group_by_length: bool,
    /// `sgd`, `adam`, `adamw`, `rmsprop` or `adagrad`.
    pub optimizer: String,
    /// Peak learning rate.
    pub lr: f64,
    /// Weight decay.
    pub weight_decay: Option<f64>,
    /// `constant`, `step:EVERY:GAMMA`, `exp:GAMMA` or `cosine[:MIN_LR]` over all updates.
    pub lr_schedule: String,
    /// Global-norm clip threshold, 0 = off.
    pub clip_norm: f64,
    /// Dropout on the inputs, between layers and before the head, in [0, 1).
    pub dropout: f64,
    /// Weight each class by n / (C · n_c) (scikit-learn's `class_weight="balanced"`).
    pub balanced: bool,
    /// Fraction of the training sequences held out for validation (stratified by class) when
    /// no validation file is given; 0 = none.
    pub valid_fraction: f64,
    /// Stop after this many epochs without a better validation loss (0 = never).
    pub patience: u64,
    /// Seed of the initialisation, the split, the order of each epoch and the dropout.
    pub seed: u64,
    /// Stop after this many consecutive skipped (non-finite) updates.
    pub max_bad_steps: u32,
    /// A forecaster's windows (the data are then windows of a series, see `seq::forecast`).
    #[serde(default)]
    pub forecast: Option<crate::seq::forecast::ForecastSpec>,
}

impl FitConfig {
    /// `bptt fit`'s defaults for `task`.
    pub fn new(task: Task) -> Self {
        FitConfig {
            task,
            cell: CellKind::Gru,
            hidden: 256,
            layers: 1,
            bidirectional: false,
            proj_size: 0,
            layer_norm: false,
            zoneout_h: 0.0,
            zoneout_c: 0.0,
            pool: "last+mean".into(),
            patch: 0,
            epochs: None,
            batch: 8,
            group_by_length: false,
            optimizer: "adam".into(),
            lr: 3e-3,
            weight_decay: None,
            lr_schedule: "cosine".into(),
            clip_norm: 5.0,
            dropout: 0.3,
            balanced: false,
            valid_fraction: 0.0,
            patience: 0,
            seed: 1,
            max_bad_steps: 10,
            forecast: None,
        }
    }

    /// The patch that makes a series of `max_len` steps of `features` values about 10–30 RNN
    /// steps when it is long: 1 up to 64 steps, else ⌈max_len / 20⌉ (at most 512 values per RNN
    /// step). Reading one value per step, an RNN cannot learn long univariate series.
    pub fn auto_patch(max_len: usize, features: usize) -> usize {
        if max_len <= 64 { 1 } else { max_len.div_ceil(20).min((512 / features.max(1)).max(1)) }
    }

    /// The epochs for `updates_per_epoch` when none are given: 60, or more when the training set
    /// is small, so that a run makes at least 2,000 updates (JapaneseVowels' 270 sequences in
    /// batches of 8 make 2,040 in 60 epochs; GunPoint's 50 need 286 epochs). Small sets need
    /// more passes, not more data per pass: with 60 epochs Trace (100 series) stopped at 72%.
    pub fn auto_epochs(updates_per_epoch: u64) -> u64 {
        2000u64.div_ceil(updates_per_epoch.max(1)).max(60)
    }

    /// Checks every value; the message names the setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.epochs == Some(0) {
            return bad("epochs must be at least 1".into());
        }
        if self.batch == 0 {
            return bad("batch must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("learning rate must be positive, got {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if !(0.0..1.0).contains(&self.valid_fraction) {
            return bad(format!("validation fraction must be in [0, 1), got {}", self.valid_fraction));
        }
        if !(self.clip_norm.is_finite() && self.clip_norm >= 0.0) {
            return bad(format!("clip norm must be 0 (off) or positive, got {}", self.clip_norm));
        }
        if self.balanced && self.task == Task::Regress {
            return bad("class weights apply to classification and labelling only".into());
        }
        self.pool.parse::<crate::net::Pool>()?;
        self.optimizer()?;
        self.schedule(1)?;
        Ok(())
    }

    /// The optimizer this config names.
    pub fn optimizer(&self) -> Result<OptimizerConfig> {
        OptimizerConfig::by_name(&self.optimizer)?.with(None, self.weight_decay)
    }

    /// The learning-rate schedule over `total` updates.
    pub fn schedule(&self, total: u64) -> Result<LrSchedule> {
        LrSchedule::parse(&self.lr_schedule, self.lr, 0, total.max(1))
    }

    /// The dropout of update `step`: its seed from the run's seed and the step alone (and, under
    /// data parallelism, the rank: each rank draws its own sequences' masks).
    fn dropout_at(&self, step: u64, rank: usize) -> Option<Dropout> {
        let seed = (self.seed ^ 0x3c6e_f372_fe94_f82b).wrapping_add(step.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            ^ (rank as u64).wrapping_mul(0xa076_1d64_78bd_642f);
        let zoneout = crate::net::Zoneout { h: self.zoneout_h, c: self.zoneout_c };
        Dropout { p: self.dropout, locked: false, seed }.when_needed(&zoneout)
    }
}

/// Splits sequence indices `0..n` into training and validation: `fraction` of each class (of
/// all, for regression) goes to validation, chosen by a permutation seeded with `seed`; every
/// class keeps at least one training sequence.
pub fn split(data: &Dataset, fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let n = data.len();
    if fraction <= 0.0 {
        return ((0..n).collect(), Vec::new());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x51ed_270b_2721_4f3f);
    let groups: Vec<Vec<usize>> = match &data.labels {
        Labels::Classes { names, ids } => (0..names.len()).map(|c| (0..n).filter(|&i| ids[i] == c).collect()).collect(),
        _ => vec![(0..n).collect()],
    };
    let (mut train, mut valid) = (Vec::new(), Vec::new());
    for mut g in groups {
        g.shuffle(&mut rng);
        let k = ((g.len() as f64 * fraction).round() as usize).min(g.len().saturating_sub(1));
        valid.extend_from_slice(&g[..k]);
        train.extend_from_slice(&g[k..]);
    }
    train.sort_unstable();
    valid.sort_unstable();
    (train, valid)
}

/// Every class of the training labels must occur (an empty one is `unused`, named) and there
/// must be two at least.
fn check_classes(names: &[String], ids: &[usize], task: &str, unused: &str) -> Result<()> {
    if names.len() < 2 {
        return Err(Error::Data(format!("{task} needs at least 2 classes, the training data has {}", names.len())));
    }
    let mut count = vec![0usize; names.len()];
    ids.iter().for_each(|&c| count[c] += 1);
    match count.iter().position(|&k| k == 0) {
        Some(c) => Err(Error::Data(format!("class '{}' {unused}", names[c]))),
        None => Ok(()),
    }
}

/// Rank `rank` of `ranks`' contiguous share of `rows` rows.
fn share(rows: usize, ranks: usize, rank: usize) -> std::ops::Range<usize> {
    rows * rank / ranks..rows * (rank + 1) / ranks
}

/// What one update did (one line of `metrics.jsonl`, less timing).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct FitStep {
    /// Updates done, counting this one.
    pub step: u64,
    /// The epoch this update belongs to (from 0).
    pub epoch: u64,
    /// Sequences trained on so far.
    pub sequences: u64,
    /// Mean loss of this update's sequences.
    pub train_loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Clipping changed the gradient.
    pub clipped: bool,
    /// The gradient was not finite and was not applied.
    pub skipped: bool,
    /// The learning rate used.
    pub lr: f64,
}

/// Loss and quality of a model on labelled data.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Score {
    /// Mean loss per sequence (cross-entropy in nats, or squared error in the target's units²).
    pub loss: f64,
    /// Classification: the fraction of sequences whose most probable class is right.
    pub accuracy: Option<f64>,
    /// Regression: mean absolute error in the target's units.
    pub mae: Option<f64>,
}

/// The targets of a model's task for labelled data: class ids in the model's order, or values.
#[derive(Clone, Debug)]
pub enum Truth {
    /// Class ids (the model's order).
    Classes(Vec<usize>),
    /// Target values.
    Values(Vec<f32>),
}

impl SeqModel {
    /// The labels of `data` for this model's task (errors name an unseen class or a missing
    /// label).
    pub fn truth(&self, data: &Dataset) -> Result<Truth> {
        match (self.spec.task, &data.labels) {
            (Task::Classify, Labels::Classes { .. }) => Ok(Truth::Classes(self.class_ids(data)?)),
            (Task::Regress, Labels::Values(v)) => Ok(Truth::Values(v.clone())),
            (Task::Label, Labels::Steps { .. }) => Ok(Truth::Classes(self.class_ids(data)?)),
            (Task::Label, _) => Err(Error::Data("the model labels steps but the data has no label per step".into())),
            (Task::Classify, _) => Err(Error::Data("the model classifies but the data has no class labels".into())),
            (Task::Regress, _) => Err(Error::Data("the model regresses but the data has no target values".into())),
        }
    }

    /// The loss and accuracy (or MAE) of this model on `data`, from [`SeqModel::predict`].
    pub fn score(&self, data: &Dataset, batch: usize, threads: usize) -> Result<Score> {
        let truth = self.truth(data)?;
        let out = self.predict(data, batch, threads)?;
        Ok(score_of(&truth, &out, self.spec.outputs()))
    }
}

/// Mean loss and accuracy or MAE of predictions `out` (N, O) against `truth`.
pub fn score_of(truth: &Truth, out: &[f32], o: usize) -> Score {
    match truth {
        Truth::Classes(y) => {
            let n = y.len().max(1) as f64;
            let (mut loss, mut right) = (0.0, 0usize);
            for (p, &c) in out.chunks_exact(o).zip(y) {
                loss -= (p[c].max(f32::MIN_POSITIVE) as f64).ln();
                let best = (0..o).fold(0, |b, k| if p[k] > p[b] { k } else { b });
                right += usize::from(best == c);
            }
            Score { loss: loss / n, accuracy: Some(right as f64 / n), mae: None }
        }
        Truth::Values(y) => {
            let n = y.len().max(1) as f64;
            let (se, ae) = out.iter().zip(y).fold((0.0, 0.0), |(s, a), (&p, &t)| {
                let d = (p - t) as f64;
                (s + d * d, a + d.abs())
            });
            Score { loss: se / n, accuracy: None, mae: Some(ae / n) }
        }
    }
}

/// A `fit` run in memory: the model, its training and validation data, and the position.
pub struct Fitter {
    /// The run's settings.
    pub cfg: FitConfig,
    /// The model being trained.
    pub model: SeqModel,
    train: Dataset,
    starts: Vec<usize>,
    valid: Option<Dataset>,
    /// Training targets: class ids (as u32) or standardised values, and per-class weights.
    classes: Vec<u32>,
    values: Vec<f32>,
    class_weights: Vec<f32>,
    /// Labelling: where each training sequence's step labels start in `classes`.
    step_starts: Vec<usize>,
    /// B, sequences per update (the last update of an epoch may have fewer).
    batch: usize,
    /// A workspace for each size of this rank's share of a batch, allocated up front.
    workspaces: Vec<(usize, Workspace<f32>)>,
    grads: Vec<f32>,
    /// The ranks sharing each batch (one without data parallelism) and the gradient average.
    group: Arc<Group>,
    reducer: GradReducer<f32>,
    updater: Updater,
    buf: Batch,
    yb: Vec<u32>,
    vb: Vec<f32>,
    wb: Vec<f32>,
    order: Vec<usize>,
    threads: usize,
    /// Updates done.
    pub step: u64,
    /// Sequences trained on so far.
    pub seen: u64,
    /// Total updates of the run (epochs × updates per epoch).
    pub total: u64,
    /// The current epoch and the next update's index within it.
    pub epoch: u64,
    epoch_update: usize,
    /// Best validation loss so far.
    pub best_val: Option<f64>,
    /// Epochs since the best validation loss.
    pub since_best: u64,
    stopped_early: bool,
}

impl Fitter {
    /// A run at step 0 on `train` (and `valid`, a separate validation set, if given; else
    /// `cfg.valid_fraction` of `train` is held out).
    pub fn new(cfg: FitConfig, train: Dataset, valid: Option<Dataset>, threads: usize) -> Result<Self> {
        Self::new_in(Arc::new(Group::single()), cfg, train, valid, threads)
    }

    /// [`Fitter::new`] as one rank of `group`: every rank holds the same data and model, runs
    /// its contiguous share of each batch and applies the update of the gradient summed over the
    /// ranks with the batch's global normalisation (so the run equals one process's to rounding;
    /// dropout masks differ per rank).
    pub fn new_in(
        group: Arc<Group>,
        cfg: FitConfig,
        train: Dataset,
        valid: Option<Dataset>,
        threads: usize,
    ) -> Result<Self> {
        cfg.validate()?;
        if train.is_empty() {
            return Err(Error::Data("the training data holds no sequences".into()));
        }
        let (train, valid) = match valid {
            Some(v) => (train, Some(v)),
            None if cfg.valid_fraction > 0.0 => {
                let (t, v) = split(&train, cfg.valid_fraction, cfg.seed);
                let valid = (!v.is_empty()).then(|| train.subset(&v));
                (train.subset(&t), valid)
            }
            None => (train, None),
        };
        let (task_ok, classes, target) = match (&train.labels, cfg.task) {
            (Labels::Classes { names, ids }, Task::Classify) => {
                check_classes(
                    names,
                    ids,
                    "classification",
                    "has no training sequence: drop it from the file's @classLabel list or add examples",
                )?;
                (true, names.clone(), (0.0, 1.0))
            }
            (Labels::Steps { names, ids }, Task::Label) => {
                check_classes(names, ids, "labelling", "labels no training step")?;
                (true, names.clone(), (0.0, 1.0))
            }
            (Labels::Values(v), Task::Regress) => {
                if v.len() % train.len() != 0 {
                    return Err(Error::Data(format!(
                        "{} target values for {} sequences: give the same number of targets for each",
                        v.len(),
                        train.len()
                    )));
                }
                let n = v.len().max(1) as f64;
                let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
                let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
                let std = if var.sqrt() < 1e-12 { 1.0 } else { var.sqrt() };
                (true, Vec::new(), (mean, std))
            }
            _ => (false, Vec::new(), (0.0, 1.0)),
        };
        if !task_ok {
            return Err(Error::Data(match cfg.task {
                Task::Classify => "classification needs class labels in the training data (a .ts file with @classLabel true, or a label column)".into(),
                Task::Regress => "regression needs a target value per sequence (a .ts file with @targetLabel true, or a target column)".into(),
                Task::Label => "labelling needs a label per step (a CSV whose label column changes along a sequence)".into(),
            }));
        }
        let max_len = train.max_len().max(valid.as_ref().map_or(0, |v| v.max_len()));
        let patch = match (cfg.task, cfg.patch) {
            (Task::Label, 0) => 1, // a label per step: one step per RNN step
            (_, 0) => FitConfig::auto_patch(max_len, train.features),
            (_, k) => k,
        };
        let spec = SeqSpec {
            task: cfg.task,
            cell: cfg.cell,
            hidden_size: cfg.hidden,
            num_layers: cfg.layers,
            bidirectional: cfg.bidirectional,
            proj_size: cfg.proj_size,
            layer_norm: cfg.layer_norm,
            zoneout_h: cfg.zoneout_h,
            zoneout_c: cfg.zoneout_c,
            pool: cfg.pool.clone(),
            patch,
            features: train.features,
            classes,
            target_mean: target.0,
            target_std: target.1,
            outputs: match &train.labels {
                Labels::Values(v) => (v.len() / train.len()).max(1),
                _ => 1,
            },
            forecast: cfg.forecast,
        };
        let all: Vec<usize> = (0..train.len()).collect();
        let (mean, std) = feature_stats(&train, &all);
        let model = SeqModel::new(spec, mean, std, cfg.seed)?;
        if let Some(v) = &valid {
            model.check_data(v)?;
            model.truth(v)?;
        }
        Self::with_model(group, cfg, model, train, valid, threads)
    }

    /// A run at step 0 training `model` (its spec and statistics kept) on `train`.
    fn with_model(
        group: Arc<Group>,
        mut cfg: FitConfig,
        model: SeqModel,
        train: Dataset,
        valid: Option<Dataset>,
        threads: usize,
    ) -> Result<Self> {
        let n = train.len();
        let b = cfg.batch.min(n);
        let per_epoch = n.div_ceil(b) as u64;
        let epochs = cfg.epochs.unwrap_or_else(|| FitConfig::auto_epochs(per_epoch));
        cfg.epochs = Some(epochs);
        let total = epochs.checked_mul(per_epoch).ok_or_else(|| {
            Error::Config(format!("{epochs} epochs are more updates than can be counted: give fewer"))
        })?;
        let truth = model.truth(&train)?;
        let (classes, values) = match &truth {
            super::fit::Truth::Classes(y) => (y.iter().map(|&c| c as u32).collect(), Vec::new()),
            super::fit::Truth::Values(v) => {
                let (m, s) = (model.spec.target_mean, model.spec.target_std);
                (Vec::new(), v.iter().map(|&x| ((x as f64 - m) / s) as f32).collect())
            }
        };
        let o = model.spec.outputs();
        let class_weights = if cfg.balanced {
            let mut count = vec![0usize; o];
            classes.iter().for_each(|&c: &u32| count[c as usize] += 1);
            // n / (C · n_c) over what carries a label: sequences, or steps when labelling.
            let total = classes.len();
            count.iter().map(|&k| (total as f64 / (o as f64 * k.max(1) as f64)) as f32).collect()
        } else {
            Vec::new()
        };
        let max_steps = train.lengths.iter().map(|&l| model.steps_of(l)).max().unwrap_or(1).max(1);
        // This rank's share of a full batch and of the epoch's last one: a workspace each.
        let (ranks, rank) = (group.size(), group.rank());
        let mut sizes: Vec<usize> = [b, n % b]
            .into_iter()
            .filter(|&rows| rows > 0)
            .map(|rows| share(rows, ranks, rank).len())
            .filter(|&k| k > 0)
            .collect();
        sizes.sort_unstable();
        sizes.dedup();
        let mut workspaces = Vec::with_capacity(sizes.len());
        for k in sizes {
            let mut ws = model.net.workspace::<f32>(max_steps, k, threads)?;
            // Allocate the dropout masks now, not in the training loop.
            ws.set_dropout(cfg.dropout_at(0, rank))?;
            workspaces.push((k, ws));
        }
        let slab = model.params.len();
        let optimizer = Optimizer::new(cfg.optimizer()?, slab)?.with_threads(threads);
        let clip = Clip { max_norm: (cfg.clip_norm > 0.0).then_some(cfg.clip_norm), max_value: None };
        let updater = Updater::new(slab, optimizer, cfg.schedule(total)?, clip, cfg.max_bad_steps, None)?;
        let reducer = group.reducer(slab, 1);
        let mut at = 0;
        let step_starts = train
            .lengths
            .iter()
            .map(|&l| {
                at += l;
                at - l
            })
            .collect();
        let mut f = Fitter {
            starts: train.starts(),
            train,
            valid,
            classes,
            values,
            class_weights,
            step_starts,
            batch: b,
            workspaces,
            grads: vec![0.0; slab],
            group,
            reducer,
            updater,
            buf: Batch::default(),
            yb: Vec::with_capacity(b),
            vb: Vec::with_capacity(b * o),
            wb: Vec::with_capacity(b),
            order: Vec::with_capacity(n),
            threads,
            step: 0,
            seen: 0,
            total,
            epoch: 0,
            epoch_update: 0,
            best_val: None,
            since_best: 0,
            stopped_early: false,
            model,
            cfg,
        };
        f.shuffle();
        Ok(f)
    }

    /// The order of the current epoch: a permutation seeded by the run's seed and the epoch
    /// (with `group_by_length`, each run of 50 batches of it sorted by length), each batch's
    /// sequences longest first — so the net skips each step's ended rows (`live_rows` in
    /// `net/layer/`), as cuDNN's packed sequences do.
    fn shuffle(&mut self) {
        self.order.clear();
        self.order.extend(0..self.train.len());
        let seed = (self.cfg.seed ^ 0x2545_f491_4f6c_dd1d).wrapping_add(self.epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        self.order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let lengths = &self.train.lengths;
        let longest_first = |v: &mut [usize]| v.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        if self.cfg.group_by_length {
            self.order.chunks_mut(50 * self.batch).for_each(longest_first);
        }
        self.order.chunks_mut(self.batch).for_each(longest_first);
    }

    /// Sequences per update (the last update of an epoch may have fewer).
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The ranks sharing the run.
    pub fn group(&self) -> &Group {
        &self.group
    }

    /// Updates in one epoch.
    pub fn updates_per_epoch(&self) -> usize {
        self.train.len().div_ceil(self.batch())
    }

    /// The training and validation sequences.
    pub fn sizes(&self) -> (usize, usize) {
        (self.train.len(), self.valid.as_ref().map_or(0, Dataset::len))
    }

    /// True once every update is done, or early stopping ended the run.
    pub fn done(&self) -> bool {
        self.step >= self.total || self.stopped_early
    }

    /// True if the last update ended an epoch.
    pub fn epoch_ended(&self) -> bool {
        self.epoch_update == 0 && self.step > 0
    }

    /// True if early stopping ended the run.
    pub fn stopped_early(&self) -> bool {
        self.stopped_early
    }

    /// Ok while training is healthy (see [`Updater::health`]).
    pub fn health(&self) -> Result<()> {
        self.updater.health(self.step)
    }

    /// One update: the next batch of the epoch's order (this rank's share of it), forward,
    /// backward, the gradient summed over the ranks, clip, step.
    pub fn step(&mut self) -> Result<FitStep> {
        let b = self.batch;
        let start = self.epoch_update * b;
        let end = (start + b).min(self.train.len());
        let rows = end - start;
        let (ranks, rank) = (self.group.size(), self.group.rank());
        let mine = share(rows, ranks, rank);
        let label = self.model.spec.task == Task::Label;
        let weight = |i: usize| -> f64 {
            let w = |c: u32| if self.class_weights.is_empty() { 1.0 } else { self.class_weights[c as usize] as f64 };
            if self.classes.is_empty() {
                1.0 // regression: every sequence weighs the same
            } else if label {
                let s = self.step_starts[i];
                self.classes[s..s + self.train.lengths[i]].iter().map(|&c| w(c)).sum()
            } else {
                w(self.classes[i])
            }
        };
        let batch = &self.order[start..end];
        let (global_w, local_w): (f64, f64) =
            (batch.iter().map(|&i| weight(i)).sum(), batch[mine.clone()].iter().map(|&i| weight(i)).sum());
        let which = &self.order[start + mine.start..start + mine.end];
        self.yb.clear();
        self.vb.clear();
        self.wb.clear();
        match self.model.spec.task {
            Task::Label => {
                // (T, B) time-major, class 0 on padding (which the lengths leave out).
                let t_max = which.iter().map(|&i| self.train.lengths[i]).max().unwrap_or(0);
                for t in 0..t_max {
                    for &i in which {
                        let c = if t < self.train.lengths[i] { self.classes[self.step_starts[i] + t] } else { 0 };
                        self.yb.push(c);
                    }
                }
            }
            Task::Classify => self.yb.extend(which.iter().map(|&i| self.classes[i])),
            Task::Regress => {
                let o = self.model.spec.outputs;
                self.vb.extend(which.iter().flat_map(|&i| self.values[i * o..(i + 1) * o].iter().copied()));
            }
        }
        if !self.class_weights.is_empty() {
            self.wb.extend(self.yb.iter().map(|&c| self.class_weights[c as usize]));
        }
        self.grads.fill(0.0);
        let dropout = self.cfg.dropout_at(self.step, rank);
        let (model, buf, train, starts) = (&self.model, &mut self.buf, &self.train, &self.starts);
        let (yb, vb, wb) = (&self.yb, &self.vb, &self.wb);
        let ws = self.workspaces.iter_mut().find(|(k, _)| *k == which.len()).map(|(_, ws)| ws);
        let local = self.reducer.reduce(&mut self.grads, |grads| -> Result<f64> {
            let Some(ws) = ws else { return Ok(0.0) }; // an empty share adds nothing
            model.fill_batch(train, which, starts, buf);
            ws.set_lengths(Some(&buf.lengths))?;
            ws.set_dropout(dropout)?;
            let target = if yb.is_empty() { Target::Values(vb) } else { Target::Classes(yb) };
            let targets = Targets { target, mask: (!wb.is_empty()).then_some(&wb[..]) };
            let loss = model.net.forward(&model.params, ws, Input::Dense(&buf.x), Some(targets), None)? as f64;
            model.net.backward(&model.params, ws, grads)?;
            if ranks > 1 {
                // This share's loss is normalised by its own weight; the batch's by all of them.
                // The reduction divides by the rank count.
                let scale = (local_w / global_w * ranks as f64) as f32;
                grads.iter_mut().for_each(|g| *g *= scale);
            }
            Ok(loss)
        })?;
        let loss = if ranks > 1 {
            let mut sum = [local * local_w];
            self.group.sum(&mut sum)?;
            sum[0] / global_w
        } else {
            local
        };
        let (report, lr) = self.updater.apply(self.step, &mut self.model.params, &mut self.grads);
        self.updater.record(loss, report.skipped);
        self.step += 1;
        self.seen += rows as u64;
        self.epoch_update += 1;
        let epoch = self.epoch;
        if self.epoch_update >= self.updates_per_epoch() {
            self.epoch += 1;
            self.epoch_update = 0;
            self.shuffle();
        }
        Ok(FitStep {
            step: self.step,
            epoch,
            sequences: self.seen,
            train_loss: loss,
            grad_norm: report.grad_norm,
            clipped: report.clipped,
            skipped: report.skipped,
            lr,
        })
    }

    /// Scores the model on the validation data (`None` without one); keeps the best loss and
    /// counts the epochs since it for early stopping (call it once per epoch).
    pub fn validate(&mut self) -> Result<Option<Score>> {
        let Some(valid) = &self.valid else { return Ok(None) };
        let s = self.model.score(valid, self.cfg.batch.max(64), self.threads)?;
        if self.best_val.is_none_or(|b| s.loss < b) {
            self.best_val = Some(s.loss);
            self.since_best = 0;
        } else {
            self.since_best += 1;
            if self.cfg.patience > 0 && self.since_best >= self.cfg.patience {
                self.stopped_early = true;
            }
        }
        Ok(Some(s))
    }

    /// The checkpoint file's bytes: the model, the updater's state and the position.
    pub fn checkpoint_bytes(&self) -> Result<Vec<u8>> {
        let (extra, mut meta) = self.updater.checkpoint();
        let config = serde_json::to_string(&self.cfg).map_err(|e| Error::Config(e.to_string()))?;
        meta.extend([
            ("bptt.checkpoint".to_string(), CHECKPOINT_FORMAT.to_string()),
            ("step".to_string(), self.step.to_string()),
            ("seen".to_string(), self.seen.to_string()),
            ("epoch".to_string(), self.epoch.to_string()),
            ("epoch_update".to_string(), self.epoch_update.to_string()),
            ("best_val".to_string(), self.best_val.map_or("none".into(), |v| format!("{v:?}"))),
            ("since_best".to_string(), self.since_best.to_string()),
            ("stopped_early".to_string(), self.stopped_early.to_string()),
            ("config".to_string(), config),
        ]);
        self.model.to_bytes_with(&extra, &meta)
    }

    /// What every rank of a data-parallel run must share, as named hashes for
    /// [`Group::agree`]: each setting, the model's spec, the training and validation data, the
    /// parameters and the step.
    pub fn fingerprint(&self) -> Vec<(String, u64)> {
        use crate::dist::hash_f32;
        let mut f = crate::dist::setting_hashes(&self.cfg);
        f.push(("model".into(), crate::files::fnv1a64(format!("{:?}", self.model.spec).into_bytes())));
        for (name, d) in [("training data", Some(&self.train)), ("validation data", self.valid.as_ref())] {
            let h = d.map_or(0, |d| {
                let shape = crate::files::fnv1a64(d.lengths.iter().flat_map(|&l| (l as u64).to_le_bytes()));
                let labels = crate::files::fnv1a64(format!("{:?}", d.labels).into_bytes());
                hash_f32(&d.values) ^ shape.rotate_left(21) ^ labels.rotate_left(42)
            });
            f.push((name.into(), h));
        }
        f.push(("parameters".into(), hash_f32(&self.model.params)));
        f.push(("step".into(), self.step));
        f
    }

    /// Rebuilds a run from checkpoint bytes and the same data (`valid` as given to
    /// [`Fitter::new`]); `epochs` replaces the total.
    pub fn resume(
        bytes: &[u8],
        train: Dataset,
        valid: Option<Dataset>,
        epochs: Option<u64>,
        threads: usize,
    ) -> Result<Self> {
        Self::resume_in(Arc::new(Group::single()), bytes, train, valid, epochs, threads)
    }

    /// [`Fitter::resume`] as one rank of `group` (a checkpoint holds no per-rank state, so any
    /// rank count may continue it).
    pub fn resume_in(
        group: Arc<Group>,
        bytes: &[u8],
        train: Dataset,
        valid: Option<Dataset>,
        epochs: Option<u64>,
        threads: usize,
    ) -> Result<Self> {
        Self::resume_checked(group, bytes, train, valid, epochs, threads).map_err(Error::Malformed)
    }

    /// [`Self::resume_in`], every problem as a message.
    fn resume_checked(
        group: Arc<Group>,
        bytes: &[u8],
        train: Dataset,
        valid: Option<Dataset>,
        epochs: Option<u64>,
        threads: usize,
    ) -> std::result::Result<Self, String> {
        let (model, file) = SeqModel::parse(bytes)?;
        let meta = |k: &str| file.metadata.get(k).ok_or_else(|| format!("checkpoint metadata '{k}' is missing"));
        if meta("bptt.checkpoint")? != CHECKPOINT_FORMAT {
            return Err(format!("not a {CHECKPOINT_FORMAT} checkpoint"));
        }
        let int = |k: &str| -> std::result::Result<u64, String> {
            meta(k)?.parse().map_err(|_| format!("checkpoint metadata '{k}' is not a whole number"))
        };
        let mut cfg: FitConfig =
            serde_json::from_str(meta("config")?).map_err(|e| format!("checkpoint config is unreadable: {e}"))?;
        if let Some(e) = epochs {
            cfg.epochs = Some(e);
        }
        cfg.validate().map_err(|e| e.to_string())?;
        // The same split of the same data as the run that wrote the checkpoint.
        let (train, valid) = match valid {
            Some(v) => (train, Some(v)),
            None if cfg.valid_fraction > 0.0 => {
                let (t, v) = split(&train, cfg.valid_fraction, cfg.seed);
                let valid = (!v.is_empty()).then(|| train.subset(&v));
                (train.subset(&t), valid)
            }
            None => (train, None),
        };
        model.check_data(&train).map_err(|e| e.to_string())?;
        let mut f = Fitter::with_model(group, cfg, model, train, valid, threads).map_err(|e| e.to_string())?;
        f.updater.restore(&file.tensors, &file.metadata)?;
        (f.step, f.epoch, f.seen) = (int("step")?, int("epoch")?, int("seen")?);
        f.epoch_update = int("epoch_update")? as usize;
        f.since_best = int("since_best")?;
        f.stopped_early = meta("stopped_early")? == "true";
        f.best_val = match meta("best_val")?.as_str() {
            "none" => None,
            v => Some(v.parse().map_err(|_| "checkpoint metadata 'best_val' is not a number".to_string())?),
        };
        if f.epoch_update >= f.updates_per_epoch() {
            return Err("checkpoint position lies beyond the end of the epoch: was the data changed?".into());
        }
        f.shuffle();
        Ok(f)
    }

    /// The memory a run needs beyond its data, in bytes (workspaces, slabs, optimizer state),
    /// computed without allocating.
    pub fn estimate_bytes(cfg: &FitConfig, data: &Dataset) -> Result<u64> {
        let max_len = data.max_len().max(1);
        let patch = if cfg.patch == 0 { FitConfig::auto_patch(max_len, data.features) } else { cfg.patch };
        let classes = match &data.labels {
            Labels::Classes { names, .. } | Labels::Steps { names, .. } => names.len().max(2),
            Labels::Values(v) => (v.len() / data.len().max(1)).max(1),
            Labels::None => 1,
        };
        let net = crate::net::NetConfig {
            cell: cfg.cell,
            input: crate::net::InputKind::Dense { size: data.features.saturating_mul(patch) },
            hidden: cfg.hidden,
            layers: cfg.layers,
            output: classes,
            loss: if cfg.task != Task::Regress {
                crate::net::LossKind::CrossEntropy
            } else {
                crate::net::LossKind::Mse
            },
            head: if cfg.task == Task::Label {
                crate::net::Head::PerStep
            } else {
                crate::net::Head::Pooled(cfg.pool.parse()?)
            },
            bidirectional: cfg.bidirectional,
            proj_size: cfg.proj_size,
            layer_norm: cfg.layer_norm,
            zoneout: crate::net::Zoneout { h: cfg.zoneout_h, c: cfg.zoneout_c },
        };
        let steps = max_len.div_ceil(patch);
        let b = cfg.batch.clamp(1, data.len().max(1)) as u64;
        let ws = Workspace::<f32>::estimate_bytes(&net, steps, b as usize);
        let params = crate::Net::new(net)?.num_params() as u64;
        // Two workspaces (the last batch's), dropout masks (≈ one more), four slabs (params,
        // grads, backup, the updater's) plus the optimizer's buffers, the data copy of a split.
        let slabs = params * 4 * (4 + 2);
        Ok(ws.saturating_mul(3).saturating_add(slabs).saturating_add((data.values.len() * 4) as u64))
    }
}

/// A `fit` run folder's `config.json`: the settings, the data files and their hashes (resuming
/// needs the same data), and the CSV column names used.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FitRun {
    /// The training settings (also stored in every checkpoint).
    pub fit: FitConfig,
    /// The training data.
    pub train: std::path::PathBuf,
    /// FNV-1a 64 of its bytes, as 16 hex digits.
    pub train_fnv1a64: String,
    /// The validation data, if a file was given.
    pub valid: Option<std::path::PathBuf>,
    /// FNV-1a 64 of its bytes.
    pub valid_fnv1a64: Option<String>,
    /// The CSV id column given, if any.
    pub id_column: Option<String>,
    /// The CSV label column given, if any.
    pub label_column: Option<String>,
    /// Write a checkpoint every this many updates besides each epoch's (0 = only those).
    pub checkpoint_every_steps: u64,
    /// A forecaster: the fraction of the series at its end held out (its windows validate).
    #[serde(default)]
    pub forecast_fraction: Option<f64>,
}

impl FitRun {
    /// Parses and checks `config.json`'s bytes (`path` names the file in errors).
    pub fn parse(bytes: &[u8], path: &std::path::Path) -> Result<FitRun> {
        let bad = |msg: String| Error::Format { path: path.display().to_string(), msg };
        let run: FitRun = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("not a bptt fit configuration ({e}): restore it or start a new run")))?;
        run.fit
            .validate()
            .map_err(|e| bad(format!("{e} (in the stored settings: restore the file or start a new run)")))?;
        Ok(run)
    }

    /// The file's text (pretty JSON).
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::Config(e.to_string()))
    }
}
