//! A net's configuration and parameter layout: the sizes and kinds (`NetConfig`, inputs,
//! losses, heads), where each tensor sits in the one parameter slab, and its PyTorch initialisation.

use super::*;

/// What the first layer reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// Real-valued inputs of width `size`: (T, B, size).
    Dense {
        /// I, the input width.
        size: usize,
    },
    /// Token ids in `0..vocab`, looked up in an embedding table (`encoder.weight`, (V, E)).
    Tokens {
        /// V, the vocabulary size.
        vocab: usize,
        /// E, the embedding width.
        embedding_dim: usize,
    },
}

/// The per-step loss on the readout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossKind {
    /// Softmax cross-entropy against class ids in `0..output`.
    CrossEntropy,
    /// Squared error against real targets, averaged over the `output` components.
    Mse,
}

/// Which top-layer outputs the readout reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Head {
    /// A readout at every step: logits (T, B, O), a loss per position (language models,
    /// per-step labels). Its tensors are `decoder.weight` (O, H) and `decoder.bias`.
    #[default]
    PerStep,
    /// One readout per sequence from features pooled over each sequence's own steps (see
    /// [`Pool`]): logits (B, O), a loss per sequence (classification, regression). Its tensors
    /// are `head.weight` (O, P·H) and `head.bias`, P the number of poolings.
    Pooled(Pool),
}

/// The poolings of a [`Head::Pooled`] readout over the top layer's outputs h_1..h_len of each
/// sequence (len its own length, so padding never counts): each chosen one gives H features,
/// concatenated in the order last, mean, max.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    /// h_len, the output after the sequence's last step.
    pub last: bool,
    /// (1/len) Σ_t h_t.
    pub mean: bool,
    /// The element-wise maximum over t (its gradient goes to the step that attained it; the
    /// first one on ties).
    pub max: bool,
}

/// One pooling over time (see [`Pool`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pooling {
    Last,
    Mean,
    Max,
}

impl Pool {
    /// The poolings chosen, in feature order (last, mean, max).
    pub(crate) fn kinds(&self) -> impl Iterator<Item = Pooling> + use<> {
        let chosen = [(self.last, Pooling::Last), (self.mean, Pooling::Mean), (self.max, Pooling::Max)];
        chosen.into_iter().filter(|(on, _)| *on).map(|(_, k)| k)
    }

    /// P, the number of poolings chosen.
    pub fn count(&self) -> usize {
        usize::from(self.last) + usize::from(self.mean) + usize::from(self.max)
    }

    /// `last`, `mean`, `max` joined by `+`, e.g. `last+mean`.
    pub fn name(&self) -> String {
        let names = [(self.last, "last"), (self.mean, "mean"), (self.max, "max")];
        names.iter().filter(|(on, _)| *on).map(|(_, n)| *n).collect::<Vec<_>>().join("+")
    }
}

impl std::str::FromStr for Pool {
    type Err = Error;

    /// Parses `last`, `mean`, `max` joined by `+` (any order, each at most once).
    fn from_str(s: &str) -> Result<Self> {
        let mut pool = Pool { last: false, mean: false, max: false };
        for part in s.split('+') {
            let slot = match part.trim() {
                "last" => &mut pool.last,
                "mean" => &mut pool.mean,
                "max" => &mut pool.max,
                other => {
                    return Err(Error::Config(format!(
                        "pooling '{other}' is unknown: use last, mean, max or a sum such as last+mean"
                    )));
                }
            };
            if *slot {
                return Err(Error::Config(format!("pooling '{s}' names '{}' twice", part.trim())));
            }
            *slot = true;
        }
        Ok(pool)
    }
}

