//! `bptt task adding|copy`: the long-range benchmarks, with their baselines.

use anyhow::Result;
use bptt::online::Method;
use bptt::tasks::{self, TaskConfig, TaskKind};
use bptt::{CellKind, Clip, OptimizerConfig};
use indicatif::{ProgressBar, ProgressDrawTarget};
use std::io::IsTerminal;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// adding or copy.
    task: String,
    /// lstm, gru, rnn_tanh, rnn_relu.
    #[arg(long, default_value = "lstm")]
    cell: String,
    /// Hidden width H.
    #[arg(long, default_value_t = 64, allow_negative_numbers = true)]
    hidden: usize,
    /// Stacked layers.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    layers: usize,
    /// Sequence length (adding) or delay (copy) T.
    #[arg(long, default_value_t = 100, allow_negative_numbers = true)]
    length: usize,
    /// Sequences per update.
    #[arg(long, default_value_t = 32, allow_negative_numbers = true)]
    batch: usize,
    /// Updates.
    #[arg(long, default_value_t = 2000, allow_negative_numbers = true)]
    steps: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 1e-2, allow_negative_numbers = true, value_parser = super::finite)]
    lr: f64,
    /// Clip the global gradient norm (0 = off).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true, value_parser = super::finite)]
    clip_norm: f64,
    /// sgd, adam, adamw, rmsprop, adagrad.
    #[arg(long, default_value = "adam")]
    optimizer: String,
    /// Rescale W_hh to this largest singular value at initialisation.
    #[arg(long, allow_negative_numbers = true, value_parser = super::finite)]
    w_hh_scale: Option<f64>,
    /// LSTM forget-gate bias at initialisation.
    #[arg(long, allow_negative_numbers = true, value_parser = super::finite)]
    forget_bias: Option<f64>,
    /// Seed of the initialisation and the data.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    seed: u64,
    /// Threads: the caller plus N − 1 helpers share the parts of every pass [default: all cores].
    #[arg(long, allow_negative_numbers = true)]
    threads: Option<usize>,
    /// Learn online instead of by BPTT: rtrl, uoro or snap (SnAp-1). One sequence at a time
    /// as a stream, an update after every step with the method's gradient of that step's loss,
    /// no stored window; --steps then counts sequences.
    #[arg(long, value_parser = ["rtrl", "uoro", "snap"])]
    online: Option<String>,
    /// Truncated BPTT: feed each batch as windows of K steps, the state carried between them
    /// and their gradients summed into one update (gradient paths longer than K steps cut).
    #[arg(long, allow_negative_numbers = true, conflicts_with = "online")]
    tbptt: Option<usize>,
    /// Write the learning curve as CSV: update (sequence, online), sequences seen, training loss,
    /// seconds since the start.
    #[arg(long)]
    curve: Option<std::path::PathBuf>,
    /// Print one JSON line: task, cell, length, steps, final_loss, baseline, solved, seconds.
    #[arg(long)]
    json: bool,
}

/// Turns the shared training flags into a [`TaskConfig`].
pub fn config(a: &Args) -> Result<TaskConfig> {
    let clip = Clip { max_norm: (a.clip_norm > 0.0).then_some(a.clip_norm), max_value: None };
    clip.validate()?;
    if !(a.lr.is_finite() && a.lr > 0.0) {
        anyhow::bail!("--lr must be positive, got {}", a.lr);
    }
    if a.hidden == 0 || a.layers == 0 {
        anyhow::bail!("--hidden and --layers must be at least 1");
    }
    Ok(TaskConfig {
        hidden: a.hidden,
        layers: a.layers,
        batch: a.batch,
        steps: a.steps,
        lr: a.lr,
        optimizer: OptimizerConfig::by_name(&a.optimizer)?,
        clip,
        seed: a.seed,
        threads: super::threads(a.threads)?,
        w_hh_scale: a.w_hh_scale,
        forget_bias: a.forget_bias,
        tbptt: a.tbptt,
        online: match a.online.as_deref() {
            None => None,
            Some("rtrl") => Some(Method::Rtrl),
            Some("uoro") => Some(Method::Uoro { seed: a.seed }),
            Some(_) => Some(Method::Snap1),
        },
        ..TaskConfig::new(a.task.parse::<TaskKind>()?, a.cell.parse::<CellKind>()?, a.length)
    })
}

pub fn run(a: Args) -> Result<ExitCode> {
    let cfg = config(&a)?;
    super::memory::Estimate::new(cfg.threads)
        .add("training", cfg.estimate_bytes())
        .check("lower --hidden, --layers, --length or --batch")?;
    let target =
        if std::io::stderr().is_terminal() { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
    let pb = ProgressBar::with_draw_target(Some(cfg.steps as u64), target);
    let (started, mut curve) = (std::time::Instant::now(), String::from("step,sequences,loss,seconds\n"));
    let per_step = if cfg.online.is_some() { 1 } else { cfg.batch };
    let r = tasks::run(&cfg, |s| {
        if a.curve.is_some() {
            let secs = started.elapsed().as_secs_f64();
            curve.push_str(&format!("{},{},{},{secs:.4}\n", s.step, s.step * per_step, s.loss));
        }
        pb.set_position(s.step as u64);
        if s.step % 10 == 0 {
            pb.set_message(format!("loss {:.4}", s.loss));
        }
    })?;
    pb.finish_and_clear();
    if let Some(path) = &a.curve {
        bptt::files::fsio::write_atomic(path, curve.as_bytes())
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        if let Some(o) = v.as_object_mut()
            && r.accuracy.is_none()
        {
            o.remove("accuracy");
        }
        super::outln!("{v}")?;
    } else {
        let acc = r.accuracy.map_or(String::new(), |a| format!(", copied-symbol accuracy {:.1}%", 100.0 * a));
        super::outln!(
            "{} T={} {}: held-out loss {:.4} vs baseline {:.4}{acc} -> {} ({} steps, {:.1} s)",
            r.task,
            r.length,
            r.cell,
            r.final_loss,
            r.baseline,
            if r.solved { "solved" } else { "not solved" },
            r.steps,
            r.seconds
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
