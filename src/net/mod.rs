//! The network: an optional embedding, L stacked recurrent layers and a linear readout with a
//! per-step loss. `forward` runs over all T steps; `backward` is explicit BPTT over the same T.
//!
//! Layout is time-major: inputs (T, B, I) or token ids (T, B); targets (T, B) class ids or
//! (T, B, O) values; the optional mask/weight (T, B). Hidden states are (T+1, B, H) per layer
//! with row 0 the initial state.
//!
//! Loss: with weights w_tb (1 when no mask is given) and per-position loss ℓ_tb,
//! `L = Σ w_tb ℓ_tb / Σ w_tb` — the mean over counted positions. ℓ is the softmax
//! cross-entropy (`CrossEntropy`) or the mean over the O outputs of the squared error (`Mse`),
//! so `Mse` equals PyTorch's `MSELoss()` over the counted positions.

mod batch;
mod bidir;
mod cache;
mod config;
mod dropout;
mod embedding;
pub(crate) mod layer;
mod pass;
mod plan;
mod readout;
mod workspace;
mod zoneout;

pub use batch::{Input, State, Target, Targets};
pub use config::{Head, InputKind, LossKind, NetConfig, ParamInfo, Pool};
pub(crate) use config::{LayerParams, Pooling};
pub use dropout::{Dropout, WeightDrop};
pub use workspace::{GradReady, GradValues, Workspace};
pub use zoneout::Zoneout;

use crate::cell::CellKind;
use crate::error::{Error, Result, check_len};
use crate::float::Float;
use bidir::Reverse;
use embedding::Embedding;
use layer::{Below, Carry, Dims, LayerInput, Pass};
use plan::{InputPath, Plan, Schedule};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A network layout: the config plus where each tensor lives in the parameter slab.
///
/// Parameters and gradients are plain `Vec<F>` slabs of [`Net::num_params`] elements with the
/// same layout, in PyTorch `state_dict` order: `encoder.weight` (tokens input only), then per
/// layer `rnn.weight_ih_l{k}`, `rnn.weight_hh_l{k}`, `rnn.bias_ih_l{k}`, `rnn.bias_hh_l{k}`
/// (and the same four `…_reverse` when bidirectional), then `decoder.weight` (O, D·H) and
/// `decoder.bias` (O).
#[derive(Clone, Debug)]
pub struct Net {
    config: NetConfig,
    params: Vec<ParamInfo>,
    /// Each layer's tensors, per direction: layer k's direction d is entry k·D + d.
    layers: Vec<LayerParams>,
    encoder: Option<usize>,
    w_out: usize,
    b_out: usize,
    len: usize,
}

impl Net {
    /// A workspace for sequences of up to `max_steps` steps and batch `batch`. `threads` ≥ 2 runs
    /// the parts of every pass on up to that many threads, the caller's and helpers (see
    /// `kernels::team`); 1 runs them on the caller's alone. Results are bit-identical either way.
    pub fn workspace<F: Float>(&self, max_steps: usize, batch: usize, threads: usize) -> Result<Workspace<F>> {
        if max_steps == 0 || batch == 0 {
            return Err(Error::Config("sequence length and batch size must be at least 1".into()));
        }
        // Sizes that cannot exist here are an error, not an aborted allocation.
        let (needed, available) = (
            Workspace::<F>::estimate_bytes(&self.config, max_steps, batch),
            crate::kernels::machine::available_memory(),
        );
        if needed > available {
            let what = format!("a workspace for {max_steps} steps of {batch} sequences (H = {})", self.config.hidden);
            return Err(Error::Memory { what, needed, available });
        }
        Ok(Workspace::new(&self.config, max_steps, batch, threads.max(1)))
    }

    /// Forward pass over all steps of `input`, starting from `init` (zeros if `None`).
    ///
    /// T is `input.len() / (B · I)` (or `/ B` for tokens) and must be ≤ the workspace's
    /// `max_steps`. With `targets`, returns the loss and prepares [`Net::backward`]; without,
    /// returns 0 and leaves the logits in [`Workspace::logits`].
    pub fn forward<F: Float>(
        &self,
        params: &[F],
        ws: &mut Workspace<F>,
        input: Input<'_, F>,
        targets: Option<Targets<'_, F>>,
        init: Option<&State<F>>,
    ) -> Result<F> {
        check_len("parameter slab", self.len, params.len())?;
        self.check_workspace(ws)?;
        // Every decision of this pass, made once; `backward` runs the same plan.
        let plan = Plan::make(&self.config, ws, &input)?;
        ws.plan = None;
        ws.schedule = Some(plan.forward);
        ws.steps = plan.steps;
        self.load_input(ws, input, init)?;
        self.draw_masks(ws, &plan);
        self.load_state(ws, init);
        self.layers_forward(params, ws, &plan);
        self.readout_forward(params, ws, &plan);
        match targets {
            None => Ok(F::zero()),
            Some(t) => {
                let loss = self.loss(ws, &plan, t)?;
                ws.plan = Some(plan);
                Ok(loss)
            }
        }
    }