/// Sizes and kinds: plain data, everything a [`Net`] is built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The recurrent cell of every layer.
    pub cell: CellKind,
    /// What the first layer reads.
    pub input: InputKind,
    /// H, the hidden width of every layer.
    pub hidden: usize,
    /// L, the number of stacked layers.
    pub layers: usize,
    /// O, the readout width (classes for cross-entropy).
    pub output: usize,
    /// The loss (per step or per sequence, see `head`).
    pub loss: LossKind,
    /// What the readout reads: every step, or features pooled per sequence.
    pub head: Head,
    /// Every layer also runs a reverse direction over each sequence (from its own last step to
    /// its first), PyTorch's `bidirectional=True`: a layer's output at step t is the forward
    /// and the reverse direction's h_t concatenated (2H), the next layer's input and the
    /// readout's; the reverse tensors are named `…_reverse` and the state is (2L, B, H), layer
    /// by layer, forward first.
    pub bidirectional: bool,
    /// P: 0, or (LSTM only) a projection of every layer's output to P < H values, PyTorch's
    /// `proj_size`: h_t = W_hr (o_t ⊙ tanh c_t) (`weight_hr_l{k}`, (P, H)), so h, the next
    /// layer's input and the readout are P wide and W_hh is (4H, P); c stays H wide.
    pub proj_size: usize,
    /// (LSTM only) the LayerNorm-LSTM of Ba, Kiros & Hinton (2016): the gates' pre-activations
    /// are LN(W_ih x_t) + LN(W_hh h_{t−1}) + b_ih + b_hh and h_t = o ⊙ tanh(LN(c_t)), each norm
    /// with its own gain and bias (`ln_weight_ih_l{k}`, `ln_bias_ih_l{k}` (4H), `…_hh_…` (4H),
    /// `…_c_…` (H); initialised to 1 and 0 as `nn.LayerNorm`).
    pub layer_norm: bool,
    /// Zoneout of every layer's state (Krueger et al. 2016; `net/zoneout.rs`): training passes
    /// hold each unit of h (and the LSTM's c) at its previous value with probability z_h (z_c),
    /// evaluation blends by the expectation. [`Zoneout::NONE`] for none.
    pub zoneout: Zoneout,
}

/// One named tensor in the parameter slab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamInfo {
    /// PyTorch `state_dict` name, e.g. `rnn.weight_ih_l0`.
    pub name: String,
    /// Shape, row-major.
    pub shape: Vec<usize>,
    /// Offset of the first element in the slab.
    pub offset: usize,
}

impl ParamInfo {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True for a tensor with no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements of this tensor within a slab laid out by the same [`Net`].
    pub fn of<'a, F>(&self, slab: &'a [F]) -> &'a [F] {
        &slab[self.offset..self.offset + self.len()]
    }

    /// The elements of this tensor within a mutable slab.
    pub fn of_mut<'a, F>(&self, slab: &'a mut [F]) -> &'a mut [F] {
        &mut slab[self.offset..self.offset + self.len()]
    }
}

/// Offsets of one layer's tensors (of one direction) in the slab, and its input width.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LayerParams {
    pub input: usize,
    pub w_ih: usize,
    pub w_hh: usize,
    pub b_ih: usize,
    pub b_hh: usize,
    /// `weight_hr` (P, H) with a projection; else the slab's end (no tensor).
    pub w_hr: usize,
    /// With layer norm, the first of its six tensors, contiguous in this order: the gains and
    /// biases of the input side (4H each), the recurrent side (4H each) and c (H each); else 0.
    pub ln: usize,
}

impl LayerParams {
    /// The layer norm's (gain, bias) of the input side, the recurrent side and the cell state,
    /// within the slab `p` (`hidden` H; only with layer norm).
    pub(crate) fn norms<'a, F>(&self, p: &'a [F], hidden: usize) -> [(&'a [F], &'a [F]); 3] {
        let (gh, at) = (4 * hidden, self.ln);
        let t = |o: usize, n: usize| (&p[at + o..at + o + n], &p[at + o + n..at + o + 2 * n]);
        [t(0, gh), t(2 * gh, gh), t(4 * gh, hidden)]
    }

    /// The end of this layer's (direction's) tensors in the slab.
    pub(crate) fn end(&self, cfg: &NetConfig) -> usize {
        if cfg.layer_norm {
            self.norm_range(cfg.hidden).end
        } else if cfg.proj_size > 0 {
            self.w_hr + cfg.proj_size * cfg.hidden
        } else {
            self.b_hh + cfg.cell.gates() * cfg.hidden
        }
    }

    /// The slab range of the layer norm's six tensors (`hidden` H; only with layer norm).
    pub(crate) fn norm_range(&self, hidden: usize) -> std::ops::Range<usize> {
        self.ln..self.ln + 18 * hidden
    }
}

impl NetConfig {
    /// D, the directions of every layer: 2 when bidirectional, else 1.
    pub fn directions(&self) -> usize {
        if self.bidirectional { 2 } else { 1 }
    }

    /// The width of h, the recurrent state: P with a projection, else H.
    pub fn state_width(&self) -> usize {
        if self.proj_size > 0 { self.proj_size } else { self.hidden }
    }

