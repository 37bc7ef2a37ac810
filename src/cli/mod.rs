//! Flag parsing (clap) and dispatch: one file per subcommand, each turning flags into library
//! calls and printing the results. The only place besides explicit load/save that does IO.

mod bench;
mod demo;
mod diagnose;
mod eval;
mod evaluate;
mod fit;
mod graph;
mod memory;
mod plot;
mod predict;
mod run;
mod sample;
mod task;
mod train;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Train recurrent networks by backpropagation through time, and see what BPTT does.
#[derive(Parser)]
#[command(name = "bptt", version, about, propagate_version = true, arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Print the command's memory estimate before it allocates, and its peak resident memory
    /// at exit (stderr)
    #[arg(long, global = true, display_order = 999)]
    memory: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run every experiment and write a self-contained HTML report (the main job).
    Demo(demo::Args),
    /// Train a character-level language model on a UTF-8 text.
    Train(Box<train::Args>),
    /// Generate text from a model, streaming characters to stdout.
    Sample(sample::Args),
    /// Report a model's loss, bits per character and perplexity on a text.
    Eval(eval::Args),
    /// Train a classifier or regressor on your own sequences (.ts or long-form CSV).
    Fit(Box<fit::Args>),
    /// Predict with a `fit` model: class and probabilities, or value, per sequence.
    Predict(predict::Args),
    /// Score a `fit` model on labelled sequences: accuracy, per-class F1, confusion; MSE/MAE.
    Evaluate(evaluate::Args),
    /// Train on a long-range benchmark (adding problem, copy task) and compare with its baseline.
    Task(task::Args),
    /// Measure gradient flow through time (vanishing, exploding, truncation) and plot it.
    Diagnose(diagnose::Args),
    /// Print the unrolled computation graph (Mermaid, dot or SVG).
    Graph(graph::Args),
    /// Plot loss and gradient norm of a training run from its metrics.jsonl.
    Plot(plot::Args),
    /// Time full training steps (forward, backward, clip, Adam): tokens/s, GFLOP/s, memory.
    Bench(bench::Args),
}

/// Parses the command line and runs the subcommand.
pub fn run() -> anyhow::Result<ExitCode> {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version: print them as clap does.
            e.print()?;
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // `bptt` alone: the commands, as --help lists them.
            e.print()?;
            return Ok(ExitCode::from(2));
        }
        Err(e) => {
            // One line: clap's first line names the problem; --help shows the fix.
            let msg = e.render().to_string();
            // clap's message up to its usage block, on one line.
            let head: Vec<&str> = msg
                .lines()
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
                .collect();
            let text = head.join(" ");
            let text = text.trim_start_matches("error: ");
            errln!("error: {text} (see 'bptt --help' or 'bptt <command> --help')");
            return Ok(ExitCode::from(2));
        }
    };
    memory::show(cli.memory);
    let result = match cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Train(a) => train::run(*a),
        Command::Sample(a) => sample::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Fit(a) => fit::run(*a),
        Command::Predict(a) => predict::run(a),
        Command::Evaluate(a) => evaluate::run(a),
        Command::Task(a) => task::run(a),
        Command::Diagnose(a) => diagnose::run(a),
        Command::Graph(a) => graph::run(a),
        Command::Plot(a) => plot::run(a),
        Command::Bench(a) => bench::run(a),
    };
    memory::report();
    result
}

/// `println!` that returns an error instead of panicking when standard output is closed (a
/// broken pipe: `main` then exits quietly, like other Unix tools) or full (one line).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err(|e| anyhow::Error::new(e).context("cannot write to standard output"))
    }};
}
pub(crate) use outln;

/// `eprintln!` that never panics: a message to a closed or full standard error (`2>&-`,
/// `2>/dev/full`) is dropped, and the command goes on to its exit status.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}
pub(crate) use errln;

