//! The reusable workspace: every activation, cache and gradient buffer a forward/backward pair
//! needs for sequences of up to `max_steps` steps and a fixed batch, allocated once.

use crate::error::Result;
use crate::float::Float;
pub(crate) use crate::net::cache::LayerCache;
use crate::net::{Dropout, Head, InputKind, NetConfig, State, plan::Plan};

/// All buffers for one (max_steps, batch, threads) shape; create with [`crate::Net::workspace`].
///
/// Reusing one workspace across steps means no allocation after the first forward pass.
#[derive(Clone, Debug)]
pub struct Workspace<F> {
    pub(crate) max_steps: usize,
    pub(crate) batch: usize,
    pub(crate) threads: usize,
    /// T of the last forward pass.
    pub(crate) steps: usize,
    /// The plan of the last forward pass with targets, until the backward pass runs it.
    pub(crate) plan: Option<Plan>,
    /// The last forward pass's schedule (kept after its backward pass, unlike `plan`).
    pub(crate) schedule: Option<crate::net::plan::Schedule>,
    /// One cache per layer and direction: layer k's direction d is cache k·D + d.
    pub(crate) layers: Vec<LayerCache<F>>,
    /// Bidirectional only (else empty): (L, T, B, 2H) each layer's outputs, the forward and
    /// the reverse direction's h_t side by side, and their gradient; (T, B, max(I, 2H)) a
    /// layer's input rows in each sequence's reverse order, and their gradient.
    pub(crate) outputs: Vec<F>,
    pub(crate) doutputs: Vec<F>,
    pub(crate) reversed: Vec<F>,
    pub(crate) dreversed: Vec<F>,
    /// (T, B, I) copy of the dense input; for tokens, (T, B, E) gathered embedding rows.
    pub(crate) input: Vec<F>,
    /// (T, B) copy of the token ids; empty for dense input.
    pub(crate) tokens: Vec<u32>,
    /// (V, G·H) embedding folded into layer 0's input projection; (V, G·H) its gradient.
    pub(crate) table: Vec<F>,
    pub(crate) dtable: Vec<F>,
    /// (L·D, B, G·H) GRU per-step recurrent projection scratch, one per layer and direction (a
    /// wavefront runs layers at once, a bidirectional layer its two directions).
    pub(crate) hproj: Vec<F>,
    /// (T, B, O) readout outputs and dL/dlogits ((B, O) for a pooled head).
    pub(crate) logits: Vec<F>,
    pub(crate) dlogits: Vec<F>,
    /// A pooled head's (B, P·D·H) features and their gradient, and (B, D·H) the step of each
    /// maximum; empty for a per-step head.
    pub(crate) features: Vec<F>,
    pub(crate) dfeatures: Vec<F>,
    pub(crate) argmax: Vec<u32>,
    /// The network this workspace was built for (a pass of another is refused).
    pub(crate) config: NetConfig,
    /// (T, B, I) dL/dinput for dense input, filled when `input_grad` is set.
    pub(crate) dinput: Vec<F>,
    pub(crate) input_grad: bool,
    /// (L·D, B, H) dL/dh_0 and, for the LSTM, dL/dc_0.
    pub(crate) dh0: Vec<F>,
    pub(crate) dc0: Vec<F>,
    /// (L·D, max_steps) mean over the batch of ‖dL/dh_t‖₂, filled when `record_dh_norms` is set.
    pub(crate) dh_norms: Vec<F>,
    pub(crate) record_dh_norms: bool,
    /// Run stacked layers as a wavefront where the sizes allow (net/layer/wavefront.rs).
    pub(crate) wavefront: bool,
    /// Cut row blocks into rows × units where the sizes allow (`plan::Split::Grid`); `None`:
    /// the plan's default (`plan::grid_by_default`).
    pub(crate) grid: Option<bool>,
    /// The cores this workspace's plans are made for (`set_plan_cores`; `None`: the machine's).
    pub(crate) plan_cores: Option<usize>,
    /// The precision of the products of the next passes (`set_precision`).
    pub(crate) precision: crate::kernels::Precision,
    /// Dropout of the next forward passes (net/dropout.rs); the buffers below exist only then:
    /// (T, B, I) the first layer's input mask, (L, T, B, D·H) each layer's output mask and the
    /// dropped outputs (slot k feeds layer k + 1; the top slot feeds the readout).
    pub(crate) dropout: Option<Dropout>,
    /// Masks set by [`Workspace::set_dropout_masks`], for passes of this many steps.
    pub(crate) fixed_masks: Option<usize>,
    pub(crate) mask_x: Vec<F>,
    pub(crate) mask_h: Vec<F>,
    pub(crate) dropped: Vec<F>,
    /// (B) per-sequence lengths of the next passes (empty: every sequence runs all T steps),
    /// and the (T, B) loss weights they imply.
    pub(crate) lengths: Vec<usize>,
    pub(crate) length_mask: Vec<F>,
    /// Told, during a backward pass, each slab range of the gradient that is final.
    pub(crate) grad_ready: GradHook,
}

