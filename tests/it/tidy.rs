//! Tidy checks over the source tree (as rust-analyzer has): where `unsafe` may live, that flag
//! names stay in the command line, and that public functions return typed errors.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, with its path relative to the crate root.
fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let rel = p.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap().to_string_lossy().into_owned();
            out.push((rel, std::fs::read_to_string(&p).unwrap()));
        }
    }
}

fn src() -> Vec<(String, String)> {
    let mut out = Vec::new();
    sources(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
    assert!(out.len() > 40, "the source tree was not found");
    out
}

/// The code of a line: what precedes a `//` comment (doc comments are comments).
fn code(line: &str) -> &str {
    let t = line.trim_start();
    if t.starts_with("//") { "" } else { line }
}

#[test]
fn unsafe_lives_only_in_the_kernels_and_the_layer_drivers() {
    for (path, text) in src() {
        let allowed =
            path.starts_with("src/kernels/") || path == "src/net/layer.rs" || path.starts_with("src/net/layer/");
        for (k, line) in text.lines().enumerate() {
            if code(line).contains("unsafe ") || code(line).contains("unsafe{") {
                assert!(allowed, "{path}:{}: unsafe outside kernels/ and net/layer/: {line}", k + 1);
            }
        }
    }
}

#[test]
fn flag_names_stay_in_the_command_line() {
    // The library names a setting as `name` (its Rust and Python name); `cli::flag_names`
    // says `--name` on the command line.
    for (path, text) in src() {
        if path.starts_with("src/cli/") || path == "src/main.rs" {
            continue;
        }
        for (k, line) in text.lines().enumerate() {
            let c = code(line);
            let flag = c.match_indices("--").any(|(i, _)| c[i + 2..].starts_with(|ch: char| ch.is_ascii_lowercase()));
            assert!(!flag, "{path}:{}: a --flag outside cli/: {line}", k + 1);
        }
    }
}

#[test]
fn public_functions_return_typed_errors() {
    for (path, text) in src() {
        let lines: Vec<&str> = text.lines().collect();
        for (k, line) in lines.iter().enumerate() {
            let t = line.trim_start();
            if !(t.starts_with("pub fn ") || t.starts_with("pub async fn ")) {
                continue;
            }
            // The signature, up to its body or its end.
            let mut sig = String::new();
            for l in &lines[k..] {
                sig.push_str(l);
                if l.contains('{') || l.trim_end().ends_with(';') {
                    break;
                }
            }
            let compact: String = sig.split_whitespace().collect();
            assert!(!compact.contains(",String>"), "{path}:{}: a public fn returns a String error: {sig}", k + 1);
        }
    }
}
