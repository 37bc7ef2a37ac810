//! Truncated BPTT, TBPTT(k1, k2) (Williams & Peng 1990), over a long stream fed in chunks.
//!
//! Semantics. The stream is fed `k1` steps at a time (the last chunk may be shorter, n ≤ k1
//! steps). A call that feeds the steps [e − n, e) runs the forward pass over the window
//! [s, e) with s = max(0, e − n − (k2 − k1)) — the last k2 steps when n = k1 — starting from
//! the state at s, which an earlier call computed and which is carried without gradient (the
//! initial state for s = 0). Only the losses of the n new steps count (their mean, times the
//! caller's mask); their gradient flows back through every step of the window. The state at
//! the next window's start is taken from this forward pass. With k1 = k2 this is the usual
//! chunked training: disjoint windows, state carried across; with k2 ≥ the stream length it
//! is full BPTT.

use crate::error::{Error, Result, check_len};
use crate::float::Float;
use crate::net::{Input, InputKind, LossKind, Net, NetConfig, State, Target, Targets, Workspace};
use crate::train::CheckpointedBptt;

/// The TBPTT(k1, k2) driver: keeps the last k2 steps of input and the carried state.
#[derive(Clone, Debug)]
pub struct Tbptt<F> {
    k1: usize,
    k2: usize,
    batch: usize,
    /// Values per (t, b) row of the dense input (I) and of the value targets (O); 0 if unused.
    x_width: usize,
    y_width: usize,
    ws: Workspace<F>,
    /// Steps held in the history buffers (the next window's prefix).
    held: usize,
    /// History, time-major, up to k2 steps: inputs (T, B, I) or ids (T, B), targets, weights.
    x: Vec<F>,
    ids: Vec<u32>,
    classes: Vec<u32>,
    values: Vec<F>,
    weights: Vec<F>,
    /// The state at the start of the held history.
    start: State<F>,
    /// Memory-efficient windows: each runs as checkpointed BPTT (`ws` then holds one step).
    checkpointed: Option<CheckpointedBptt<F>>,
}

impl<F: Float> Tbptt<F> {
    /// A driver for `net` with batch `batch`, requiring 1 ≤ k1 ≤ k2.
    pub fn new(net: &Net, k1: usize, k2: usize, batch: usize, threads: usize) -> Result<Self> {
        Self::with_checkpoints(net, k1, k2, batch, threads, 0)
    }

    /// As [`Tbptt::new`], but with `every` ≥ 1 each window runs as [`CheckpointedBptt`] with
    /// segments of `every` steps: activation memory O(every + k2/every) steps instead of O(k2),
    /// for one more forward pass (`every` = 0: plain BPTT windows).
    pub fn with_checkpoints(
        net: &Net,
        k1: usize,
        k2: usize,
        batch: usize,
        threads: usize,
        every: usize,
    ) -> Result<Self> {
        if net.config().bidirectional {
            return Err(Error::Config(
                "truncated BPTT cannot run a bidirectional net: its reverse direction needs each \
                 sequence's end, so windows cannot carry its state; train on whole sequences"
                    .into(),
            ));
        }
        if k1 == 0 || k1 > k2 {
            return Err(Error::Config(format!("truncated BPTT needs 1 <= k1 <= k2, got k1={k1}, k2={k2}")));
        }
        let cfg = net.config();
        if cfg.head != crate::net::Head::PerStep {
            return Err(Error::Config(
                "truncated BPTT needs a per-step head: a pooled head reads whole sequences (run Net::forward and \
                 Net::backward over each batch)"
                    .into(),
            ));
        }
        // The window's inputs and targets, checked before anything is allocated.
        let needed = Self::window_bytes(cfg, k2, batch);
        let available = crate::kernels::machine::available_memory();
        if needed > available {
            let what = format!("a truncated-BPTT window of {k2} steps of {batch} sequences");
            return Err(Error::Memory { what, needed, available });
        }
        let checkpointed = if every > 0 { Some(CheckpointedBptt::new(net, every, batch, threads)?) } else { None };
        let ws = net.workspace(if every > 0 { 1 } else { k2 }, batch, threads)?;
        let n = k2 * batch;
        let (x_width, ids) = match cfg.input {
            InputKind::Dense { size } => (size, Vec::new()),
            InputKind::Tokens { .. } => (0, vec![0; n]),
        };
        let (y_width, classes) = match cfg.loss {
            LossKind::CrossEntropy => (0, vec![0; n]),
            LossKind::Mse => (cfg.output, Vec::new()),
        };
        Ok(Tbptt {
            k1,
            k2,
            batch,
            x_width,
            y_width,
            ws,
            held: 0,
            x: vec![F::zero(); n * x_width],
            ids,
            classes,
            values: vec![F::zero(); n * y_width],
            weights: vec![F::zero(); n],
            start: State::zeros(cfg, batch),
            checkpointed,
        })
    }

