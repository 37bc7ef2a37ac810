//! `bptt plot DIR`: loss (train, validation) and gradient norm with clip events from a run's
//! metrics.jsonl, as DIR/loss.{png,svg} and DIR/grad_norm.{png,svg}; `bptt plot DIR DIR…`:
//! several runs' validation losses against the seconds and the characters each trained.

use anyhow::{Context, Result};
use bptt::charlm::{Metrics, fsio};
use bptt::diagnose::plot::{Chart, Series};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// A run folder written by `bptt train`; with several, their validation curves side by side.
    #[arg(required = true, num_args = 1..)]
    dirs: Vec<PathBuf>,
    /// With several runs: write PREFIX_seconds.{png,svg,csv} and PREFIX_chars.{png,svg,csv}.
    #[arg(long, value_name = "PREFIX", default_value = "compare")]
    out: PathBuf,
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
    if a.dirs.len() > 1 {
        return compare(&a.dirs, &a.out);
    }
    let dir = &a.dirs[0];
    let path = dir.join("metrics.jsonl");
    // The file's text, its parsed points (no more bytes than the text) and the two charts.
    super::memory::Estimate::new(1)
        .add("metrics and points", super::memory::file_bytes(&path).saturating_mul(2))
        .add("charts", super::memory::CHART)
        .check("plot a shorter metrics.jsonl")?;
    let text = String::from_utf8(fsio::read_bounded(&path, 1 << 30)?)
        .with_context(|| format!("{}: not UTF-8", path.display()))?;
    let (loss, grad) = charts(&text, &path)?;
    loss.save(&dir.join("loss"))?;
    grad.save(&dir.join("grad_norm"))?;
    super::errln!("wrote {0}/loss.png, {0}/loss.svg, {0}/grad_norm.png, {0}/grad_norm.svg", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// Each run's validation losses against its `elapsed_s` and its `tokens` (the same compute, and
/// the same characters, at every x), one line per run named by its folder.
fn compare(dirs: &[PathBuf], out: &Path) -> Result<ExitCode> {
    let mut estimate = super::memory::Estimate::new(1).add("charts", super::memory::CHART);
    for d in dirs {
        estimate =
            estimate.add("metrics and points", super::memory::file_bytes(&d.join("metrics.jsonl")).saturating_mul(2));
    }
    estimate.check("compare fewer runs")?;
    let (mut by_time, mut by_chars) = (Vec::new(), Vec::new());
    for d in dirs {
        let path = d.join("metrics.jsonl");
        let text = String::from_utf8(fsio::read_bounded(&path, 1 << 30)?)
            .with_context(|| format!("{}: not UTF-8", path.display()))?;
        let (mut time, mut chars) = (Vec::new(), Vec::new());
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            let num = |k: &str| v.get(k).and_then(|x| x.as_f64());
            if let (Some(val), Some(t), Some(n)) = (num("val_loss"), num("elapsed_s"), num("tokens")) {
                time.push((t, val));
                chars.push((n, val));
            }
        }
        if time.is_empty() {
            anyhow::bail!("{}: no validation losses logged: train with --eval-every N", path.display());
        }
        let name = d.file_name().map_or_else(|| d.display().to_string(), |n| n.to_string_lossy().into_owned());
        by_time.push(Series { name: name.clone(), points: time, marks: vec![] });
        by_chars.push(Series { name, points: chars, marks: vec![] });
    }
    let chart = |x: &str, series| Chart {
        title: format!("Validation loss against the {x} trained"),
        x_label: x.into(),
        y_label: "cross-entropy (nats/char)".into(),
        log_y: false,
        series,
        hlines: vec![],
        legend_below: false,
    };
    let mut written = Vec::new();
    for (suffix, c) in [("seconds", chart("seconds", by_time)), ("chars", chart("characters", by_chars))] {
        let stem = PathBuf::from(format!("{}_{suffix}", out.display()));
        c.save(&stem)?;
        fsio::write_atomic(&stem.with_extension("csv"), c.csv().as_bytes())?;
        written.push(stem.display().to_string());
    }
    super::errln!("wrote {}.{{png,svg,csv}}", written.join(".{png,svg,csv}, "));
    Ok(ExitCode::SUCCESS)
}
