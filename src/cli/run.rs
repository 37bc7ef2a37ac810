//! The one training loop of the command line, shared by `train` (the char-LM) and `fit` (your
//! own sequences): the run folder (its lock, its files, what a fresh run refuses to replace),
//! the progress bar, metrics.jsonl, validation with the best model kept, checkpoints, and a clean
//! stop on SIGINT, SIGTERM or SIGHUP that a `--resume` continues bit for bit.

use anyhow::{Context, Result, bail};
use bptt::charlm::{Cadence, fsio};
use bptt::dist::Group;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

pub const CHECKPOINT: &str = "checkpoint.safetensors";
pub const METRICS: &str = "metrics.jsonl";
/// The files a run writes into its folder: a fresh run refuses a folder that holds any of them.
pub const RUN_FILES: [&str; 5] = ["config.json", METRICS, "model.safetensors", "best.safetensors", CHECKPOINT];

/// What one update reports to the loop.
pub struct Update {
    /// Its metrics.jsonl line (the loop adds timing and validation).
    pub line: serde_json::Value,
    /// Its number (updates done, counting it).
    pub step: u64,
    /// The update was skipped (non-finite gradient or update).
    pub skipped: bool,
    /// Tokens or sequences it trained on (for the rate).
    pub work: f64,
}

/// A training job the loop drives: one update at a time, validation, files. Under mpirun every
/// rank runs the loop in step; rank 0 alone prints, validates and writes.
pub trait Job {
    /// The command that resumes it (`train` or `fit`).
    const COMMAND: &'static str;
    /// What `work` counts (`tok` or `seq`).
    const UNIT: &'static str;
    /// Every rank validates (the result steers the run, e.g. early stopping), not only rank 0.
    const VALIDATE_EVERYWHERE: bool = false;
    /// Updates done and in all.
    fn position(&self) -> (u64, u64);
    /// True once the run is over.
    fn done(&self) -> bool;
    /// One update.
    fn update(&mut self) -> Result<Update>;
    /// True if the loop should validate after update `step` (besides the last one).
    fn eval_due(&self, step: u64, cadence: &Cadence) -> bool;
    /// Validation: the fields to add to the metrics line and whether this is the best model so
    /// far (`None`: no validation data).
    fn validate(&mut self) -> Result<Option<(serde_json::Map<String, serde_json::Value>, bool)>>;
    /// Ok while training is healthy.
    fn health(&self) -> bptt::Result<()>;
    /// The model file's bytes, and the checkpoint's (every rank calls it).
    fn model_bytes(&self) -> Result<Vec<u8>>;
    /// The checkpoint's bytes (every rank calls it: data parallelism may gather state).
    fn checkpoint_bytes(&self) -> Result<Vec<u8>>;
    /// A sample to print at update `step`, if the job has such a thing.
    fn sample(&self, _step: u64) -> Result<Option<String>> {
        Ok(None)
    }
    /// The progress bar's message after an update.
    fn message(&self, loss: f64, val: Option<f64>, rate: f64) -> String;
    /// The last line printed: what was trained, where the model is.
    fn summary(&self, dir: &Path) -> String;
    /// The ranks sharing the run.
    fn group(&self) -> &Group;
    /// What every rank must share (settings, data, parameters, step) as named hashes; checked
    /// once before the first update ([`Group::agree`]).
    fn fingerprint(&self) -> Vec<(String, u64)>;
}

/// How a data-parallel run ends on an error from [`train_loop`] (`code` is the usual exit when
/// there is one rank): ranks that disagreed at the start all know it, so rank 0 alone says it
/// and all exit; a rank whose peers are gone exits (nobody is left to wait); any other failure
/// ends the whole job, since the other ranks may be waiting for this one.
pub fn end_run(group: &Group, result: Result<ExitCode>, dir: &Path, command: &str) -> Result<ExitCode> {
    let e = match result {
        Err(e) if group.size() > 1 => e,
        r => return r,
    };
    match e.downcast_ref::<bptt::Error>() {
        Some(bptt::Error::Disagree(_)) => {
            if group.is_root() {
                super::errln!("error: {}", super::flag_names(&format!("{e:#}")));
            }
            // Rank 0 has said it before any rank exits (mpirun ends the job at the first exit).
            let _ = group.all_ok(true);
            Ok(ExitCode::FAILURE)
        }
        Some(bptt::Error::Dist(_)) => {
            if group.is_root() {
                let how = if dir.join(CHECKPOINT).exists() {
                    format!("continue with: mpirun -np {} bptt {command} --resume {}", group.size(), dir.display())
                } else {
                    "no checkpoint was saved yet: start the run again".to_string()
                };
                super::errln!("error: rank 0: {}: {how}", super::flag_names(&format!("{e:#}")));
            }
            std::process::exit(1);
        }
        _ => {
            super::errln!("error: rank {}: {}", group.rank(), super::flag_names(&format!("{e:#}")));
            group.abort(1)
        }
    }
}

