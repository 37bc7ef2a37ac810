//! `bptt train`: the char-LM training run — its settings, data and resume — driven by the loop
//! shared with `fit` (`run.rs`: progress bar, metrics.jsonl, checkpoints, resume,
//! an exclusive claim on the run folder, and a clean stop on SIGINT, SIGTERM or SIGHUP).

use super::memory;
use anyhow::{Context, Result, bail};
use bptt::CellKind;
use bptt::charlm::train::TrainConfig;
use bptt::charlm::{Cadence, CharModel, ModelSpec, RunFile, Sampler, Trainer, Vocab, fsio};
use bptt::dist::Group;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

/// Data semantics: the vocabulary is the text's distinct characters sorted by code point
/// (unless --init gives one); the last --val-fraction of the text is validation; the rest is
/// cut into --batch contiguous streams; update s trains positions [s·T, s·T+T) of every stream
/// on the next characters, carrying the hidden state between updates and resetting it at each
/// epoch; the loss is the mean cross-entropy over B·T. With --batch 1 --val-fraction 0 the
/// first update trains text[0..T] → text[1..T+1].
#[derive(clap::Args)]
#[command(after_help = "Data: the vocabulary is the text's distinct characters sorted by code point (or --init's). \
The last --val-fraction of the text is validation; the rest is cut into --batch contiguous streams. \
Update s trains positions [sT, sT+T) of every stream on the next characters; the hidden state is carried \
between updates (truncated BPTT) and reset at each epoch. Loss = mean cross-entropy over B*T. \
So --batch 1 --val-fraction 0 makes the first update train text[0..T] -> text[1..T+1].")]
pub struct Args {
    /// UTF-8 training text.
    #[arg(long, required_unless_present = "resume")]
    text: Option<PathBuf>,
    /// Recurrent cell: lstm, gru, rnn_tanh, rnn_relu.
    #[arg(long, default_value = "lstm", conflicts_with_all = ["init", "resume"])]
    cell: String,
    /// Embedding width E.
    #[arg(long, default_value_t = 64, conflicts_with_all = ["init", "resume"], allow_negative_numbers = true)]
    embedding_dim: usize,
    /// Hidden width H.
    #[arg(long, default_value_t = 256, conflicts_with_all = ["init", "resume"], allow_negative_numbers = true)]
    hidden: usize,
    /// Stacked layers L.
    #[arg(long, default_value_t = 2, conflicts_with_all = ["init", "resume"], allow_negative_numbers = true)]
    layers: usize,
    /// LSTM only: the LayerNorm-LSTM (Ba et al. 2016): W_ih·x, W_hh·h and c normalised per step,
    /// each with a learnt gain and bias.
    #[arg(long, conflicts_with_all = ["init", "resume"])]
    layer_norm: bool,
    /// Zoneout Z on h (Krueger et al. 2016): in training each unit of h keeps its previous
    /// value with probability Z at each step; evaluation blends by Z. Part of the model.
    #[arg(long, default_value_t = 0.0, conflicts_with_all = ["init", "resume"], allow_negative_numbers = true, value_parser = super::finite)]
    zoneout_h: f64,
    /// LSTM only: zoneout Z on the cell state c, as --zoneout-h.
    #[arg(long, default_value_t = 0.0, conflicts_with_all = ["init", "resume"], allow_negative_numbers = true, value_parser = super::finite)]
    zoneout_c: f64,
    /// Steps per update T (the BPTT window).
    #[arg(long, default_value_t = 100, conflicts_with = "resume", allow_negative_numbers = true)]
    seq_len: usize,
    /// Streams per update B [default: 32; 1 with --online].
    #[arg(long, conflicts_with = "resume", allow_negative_numbers = true)]
    batch: Option<usize>,
    /// Truncated BPTT: every K1 steps back-propagate through the last K2 (overrides --seq-len).
    #[arg(long, value_name = "K1:K2", conflicts_with = "resume")]
    tbptt: Option<String>,
    /// Memory-efficient BPTT: keep the state every K steps of a window and recompute segments
    /// in the backward pass (0 = plain BPTT; `auto` = √(window)); same gradients, O(K + T/K)
    /// activation memory for about 1.5× the time.
    #[arg(long, value_name = "K|auto", default_value = "0", conflicts_with = "resume")]
    checkpoint_every: String,
    /// sgd, adam, adamw, rmsprop, adagrad.
    #[arg(long, default_value = "adam", conflicts_with = "resume")]
    optimizer: String,
    /// Learning rate.
    #[arg(long, default_value_t = 2e-3, allow_negative_numbers = true, conflicts_with = "resume", value_parser = super::finite)]
    lr: f64,
    /// Momentum (sgd, rmsprop).
    #[arg(long, allow_negative_numbers = true, conflicts_with = "resume", value_parser = super::finite)]
    momentum: Option<f64>,
    /// Weight decay (L2 for sgd/adam/rmsprop/adagrad, decoupled for adamw).
    #[arg(long, allow_negative_numbers = true, conflicts_with = "resume", value_parser = super::finite)]
    weight_decay: Option<f64>,
    /// constant, step:EVERY:GAMMA, exp:GAMMA, cosine[:MIN_LR].
    #[arg(long, default_value = "constant", conflicts_with = "resume")]
    lr_schedule: String,
    /// Linear learning-rate warm-up over this many updates.
    #[arg(long, default_value_t = 0, conflicts_with = "resume", allow_negative_numbers = true)]
    warmup: u64,
    /// Clip the global gradient norm to this (0 = off).
    #[arg(long, default_value_t = 5.0, allow_negative_numbers = true, conflicts_with = "resume", value_parser = super::finite)]
    clip_norm: f64,
    /// Clip every gradient element to [-V, V].
    #[arg(long, allow_negative_numbers = true, conflicts_with = "resume", value_parser = super::finite)]
    clip_value: Option<f64>,
    /// Total updates [default: one epoch]; with --resume, the new total.
    #[arg(long, conflicts_with = "epochs", allow_negative_numbers = true)]
    steps: Option<u64>,
    /// Train for this many epochs instead of --steps.
    #[arg(long, allow_negative_numbers = true)]
    epochs: Option<u64>,
    /// Fraction of the text, at its end, held out for validation.
    #[arg(long, default_value_t = 0.1, allow_negative_numbers = true, conflicts_with = "resume", value_parser = super::finite)]
    val_fraction: f64,
    /// Evaluate, save model.safetensors/best.safetensors and checkpoint every N updates (0 = only
    /// at the end) [default: 200; with --resume, the run's].
    #[arg(long, allow_negative_numbers = true)]
    eval_every: Option<u64>,
    /// Print a short sample every N updates (0 = never) [default: 0; with --resume, the run's].
    #[arg(long, allow_negative_numbers = true)]
    sample_every: Option<u64>,
    /// Also checkpoint every N updates (0 = only at evaluations and the end) [default: 0; with
    /// --resume, the run's].
    #[arg(long, allow_negative_numbers = true)]
    checkpoint_every_steps: Option<u64>,
    /// Seed of the initialisation and samples.
    #[arg(long, default_value_t = 1337, conflicts_with = "resume", allow_negative_numbers = true)]
    seed: u64,
    /// Threads: the caller plus N − 1 helpers share the parts of every pass [default: all cores]. A given seed reproduces a run bit for bit at any thread count.
    #[arg(long, allow_negative_numbers = true)]
    threads: Option<usize>,
    /// Output folder [default: runs/<UTC timestamp>].
    #[arg(long, conflicts_with = "resume")]
    out: Option<PathBuf>,
    /// Start from this model file; its vocabulary and architecture win.
    #[arg(long, conflicts_with = "resume")]
    init: Option<PathBuf>,
    /// Continue the run in DIR from its checkpoint (bit-exact).
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// Stop after N consecutive updates with a non-finite gradient.
    #[arg(long, default_value_t = 10, conflicts_with = "resume", allow_negative_numbers = true)]
    max_bad_steps: u32,
    /// Stop if the training loss exceeds F x the first loss.
    #[arg(long, conflicts_with = "resume", allow_negative_numbers = true, value_parser = super::finite)]
    abort_loss_factor: Option<f64>,
    /// Dropout P on the non-recurrent connections: the embedding output, between layers and
    /// before the readout (PyTorch's word-language-model example; a fresh mask per step).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true, conflicts_with_all = ["resume", "locked_dropout"], value_parser = super::finite)]
    dropout: f64,
    /// As --dropout, with one mask per stream and unit for the whole window (variational
    /// dropout, Gal & Ghahramani 2016).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true, conflicts_with = "resume", value_parser = super::finite)]
    locked_dropout: f64,
    /// DropConnect P on every layer's W_hh, one mask per update (AWD-LSTM's weight drop).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true, conflicts_with = "resume", value_parser = super::finite)]
    weight_drop: f64,
    /// Learn online while streaming one copy of the text (B = 1, no stored window): an update
    /// after every character, its gradient through the past carried forward in time by snap
    /// (SnAp-1, about a forward step's cost), uoro (UORO, an unbiased rank-one estimate) or rtrl
    /// (exact real-time recurrent learning; tiny models only). A step is --seq-len characters.
    #[arg(long, value_name = "snap|uoro|rtrl", conflicts_with_all = ["resume", "tbptt"])]
    online: Option<String>,
    /// f32, or bf16: the training passes' large products take bf16 operands with f32
    /// accumulation (CPUs with AVX512-BF16; f32 elsewhere). Weights, optimizer and validation
    /// stay f32.
    #[arg(long, default_value = "f32", value_name = "f32|bf16", conflicts_with = "resume")]
    precision: String,
    /// Start a fresh run even if --out already holds run files (they are replaced).
    #[arg(long, conflicts_with = "resume")]
    force: bool,
    /// Take over the run folder's lock although it names a process on another host (a run whose
    /// machine or container is gone). A live process on this host is still refused.
    #[arg(long)]
    force_unlock: bool,
    /// With --resume under mpirun: continue a checkpoint written by another number of ranks
    /// (the batch is split anew; the run is no longer bit for bit the one it would have been).
    #[arg(long, requires = "resume")]
    reshard: bool,
    /// Under mpirun: average the gradient layer by layer while the backward pass goes on
    /// (`overlap`), or in one all-reduce after it (`after`). (Listed only in MPI builds.)
    #[arg(long, value_name = "overlap|after", default_value = "overlap", hide = cfg!(not(feature = "mpi")))]
    grad_sync: String,
}