/// Receives the slab ranges of the gradient that a backward pass has finished, in the order
/// they finish: the readout's first, then each layer's from the top down (the bottom layer's
/// with the embedding). A range is never written again by that pass, so its values can be sent
/// over the network while the pass goes on (`dist::GradReducer`). The values are lent for the
/// call only: a receiver copies what it keeps (the pass still owns the slab). Called outside
/// the time loop.
pub trait GradReady: Send + Sync {
    /// `range` of the gradient slab is final for this backward pass; `values` are its elements.
    fn ready(&self, range: std::ops::Range<usize>, values: GradValues<'_>);
}

/// The finished elements of a gradient range, in the slab's element type.
#[derive(Clone, Copy, Debug)]
pub enum GradValues<'a> {
    /// An f32 slab's range.
    F32(&'a [f32]),
    /// An f64 slab's range.
    F64(&'a [f64]),
}

/// The workspace's optional [`GradReady`] (a wrapper, so the workspace stays `Clone + Debug`).
#[derive(Clone, Default)]
pub(crate) struct GradHook(pub(crate) Option<std::sync::Arc<dyn GradReady>>);

impl std::fmt::Debug for GradHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "GradHook(set)" } else { "GradHook(none)" })
    }
}

impl GradHook {
    pub(crate) fn ready<F: Float>(&self, range: std::ops::Range<usize>, grads: &[F]) {
        if let Some(h) = &self.0 {
            h.ready(range.clone(), F::values(&grads[range]));
        }
    }
}

impl<F: Float> Workspace<F> {
    pub(crate) fn new(cfg: &NetConfig, max_steps: usize, batch: usize, threads: usize) -> Self {
        let (t, b, h, gh) = (max_steps, batch, cfg.hidden, cfg.cell.gates() * cfg.hidden);
        let z = |n: usize| vec![F::zero(); n];
        let lstm = cfg.cell.has_cell_state();
        let caches = cfg.layers * cfg.directions();
        let p = cfg.state_width();
        let layers = (0..caches).map(|_| LayerCache::new(cfg, t, b)).collect();
        // Token input keeps `input`/`dinput` for the gathered embedding rows (T·B < V).
        let (input, tokens, table) = match cfg.input {
            InputKind::Dense { size } => (t * b * size, 0, 0),
            InputKind::Tokens { vocab, embedding_dim } => (t * b * embedding_dim, t * b, vocab * gh),
        };
        let (outputs, reversed) =
            if cfg.bidirectional { (cfg.layers * t * b * 2 * p, t * b * (input / (t * b)).max(2 * p)) } else { (0, 0) };
        Workspace {
            max_steps,
            batch,
            threads,
            steps: 0,
            plan: None,
            schedule: None,
            layers,
            outputs: z(outputs),
            doutputs: z(outputs),
            reversed: z(reversed),
            dreversed: z(reversed),
            input: z(input),
            tokens: vec![0; tokens],
            table: z(table),
            dtable: z(table),
            hproj: z(if cfg.cell.recurrent_apart() { caches * b * gh } else { 0 }),
            logits: z(t * b * cfg.output),
            dlogits: z(t * b * cfg.output),
            features: z(if cfg.head == Head::PerStep { 0 } else { b * cfg.readout_width() }),
            dfeatures: z(if cfg.head == Head::PerStep { 0 } else { b * cfg.readout_width() }),
            argmax: vec![0; if matches!(cfg.head, Head::Pooled(p) if p.max) { b * cfg.out_width() } else { 0 }],
            config: *cfg,
            dinput: z(input),
            input_grad: false,
            dh0: z(caches * b * p),
            dc0: z(if lstm { caches * b * h } else { 0 }),
            dh_norms: z(caches * t),
            record_dh_norms: false,
            dropout: None,
            lengths: Vec::new(),
            length_mask: Vec::new(),
            fixed_masks: None,
            mask_x: Vec::new(),
            mask_h: Vec::new(),
            dropped: Vec::new(),
            wavefront: crate::net::plan::wavefront_by_default::<F>(cfg),
            grid: None,
            plan_cores: None,
            precision: crate::kernels::Precision::F32,
            grad_ready: GradHook::default(),
        }
    }

