//! The calls `Net::forward` and `Net::backward_from` make, in their order — input, masks, state,
//! layers, readout, loss; then readout, layers (top down) — each running what the plan decided.

use super::plan::Split;
use super::workspace::LayerCache;
use super::*;

impl Net {
    /// Copies the input into the workspace (checking token ids and the initial state's size).
    pub(super) fn load_input<F: Float>(
        &self,
        ws: &mut Workspace<F>,
        input: Input<'_, F>,
        init: Option<&State<F>>,
    ) -> Result<()> {
        let cfg = &self.config;
        let rows = cfg.layers * cfg.directions() * ws.batch;
        if let Some(s) = init {
            check_len("initial state h", rows * cfg.state_width(), s.h.len())?;
            check_len("initial state c", if cfg.cell.has_cell_state() { rows * cfg.hidden } else { 0 }, s.c.len())?;
        }
        match input {
            Input::Dense(x) => ws.input[..x.len()].copy_from_slice(x),
            Input::Tokens(ids) => {
                let vocab = self.embedding().map_or(0, |e| e.vocab);
                if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                    return Err(Error::Data(format!("token id {bad} is outside the vocabulary of {vocab}")));
                }
                ws.tokens[..ids.len()].copy_from_slice(ids);
            }
        }
        Ok(())
    }

    /// Dropout: every mask of this pass, in a fixed order (the input, then each layer's output),
    /// unless fixed masks were set; dense input is scaled by its mask here. Zoneout: each
    /// layer's (and direction's) masks of h, then of c, from their own stream of the same seed
    /// in a training pass, else their expectation.
    pub(super) fn draw_masks<F: Float>(&self, ws: &mut Workspace<F>, plan: &Plan) {
        let (steps, bo) = (plan.steps, ws.batch * self.config.out_width());
        let stride = ws.max_steps * bo;
        let z = self.config.zoneout;
        if !z.is_none() {
            // (h is P wide with a projection, c H wide.)
            let n = |w: usize| steps * ws.batch * w;
            let (nh, nc) = (n(self.config.state_width()), n(self.config.hidden));
            let mut rng = ws.dropout.map(|d| zoneout::stream(&d));
            for cache in ws.layers.iter_mut() {
                for (mask, rate, n) in [(&mut cache.zone_h, z.h, nh), (&mut cache.zone_c, z.c, nc)] {
                    if mask.is_empty() {
                        continue;
                    }
                    match rng.as_mut() {
                        Some(rng) => zoneout::fill(&mut mask[..n], rate, rng),
                        None => zoneout::fill_mean(&mut mask[..n], rate),
                    }
                }
            }
        }
        if let (None, Some(d)) = (ws.fixed_masks, ws.dropout.filter(|d| d.p > 0.0)) {
            let mut rng = dropout::stream(&d);
            let width = ws.batch * ws.input_width(); // B·I values per step (I = E for tokens)
            dropout::fill(&mut ws.mask_x, steps, width, &d, &mut rng);
            for k in 0..self.config.layers {
                dropout::fill(&mut ws.mask_h[k * stride..], steps, bo, &d, &mut rng);
            }
        }
        if plan.masked && plan.input == InputPath::Dense {
            let n = steps * ws.batch * ws.input_width();
            dropout::scale(&mut ws.input[..n], &ws.mask_x);
        }
    }

    /// Each layer's initial state: `init`, or zeros.
    pub(super) fn load_state<F: Float>(&self, ws: &mut Workspace<F>, init: Option<&State<F>>) {
        let (bh, bp) = (ws.batch * self.config.hidden, ws.batch * self.config.state_width());
        let lstm = self.config.cell.has_cell_state();
        for (k, cache) in ws.layers.iter_mut().enumerate() {
            match init {
                Some(s) => {
                    cache.hs[..bp].copy_from_slice(&s.h[k * bp..(k + 1) * bp]);
                    if lstm {
                        cache.cs[..bh].copy_from_slice(&s.c[k * bh..(k + 1) * bh]);
                    }
                }
                None => {
                    cache.hs[..bp].fill(F::zero());
                    let n = bh.min(cache.cs.len());
                    cache.cs[..n].fill(F::zero());
                }
            }
        }
    }

    /// The first layer's input rows by the plan's path (gathering or folding the embedding).
    fn first_input<'w, F: Float>(&self, params: &[F], ws: &'w mut Workspace<F>, plan: &Plan) -> LayerInput<'w, F> {
        let n = plan.steps * ws.batch;
        let width = ws.input_width();
        match (plan.input, self.embedding()) {
            (InputPath::Gathered, Some(e)) => {
                e.gather(params, ws, n);
                if plan.masked {
                    dropout::scale(&mut ws.input[..n * e.dim], &ws.mask_x);
                }
                LayerInput::Rows(&ws.input[..n * e.dim])
            }
            (InputPath::Folded, Some(e)) => {
                e.fold(&self.dims(plan, ws), &self.layers[0], params, &mut ws.table);
                LayerInput::Table { table: &ws.table, tokens: &ws.tokens[..n] }
            }
            _ => LayerInput::Rows(&ws.input[..n * width]),
        }
    }

    /// Every layer's time loop, bottom up (or all at once as a wavefront); a bidirectional
    /// layer runs its forward direction, then its reverse one over the reversed rows, and joins
    /// their outputs.
    pub(super) fn layers_forward<F: Float>(&self, params: &[F], ws: &mut Workspace<F>, plan: &Plan) {
        let cfg = &self.config;
        // h: the state's width (P with a projection).
        let (b, steps, h) = (ws.batch, plan.steps, cfg.state_width());
        let (bh, bo, gh) = (b * h, b * cfg.out_width(), cfg.cell.gates() * cfg.hidden);
        let (d, stride) = (cfg.directions(), ws.max_steps * bo);
        let dims = self.dims(plan, ws);
        // The caches and the buffers the layers write are lent out of the workspace while each
        // layer's input (which reads other buffers of it) is prepared.
        let mut lent = Lent::take(ws);
        if let Schedule::Wavefront(units) = plan.forward {
            // All layers at once, from the first one's input.
            let wave = self.wave(plan, b, units, plan::chunk(steps), plan.w_hh_t_forward, &lent.lengths);
            let x = self.first_input(params, ws, plan);
            layer::wavefront::forward(&self.layers, params, &mut lent.caches, &mut lent.hproj, x, wave);
            return lent.give_back(ws);
        }
        let split = match plan.forward {
            Schedule::Layers(split) => split,
            Schedule::Directions(rows) if rows > 1 => Split::Rows(rows),
            _ => Split::Whole,
        };
        let pass = Pass { dims, split, w_hh_t: plan.w_hh_t_forward, lengths: &lent.lengths };
        // The GRU's scratch: one per direction (both run at once under `Schedule::Directions`).
        let (hproj, hproj_r) = lent.hproj.split_at_mut(if cfg.cell.recurrent_apart() { b * gh } else { 0 });
        let hproj_r = &mut hproj_r[..if d == 2 { hproj.len() } else { 0 }];
        for k in 0..cfg.layers {
            let (lower, upper) = lent.caches.split_at_mut(k * d);
            let (out_lower, out_upper) = lent.outputs.split_at_mut(if d == 2 { k * stride } else { 0 });
            let x = if k == 0 {
                self.first_input(params, ws, plan)
            } else {
                let below = if d == 2 { &out_lower[(k - 1) * stride..][..steps * bo] } else { &lower[k - 1].hs[bh..] };
                let below = &below[..steps * bo];
                if plan.masked {
                    let dropped = &mut ws.dropped[(k - 1) * stride..][..steps * bo];
                    dropout::apply(dropped, below, &ws.mask_h[(k - 1) * stride..]);
                    LayerInput::Rows(dropped)
                } else {
                    LayerInput::Rows(below)
                }
            };
            if d == 1 {
                layer::forward(&pass, &self.layers[k], params, &mut upper[0], hproj, x);
                continue;
            }
            let LayerInput::Rows(x) = x else { unreachable!("the plan gathers a bidirectional net's token rows") };
            let ([fwd, rev, ..], w) = (upper, x.len() / (steps * b)) else { unreachable!("two caches per layer") };
            let rv = Reverse { steps, b, lengths: pass.lengths };
            rv.copy(x, &mut lent.reversed, w);
            let (xr, lps) = (&lent.reversed[..steps * b * w], [&self.layers[2 * k], &self.layers[2 * k + 1]]);
            if matches!(plan.forward, Schedule::Directions(_)) {
                layer::forward_pair(&pass, lps, params, [&mut *fwd, &mut *rev], [&mut *hproj, &mut *hproj_r], [x, xr]);
            } else {
                layer::forward(&pass, lps[0], params, fwd, hproj, LayerInput::Rows(x));
                layer::forward(&pass, lps[1], params, rev, hproj, LayerInput::Rows(xr));
            }
            rv.join(&fwd.hs[bh..], &rev.hs[bh..], &mut out_upper[..steps * bo], h);
        }
        lent.give_back(ws);
    }

    /// Layer k's outputs (T·B, D·H) of this pass: its h_t, or both directions' side by side.
    fn output<'w, F: Float>(&self, ws: &'w Workspace<F>, k: usize, steps: usize) -> &'w [F] {
        let bo = ws.batch * self.config.out_width();
        if self.config.bidirectional {
            &ws.outputs[k * ws.max_steps * bo..][..steps * bo]
        } else {
            &ws.layers[k].hs[bo..(steps + 1) * bo]
        }
    }

    /// The top layer's outputs (through their dropout) into the readout: per step, or pooled.
    pub(super) fn readout_forward<F: Float>(&self, params: &[F], ws: &mut Workspace<F>, plan: &Plan) {
        let cfg = &self.config;
        let (b, steps, bo) = (ws.batch, plan.steps, ws.batch * cfg.out_width());
        let dims = Dims { h: cfg.out_width(), ..self.dims(plan, ws) };
        let slot = (cfg.layers - 1) * ws.max_steps * bo;
        let n = cfg.readout_rows(steps, b) * cfg.output;
        // What the readout writes, lent out while it reads the top layer's outputs.
        use std::mem::take;
        let (mut dropped, mut logits) = (take(&mut ws.dropped), take(&mut ws.logits));
        let (mut feats, mut argmax) = (take(&mut ws.features), take(&mut ws.argmax));
        let mut top = self.output(ws, cfg.layers - 1, steps);
        if plan.masked {
            let d = &mut dropped[slot..slot + steps * bo];
            dropout::apply(d, top, &ws.mask_h[slot..]);
            top = d;
        }
        match cfg.head {
            Head::PerStep => readout::forward(self, params, top, &mut logits[..n], plan.threads, plan.precision),
            Head::Pooled(pool) => {
                let reverse = if cfg.bidirectional { cfg.state_width() } else { 0 };
                let f = &mut feats[..b * cfg.readout_width()];
                readout::pool(pool, top, &dims, &ws.lengths, reverse, f, &mut argmax);
                readout::forward(self, params, f, &mut logits[..n], plan.threads, plan.precision);
            }
        }
        (ws.dropped, ws.logits, ws.features, ws.argmax) = (dropped, logits, feats, argmax);
    }

    /// The loss of the pass and dL/dlogits; padding (with lengths) never counts.
    pub(super) fn loss<'w, F: Float>(&self, ws: &'w mut Workspace<F>, plan: &Plan, mut t: Targets<'w, F>) -> Result<F> {
        let cfg = &self.config;
        let (b, steps) = (ws.batch, plan.steps);
        if cfg.head == Head::PerStep && plan.lengths {
            if let Some(m) = t.mask {
                check_len("mask (T·B)", steps * b, m.len())?;
            }
            for (k, w) in ws.length_mask[..steps * b].iter_mut().enumerate() {
                let live = k / b < ws.lengths[k % b];
                *w = if live { t.mask.map_or(F::one(), |m| m[k]) } else { F::zero() };
            }
            t.mask = Some(&ws.length_mask[..steps * b]);
        }
        let rows = cfg.readout_rows(steps, b);
        let n = rows * cfg.output;
        readout::loss(cfg, &ws.logits[..n], &mut ws.dlogits[..n], t, rows, plan.threads)
    }

    /// The readout's gradients, and dL/d(the top layer's outputs) through their dropout.
    pub(super) fn readout_backward<F: Float>(&self, params: &[F], ws: &mut Workspace<F>, grads: &mut [F], plan: &Plan) {
        let cfg = &self.config;
        let (b, steps, bo) = (ws.batch, plan.steps, ws.batch * cfg.out_width());
        let last = cfg.layers - 1;
        let slot = last * ws.max_steps * bo;
        let dims = Dims { h: cfg.out_width(), ..self.dims(plan, ws) };
        // dL/d(outputs) of the top layer: its dL/dh_t, or (bidirectional) both directions'.
        let mut dout = std::mem::take(if cfg.bidirectional { &mut ws.doutputs } else { &mut ws.layers[last].dh });
        let at = if cfg.bidirectional { slot } else { 0 };
        let dh = &mut dout[at..at + steps * bo];
        let hs = if plan.masked { &ws.dropped[slot..slot + steps * bo] } else { self.output(ws, last, steps) };
        let dlogits = &ws.dlogits[..cfg.readout_rows(steps, b) * cfg.output];
        match cfg.head {
            Head::PerStep => readout::backward(self, params, grads, hs, dlogits, dh, plan.threads, plan.precision),
            Head::Pooled(pool) => {
                let w = b * cfg.readout_width();
                let mut dfeats = std::mem::take(&mut ws.dfeatures);
                let (feats, df) = (&ws.features[..w], &mut dfeats[..w]);
                readout::backward(self, params, grads, feats, dlogits, df, plan.threads, plan.precision);
                let last_half = if cfg.bidirectional { cfg.state_width() } else { 0 };
                readout::unpool(pool, df, &dims, &ws.lengths, last_half, &ws.argmax, dh);
                ws.dfeatures = dfeats;
            }
        }
        if plan.masked {
            dropout::scale(dh, &ws.mask_h[slot..]);
        }
        *(if cfg.bidirectional { &mut ws.doutputs } else { &mut ws.layers[last].dh }) = dout;
    }

    /// Layer k's backward pass (its time loop, unless the wavefront ran it) and weight
    /// gradients — each direction's, a bidirectional layer's reverse one over the reversed rows
    /// — then dL/d(its input) through the dropout below it, and the embedding's.
    pub(super) fn layer_backward<F: Float>(
        &self,
        k: usize,
        params: &[F],
        ws: &mut Workspace<F>,
        grads: &mut [F],
        plan: &Plan,
    ) {
        let cfg = &self.config;
        // h: the state's width (P with a projection).
        let (b, steps, h, d) = (ws.batch, plan.steps, cfg.state_width(), cfg.directions());
        let (bh, bo, n) = (b * h, b * cfg.out_width(), plan.steps * ws.batch);
        let stride = ws.max_steps * bo;
        let dims = self.dims(plan, ws);
        let embedding = self.embedding();
        let width = self.layers[k * d].input;
        let mut lent = Lent::take(ws);
        let mut douts = std::mem::take(&mut ws.doutputs);
        let split = (k * stride).min(douts.len());
        let (d_lower, d_upper) = douts.split_at_mut(split);
        let (lower, upper) = lent.caches.split_at_mut(k * d);
        let bc = b * cfg.hidden;
        let mut carry = CarryBufs { dh0: &mut ws.dh0, dc0: &mut ws.dc0, norms: &mut ws.dh_norms, bh, bc, plan };
        // This layer's input rows, and where dL/d(them) goes (the layer below's dL/d(outputs)).
        let (x, dx) = if k > 0 {
            let x = if plan.masked {
                &ws.dropped[(k - 1) * stride..][..steps * bo]
            } else if d == 2 {
                &lent.outputs[(k - 1) * stride..][..steps * bo]
            } else {
                &lower[k - 1].hs[bh..(steps + 1) * bh]
            };
            let dx =
                if d == 2 { &mut d_lower[(k - 1) * stride..][..steps * bo] } else { &mut lower[k - 1].dh[..n * h] };
            (LayerInput::Rows(x), Some(dx))
        } else if plan.input == InputPath::Folded {
            (LayerInput::Table { table: &ws.table, tokens: &ws.tokens[..n] }, None)
        } else {
            let wants = plan.input == InputPath::Gathered || plan.input_grad;
            (LayerInput::Rows(&ws.input[..n * width]), wants.then(|| &mut ws.dinput[..n * width]))
        };
        match (plan.backward, d) {
            // dL/dx of the layers above the first went down step by step.
            (Schedule::Wavefront(_), _) => {
                let dx = if k == 0 { dx } else { None };
                layer::weight_grads(
                    &dims,
                    &lent.lengths,
                    &self.layers[k],
                    params,
                    grads,
                    &mut upper[0],
                    Below { x, dx },
                );
            }
            (Schedule::Layers(split), 1) => {
                let pass = Pass { dims, split, w_hh_t: plan.w_hh_t_backward, lengths: &lent.lengths };
                let below = Below { x, dx };
                layer::backward(&pass, &self.layers[k], params, grads, &mut upper[0], below, carry.of(k, ws.max_steps));
            }
            (schedule, _) => {
                let split = match schedule {
                    Schedule::Layers(split) => split,
                    Schedule::Directions(rows) if rows > 1 => Split::Rows(rows),
                    _ => Split::Whole,
                };
                let pass = Pass { dims, split, w_hh_t: plan.w_hh_t_backward, lengths: &lent.lengths };
                let LayerInput::Rows(x) = x else { unreachable!("the plan gathers a bidirectional net's token rows") };
                let [fwd, rev, ..] = upper else { unreachable!("two caches per layer") };
                let rv = Reverse { steps, b, lengths: pass.lengths };
                rv.split(&d_upper[..steps * bo], &mut fwd.dh, &mut rev.dh, h);
                rv.copy(x, &mut lent.reversed, width);
                let (xr, lps) = (&lent.reversed[..n * width], [&self.layers[2 * k], &self.layers[2 * k + 1]]);
                let mut dx = dx;
                let dxr = dx.is_some().then(|| &mut ws.dreversed[..n * width]);
                let (below, below_r) = (
                    Below { x: LayerInput::Rows(x), dx: dx.as_deref_mut() },
                    Below { x: LayerInput::Rows(xr), dx: dxr },
                );
                if matches!(schedule, Schedule::Directions(_)) {
                    let carries = carry.pair(2 * k);
                    layer::backward_pair(&pass, lps, params, grads, [fwd, rev], [below, below_r], carries);
                } else {
                    layer::backward(&pass, lps[0], params, grads, fwd, below, carry.of(2 * k, ws.max_steps));
                    layer::backward(&pass, lps[1], params, grads, rev, below_r, carry.of(2 * k + 1, ws.max_steps));
                }
                if let Some(dx) = dx {
                    rv.add(&ws.dreversed, dx, width);
                }
            }
        }
        lent.give_back(ws);
        ws.doutputs = douts;
        // Through the dropout below this layer (its output's, or the first layer's input's).
        if plan.masked && k > 0 {
            let dy = if d == 2 { &mut ws.doutputs[(k - 1) * stride..] } else { &mut ws.layers[k - 1].dh[..] };
            dropout::scale(&mut dy[..steps * bo], &ws.mask_h[(k - 1) * stride..]);
        } else if plan.masked && (embedding.is_some() || plan.input_grad) {
            dropout::scale(&mut ws.dinput[..n * width], &ws.mask_x);
        }
        match (k, plan.input, embedding) {
            (0, InputPath::Gathered, Some(e)) => e.scatter(grads, &ws.dinput[..n * e.dim], &ws.tokens[..n]),
            (0, InputPath::Folded, Some(e)) => e.unfold(&dims, &self.layers[0], params, grads, ws),
            _ => {}
        }
    }
}