/// The flags where given, else `base`.
fn cadence_from_flags(a: &Args, base: Cadence) -> Cadence {
    Cadence {
        eval_every: a.eval_every.unwrap_or(base.eval_every),
        sample_every: a.sample_every.unwrap_or(base.sample_every),
        checkpoint_every_steps: a.checkpoint_every_steps.unwrap_or(base.checkpoint_every_steps),
    }
}

const DEFAULT_CADENCE: Cadence = Cadence { eval_every: 200, sample_every: 0, checkpoint_every_steps: 0 };

fn read_text(path: &Path) -> Result<(String, String)> {
    let text = fsio::read_text(path)?;
    let hash = super::run::fnv1a64(text.as_bytes());
    Ok((text, hash))
}

/// The flags that lower the memory a text needs, and a run's training state.
const TEXT: &str = "use a shorter --text";
const TRAINING: &str = "lower --hidden, --layers, --batch or --seq-len (K2 of --tbptt), or use --checkpoint-every auto";

/// A run being set up: the trainer, its folder, cadence and (rank 0) the folder's lock.
type Setup = (Trainer, PathBuf, Cadence, Option<fsio::RunLock>);

pub fn run(a: Args) -> Result<ExitCode> {
    let threads = super::threads(a.threads)?;
    let overlap = match a.grad_sync.as_str() {
        "overlap" => true,
        "after" => false,
        other => bail!("--grad-sync takes overlap or after, got '{other}'"),
    };
    // The first signal's number; a wait for the other ranks watches it too.
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
    let (mut trainer, dir, cadence, _lock) = setup;
    trainer.set_overlap(overlap);
    super::run::end_run(&group, super::run::train_loop(&mut trainer, &dir, cadence, signal), &dir, "train")
}