/// The library names a setting as its Rust and Python name in backticks (`` `val_fraction` ``);
/// the command line says the flag instead (`--val-fraction`). Only the names in this table are
/// rewritten, so other backticked words stay as they are.
pub(crate) fn flag_names(message: &str) -> String {
    const SETTINGS: [&str; 24] = [
        "abort_loss_factor",
        "bidirectional",
        "proj_size",
        "layer_norm",
        "zoneout_h",
        "zoneout_c",
        "batch",
        "clip_norm",
        "dropout",
        "force_unlock",
        "id_column",
        "length",
        "lr_schedule",
        "lr",
        "momentum",
        "out",
        "reshard",
        "seq_len",
        "steps",
        "tbptt",
        "temperature",
        "val_fraction",
        "weight_drop",
        "epochs",
    ];
    let mut out = message.to_string();
    for name in SETTINGS {
        out = out.replace(&format!("`{name}`"), &format!("--{}", name.replace('_', "-")));
    }
    out
}

/// The value parser of every real-valued flag: a finite number (NaN and infinities are refused
/// here, in one place; each flag's range is checked where its setting is validated).
pub(crate) fn finite(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(_) => Err("must be a finite number (not NaN or infinity)".into()),
        Err(_) => Err("must be a number, such as 0.5 or 1e-3".into()),
    }
}

/// True if `e` is (or was caused by) a write to a closed pipe.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

/// The thread count to use: the flag, or every core.
pub fn threads(flag: Option<usize>) -> anyhow::Result<usize> {
    let n = match flag {
        Some(0) => anyhow::bail!("--threads must be at least 1"),
        Some(n) => n,
        // Ranks of an mpirun on this host share its cores.
        None => (std::thread::available_parallelism().map_or(1, |n| n.get()) / local_ranks()).max(1),
    };
    Ok(n)
}

/// The processes `mpirun` started on this host (1 outside mpirun).
fn local_ranks() -> usize {
    std::env::var("OMPI_COMM_WORLD_LOCAL_SIZE").ok().and_then(|v| v.parse().ok()).unwrap_or(1).max(1)
}

/// The ranks of this job: those of `mpirun` (feature `mpi`), else one process. `interrupt`
/// is the signal flag a wait for the other ranks watches.
pub fn group(interrupt: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> anyhow::Result<bptt::dist::Group> {
    let under_mpirun = std::env::var_os("OMPI_COMM_WORLD_SIZE").is_some() || std::env::var_os("PMI_SIZE").is_some();
    #[cfg(feature = "mpi")]
    if under_mpirun {
        return Ok(bptt::dist::Group::mpi(interrupt)?);
    }
    #[cfg(not(feature = "mpi"))]
    if under_mpirun && std::env::var("OMPI_COMM_WORLD_SIZE").is_ok_and(|n| n != "1") {
        anyhow::bail!(
            "this bptt was built without MPI, so mpirun would start independent copies: rebuild with \
             `cargo build --release --features mpi` (needs Open MPI, see README)"
        );
    }
    let _ = interrupt;
    Ok(bptt::dist::Group::single())
}

/// `--checkpoint-every`: a whole number of steps (0 = plain BPTT) or `auto`, √window rounded.
pub fn checkpoint_every(flag: &str, window: usize) -> anyhow::Result<usize> {
    match flag {
        "auto" => Ok((window as f64).sqrt().round().max(1.0) as usize),
        v => v
            .parse::<usize>()
            .map_err(|_| anyhow::anyhow!("--checkpoint-every takes a whole number or auto, got '{v}'")),
    }
}

/// The output folder: `--out` (created if needed), or a fresh `runs/PREFIX<UTC time>` of its own
/// (`-2`, `-3`, … for runs started in the same second).
pub fn output_dir(out: Option<&std::path::Path>, prefix: &str) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context;
    match out {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the output folder {}", dir.display()))?;
            Ok(dir.to_path_buf())
        }
        None => Ok(bptt::charlm::fsio::create_unique_dir(
            &std::path::PathBuf::from("runs").join(format!("{prefix}{}", timestamp())),
        )?),
    }
}

/// UTC time as `YYYYmmdd-HHMMSS`, for default run folder names.
pub fn timestamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}
