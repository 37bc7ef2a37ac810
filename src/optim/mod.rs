//! Optimizers with `torch.optim` semantics and defaults, updating a whole parameter slab, and
//! learning-rate schedules. State lives in named buffers that can be saved and restored
//! exactly. Optimizers know nothing of networks: a slab of parameters and one of gradients.

mod schedule;

pub use schedule::{LrSchedule, Schedule};

use crate::error::{Error, Result};
use crate::float::Float;

/// Which optimizer, with its hyper-parameters (the learning rate is passed per step).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimizerConfig {
    /// `torch.optim.SGD`.
    Sgd {
        /// Momentum factor (0 = plain SGD).
        momentum: f64,
        /// Dampening for momentum.
        dampening: f64,
        /// Nesterov momentum.
        nesterov: bool,
        /// L2 penalty added to the gradient.
        weight_decay: f64,
    },
    /// `torch.optim.Adam` (`decoupled = false`) or `torch.optim.AdamW` (`decoupled = true`).
    Adam {
        /// β₁.
        beta1: f64,
        /// β₂.
        beta2: f64,
        /// ε, added to the denominator.
        eps: f64,
        /// Weight decay: L2 on the gradient (Adam) or decoupled (AdamW).
        weight_decay: f64,
        /// AMSGrad variant.
        amsgrad: bool,
        /// AdamW's decoupled weight decay.
        decoupled: bool,
    },
    /// `torch.optim.RMSprop`.
    RmsProp {
        /// Smoothing constant α.
        alpha: f64,
        /// ε, added to the denominator.
        eps: f64,
        /// Momentum factor.
        momentum: f64,
        /// Normalise by the centred second moment (an estimate of the variance).
        centered: bool,
        /// L2 penalty added to the gradient.
        weight_decay: f64,
    },
    /// `torch.optim.Adagrad`.
    Adagrad {
        /// Learning-rate decay.
        lr_decay: f64,
        /// L2 penalty added to the gradient.
        weight_decay: f64,
        /// Starting value of the squared-gradient sum.
        initial_accumulator_value: f64,
        /// ε, added to the denominator.
        eps: f64,
    },
}