    /// The width of a layer's output per step: D·H (D·P with a projection).
    pub fn out_width(&self) -> usize {
        self.directions() * self.state_width()
    }

    /// The readout's input width: D·H per step, or P·D·H pooled features per sequence.
    pub fn readout_width(&self) -> usize {
        match self.head {
            Head::PerStep => self.out_width(),
            Head::Pooled(pool) => pool.count() * self.out_width(),
        }
    }

    /// Rows of logits (and of targets) for a pass of `steps` steps of `batch` sequences: T·B per
    /// step, B pooled.
    pub fn readout_rows(&self, steps: usize, batch: usize) -> usize {
        match self.head {
            Head::PerStep => steps * batch,
            Head::Pooled(_) => batch,
        }
    }

    /// Values per (t, b) row of the input: I for dense input, 1 for token ids.
    pub fn input_width(&self) -> usize {
        match self.input {
            InputKind::Dense { size } => size,
            InputKind::Tokens { .. } => 1,
        }
    }

    /// Checks that every size is positive and the loss fits the readout.
    pub fn validate(&self) -> Result<()> {
        let positive = |name: &str, v: usize| {
            if v == 0 { Err(Error::Config(format!("{name} must be at least 1, got 0"))) } else { Ok(()) }
        };
        positive("hidden size", self.hidden)?;
        positive("number of layers", self.layers)?;
        positive("output size", self.output)?;
        match self.input {
            InputKind::Dense { size } => positive("input size", size)?,
            InputKind::Tokens { vocab, embedding_dim } => {
                positive("vocabulary size", vocab)?;
                positive("embedding dimension", embedding_dim)?;
            }
        }
        if let Head::Pooled(pool) = self.head
            && pool.count() == 0
        {
            return Err(Error::Config("a pooled head needs at least one pooling (last, mean or max)".into()));
        }
        if self.proj_size > 0 && !self.cell.projects() {
            return Err(Error::Config(format!(
                "`proj_size` projects an LSTM's output; the {} cell has none to project: use the lstm cell or proj_size 0",
                self.cell
            )));
        }
        if self.proj_size >= self.hidden && self.proj_size > 0 {
            return Err(Error::Config(format!(
                "`proj_size` must be below the hidden size ({}), got {}",
                self.hidden, self.proj_size
            )));
        }
        if self.layer_norm && self.cell != CellKind::Lstm {
            return Err(Error::Config(format!(
                "`layer_norm` is an option of the LSTM cell (the LayerNorm-LSTM), not of {}: use the lstm cell or leave `layer_norm` off",
                self.cell
            )));
        }
        if self.layer_norm && self.proj_size > 0 {
            return Err(Error::Config(
                "`layer_norm` and `proj_size` cannot be combined yet: choose one of them".into(),
            ));
        }
        self.zoneout.validate(self.cell)?;
        if self.loss == LossKind::CrossEntropy && self.output < 2 {
            return Err(Error::Config("cross-entropy needs an output size of at least 2".into()));
        }
        Ok(())
    }
}

impl Net {
    /// Lays out the parameters for `config`.
    pub fn new(config: NetConfig) -> Result<Self> {
        config.validate()?;
        let (g, h, p) = (config.cell.gates(), config.hidden, config.state_width());
        let mut params = Vec::new();
        let mut len = 0;
        let mut push = |name: String, shape: Vec<usize>| {
            let offset = len;
            len += shape.iter().product::<usize>();
            params.push(ParamInfo { name, shape, offset });
            offset
        };
        let (encoder, first_input) = match config.input {
            InputKind::Dense { size } => (None, size),
            InputKind::Tokens { vocab, embedding_dim } => {
                (Some(push("encoder.weight".into(), vec![vocab, embedding_dim])), embedding_dim)
            }
        };
        // Layer by layer, each direction's four tensors (forward, then `_reverse`).
        let mut layers = Vec::with_capacity(config.layers * config.directions());
        for k in 0..config.layers {
            let input = if k == 0 { first_input } else { config.out_width() };
            for d in ["", "_reverse"].into_iter().take(config.directions()) {
                let w_ih = push(format!("rnn.weight_ih_l{k}{d}"), vec![g * h, input]);
                let w_hh = push(format!("rnn.weight_hh_l{k}{d}"), vec![g * h, p]);
                let b_ih = push(format!("rnn.bias_ih_l{k}{d}"), vec![g * h]);
                let b_hh = push(format!("rnn.bias_hh_l{k}{d}"), vec![g * h]);
                let w_hr = if config.proj_size > 0 { push(format!("rnn.weight_hr_l{k}{d}"), vec![p, h]) } else { 0 };
                let mut ln = 0;
                if config.layer_norm {
                    for (side, n) in [("ih", g * h), ("hh", g * h), ("c", h)] {
                        let at = push(format!("rnn.ln_weight_{side}_l{k}{d}"), vec![n]);
                        push(format!("rnn.ln_bias_{side}_l{k}{d}"), vec![n]);
                        ln = if side == "ih" { at } else { ln };
                    }
                }
                layers.push(LayerParams { input, w_ih, w_hh, b_ih, b_hh, w_hr, ln });
            }
        }
        let head = if config.head == Head::PerStep { "decoder" } else { "head" };
        let w_out = push(format!("{head}.weight"), vec![config.output, config.readout_width()]);
        let b_out = push(format!("{head}.bias"), vec![config.output]);
        Ok(Net { config, params, layers, encoder, w_out, b_out, len })
    }

