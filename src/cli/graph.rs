//! `bptt graph`: the unrolled computation graph as Mermaid, dot or SVG.

use anyhow::Result;
use bptt::diagnose::graph::{GraphFormat, unrolled};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Time steps T to unroll.
    #[arg(long, default_value_t = 3, allow_negative_numbers = true)]
    steps: usize,
    /// Stacked layers.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    layers: usize,
    /// mermaid, dot or svg.
    #[arg(long, default_value = "mermaid")]
    format: String,
}

pub fn run(a: Args) -> Result<ExitCode> {
    if a.steps == 0 || a.steps > 64 || a.layers == 0 || a.layers > 16 {
        anyhow::bail!("--steps must be 1..=64 and --layers 1..=16 (a bigger picture is unreadable)");
    }
    let format: GraphFormat = a.format.parse()?;
    super::memory::Estimate::new(1).add("graph text", (a.steps * a.layers) as u64 * 4096).check("lower --steps")?;
    let mut out = std::io::stdout().lock();
    std::io::Write::write_all(&mut out, unrolled(a.steps, a.layers, format).as_bytes())
        .and_then(|()| std::io::Write::flush(&mut out))
        .map_err(|e| anyhow::Error::new(e).context("cannot write to standard output"))?;
    Ok(ExitCode::SUCCESS)
}