/// The workspace's dL/d(state) and norm buffers, from which each cache's [`Carry`] is cut.
struct CarryBufs<'a, F> {
    dh0: &'a mut [F],
    dc0: &'a mut [F],
    norms: &'a mut [F],
    /// B·P (the state h) and B·H (the cell state c).
    bh: usize,
    bc: usize,
    plan: &'a Plan,
}

impl<F> CarryBufs<'_, F> {
    /// Cache c's gradient carried between steps: its slices of dL/d(final state) (in) and
    /// dL/d(initial state) (out), and of the per-step norms when the plan records them.
    fn of(&mut self, c: usize, max_steps: usize) -> Carry<'_, F> {
        let (bh, bc) = (self.bh, self.bc);
        let dc0 = if self.dc0.is_empty() { &mut self.dc0[..0] } else { &mut self.dc0[c * bc..(c + 1) * bc] };
        let t = max_steps;
        let dh_norms = self.plan.dh_norms.then(|| &mut self.norms[c * t..c * t + self.plan.steps]);
        Carry { dh_next: &mut self.dh0[c * bh..(c + 1) * bh], dc_next: dc0, dh_norms }
    }

    /// Caches c and c + 1 (a bidirectional layer's directions) at once, for a schedule that
    /// records no norms (`Schedule::Directions`).
    fn pair(&mut self, c: usize) -> [Carry<'_, F>; 2] {
        let (bh, bc) = (self.bh, self.bc);
        let (h0, h1) = self.dh0[c * bh..(c + 2) * bh].split_at_mut(bh);
        let (c0, c1) = if self.dc0.is_empty() {
            (<&mut [F]>::default(), <&mut [F]>::default())
        } else {
            self.dc0[c * bc..(c + 2) * bc].split_at_mut(bc)
        };
        [Carry { dh_next: h0, dc_next: c0, dh_norms: None }, Carry { dh_next: h1, dc_next: c1, dh_norms: None }]
    }
}

/// The buffers a pass writes layer by layer, lent out of the workspace while the layers' inputs
/// (other buffers of it) are read.
struct Lent<F> {
    caches: Vec<LayerCache<F>>,
    hproj: Vec<F>,
    outputs: Vec<F>,
    reversed: Vec<F>,
    lengths: Vec<usize>,
}

impl<F> Lent<F> {
    fn take(ws: &mut Workspace<F>) -> Self {
        use std::mem::take;
        Lent {
            caches: take(&mut ws.layers),
            hproj: take(&mut ws.hproj),
            outputs: take(&mut ws.outputs),
            reversed: take(&mut ws.reversed),
            lengths: take(&mut ws.lengths),
        }
    }

    fn give_back(self, ws: &mut Workspace<F>) {
        (ws.layers, ws.hproj, ws.outputs, ws.reversed, ws.lengths) =
            (self.caches, self.hproj, self.outputs, self.reversed, self.lengths);
    }
}
