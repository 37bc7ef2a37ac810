//! The char-LM training loop: TBPTT over B contiguous streams (see `data`) — or, `online`, one
//! stream learnt while it streams, an update after every character by a forward-mode gradient
//! (`crate::online`) — the scheduled, clipped, guarded update, validation, and checkpoints that
//! resume bit for bit.

use crate::charlm::data::{Split, Streams, TokenIds};
use crate::charlm::model::{CharModel, Eval, ModelFile};
use crate::dist::{GradReducer, Group};
use crate::error::{Error, Result};
use crate::net::{Input, State, Target, Targets, WeightDrop};
use crate::online::{Learner, Method};
use crate::optim::{LrSchedule, Optimizer, OptimizerConfig};
use crate::train::{Clip, Tbptt, Updater};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The value of the `bptt.checkpoint` metadata key of a checkpoint file.
pub const CHECKPOINT_FORMAT: &str = "charlm-checkpoint/1";

/// Everything that defines a training run (written to `config.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The architecture.
    pub model: crate::charlm::ModelSpec,
    /// k2: steps back-propagated through (the window); `--seq-len`.
    pub seq_len: usize,
    /// k1: new steps per update (= seq_len unless `--tbptt K1:K2`).
    pub k1: usize,
    /// B, the number of contiguous streams.
    pub batch: usize,
    /// `sgd`, `adam`, `adamw`, `rmsprop` or `adagrad`.
    pub optimizer: String,
    /// Peak learning rate.
    pub lr: f64,
    /// Momentum (sgd, rmsprop).
    pub momentum: Option<f64>,
    /// Weight decay.
    pub weight_decay: Option<f64>,
    /// `constant`, `step:EVERY:GAMMA`, `exp:GAMMA` or `cosine[:MIN_LR]`.
    pub lr_schedule: String,
    /// Linear warm-up updates.
    pub warmup: u64,
    /// Global-norm clip threshold, 0 = off.
    pub clip_norm: f64,
    /// Per-element clip threshold.
    pub clip_value: Option<f64>,
    /// Total updates of the run.
    pub steps: u64,
    /// Fraction of the text (at its end) held out for validation.
    pub val_fraction: f64,
    /// Seed of the initialisation and of sampling.
    pub seed: u64,
    /// Stop after this many consecutive skipped (non-finite) updates.
    pub max_bad_steps: u32,
    /// Stop if the training loss exceeds this factor times the first one (char-rnn's guard).
    pub abort_loss_factor: Option<f64>,
    /// Memory-efficient BPTT: keep the state every this many steps of a window and recompute
    /// the segments in the backward pass (0 = plain BPTT); `--checkpoint-every`.
    #[serde(default)]
    pub checkpoint_every: usize,
    /// The horizon of a cosine schedule when it differs from `steps`: a run whose total changes on
    /// resume keeps its original horizon, so its learning rate does not jump back up; after the
    /// horizon it stays at the minimum. `None`: `steps`. (Other schedules have no horizon.)
    #[serde(default)]
    pub schedule_steps: Option<u64>,
    /// Dropout on the non-recurrent connections — the embedding output, between layers, before
    /// the readout — in [0, 1), 0 = none (`--dropout`, or `--locked-dropout`).
    #[serde(default)]
    pub dropout: f64,
    /// One dropout mask per stream and unit for a whole update (variational) instead of one
    /// per step.
    #[serde(default)]
    pub locked_dropout: bool,
    /// DropConnect on every W_hh, one mask per update (AWD-LSTM's weight drop), in [0, 1);
    /// `--weight-drop`.
    #[serde(default)]
    pub weight_drop: f64,
    /// Learn online (`--online`): `snap` (SnAp-1), `uoro` or `rtrl` (exact; small models only).
    /// One stream (B = 1), no stored window: the weights are updated after every character by
    /// the method's gradient, carried forward in time. A run step is then `seq_len` characters
    /// (that many updates). `None`: truncated BPTT.
    #[serde(default)]
    pub online: Option<String>,
    /// The precision of the training passes' products (`--precision`): f32, or bf16 operands
    /// with f32 accumulation where the CPU has AVX512-BF16 (f32 elsewhere). Validation, the
    /// weights and the optimizer stay f32.
    #[serde(default)]
    pub precision: crate::kernels::Precision,
}