    /// The bytes a workspace for `cfg`, `max_steps` and `batch` would hold, computed without
    /// allocating (saturating at `u64::MAX` for sizes that cannot exist).
    pub fn estimate_bytes(cfg: &NetConfig, max_steps: usize, batch: usize) -> u64 {
        let (t, b, h) = (max_steps as u128, batch as u128, cfg.hidden as u128);
        let (gh, l, o) = (cfg.cell.gates() as u128 * h, cfg.layers as u128, cfg.output as u128);
        let (d, p) = (cfg.directions() as u128, cfg.state_width() as u128);
        let per_layer = d * LayerCache::<F>::estimate(cfg, max_steps, batch);
        // (With lengths, each cache also gathers chunks of live rows: `set_lengths`.)
        let first = match cfg.input {
            InputKind::Dense { size } => size,
            InputKind::Tokens { embedding_dim, .. } => embedding_dim,
        };
        let packs = d
            * (LayerCache::<F>::pack_len(cfg, first)
                + (cfg.layers - 1) * LayerCache::<F>::pack_len(cfg, cfg.out_width())) as u128;
        let (input, table) = match cfg.input {
            InputKind::Dense { size } => (t * b * size as u128 * 2, 0),
            InputKind::Tokens { vocab, embedding_dim } => {
                (t * b * (embedding_dim as u128 * 2 + 1), vocab as u128 * gh * 2)
            }
        };
        let pooled = if cfg.head == Head::PerStep { 0 } else { b * (2 * cfg.readout_width() as u128 + d * p) };
        // Bidirectional: each layer's outputs and their gradient, the reversed rows and theirs.
        let width = input / (2 * t * b).max(1);
        let both = if cfg.bidirectional { 2 * l * t * b * 2 * p + 2 * t * b * width.max(2 * p) } else { 0 };
        // f32: each cache's W_hh packed into panels once per pass (`layer::Packing::Panels`),
        // and the deep products' chunk of B (the weight gradients', dL/dx's and a stacked
        // layer's input projection's, G·H wide).
        let panels = if F::NAME == "f32" {
            use crate::kernels::panels::{Panels, deep_scratch_len};
            let widest = (first as u128).max(cfg.out_width() as u128).max(p);
            l * d * Panels::len_for(p, gh).max(Panels::len_for(gh, p)) + deep_scratch_len(widest, gh)
        } else {
            0
        };
        let rest =
            input + table + l * d * b * gh + 2 * t * b * o + l * d * b * (h + p) + l * d * t + pooled + both + panels;
        let bytes = (l * per_layer + packs + rest) * std::mem::size_of::<F>() as u128;
        u64::try_from(bytes).unwrap_or(u64::MAX)
    }

    /// The bytes that bf16 products (`set_precision(Bf16)`) add to a workspace for `cfg`,
    /// `max_steps` and `batch`, computed without allocating: each cache's W_hh packed once per
    /// pass, and the calling thread's packs of both operands of the largest product — a weight
    /// gradient over all T·B rows (`kernels::gemm_at`), which it keeps for reuse.
    pub fn estimate_bf16_bytes(cfg: &NetConfig, max_steps: usize, batch: usize) -> u64 {
        let w = |n: usize| n as u128;
        let (rows, h, p, d) = (w(max_steps) * w(batch), w(cfg.hidden), w(cfg.state_width()), w(cfg.directions()));
        let gh = w(cfg.cell.gates()) * h;
        let first = w(match cfg.input {
            InputKind::Dense { size } => size,
            InputKind::Tokens { embedding_dim, .. } => embedding_dim,
        });
        // (Packed operands round k up to pairs and columns up to 16-wide panels.)
        let pad = |n: u128| n.div_ceil(16) * 16;
        // (W_hhᵀ, (P, G·H), forward; W_hh, (G·H, P), backward.)
        let caches = w(cfg.layers) * d * (p.div_ceil(2) * 2 * pad(gh)).max(gh.div_ceil(2) * 2 * pad(p));
        let widest = first.max(d * p).max(h);
        let layer = rows.div_ceil(2) * 2 * (pad(gh) + pad(widest)) + pad(gh) * pad(widest);
        let readout = rows.div_ceil(2) * 2 * (pad(w(cfg.output)) + pad(w(cfg.readout_width())));
        let bytes = 2 * (caches + layer.max(readout));
        u64::try_from(bytes).unwrap_or(u64::MAX)
    }

