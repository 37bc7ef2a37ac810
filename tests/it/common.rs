//! Helpers shared by the test modules: small random problems and a seeded generator.

use bptt::{CellKind, Head, Input, InputKind, LossKind, Net, NetConfig, State, Targets};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

pub fn uniform(rng: &mut ChaCha8Rng, n: usize, scale: f64) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// How the loss is laid over the steps.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// Cross-entropy at every step.
    ManyToManyCe,
    /// MSE counted only at the last step (mask).
    ManyToOneMse,
    /// Cross-entropy with random non-negative weights, some zero.
    WeightedCe,
}

/// A small random problem: net, params, inputs, targets, mask and initial state, all f64.
pub struct Problem {
    pub net: Net,
    pub params: Vec<f64>,
    pub x: Vec<f64>,
    pub tokens: Vec<u32>,
    pub classes: Vec<u32>,
    pub values: Vec<f64>,
    pub mask: Option<Vec<f64>>,
    pub init: State<f64>,
    pub steps: usize,
    pub batch: usize,
    /// A loss term Σ w·(final state) with these weights, besides the targets' (`None`: none).
    pub final_weights: Option<State<f64>>,
}

impl Problem {
    #[allow(clippy::too_many_arguments)]
    pub fn new(cell: CellKind, layers: usize, mode: Mode, tokens: bool, batch: usize, steps: usize, seed: u64) -> Self {
        let (i, h, o, v) = (3, 4, 3, 5);
        let loss = match mode {
            Mode::ManyToOneMse => LossKind::Mse,
            _ => LossKind::CrossEntropy,
        };
        let input =
            if tokens { InputKind::Tokens { vocab: v, embedding_dim: i } } else { InputKind::Dense { size: i } };
        let cfg = NetConfig {
            cell,
            input,
            hidden: h,
            layers,
            output: o,
            loss,
            head: Head::PerStep,
            bidirectional: false,
            proj_size: 0,
            layer_norm: false,
            zoneout: bptt::Zoneout::NONE,
        };
        let net = Net::new(cfg).unwrap();
        let mut r = rng(seed);
        // Larger than default weights so gates are away from their linear regime.
        let params = uniform(&mut r, net.num_params(), 0.8);
        let x = uniform(&mut r, steps * batch * i, 1.0);
        let tokens = (0..steps * batch).map(|_| r.random_range(0..v as u32)).collect();
        let classes = (0..steps * batch).map(|_| r.random_range(0..o as u32)).collect();
        let values = uniform(&mut r, steps * batch * o, 1.0);
        let mask = match mode {
            Mode::ManyToManyCe => None,
            Mode::ManyToOneMse => {
                Some((0..steps * batch).map(|k| if k / batch == steps - 1 { 1.0 } else { 0.0 }).collect())
            }
            Mode::WeightedCe => {
                Some((0..steps * batch).map(|k| if k % 3 == 1 { 0.0 } else { r.random_range(0.5..2.0) }).collect())
            }
        };
        let mut init = State::zeros(&cfg, batch);
        init.h = uniform(&mut r, init.h.len(), 0.5);
        init.c = uniform(&mut r, init.c.len(), 0.5);
        Problem { net, params, x, tokens, classes, values, mask, init, steps, batch, final_weights: None }
    }