impl OptimizerConfig {
    /// SGD with PyTorch's defaults (no momentum); PyTorch's default lr is 1e-3.
    pub fn sgd() -> Self {
        OptimizerConfig::Sgd { momentum: 0.0, dampening: 0.0, nesterov: false, weight_decay: 0.0 }
    }
    /// Adam with PyTorch's defaults (β = (0.9, 0.999), ε = 1e-8); default lr 1e-3.
    pub fn adam() -> Self {
        OptimizerConfig::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            amsgrad: false,
            decoupled: false,
        }
    }
    /// AdamW with PyTorch's defaults (weight decay 0.01); default lr 1e-3.
    pub fn adamw() -> Self {
        OptimizerConfig::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            amsgrad: false,
            decoupled: true,
        }
    }
    /// RMSprop with PyTorch's defaults (α = 0.99, ε = 1e-8); default lr 1e-2.
    pub fn rmsprop() -> Self {
        OptimizerConfig::RmsProp { alpha: 0.99, eps: 1e-8, momentum: 0.0, centered: false, weight_decay: 0.0 }
    }
    /// Adagrad with PyTorch's defaults (ε = 1e-10); default lr 1e-2.
    pub fn adagrad() -> Self {
        OptimizerConfig::Adagrad { lr_decay: 0.0, weight_decay: 0.0, initial_accumulator_value: 0.0, eps: 1e-10 }
    }

    /// The optimizer called `name` (`sgd`, `adam`, `adamw`, `rmsprop`, `adagrad`) with defaults.
    pub fn by_name(name: &str) -> Result<Self> {
        Ok(match name {
            "sgd" => Self::sgd(),
            "adam" => Self::adam(),
            "adamw" => Self::adamw(),
            "rmsprop" => Self::rmsprop(),
            "adagrad" => Self::adagrad(),
            _ => {
                return Err(Error::Config(format!(
                    "unknown optimizer '{name}': use one of sgd, adam, adamw, rmsprop, adagrad"
                )));
            }
        })
    }

    /// The name `by_name` accepts.
    pub fn name(&self) -> &'static str {
        match self {
            OptimizerConfig::Sgd { .. } => "sgd",
            OptimizerConfig::Adam { decoupled: false, .. } => "adam",
            OptimizerConfig::Adam { decoupled: true, .. } => "adamw",
            OptimizerConfig::RmsProp { .. } => "rmsprop",
            OptimizerConfig::Adagrad { .. } => "adagrad",
        }
    }

    /// PyTorch's default learning rate for this optimizer.
    pub fn default_lr(&self) -> f64 {
        match self {
            OptimizerConfig::Sgd { .. } | OptimizerConfig::Adam { .. } => 1e-3,
            OptimizerConfig::RmsProp { .. } | OptimizerConfig::Adagrad { .. } => 1e-2,
        }
    }

    /// Returns the same optimizer with its momentum (SGD, RMSprop) and weight decay replaced
    /// where given; an error if the optimizer has no momentum.
    pub fn with(mut self, momentum: Option<f64>, weight_decay: Option<f64>) -> Result<Self> {
        if let Some(m) = momentum {
            match &mut self {
                OptimizerConfig::Sgd { momentum, .. } | OptimizerConfig::RmsProp { momentum, .. } => *momentum = m,
                _ => {
                    return Err(Error::Config(format!(
                        "{} has no momentum: drop `momentum` or use sgd or rmsprop",
                        self.name()
                    )));
                }
            }
        }
        if let Some(w) = weight_decay {
            match &mut self {
                OptimizerConfig::Sgd { weight_decay, .. }
                | OptimizerConfig::Adam { weight_decay, .. }
                | OptimizerConfig::RmsProp { weight_decay, .. }
                | OptimizerConfig::Adagrad { weight_decay, .. } => *weight_decay = w,
            }
        }
        self.validate()?;
        Ok(self)
    }

    /// Checks the ranges PyTorch checks.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: f64| Err(Error::Config(format!("invalid {what} for {}: {v}", self.name())));
        let nonneg = |v: f64| v.is_finite() && v >= 0.0;
        match *self {
            OptimizerConfig::Sgd { momentum, dampening, nesterov, weight_decay } => {
                if !nonneg(momentum) {
                    return bad("momentum", momentum);
                }
                if !nonneg(weight_decay) {
                    return bad("weight decay", weight_decay);
                }
                if nesterov && (momentum <= 0.0 || dampening != 0.0) {
                    return Err(Error::Config("nesterov momentum requires a momentum and zero dampening".into()));
                }
            }
            OptimizerConfig::Adam { beta1, beta2, eps, weight_decay, .. } => {
                if !(0.0..1.0).contains(&beta1) {
                    return bad("beta1", beta1);
                }
                if !(0.0..1.0).contains(&beta2) {
                    return bad("beta2", beta2);
                }
                if !nonneg(eps) {
                    return bad("eps", eps);
                }
                if !nonneg(weight_decay) {
                    return bad("weight decay", weight_decay);
                }
            }
            OptimizerConfig::RmsProp { alpha, eps, momentum, weight_decay, .. } => {
                if !nonneg(alpha) || alpha > 1.0 {
                    return bad("alpha", alpha);
                }
                if !nonneg(eps) {
                    return bad("eps", eps);
                }
                if !nonneg(momentum) {
                    return bad("momentum", momentum);
                }
                if !nonneg(weight_decay) {
                    return bad("weight decay", weight_decay);
                }
            }
            OptimizerConfig::Adagrad { lr_decay, weight_decay, initial_accumulator_value, eps } => {
                for (what, v) in [
                    ("lr decay", lr_decay),
                    ("weight decay", weight_decay),
                    ("initial accumulator value", initial_accumulator_value),
                    ("eps", eps),
                ] {
                    if !nonneg(v) {
                        return bad(what, v);
                    }
                }
            }
        }
        Ok(())
    }

    /// Names of the state buffers (each the size of the slab), in save order.
    pub fn buffer_names(&self) -> &'static [&'static str] {
        match *self {
            OptimizerConfig::Sgd { momentum, .. } if momentum != 0.0 => &["momentum_buffer"],
            OptimizerConfig::Sgd { .. } => &[],
            OptimizerConfig::Adam { amsgrad: true, .. } => &["exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
            OptimizerConfig::Adam { .. } => &["exp_avg", "exp_avg_sq"],
            OptimizerConfig::RmsProp { momentum, centered, .. } => match (momentum != 0.0, centered) {
                (false, false) => &["square_avg"],
                (true, false) => &["square_avg", "momentum_buffer"],
                (false, true) => &["square_avg", "grad_avg"],
                (true, true) => &["square_avg", "momentum_buffer", "grad_avg"],
            },
            OptimizerConfig::Adagrad { .. } => &["sum"],
        }
    }
}

/// An optimizer's complete state: the number of updates taken and its named buffers.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerState<F> {
    /// Updates applied so far.
    pub step: u64,
    /// (name, values) pairs, each the size of the parameter slab.
    pub buffers: Vec<(String, Vec<F>)>,
}

/// An optimizer bound to a slab size.
#[derive(Clone, Debug)]
pub struct Optimizer<F> {
    config: OptimizerConfig,
    step: u64,
    buffers: Vec<Vec<F>>,
    /// 2+: Adam updates ranges of the slab on up to this many threads (element-wise, so the result is
    /// the same).
    threads: usize,
}

