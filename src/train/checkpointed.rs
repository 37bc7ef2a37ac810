//! Memory-efficient BPTT by recomputation (Chen et al. 2016; Gruslys et al. 2016): the forward
//! pass keeps only the state at every K-th step; the backward pass walks the segments from the
//! last to the first, recomputes each segment's forward pass from its saved state and
//! back-propagates through it, the gradient w.r.t. the segment's initial state carried to the
//! segment before. Activation memory is O(K + T/K) steps instead of O(T) (K ≈ √T minimises
//! it) for one extra forward pass; the gradient equals plain BPTT's up to rounding (the weight
//! gradients are summed segment by segment).

use crate::error::{Error, Result, check_len};
use crate::float::Float;
use crate::net::{Dropout, Input, Net, State, Target, Targets, Workspace};

/// The checkpointed BPTT driver for segments of `k` steps.
#[derive(Clone, Debug)]
pub struct CheckpointedBptt<F> {
    k: usize,
    ws: Workspace<F>,
    /// The state at the start of each segment of the last sequence.
    states: Vec<State<F>>,
    /// dL/d(state at the end of the segment being back-propagated).
    carry: State<F>,
    /// The state after step `keep_at` of the last sequence, if asked for.
    keep_at: Option<usize>,
    kept: State<F>,
    /// Dropout of the next runs: each segment draws its masks from its own seed, the same in
    /// the forward pass and the recomputation, so the gradient is that of the masks used.
    dropout: Option<Dropout>,
}

impl<F: Float> CheckpointedBptt<F> {
    /// A driver for `net` with batch `batch` and segments of `k` ≥ 1 steps.
    pub fn new(net: &Net, k: usize, batch: usize, threads: usize) -> Result<Self> {
        if k == 0 {
            return Err(Error::Config("checkpointed BPTT needs segments of at least 1 step".into()));
        }
        if net.config().bidirectional {
            return Err(Error::Config(
                "checkpointed BPTT cannot run a bidirectional net: its reverse direction starts at \
                 each sequence's end, so segments cannot carry its state"
                    .into(),
            ));
        }
        if net.config().head != crate::net::Head::PerStep {
            return Err(Error::Config(
                "checkpointed BPTT needs a per-step head: a pooled head reads whole sequences".into(),
            ));
        }
        Ok(CheckpointedBptt {
            k,
            ws: net.workspace(k, batch, threads)?,
            states: Vec::new(),
            carry: State::zeros(net.config(), batch),
            keep_at: None,
            kept: State::zeros(net.config(), batch),
            dropout: None,
        })
    }

    /// The precision of the segments' products (see [`Workspace::set_precision`]).
    pub fn set_precision(&mut self, precision: crate::kernels::Precision) {
        self.ws.set_precision(precision);
    }

    /// Sets (or clears) dropout for the next runs (see [`Workspace::set_dropout`]). Segment s
    /// draws per-step masks from a seed of its own; locked masks are the same in every
    /// segment, so a locked run equals plain BPTT with the same dropout.
    pub fn set_dropout(&mut self, dropout: Option<Dropout>) -> Result<()> {
        self.ws.set_dropout(dropout)?;
        self.dropout = dropout;
        Ok(())
    }

