//! `bptt fit`: train a classifier or regressor on your own sequences (`.ts` or long-form CSV),
//! driven by the loop shared with `train` (`run.rs`): progress, metrics.jsonl, validation each
//! epoch with the best model kept, early stopping, checkpoints, resume and signals.

use super::memory;
use super::run::{self, Job, Update};
use anyhow::{Context, Result, bail};
use bptt::charlm::{Cadence, fsio};
use bptt::dist::Group;
use bptt::seq::csv::Columns;
use bptt::seq::fit::{FitConfig, FitRun, Fitter};
use bptt::seq::forecast::{self, ForecastSpec};
use bptt::seq::{Dataset, Task};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

#[derive(clap::Args)]
#[command(after_help = "Data: a .ts file (UEA/UCR: one sequence per line, its label last) or a long-form CSV \
(a header; one row per time step: a sequence id, the feature columns, the label or target). Sequences may have \
different lengths: batches are padded, and padding never counts in the loss or the pooling. Each feature is \
standardised with the training data's mean and standard deviation (stored in the model). Long series are fed \
--patch steps at a time (auto: 1 up to 64 steps, else about 20 RNN steps per series). The head reads the last \
state and the mean over each sequence's own steps (--pool). Defaults: a 1-layer GRU, H 256, dropout 0.3, \
Adam 3e-3 with a cosine decay, batch 8, 60 epochs or at least 2,000 updates (chosen on JapaneseVowels' training file and three UCR sets; see \
README).")]
pub struct Args {
    /// Training data: a .ts or long-form .csv file.
    #[arg(long, required_unless_present = "resume")]
    train: Option<PathBuf>,
    /// Validation data (else --valid-fraction of --train is held out).
    #[arg(long, conflicts_with = "resume")]
    valid: Option<PathBuf>,
    /// Fraction of the training sequences held out for validation, per class [default: 0 = none;
    /// forecast: the last 0.2 of the series, whose MAE is printed beside the baselines'].
    #[arg(long, allow_negative_numbers = true, conflicts_with_all = ["resume", "valid"], value_parser = super::finite)]
    valid_fraction: Option<f64>,
    /// classify (one class per sequence), regress (one value per sequence), label (one class per
    /// step, from a CSV whose label column changes along a sequence) or forecast (the next
    /// --horizon values of a series, from windows of its last --window steps).
    #[arg(long, default_value = "classify", conflicts_with = "resume")]
    task: String,
    /// forecast: values forecast at once.
    #[arg(long, default_value_t = 1, conflicts_with = "resume", allow_negative_numbers = true)]
    horizon: usize,
    /// forecast: steps of history per forecast [default: 3 × --season, at least 12].
    #[arg(long, conflicts_with = "resume", allow_negative_numbers = true)]
    window: Option<usize>,
    /// forecast: the season of the seasonal-naive baseline (e.g. 12 for monthly data).
    #[arg(long, default_value_t = 1, conflicts_with = "resume", allow_negative_numbers = true)]
    season: usize,
    /// forecast: the column to forecast [default: the last numeric one].
    #[arg(long, conflicts_with = "resume")]
    target_column: Option<String>,
    /// Recurrent cell: gru, lstm, rnn_tanh, rnn_relu.
    #[arg(long, default_value = "gru", conflicts_with = "resume")]
    cell: String,
    /// Hidden width H.
    #[arg(long, default_value_t = 256, conflicts_with = "resume", allow_negative_numbers = true)]
    hidden: usize,
    /// Stacked layers L.
    #[arg(long, default_value_t = 1, conflicts_with = "resume", allow_negative_numbers = true)]
    layers: usize,
    /// Every layer also reads each sequence backwards, from its last step to its first, and
    /// passes on both directions' outputs (PyTorch's bidirectional=True; about twice the time).
    #[arg(long, conflicts_with = "resume")]
    bidirectional: bool,
    /// LSTM only: project each layer's output to P < H values (PyTorch's proj_size; 0 = none).
    #[arg(long, default_value_t = 0, conflicts_with = "resume", allow_negative_numbers = true)]
    proj_size: usize,
    /// LSTM only: the LayerNorm-LSTM (Ba et al. 2016): W_ih·x, W_hh·h and c normalised per step,
    /// each with a learnt gain and bias.
    #[arg(long, conflicts_with = "resume")]
    layer_norm: bool,
    /// Zoneout Z on h (Krueger et al. 2016): in training each unit of h keeps its previous
    /// value with probability Z at each step; evaluation blends by Z. Part of the model.
    #[arg(long, default_value_t = 0.0, conflicts_with = "resume", allow_negative_numbers = true, value_parser = super::finite)]
    zoneout_h: f64,
    /// LSTM only: zoneout Z on the cell state c, as --zoneout-h.
    #[arg(long, default_value_t = 0.0, conflicts_with = "resume", allow_negative_numbers = true, value_parser = super::finite)]
    zoneout_c: f64,
    /// What the head reads: last, mean, max, or a sum such as last+mean.
    #[arg(long, default_value = "last+mean", conflicts_with = "resume")]
    pool: String,
    /// Consecutive steps fed as one RNN step (auto: 1 up to 64 steps, else ⌈T/20⌉).
    #[arg(long, default_value = "auto", conflicts_with = "resume")]
    patch: String,
    /// Passes over the training data [default: 60, or enough for 2,000 updates on a small set]; with --resume,
    /// the new total.
    #[arg(long, allow_negative_numbers = true)]
    epochs: Option<u64>,
    /// Sequences per update.
    #[arg(long, default_value_t = 8, conflicts_with = "resume", allow_negative_numbers = true)]
    batch: usize,
    /// Batches of sequences of similar lengths (as Hugging Face's group_by_length): each epoch's
    /// shuffled order is cut into runs of 50 batches, each sorted by length, so batches pad little.
    #[arg(long, conflicts_with = "resume")]
    group_by_length: bool,
    /// sgd, adam, adamw, rmsprop, adagrad.
    #[arg(long, default_value = "adam", conflicts_with = "resume")]
    optimizer: String,
    /// Learning rate.
    #[arg(long, default_value_t = 3e-3, allow_negative_numbers = true, conflicts_with = "resume", value_parser = super::finite)]
    lr: f64,
    /// Weight decay (L2 for adam, decoupled for adamw).
    #[arg(long, allow_negative_numbers = true, conflicts_with = "resume", value_parser = super::finite)]
    weight_decay: Option<f64>,
    /// constant, step:EVERY:GAMMA, exp:GAMMA, cosine[:MIN_LR] (over all updates).
    #[arg(long, default_value = "cosine", conflicts_with = "resume")]
    lr_schedule: String,
    /// Clip the global gradient norm to this (0 = off).
    #[arg(long, default_value_t = 5.0, allow_negative_numbers = true, conflicts_with = "resume", value_parser = super::finite)]
    clip_norm: f64,
    /// Dropout P on the inputs, between layers and before the head.
    #[arg(long, default_value_t = 0.3, allow_negative_numbers = true, conflicts_with = "resume", value_parser = super::finite)]
    dropout: f64,
    /// none, or balanced: weight each class by n / (classes · its count).
    #[arg(long, default_value = "none", conflicts_with = "resume")]
    class_weight: String,
    /// Stop after this many epochs without a better validation loss (0 = never).
    #[arg(long, default_value_t = 0, conflicts_with = "resume", allow_negative_numbers = true)]
    patience: u64,
    /// Seed of the initialisation, the split, the order of each epoch and the dropout.
    #[arg(long, default_value_t = 1, conflicts_with = "resume", allow_negative_numbers = true)]
    seed: u64,
    /// CSV: the sequence-id column [default: id, series or sequence].
    #[arg(long, conflicts_with = "resume")]
    id_column: Option<String>,
    /// CSV: the label or target column [default: label, class, target or y].
    #[arg(long, conflicts_with = "resume")]
    label_column: Option<String>,
    /// Also checkpoint every N updates (besides each epoch's end).
    #[arg(long, default_value_t = 0, conflicts_with = "resume", allow_negative_numbers = true)]
    checkpoint_every_steps: u64,
    /// Stop after N consecutive updates with a non-finite gradient.
    #[arg(long, default_value_t = 10, conflicts_with = "resume", allow_negative_numbers = true)]
    max_bad_steps: u32,
    /// Threads: the caller plus N − 1 helpers share the parts of every pass [default: all cores]. A given seed reproduces a run bit for bit at any thread count.
    #[arg(long, allow_negative_numbers = true)]
    threads: Option<usize>,
    /// Output folder [default: runs/fit-<UTC timestamp>].
    #[arg(long, conflicts_with = "resume")]
    out: Option<PathBuf>,
    /// Start a fresh run even if --out already holds run files (they are replaced).
    #[arg(long, conflicts_with = "resume")]
    force: bool,
    /// Take over the run folder's lock although it names a process on another host (a run whose
    /// machine or container is gone). A live process on this host is still refused.
    #[arg(long)]
    force_unlock: bool,
    /// Continue the run in DIR from its checkpoint (bit-exact).
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
}

/// The flags that lower the memory a run needs.
const TRAINING: &str = "lower --hidden, --layers or --batch, or raise --patch";

/// Reads a data file (its memory estimated first) and its hash.
pub fn read_data(path: &Path, columns: &Columns, threads: usize) -> Result<(Dataset, String)> {
    memory::Estimate::new(threads)
        .add("data file and its values", memory::file_bytes(path).saturating_mul(3))
        .check("use a smaller data file")?;
    let bytes = fsio::read_bounded(path, 1 << 30)?;
    let hash = run::fnv1a64(&bytes);
    drop(bytes);
    Ok((bptt::seq::read(path, columns)?, hash))
}

pub fn run(a: Args) -> Result<ExitCode> {
    let threads = super::threads(a.threads)?;
    let signal = Arc::new(AtomicUsize::new(0));
    let group = Arc::new(super::group(signal.clone())?);
    let setup = match &a.resume {
        Some(dir) => resume(&a, dir, threads, &group),
        None => fresh(&a, threads, &group),
    };
    let setup = match super::run::agree_to_start(&group, setup)? {
        Ok(setup) => setup,
        Err(code) => return Ok(code),
    };
    let (mut fitter, dir, _lock) = setup;
    let root = group.is_root();
    let (n_train, n_valid) = fitter.sizes();
    let patch = fitter.model.spec.patch;
    let ranks = if group.size() > 1 { format!(" on {} ranks", group.size()) } else { String::new() };
    if root {
        super::errln!(
            "fit: {n_train} training and {n_valid} validation sequences, {} features, patch {patch}, {} updates of {} \
         in {} epochs{ranks}; writing {}",
            fitter.model.spec.features,
            fitter.total,
            fitter.batch(),
            fitter.cfg.epochs.unwrap_or(0),
            dir.display()
        );
    }
    let cadence = Cadence { eval_every: 0, sample_every: 0, checkpoint_every_steps: a.checkpoint_every_steps };
    let mut job = FitJob { f: &mut fitter };
    let code = run::end_run(&group, run::train_loop(&mut job, &dir, cadence, signal), &dir, "fit")?;
    if code == ExitCode::SUCCESS
        && root
        && let Some(spec) = fitter.cfg.forecast
    {
        let config = FitRun::parse(&fsio::read_bounded(&dir.join("config.json"), 1 << 24)?, &dir.join("config.json"))?;
        // The last model, not best.safetensors: that one was chosen on these same windows.
        let last = dir.join("model.safetensors");
        let model = bptt::seq::SeqModel::load(&last)?;
        let fraction = config.forecast_fraction.unwrap_or(0.2);
        super::evaluate::forecast_table(&model, &config.train, &spec, fraction, threads, &last)?;
    }
    Ok(code)
}

fn columns(a: &Args, task: Task) -> Columns {
    Columns {
        id: a.id_column.clone(),
        label: a.label_column.clone(),
        values: task == Task::Regress,
        per_step: task == Task::Label,
    }
}

/// A forecaster's training and held-out windows of the series at `path` (the last `fraction`).
pub fn forecast_windows(path: &Path, spec: &ForecastSpec, fraction: f64) -> Result<(Dataset, Dataset, usize)> {
    let series = forecast::read_series(path)?;
    let t = series.len();
    let cut = ((t as f64) * (1.0 - fraction)).round() as usize;
    let (train, valid) = (series.windows(spec, 0, cut), series.windows(spec, cut, t));
    if train.is_empty() || valid.is_empty() {
        bail!(
            "{}: {t} steps leave no training or held-out window of {} + {} steps: give a longer series, a smaller \
             --window or --horizon, or another --valid-fraction",
            path.display(),
            spec.window,
            spec.horizon
        );
    }
    Ok((train, valid, cut))
}

fn fresh(a: &Args, threads: usize, group: &Arc<Group>) -> Result<(Fitter, PathBuf, Option<fsio::RunLock>)> {
    let forecasting = a.task == "forecast";
    let task: Task = if forecasting { Task::Regress } else { a.task.parse()? };
    let cols = columns(a, task);
    let train_path = a.train.clone().context("--train is required")?;
    run::check_out(a.out.as_deref())?;
    let valid_fraction = a.valid_fraction.unwrap_or(if forecasting { 0.2 } else { 0.0 });
    let mut forecast_spec = None;
    let (train, train_hash, valid) = if forecasting {
        if a.valid.is_some() {
            bail!("--task forecast holds out the end of the series (--valid-fraction), not a --valid file");
        }
        if a.horizon == 0 || a.season == 0 || a.window == Some(0) {
            bail!("--horizon, --season and --window must be at least 1");
        }
        let series = forecast::read_series(&train_path)?;
        let target =
            series.column(a.target_column.as_deref()).map_err(|m| anyhow::anyhow!("{}: {m}", train_path.display()))?;
        let window = a.window.unwrap_or((3 * a.season).max(12));
        let spec = ForecastSpec { window, horizon: a.horizon, season: a.season, target };
        forecast_spec = Some(spec);
        let (train, valid, _) = forecast_windows(&train_path, &spec, valid_fraction)?;
        let hash = run::fnv1a64(&fsio::read_bounded(&train_path, 1 << 30)?);
        (train, hash, Some((valid, String::new())))
    } else {
        let (train, hash) = read_data(&train_path, &cols, threads)?;
        let valid = match &a.valid {
            Some(p) => Some(read_data(p, &cols, threads)?),
            None => None,
        };
        (train, hash, valid)
    };
    let patch = match a.patch.as_str() {
        "auto" => 0,
        v => match v.parse::<usize>() {
            Ok(k) if k >= 1 => k,
            _ => bail!("--patch takes a whole number ≥ 1 or auto, got '{v}'"),
        },
    };
    let balanced = match a.class_weight.as_str() {
        "none" => false,
        "balanced" => true,
        other => bail!("--class-weight takes none or balanced, got '{other}'"),
    };
    let cfg = FitConfig {
        task,
        cell: a.cell.parse()?,
        hidden: a.hidden,
        layers: a.layers,
        bidirectional: a.bidirectional,
        proj_size: a.proj_size,
        layer_norm: a.layer_norm,
        zoneout_h: a.zoneout_h,
        zoneout_c: a.zoneout_c,
        pool: a.pool.clone(),
        patch,
        epochs: a.epochs,
        batch: a.batch,
        group_by_length: a.group_by_length,
        optimizer: a.optimizer.clone(),
        lr: a.lr,
        weight_decay: a.weight_decay,
        lr_schedule: a.lr_schedule.clone(),
        clip_norm: a.clip_norm,
        dropout: a.dropout,
        balanced,
        valid_fraction: if forecasting { 0.0 } else { valid_fraction },
        patience: a.patience,
        seed: a.seed,
        max_bad_steps: a.max_bad_steps.max(1),
        forecast: forecast_spec,
    };
    cfg.validate().map_err(flag_names)?;
    memory::Estimate::new(threads).add("training", Fitter::estimate_bytes(&cfg, &train)?).check(TRAINING)?;
    let (valid_path, valid_hash) = (a.valid.clone(), a.valid.as_ref().and(valid.as_ref()).map(|(_, h)| h.clone()));
    let fitter = Fitter::new_in(group.clone(), cfg.clone(), train, valid.map(|(d, _)| d), threads)
        .map_err(|e| data_error(e, &train_path, a.valid.as_deref()))?;
    if !group.is_root() {
        // Rank 0 alone writes the run folder.
        return Ok((fitter, a.out.clone().unwrap_or_default(), None));
    }
    let (dir, lock) = run::claim_folder(a.out.as_deref(), "fit-", a.force, a.force_unlock)?;
    let config = FitRun {
        forecast_fraction: forecasting.then_some(valid_fraction),
        fit: fitter.cfg.clone(),
        train: train_path,
        train_fnv1a64: train_hash,
        valid: valid_path,
        valid_fnv1a64: valid_hash,
        id_column: a.id_column.clone(),
        label_column: a.label_column.clone(),
        checkpoint_every_steps: a.checkpoint_every_steps,
    };
    fsio::write_atomic(&dir.join("config.json"), config.to_json()?.as_bytes())?;
    fsio::write_atomic(&dir.join(run::METRICS), b"")?;
    Ok((fitter, dir, Some(lock)))
}

/// A library error about the data, with the file it concerns.
fn data_error(e: bptt::Error, train: &Path, valid: Option<&Path>) -> anyhow::Error {
    match (&e, valid) {
        (bptt::Error::Data(m), Some(v))
            if m.contains("the model was trained on") || m.contains("not one the model") =>
        {
            anyhow::anyhow!("{}: {m}", v.display())
        }
        (bptt::Error::Data(m), _) => anyhow::anyhow!("{}: {m}", train.display()),
        _ => flag_names(e),
    }
}

/// Library messages name settings; the command line names its flags.
fn flag_names(e: bptt::Error) -> anyhow::Error {
    let m = e.to_string();
    let flag = [
        ("epochs", "--epochs"),
        ("batch", "--batch"),
        ("learning rate", "--lr"),
        ("dropout", "--dropout"),
        ("validation fraction", "--valid-fraction"),
        ("clip norm", "--clip-norm"),
        ("pooling", "--pool"),
        ("learning-rate schedule", "--lr-schedule"),
        ("hidden size", "--hidden"),
        ("number of layers", "--layers"),
        ("patch", "--patch"),
        ("class weights", "--class-weight"),
    ]
    .iter()
    .find(|(k, _)| m.starts_with(k) || m.contains(&format!(" {k} ")))
    .map(|(_, f)| *f);
    match flag {
        Some(f) => anyhow::anyhow!("{f}: {m}"),
        None => anyhow::anyhow!(m),
    }
}

fn resume(
    a: &Args,
    dir: &Path,
    threads: usize,
    group: &Arc<Group>,
) -> Result<(Fitter, PathBuf, Option<fsio::RunLock>)> {
    if !dir.is_dir() {
        bail!("{}: no such run folder: give the --out folder of an earlier fit", dir.display());
    }
    let lock = if group.is_root() { Some(super::run::lock_folder(dir, a.force_unlock)?) } else { None };
    let cfg_path = dir.join("config.json");
    let config = FitRun::parse(&fsio::read_bounded(&cfg_path, 1 << 24)?, &cfg_path)?;
    let cols = Columns {
        id: config.id_column.clone(),
        label: config.label_column.clone(),
        values: config.fit.task == Task::Regress,
        per_step: config.fit.task == Task::Label,
    };
    let hash = run::fnv1a64(&fsio::read_bounded(&config.train, 1 << 30)?);
    if hash != config.train_fnv1a64 {
        bail!("{} differs from the data this run was trained on: resume with the same file", config.train.display());
    }
    let (train, valid) = match (config.fit.forecast, config.forecast_fraction) {
        (Some(spec), Some(fraction)) => {
            let (t, v, _) = forecast_windows(&config.train, &spec, fraction)?;
            (t, Some(v))
        }
        _ => (read_data(&config.train, &cols, threads)?.0, resume_valid(&config, &cols, threads)?),
    };
    let ckpt_path = dir.join(run::CHECKPOINT);
    let bytes = fsio::read_bounded(&ckpt_path, 1 << 36)?;
    let fitter = Fitter::resume_in(group.clone(), &bytes, train, valid, a.epochs, threads)
        .map_err(|e| anyhow::anyhow!("{}: {e}", ckpt_path.display()))?;
    run::same_run(&config.fit, &fitter.cfg, &["epochs"])?;
    if group.is_root() {
        run::reopen_folder(dir, fitter.step)?;
    }
    Ok((fitter, dir.to_path_buf(), lock))
}

/// The validation file of a run being resumed, checked to be the one it started with.
fn resume_valid(config: &FitRun, cols: &Columns, threads: usize) -> Result<Option<Dataset>> {
    Ok(match (&config.valid, &config.valid_fnv1a64) {
        (Some(p), Some(h)) => {
            let (v, hv) = read_data(p, cols, threads)?;
            if &hv != h {
                bail!("{} differs from the validation data of this run: resume with the same file", p.display());
            }
            Some(v)
        }
        _ => None,
    })
}

/// A [`Fitter`] as the loop's job.
struct FitJob<'a> {
    f: &'a mut Fitter,
}