/// PyTorch's `lerp(a, b, w)` (CPU kernel), so moving averages round the same way.
#[inline(always)]
fn lerp<F: Float>(a: F, b: F, w: F) -> F {
    if w.abs() < F::of(0.5) { a + w * (b - a) } else { b - (b - a) * (F::one() - w) }
}

impl<F: Float> Optimizer<F> {
    /// A fresh optimizer (step 0, buffers initialised as PyTorch does) for `n` parameters.
    pub fn new(config: OptimizerConfig, n: usize) -> Result<Self> {
        config.validate()?;
        let init = match config {
            OptimizerConfig::Adagrad { initial_accumulator_value, .. } => F::of(initial_accumulator_value),
            _ => F::zero(),
        };
        let buffers = config.buffer_names().iter().map(|_| vec![init; n]).collect();
        Ok(Optimizer { config, step: 0, buffers, threads: 1 })
    }

    /// Updates large slabs on up to `threads` threads (bit-identical results at any count).
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// Updates applied so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The named state buffers, borrowed (for writing a checkpoint without copying them).
    pub fn buffers(&self) -> impl Iterator<Item = (&'static str, &[F])> {
        self.config.buffer_names().iter().copied().zip(self.buffers.iter().map(Vec::as_slice))
    }

    /// A copy of the complete state, for saving.
    pub fn state(&self) -> OptimizerState<F> {
        let names = self.config.buffer_names();
        let buffers = names.iter().zip(&self.buffers).map(|(n, b)| (n.to_string(), b.clone())).collect();
        OptimizerState { step: self.step, buffers }
    }

    /// Restores a state saved by [`Optimizer::state`] (names and sizes must match).
    pub fn load_state(&mut self, state: OptimizerState<F>) -> Result<()> {
        let names = self.config.buffer_names();
        if state.buffers.len() != names.len() {
            return Err(Error::Config(format!(
                "optimizer state has {} buffers, {} expects {}",
                state.buffers.len(),
                self.config.name(),
                names.len()
            )));
        }
        let mut buffers = Vec::with_capacity(names.len());
        for ((name, values), (want, old)) in state.buffers.into_iter().zip(names.iter().zip(&self.buffers)) {
            if name != *want || values.len() != old.len() {
                return Err(Error::Config(format!(
                    "optimizer state buffer '{name}' ({} values) does not match '{want}' ({} values)",
                    values.len(),
                    old.len()
                )));
            }
            buffers.push(values);
        }
        self.buffers = buffers;
        self.step = state.step;
        Ok(())
    }

