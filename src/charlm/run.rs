//! The text files of a run folder, parsed and checked so a damaged file is a one-line error,
//! never a panic: `config.json` (the run's settings, its text and that text's hash) and
//! `metrics.jsonl` (one JSON object per update, plus validation lines).

use crate::charlm::train::TrainConfig;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
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
}

impl Metrics {
    /// Parses a metrics.jsonl text (`path` names the file in errors): blank lines are ignored;
    /// every other line must be a JSON object with a numeric `step`.
    pub fn parse(text: &str, path: &Path) -> Result<Metrics> {
        let mut m = Metrics::default();
        for (k, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let bad =
                |what: &str| Error::Format { path: path.display().to_string(), msg: format!("line {}: {what}", k + 1) };
            let v: serde_json::Value = serde_json::from_str(line).map_err(|_| bad("not JSON"))?;
            let step = v["step"].as_f64().filter(|s| s.is_finite()).ok_or_else(|| bad("no step"))?;
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
        Ok(m)
    }

    /// The lines of a metrics.jsonl text logged at or before `step` (each ending in a newline):
    /// what a run resumed from the checkpoint of `step` keeps. Lines that do not parse are
    /// dropped.
    pub fn until(text: &str, step: u64) -> String {
        text.lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s <= step)
            })
            .map(|l| format!("{l}\n"))
            .collect()
    }
}