impl TrainConfig {
    /// `bptt train`'s defaults for `model`: T = 100, B = 32, Adam at 2e-3, constant rate,
    /// clip-norm 5, 10% validation, seed 1337, 1 update.
    pub fn new(model: crate::charlm::ModelSpec) -> Self {
        TrainConfig {
            model,
            seq_len: 100,
            k1: 100,
            batch: 32,
            optimizer: "adam".into(),
            lr: 2e-3,
            momentum: None,
            weight_decay: None,
            lr_schedule: "constant".into(),
            warmup: 0,
            clip_norm: 5.0,
            clip_value: None,
            steps: 1,
            val_fraction: 0.1,
            seed: 1337,
            max_bad_steps: 10,
            abort_loss_factor: None,
            checkpoint_every: 0,
            schedule_steps: None,
            dropout: 0.0,
            locked_dropout: false,
            weight_drop: 0.0,
            online: None,
            precision: crate::kernels::Precision::F32,
        }
    }

    /// The forward-mode method of an online run (`None` for TBPTT); UORO's signs from the seed.
    pub fn online_method(&self) -> Result<Option<Method>> {
        Ok(match self.online.as_deref() {
            None => None,
            Some("snap") => Some(Method::Snap1),
            Some("rtrl") => Some(Method::Rtrl),
            Some("uoro") => Some(Method::Uoro { seed: self.seed ^ 0x0e0_5eed }),
            Some(other) => {
                return Err(Error::Config(format!("`online` takes snap, uoro or rtrl, got '{other}'")));
            }
        })
    }

    /// The dropout of update `step`: masks seeded by the run's seed and the step alone, so a
    /// resumed run draws the same masks as an uninterrupted one.
    /// Under data parallelism each rank draws its own streams' masks (`rank` salts the seed).
    fn dropout_at(&self, step: u64, rank: usize) -> Option<crate::net::Dropout> {
        let seed = self.mask_seed(0xd2b7_4407_b1ce_6e93, step) ^ (rank as u64).wrapping_mul(0xa076_1d64_78bd_642f);
        let d = crate::net::Dropout { p: self.dropout, locked: self.locked_dropout, seed };
        d.when_needed(&self.model.zoneout)
    }

    /// The weight drop of update `step`, seeded like [`TrainConfig::dropout_at`] (the same on
    /// every rank: the weights are shared).
    fn weight_drop_at(&self, step: u64) -> Option<WeightDrop> {
        (self.weight_drop > 0.0)
            .then_some(WeightDrop { p: self.weight_drop, seed: self.mask_seed(0x7c3a_91d4_e0f2_5b68, step) })
    }

