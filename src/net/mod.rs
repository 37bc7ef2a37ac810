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
mod config;
mod dropout;
mod layer;
mod readout;
mod workspace;

pub use batch::{Input, State, Target, Targets};
pub use config::{Head, InputKind, LossKind, NetConfig, ParamInfo, Pool};
pub(crate) use config::{LayerParams, Pooling};
pub use dropout::{Dropout, WeightDrop};
pub use workspace::{GradReady, GradValues, Workspace};

use crate::cell::CellKind;
use crate::error::{Error, Result, check_len};
use crate::float::Float;
use crate::kernels::{self, Mat, MatMut};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A network layout: the config plus where each tensor lives in the parameter slab.
///
/// Parameters and gradients are plain `Vec<F>` slabs of [`Net::num_params`] elements with the
/// same layout, in PyTorch `state_dict` order: `encoder.weight` (tokens input only), then per
/// layer `rnn.weight_ih_l{k}`, `rnn.weight_hh_l{k}`, `rnn.bias_ih_l{k}`, `rnn.bias_hh_l{k}`,
/// then `decoder.weight` (O, H) and `decoder.bias` (O).
#[derive(Clone, Debug)]
pub struct Net {
    config: NetConfig,
    params: Vec<ParamInfo>,
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
        let (needed, available) =
            (Workspace::<F>::estimate_bytes(&self.config, max_steps, batch), kernels::machine::available_memory());
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
        let cfg = &self.config;
        check_len("parameter slab", self.len, params.len())?;
        self.check_workspace(ws)?;
        let b = ws.batch;
        // (V, E) of the embedding for token input.
        let (per_step, embedding) = match (cfg.input, input) {
            (InputKind::Dense { size }, Input::Dense(_)) => (b * size, None),
            (InputKind::Tokens { vocab, embedding_dim }, Input::Tokens(_)) => (b, Some((vocab, embedding_dim))),
            _ => return Err(Error::Config("input kind does not match the network's (dense vs tokens)".into())),
        };
        let steps = input.len() / per_step;
        if steps == 0 || steps > ws.max_steps || steps * per_step != input.len() {
            return Err(Error::Config(format!(
                "input of {} values is not T·{per_step} for a T between 1 and {}",
                input.len(),
                ws.max_steps
            )));
        }
        ws.steps = steps;
        ws.ready = false;
        let state_len = cfg.layers * b * cfg.hidden;
        if let Some(s) = init {
            check_len("initial state h", state_len, s.h.len())?;
            check_len("initial state c", if cfg.cell.has_cell_state() { state_len } else { 0 }, s.c.len())?;
        }
        match input {
            Input::Dense(x) => ws.input[..x.len()].copy_from_slice(x),
            Input::Tokens(ids) => {
                let vocab = embedding.map_or(0, |(v, _)| v);
                if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                    return Err(Error::Data(format!("token id {bad} is outside the vocabulary of {vocab}")));
                }
                ws.tokens[..ids.len()].copy_from_slice(ids);
            }
        }
        let bh = b * cfg.hidden;
        // Dropout: every mask of this pass, in a fixed order (the input, then each layer's output).
        let stride = ws.max_steps * bh;
        ws.masked = false;
        if let Some(t) = ws.fixed_masks {
            if t != steps {
                return Err(Error::Config(format!("the dropout masks set are for {t} steps, the input has {steps}")));
            }
            ws.masked = true;
        } else if let Some(d) = ws.dropout {
            let mut rng = dropout::stream(&d);
            let width = embedding.map_or(per_step, |(_, e)| b * e);
            dropout::fill(&mut ws.mask_x, steps, width, &d, &mut rng);
            for k in 0..cfg.layers {
                dropout::fill(&mut ws.mask_h[k * stride..], steps, bh, &d, &mut rng);
            }
            ws.masked = true;
        }
        if ws.masked && embedding.is_none() {
            dropout::scale(&mut ws.input[..steps * per_step], &ws.mask_x);
        }
        let masked = ws.masked;
        for (k, cache) in ws.layers.iter_mut().enumerate() {
            match init {
                Some(s) => {
                    cache.hs[..bh].copy_from_slice(&s.h[k * bh..(k + 1) * bh]);
                    if cfg.cell.has_cell_state() {
                        cache.cs[..bh].copy_from_slice(&s.c[k * bh..(k + 1) * bh]);
                    }
                }
                None => {
                    cache.hs[..bh].fill(F::zero());
                    let n = bh.min(cache.cs.len());
                    cache.cs[..n].fill(F::zero());
                }
            }
        }
        let gh = cfg.cell.gates() * cfg.hidden;
        let wavefront = layer::wavefront::units(cfg, b).filter(|_| ws.wavefront && !masked && ws.lengths.is_empty());
        for (k, lp) in self.layers.iter().enumerate() {
            let (below, rest) = ws.layers.split_at_mut(k);
            let x = if k > 0 && masked {
                let dropped = &mut ws.dropped[(k - 1) * stride..(k - 1) * stride + steps * bh];
                dropout::apply(dropped, &below[k - 1].hs[bh..(steps + 1) * bh], &ws.mask_h[(k - 1) * stride..]);
                layer::LayerInput::Rows(dropped)
            } else if k > 0 {
                layer::LayerInput::Rows(&below[k - 1].hs[bh..(steps + 1) * bh])
            } else if let (Some(enc), Some((vocab, e))) = (self.encoder, embedding)
                && (steps * b < vocab || masked)
            {
                // Fewer tokens than vocabulary entries (or dropout on the embedding output):
                // gather their embedding rows (T·B, E) and project them like dense input.
                ws.gathered = true;
                for (row, &tok) in ws.input.chunks_exact_mut(e).zip(&ws.tokens[..steps * b]) {
                    row.copy_from_slice(&params[enc + tok as usize * e..enc + (tok as usize + 1) * e]);
                }
                if masked {
                    dropout::scale(&mut ws.input[..steps * b * e], &ws.mask_x);
                }
                layer::LayerInput::Rows(&ws.input[..steps * b * e])
            } else if let (Some(enc), Some((vocab, embedding_dim))) = (self.encoder, embedding) {
                // Fold the embedding into the input projection: table = biases + E · W_ihᵀ,
                // (V, G·H), cheaper than projecting T·B ≥ V rows one by one. (The same sums
                // as the layer's own bias + X · W_ihᵀ, so the two paths agree bit for bit.)
                ws.gathered = false;
                let (b_ih, b_hh) = (&params[lp.b_ih..lp.b_ih + gh], &params[lp.b_hh..lp.b_hh + gh]);
                layer::fill_input_bias(cfg.cell, b_ih, b_hh, &mut ws.table[..vocab * gh]);
                kernels::gemm(
                    MatMut::rows(&mut ws.table, vocab, gh),
                    Mat::rows(&params[enc..], vocab, embedding_dim),
                    Mat::rows(&params[lp.w_ih..], gh, embedding_dim).t(),
                    true,
                    ws.threads,
                );
                layer::LayerInput::Table { table: &ws.table, tokens: &ws.tokens[..steps * b] }
            } else {
                layer::LayerInput::Rows(&ws.input[..steps * per_step])
            };
            if let Some(units) = wavefront {
                // All layers at once (k = 0: `rest` is every layer), from the first one's input.
                let hproj = &mut ws.hproj[..];
                layer::wavefront::forward(cfg, &self.layers, params, rest, hproj, x, steps, b, ws.threads, units);
                break;
            }
            let hproj = &mut ws.hproj[..if cfg.cell.recurrent_apart() { b * gh } else { 0 }];
            layer::forward(cfg, lp, params, &mut rest[0], hproj, x, steps, b, ws.threads, &ws.lengths);
        }
        let mut top = &ws.layers[cfg.layers - 1].hs[bh..(steps + 1) * bh];
        if masked {
            let slot = (cfg.layers - 1) * stride;
            let dropped = &mut ws.dropped[slot..slot + steps * bh];
            dropout::apply(dropped, top, &ws.mask_h[slot..]);
            top = dropped;
        }
        let rows = cfg.readout_rows(steps, b);
        let n = rows * cfg.output;
        match cfg.head {
            Head::PerStep => readout::forward(self, params, top, &mut ws.logits[..n], ws.threads),
            Head::Pooled(pool) => {
                let feats = &mut ws.features[..b * cfg.readout_width()];
                readout::pool(pool, top, steps, b, cfg.hidden, &ws.lengths, feats, &mut ws.argmax);
                readout::forward(self, params, feats, &mut ws.logits[..n], ws.threads);
            }
        }
        match targets {
            None => Ok(F::zero()),
            Some(mut t) => {
                if cfg.head == Head::PerStep && !ws.lengths.is_empty() {
                    // Padding never counts: weight 0 from each sequence's length on.
                    if let Some(m) = t.mask {
                        check_len("mask (T·B)", steps * b, m.len())?;
                    }
                    for (k, w) in ws.length_mask[..steps * b].iter_mut().enumerate() {
                        let live = k / b < ws.lengths[k % b];
                        *w = if live { t.mask.map_or(F::one(), |m| m[k]) } else { F::zero() };
                    }
                    t.mask = Some(&ws.length_mask[..steps * b]);
                }
                let loss = readout::loss(cfg, &ws.logits[..n], &mut ws.dlogits[..n], t, rows, ws.threads)?;
                ws.ready = true;
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
    pub fn backward_from<F: Float>(
        &self,
        params: &[F],
        ws: &mut Workspace<F>,
        grads: &mut [F],
        dfinal: Option<&State<F>>,
    ) -> Result<()> {
        let cfg = &self.config;
        check_len("parameter slab", self.len, params.len())?;
        check_len("gradient slab", self.len, grads.len())?;
        self.check_workspace(ws)?;
        if !ws.ready {
            return Err(Error::Config(
                "backward needs a forward pass with targets first, with the workspace's settings unchanged since"
                    .into(),
            ));
        }
        let (steps, b, h) = (ws.steps, ws.batch, cfg.hidden);
        let bh = b * h;
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
        ws.ready = false;
        let last = cfg.layers - 1;
        let (masked, stride) = (ws.masked, ws.max_steps * bh);
        {
            let top = &mut ws.layers[last];
            let slot = last * stride;
            let hs = if masked { &ws.dropped[slot..slot + steps * bh] } else { &top.hs[bh..(steps + 1) * bh] };
            let dh = &mut top.dh[..steps * bh];
            let dlogits = &ws.dlogits[..cfg.readout_rows(steps, b) * cfg.output];
            match cfg.head {
                Head::PerStep => readout::backward(self, params, grads, hs, dlogits, dh, ws.threads),
                Head::Pooled(pool) => {
                    let w = b * cfg.readout_width();
                    let (feats, dfeats) = (&ws.features[..w], &mut ws.dfeatures[..w]);
                    readout::backward(self, params, grads, feats, dlogits, dfeats, ws.threads);
                    readout::unpool(pool, dfeats, steps, b, h, &ws.lengths, &ws.argmax, dh);
                }
            }
            if masked {
                dropout::scale(dh, &ws.mask_h[slot..]);
            }
        }
        ws.grad_ready.ready(self.w_out..self.len, grads);
        let wavefront = layer::wavefront::units(cfg, b)
            .filter(|_| ws.wavefront && !ws.record_dh_norms && !masked && ws.lengths.is_empty());
        if let Some(units) = wavefront {
            // Every layer's time loop at once; the weight gradients below, layer by layer.
            let (layers, dh0, dc0) = (&mut ws.layers[..], &mut ws.dh0[..], &mut ws.dc0[..]);
            let wave =
                layer::wavefront::Wave { steps, b, units, chunk: layer::wavefront::chunk(steps), threads: ws.threads };
            layer::wavefront::backward_steps(cfg, &self.layers, params, layers, dh0, dc0, wave);
        }
        for k in (0..cfg.layers).rev() {
            let lp = &self.layers[k];
            let (below, rest) = ws.layers.split_at_mut(k);
            let cache = &mut rest[0];
            let dh_norms = ws.record_dh_norms.then(|| &mut ws.dh_norms[k * ws.max_steps..k * ws.max_steps + steps]);
            let (x, dx) = if k > 0 {
                let prev = &mut below[k - 1];
                let x = if masked {
                    &ws.dropped[(k - 1) * stride..(k - 1) * stride + steps * bh]
                } else {
                    &prev.hs[bh..(steps + 1) * bh]
                };
                (layer::LayerInput::Rows(x), Some(&mut prev.dh[..steps * bh]))
            } else if self.encoder.is_some() && ws.gathered {
                let n = steps * b * lp.input;
                (layer::LayerInput::Rows(&ws.input[..n]), Some(&mut ws.dinput[..n]))
            } else if self.encoder.is_some() {
                (layer::LayerInput::Table { table: &ws.table, tokens: &ws.tokens[..steps * b] }, None)
            } else {
                let n = steps * b * lp.input;
                (layer::LayerInput::Rows(&ws.input[..n]), ws.input_grad.then(|| &mut ws.dinput[..n]))
            };
            if wavefront.is_some() {
                // dL/dx of the layers above the first went down step by step.
                let dx = if k == 0 { dx } else { None };
                layer::weight_grads(cfg, lp, params, grads, cache, x, dx, steps, b, ws.threads);
            } else {
                let (dh0, dc0) = (&mut ws.dh0[k * bh..(k + 1) * bh], &mut ws.dc0[..]);
                let dc0 = if cfg.cell.has_cell_state() { &mut dc0[k * bh..(k + 1) * bh] } else { &mut dc0[..0] };
                let lengths = &ws.lengths;
                layer::backward(
                    cfg, lp, params, grads, cache, x, dx, dh0, dc0, dh_norms, steps, b, ws.threads, lengths,
                );
            }
            // Through the dropout below this layer (its output's, or the first layer's input's).
            if masked && k > 0 {
                dropout::scale(&mut below[k - 1].dh[..steps * bh], &ws.mask_h[(k - 1) * stride..]);
            } else if masked && (self.encoder.is_some() || ws.input_grad) {
                let n = steps * b * lp.input;
                dropout::scale(&mut ws.dinput[..n], &ws.mask_x);
            }
            if k == 0
                && let Some(enc) = self.encoder
            {
                if ws.gathered {
                    // dE[token] += dx row, for every (t, b).
                    let e = lp.input;
                    for (row, &tok) in ws.dinput.chunks_exact(e).zip(&ws.tokens[..steps * b]) {
                        kernels::add_into(&mut grads[enc + tok as usize * e..enc + (tok as usize + 1) * e], row);
                    }
                } else {
                    self.embedding_backward(params, grads, ws, enc);
                }
            }
            // Layer k's tensors (and, below layer 0, the embedding) are final.
            let gh = cfg.cell.gates() * cfg.hidden;
            let first = if k == 0 { 0 } else { lp.w_ih };
            ws.grad_ready.ready(first..lp.b_hh + gh, grads);
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

    /// With the embedding folded into layer 0 (table = E · W_ihᵀ), the layer's input-side
    /// pre-activation gradients are scattered into dtable (V, G·H); then
    /// dW_ih += dtableᵀ · E and dE += dtable · W_ih, two small GEMMs.
    fn embedding_backward<F: Float>(&self, params: &[F], grads: &mut [F], ws: &mut Workspace<F>, enc: usize) {
        let cfg = &self.config;
        let InputKind::Tokens { vocab, embedding_dim: e } = cfg.input else { return };
        let gh = cfg.cell.gates() * cfg.hidden;
        let n = ws.steps * ws.batch;
        ws.dtable.fill(F::zero());
        let dpre = &ws.layers[0].gates[..n * gh];
        for (row, &tok) in dpre.chunks_exact(gh).zip(&ws.tokens[..n]) {
            kernels::add_into(&mut ws.dtable[tok as usize * gh..(tok as usize + 1) * gh], row);
        }
        let lp = &self.layers[0];
        let (g_enc, g_rest) = grads.split_at_mut(lp.w_ih);
        kernels::gemm(
            MatMut::rows(&mut g_rest[..gh * e], gh, e),
            Mat::rows(&ws.dtable, vocab, gh).t(),
            Mat::rows(&params[enc..], vocab, e),
            true,
            ws.threads,
        );
        kernels::gemm(
            MatMut::rows(&mut g_enc[enc..], vocab, e),
            Mat::rows(&ws.dtable, vocab, gh),
            Mat::rows(&params[lp.w_ih..], gh, e),
            true,
            ws.threads,
        );
    }
}
