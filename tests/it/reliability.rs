//! Crash safety and numeric faults: kill -9 or SIGTERM at random moments never leaves a broken file and
//! resuming gives the uninterrupted result; non-finite updates are skipped, then abort, and
//! no NaN reaches a saved model; memory and file descriptors stay flat over a long run.

use crate::cli::{bptt, corpus, stderr, train};
use bptt::charlm::CharModel;
use rand::{RngExt, SeedableRng};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TINY: &[&str] = &[
    "--hidden",
    "24",
    "--embedding-dim",
    "8",
    "--layers",
    "2",
    "--batch",
    "4",
    "--seq-len",
    "12",
    "--threads",
    "1",
    "--eval-every",
    "7",
    "--checkpoint-every-steps",
    "1",
    "--tbptt",
    "5:12",
];

fn args<'a>(text: &'a str, out: &'a str, steps: &'a str) -> Vec<&'a str> {
    let mut a = vec!["train", "--text", text, "--out", out, "--steps", steps];
    a.extend_from_slice(TINY);
    a
}

/// Every file in a run folder parses (temp files of an interrupted write are ignored).
fn check_files(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let bytes = std::fs::read(&p).unwrap();
        match name.as_str() {
            "lock" => {
                // A lock left by a killed process: "PID HOST" (or empty if killed while writing it).
                let text = String::from_utf8(bytes).unwrap();
                assert!(text.is_empty() || text.split_whitespace().next().unwrap().parse::<u32>().is_ok(), "{text:?}");
            }
            "config.json" => {
                serde_json::from_slice::<serde_json::Value>(&bytes).unwrap();
            }
            "metrics.jsonl" => {
                for l in String::from_utf8(bytes).unwrap().lines() {
                    serde_json::from_str::<serde_json::Value>(l)
                        .unwrap_or_else(|e| panic!("torn metrics line {l:?}: {e}"));
                }
            }
            _ => {
                let m = CharModel::from_bytes(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(m.params.iter().all(|v| v.is_finite()));
            }
        }
    }
}

