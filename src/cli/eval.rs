//! `bptt eval`: the whole text as one stream from a zero state; loss, bits/char, perplexity.

use super::memory;
use anyhow::Result;
use bptt::charlm::{CharModel, fsio};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Model file (safetensors, written by `bptt train` or PyTorch; see README).
    #[arg(long)]
    model: PathBuf,
    /// UTF-8 text to evaluate: text[0..n-1] predicts text[1..n].
    #[arg(long)]
    text: PathBuf,
    /// Print one JSON line: {"loss", "bits_per_char", "perplexity", "tokens"}.
    #[arg(long)]
    json: bool,
    /// Threads: the caller plus N − 1 helpers share the parts of every pass [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let threads = super::threads(a.threads)?;
    let text_bytes = memory::file_bytes(&a.text);
    memory::Estimate::new(threads)
        .add("model file and weights", memory::file_bytes(&a.model).saturating_mul(2))
        .add("text and its ids", text_bytes.saturating_mul(2))
        .check("use a shorter --text")?;
    let model = CharModel::load(&a.model)?;
    let text = fsio::read_text(&a.text)?;
    let ids = model.vocab.encode(&text).map_err(|e| anyhow::anyhow!("{}: {e}", a.text.display()))?;
    drop(text);
    // (The program's resident memory now includes the model and the ids.)
    memory::Estimate::new(threads)
        .add("activations", model.evaluate_bytes(ids.len(), 1, 1024))
        .check("the model is too large for this machine")?;
    let e = model.evaluate_stream(&ids, threads)?;
    if a.json {
        super::outln!("{}", serde_json::to_string(&e)?)?;
    } else {
        super::outln!(
            "loss {:.4} nats/char, {:.4} bits/char, perplexity {:.3} over {} characters",
            e.loss,
            e.bits_per_char,
            e.perplexity,
            e.tokens
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