/// Under mpirun every rank starts, or none: a rank left waiting for one that failed to set up
/// would hang. Returns the setup, or the exit to take (the failed rank's error on that rank).
pub fn agree_to_start<T>(group: &Group, setup: Result<T>) -> Result<std::result::Result<T, ExitCode>> {
    if group.size() > 1 && !group.all_ok(setup.is_ok())? {
        return match setup {
            Err(e) => Err(e.context(format!("rank {}", group.rank()))),
            Ok(_) if group.is_root() => bail!("another rank could not start the run (see its message)"),
            Ok(_) => Ok(Err(ExitCode::FAILURE)),
        };
    }
    Ok(Ok(setup?))
}

/// A fresh run's folder: `--out` (created if needed) or a unique `runs/PREFIX<time>`, locked,
/// refused if it holds an earlier run that saved a model or checkpoint (unless `force`, which
/// removes its files) or a config.json that is not a run's (always).
pub fn claim_folder(
    out: Option<&Path>,
    prefix: &str,
    force: bool,
    force_unlock: bool,
) -> Result<(PathBuf, fsio::RunLock)> {
    let dir = match out {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the output folder {}", dir.display()))?;
            dir.to_path_buf()
        }
        // A folder of its own, even for runs started in the same second.
        None => fsio::create_unique_dir(&PathBuf::from("runs").join(format!("{prefix}{}", super::timestamp())))?,
    };
    let lock = lock_folder(&dir, force_unlock)?;
    let config = dir.join("config.json");
    if config.exists() && !written_by_us(&config) {
        bail!(
            "{} holds a config.json that bptt did not write: choose another --out (bptt will not replace it, even \
             with --force)",
            dir.display()
        );
    }
    // A run that saved nothing (it failed at its start: a full disk, a rank without its data)
    // has nothing to resume: a new run replaces it.
    let saved = [CHECKPOINT, "model.safetensors", "best.safetensors"].iter().find(|f| dir.join(f).exists());
    if let Some(file) = saved
        && !force
    {
        let how = if dir.join(CHECKPOINT).exists() {
            format!("continue it with --resume {}, ", dir.display())
        } else {
            String::new()
        };
        bail!("{} already holds a run ({file}): {how}replace it with --force, or choose another --out", dir.display());
    }
    for f in RUN_FILES {
        let _ = std::fs::remove_file(dir.join(f)); // nothing of the old run survives
    }
    Ok((dir, lock))
}

/// Checks `--out` before any data is read: an existing path there must be a folder.
pub fn check_out(out: Option<&Path>) -> Result<()> {
    if let Some(out) = out
        && let Ok(meta) = std::fs::metadata(out)
        && !meta.is_dir()
    {
        bail!("--out {} is a file, not a folder: give a folder for the run (it is created if missing)", out.display());
    }
    Ok(())
}

/// Refuses a checkpoint whose settings are not the run's (config.json's), except the fields in
/// `may_differ` (a new total): a checkpoint copied in from another run would otherwise be
/// trained on, and config.json rewritten to match it.
pub fn same_run(config: &impl serde::Serialize, checkpoint: &impl serde::Serialize, may_differ: &[&str]) -> Result<()> {
    let ours = bptt::dist::setting_hashes(config);
    let theirs = bptt::dist::setting_hashes(checkpoint);
    let differ: Vec<&str> = ours
        .iter()
        .zip(&theirs)
        .filter(|((name, a), (_, b))| a != b && !may_differ.contains(&name.as_str()))
        .map(|((name, _), _)| name.as_str())
        .collect();
    if !differ.is_empty() || ours.len() != theirs.len() {
        bail!(
            "{CHECKPOINT} is not this run's: its settings differ from config.json ({}); put back this run's \
             checkpoint, or start a new run",
            if differ.is_empty() { "their fields".to_string() } else { differ.join(", ") }
        );
    }
    Ok(())
}

/// True if `config` is a run's config.json as `train` or `fit` writes it.
fn written_by_us(config: &Path) -> bool {
    fsio::read_bounded(config, 1 << 24)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v.get("text_fnv1a64").is_some() || v.get("train_fnv1a64").is_some())
}

/// The run folder's lock (`--force-unlock`: taken over from a process on another host).
pub fn lock_folder(dir: &Path, force_unlock: bool) -> Result<fsio::RunLock> {
    Ok(if force_unlock { fsio::RunLock::take_over(dir)? } else { fsio::RunLock::acquire(dir)? })
}