    /// A problem for a pooled head (one readout per sequence): the same random inputs and
    /// initial state, targets (B) classes or (B, O) values, and with `weighted` random per-sequence
    /// weights (class weights).
    #[allow(clippy::too_many_arguments)]
    pub fn pooled(
        cell: CellKind,
        layers: usize,
        pool: bptt::Pool,
        loss: LossKind,
        weighted: bool,
        tokens: bool,
        batch: usize,
        steps: usize,
        seed: u64,
    ) -> Self {
        let mode = if loss == LossKind::Mse { Mode::ManyToOneMse } else { Mode::ManyToManyCe };
        let mut p = Problem::new(cell, layers, mode, tokens, batch, steps, seed);
        let cfg = NetConfig { head: Head::Pooled(pool), ..*p.net.config() };
        p.net = Net::new(cfg).unwrap();
        let mut r = rng(seed ^ 0x5eed);
        p.params = uniform(&mut r, p.net.num_params(), 0.8);
        let o = cfg.output;
        p.classes = (0..batch).map(|_| r.random_range(0..o as u32)).collect();
        p.values = uniform(&mut r, batch * o, 1.0);
        p.mask = weighted.then(|| (0..batch).map(|_| r.random_range(0.5..2.0)).collect());
        p
    }

    /// The same problem for a bidirectional net (every layer also runs a reverse direction):
    /// fresh weights and initial state (2L, B, H) from `seed`, the same inputs and targets.
    pub fn bidirectional(self, seed: u64) -> Self {
        let cfg = NetConfig { bidirectional: true, ..*self.net.config() };
        self.rebuilt(cfg, seed ^ 0xb1d1)
    }

    /// The same problem as a LayerNorm-LSTM (`layer_norm`): fresh weights (the norms' gains
    /// around 1) and initial state from `seed`.
    pub fn layer_normed(self, seed: u64) -> Self {
        let cfg = NetConfig { layer_norm: true, ..*self.net.config() };
        let mut p = self.rebuilt(cfg, seed ^ 0x1a7e);
        for info in p.net.params().iter().filter(|i| i.name.contains("ln_weight")) {
            info.of_mut(&mut p.params).iter_mut().for_each(|v| *v += 1.0);
        }
        p
    }

    /// The same problem with every layer's output projected to `p` < H values (`proj_size`;
    /// LSTM only): fresh weights and initial state from `seed`.
    pub fn projected(self, p: usize, seed: u64) -> Self {
        let cfg = NetConfig { proj_size: p, ..*self.net.config() };
        self.rebuilt(cfg, seed ^ 0x9e0)
    }

    /// The same problem with zoneout `z` (the same weights: zoneout adds none).
    pub fn zoned(mut self, z: bptt::Zoneout) -> Self {
        self.net = Net::new(NetConfig { zoneout: z, ..*self.net.config() }).unwrap();
        self
    }

    /// The same inputs and targets for the net of `cfg`, with fresh weights and initial state
    /// drawn from `seed`.
    fn rebuilt(mut self, cfg: NetConfig, seed: u64) -> Self {
        self.net = Net::new(cfg).unwrap();
        let mut r = rng(seed);
        self.params = uniform(&mut r, self.net.num_params(), 0.8);
        self.init = State::zeros(&cfg, self.batch);
        self.init.h = uniform(&mut r, self.init.h.len(), 0.5);
        self.init.c = uniform(&mut r, self.init.c.len(), 0.5);
        self
    }

    /// Adds a loss term on the final state (h and, for the LSTM, c) with random weights: what a
    /// classifier reading the last state, or a later window, puts there.
    pub fn with_final_loss(mut self, seed: u64) -> Self {
        let mut r = rng(seed);
        let mut w = State::zeros(self.net.config(), self.batch);
        w.h = uniform(&mut r, w.h.len(), 1.0);
        w.c = uniform(&mut r, w.c.len(), 1.0);
        self.final_weights = Some(w);
        self
    }

    pub fn input(&self) -> Input<'_, f64> {
        match self.net.config().input {
            InputKind::Dense { .. } => Input::Dense(&self.x),
            InputKind::Tokens { .. } => Input::Tokens(&self.tokens),
        }
    }

    pub fn targets(&self) -> Targets<'_, f64> {
        let t = match self.net.config().loss {
            LossKind::CrossEntropy => Targets::classes(&self.classes),
            LossKind::Mse => Targets::values(&self.values),
        };
        match &self.mask {
            Some(m) => t.with_mask(m),
            None => t,
        }
    }
}