    /// Bytes held by the workspace's buffers (activations, caches, gradients of activations).
    pub fn bytes(&self) -> usize {
        let f = std::mem::size_of::<F>();
        let layers: usize = self.layers.iter().map(LayerCache::len).sum();
        let a = [&self.input, &self.table, &self.dtable, &self.hproj, &self.logits, &self.dlogits, &self.features];
        let b = [&self.dfeatures, &self.dinput, &self.dh0, &self.dc0, &self.dh_norms, &self.mask_x, &self.mask_h];
        let c = [&self.dropped, &self.outputs, &self.doutputs, &self.reversed, &self.dreversed];
        let rest = a.iter().chain(&b).chain(&c).map(|v| v.len()).sum::<usize>() + self.argmax.len();
        (layers + rest) * f + self.tokens.len() * 4
    }

    /// I, the first layer's input width per row (E for token input).
    pub(crate) fn input_width(&self) -> usize {
        self.input.len() / (self.max_steps * self.batch)
    }

    /// The longest sequence this workspace holds.
    pub fn max_steps(&self) -> usize {
        self.max_steps
    }

    /// B, the batch size.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// T of the last forward pass.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Threads the GEMMs may use.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs stacked layers (2 to 8) with small batches as a wavefront — layer l + 1 a run of
    /// steps behind layer l — instead of layer by layer. It gives more parts to share, but each
    /// core then keeps weights of every layer in its cache: the default is on for machines with
    /// 4 or more cores whose L2 caches hold them (a property of the machine and the sizes, never
    /// of the thread count). Results agree with the layer-by-layer path to rounding and, either
    /// way, do not depend on the thread count. It applies from the next forward pass on.
    pub fn set_wavefront(&mut self, on: bool) {
        self.wavefront = on;
    }

    /// How the last forward pass's time loops were cut into parts, in words ("layer by layer,
    /// 2 row blocks", "… 2 × 4 row × unit blocks", "a wavefront of 2 unit blocks per layer", …),
    /// or `None` before the first pass. It depends on the sizes and the machine, never on the
    /// thread count.
    pub fn schedule(&self) -> Option<String> {
        self.schedule.map(|s| s.to_string())
    }

    /// Cuts the row blocks of mid-size batches (the plan's row split) into rows × units — the
    /// parts meeting once per step — for machines with more cores than row blocks: B = 32 has
    /// two row blocks, a grid of 2 × 4 at H = 256 (64-unit blocks), or (`false`) keeps the row
    /// blocks. By default the plan decides: a grid on machines with 8 or more cores where a
    /// part's work per step pays for its meeting (a property of the machine and the sizes,
    /// never of the thread count). Results agree with row blocks to rounding and, either way, do
    /// not depend on the thread count. It applies from the next forward pass on.
    pub fn set_grid(&mut self, on: bool) {
        self.grid = Some(on);
    }

    /// Plans this workspace's passes as if the machine had `cores` cores: the grid's default
    /// and a bidirectional layer's row blocks of both directions at once (8+ cores) — to run,
    /// test or predict (`bench --plan --plan-cores`) another machine's schedule here. Results do
    /// not depend on the thread count either way. It applies from the next forward pass on.
    pub fn set_plan_cores(&mut self, cores: usize) {
        self.plan_cores = Some(cores).filter(|&c| c > 0);
    }