/// 20 runs, each ended at a random moment by SIGKILL or SIGTERM (alternately): every file
/// parses after each, every resume works, and the final files equal an uninterrupted run's.
#[cfg(unix)]
#[test]
fn kill_9_and_sigterm_at_random_moments_then_resume_is_bit_exact() {
    let d = tempfile::tempdir().unwrap();
    let text = corpus(d.path());
    let t = text.to_str().unwrap();
    let straight = d.path().join("straight");
    let killed = d.path().join("killed");
    let total = "3000";
    let o = bptt(&args(t, straight.to_str().unwrap(), total));
    assert!(o.status.success(), "{}", stderr(&o));

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2024);
    let k = killed.to_str().unwrap();
    let (mut kills, mut terms) = (0, 0);
    for round in 0..20 {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bptt"));
        if round == 0 {
            cmd.args(args(t, k, total));
        } else {
            cmd.args(["train", "--resume", k, "--threads", "1"]);
        }
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(20..200)));
        if child.try_wait().unwrap().is_none() {
            if round % 2 == 0 {
                child.kill().unwrap(); // SIGKILL
                kills += 1;
            } else {
                let pid = child.id().to_string();
                assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
                terms += 1;
            }
        }
        child.wait().unwrap();
        check_files(&killed);
    }
    assert!(kills >= 5 && terms >= 5, "only {kills} SIGKILLs and {terms} SIGTERMs landed");
    let o = bptt(&["train", "--resume", k, "--threads", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    check_files(&killed);
    for f in ["model.safetensors", "checkpoint.safetensors"] {
        assert!(
            std::fs::read(straight.join(f)).unwrap() == std::fs::read(killed.join(f)).unwrap(),
            "{f}: interrupted-and-resumed run differs from the straight run"
        );
    }
}

#[test]
fn non_finite_updates_are_skipped_then_abort_and_no_nan_is_saved() {
    let d = tempfile::tempdir().unwrap();
    let text = corpus(d.path());
    let out = d.path().join("run");
    let extra = ["--steps", "200", "--optimizer", "sgd", "--lr", "1e30", "--clip-norm", "0"];
    let o = train(d.path(), &text, "run", &[&extra[..], &["--max-bad-steps", "4", "--eval-every", "1"]].concat());
    let err = stderr(&o);
    assert!(!o.status.success(), "an absurd learning rate should abort: {err}");
    assert!(err.contains("non-finite") && err.contains("lower --lr"), "{err}");
    assert!(!err.contains("panicked"));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let skipped = lines.iter().filter(|l| l["skipped"] == true).count();
    assert!(skipped >= 4, "{skipped} skipped updates logged");
    assert!(lines.iter().rev().take(4).all(|l| l["skipped"] == true));
    for f in ["model.safetensors", "checkpoint.safetensors"] {
        let m = CharModel::load(&out.join(f)).unwrap();
        assert!(m.params.iter().all(|v| v.is_finite()), "{f} holds a non-finite weight");
    }

    // The char-rnn guard: stop when the loss runs away.
    let extra = ["--steps", "200", "--optimizer", "sgd", "--lr", "50", "--clip-norm", "0"];
    let o = train(d.path(), &text, "run2", &[&extra[..], &["--abort-loss-factor", "1.5"]].concat());
    let err = stderr(&o);
    assert!(!o.status.success() && err.contains("diverging"), "{err}");
}

#[cfg(target_os = "linux")]
#[test]
fn memory_and_file_descriptors_stay_flat_over_a_long_run() {
    let d = tempfile::tempdir().unwrap();
    let text = corpus(d.path());
    let out = d.path().join("run");
    let mut child = Command::new(env!("CARGO_BIN_EXE_bptt"))
        .args([
            "train",
            "--text",
            text.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--steps",
            "6000",
            "--hidden",
            "16",
            "--embedding-dim",
            "8",
            "--batch",
            "2",
            "--seq-len",
            "8",
            "--threads",
            "1",
            "--eval-every",
            "500",
            "--checkpoint-every-steps",
            "100",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let fd_dir = format!("/proc/{}/fd", child.id());
    let rss = || -> Option<u64> {
        let s = std::fs::read_to_string(&status).ok()?;
        s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
    };
    let mut samples = Vec::new();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(120) {
        if let (Some(r), Ok(fds)) = (rss(), std::fs::read_dir(&fd_dir)) {
            samples.push((r, fds.count()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(child.wait().unwrap().success());
    assert!(samples.len() >= 10, "the run was too short to sample ({} samples)", samples.len());
    let warm = &samples[samples.len() / 5..];
    let (lo, hi) = warm.iter().fold((u64::MAX, 0), |(lo, hi), s| (lo.min(s.0), hi.max(s.0)));
    eprintln!(
        "RSS after warm-up: {lo}..{hi} kB over {} samples; fds {:?}",
        warm.len(),
        (warm[0].1, warm[warm.len() - 1].1)
    );
    assert!(hi - lo < 2048, "RSS grew from {lo} kB to {hi} kB");
    let fds: Vec<usize> = warm.iter().map(|s| s.1).collect();
    assert!(fds.iter().max().unwrap() - fds.iter().min().unwrap() <= 2, "file descriptors leak: {fds:?}");
}

/// The rule in ARCHITECTURE.md: no `unwrap()`/`expect()` in the library (src/ outside cli/ and
/// main.rs), so no user-controlled value can reach one.
#[test]
fn the_library_has_no_unwrap_or_expect() {
    fn walk(dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if !p.ends_with("cli") {
                    walk(&p, out);
                }
            } else if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("main.rs") {
                let src = std::fs::read_to_string(&p).unwrap();
                let code = src.split("#[cfg(test)]").next().unwrap_or_default();
                for (n, line) in code.lines().enumerate() {
                    if line.contains(".unwrap()") || line.contains(".expect(") {
                        out.push(format!("{}:{}: {}", p.display(), n + 1, line.trim()));
                    }
                }
            }
        }
    }
    let mut found = Vec::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut found);
    assert!(found.is_empty(), "unwrap/expect in the library:\n{}", found.join("\n"));
}
