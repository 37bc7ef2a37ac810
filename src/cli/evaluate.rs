//! `bptt evaluate`: how good a `fit` model is on labelled data — accuracy, balanced accuracy,
//! per-class precision / recall / F1 and the confusion matrix (classification), MSE / MAE / R²
//! (regression); `--json` prints one line.

use anyhow::{Result, bail};
use bptt::seq::{Task, metrics};
use std::path::PathBuf;
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
    /// CSV: the sequence-id column [default: id, series or sequence].
    #[arg(long)]
    id_column: Option<String>,
    /// CSV: the label column [default: label, class, target or y].
    #[arg(long)]
    label_column: Option<String>,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let threads = super::threads(a.threads)?;
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let (m, data) = super::predict::load(&a.model, &a.data, a.id_column.clone(), a.label_column.clone(), threads)?;
    let truth = m.truth(&data).map_err(|e| anyhow::anyhow!("{}: {e}", a.data.display()))?;
    let out = m.predict(&data, a.batch, threads)?;
    match (&truth, m.spec.task) {
        (bptt::seq::fit::Truth::Classes(y), Task::Classify) => {
            let r = metrics::classification(&m.spec.classes, y, &out);
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
