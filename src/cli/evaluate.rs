//! `bptt evaluate`: how good a `fit` model is on labelled data — accuracy, balanced accuracy,
//! per-class precision / recall / F1 and the confusion matrix (classification), MSE / MAE / R²
//! (regression); `--json` prints one line.

use anyhow::{Result, bail};
use bptt::seq::forecast::{self, ForecastSpec};
use bptt::seq::{Labels, SeqModel, Task, metrics};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// A model written by `bptt fit` (model.safetensors or best.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Labelled sequences: a .ts or long-form .csv file.
    #[arg(long)]
    data: PathBuf,
    /// Print one JSON line ({"accuracy", "balanced_accuracy", …} or {"mse", "mae", "r2", …}).
    #[arg(long)]
    json: bool,
    /// Also draw the confusion matrix (classification) to this .png or .svg file.
    #[arg(long, value_name = "FILE")]
    confusion: Option<PathBuf>,
    /// CSV: the sequence-id column [default: id, series or sequence].
    #[arg(long)]
    id_column: Option<String>,
    /// CSV: the label column [default: label, class, target or y].
    #[arg(long)]
    label_column: Option<String>,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 256, allow_negative_numbers = true)]
    batch: usize,
    /// Threads [default: all cores].
    #[arg(long, allow_negative_numbers = true)]
    threads: Option<usize>,
}

/// Mean absolute and squared errors of `pred` against `truth`.
fn errors(truth: &[f32], pred: &[f32]) -> (f64, f64) {
    let r = metrics::regression(truth, pred);
    (r.mae, r.mse)
}

/// A forecaster's errors on the windows of `series` from step `from` on, beside the naive and
/// seasonal-naive baselines': (model, naive, seasonal) as (MAE, MSE), and the window count.
fn forecast_errors(
    m: &SeqModel,
    series: &forecast::Series,
    spec: &ForecastSpec,
    from: usize,
    threads: usize,
) -> Result<([(f64, f64); 3], usize)> {
    let windows = series.windows(spec, from, series.len());
    if windows.is_empty() {
        bail!("the series has no window of {} + {} steps to forecast", spec.window, spec.horizon);
    }
    let Labels::Values(truth) = &windows.labels else { bail!("no targets") };
    let pred = m.predict(&windows, 256, threads)?;
    let (naive, seasonal) = series.baselines(spec, from, series.len());
    Ok(([errors(truth, &pred), errors(truth, &naive), errors(truth, &seasonal)], windows.len()))
}

/// After `fit --task forecast`: the held-out MAE (the last `fraction` of the series at `path`)
/// of the model beside the baselines', printed as a table.
pub fn forecast_table(
    m: &SeqModel,
    path: &Path,
    spec: &ForecastSpec,
    fraction: f64,
    threads: usize,
    model: &Path,
) -> Result<()> {
    let series = forecast::read_series(path)?;
    let cut = ((series.len() as f64) * (1.0 - fraction)).round() as usize;
    let ([ours, naive, seasonal], n) = forecast_errors(m, &series, spec, cut, threads)?;
    super::outln!(
        "held-out forecasts: {n} windows of the last {:.0}% of {} (horizon {}, window {})",
        fraction * 100.0,
        path.display(),
        spec.horizon,
        spec.window
    )?;
    super::outln!("| forecaster | MAE | MSE |")?;
    super::outln!("|---|---|---|")?;
    super::outln!("| bptt ({}) | {:.4} | {:.4} |", model.display(), ours.0, ours.1)?;
    super::outln!("| naive (last value) | {:.4} | {:.4} |", naive.0, naive.1)?;
    super::outln!("| seasonal naive (season {}) | {:.4} | {:.4} |", spec.season, seasonal.0, seasonal.1)?;
    Ok(())
}

pub fn run(a: Args) -> Result<ExitCode> {
    let threads = super::threads(a.threads)?;
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if let Some(spec) = super::predict::forecaster(&a.model, threads)? {
        let m = SeqModel::load(&a.model)?;
        let series = forecast::read_series(&a.data)?;
        if series.names.len() != m.spec.features {
            bail!(
                "{}: the series has {} numeric columns but the model was trained on {}",
                a.data.display(),
                series.names.len(),
                m.spec.features
            );
        }
        let ([ours, naive, seasonal], n) =
            forecast_errors(&m, &series, &spec, 0, threads).map_err(|e| e.context(a.data.display().to_string()))?;
        if a.json {
            let v = serde_json::json!({"n": n, "mae": ours.0, "mse": ours.1, "naive_mae": naive.0, "naive_mse": naive.1,
                "seasonal_naive_mae": seasonal.0, "seasonal_naive_mse": seasonal.1});
            super::outln!("{v}")?;
        } else {
            super::outln!(
                "mae {:.4}, mse {:.4} over {n} forecasts of {} steps; naive mae {:.4}, seasonal naive (season {}) mae {:.4}",
                ours.0,
                ours.1,
                spec.horizon,
                naive.0,
                spec.season,
                seasonal.0
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (m, data) = super::predict::load(&a.model, &a.data, a.id_column.clone(), a.label_column.clone(), threads)?;
    let truth = m.truth(&data).map_err(|e| anyhow::anyhow!("{}: {e}", a.data.display()))?;
    let out = m.predict(&data, a.batch, threads)?;
    match (&truth, m.spec.task) {
        (bptt::seq::fit::Truth::Classes(y), Task::Classify | Task::Label) => {
            let r = metrics::classification(&m.spec.classes, y, &out);
            if let Some(path) = &a.confusion {
                let name = a.data.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned());
                let title = format!("{name}: accuracy {:.4} on {} sequences", r.accuracy, r.n);
                let chart = bptt::diagnose::plot::Confusion {
                    title,
                    classes: m.spec.classes.clone(),
                    counts: r.confusion.clone(),
                };
                chart.save(path)?;
                super::errln!("wrote {}", path.display());
            }
            if a.json {
                super::outln!("{}", serde_json::to_string(&r)?)?;
                return Ok(ExitCode::SUCCESS);
            }
            super::outln!(
                "accuracy {:.4} ({} of {}), balanced accuracy {:.4}, macro F1 {:.4}, loss {:.4}",
                r.accuracy,
                (r.accuracy * r.n as f64).round(),
                r.n,
                r.balanced_accuracy,
                r.macro_f1,
                r.loss
            )?;
            let w = m.spec.classes.iter().map(|c| c.len()).max().unwrap_or(5).max(5);
            super::outln!("{:>w$}  precision  recall      f1  support", "class")?;
            for c in &r.per_class {
                super::outln!(
                    "{:>w$}  {:>9.4}  {:>6.4}  {:>6.4}  {:>7}",
                    c.class,
                    c.precision,
                    c.recall,
                    c.f1,
                    c.support
                )?;
            }
            super::outln!("confusion matrix (rows: true class, columns: predicted, in the order above):")?;
            for (c, row) in m.spec.classes.iter().zip(&r.confusion) {
                let cells: Vec<String> = row.iter().map(|v| format!("{v:>4}")).collect();
                super::outln!("{c:>w$} {}", cells.join(""))?;
            }
        }
        (bptt::seq::fit::Truth::Values(y), _) => {
            let r = metrics::regression(y, &out);
            if a.json {
                super::outln!("{}", serde_json::to_string(&r)?)?;
            } else {
                super::outln!("mse {:.6}, mae {:.6}, r2 {:.4} over {} sequences", r.mse, r.mae, r.r2, r.n)?;
            }
        }
        _ => bail!("{}: the labels do not fit the model's task", a.data.display()),
    }
    Ok(ExitCode::SUCCESS)
}