    /// The configuration this layout was built from.
    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// Total number of scalars in the parameter (and gradient) slab.
    pub fn num_params(&self) -> usize {
        self.len
    }

    /// The named tensors, in slab order.
    pub fn params(&self) -> &[ParamInfo] {
        &self.params
    }

    /// The slab ranges of every layer's W_hh, layer by layer (each direction's; what weight
    /// drop masks).
    pub(crate) fn w_hh_ranges(&self) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        let gh = self.config.cell.gates() * self.config.hidden;
        self.layers.iter().map(move |lp| lp.w_hh..lp.w_hh + gh * self.config.state_width())
    }

    /// The tensor called `name`, if any.
    pub fn param(&self, name: &str) -> Option<&ParamInfo> {
        self.params.iter().find(|p| p.name == name)
    }

    /// A fresh parameter slab initialised like PyTorch, from `seed`:
    /// `encoder.weight` ~ N(0, 1) (`nn.Embedding`); every recurrent tensor and the readout
    /// ~ U(−1/√H, 1/√H) (`nn.LSTM` etc. and `nn.Linear` with H inputs; a pooled head's
    /// `nn.Linear` has P·H inputs, so U(−1/√(P·H), 1/√(P·H))); layer-norm gains 1 and biases 0.
    /// Tensors are drawn in slab order from a ChaCha8 stream.
    pub fn init_params<F: Float>(&self, seed: u64) -> Vec<F> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let bound = 1.0 / (self.config.hidden as f64).sqrt();
        let mut slab = vec![F::zero(); self.len];
        for p in &self.params {
            let dst = p.of_mut(&mut slab);
            if Some(p.offset) == self.encoder {
                for v in dst.iter_mut() {
                    // Box–Muller: one standard normal from two uniforms in (0, 1].
                    let u1: f64 = 1.0 - rng.random::<f64>();
                    let u2: f64 = rng.random::<f64>();
                    *v = F::of((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos());
                }
            } else if let Some(norm) = p.name.strip_prefix("rnn.ln_") {
                // A layer norm's gain 1 and bias 0, as `nn.LayerNorm` (no draws).
                dst.fill(if norm.starts_with("weight") { F::one() } else { F::zero() });
            } else {
                let bound =
                    if p.offset >= self.w_out { 1.0 / (self.config.readout_width() as f64).sqrt() } else { bound };
                for v in dst.iter_mut() {
                    *v = F::of(rng.random_range(-bound..bound));
                }
            }
        }
        slab
    }

    /// Sets the LSTM forget-gate biases (`bias_ih` f-block) of every layer to `value` and the
    /// `bias_hh` f-block to zero, a common trick to keep gradients alive early in training.
    pub fn set_forget_bias<F: Float>(&self, params: &mut [F], value: F) -> Result<()> {
        if !self.config.cell.has_cell_state() {
            return Err(Error::Config("a forget-gate bias exists only for the lstm cell".into()));
        }
        check_len("parameter slab", self.len, params.len())?;
        let h = self.config.hidden;
        for l in &self.layers {
            params[l.b_ih + h..l.b_ih + 2 * h].fill(value);
            params[l.b_hh + h..l.b_hh + 2 * h].fill(F::zero());
        }
        Ok(())
    }
}