impl Job for FitJob<'_> {
    const COMMAND: &'static str = "fit";
    const UNIT: &'static str = "seq";
    // Early stopping acts on validation: every rank must see it.
    const VALIDATE_EVERYWHERE: bool = true;

    fn position(&self) -> (u64, u64) {
        (self.f.step, self.f.total)
    }

    fn done(&self) -> bool {
        self.f.done()
    }

    fn update(&mut self) -> Result<Update> {
        let m = self.f.step()?;
        let work = self.f.batch() as f64;
        Ok(Update { line: serde_json::to_value(m)?, step: m.step, skipped: m.skipped, work })
    }

    fn eval_due(&self, _step: u64, _cadence: &Cadence) -> bool {
        self.f.epoch_ended()
    }

    fn validate(&mut self) -> Result<Option<(serde_json::Map<String, serde_json::Value>, bool)>> {
        Ok(self.f.validate()?.map(|s| {
            let mut fields = serde_json::Map::from_iter([("val_loss".to_string(), s.loss.into())]);
            if let Some(acc) = s.accuracy {
                fields.insert("val_accuracy".into(), acc.into());
            }
            if let Some(mae) = s.mae {
                fields.insert("val_mae".into(), mae.into());
            }
            (fields, self.f.since_best == 0)
        }))
    }

    fn health(&self) -> bptt::Result<()> {
        self.f.health()
    }

    fn model_bytes(&self) -> Result<Vec<u8>> {
        Ok(self.f.model.to_bytes_with(&[], &[])?)
    }

    fn checkpoint_bytes(&self) -> Result<Vec<u8>> {
        Ok(self.f.checkpoint_bytes()?)
    }

    fn message(&self, loss: f64, val: Option<f64>, rate: f64) -> String {
        let val = val.map_or(String::new(), |v| format!(" val {v:.4}"));
        format!("ep {} loss {loss:.4}{val} {rate:.0} seq/s", self.f.epoch)
    }

    fn summary(&self, dir: &Path) -> String {
        let early = if self.f.stopped_early() { " (stopped early: no better validation loss)" } else { "" };
        let best = match self.f.best_val {
            Some(v) => {
                format!("; best validation loss {v:.4}, that model in {}", dir.join("best.safetensors").display())
            }
            None => String::new(),
        };
        format!(
            "trained {} epochs ({} updates){early}; model in {}{best}",
            self.f.epoch,
            self.f.step,
            dir.join("model.safetensors").display()
        )
    }

    fn fingerprint(&self) -> Vec<(String, u64)> {
        self.f.fingerprint()
    }

    fn group(&self) -> &Group {
        self.f.group()
    }
}