    /// The precision of the passes' large products (`--precision`): `Bf16` rounds their
    /// operands to bf16 and accumulates in f32 (`kernels::bf16`) where the data are f32 and the
    /// CPU has AVX512-BF16, else runs f32 (see [`crate::kernels::Precision::effective`]).
    /// Weights, gradients, the cells' math and the loss stay f32; results still do not depend
    /// on the thread count. It applies from the next forward pass on.
    pub fn set_precision(&mut self, precision: crate::kernels::Precision) {
        self.precision = precision;
    }

    /// Sets (or with `None` clears) dropout for the following forward passes; a training loop
    /// sets a fresh seed for each update. The first call with dropout allocates its masks
    /// (about two more activations per layer), so do it before the time loop. The backward pass
    /// uses the masks of the forward pass before it.
    ///
    /// A net with zoneout (`NetConfig::zoneout`) draws its training masks from the same seed:
    /// passes with a `Dropout` set (p = 0 for zoneout alone) are training passes, passes
    /// without one evaluate (the zoneout's expectation), as PyTorch's `train()` / `eval()`.
    pub fn set_dropout(&mut self, dropout: Option<Dropout>) -> Result<()> {
        if let Some(d) = &dropout {
            d.validate()?;
            if d.p > 0.0 {
                self.alloc_masks();
            }
        }
        self.dropout = dropout.filter(|d| d.p > 0.0 || !self.config.zoneout.is_none());
        self.fixed_masks = None;
        // A forward pass made with other masks cannot be differentiated with these.
        self.plan = None;
        Ok(())
    }

    /// Per-sequence lengths for the following passes (`None`: every sequence runs all T steps),
    /// with packed-sequence semantics: from step `lengths[b]` on, sequence b's state is held
    /// (its final state is the one after its last step), its positions count nothing in the
    /// loss (whatever the targets' mask says) and no gradient flows through them. A length
    /// beyond a pass's T means the whole pass. Allocates the (T, B) weights on first use.
    pub fn set_lengths(&mut self, lengths: Option<&[usize]>) -> Result<()> {
        // The next backward pass must follow a forward pass made with these lengths.
        self.plan = None;
        match lengths {
            None => self.lengths.clear(),
            Some(l) => {
                crate::error::check_len("sequence lengths (B)", self.batch, l.len())?;
                if let Some(k) = l.iter().position(|&len| len == 0) {
                    return Err(crate::Error::Data(format!("sequence {k} has length 0: every sequence needs a step")));
                }
                if self.length_mask.is_empty() {
                    self.length_mask = vec![F::zero(); self.max_steps * self.batch];
                    // The chunks of live rows the weight gradients gather (`layer::weight_grads`).
                    let (cfg, d, first) = (self.config, self.config.directions(), self.input_width());
                    for (c, cache) in self.layers.iter_mut().enumerate() {
                        let input = if c < d { first } else { cfg.out_width() };
                        cache.pack = vec![F::zero(); LayerCache::<F>::pack_len(&cfg, input)];
                    }
                }
                self.lengths.clear();
                self.lengths.extend_from_slice(l);
            }
        }
        Ok(())
    }

    /// Fixed dropout masks for the following forward passes of T steps, instead of drawn ones
    /// (to compare with another framework given the same masks): `input` (T, B, I) multiplies
    /// the first layer's input (for tokens, the embedding output, I = E) and `outputs`
    /// (L, T, B, H) each layer's output, the top one's before the readout. The values are the
    /// scaled masks (0 or 1/(1 − p)). [`Workspace::set_dropout`] replaces them.
    pub fn set_dropout_masks(&mut self, input: &[F], outputs: &[F]) -> Result<()> {
        let (b, h) = (self.batch, self.config.out_width());
        let width = self.input_width();
        let t = input.len() / (b * width).max(1);
        if t == 0 || t > self.max_steps || input.len() != t * b * width {
            return Err(crate::Error::Config(format!(
                "an input dropout mask of {} values is not T·{} for a T between 1 and {}",
                input.len(),
                b * width,
                self.max_steps
            )));
        }
        crate::error::check_len(
            "layer-output dropout masks (L·T·B·D·H)",
            self.config.layers * t * b * h,
            outputs.len(),
        )?;
        self.alloc_masks();
        self.mask_x[..input.len()].copy_from_slice(input);
        let stride = self.max_steps * b * h;
        for (k, m) in outputs.chunks_exact(t * b * h).enumerate() {
            self.mask_h[k * stride..k * stride + m.len()].copy_from_slice(m);
        }
        self.dropout = None;
        self.fixed_masks = Some(t);
        self.plan = None;
        Ok(())
    }

