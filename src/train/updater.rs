//! The update every training loop shares (the char-LM's and the sequence tasks'): the scheduled
//! learning rate, clipping, the guarded optimizer step — a non-finite gradient is skipped, an
//! update that leaves a non-finite weight is undone — and the health counters (consecutive
//! skipped updates; the loss against the first one). Its state goes into checkpoints, so a
//! resumed run continues bit for bit.

use crate::error::{Error, Result};
use crate::files::tensors;
use crate::optim::{LrSchedule, Optimizer, OptimizerState};
use crate::train::{Clip, UpdateReport, apply_update};

/// Extra tensors of a file: name, shape, values.
pub type NamedTensors<'a> = Vec<(String, Vec<usize>, &'a [f32])>;

/// See the module docs.
pub struct Updater {
    optimizer: Optimizer<f32>,
    schedule: LrSchedule,
    clip: Clip,
    /// The parameters before the last update, to undo one that left a non-finite value.
    backup: Vec<f32>,
    max_bad_steps: u32,
    abort_loss_factor: Option<f64>,
    bad_steps: u32,
    first_loss: Option<f64>,
    last_loss: f64,
}

impl Updater {
    /// An updater for a slab of `n` parameters. Training stops (see [`Updater::health`])
    /// after `max_bad_steps` consecutive skipped updates, or once the loss exceeds
    /// `abort_loss_factor` × the first finite one.
    pub fn new(
        n: usize,
        optimizer: Optimizer<f32>,
        schedule: LrSchedule,
        clip: Clip,
        max_bad_steps: u32,
        abort_loss_factor: Option<f64>,
    ) -> Result<Self> {
        clip.validate()?;
        if let Some(f) = abort_loss_factor
            && !(f.is_finite() && f > 0.0)
        {
            return Err(Error::Config(format!("the abort-loss factor must be positive, got {f}")));
        }
        Ok(Updater {
            optimizer,
            schedule,
            clip,
            backup: vec![0.0; n],
            max_bad_steps: max_bad_steps.max(1),
            abort_loss_factor,
            bad_steps: 0,
            first_loss: None,
            last_loss: 0.0,
        })
    }

    /// Update number `step` (from 0): clip `grads`, step the optimizer at the scheduled rate,
    /// undo it if a weight became non-finite. Returns what happened and the rate used.
    pub fn apply(&mut self, step: u64, params: &mut [f32], grads: &mut [f32]) -> (UpdateReport, f64) {
        let lr = self.schedule.lr(step);
        self.backup.copy_from_slice(params);
        let mut report = apply_update(params, grads, &mut self.optimizer, lr, self.clip);
        if !report.skipped && params.iter().any(|v| !v.is_finite()) {
            // A finite gradient can still overflow an update (absurd learning rate): undo it.
            params.copy_from_slice(&self.backup);
            report.skipped = true;
        }
        (report, lr)
    }

    /// Records the update's loss (the one every rank agrees on) and whether it was skipped.
    pub fn record(&mut self, loss: f64, skipped: bool) {
        if skipped || !loss.is_finite() {
            self.bad_steps += 1;
        } else {
            self.bad_steps = 0;
            self.first_loss.get_or_insert(loss);
        }
        self.last_loss = loss;
    }

    /// Ok while training is healthy; an error once `max_bad_steps` consecutive updates were
    /// skipped or the loss exceeds the abort factor × the first loss. `step`: updates done.
    pub fn health(&self, step: u64) -> Result<()> {
        if self.bad_steps >= self.max_bad_steps {
            return Err(Error::Data(format!(
                "{} consecutive updates had a non-finite gradient or update (last at step {step}): lower `lr` or \
                 use `clip_norm`; the last good checkpoint is kept",
                self.bad_steps
            )));
        }
        if let (Some(f), Some(first)) = (self.abort_loss_factor, self.first_loss)
            && self.last_loss > f * first
        {
            return Err(Error::Data(format!(
                "training loss {:.4} at step {step} exceeds {f} x the first loss {first:.4}: the run is diverging; \
                 lower `lr`",
                self.last_loss
            )));
        }
        Ok(())
    }

    /// The optimizer.
    pub fn optimizer(&self) -> &Optimizer<f32> {
        &self.optimizer
    }

    /// What a checkpoint keeps: the optimizer's buffers as tensors `optim.NAME` (each of the
    /// slab's length) and the counters as metadata.
    pub fn checkpoint(&self) -> (NamedTensors<'_>, Vec<(String, String)>) {
        let n = self.backup.len();
        let tensors = self.optimizer.buffers().map(|(name, v)| (format!("optim.{name}"), vec![n], v)).collect();
        let meta = vec![
            ("optim_step".to_string(), self.optimizer.steps().to_string()),
            ("first_loss".to_string(), self.first_loss.map_or("none".into(), |v| format!("{v:?}"))),
            ("bad_steps".to_string(), self.bad_steps.to_string()),
        ];
        (tensors, meta)
    }

    /// Restores what [`Updater::checkpoint`] kept.
    pub(crate) fn restore(
        &mut self,
        file: &safetensors::SafeTensors<'_>,
        metadata: &std::collections::HashMap<String, String>,
    ) -> std::result::Result<(), String> {
        let meta = |k: &str| metadata.get(k).ok_or_else(|| format!("checkpoint metadata '{k}' is missing"));
        let int = |k: &str| -> std::result::Result<u64, String> {
            meta(k)?.parse().map_err(|_| format!("checkpoint metadata '{k}' is not a whole number"))
        };
        let names = self.optimizer.state().buffers;
        let mut buffers = Vec::with_capacity(names.len());
        for (name, _) in names {
            buffers.push((name.clone(), tensors::floats(file, &format!("optim.{name}"))?));
        }
        self.optimizer.load_state(OptimizerState { step: int("optim_step")?, buffers }).map_err(|e| e.to_string())?;
        self.first_loss = match meta("first_loss")?.as_str() {
            "none" => None,
            v => Some(v.parse().map_err(|_| "checkpoint metadata 'first_loss' is not a number".to_string())?),
        };
        self.bad_steps = int("bad_steps")?.min(u32::MAX as u64) as u32;
        Ok(())
    }
}
