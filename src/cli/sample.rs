//! `bptt sample`: stream characters from a model to stdout.

use super::memory;
use anyhow::{Context, Result, bail};
use bptt::charlm::{CharModel, Sampler};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Model file (safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Characters to generate.
    #[arg(long, default_value_t = 500, allow_negative_numbers = true)]
    length: usize,
    /// Text to start from (printed first). Generation starts from the state after a newline
    /// (if the vocabulary has one), as at the start of a paragraph, then reads the prime.
    #[arg(long, default_value = "")]
    prime: String,
    /// Softmax temperature; 0 = greedy (always the most likely character).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true, value_parser = super::finite)]
    temperature: f64,
    /// Sample only among the K most likely characters.
    #[arg(long, allow_negative_numbers = true)]
    top_k: Option<usize>,
    /// Seed of the sampling stream.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    seed: u64,
    /// Threads (sampling is latency-bound: one is fastest for one stream).
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    threads: usize,
}

pub fn run(a: Args) -> Result<ExitCode> {
    if !(a.temperature.is_finite() && a.temperature >= 0.0) {
        bail!("--temperature must be a number >= 0 (0 = greedy), got {}", a.temperature);
    }
    if a.top_k == Some(0) {
        bail!("--top-k must be at least 1");
    }
    let threads = super::threads(Some(a.threads))?;
    memory::Estimate::new(threads)
        .add("model file and weights", memory::file_bytes(&a.model).saturating_mul(2))
        .check("the model is too large for this machine")?;
    let model = CharModel::load(&a.model)?;
    let prime = model.vocab.encode(&a.prime).context("--prime")?;
    // (The program's resident memory now includes the model.)
    memory::Estimate::new(threads)
        .add("activations", Sampler::estimate_bytes(&model))
        .check("the model is too large for this machine")?;
    let mut sampler = Sampler::new(&model, a.seed, threads)?;
    sampler.feed(&[model.vocab.id('\n').unwrap_or(0)])?;
    sampler.feed(&prime.to_vec())?;
    let mut out = std::io::stdout().lock();
    let stdout = |r: std::io::Result<()>| r.context("cannot write to standard output");
    stdout(write!(out, "{}", a.prime))?;
    let mut buf = [0u8; 4];
    for _ in 0..a.length {
        let c = model.vocab.char(sampler.next(a.temperature, a.top_k)?);
        stdout(out.write_all(c.encode_utf8(&mut buf).as_bytes()))?;
        stdout(out.flush())?; // stream each character as it is generated
    }
    stdout(writeln!(out))?;
    stdout(out.flush())?;
    Ok(ExitCode::SUCCESS)
}