    /// The bytes of the window's inputs and targets (k2 · B positions).
    fn window_bytes(cfg: &NetConfig, k2: usize, batch: usize) -> u64 {
        let per_position = (cfg.input_width() + cfg.output + 3) * std::mem::size_of::<F>() + 8;
        (k2 as u128 * batch as u128 * per_position as u128).try_into().unwrap_or(u64::MAX)
    }

    /// The bytes [`Tbptt::with_checkpoints`] allocates for these sizes (window buffers and
    /// activations), computed without allocating; saturates for sizes that cannot exist.
    pub fn estimate_bytes(cfg: &NetConfig, k2: usize, batch: usize, every: usize) -> u64 {
        let activations = if every > 0 {
            CheckpointedBptt::<F>::estimate_bytes(cfg, every, k2, batch)
                .saturating_add(Workspace::<F>::estimate_bytes(cfg, 1, batch))
        } else {
            Workspace::<F>::estimate_bytes(cfg, k2, batch)
        };
        Self::window_bytes(cfg, k2, batch).saturating_add(activations)
    }

    /// (k1, k2).
    pub fn k(&self) -> (usize, usize) {
        (self.k1, self.k2)
    }

    /// Starts a new stream from `init` (zeros if `None`).
    pub fn reset(&mut self, init: Option<&State<F>>) {
        self.held = 0;
        match init {
            Some(s) => self.start.clone_from(s),
            None => {
                self.start.h.fill(F::zero());
                self.start.c.fill(F::zero());
            }
        }
    }

    /// The state the next window starts from.
    pub fn carried_state(&self) -> &State<F> {
        &self.start
    }

    /// Steps of history held for the next window.
    pub fn held(&self) -> usize {
        self.held
    }

    /// The workspace of the last window (hidden states, ‖dL/dh_t‖, …); with checkpoints, a
    /// one-step workspace that windows do not use.
    pub fn workspace(&self) -> &Workspace<F> {
        &self.ws
    }

    /// Sets (or clears) dropout for the next windows, in whichever workspace runs them (with
    /// checkpoints, segment by segment: see [`CheckpointedBptt::set_dropout`]).
    pub fn set_dropout(&mut self, dropout: Option<crate::net::Dropout>) -> Result<()> {
        match &mut self.checkpointed {
            Some(ck) => ck.set_dropout(dropout),
            None => self.ws.set_dropout(dropout),
        }
    }

    /// The precision of the windows' products (see [`Workspace::set_precision`]).
    pub fn set_precision(&mut self, precision: crate::kernels::Precision) {
        self.ws.set_precision(precision);
        if let Some(ck) = &mut self.checkpointed {
            ck.set_precision(precision);
        }
    }

    /// Mutable access to the workspace settings (threads, recording).
    pub fn workspace_mut(&mut self) -> &mut Workspace<F> {
        &mut self.ws
    }

    /// Restores the driver's position within a stream: `start` is the carried state and
    /// `history` the steps already fed that the next window still covers (at most k2 − k1;
    /// none when k1 = k2). Their mask is irrelevant: old steps never count again.
    pub fn restore(&mut self, start: State<F>, input: Input<'_, F>, targets: Targets<'_, F>) -> Result<()> {
        check_len("carried state h", self.start.h.len(), start.h.len())?;
        check_len("carried state c", self.start.c.len(), start.c.len())?;
        self.held = 0;
        let n = self.put(0, self.k2 - self.k1, input, targets)?;
        self.held = n;
        self.start = start;
        Ok(())
    }