    /// One update of `params` from `grads` with learning rate `lr`, exactly as `torch.optim`
    /// (single-tensor code path) computes it.
    pub fn step(&mut self, params: &mut [F], grads: &[F], lr: f64) {
        assert_eq!(params.len(), grads.len(), "parameter and gradient slabs differ in size");
        let first = self.step == 0;
        self.step += 1;
        let step = self.step as f64;
        let neg_lr = F::of(-lr);
        match self.config {
            OptimizerConfig::Sgd { momentum, dampening, nesterov, weight_decay } => {
                let (wd, mom, damp) = (F::of(weight_decay), F::of(momentum), F::one() - F::of(dampening));
                if momentum == 0.0 {
                    for (p, &g) in params.iter_mut().zip(grads) {
                        let g = if weight_decay != 0.0 { g + wd * *p } else { g };
                        *p += neg_lr * g;
                    }
                    return;
                }
                let buf = &mut self.buffers[0];
                for ((p, &g), b) in params.iter_mut().zip(grads).zip(buf.iter_mut()) {
                    let g = if weight_decay != 0.0 { g + wd * *p } else { g };
                    *b = if first { g } else { *b * mom + damp * g };
                    let d = if nesterov { g + mom * *b } else { *b };
                    *p += neg_lr * d;
                }
            }
            OptimizerConfig::Adam { beta1, beta2, eps, weight_decay, decoupled, .. } => {
                let bc1 = 1.0 - beta1.powf(step);
                let bc2_sqrt = F::of((1.0 - beta2.powf(step)).sqrt());
                let neg_step_size = F::of(-(lr / bc1));
                let (w1, b2, w2, eps, wd) =
                    (F::of(1.0 - beta1), F::of(beta2), F::of(1.0 - beta2), F::of(eps), F::of(weight_decay));
                let decay = F::of(1.0 - lr * weight_decay);
                let (m, rest) = self.buffers.split_at_mut(1);
                let (v, vmax) = rest.split_at_mut(1);
                let k = AdamConsts {
                    w1,
                    b2,
                    w2,
                    eps,
                    wd,
                    decay,
                    bc2_sqrt,
                    neg_step_size,
                    decoupled,
                    l2: weight_decay != 0.0,
                };
                let (m, v) = (&mut m[0][..], &mut v[0][..]);
                let (vmax, amsgrad) = match vmax.first_mut() {
                    Some(vmax) => (&mut vmax[..], true),
                    None => (&mut [][..], false),
                };
                // Slab ranges (one per 64k elements, from the size only) on up to `threads`
                // threads: element-wise, so the same bits at any thread count.
                use crate::kernels::{parts, team};
                let n = params.len();
                let cuts = parts::count(n, 1 << 16, 16);
                let at = |p: usize| parts::range(n, cuts, 16, p).0;
                let end = |p: usize| if p == cuts { n } else { at(p) };
                let mut ps = parts::chunks(params, cuts, end);
                let mut ms = parts::chunks(m, cuts, end);
                let mut vs = parts::chunks(v, cuts, end);
                let mut xs = parts::chunks(vmax, if amsgrad { cuts } else { 0 }, end);
                type Slices<'s, F> = (&'s mut [F], &'s mut [F], &'s mut [F], &'s mut [F]);
                let mut items: [Slices<'_, F>; team::MAX_PARTS] = std::array::from_fn(|p| {
                    use std::mem::take;
                    (take(&mut ps[p]), take(&mut ms[p]), take(&mut vs[p]), take(&mut xs[p]))
                });
                team::for_each_mut(self.threads, &mut items[..cuts], |p, (pp, mm, vv, xx)| {
                    adam_update(pp, &grads[at(p)..end(p + 1)], mm, vv, xx, &k, amsgrad)
                });
            }
            OptimizerConfig::RmsProp { alpha, eps, momentum, centered, weight_decay } => {
                let (a, w, eps, wd, mom) =
                    (F::of(alpha), F::of(1.0 - alpha), F::of(eps), F::of(weight_decay), F::of(momentum));
                let has_mom = momentum != 0.0;
                let (sq, rest) = self.buffers.split_at_mut(1);
                let sq = &mut sq[0];
                for (k, (p, &g)) in params.iter_mut().zip(grads).enumerate() {
                    let g = if weight_decay != 0.0 { g + wd * *p } else { g };
                    sq[k] = sq[k] * a + w * g * g;
                    let avg = if centered {
                        let ga = &mut rest[rest.len() - 1][k];
                        *ga = lerp(*ga, g, w);
                        (sq[k] - *ga * *ga).sqrt() + eps
                    } else {
                        sq[k].sqrt() + eps
                    };
                    if has_mom {
                        let b = &mut rest[0][k];
                        *b = *b * mom + g / avg;
                        *p += neg_lr * *b;
                    } else {
                        *p += neg_lr * (g / avg);
                    }
                }
            }
            OptimizerConfig::Adagrad { lr_decay, weight_decay, eps, .. } => {
                let neg_clr = F::of(-(lr / (1.0 + (step - 1.0) * lr_decay)));
                let (wd, eps) = (F::of(weight_decay), F::of(eps));
                let sum = &mut self.buffers[0];
                for ((p, &g), s) in params.iter_mut().zip(grads).zip(sum.iter_mut()) {
                    let g = if weight_decay != 0.0 { g + wd * *p } else { g };
                    *s += g * g;
                    *p += neg_clr * (g / (s.sqrt() + eps));
                }
            }
        }
    }
}

/// The scalars of one Adam/AdamW update.
struct AdamConsts<F> {
    w1: F,
    b2: F,
    w2: F,
    eps: F,
    wd: F,
    decay: F,
    bc2_sqrt: F,
    neg_step_size: F,
    decoupled: bool,
    l2: bool,
}

/// The Adam/AdamW element loop, over separate slices so the compiler can vectorise it.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+avx512bw", "x86_64+avx2+fma"))]
fn adam_update<F: Float>(
    params: &mut [F],
    grads: &[F],
    m: &mut [F],
    v: &mut [F],
    vmax: &mut [F],
    k: &AdamConsts<F>,
    amsgrad: bool,
) {
    let n = params.len();
    let (grads, m, v) = (&grads[..n], &mut m[..n], &mut v[..n]);
    for j in 0..n {
        let g = if k.decoupled {
            params[j] *= k.decay;
            grads[j]
        } else if k.l2 {
            grads[j] + k.wd * params[j]
        } else {
            grads[j]
        };
        m[j] = lerp(m[j], g, k.w1);
        v[j] = v[j] * k.b2 + k.w2 * g * g;
        let second = if amsgrad {
            vmax[j] = vmax[j].max(v[j]);
            vmax[j]
        } else {
            v[j]
        };
        let denom = second.sqrt() / k.bc2_sqrt + k.eps;
        params[j] += k.neg_step_size * (m[j] / denom);
    }
}