    /// Backward pass (BPTT) for the last forward with targets: adds dL/dθ into `grads` (same
    /// layout as the parameters; zero it first for a fresh gradient, as in PyTorch), and fills
    /// the workspace's input and initial-state gradients.
    pub fn backward<F: Float>(&self, params: &[F], ws: &mut Workspace<F>, grads: &mut [F]) -> Result<()> {
        self.backward_from(params, ws, grads, None)
    }

    /// [`Net::backward`] with a gradient arriving at the final state as well: `dfinal` is
    /// dL/d(state after the last step), e.g. from a later segment of the same sequence.
    ///
    /// It runs the plan its forward pass made: the same paths, splits and masks, whatever was
    /// set on the workspace since (a setting that changes what the pass computed — lengths,
    /// dropout — voids it instead: `Error::Config`).
    pub fn backward_from<F: Float>(
        &self,
        params: &[F],
        ws: &mut Workspace<F>,
        grads: &mut [F],
        dfinal: Option<&State<F>>,
    ) -> Result<()> {
        check_len("parameter slab", self.len, params.len())?;
        check_len("gradient slab", self.len, grads.len())?;
        self.check_workspace(ws)?;
        let Some(plan) = ws.plan else {
            return Err(Error::Config(
                "backward needs a forward pass with targets first, with the workspace's settings unchanged since"
                    .into(),
            ));
        };
        match dfinal {
            Some(d) => {
                check_len("final-state gradient h", ws.dh0.len(), d.h.len())?;
                check_len("final-state gradient c", ws.dc0.len(), d.c.len())?;
                ws.dh0.copy_from_slice(&d.h);
                ws.dc0.copy_from_slice(&d.c);
            }
            None => {
                ws.dh0.fill(F::zero());
                ws.dc0.fill(F::zero());
            }
        }
        ws.plan = None;
        self.readout_backward(params, ws, grads, &plan);
        ws.grad_ready.ready(self.w_out..self.len, grads);
        if let Schedule::Wavefront(units) = plan.backward {
            // Every layer's time loop at once; the weight gradients below, layer by layer.
            let (chunk, lengths) = (plan::chunk(plan.steps), &ws.lengths[..]);
            let wave = self.wave(&plan, ws.batch, units, chunk, plan.w_hh_t_backward, lengths);
            let (layers, dh0, dc0) = (&mut ws.layers[..], &mut ws.dh0[..], &mut ws.dc0[..]);
            layer::wavefront::backward_steps(&self.layers, params, layers, dh0, dc0, wave);
        }
        for k in (0..self.config.layers).rev() {
            self.layer_backward(k, params, ws, grads, &plan);
            // Layer k's tensors, each direction's (and, below layer 0, the embedding), are final.
            let d = self.config.directions();
            let (first, last) = (if k == 0 { 0 } else { self.layers[k * d].w_ih }, &self.layers[k * d + d - 1]);
            ws.grad_ready.ready(first..last.end(&self.config), grads);
        }
        Ok(())
    }

    /// A workspace built by another network's [`Net::workspace`] is refused: its buffers have
    /// other sizes.
    fn check_workspace<F: Float>(&self, ws: &Workspace<F>) -> Result<()> {
        if ws.config != self.config {
            return Err(Error::Config(format!(
                "this workspace was built for another network ({:?}, H = {}, {} layers, input {:?}, head {:?}); \
                 make one with this network's Net::workspace",
                ws.config.cell, ws.config.hidden, ws.config.layers, ws.config.input, ws.config.head
            )));
        }
        Ok(())
    }

    /// Layer k's tensor offsets (forward direction: index k·D).
    pub(crate) fn layer_params(&self, k: usize) -> &LayerParams {
        &self.layers[k * self.config.directions()]
    }

    /// The offset of `encoder.weight` (token input only).
    pub(crate) fn encoder_offset(&self) -> Option<usize> {
        self.encoder
    }

    /// The embedding in front of the first layer (token input only).
    fn embedding(&self) -> Option<Embedding> {
        match (self.config.input, self.encoder) {
            (InputKind::Tokens { vocab, embedding_dim }, Some(at)) => Some(Embedding { at, vocab, dim: embedding_dim }),
            _ => None,
        }
    }

    fn dims<F>(&self, plan: &Plan, ws: &Workspace<F>) -> Dims {
        Dims::new(&self.config, plan.steps, ws.batch, plan.threads, plan.precision)
    }

    fn wave<'a>(
        &self,
        plan: &Plan,
        b: usize,
        units: usize,
        chunk: usize,
        w_hh_t: bool,
        lengths: &'a [usize],
    ) -> layer::wavefront::Wave<'a> {
        let dims = Dims::new(&self.config, plan.steps, b, plan.threads, plan.precision);
        layer::wavefront::Wave { dims, rows: 1, units, chunk, w_hh_t, lengths }
    }
}
