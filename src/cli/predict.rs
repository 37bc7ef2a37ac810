//! `bptt predict`: a `fit` model's predictions for every sequence of a data file — the class and
//! its probabilities, or the value — as CSV (stdout or `--out FILE.csv`) or JSON (`--out
//! FILE.json`).

use super::memory;
use anyhow::{Result, bail};
use bptt::charlm::fsio;
use bptt::seq::csv::Columns;
use bptt::seq::{SeqModel, Task};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// A model written by `bptt fit` (model.safetensors or best.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// The sequences: a .ts or long-form .csv file (labels, if any, are ignored).
    #[arg(long)]
    data: PathBuf,
    /// Write to this .csv or .json file instead of printing CSV.
    #[arg(long)]
    out: Option<PathBuf>,
    /// CSV: the sequence-id column [default: id, series or sequence].
    #[arg(long)]
    id_column: Option<String>,
    /// CSV: the label column to ignore [default: label, class, target or y].
    #[arg(long)]
    label_column: Option<String>,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 256, allow_negative_numbers = true)]
    batch: usize,
    /// Threads [default: all cores].
    #[arg(long, allow_negative_numbers = true)]
    threads: Option<usize>,
}

/// Loads a `fit` model and the data to run it on (memory estimated first), checked to match.
pub fn load(
    model: &Path,
    data: &Path,
    id: Option<String>,
    label: Option<String>,
    threads: usize,
) -> Result<(SeqModel, bptt::seq::Dataset)> {
    memory::Estimate::new(threads)
        .add("model file and weights", memory::file_bytes(model).saturating_mul(2))
        .check("the model is too large for this machine")?;
    let m = SeqModel::load(model)?;
    let columns = Columns { id, label, values: m.spec.task == Task::Regress, per_step: m.spec.task == Task::Label };
    let (d, _) = super::fit::read_data(data, &columns, threads)?;
    m.check_data(&d).map_err(|e| anyhow::anyhow!("{}: {e}", data.display()))?;
    Ok((m, d))
}

/// The forecast spec of the model at `path`, if it is a forecaster.
pub fn forecaster(path: &Path, threads: usize) -> Result<Option<bptt::seq::forecast::ForecastSpec>> {
    memory::Estimate::new(threads)
        .add("model file and weights", memory::file_bytes(path).saturating_mul(2))
        .check("the model is too large for this machine")?;
    Ok(SeqModel::load(path)?.spec.forecast)
}

pub fn run(a: Args) -> Result<ExitCode> {
    let threads = super::threads(a.threads)?;
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if let Some(spec) = forecaster(&a.model, threads)? {
        // The next `horizon` values after the series' last `window` steps.
        let m = SeqModel::load(&a.model)?;
        let series = bptt::seq::forecast::read_series(&a.data)?;
        let (t, f) = (series.len(), series.names.len());
        if f != m.spec.features || t < spec.window {
            bail!(
                "{}: the model reads {} steps of {} numeric columns; the series has {t} steps of {f}",
                a.data.display(),
                spec.window,
                m.spec.features
            );
        }
        let last = bptt::seq::Dataset {
            features: f,
            lengths: vec![spec.window],
            values: series.values[(t - spec.window) * f..].to_vec(),
            labels: bptt::seq::Labels::None,
        };
        let out = m.predict(&last, 1, threads)?;
        let mut text = String::from("step,value\n");
        for (k, v) in out.iter().enumerate() {
            text.push_str(&format!("{},{v}\n", t + k));
        }
        return write_out(a.out.as_deref(), &text, out.len());
    }
    let (m, data) = load(&a.model, &a.data, a.id_column.clone(), a.label_column.clone(), threads)?;
    let out = m.predict(&data, a.batch, threads)?;
    let o = m.spec.outputs();
    let json = a.out.as_ref().is_some_and(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")));
    // Each row's sequence (and, labelling, step).
    let keys: Vec<(usize, Option<usize>)> = if m.spec.task == Task::Label {
        data.lengths.iter().enumerate().flat_map(|(i, &len)| (0..len).map(move |t| (i, Some(t)))).collect()
    } else {
        (0..data.len()).map(|i| (i, None)).collect()
    };
    let best = |p: &[f32]| (0..o).fold(0, |b, k| if p[k] > p[b] { k } else { b });
    let text = if json {
        let rows: Vec<serde_json::Value> = out
            .chunks_exact(o)
            .zip(&keys)
            .map(|(p, &(i, t))| {
                let mut row = match m.spec.task {
                    Task::Regress => serde_json::json!({"index": i, "value": p[0] as f64}),
                    Task::Classify | Task::Label => {
                        let probs: serde_json::Map<String, serde_json::Value> =
                            m.spec.classes.iter().zip(p).map(|(c, &v)| (c.clone(), (v as f64).into())).collect();
                        serde_json::json!({"index": i, "class": m.spec.classes[best(p)], "probabilities": probs})
                    }
                };
                if let Some(t) = t {
                    row["step"] = t.into();
                }
                row
            })
            .collect();
        serde_json::to_string(&rows)? + "\n"
    } else {
        let step = if m.spec.task == Task::Label { "step," } else { "" };
        let mut s = match m.spec.task {
            Task::Classify | Task::Label => {
                let cols: Vec<String> = m.spec.classes.iter().map(|c| format!("p_{c}")).collect();
                format!("index,{step}class,{}\n", cols.join(","))
            }
            Task::Regress => "index,value\n".to_string(),
        };
        for (p, &(i, t)) in out.chunks_exact(o).zip(&keys) {
            let key = t.map_or(i.to_string(), |t| format!("{i},{t}"));
            match m.spec.task {
                Task::Classify | Task::Label => {
                    let probs: Vec<String> = p.iter().map(|v| format!("{v:.6}")).collect();
                    s.push_str(&format!("{key},{},{}\n", m.spec.classes[best(p)], probs.join(",")));
                }
                Task::Regress => s.push_str(&format!("{key},{}\n", p[0])),
            }
        }
        s
    };
    write_out(a.out.as_deref(), &text, data.len())
}

/// Writes the predictions to `out` (atomically) or standard output.
fn write_out(out: Option<&Path>, text: &str, n: usize) -> Result<ExitCode> {
    match out {
        Some(path) => {
            fsio::write_atomic(path, text.as_bytes())?;
            super::errln!("wrote {n} predictions to {}", path.display());
        }
        None => {
            use std::io::Write as _;
            std::io::stdout()
                .lock()
                .write_all(text.as_bytes())
                .map_err(|e| anyhow::Error::new(e).context("cannot write to standard output"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
