//! The `bptt` command line (a thin shell over the library).

fn main() {
    println!("bptt {}: the command line arrives with the char-LM; see README.md", env!("CARGO_PKG_VERSION"));
}
