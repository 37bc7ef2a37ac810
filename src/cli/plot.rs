//! `bptt plot DIR`: loss (train, validation) and gradient norm with clip events from a run's
//! metrics.jsonl, as DIR/loss.{png,svg} and DIR/grad_norm.{png,svg}.

use anyhow::{Context, Result};
use bptt::charlm::{Metrics, fsio};
use bptt::diagnose::plot::{Chart, Series};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// A run folder written by `bptt train`.
    dir: PathBuf,
}

/// The loss and gradient-norm charts of a metrics.jsonl text.
pub fn charts(metrics: &str, source: &Path) -> Result<(Chart, Chart)> {
    let Metrics { train_loss: train, val_loss: val, grad_norm: norm, clipped, skipped, other } =
        Metrics::parse(metrics);
    if let [first, ..] = other[..] {
        super::errln!(
            "note: {} has {} line(s) that are not metrics (the first is line {first}); they are not plotted",
            source.display(),
            other.len()
        );
    }
    if train.is_empty() {
        anyhow::bail!("{}: no training steps logged yet", source.display());
    }
    let loss = Chart {
        title: "Training and validation loss".into(),
        x_label: "update".into(),
        y_label: "cross-entropy (nats/char)".into(),
        log_y: false,
        series: vec![
            Series { name: "train".into(), points: train, marks: vec![] },
            Series { name: "validation".into(), points: val.clone(), marks: val },
        ],
        hlines: vec![],
        legend_below: false,
    };
    let n_clip = clipped.len();
    let mut marks = clipped;
    marks.extend(skipped);
    let grad = Chart {
        title: format!("Gradient norm before clipping ({n_clip} updates clipped)"),
        x_label: "update".into(),
        y_label: "‖∇L‖₂ (log scale)".into(),
        log_y: true,
        series: vec![Series { name: "grad norm (dots: clipped/skipped)".into(), points: norm, marks }],
        hlines: vec![],
        legend_below: false,
    };
    Ok((loss, grad))
}

pub fn run(a: Args) -> Result<ExitCode> {
    let path = a.dir.join("metrics.jsonl");
    // The file's text, its parsed points (no more bytes than the text) and the two charts.
    super::memory::Estimate::new(1)
        .add("metrics and points", super::memory::file_bytes(&path).saturating_mul(2))
        .add("charts", super::memory::CHART)
        .check("plot a shorter metrics.jsonl")?;
    let text = String::from_utf8(fsio::read_bounded(&path, 1 << 30)?)
        .with_context(|| format!("{}: not UTF-8", path.display()))?;
    let (loss, grad) = charts(&text, &path)?;
    loss.save(&a.dir.join("loss"))?;
    grad.save(&a.dir.join("grad_norm"))?;
    super::errln!("wrote {0}/loss.png, {0}/loss.svg, {0}/grad_norm.png, {0}/grad_norm.svg", a.dir.display());
    Ok(ExitCode::SUCCESS)
}