    /// The seed of one kind (`salt`) of mask at update `step`: the run's seed and the step alone.
    fn mask_seed(&self, salt: u64, step: u64) -> u64 {
        (self.seed ^ salt).wrapping_add(step.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    /// The optimizer this config names, with its momentum and weight decay.
    pub fn optimizer(&self) -> Result<OptimizerConfig> {
        OptimizerConfig::by_name(&self.optimizer)?.with(self.momentum, self.weight_decay)
    }

    /// The learning-rate schedule over `steps` updates.
    pub fn schedule(&self) -> Result<LrSchedule> {
        let total = self.schedule_steps.unwrap_or(self.steps);
        LrSchedule::parse(&self.lr_schedule, self.lr, self.warmup, total).map_err(|e| match e {
            Error::Config(m) if m.starts_with("learning-rate schedule") => Error::Config(format!("`lr_schedule`: {m}")),
            e => e,
        })
    }

    /// The clipping settings.
    pub fn clip(&self) -> Result<Clip> {
        if !(self.clip_norm.is_finite() && self.clip_norm >= 0.0) {
            return Err(Error::Config(format!("`clip_norm` must be >= 0 (0 = off), got {}", self.clip_norm)));
        }
        let clip = Clip { max_norm: (self.clip_norm > 0.0).then_some(self.clip_norm), max_value: self.clip_value };
        clip.validate()?;
        Ok(clip)
    }

    /// The bytes a [`Trainer`] for this run holds besides the text's ids, computed without
    /// allocating: the weights, gradients, undo copy and optimizer buffers, the checkpoint file
    /// image built while saving (weights and buffers again), the TBPTT window and its
    /// activations, and the validation workspace.
    pub fn estimate_bytes(&self, vocab: usize) -> Result<u64> {
        let net = self.model.net_config(vocab);
        let params = crate::net::Net::new(net)?.num_params() as u128;
        let buffers = self.optimizer()?.buffer_names().len() as u128;
        // Weight drop: a dropped copy of the weights and the W_hh mask.
        let dropped = if self.weight_drop > 0.0 { params * 2 } else { 0 };
        let slabs = (params * (3 + buffers + 1 + buffers) + dropped) * 4;
        let step = (self.k1 * self.batch) as u128 * 8;
        // A checkpoint segment never holds more steps than the window.
        let every = self.checkpoint_every.min(self.seq_len);
        let window = Tbptt::<f32>::estimate_bytes(&net, self.seq_len, self.batch, every) as u128;
        let chunk = if every > 0 { every } else { self.seq_len };
        let masks = if self.dropout > 0.0 {
            let window = chunk;
            let tb = (window * self.batch) as u128;
            (2 * net.layers as u128 * tb * net.hidden as u128 + tb * net.input_width() as u128) * 4
        } else {
            0
        };
        let online = match self.online_method()? {
            Some(m) => Learner::<f32>::estimate_bytes(&crate::net::Net::new(net)?, m) as u128,
            None => 0,
        };
        let validation = if self.val_fraction > 0.0 {
            crate::net::Workspace::<f32>::estimate_bytes(&net, chunk, self.batch) as u128
                + (chunk * self.batch) as u128 * 8
        } else {
            0
        };
        let bf16 = match self.precision {
            crate::kernels::Precision::Bf16 => {
                crate::net::Workspace::<f32>::estimate_bf16_bytes(&net, chunk, self.batch)
            }
            crate::kernels::Precision::F32 => 0,
        } as u128;
        Ok(u64::try_from(slabs + step + window + masks + validation + online + bf16).unwrap_or(u64::MAX))
    }

    /// Updates per epoch on a text of `n` characters (after the validation split).
    pub fn updates_per_epoch(&self, n: usize) -> Result<usize> {
        let n_train = n - (n as f64 * self.val_fraction.clamp(0.0, 1.0)) as usize;
        Ok(Streams::new(n_train, self.batch, self.k1)?.updates_per_epoch())
    }

    /// Checks every setting, so a run fails before it starts rather than midway.
    pub fn validate(&self) -> Result<()> {
        if self.batch == 0 || self.seq_len == 0 || self.k1 == 0 {
            return Err(Error::Config("`batch`, `seq_len` and k1 must be at least 1".into()));
        }
        if self.k1 > self.seq_len {
            return Err(Error::Config(format!("`tbptt` K1:K2 needs K1 <= K2, got {}:{}", self.k1, self.seq_len)));
        }
        if self.steps == 0 {
            return Err(Error::Config("`steps` must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&self.val_fraction) {
            return Err(Error::Config(format!("`val_fraction` must be in [0, 1), got {}", self.val_fraction)));
        }
        if let Some(f) = self.abort_loss_factor
            && !(f.is_finite() && f > 1.0)
        {
            return Err(Error::Config(format!("`abort_loss_factor` must be > 1, got {f}")));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Config(format!("`dropout` must be in [0, 1), got {}", self.dropout)));
        }
        if !(0.0..1.0).contains(&self.weight_drop) {
            return Err(Error::Config(format!("`weight_drop` must be in [0, 1), got {}", self.weight_drop)));
        }
        self.optimizer()?;
        self.schedule()?;
        self.clip()?;
        if self.online_method()?.is_some() {
            self.validate_online()?;
        }
        Ok(())
    }

    /// An online run learns one stream of plain cells, step by step.
    fn validate_online(&self) -> Result<()> {
        let refuse = |what: &str| Err(Error::Config(format!("online learning (`online`) {what}")));
        if self.batch != 1 {
            return refuse(&format!("learns one stream: give batch 1, not {}", self.batch));
        }
        if self.k1 != self.seq_len {
            return refuse("updates after every character: it has no K1:K2 window (`tbptt`)");
        }
        if self.checkpoint_every > 0 {
            return refuse("stores no window to checkpoint: drop `checkpoint_every`");
        }
        if self.dropout > 0.0 || self.weight_drop > 0.0 {
            return refuse("has no dropout or weight drop yet: drop `dropout` and `weight_drop`");
        }
        if self.model.layer_norm || !self.model.zoneout.is_none() {
            return refuse("runs plain cells: no `layer_norm` or zoneout");
        }
        Ok(())
    }
}

/// What one update did (one line of `metrics.jsonl`, less timing).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct StepMetrics {
    /// Updates done, counting this one.
    pub step: u64,
    /// The epoch this update belongs to (from 0).
    pub epoch: u64,
    /// Training characters predicted so far.
    pub tokens: u64,
    /// Mean cross-entropy of this update's new steps.
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

/// A training run in memory: model, optimizer, TBPTT driver and data position.
pub struct Trainer {
    /// The run's settings.
    pub cfg: TrainConfig,
    /// The model being trained.
    pub model: CharModel,
    grads: Vec<f32>,
    /// Weight drop: the parameters with each W_hh masked, and the mask (empty without).
    dropped: Vec<f32>,
    w_hh_mask: Vec<f32>,
    /// Schedule, clipping, the guarded optimizer step and the health counters.
    updater: Updater,
    tbptt: Tbptt<f32>,
    split: Split,
    streams: Streams,
    /// (k1, B/N) inputs and targets of this rank's streams in the current update.
    x: Vec<u32>,
    y: Vec<u32>,
    /// (k1, B) inputs and targets of every stream (data parallel only).
    x_all: Vec<u32>,
    y_all: Vec<u32>,
    threads: usize,
    /// The ranks sharing the batch (one without data parallelism) and the gradient average.
    group: Arc<Group>,
    reducer: GradReducer<f32>,
    /// Updates done.
    pub step: u64,
    /// Current epoch and the next update's index within it.
    pub epoch: u64,
    epoch_update: usize,
    /// Training characters predicted so far.
    pub tokens: u64,
    /// Best validation loss so far.
    pub best_val: Option<f64>,
    /// An online run's learner (its stream's state and influence).
    online: Option<Learner<f32>>,
}

impl Trainer {
    /// A run at step 0 training `model` on the text `ids` (already encoded with its vocab).
    pub fn new(cfg: TrainConfig, model: CharModel, ids: TokenIds, threads: usize) -> Result<Self> {
        Self::new_in(Arc::new(Group::single()), cfg, model, ids, threads)
    }

    /// [`Trainer::new`] as one rank of `group`: every rank builds the same model and streams,
    /// trains its contiguous share of the B streams (B/N each; N must divide B) and applies the
    /// update of the gradient averaged over the ranks.
    pub fn new_in(
        group: Arc<Group>,
        cfg: TrainConfig,
        model: CharModel,
        ids: TokenIds,
        threads: usize,
    ) -> Result<Self> {
        cfg.validate()?;
        let ranks = group.size();
        if !cfg.batch.is_multiple_of(ranks) {
            return Err(Error::Config(format!(
                "`batch` {} cannot be shared by {ranks} ranks: give a `batch` that is a multiple of {ranks} (it is the \
                 global batch) or another mpirun -np",
                cfg.batch
            )));
        }
        let local = cfg.batch / ranks;
        let online = match cfg.online_method()? {
            Some(_) if ranks > 1 => {
                return Err(Error::Config(
                    "online learning (`online`) learns one stream in one process: run it without mpirun".into(),
                ));
            }
            Some(method) => {
                // About a second per character on one core: a run that would seem to hang.
                let flops = Learner::<f32>::flops_per_step(&model.net, method);
                if flops > 5e9 {
                    return Err(Error::Config(format!(
                        "online `{}` costs about {:.0} GFLOP per character for this model ({} parameters): use \
                         online `snap`, or a smaller model (hidden 32 or less)",
                        cfg.online.as_deref().unwrap_or(""),
                        flops / 1e9,
                        model.params.len()
                    )));
                }
                let mut learner = Learner::new(&model.net, method)?;
                learner.reset(&model.net, None);
                Some(learner)
            }
            None => None,
        };
        let split = Split::new(ids, cfg.val_fraction)?;
        let streams = Streams::new(split.train.len(), cfg.batch, cfg.k1)?;
        let optimizer = Optimizer::new(cfg.optimizer()?, model.params.len())?.with_threads(threads);
        let mut tbptt = Tbptt::with_checkpoints(&model.net, cfg.k1, cfg.seq_len, local, threads, cfg.checkpoint_every)?;
        // Allocates the masks now, not in the training loop.
        tbptt.set_dropout(cfg.dropout_at(0, group.rank()))?;
        tbptt.set_precision(cfg.precision);
        // One bucket per layer and one for the readout.
        let reducer = group.reducer(model.params.len(), cfg.model.layers + 1);
        tbptt.workspace_mut().set_grad_ready(reducer.hook());
        let all = if ranks > 1 { cfg.k1 * cfg.batch } else { 0 };
        let n = cfg.k1 * local;
        let updater = Updater::new(
            model.params.len(),
            optimizer,
            cfg.schedule()?,
            cfg.clip()?,
            cfg.max_bad_steps,
            cfg.abort_loss_factor,
        )?;
        Ok(Trainer {
            grads: vec![0.0; model.params.len()],
            dropped: if cfg.weight_drop > 0.0 { vec![0.0; model.params.len()] } else { Vec::new() },
            w_hh_mask: if cfg.weight_drop > 0.0 { vec![0.0; WeightDrop::mask_len(&model.net)] } else { Vec::new() },
            updater,
            tbptt,
            split,
            streams,
            x: vec![0; n],
            y: vec![0; n],
            x_all: vec![0; all],
            y_all: vec![0; all],
            threads,
            group,
            reducer,
            step: 0,
            epoch: 0,
            epoch_update: 0,
            tokens: 0,
            best_val: None,
            online,
            cfg,
            model,
        })
    }

    /// This rank's (k1, B/N) inputs and targets of update `u` of the epoch into `x`, `y`.
    fn chunk(&mut self, u: usize) {
        if self.group.size() == 1 {
            self.streams.chunk(&self.split.train, u, &mut self.x, &mut self.y);
            return;
        }
        self.streams.chunk(&self.split.train, u, &mut self.x_all, &mut self.y_all);
        let (b, local) = (self.cfg.batch, self.cfg.batch / self.group.size());
        let first = self.group.rank() * local;
        for (src, dst) in [(&self.x_all, &mut self.x), (&self.y_all, &mut self.y)] {
            for (row, out) in src.chunks_exact(b).zip(dst.chunks_exact_mut(local)) {
                out.copy_from_slice(&row[first..first + local]);
            }
        }
    }

    /// Data parallelism: average each layer's gradient while the layers below are still being
    /// differentiated (`true`, the default), or the whole slab after the backward pass. With
    /// more than two ranks the two may round differently (MPI may sum a bucket in another
    /// order than the whole slab).
    pub fn set_overlap(&mut self, on: bool) {
        self.tbptt.workspace_mut().set_grad_ready(if on { self.reducer.hook() } else { None });
    }

    /// The ranks this run is shared by.
    pub fn group(&self) -> &Group {
        &self.group
    }

    /// Updates in one epoch.
    pub fn updates_per_epoch(&self) -> usize {
        self.streams.updates_per_epoch()
    }

    /// True once `cfg.steps` updates are done.
    pub fn done(&self) -> bool {
        self.step >= self.cfg.steps
    }

    /// Ok while training is healthy; an error once `max_bad_steps` consecutive updates were
    /// skipped or the loss exceeds `abort_loss_factor` × the first loss. Check it after each
    /// [`Trainer::train_step`] (the update itself has been logged and nothing bad applied).
    pub fn health(&self) -> Result<()> {
        self.updater.health(self.step)
    }

    /// One update: the next k1 steps of every stream, TBPTT, clip, optimizer step. (Online:
    /// the next k1 characters of the stream, an update after each.)
    pub fn train_step(&mut self) -> Result<StepMetrics> {
        if self.epoch_update >= self.streams.updates_per_epoch() {
            self.epoch += 1;
            self.epoch_update = 0;
            self.tbptt.reset(None);
            if let Some(learner) = &mut self.online {
                learner.reset(&self.model.net, None);
            }
        }
        if self.online.is_some() {
            return self.online_step();
        }
        self.chunk(self.epoch_update);
        self.grads.fill(0.0);
        self.tbptt.set_dropout(self.cfg.dropout_at(self.step, self.group.rank()))?;
        let net = &self.model.net;
        let weight_drop = self.cfg.weight_drop_at(self.step);
        let params = match &weight_drop {
            Some(wd) => {
                wd.apply(net, &self.model.params, &mut self.dropped, &mut self.w_hh_mask)?;
                &self.dropped
            }
            None => &self.model.params,
        };
        let (tbptt, x, y) = (&mut self.tbptt, &self.x, &self.y);
        let loss = self
            .reducer
            .reduce(&mut self.grads, |grads| tbptt.step(net, params, Input::Tokens(x), Targets::classes(y), grads))?;
        if weight_drop.is_some() {
            WeightDrop::backward(net, &mut self.grads, &self.w_hh_mask)?;
        }
        let (report, lr) = self.updater.apply(self.step, &mut self.model.params, &mut self.grads);
        let carried = self.tbptt.carried_state();
        let bad_state = carried.h.iter().chain(&carried.c).any(|v| !v.is_finite());
        // The mean loss over every rank's streams, and whether any rank's state broke.
        let mut control = [loss as f64, if bad_state { 1.0 } else { 0.0 }];
        self.group.sum(&mut control)?;
        if control[1] > 0.0 {
            self.tbptt.reset(None);
        }
        self.step += 1;
        self.epoch_update += 1;
        self.tokens += (self.cfg.k1 * self.cfg.batch) as u64;
        let loss = if self.group.size() > 1 { control[0] / self.group.size() as f64 } else { loss as f64 };
        self.updater.record(loss, report.skipped);
        Ok(StepMetrics {
            step: self.step,
            epoch: self.epoch,
            tokens: self.tokens,
            train_loss: loss,
            grad_norm: report.grad_norm,
            clipped: report.clipped,
            skipped: report.skipped,
            lr,
        })
    }

    /// [`Trainer::train_step`] online: for each of the next k1 characters, its loss, the
    /// learner's gradient estimate (this step's loss through every earlier step of the stream),
    /// and the update. The metrics: the mean loss and gradient norm of the k1 updates, clipped
    /// or skipped if any was.
    fn online_step(&mut self) -> Result<StepMetrics> {
        self.chunk(self.epoch_update);
        let Some(learner) = self.online.as_mut() else { unreachable!("online_step needs a learner") };
        let net = &self.model.net;
        let (mut loss, mut norm, mut clipped, mut skipped, mut lr) = (0.0, 0.0, false, false, 0.0);
        for (x, y) in self.x.iter().zip(&self.y) {
            let l = learner.step(net, &self.model.params, Input::Tokens(&[*x]), Target::Classes(&[*y]), 1.0)?;
            let (report, rate) = self.updater.apply(self.step, &mut self.model.params, learner.grads_mut());
            loss += l as f64;
            norm += report.grad_norm;
            clipped |= report.clipped;
            skipped |= report.skipped;
            lr = rate;
            if learner.state().h.iter().chain(&learner.state().c).any(|v| !v.is_finite()) {
                learner.reset(net, None);
            }
        }
        let n = self.x.len() as f64;
        self.step += 1;
        self.epoch_update += 1;
        self.tokens += self.x.len() as u64;
        self.updater.record(loss / n, skipped);
        Ok(StepMetrics {
            step: self.step,
            epoch: self.epoch,
            tokens: self.tokens,
            train_loss: loss / n,
            grad_norm: norm / n,
            clipped,
            skipped,
            lr,
        })
    }

    /// The validation loss (the validation text cut into B streams), or `None` without one.
    pub fn validate(&mut self) -> Result<Option<Eval>> {
        if !self.has_validation() {
            return Ok(None);
        }
        // Forward-only, so any chunk length gives the same loss (to rounding): with checkpoints,
        // chunks of K steps keep validation within the same memory.
        let chunk = if self.cfg.checkpoint_every > 0 { self.cfg.checkpoint_every } else { self.cfg.seq_len };
        let e = self.model.evaluate(&self.split.val, self.cfg.batch, chunk, self.threads)?;
        if self.best_val.is_none_or(|b| e.loss < b) {
            self.best_val = Some(e.loss);
        }
        Ok(Some(e))
    }

    /// The checkpoint file's bytes: the model, optimizer buffers, carried state and counters.
    /// With data parallelism every rank must call it (the carried state of all B streams is
    /// gathered: (L, B, H), as one process would hold it); every rank gets the same bytes.
    pub fn checkpoint_bytes(&self) -> Result<Vec<u8>> {
        let local = match &self.online {
            Some(learner) => learner.state(),
            None => self.tbptt.carried_state(),
        };
        let state = self.global_state(local)?;
        let (mut extra, mut updater_meta) = self.updater.checkpoint();
        let online = self.online.as_ref().map(|l| l.carried()).unwrap_or_default();
        for (name, v) in &online {
            extra.push((format!("state.online.{name}"), vec![v.len()], v));
        }
        if let Some(l) = &self.online {
            updater_meta.push(("online_streams".into(), l.streams().to_string()));
            updater_meta
                .push(("online_tensors".into(), online.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(",")));
        }
        extra.push(("state.h".into(), vec![state.h.len()], &state.h));
        if !state.c.is_empty() {
            extra.push(("state.c".into(), vec![state.c.len()], &state.c));
        }
        let config = serde_json::to_string(&self.cfg).map_err(|e| Error::Config(e.to_string()))?;
        let meta = [
            ("bptt.checkpoint", CHECKPOINT_FORMAT.to_string()),
            ("step", self.step.to_string()),
            ("epoch", self.epoch.to_string()),
            ("epoch_update", self.epoch_update.to_string()),
            ("tokens", self.tokens.to_string()),
            ("best_val", self.best_val.map_or("none".into(), |v| format!("{v:?}"))),
            ("ranks", self.group.size().to_string()),
            ("config", config),
        ];
        let mut meta: Vec<(String, String)> = meta.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        meta.extend(updater_meta);
        self.model.to_bytes_with(&extra, &meta)
    }

    /// The carried state of every stream, (L, B, H), from this rank's (L, B/N, H).
    fn global_state(&self, local: &State<f32>) -> Result<State<f32>> {
        let ranks = self.group.size();
        if ranks == 1 {
            return Ok(local.clone());
        }
        let (l, h) = (self.cfg.model.layers, self.cfg.model.hidden);
        let rows = self.cfg.batch / ranks;
        let gather = |part: &[f32]| -> Result<Vec<f32>> {
            if part.is_empty() {
                return Ok(Vec::new());
            }
            // (N, L, B/N, H) → (L, B, H).
            let all = self.group.gather(part)?;
            let mut out = vec![0.0; all.len()];
            let block = rows * h;
            for r in 0..ranks {
                for k in 0..l {
                    let src = &all[(r * l + k) * block..(r * l + k + 1) * block];
                    out[(k * ranks + r) * block..(k * ranks + r + 1) * block].copy_from_slice(src);
                }
            }
            Ok(out)
        };
        Ok(State { h: gather(&local.h)?, c: gather(&local.c)? })
    }

    /// True if the validation part holds at least two characters (one prediction).
    pub fn has_validation(&self) -> bool {
        self.split.val.len() >= 2
    }

    /// What every rank of a data-parallel run must share, as named hashes for
    /// [`Group::agree`]: each setting, the vocabulary, the text (training and validation ids),
    /// the parameters and the step.
    pub fn fingerprint(&self) -> Vec<(String, u64)> {
        use crate::files::fnv1a64;
        let mut f = crate::dist::setting_hashes(&self.cfg);
        let vocab: String = self.model.vocab.chars().iter().collect();
        f.push(("vocabulary".into(), fnv1a64(vocab.into_bytes())));
        let ids = self.split.train.iter().chain(self.split.val.iter());
        f.push(("text".into(), fnv1a64(ids.flat_map(u32::to_le_bytes))));
        f.push(("parameters".into(), crate::dist::hash_f32(&self.model.params)));
        f.push(("step".into(), self.step));
        f
    }

    /// Rebuilds a run from checkpoint bytes and the same text ids; `steps` replaces the total.
    pub fn resume(bytes: &[u8], ids: TokenIds, steps: Option<u64>, threads: usize) -> Result<Self> {
        Self::resume_in(Arc::new(Group::single()), bytes, ids, steps, threads, false)
    }

    /// [`Trainer::resume`] as one rank of `group`. A checkpoint written by another number of
    /// ranks is refused unless `reshard` (the run then goes on with the new split of the batch,
    /// no longer bit for bit the run it would have been).
    pub fn resume_in(
        group: Arc<Group>,
        bytes: &[u8],
        ids: TokenIds,
        steps: Option<u64>,
        threads: usize,
        reshard: bool,
    ) -> Result<Self> {
        Self::resume_checked(group, bytes, ids, steps, threads, reshard).map_err(Error::Malformed)
    }

    /// [`Self::resume_in`], every problem as a message.
    fn resume_checked(
        group: Arc<Group>,
        bytes: &[u8],
        ids: TokenIds,
        steps: Option<u64>,
        threads: usize,
        reshard: bool,
    ) -> std::result::Result<Self, String> {
        let file = ModelFile::parse(bytes)?;
        let meta = |k: &str| file.metadata.get(k).ok_or_else(|| format!("checkpoint metadata '{k}' is missing"));
        if meta("bptt.checkpoint")? != CHECKPOINT_FORMAT {
            return Err(format!("not a {CHECKPOINT_FORMAT} checkpoint"));
        }
        let int = |k: &str| -> std::result::Result<u64, String> {
            meta(k)?.parse().map_err(|_| format!("checkpoint metadata '{k}' is not a whole number"))
        };
        let float = |k: &str| -> std::result::Result<Option<f64>, String> {
            match meta(k)?.as_str() {
                "none" => Ok(None),
                v => v.parse().map(Some).map_err(|_| format!("checkpoint metadata '{k}' is not a number")),
            }
        };
        let mut cfg: TrainConfig =
            serde_json::from_str(meta("config")?).map_err(|e| format!("checkpoint config is unreadable: {e}"))?;
        if cfg.model != file.spec {
            return Err("checkpoint config does not match its model".into());
        }
        if let Some(s) = steps {
            // A changed total keeps the schedule's original horizon (see `schedule_steps`).
            if s != cfg.steps && cfg.schedule_steps.is_none() && cfg.lr_schedule.starts_with("cosine") {
                cfg.schedule_steps = Some(cfg.steps);
            }
            cfg.steps = s;
        }
        let written_by = match file.metadata.get("ranks") {
            Some(v) => {
                v.parse::<usize>().map_err(|_| "checkpoint metadata 'ranks' is not a whole number".to_string())?
            }
            None => 1,
        };
        if written_by != group.size() && !reshard {
            return Err(format!(
                "the checkpoint was written by {written_by} rank(s) and this job has {}: resume with mpirun -np \
                 {written_by}, or pass `reshard` to continue with the new split (not bit for bit)",
                group.size()
            ));
        }
        let model = file.model()?;
        let mut t = Trainer::new_in(group, cfg, model, ids, threads).map_err(|e| e.to_string())?;
        t.updater.restore(&file.tensors, &file.metadata)?;
        (t.step, t.epoch, t.tokens) = (int("step")?, int("epoch")?, int("tokens")?);
        t.epoch_update = int("epoch_update")? as usize;
        t.best_val = float("best_val")?;
        if t.epoch_update > t.streams.updates_per_epoch() {
            return Err("checkpoint position lies beyond the end of the epoch: was the text changed?".into());
        }
        let global = State::<f32>::zeros(t.model.net.config(), t.cfg.batch);
        let h = file.floats("state.h")?;
        let c = if global.c.is_empty() { Vec::new() } else { file.floats("state.c")? };
        if h.len() != global.h.len() || c.len() != global.c.len() {
            return Err("checkpoint carried state has the wrong size".into());
        }
        // This rank's streams of the (L, B, H) state.
        let (ranks, rank) = (t.group.size(), t.group.rank());
        let (l, hid, b) = (t.cfg.model.layers, t.cfg.model.hidden, t.cfg.batch / ranks);
        let mine = |all: &[f32]| -> Vec<f32> {
            if all.is_empty() {
                return Vec::new();
            }
            let block = b * hid;
            (0..l).flat_map(|k| &all[(k * ranks + rank) * block..(k * ranks + rank + 1) * block]).copied().collect()
        };
        let start = State { h: mine(&h), c: mine(&c) };
        // The history the next window still covers: the last min(u·k1, k2 − k1) steps.
        let (k1, k2) = (t.cfg.k1, t.cfg.seq_len);
        let held = (t.epoch_update * k1).min(k2 - k1);
        let (mut hx, mut hy) = (vec![0u32; held * b], vec![0u32; held * b]);
        let first = t.epoch_update * k1 - held;
        for s in 0..held {
            // Step (first + s) of this rank's streams: fetch it from the chunk of its update.
            let (u, off) = ((first + s) / k1, (first + s) % k1);
            t.chunk(u);
            hx[s * b..(s + 1) * b].copy_from_slice(&t.x[off * b..(off + 1) * b]);
            hy[s * b..(s + 1) * b].copy_from_slice(&t.y[off * b..(off + 1) * b]);
        }
        t.tbptt.restore(start, Input::Tokens(&hx), Targets::classes(&hy)).map_err(|e| e.to_string())?;
        if let Some(learner) = &mut t.online {
            let names = meta("online_tensors")?;
            let carried = names
                .split(',')
                .filter(|n| !n.is_empty())
                .map(|n| Ok((n.to_string(), file.floats(&format!("state.online.{n}"))?)))
                .collect::<std::result::Result<Vec<_>, String>>()?;
            learner.restore(&t.model.net, int("online_streams")?, &carried).map_err(|e| e.to_string())?;
        }
        Ok(t)
    }
}