/// Before a resumed run goes on: temp files of an interrupted write are removed, and metrics
/// logged after the checkpoint (updates about to be redone) are forgotten.
pub fn reopen_folder(dir: &Path, step: u64) -> Result<()> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains(".tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let metrics_path = dir.join(METRICS);
    let kept = bptt::charlm::Metrics::keep_until(&metrics_path, step)?;
    if let [first, ..] = kept.other[..] {
        super::errln!(
            "note: {} keeps {} line(s) that are not metrics as they are (the first is line {first})",
            metrics_path.display(),
            kept.other.len()
        );
    }
    Ok(())
}

/// FNV-1a 64 of `bytes` as 16 hex digits (what a run folder records of its data).
pub fn fnv1a64(bytes: &[u8]) -> String {
    format!("{:016x}", bptt::files::fnv1a64(bytes.iter().copied()))
}

/// Saves model.safetensors and the checkpoint (atomically, checkpoint last). Every rank calls
/// it; rank 0 writes.
fn save<J: Job>(job: &J, dir: &Path) -> Result<()> {
    let ckpt = job.checkpoint_bytes()?;
    if job.group().is_root() {
        fsio::write_atomic(&dir.join("model.safetensors"), &job.model_bytes()?)?;
        fsio::write_atomic(&dir.join(CHECKPOINT), &ckpt)?;
    }
    Ok(())
}

/// SIGINT, SIGTERM and SIGHUP (Ctrl-C, `kill`, `timeout`, a batch scheduler, a closed terminal):
/// the first asks for a clean stop after the current update (checkpoint, then exit 128 +
/// signal); a second one exits at once, saying so and which checkpoint is kept (files are
/// written atomically, so the last checkpoint stays intact). Returns the step of the last
/// checkpoint, which the loop keeps up to date.
///
/// A signal ignored when the process started stays ignored: `nohup` ignores SIGHUP, and a shell
/// starts a background job with SIGINT ignored; a handler would undo what the user asked for.
fn watch_signals(first: Arc<AtomicUsize>, dir: &Path, saved_at: u64) -> Result<Arc<AtomicU64>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let saved = Arc::new(AtomicU64::new(saved_at));
    let ignored = ignored_signals();
    let watched: Vec<i32> = [SIGINT, SIGTERM, SIGHUP].into_iter().filter(|&s| ignored & (1 << (s - 1)) == 0).collect();
    let mut signals = signal_hook::iterator::Signals::new(watched).context("cannot install the signal handlers")?;
    let (f, s, dir) = (first.clone(), saved.clone(), dir.to_path_buf());
    std::thread::Builder::new()
        .name("bptt-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if f.compare_exchange(0, sig as usize, Ordering::SeqCst, Ordering::SeqCst).is_err() {
                    let ckpt = dir.join(CHECKPOINT);
                    let kept = match s.load(Ordering::SeqCst) {
                        0 if !ckpt.exists() => "no checkpoint was saved yet".to_string(),
                        step => format!("the last checkpoint ({}, step {step}) is kept", ckpt.display()),
                    };
                    super::errln!("\nsecond signal: exiting without saving; {kept}");
                    std::process::exit(128 + sig);
                }
            }
        })
        .context("cannot start the signal watcher")?;
    Ok(saved)
}

/// The signals this process ignores, as the kernel's mask (bit `s - 1` for signal `s`): the
/// `SigIgn` line of /proc/self/status, read before any handler is installed (0 elsewhere).
fn ignored_signals() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("SigIgn:"))?;
            u64::from_str_radix(line["SigIgn:".len()..].trim(), 16).ok()
        })
        .unwrap_or(0)
}