    /// Points the workspace's dropout at segment `s`'s masks.
    fn dropout_for_segment(&mut self, s: usize) -> Result<()> {
        if let Some(d) = self.dropout
            && !d.locked
        {
            let seed = d.seed ^ (s as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            self.ws.set_dropout(Some(Dropout { seed, ..d }))?;
        }
        Ok(())
    }

    /// The bytes a driver with segments of `k` steps holds for sequences of up to `max_steps`
    /// steps: its K-step workspace and one saved state per segment, computed without allocating.
    pub fn estimate_bytes(cfg: &crate::net::NetConfig, k: usize, max_steps: usize, batch: usize) -> u64 {
        let segments = max_steps.div_ceil(k.max(1)) as u128 + 3; // + carry, kept, a spare
        let state = (cfg.layers * batch * cfg.hidden) as u128 * if cfg.cell.has_cell_state() { 2 } else { 1 };
        let states = segments * state * std::mem::size_of::<F>() as u128;
        Workspace::<F>::estimate_bytes(cfg, k, batch).saturating_add(u64::try_from(states).unwrap_or(u64::MAX))
    }

    /// Asks the next runs to keep the state after `steps` steps of the sequence (1 ≤ steps ≤
    /// T; `None`: keep nothing), for [`CheckpointedBptt::kept_state`]. Truncated BPTT carries
    /// that state to its next window.
    pub fn keep_state_after(&mut self, steps: Option<usize>) {
        self.keep_at = steps;
    }

    /// The state asked for with [`CheckpointedBptt::keep_state_after`], from the last run.
    pub fn kept_state(&self) -> &State<F> {
        &self.kept
    }

    /// The workspace (K steps) the segments run in.
    pub fn workspace(&self) -> &Workspace<F> {
        &self.ws
    }

    /// dL/d(initial state) of the last run.
    pub fn initial_state_grad(&self) -> &State<F> {
        &self.carry
    }

    /// Bytes of stored activations: the K-step workspace plus the saved segment states.
    pub fn bytes(&self) -> usize {
        self.ws.bytes() + self.states.iter().map(|s| (s.h.len() + s.c.len()) * std::mem::size_of::<F>()).sum::<usize>()
    }

    /// Loss of the whole sequence (as [`Net::forward`] defines it) and its gradient, added into
    /// `grads`; the sequence may be any length.
    pub fn run(
        &mut self,
        net: &Net,
        params: &[F],
        input: Input<'_, F>,
        targets: Targets<'_, F>,
        init: Option<&State<F>>,
        grads: &mut [F],
    ) -> Result<F> {
        let cfg = net.config();
        let b = self.ws.batch();
        let (iw, o) = (cfg.input_width(), cfg.output);
        let len = match input {
            Input::Dense(x) => x.len(),
            Input::Tokens(x) => x.len(),
        };
        let steps = len / (b * iw);
        if steps == 0 || steps * b * iw != len {
            return Err(Error::Config(format!("input of {len} values is not T·{} for some T ≥ 1", b * iw)));
        }
        if let Some(m) = targets.mask {
            check_len("mask (T·B)", steps * b, m.len())?;
        }
        let weight = |s: usize, e: usize| -> f64 {
            targets.mask.map_or(((e - s) * b) as f64, |m| m[s * b..e * b].iter().map(|w| w.f64()).sum())
        };
        let total = weight(0, steps);
        let segments = steps.div_ceil(self.k);
        let k = self.k;
        let segment = |s: usize| -> (usize, usize, Input<'_, F>, Targets<'_, F>) {
            let (from, to) = (s * k, ((s + 1) * k).min(steps));
            let x = match input {
                Input::Dense(x) => Input::Dense(&x[from * b * iw..to * b * iw]),
                Input::Tokens(x) => Input::Tokens(&x[from * b..to * b]),
            };
            let target = match targets.target {
                Target::Classes(y) => Target::Classes(&y[from * b..to * b]),
                Target::Values(y) => Target::Values(&y[from * b * o..to * b * o]),
            };
            (from, to, x, Targets { target, mask: targets.mask.map(|m| &m[from * b..to * b]) })
        };
        while self.states.len() < segments {
            self.states.push(State::zeros(cfg, b));
        }
        // Forward: keep only each segment's starting state.
        match init {
            Some(s) => self.states[0].clone_from(s),
            None => self.states[0] = State::zeros(cfg, b),
        }
        let mut loss = 0.0;
        for s in 0..segments {
            let (from, to, x, y) = segment(s);
            self.dropout_for_segment(s)?;
            let l = net.forward(params, &mut self.ws, x, Some(y), Some(&self.states[s]))?;
            if total > 0.0 {
                loss += l.f64() * weight(from, to) / total;
            }
            if s + 1 < segments {
                self.ws.state_at(to - from, &mut self.states[s + 1]);
            }
            if let Some(d) = self.keep_at
                && from < d
                && d <= to
            {
                self.ws.state_at(d - from, &mut self.kept);
            }
        }
        // Backward, last segment first, recomputing each segment's forward pass.
        self.carry.h.fill(F::zero());
        self.carry.c.fill(F::zero());
        for s in (0..segments).rev() {
            let (from, to, x, y) = segment(s);
            self.dropout_for_segment(s)?;
            net.forward(params, &mut self.ws, x, Some(y), Some(&self.states[s]))?;
            // The segment's loss is its own weighted mean: rescale dL/dlogits to the sequence's.
            let scale = if total > 0.0 { F::of(weight(from, to) / total) } else { F::zero() };
            let n = (to - from) * b * o;
            self.ws.dlogits[..n].iter_mut().for_each(|d| *d *= scale);
            net.backward_from(params, &mut self.ws, grads, Some(&self.carry))?;
            self.carry.h.copy_from_slice(&self.ws.dh0);
            self.carry.c.copy_from_slice(&self.ws.dc0);
        }
        Ok(F::of(loss))
    }
}
