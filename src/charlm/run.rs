//! The text files of a run folder, parsed and checked so a damaged file is a one-line error,
//! never a panic: `config.json` (the run's settings, its text and that text's hash) and
//! `metrics.jsonl` (one JSON object per update, plus validation lines).

use crate::charlm::train::TrainConfig;
use crate::error::{Error, Result};
use crate::files::fsio;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

/// `config.json`: the run's settings plus where its text is and what it hashed to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunFile {
    /// The training settings (also stored in every checkpoint).
    pub train: TrainConfig,
    /// When the loop evaluates, samples and checkpoints.
    pub cadence: Cadence,
    /// The text trained on.
    pub text: PathBuf,
    /// FNV-1a 64 of the text's bytes, as 16 hex digits: resuming needs the same text.
    pub text_fnv1a64: String,
    /// The model the run started from (`--init`), if any.
    pub init: Option<PathBuf>,
}

/// When the loop evaluates, samples and checkpoints (kept across resumes, so a resumed run
/// takes the same path as an uninterrupted one); 0 = never.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cadence {
    /// Validate (and save the model) every this many updates.
    pub eval_every: u64,
    /// Print a sample every this many updates.
    pub sample_every: u64,
    /// Write a checkpoint every this many updates (besides each validation).
    pub checkpoint_every_steps: u64,
}

impl RunFile {
    /// Parses and checks `config.json`'s bytes (`path` names the file in errors): every
    /// training setting must be one a fresh run would accept.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<RunFile> {
        let bad = |msg: String| Error::Format { path: path.display().to_string(), msg };
        let run: RunFile = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("not a bptt run configuration ({e}): restore it or start a new run")))?;
        let t = &run.train;
        let checked = t.validate().and_then(|()| t.optimizer()).and_then(|_| t.schedule()).and_then(|_| t.clip());
        checked.map_err(|e| bad(format!("{e} (in the stored settings: restore the file or start a new run)")))?;
        if run.text_fnv1a64.len() != 16 || !run.text_fnv1a64.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("text_fnv1a64 is not 16 hex digits: restore the file or start a new run".into()));
        }
        Ok(run)
    }

    /// The file's text (pretty JSON).
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::Config(e.to_string()))
    }
}

/// The series of a metrics.jsonl, each as (step, value) points.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    /// Training loss per update.
    pub train_loss: Vec<(f64, f64)>,
    /// Validation loss where measured.
    pub val_loss: Vec<(f64, f64)>,
    /// Gradient norm before clipping per update.
    pub grad_norm: Vec<(f64, f64)>,
    /// The gradient norms of the updates that were clipped.
    pub clipped: Vec<(f64, f64)>,
    /// The gradient norms of the updates that were skipped (non-finite).
    pub skipped: Vec<(f64, f64)>,
    /// Line numbers (from 1) of the lines that are not metrics (not JSON, or no `step`).
    pub other: Vec<u64>,
}

/// What [`Metrics::keep_until`] did to a metrics.jsonl.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Kept {
    /// Metrics lines kept (logged at or before the checkpoint).
    pub lines: u64,
    /// Metrics lines dropped (logged after it: those updates are redone).
    pub dropped: u64,
    /// Line numbers (from 1) of the lines kept that are not metrics (not JSON, or no `step`).
    pub other: Vec<u64>,
}

impl Metrics {
    /// Parses a metrics.jsonl text: blank lines are ignored, and lines that are not a JSON
    /// object with a numeric `step` are listed in `other` (a resumed run keeps such lines).
    pub fn parse(text: &str) -> Metrics {
        let mut m = Metrics::default();
        for (k, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            let Some(step) = v["step"].as_f64().filter(|s| s.is_finite()) else {
                m.other.push(k as u64 + 1);
                continue;
            };
            let f = |key: &str| v[key].as_f64();
            if let Some(l) = f("train_loss") {
                m.train_loss.push((step, l));
            }
            if let Some(l) = f("val_loss") {
                m.val_loss.push((step, l));
            }
            if let Some(g) = f("grad_norm") {
                m.grad_norm.push((step, g));
                if v["clipped"].as_bool() == Some(true) {
                    m.clipped.push((step, g));
                }
                if v["skipped"].as_bool() == Some(true) {
                    m.skipped.push((step, g));
                }
            }
        }
        m
    }

    /// Rewrites the metrics.jsonl at `path` for a run resumed from the checkpoint of `step`:
    /// lines logged after `step` (updates about to be redone) are dropped, every other line is
    /// kept as it is, including lines that are not metrics (history is data; they are counted in
    /// the result so the caller can say so). Streamed line by line through a temp file and an
    /// atomic rename, so a large history needs no memory and a failure leaves the file as it
    /// was. A missing file becomes an empty one.
    pub fn keep_until(path: &Path, step: u64) -> Result<Kept> {
        use std::io::{BufRead, BufReader, BufWriter, Write};
        let mut kept = Kept::default();
        let file = match fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return fsio::write_atomic(path, b"").map(|()| kept),
            Err(e) => return Err(Error::io(path, e)),
            Ok(_) => fsio::writable(path).and_then(|p| fs::File::open(&p).map_err(|e| Error::io(path, e)))?,
        };
        let tmp = fsio::temp_path(path)?;
        let result = (|| -> std::io::Result<()> {
            let mut out = BufWriter::new(fs::File::create(&tmp)?);
            let mut input = BufReader::new(file);
            let mut line = Vec::new();
            for number in 1u64.. {
                line.clear();
                // One line at a time, at most 1 MiB of it kept in memory (a longer one is copied
                // through in pieces, and is not metrics).
                let n = std::io::Read::take(&mut input, 1 << 20).read_until(b'\n', &mut line)?;
                if n == 0 {
                    break;
                }
                let whole = line.ends_with(b"\n");
                let logged = (whole && n < 1 << 20)
                    .then(|| serde_json::from_slice::<serde_json::Value>(&line).ok())
                    .flatten()
                    .and_then(|v| v["step"].as_u64());
                match logged {
                    Some(s) if s > step => kept.dropped += 1,
                    Some(_) => {
                        out.write_all(&line)?;
                        kept.lines += 1;
                    }
                    None if line.iter().all(u8::is_ascii_whitespace) => out.write_all(&line)?,
                    None => {
                        out.write_all(&line)?;
                        if !whole {
                            // The rest of an over-long line, copied through as it is.
                            loop {
                                line.clear();
                                let n = std::io::Read::take(&mut input, 1 << 20).read_until(b'\n', &mut line)?;
                                out.write_all(&line)?;
                                if n == 0 || line.ends_with(b"\n") {
                                    break;
                                }
                            }
                            if !line.ends_with(b"\n") {
                                out.write_all(b"\n")?;
                            }
                        }
                        kept.other.push(number);
                    }
                }
            }
            out.into_inner().map_err(|e| e.into_error())?.sync_all()
        })();
        match result {
            Ok(()) => fsio::commit(&tmp, path).map(|()| kept),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(Error::io(path, e))
            }
        }
    }
}
