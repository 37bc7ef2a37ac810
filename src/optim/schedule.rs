//! Learning-rate schedules: a pure function from the update index to the learning rate.

use crate::error::{Error, Result};

/// How the learning rate decays after warm-up.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    /// The base rate throughout.
    Constant,
    /// Multiply by `gamma` every `every` updates (`torch.optim.lr_scheduler.StepLR`).
    Step {
        /// Updates between decays.
        every: u64,
        /// Factor per decay.
        gamma: f64,
    },
    /// Multiply by `gamma` every update (`ExponentialLR`).
    Exponential {
        /// Factor per update.
        gamma: f64,
    },
    /// Half a cosine from the base rate down to `min_lr` over `total` updates
    /// (`CosineAnnealingLR`, without restarts; stays at `min_lr` afterwards).
    Cosine {
        /// Updates to reach `min_lr`.
        total: u64,
        /// The final rate.
        min_lr: f64,
    },
}

/// A base learning rate, an optional linear warm-up and a decay [`Schedule`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    /// The peak learning rate.
    pub base_lr: f64,
    /// The decay after (and during) warm-up.
    pub schedule: Schedule,
    /// Updates of linear warm-up: update s < warmup uses base · (s+1)/warmup times the decay.
    pub warmup: u64,
}

impl LrSchedule {
    /// Parses `constant`, `step:EVERY:GAMMA`, `exp:GAMMA` or `cosine[:MIN_LR]` (a cosine over
    /// `total` updates) for the peak rate `base_lr` after `warmup` updates of linear warm-up.
    pub fn parse(spec: &str, base_lr: f64, warmup: u64, total: u64) -> crate::error::Result<Self> {
        use crate::error::Error;
        let num = |s: &str| {
            s.parse::<f64>()
                .map_err(|_| Error::Config(format!("learning-rate schedule '{spec}': '{s}' is not a number")))
        };
        let parts: Vec<&str> = spec.split(':').collect();
        let schedule = match parts.as_slice() {
            ["constant"] => Schedule::Constant,
            ["step", every, gamma] => Schedule::Step { every: num(every)? as u64, gamma: num(gamma)? },
            ["exp", gamma] => Schedule::Exponential { gamma: num(gamma)? },
            ["cosine"] => Schedule::Cosine { total, min_lr: 0.0 },
            ["cosine", min] => Schedule::Cosine { total, min_lr: num(min)? },
            _ => {
                return Err(Error::Config(format!(
                    "learning-rate schedule '{spec}' is unknown: use constant, step:EVERY:GAMMA, exp:GAMMA or \
                     cosine[:MIN_LR]"
                )));
            }
        };
        let s = LrSchedule { base_lr, schedule, warmup };
        s.validate()?;
        Ok(s)
    }

    /// A constant rate.
    pub fn constant(lr: f64) -> Self {
        LrSchedule { base_lr: lr, schedule: Schedule::Constant, warmup: 0 }
    }

    /// Checks the rate is positive and finite and the schedule's parameters make sense.
    pub fn validate(&self) -> Result<()> {
        if !(self.base_lr.is_finite() && self.base_lr > 0.0) {
            return Err(Error::Config(format!("learning rate must be positive, got {}", self.base_lr)));
        }
        let ok = match self.schedule {
            Schedule::Constant => true,
            Schedule::Step { every, gamma } => every > 0 && gamma.is_finite() && gamma > 0.0,
            Schedule::Exponential { gamma } => gamma.is_finite() && gamma > 0.0,
            Schedule::Cosine { total, min_lr } => total > 0 && min_lr.is_finite() && min_lr >= 0.0,
        };
        if ok { Ok(()) } else { Err(Error::Config(format!("invalid learning-rate schedule {:?}", self.schedule))) }
    }

    /// The learning rate for update `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        let base = self.base_lr;
        let decayed = match self.schedule {
            Schedule::Constant => base,
            Schedule::Step { every, gamma } => base * gamma.powi((step / every.max(1)) as i32),
            Schedule::Exponential { gamma } => base * gamma.powf(step as f64),
            Schedule::Cosine { total, min_lr } => {
                let progress = step.min(total) as f64 / total.max(1) as f64;
                min_lr + (base - min_lr) * (1.0 + (std::f64::consts::PI * progress).cos()) / 2.0
            }
        };
        if step < self.warmup { decayed * (step + 1) as f64 / self.warmup as f64 } else { decayed }
    }
}