/// The training loop (see the module docs).
pub fn train_loop<J: Job>(t: &mut J, dir: &Path, a: Cadence, signal: Arc<AtomicUsize>) -> Result<ExitCode> {
    let root = t.group().is_root();
    let (step0, total) = t.position();
    t.group().agree(&t.fingerprint())?;
    let saved = watch_signals(signal.clone(), dir, if root && dir.join(CHECKPOINT).exists() { step0 } else { 0 })?;
    let tty = std::io::stderr().is_terminal() && root;
    let pb = ProgressBar::with_draw_target(
        Some(total),
        if tty { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() },
    );
    pb.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_position(step0);
    // A line above the bar on a terminal; a plain line in a log (nohup, `2>log`, `| tee`).
    let say = |msg: &str| {
        if tty {
            pb.println(msg);
        } else if root {
            super::errln!("{msg}");
        }
    };
    // Other ranks write nothing (their metrics go nowhere).
    let mut metrics: Box<dyn Write> = if root {
        Box::new(
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(dir.join(METRICS))
                .with_context(|| format!("cannot open {}", dir.join(METRICS).display()))?,
        )
    } else {
        Box::new(std::io::sink())
    };
    let start = Instant::now();
    let mut last_val: Option<f64> = None;
    let (mut done_here, mut applied) = (0u64, 0u64);
    while !t.done() {
        let t0 = Instant::now();
        let m = t.update()?;
        let dt = t0.elapsed().as_secs_f64();
        done_here += 1;
        applied += u64::from(!m.skipped);
        let mut sig = signal.load(Ordering::SeqCst);
        // Stop together: a signal on any rank stops every rank after this step (agreed here,
        // right after the step's own exchange, so no rank waits long with a signal pending).
        if t.group().size() > 1 && !t.group().all_ok(sig == 0)? && sig == 0 {
            sig = signal_hook::consts::SIGTERM as usize;
        }
        let eval_now = t.done() || t.eval_due(m.step, &a);
        let mut line = m.line;
        if eval_now
            && (root || J::VALIDATE_EVERYWHERE)
            && let Some((fields, best)) = t.validate()?
        {
            last_val = fields.get("val_loss").and_then(|v| v.as_f64());
            for (k, v) in fields {
                line[k] = v;
            }
            if best && root {
                fsio::write_atomic(&dir.join("best.safetensors"), &t.model_bytes()?)?;
            }
        }
        // A signal that came during a long validation is acted on now, not after another
        // update (one process; ranks agree on signals only right after the update's exchange).
        if sig == 0 && t.group().size() == 1 {
            sig = signal.load(Ordering::SeqCst);
        }
        // Validation may end a run (early stopping).
        let last = t.done();
        let rate = m.work / dt;
        line[format!("{}_per_s", if J::UNIT == "tok" { "tokens" } else { "sequences" })] = rate.into();
        line["elapsed_s"] = start.elapsed().as_secs_f64().into();
        // One write call per line, so a kill leaves whole lines only.
        metrics.write_all(format!("{line}\n").as_bytes())?;
        if m.skipped && root {
            say(&format!("warning: step {}: non-finite gradient or update, skipped", m.step));
        }
        if let Err(e) = t.health() {
            pb.abandon();
            let ckpt = dir.join(CHECKPOINT);
            if ckpt.exists() {
                bail!("{e} (last checkpoint: {})", ckpt.display());
            }
            bail!("{e} (no checkpoint was saved yet)");
        }
        if eval_now || (a.checkpoint_every_steps > 0 && m.step.is_multiple_of(a.checkpoint_every_steps)) {
            metrics.flush()?;
            save(t, dir)?;
            saved.store(m.step, Ordering::SeqCst);
        }
        if a.sample_every > 0
            && m.step.is_multiple_of(a.sample_every)
            && root
            && let Some(s) = t.sample(m.step)?
        {
            say(&format!("--- sample at step {} ---\n{s}\n---", m.step));
        }
        pb.set_position(m.step);
        let loss = line["train_loss"].as_f64().unwrap_or(f64::NAN);
        let message = t.message(loss, last_val, rate);
        // In a log, a progress line at every validation and every tenth of the run.
        if !tty && root && (eval_now || m.step * 10 / total.max(1) > (m.step - 1) * 10 / total.max(1)) {
            super::errln!("step {}/{total} {message} [{:.0} s]", m.step, start.elapsed().as_secs_f64());
        }
        pb.set_message(message);
        if sig != 0 && !last {
            metrics.flush()?;
            save(t, dir)?;
            saved.store(m.step, Ordering::SeqCst);
            pb.abandon();
            if !root {
                return Ok(ExitCode::from(128 + sig as u8));
            }
            let name = match sig as i32 {
                signal_hook::consts::SIGTERM => "SIGTERM",
                signal_hook::consts::SIGHUP => "SIGHUP",
                _ => "SIGINT",
            };
            super::errln!(
                "interrupted by {name} at step {}: checkpoint saved; continue with: bptt {} --resume {}",
                m.step,
                J::COMMAND,
                dir.display()
            );
            return Ok(ExitCode::from(128 + sig as u8));
        }
    }
    metrics.flush()?;
    save(t, dir)?;
    pb.finish_and_clear();
    if done_here > 0 && applied == 0 {
        bail!(
            "no update was applied: all {done_here} had a non-finite gradient or update and were skipped, so the \
             model is unchanged; lower --lr, clip harder (--clip-norm) or look for huge values in the data"
        );
    }
    if !root {
        return Ok(ExitCode::SUCCESS);
    }
    super::errln!("{}", t.summary(dir));
    Ok(ExitCode::SUCCESS)
}