    /// The mask buffers, allocated on first use.
    fn alloc_masks(&mut self) {
        if self.mask_x.is_empty() {
            let tbh = self.max_steps * self.batch * self.config.out_width();
            self.mask_x = vec![F::zero(); self.input.len()];
            self.mask_h = vec![F::zero(); self.config.layers * tbh];
            self.dropped = vec![F::zero(); self.config.layers * tbh];
        }
    }

    /// Changes the thread count (results are identical at any setting).
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
    }

    /// Sets (or clears) the receiver of finished gradient ranges (see [`GradReady`]).
    pub fn set_grad_ready(&mut self, hook: Option<std::sync::Arc<dyn GradReady>>) {
        self.grad_ready = GradHook(hook);
    }

    /// Also compute dL/dinput (dense input only) in the backward pass, from the next forward
    /// pass on (a backward pass runs the plan its forward made).
    pub fn set_input_grad(&mut self, on: bool) {
        self.input_grad = on;
    }

    /// Record ‖dL/dh_t‖ per step and layer in the backward pass (see [`Workspace::dh_norms`]),
    /// from the next forward pass on (a backward pass runs the plan its forward made).
    pub fn set_record_dh_norms(&mut self, on: bool) {
        self.record_dh_norms = on;
    }

    /// The readout outputs of the last forward pass (logits for cross-entropy): (T, B, O) for a
    /// per-step head, (B, O) for a pooled one.
    pub fn logits(&self) -> &[F] {
        &self.logits[..self.config.readout_rows(self.steps, self.batch) * self.config.output]
    }

    /// (T, B, D·H) outputs of layer `layer` for steps 1..=T of the last forward pass: its
    /// hidden states (bidirectional: both directions' h_t side by side, zeros in the reverse
    /// half past each sequence's length).
    pub fn hidden_states(&self, layer: usize) -> &[F] {
        let bh = self.batch * self.config.state_width();
        if self.config.bidirectional {
            let n = self.max_steps * 2 * bh;
            return &self.outputs[layer * n..layer * n + self.steps * 2 * bh];
        }
        &self.layers[layer].hs[bh..(self.steps + 1) * bh]
    }

    /// The state after the last step of the last forward pass.
    pub fn final_state(&self) -> State<F> {
        let mut s = State { h: Vec::new(), c: Vec::new() };
        self.state_at(self.steps, &mut s);
        s
    }

    /// Writes the state after step `t` (0 = the initial state) of the last forward pass into
    /// `out`, reusing its buffers. (A reverse direction's state is its own after t of its steps:
    /// only t = T, its final state, is a state of the whole sequence.)
    pub fn state_at(&self, t: usize, out: &mut State<F>) {
        let (bp, bh) = (self.batch * self.config.state_width(), self.batch * self.config.hidden);
        let t = t.min(self.steps);
        out.h.clear();
        out.c.clear();
        for l in &self.layers {
            out.h.extend_from_slice(&l.hs[t * bp..(t + 1) * bp]);
            if self.config.cell.has_cell_state() {
                out.c.extend_from_slice(&l.cs[t * bh..(t + 1) * bh]);
            }
        }
    }

    /// (T, B, I) dL/dinput of the last backward pass (needs [`Workspace::set_input_grad`]).
    pub fn input_grad(&self) -> &[F] {
        &self.dinput[..self.steps * self.batch * self.input_width()]
    }

    /// dL/d(initial state) of the last backward pass: h (L·D, B, H) and, for the LSTM, c.
    pub fn initial_state_grad(&self) -> State<F> {
        State { h: self.dh0.clone(), c: self.dc0.clone() }
    }

    /// Mean over the batch of ‖dL/dh_t‖₂ for `layer`, t = 0..T (the total gradient reaching
    /// h_t, from its own output and from the future), recorded by the last backward pass.
    /// Bidirectional: `layer` k·2 + d, d = 1 the reverse direction in its own step order.
    pub fn dh_norms(&self, layer: usize) -> &[F] {
        let start = layer.min(self.layers.len() - 1) * self.max_steps;
        &self.dh_norms[start..start + self.steps]
    }
}