fn fresh(a: &Args, threads: usize, group: &Arc<Group>) -> Result<Setup> {
    let text_path = a.text.clone().context("--text is required")?;
    super::run::check_out(a.out.as_deref())?;
    let ext = text_path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if matches!(ext.as_str(), "ts" | "csv" | "npz" | "npy" | "arff" | "parquet") && group.is_root() {
        super::errln!(
            "warning: {} looks like a data file, not a text: `bptt train` learns its characters; for labelled \
             sequences use `bptt fit --train {}`",
            text_path.display(),
            text_path.display()
        );
    }
    let text_bytes = memory::file_bytes(&text_path);
    memory::Estimate::new(threads).add("text and its ids", text_bytes.saturating_mul(2)).check(TEXT)?;
    let (text, hash) = read_text(&text_path)?;
    // A model from --init, or the spec and vocabulary of a new one (created once its
    // training state is known to fit).
    let (spec, vocab, init) = match &a.init {
        Some(path) => {
            let m = CharModel::load(path)?;
            (m.spec, m.vocab.clone(), Some(m))
        }
        None => {
            let cell: CellKind = a.cell.parse()?;
            let (hidden, layers, layer_norm) = (a.hidden, a.layers, a.layer_norm);
            let zoneout = bptt::Zoneout { h: a.zoneout_h, c: a.zoneout_c };
            let spec = ModelSpec { cell, embedding_dim: a.embedding_dim, hidden, layers, layer_norm, zoneout };
            let vocab = Vocab::from_text(&text)?;
            spec.validate(vocab.len())?;
            (spec, vocab, None)
        }
    };
    let ids = vocab.encode(&text).map_err(|e| match &a.init {
        Some(init) => {
            anyhow::anyhow!("{}: {e}; the vocabulary comes from --init {}", text_path.display(), init.display())
        }
        None => e.into(),
    })?;
    drop(text); // the ids are all that is trained on: at most 2× the text at the peak
    let (k1, k2) = match &a.tbptt {
        None => (a.seq_len, a.seq_len),
        Some(s) => {
            let parse = |v: &str| v.trim().parse::<usize>().ok();
            match s.split_once(':').map(|(x, y)| (parse(x), parse(y))) {
                Some((Some(k1), Some(k2))) => (k1, k2),
                _ => bail!("--tbptt takes K1:K2, two whole numbers such as 50:100, got '{s}'"),
            }
        }
    };
    if a.locked_dropout != 0.0 && !(0.0..1.0).contains(&a.locked_dropout) {
        bail!("--locked-dropout must be in [0, 1), got {}", a.locked_dropout);
    }
    let mut cfg = TrainConfig {
        model: spec,
        seq_len: k2,
        k1,
        batch: a.batch.unwrap_or(if a.online.is_some() { 1 } else { 32 }),
        optimizer: a.optimizer.clone(),
        lr: a.lr,
        momentum: a.momentum,
        weight_decay: a.weight_decay,
        lr_schedule: a.lr_schedule.clone(),
        warmup: a.warmup,
        clip_norm: a.clip_norm,
        clip_value: a.clip_value,
        steps: a.steps.unwrap_or(1),
        val_fraction: a.val_fraction,
        seed: a.seed,
        max_bad_steps: a.max_bad_steps.max(1),
        abort_loss_factor: a.abort_loss_factor,
        checkpoint_every: super::checkpoint_every(&a.checkpoint_every, k2)?,
        schedule_steps: None,
        dropout: if a.locked_dropout != 0.0 { a.locked_dropout } else { a.dropout },
        locked_dropout: a.locked_dropout > 0.0,
        weight_drop: a.weight_drop,
        online: a.online.clone(),
        precision: a.precision.parse()?,
    };
    cfg.validate()?;
    cfg.steps = total_steps(&cfg, ids.len(), a.steps, a.epochs)?.unwrap_or(cfg.updates_per_epoch(ids.len())? as u64);
    // (The program's resident memory now includes the ids.)
    memory::Estimate::new(threads).add("training", cfg.estimate_bytes(vocab.len())?).check(TRAINING)?;
    let model = match init {
        Some(m) => m,
        None => CharModel::new(spec, vocab, a.seed)?,
    };
    let trainer = Trainer::new_in(group.clone(), cfg.clone(), model, ids, threads).map_err(memory::hint(TRAINING))?;
    if cfg.val_fraction > 0.0 && !trainer.has_validation() && group.is_root() {
        super::errln!(
            "warning: --val-fraction {} of this text leaves fewer than 2 characters: the run has no validation (give a \
             larger fraction or a longer text)",
            cfg.val_fraction
        );
    }
    if !group.is_root() {
        // Rank 0 alone writes the run folder.
        return Ok((trainer, a.out.clone().unwrap_or_default(), cadence_from_flags(a, DEFAULT_CADENCE), None));
    }
    let (dir, lock) = super::run::claim_folder(a.out.as_deref(), "", a.force, a.force_unlock)?;
    let cadence = cadence_from_flags(a, DEFAULT_CADENCE);
    let run = RunFile { train: cfg, cadence, text: text_path, text_fnv1a64: hash, init: a.init.clone() };
    fsio::write_atomic(&dir.join("config.json"), run.to_json()?.as_bytes())?;
    fsio::write_atomic(&dir.join(super::run::METRICS), b"")?;
    Ok((trainer, dir, cadence, Some(lock)))
}

