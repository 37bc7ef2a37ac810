//! `bptt eval`: loss, bits/char and perplexity of a char model on a text — by default its
//! validation part as `train` scores it (the last --val-fraction, in --streams streams), or
//! `--split all`: the whole file as one stream, exactly.

use super::memory;
use anyhow::Result;
use bptt::charlm::{CharModel, fsio};
use std::io::IsTerminal;
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
    /// What to score: val (the last --val-fraction, as `train` validates: --streams streams from
    /// a zero state), train (the rest, the same way) or all (the whole file as one stream from a
    /// zero state: exact, and slow on a long text).
    #[arg(long, value_name = "val|train|all", default_value = "val")]
    split: String,
    /// The fraction of the text, at its end, that is the validation part.
    #[arg(long, default_value_t = 0.1, allow_negative_numbers = true, value_parser = super::finite)]
    val_fraction: f64,
    /// Streams the part is cut into (val, train); `train`'s default --batch, so the number
    /// matches the run's val_loss.
    #[arg(long, default_value_t = 32, allow_negative_numbers = true)]
    streams: usize,
    /// Threads: the caller plus N − 1 helpers share the parts of every pass [default: all cores].
    #[arg(long, allow_negative_numbers = true)]
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
    let (ids, streams, chunk, what) = match a.split.as_str() {
        "all" => (ids, 1, 1024, "the whole file as one stream".to_string()),
        "val" | "train" => {
            if a.streams == 0 {
                anyhow::bail!("--streams must be at least 1");
            }
            let split = bptt::charlm::Split::new(ids, a.val_fraction)?;
            let pct = (a.val_fraction * 100.0).round();
            if a.split == "val" {
                if split.val.len() < 2 {
                    anyhow::bail!(
                        "the validation part (--val-fraction {}) is empty: raise it or use --split all",
                        a.val_fraction
                    );
                }
                (split.val, a.streams, 100, format!("the validation part (the last {pct}%, {} streams)", a.streams))
            } else {
                (
                    split.train,
                    a.streams,
                    100,
                    format!("the training part (the first {}%, {} streams)", 100.0 - pct, a.streams),
                )
            }
        }
        other => anyhow::bail!("--split takes val, train or all, got '{other}'"),
    };
    // (The program's resident memory now includes the model and the ids.)
    memory::Estimate::new(threads)
        .add("activations", model.evaluate_bytes(ids.len(), streams, chunk))
        .check("the model is too large for this machine")?;
    let tty = std::io::stderr().is_terminal();
    let pb = indicatif::ProgressBar::with_draw_target(
        Some(ids.len().saturating_sub(1) as u64),
        if tty { indicatif::ProgressDrawTarget::stderr() } else { indicatif::ProgressDrawTarget::hidden() },
    );
    pb.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} characters [{elapsed_precise}<{eta_precise}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let start = std::time::Instant::now();
    let e = model.evaluate_with(&ids, streams, chunk, threads, &mut |done, total| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
    })?;
    pb.finish_and_clear();
    if a.json {
        super::outln!("{}", serde_json::to_string(&e)?)?;
    } else {
        super::outln!(
            "loss {:.4} nats/char, {:.4} bits/char, perplexity {:.3} over {} characters of {what}",
            e.loss,
            e.bits_per_char,
            e.perplexity,
            e.tokens
        )?;
    }
    if !tty {
        // Logged runs get one line of what was done (after the result, which may not be written).
        super::errln!("scored {} characters of {what} in {:.1} s", e.tokens, start.elapsed().as_secs_f64());
    }
    Ok(ExitCode::SUCCESS)
}
