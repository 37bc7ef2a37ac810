//! Never lose a run: streams and devices are refused, a run folder has one owner, a fresh run
//! does not overwrite an old one, impossible sizes are an error before any allocation, a closed
//! or full stdout is handled, and SIGTERM / SIGHUP save a checkpoint that resumes bit-exactly.

use crate::cli::{bptt, corpus, stderr, train};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The failure is one clean line on stderr containing `want`.
fn one_line(o: &std::process::Output, want: &str) -> String {
    let err = stderr(o);
    assert!(!o.status.success(), "succeeded: {err}");
    assert!(!err.contains("panicked"), "panicked: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.contains(want), "expected '{want}' in: {err}");
    err
}

/// Starts a long `train` into `out` and waits until it has written a metrics line.
fn start_long_run(text: &Path, out: &Path) -> Child {
    let mut args = vec!["train", "--text", text.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend_from_slice(&["--hidden", "16", "--embedding-dim", "8", "--layers", "1", "--batch", "4"]);
    args.extend_from_slice(&["--seq-len", "16", "--threads", "1", "--steps", "1000000", "--eval-every", "0"]);
    let child = Command::new(env!("CARGO_BIN_EXE_bptt"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while std::fs::metadata(out.join("metrics.jsonl")).map(|m| m.len()).unwrap_or(0) == 0
        && t0.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn signal(child: &Child, sig: &str) {
    assert!(Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success());
}

#[cfg(unix)]
#[test]
fn devices_and_pipes_are_refused_without_reading_them() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("run");
    let o = bptt(&["train", "--text", "/dev/zero", "--out", out.to_str().unwrap()]);
    one_line(&o, "not a regular file");
    let fifo = d.path().join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    // Opening a FIFO for reading would block until a writer came: it must be refused first.
    let o = bptt(&["train", "--text", fifo.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    one_line(&o, "not a regular file");
    let o = bptt(&["eval", "--model", "/dev/zero", "--text", fifo.to_str().unwrap()]);
    one_line(&o, "not a regular file");
    // `yes | bptt train --text /dev/stdin`: a pipe.
    let o = Command::new("sh")
        .args(["-c", "yes | \"$0\" train --text /dev/stdin --out \"$1\""])
        .arg(env!("CARGO_BIN_EXE_bptt"))
        .arg(&out)
        .output()
        .unwrap();
    one_line(&o, "not a regular file");
}

#[cfg(unix)]
#[test]
fn a_run_folder_has_one_owner_and_sigterm_saves_a_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let text = corpus(d.path());
    let out = d.path().join("run");
    let child = start_long_run(&text, &out);
    // A second run into the same folder, fresh or resumed, is refused while the first lives.
    let o = train(d.path(), &text, "run", &["--steps", "3"]);
    one_line(&o, "in use by another bptt process");
    let o = bptt(&["train", "--resume", out.to_str().unwrap()]);
    one_line(&o, "in use by another bptt process");
    signal(&child, "-TERM");
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(143), "{err}");
    assert!(err.contains("SIGTERM") && err.contains("--resume"), "{err}");
    assert!(!out.join("lock").exists(), "the lock outlived its process");
    // The folder is free again: a resume runs (to a total it has already passed: saves, exits).
    let o = bptt(&["train", "--resume", out.to_str().unwrap(), "--steps", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[cfg(unix)]
#[test]
fn a_stale_lock_is_taken_over() {
    let d = tempfile::tempdir().unwrap();
    let text = corpus(d.path());
    let out = d.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    // A lock left by a process that is gone (pid 2^22 + 1 is above Linux's pid_max default).
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    std::fs::write(out.join("lock"), format!("4194305 {}\n", host.trim())).unwrap();
    let o = train(d.path(), &text, "run", &["--steps", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_fresh_run_never_overwrites_an_old_one() {
    let d = tempfile::tempdir().unwrap();
    let text = corpus(d.path());
    let o = train(d.path(), &text, "run", &["--steps", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let run = d.path().join("run");
    let model = std::fs::read(run.join("model.safetensors")).unwrap();
    let o = train(d.path(), &text, "run", &["--steps", "2", "--seed", "9"]);
    one_line(&o, "already holds a run (config.json): continue it with --resume");
    assert!(std::fs::read(run.join("model.safetensors")).unwrap() == model, "the old model was touched");
    // A folder with a model but no checkpoint is a run too.
    std::fs::remove_file(run.join("checkpoint.safetensors")).unwrap();
    std::fs::remove_file(run.join("config.json")).unwrap();
    let o = train(d.path(), &text, "run", &["--steps", "2", "--seed", "9"]);
    one_line(&o, "--force");
    assert_eq!(std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().count(), 3);
    // --force replaces it.
    let o = train(d.path(), &text, "run", &["--steps", "2", "--seed", "9", "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().count(), 2);
}

#[test]
fn default_run_folders_started_together_are_distinct() {
    let d = tempfile::tempdir().unwrap();
    let text = corpus(d.path());
    let args = ["--hidden", "8", "--embedding-dim", "4", "--layers", "1", "--batch", "2", "--seq-len", "8"];
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_bptt"))
            .current_dir(d.path())
            .args(["train", "--text", text.to_str().unwrap(), "--steps", "2", "--threads", "1"])
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let children: Vec<Child> = (0..3).map(|_| spawn()).collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let runs: Vec<_> = std::fs::read_dir(d.path().join("runs")).unwrap().flatten().collect();
    assert_eq!(runs.len(), 3, "runs started together shared a folder");
    for r in runs {
        assert_eq!(std::fs::read_to_string(r.path().join("metrics.jsonl")).unwrap().lines().count(), 2);
    }
}

#[test]
fn impossible_sizes_are_one_line_errors_not_aborts() {
    let d = tempfile::tempdir().unwrap();
    let text = corpus(d.path());
    let o = train(d.path(), &text, "a", &["--tbptt", "1:1000000000000"]);
    one_line(&o, "memory are available");
    let o = train(d.path(), &text, "b", &["--tbptt", "1:1000000000000", "--checkpoint-every", "5"]);
    one_line(&o, "memory are available");
    let o = bptt(&["bench", "--seq-len", "1000000000", "--steps", "1", "--threads", "1"]);
    one_line(&o, "--seq-len");
    // 1.3G parameters: 30 GB of training state, more than this machine (or CI) has.
    if bptt::kernels::machine::available_memory() < 29 << 30 {
        let o = bptt(&["bench", "--hidden", "8192", "--layers", "3", "--steps", "1"]);
        one_line(&o, "lower --hidden");
    } else {
        eprintln!("skipped the model-memory case: this machine has more than 29 GB available");
    }
    let o = train(d.path(), &text, "c", &["--epochs", "18446744073709551615"]);
    one_line(&o, "--epochs");
}

#[cfg(unix)]
#[test]
fn a_closed_stdout_ends_quietly_and_a_full_one_is_one_line() {
    let d = tempfile::tempdir().unwrap();
    let text = corpus(d.path());
    let o = train(d.path(), &text, "run", &["--steps", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let model = d.path().join("run").join("model.safetensors");
    let (m, t) = (model.to_str().unwrap(), text.to_str().unwrap());
    for args in [
        vec!["eval", "--model", m, "--text", t, "--json"],
        vec!["graph", "--steps", "40"],
        vec!["sample", "--model", m, "--length", "100000"],
    ] {
        // `bptt … | true`: the reader is gone before bptt writes.
        let script = "\"$0\" \"$@\" 2>\"$ERR\" | true";
        let err = d.path().join("err.txt");
        let mut sh = Command::new("sh");
        sh.args(["-c", script]).arg(env!("CARGO_BIN_EXE_bptt")).args(&args).env("ERR", &err);
        assert!(sh.status().unwrap().success());
        let msg = std::fs::read_to_string(&err).unwrap();
        assert!(msg.is_empty(), "{args:?} into a closed pipe said: {msg}");
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_bptt")).args(&args).stdout(full).output().unwrap();
        one_line(&o, "cannot write to standard output");
    }
}

#[cfg(unix)]
#[test]
fn sigterm_and_sighup_then_resume_equal_an_uninterrupted_run() {
    let d = tempfile::tempdir().unwrap();
    let text = corpus(d.path());
    let t = text.to_str().unwrap();
    let args = |out: &Path, steps: &str| -> Vec<String> {
        ["train", "--text", t, "--out", out.to_str().unwrap(), "--hidden", "16", "--embedding-dim", "8"]
            .into_iter()
            .chain(["--layers", "1", "--batch", "4", "--seq-len", "16", "--threads", "1", "--steps", steps])
            .chain(["--eval-every", "50"])
            .map(String::from)
            .collect()
    };
    let straight = d.path().join("straight");
    let o = Command::new(env!("CARGO_BIN_EXE_bptt")).args(args(&straight, "400")).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let run = d.path().join("run");
    for (k, (sig, code)) in [("-TERM", 143), ("-HUP", 129)].into_iter().enumerate() {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bptt"));
        if k == 0 {
            cmd.args(args(&run, "400"));
        } else {
            cmd.args(["train", "--resume", run.to_str().unwrap()]);
        }
        let metrics = run.join("metrics.jsonl");
        let before = std::fs::metadata(&metrics).map(|m| m.len()).unwrap_or(0);
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        // Signal it once it is training (its handlers are in place by its first metrics line).
        let t0 = Instant::now();
        while std::fs::metadata(&metrics).map(|m| m.len()).unwrap_or(0) <= before && t0.elapsed().as_secs() < 30 {
            std::thread::sleep(Duration::from_millis(5));
        }
        signal(&child, sig);
        let o = child.wait_with_output().unwrap();
        let err = stderr(&o);
        if o.status.success() {
            continue; // it finished first: nothing to interrupt
        }
        assert_eq!(o.status.code(), Some(code), "{sig}: {err}");
        assert!(err.contains("checkpoint saved") && err.contains("--resume"), "{err}");
    }
    let o = bptt(&["train", "--resume", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in ["model.safetensors", "checkpoint.safetensors"] {
        assert!(
            std::fs::read(straight.join(f)).unwrap() == std::fs::read(run.join(f)).unwrap(),
            "{f}: interrupted-and-resumed run differs from the straight run"
        );
    }
}

/// The peak and the estimate (MiB) that `--memory` printed.
fn peak_and_estimate(o: &std::process::Output) -> (f64, f64) {
    let err = stderr(o);
    assert!(o.status.success(), "failed: {err}");
    let line = err.lines().find(|l| l.starts_with("memory: peak")).unwrap_or_else(|| panic!("no peak in: {err}"));
    let nums: Vec<f64> =
        line.split(|c: char| !(c.is_ascii_digit() || c == '.')).filter_map(|w| w.parse().ok()).collect();
    (nums[0], nums[1])
}

#[test]
fn every_command_stays_within_its_printed_memory_estimate() {
    let d = tempfile::tempdir().unwrap();
    let text = corpus(d.path());
    let (t, run) = (text.to_str().unwrap(), d.path().join("run"));
    let r = run.to_str().unwrap();
    let model = run.join("model.safetensors");
    let m = model.to_str().unwrap();
    let diag = d.path().join("diag");
    let dg = diag.to_str().unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec!["train", "--text", t, "--out", r, "--hidden", "32", "--batch", "8", "--seq-len", "32", "--steps", "3"],
        vec!["train", "--resume", r, "--steps", "5"],
        vec!["eval", "--model", m, "--text", t],
        vec!["sample", "--model", m, "--length", "50"],
        vec!["graph", "--steps", "64", "--layers", "16"],
        vec!["plot", r],
        vec!["task", "adding", "--length", "20", "--steps", "5"],
        vec!["diagnose", "--length", "20", "--out", dg],
        vec!["diagnose", "--model", m, "--text", t, "--length", "20", "--out", dg],
        vec!["bench", "--hidden", "128", "--batch", "8", "--seq-len", "20", "--steps", "2"],
        vec![
            "bench",
            "--hidden",
            "64",
            "--batch",
            "4",
            "--seq-len",
            "400",
            "--steps",
            "2",
            "--checkpoint-every",
            "auto",
        ],
    ];
    for args in cases {
        let threads: &[&str] = if ["graph", "plot"].contains(&args[0]) { &[] } else { &["--threads", "2"] };
        let o = bptt(&[&args[..], &["--memory"], threads].concat());
        let (peak, estimate) = peak_and_estimate(&o);
        eprintln!("{args:?}: peak {peak} MiB, estimated {estimate} MiB");
        assert!(peak <= 1.2 * estimate, "{args:?}: peak {peak} MiB exceeds the estimate {estimate} MiB by over 20%");
    }
}

#[test]
fn a_large_text_costs_at_most_twice_its_size() {
    let d = tempfile::tempdir().unwrap();
    let small = std::fs::read(corpus(d.path())).unwrap();
    let big = d.path().join("big.txt");
    let n = 24 << 20;
    std::fs::write(&big, small.iter().copied().cycle().take(n).collect::<Vec<u8>>()).unwrap();
    let out = d.path().join("run");
    let o = bptt(&[
        "train",
        "--memory",
        "--text",
        big.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--hidden",
        "8",
        "--embedding-dim",
        "4",
        "--steps",
        "1",
        "--val-fraction",
        "0",
        "--threads",
        "1",
    ]);
    let (peak, estimate) = peak_and_estimate(&o);
    let text_mib = n as f64 / 1048576.0;
    eprintln!("a {text_mib} MiB text: peak {peak} MiB, estimated {estimate} MiB");
    assert!(peak <= 1.2 * estimate, "peak {peak} MiB over the estimate {estimate} MiB");
    // Twice the text, plus the program (a few MiB) and a tiny model.
    assert!(peak <= 2.0 * text_mib + 12.0, "peak {peak} MiB for a {text_mib} MiB text: more than twice its size");
}

#[test]
fn token_ids_take_the_narrowest_integer_the_vocabulary_allows() {
    use bptt::charlm::{TokenIds, Vocab};
    // ASCII and a few accents: one byte per character, same ids as u32s.
    let text = "héllo wörld, the cat sat\n".repeat(50);
    let vocab = Vocab::from_text(&text).unwrap();
    let ids = vocab.encode(&text).unwrap();
    assert_eq!(ids.id_bytes(), 1);
    assert_eq!(ids.len(), text.chars().count());
    let want: Vec<u32> = text.chars().map(|c| vocab.id(c).unwrap()).collect();
    assert_eq!(ids.to_vec(), want);
    assert_eq!(TokenIds::from(want.clone()), ids);
    // Sorted by code point: ASCII first, then the rest.
    let chars = vocab.chars();
    assert!(chars.windows(2).all(|w| w[0] < w[1]), "{chars:?}");
    // 300 distinct characters: two bytes each, ids intact above 255.
    let wide: String = (0..300u32).map(|k| char::from_u32(0x4e00 + k).unwrap()).collect();
    let v = Vocab::from_text(&wide).unwrap();
    let ids = v.encode(&wide).unwrap();
    assert_eq!((ids.id_bytes(), v.len()), (2, 300));
    assert_eq!(ids.get(299), 299);
    assert_eq!(ids.iter().collect::<Vec<_>>(), (0..300).collect::<Vec<u32>>());
    // Beyond 65,536: four bytes.
    assert_eq!(TokenIds::from(vec![0, 70_000]).id_bytes(), 4);
    let mut split = TokenIds::from(vec![1, 2, 3, 4]);
    assert_eq!(split.split_off(3).to_vec(), vec![4]);
    assert_eq!(split.to_vec(), vec![1, 2, 3]);
}

#[cfg(unix)]
#[test]
fn under_ulimit_v_a_command_runs_or_says_why_in_one_line() {
    let d = tempfile::tempdir().unwrap();
    let text = corpus(d.path());
    let t = text.to_str().unwrap();
    // Limits (KiB) from too small for anything to enough for all: each run exits 0, or 1 with one
    // line; never an abort (134), a panic (101) or a signal.
    for limit in [60_000, 150_000, 250_000, 400_000] {
        for (k, args) in [
            vec!["train", "--text", t, "--hidden", "256", "--batch", "32", "--seq-len", "64", "--steps", "2"],
            vec!["bench", "--hidden", "512", "--batch", "32", "--steps", "1"],
            vec!["task", "adding", "--length", "50", "--steps", "2"],
        ]
        .into_iter()
        .enumerate()
        {
            let out = d.path().join(format!("run-{limit}-{k}"));
            let script = r#"ulimit -v "$1"; shift; exec "$@""#;
            let mut cmd = Command::new("sh");
            cmd.args(["-c", script, "sh", &limit.to_string(), env!("CARGO_BIN_EXE_bptt")]);
            cmd.args(&args).args(["--threads", "2"]);
            if args[0] == "train" {
                cmd.arg("--out").arg(&out);
            }
            let o = cmd.output().unwrap();
            let err = stderr(&o);
            match o.status.code() {
                Some(0) => {}
                Some(1) => {
                    assert_eq!(err.trim_end().lines().count(), 1, "ulimit -v {limit} {args:?}: {err}");
                    assert!(err.contains("memory are available"), "ulimit -v {limit} {args:?}: {err}");
                }
                c => panic!("ulimit -v {limit} {args:?}: exit {c:?}: {err}"),
            }
        }
    }
}