fn resume(a: &Args, dir: &Path, threads: usize, group: &Arc<Group>) -> Result<Setup> {
    if !dir.is_dir() {
        bail!("{}: no such run folder: give the --out folder of an earlier run", dir.display());
    }
    let lock = if group.is_root() { Some(super::run::lock_folder(dir, a.force_unlock)?) } else { None };
    let cfg_path = dir.join("config.json");
    let run = RunFile::parse(&fsio::read_bounded(&cfg_path, 1 << 24)?, &cfg_path)?;
    let text_path = a.text.clone().unwrap_or(run.text.clone());
    let ckpt_path = dir.join(super::run::CHECKPOINT);
    memory::Estimate::new(threads)
        .add("text and its ids", memory::file_bytes(&text_path).saturating_mul(2))
        .add("checkpoint", memory::file_bytes(&ckpt_path))
        .check(TEXT)?;
    let (text, hash) = read_text(&text_path)?;
    if hash != run.text_fnv1a64 {
        bail!(
            "{} differs from the text this run was trained on: resume with the same text (--text FILE if it moved)",
            text_path.display()
        );
    }
    let bytes = fsio::read_bounded(&ckpt_path, 1 << 36)?;
    let vocab_model = CharModel::from_bytes(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", ckpt_path.display()))?;
    let ids = vocab_model.vocab.encode(&text)?;
    drop(text); // the ids are all that is trained on: at most 2× the text at the peak
    let steps = total_steps(&run.train, ids.len(), a.steps, a.epochs)?;
    if let Some(s) = steps
        && s != run.train.steps
        && run.train.lr_schedule.starts_with("cosine")
        && group.is_root()
    {
        let horizon = run.train.schedule_steps.unwrap_or(run.train.steps);
        super::errln!(
            "warning: the run now ends at step {s}; its cosine schedule keeps its horizon of {horizon} updates \
             (the learning rate stays at its minimum after it)"
        );
    }
    // (The program's resident memory now includes the ids and the checkpoint's bytes.)
    let training = TrainConfig { steps: steps.unwrap_or(run.train.steps), ..run.train.clone() };
    memory::Estimate::new(threads)
        .add("training", training.estimate_bytes(vocab_model.vocab.len())?)
        .check(TRAINING)?;
    let trainer = Trainer::resume_in(group.clone(), &bytes, ids, steps, threads, a.reshard)
        .map_err(|e| anyhow::anyhow!("{}: {e}", ckpt_path.display()))?;
    super::run::same_run(&run.train, &trainer.cfg, &["steps", "schedule_steps"])?;
    let cadence = cadence_from_flags(a, run.cadence);
    if !group.is_root() {
        return Ok((trainer, dir.to_path_buf(), cadence, None));
    }
    super::run::reopen_folder(dir, trainer.step)?;
    // Flags given now (cadence, total steps) become the run's settings for later resumes too.
    let run = RunFile { train: trainer.cfg.clone(), cadence, text: text_path, ..run };
    fsio::write_atomic(&cfg_path, run.to_json()?.as_bytes())?;
    Ok((trainer, dir.to_path_buf(), cadence, lock))
}

/// The total updates asked for by --steps or --epochs, if either was given.
fn total_steps(cfg: &TrainConfig, n: usize, steps: Option<u64>, epochs: Option<u64>) -> Result<Option<u64>> {
    Ok(match (steps, epochs) {
        (Some(0), _) => bail!("--steps must be at least 1"),
        (Some(s), _) => Some(s),
        (None, Some(0)) => bail!("--epochs must be at least 1"),
        (None, Some(e)) => {
            Some(e.checked_mul(cfg.updates_per_epoch(n)? as u64).ok_or_else(|| {
                anyhow::anyhow!("--epochs {e} is more updates than can be counted: give fewer epochs")
            })?)
        }
        (None, None) => None,
    })
}

fn sample_text(model: &CharModel, seed: u64, len: usize) -> Result<String> {
    let mut s = Sampler::new(model, seed, 1)?;
    s.feed(&[model.vocab.id('\n').unwrap_or(0)])?;
    (0..len).map(|_| Ok(model.vocab.char(s.next(0.8, None)?))).collect()
}

impl super::run::Job for Trainer {
    const COMMAND: &'static str = "train";
    const UNIT: &'static str = "tok";

    fn position(&self) -> (u64, u64) {
        (self.step, self.cfg.steps)
    }

    fn done(&self) -> bool {
        Trainer::done(self)
    }

    fn update(&mut self) -> Result<super::run::Update> {
        let m = self.train_step()?;
        let work = (self.cfg.k1 * self.cfg.batch) as f64;
        Ok(super::run::Update { line: serde_json::to_value(m)?, step: m.step, skipped: m.skipped, work })
    }

    fn eval_due(&self, step: u64, cadence: &Cadence) -> bool {
        cadence.eval_every > 0 && step.is_multiple_of(cadence.eval_every)
    }

    fn validate(&mut self) -> Result<Option<(serde_json::Map<String, serde_json::Value>, bool)>> {
        Ok(Trainer::validate(self)?.map(|e| {
            let fields = serde_json::Map::from_iter([("val_loss".to_string(), e.loss.into())]);
            (fields, self.best_val == Some(e.loss))
        }))
    }

    fn health(&self) -> bptt::Result<()> {
        Trainer::health(self)
    }

    fn model_bytes(&self) -> Result<Vec<u8>> {
        Ok(self.model.to_bytes_with(&[], &[])?)
    }

    fn checkpoint_bytes(&self) -> Result<Vec<u8>> {
        Ok(Trainer::checkpoint_bytes(self)?)
    }

    fn sample(&self, step: u64) -> Result<Option<String>> {
        sample_text(&self.model, self.cfg.seed.wrapping_add(step), 200).map(Some)
    }

    fn message(&self, loss: f64, val: Option<f64>, rate: f64) -> String {
        let val = val.map_or(String::new(), |v| format!(" val {v:.4}"));
        format!("ep {} loss {loss:.4}{val} {rate:.0} tok/s", self.epoch)
    }

    fn summary(&self, dir: &Path) -> String {
        let val = self.best_val.map_or(String::new(), |v| format!(", best val loss {v:.4}"));
        format!("trained {} steps{val}; model in {}", self.step, dir.join("model.safetensors").display())
    }

    fn group(&self) -> &Group {
        Trainer::group(self)
    }

    fn fingerprint(&self) -> Vec<(String, u64)> {
        Trainer::fingerprint(self)
    }
}
