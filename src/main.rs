//! The `bptt` command line: a thin shell over the library (see `cli/`).

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::run() {
        Ok(code) => code,
        // The reader went away (`bptt eval | head -1`): stop quietly, as SIGPIPE would.
        Err(e) if cli::is_broken_pipe(&e) => ExitCode::from(141),
        Err(e) => {
            cli::errln!("error: {}", cli::flag_names(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}