    /// Copies `input`/`targets` (n ≤ `max` steps, n ≥ 0) into the history at step `at`.
    fn put(&mut self, at: usize, max: usize, input: Input<'_, F>, targets: Targets<'_, F>) -> Result<usize> {
        let b = self.batch;
        let n = match input {
            Input::Dense(x) => x.len() / (b * self.x_width.max(1)),
            Input::Tokens(ids) => ids.len() / b,
        };
        if n > max {
            return Err(Error::Config(format!("a TBPTT chunk may hold at most {max} steps of batch {b}, got {n}")));
        }
        let rows = at * b..(at + n) * b;
        match input {
            Input::Dense(x) => {
                let w = self.x_width;
                check_len("TBPTT chunk input", n * b * w, x.len())?;
                self.x[rows.start * w..rows.end * w].copy_from_slice(x);
            }
            Input::Tokens(ids) => {
                check_len("TBPTT chunk tokens", n * b, ids.len())?;
                self.ids[rows.clone()].copy_from_slice(ids);
            }
        }
        match targets.target {
            Target::Classes(y) if !self.classes.is_empty() => {
                check_len("TBPTT chunk targets", n * b, y.len())?;
                self.classes[rows.clone()].copy_from_slice(y);
            }
            Target::Values(y) if !self.values.is_empty() => {
                let o = self.y_width;
                check_len("TBPTT chunk targets", n * b * o, y.len())?;
                self.values[rows.start * o..rows.end * o].copy_from_slice(y);
            }
            _ => return Err(Error::Config("target kind does not match the loss".into())),
        }
        match targets.mask {
            Some(m) => {
                check_len("TBPTT chunk mask", n * b, m.len())?;
                self.weights[rows].copy_from_slice(m);
            }
            None => self.weights[rows].fill(F::one()),
        }
        Ok(n)
    }

    /// Feeds the next 1..=k1 steps, runs forward and backward over the window, adds the
    /// gradient into `grads` and returns the loss of the new steps. `targets.mask`, if given,
    /// weights the new steps.
    pub fn step(
        &mut self,
        net: &Net,
        params: &[F],
        input: Input<'_, F>,
        targets: Targets<'_, F>,
        grads: &mut [F],
    ) -> Result<F> {
        let cfg = net.config();
        let b = self.batch;
        let h0 = self.held;
        let n = self.put(h0, self.k1, input, targets)?;
        if n == 0 {
            return Err(Error::Config(format!("a TBPTT chunk must hold 1..={} steps of batch {b}", self.k1)));
        }
        let t = h0 + n;
        self.weights[..h0 * b].fill(F::zero());

        let input = match cfg.input {
            InputKind::Dense { .. } => Input::Dense(&self.x[..t * b * self.x_width]),
            InputKind::Tokens { .. } => Input::Tokens(&self.ids[..t * b]),
        };
        let target = if self.classes.is_empty() {
            Target::Values(&self.values[..t * b * cfg.output])
        } else {
            Target::Classes(&self.classes[..t * b])
        };
        let window = Targets { target, mask: Some(&self.weights[..t * b]) };
        // Slide: the next window ends k1 steps later and is at most k2 long.
        let drop = (t + self.k1).saturating_sub(self.k2);
        let loss = match self.checkpointed.as_mut() {
            None => {
                let loss = net.forward(params, &mut self.ws, input, Some(window), Some(&self.start))?;
                net.backward(params, &mut self.ws, grads)?;
                if drop > 0 {
                    self.ws.state_at(drop, &mut self.start);
                }
                loss
            }
            Some(ck) => {
                ck.keep_state_after((drop > 0).then_some(drop));
                let loss = ck.run(net, params, input, window, Some(&self.start), grads)?;
                if drop > 0 {
                    self.start.clone_from(ck.kept_state());
                }
                loss
            }
        };
        if drop > 0 {
            let (xw, yw) = (b * self.x_width, b * self.y_width);
            self.x.copy_within(drop * xw..t * xw, 0);
            self.values.copy_within(drop * yw..t * yw, 0);
            let (iw, cw) = (b.min(self.ids.len()), b.min(self.classes.len()));
            self.ids.copy_within(drop * iw..t * iw, 0);
            self.classes.copy_within(drop * cw..t * cw, 0);
        }
        self.held = t - drop;
        Ok(loss)
    }
}
