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
    start_long_run_ignoring(text, out, "")
}

/// [`start_long_run`] with the signals in `ignored` (e.g. "HUP INT") ignored at its start, as
/// `nohup` or a shell's background job leave them.
fn start_long_run_ignoring(text: &Path, out: &Path, ignored: &str) -> Child {
    let mut args = vec!["train", "--text", text.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend_from_slice(&["--hidden", "16", "--embedding-dim", "8", "--layers", "1", "--batch", "4"]);
    args.extend_from_slice(&["--seq-len", "16", "--threads", "1", "--steps", "1000000", "--eval-every", "0"]);
    let script =
        format!(r#"{}exec "$@""#, if ignored.is_empty() { String::new() } else { format!("trap '' {ignored}; ") });
    let child = Command::new("sh")
        .args(["-c", &script, "sh", env!("CARGO_BIN_EXE_bptt")])
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
    one_line(&o, &format!("is in use by process {} (bptt) on this host", child.id()));
    let o = bptt(&["train", "--resume", out.to_str().unwrap()]);
    one_line(&o, "wait for it to finish or stop it");
    // --force-unlock takes over a lock of another host only, never a live process's here.
    let o = bptt(&["train", "--resume", out.to_str().unwrap(), "--force-unlock"]);
    one_line(&o, "is in use by process");
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
    one_line(&o, "already holds a run (checkpoint.safetensors): continue it with --resume");
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
    interrupted_runs_resume_bit_exactly(&[]);
    // A LayerNorm-LSTM: its norms' gains and biases, their optimizer state, its model metadata.
    interrupted_runs_resume_bit_exactly(&["--cell", "lstm", "--layer-norm"]);
    // Zoneout: its masks from each update's seed, its rates in the model's metadata.
    interrupted_runs_resume_bit_exactly(&["--cell", "lstm", "--zoneout-h", "0.1", "--zoneout-c", "0.3"]);
    // Learning online: the stream's state and the influence carried (SnAp-1's per unit, UORO's
    // vectors and the position of its random signs) are in the checkpoint.
    interrupted_runs_resume_bit_exactly(&["--online", "snap", "--batch", "1"]);
    interrupted_runs_resume_bit_exactly(&["--online", "uoro", "--batch", "1", "--cell", "gru"]);
    // bf16 products (f32 where the CPU lacks them): the setting is part of the run's config.
    interrupted_runs_resume_bit_exactly(&["--precision", "bf16"]);
}

/// A char model with zoneout keeps its rates through a save and a load (metadata `zoneout_h`,
/// `zoneout_c`, exactly), and a model without zoneout writes neither key.
#[test]
fn char_model_files_keep_zoneout_rates() {
    use bptt::charlm::{CharModel, ModelSpec, Vocab};
    let d = tempfile::tempdir().unwrap();
    for z in [bptt::Zoneout { h: 0.07, c: 0.35 }, bptt::Zoneout::NONE] {
        let spec = ModelSpec {
            cell: bptt::CellKind::Lstm,
            embedding_dim: 4,
            hidden: 8,
            layers: 1,
            layer_norm: false,
            zoneout: z,
        };
        let m = CharModel::new(spec, Vocab::from_text("abc\n").unwrap(), 1).unwrap();
        let path = d.path().join("m.safetensors");
        m.save(&path).unwrap();
        let back = CharModel::load(&path).unwrap();
        assert_eq!(back.spec, spec);
        assert_eq!((back.spec.zoneout.h.to_bits(), back.spec.zoneout.c.to_bits()), (z.h.to_bits(), z.c.to_bits()));
        let bytes = std::fs::read(&path).unwrap();
        let has_key = bytes.windows(9).any(|w| w == b"zoneout_h");
        assert_eq!(has_key, !z.is_none(), "{z:?}: the zoneout keys are written only when set");
    }
}

/// `train` with `extra`, stopped by SIGTERM, resumed, stopped by SIGHUP, resumed: the straight
/// run's files, byte for byte.
#[cfg(unix)]
fn interrupted_runs_resume_bit_exactly(extra: &[&str]) {
    let d = tempfile::tempdir().unwrap();
    let text = corpus(d.path());
    let t = text.to_str().unwrap();
    let args = |out: &Path, steps: &str| -> Vec<String> {
        let batch = if extra.contains(&"--batch") { &[][..] } else { &["--batch", "4"][..] };
        ["train", "--text", t, "--out", out.to_str().unwrap(), "--hidden", "16", "--embedding-dim", "8"]
            .into_iter()
            .chain(batch.iter().copied())
            .chain(["--layers", "1", "--seq-len", "16", "--threads", "1", "--steps", steps])
            .chain(["--eval-every", "50"])
            .chain(extra.iter().copied())
            .map(String::from)
            .collect()
    };
    let straight = d.path().join("straight");
    let o = Command::new(env!("CARGO_BIN_EXE_bptt")).args(args(&straight, "400")).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let run = d.path().join("run");
    let mut interrupted = 0;
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
        interrupted += 1;
    }
    assert!(interrupted > 0, "{extra:?}: the run ended before a signal reached it");
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
        // bf16 products pack both operands of a weight gradient (about a fifth more here).
        vec![
            "bench",
            "--hidden",
            "512",
            "--layers",
            "1",
            "--batch",
            "64",
            "--seq-len",
            "50",
            "--steps",
            "2",
            "--precision",
            "bf16",
        ],
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

/// A small model to save (the library's writer is the one every command and binding uses).
fn small_model() -> bptt::charlm::CharModel {
    use bptt::charlm::{CharModel, ModelSpec, Vocab};
    let spec = ModelSpec {
        cell: bptt::CellKind::Gru,
        embedding_dim: 4,
        hidden: 8,
        layers: 1,
        layer_norm: false,
        zoneout: bptt::Zoneout::NONE,
    };
    CharModel::new(spec, Vocab::from_text("abc\n").unwrap(), 1).unwrap()
}

#[cfg(unix)]
#[test]
fn saves_replace_only_regular_files_and_write_through_links() {
    use std::os::unix::fs::FileTypeExt;
    let d = tempfile::tempdir().unwrap();
    let m = small_model();
    // A FIFO is refused at once (opening it to write would block) and stays a FIFO.
    let fifo = d.path().join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let e = m.save(&fifo).unwrap_err().to_string();
    assert!(e.contains("is a device, pipe or socket") && e.contains("choose another file name"), "{e}");
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    // A device (as root, renaming over it would replace the node with a file): refused.
    let e = m.save(Path::new("/dev/null")).unwrap_err().to_string();
    assert!(e.contains("/dev/null") && e.contains("not a regular file"), "{e}");
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
    // A folder: refused.
    let e = m.save(d.path()).unwrap_err().to_string();
    assert!(e.contains("is a folder"), "{e}");
    // A link to a file is written through: the link stays, its target gets the model.
    let target = d.path().join("target.safetensors");
    std::fs::write(&target, b"old").unwrap();
    let link = d.path().join("link.safetensors");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    m.save(&link).unwrap();
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(bptt::charlm::CharModel::load(&target).unwrap().params, m.params);
    // A link to a device or to nothing: refused, the link untouched.
    let to_dev = d.path().join("to_dev");
    std::os::unix::fs::symlink("/dev/null", &to_dev).unwrap();
    let e = m.save(&to_dev).unwrap_err().to_string();
    assert!(e.contains("is a link to /dev/null"), "{e}");
    let dangling = d.path().join("dangling");
    std::os::unix::fs::symlink(d.path().join("gone/x"), &dangling).unwrap();
    let e = m.save(&dangling).unwrap_err().to_string();
    assert!(e.contains("a link to nothing"), "{e}");
    assert!(std::fs::symlink_metadata(&dangling).unwrap().file_type().is_symlink());
    // The command line reads the model through the link.
    let o = bptt(&["sample", "--model", link.to_str().unwrap(), "--length", "5"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[cfg(unix)]
#[test]
fn a_lock_that_is_not_ours_or_from_another_host_says_how_to_recover() {
    let d = tempfile::tempdir().unwrap();
    let text = corpus(d.path());
    let out = d.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    // A FIFO lock would hang a reader, a link to a device would grow without end: refused at once.
    assert!(Command::new("mkfifo").arg(out.join("lock")).status().unwrap().success());
    let t0 = Instant::now();
    let o = train(d.path(), &text, "run", &["--steps", "2"]);
    one_line(&o, "has a lock file that bptt did not write");
    assert!(t0.elapsed() < Duration::from_secs(20));
    std::fs::remove_file(out.join("lock")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", out.join("lock")).unwrap();
    let o = train(d.path(), &text, "run", &["--steps", "2"]);
    one_line(&o, "remove");
    std::fs::remove_file(out.join("lock")).unwrap();
    // Another host's lock (a container that is gone): the message names it and the way out.
    std::fs::write(out.join("lock"), "123 some-other-host\n").unwrap();
    let o = train(d.path(), &text, "run", &["--steps", "2"]);
    let err = one_line(&o, "is locked by process 123 on host some-other-host");
    assert!(err.contains("--force-unlock"), "{err}");
    let o = train(d.path(), &text, "run", &["--steps", "2", "--force-unlock"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!out.join("lock").exists());
}

#[cfg(unix)]
#[test]
fn signals_ignored_at_start_stay_ignored() {
    // `nohup` ignores SIGHUP; the run must not turn it back on. `trap '' HUP` is what nohup does.
    let d = tempfile::tempdir().unwrap();
    let text = corpus(d.path());
    let child = start_long_run_ignoring(&text, &d.path().join("run"), "HUP INT");
    // (A shell starts a background job with SIGINT ignored, as `trap '' INT` does here.)
    signal(&child, "-HUP");
    signal(&child, "-INT");
    std::thread::sleep(Duration::from_millis(700));
    let mut child = child;
    assert!(child.try_wait().unwrap().is_none(), "SIGHUP or SIGINT stopped a run that started with them ignored");
    signal(&child, "-TERM");
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(143), "{}", stderr(&o));
}

#[test]
fn a_logged_run_shows_samples_progress_and_warnings_and_an_all_skipped_run_fails() {
    let d = tempfile::tempdir().unwrap();
    let text = corpus(d.path());
    // stderr is a pipe here, as with nohup, `2>log` or `| tee`.
    let o = train(d.path(), &text, "run", &["--steps", "4", "--sample-every", "2"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("--- sample at step 2 ---") && err.contains("--- sample at step 4 ---"), "{err}");
    assert!(err.contains("step 4/4"), "no progress line in the log: {err}");
    // A learning rate so large that every update is non-finite: each is skipped and said, and
    // the run ends non-zero with one line, not 0 with an unchanged model.
    let o = train(d.path(), &text, "huge", &["--steps", "3", "--lr", "1e300", "--clip-norm", "0"]);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("warning: step 1: non-finite gradient or update, skipped"), "{err}");
    assert!(err.contains("no update was applied"), "{err}");
}

#[cfg(unix)]
#[test]
fn a_closed_or_full_stderr_never_panics() {
    let d = tempfile::tempdir().unwrap();
    let text = corpus(d.path());
    let t = text.to_str().unwrap();
    for redirect in ["2>&-", "2>/dev/full"] {
        for (args, ok) in [
            (format!("train --text '{t}' --out '{}/r' --steps 2 --hidden 8 --force", d.path().display()), true),
            ("train --no-such-flag".to_string(), false),
            ("eval --model /nonexistent --text /nonexistent".to_string(), false),
        ] {
            let o = Command::new("sh")
                .args(["-c", &format!("\"$0\" {args} {redirect}"), env!("CARGO_BIN_EXE_bptt")])
                .output()
                .unwrap();
            let code = o.status.code();
            assert_ne!(code, Some(101), "{args} {redirect} panicked");
            assert_eq!(code == Some(0), ok, "{args} {redirect}: exit {code:?}");
        }
    }
}

#[test]
fn resume_keeps_every_line_of_a_large_and_damaged_history() {
    let d = tempfile::tempdir().unwrap();
    let text = corpus(d.path());
    let o = train(d.path(), &text, "run", &["--steps", "4", "--checkpoint-every-steps", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let run = d.path().join("run");
    let metrics = run.join("metrics.jsonl");
    let original = std::fs::read_to_string(&metrics).unwrap();
    // History before the run: 40 MB of earlier lines (steps 0, kept), a damaged line, a line
    // longer than the 1 MiB a line is read in, and the run's own lines after it.
    let mut big = String::new();
    let filler = format!("{{\"step\":0,\"note\":\"{}\"}}\n", "x".repeat(200));
    while big.len() < 40 << 20 {
        big.push_str(&filler);
    }
    big.push_str("{\"step\": 1, \"train_loss\": 2.0, trunc\n");
    big.push_str(&format!("{}\n", "y".repeat(3 << 20)));
    big.push_str(&original);
    std::fs::write(&metrics, &big).unwrap();
    // Resume from the checkpoint of step 4 under an address-space limit well below what
    // reading the file whole and copying it would take.
    let o = Command::new("sh")
        .args(["-c", r#"ulimit -v 600000; exec "$@""#, "sh", env!("CARGO_BIN_EXE_bptt")])
        .args(["train", "--resume", run.to_str().unwrap(), "--steps", "6", "--threads", "1"])
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("keeps 2 line(s) that are not metrics"), "{err}");
    let after = std::fs::read_to_string(&metrics).unwrap();
    assert!(after.starts_with(&big), "a line of history was lost or changed");
    assert_eq!(after[big.len()..].lines().count(), 2, "steps 5 and 6 appended: {}", &after[big.len()..]);
}

/// `path`'s safetensors file with its metadata changed by `edit` (data untouched).
fn edit_metadata(path: &Path, edit: impl Fn(&mut serde_json::Map<String, serde_json::Value>)) {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let mut h: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    edit(h["__metadata__"].as_object_mut().unwrap());
    let mut s = serde_json::to_vec(&h).unwrap();
    s.resize(s.len().div_ceil(8) * 8, b' ');
    let mut out = (s.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&s);
    out.extend_from_slice(&b[8 + n..]);
    std::fs::write(path, out).unwrap();
}

#[test]
fn files_of_another_run_or_size_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let text = corpus(d.path());
    let t = text.to_str().unwrap();
    let sized = |out: &str, flags: &[&str]| {
        let out = d.path().join(out);
        let mut a = vec!["train", "--text", t, "--out", out.to_str().unwrap(), "--embedding-dim", "4"];
        a.extend_from_slice(&["--batch", "2", "--seq-len", "8", "--threads", "1"]);
        a.extend_from_slice(flags);
        bptt(&a)
    };
    // A 2-layer model labelled as 1 layer: its second layer's tensors are not silently dropped.
    assert!(sized("two", &["--steps", "1", "--layers", "2", "--hidden", "8"]).status.success());
    let model = d.path().join("two/model.safetensors");
    edit_metadata(&model, |m| {
        m.insert("num_layers".into(), "1".into());
    });
    let o = bptt(&["sample", "--model", model.to_str().unwrap(), "--length", "5"]);
    one_line(&o, "_l1' is not one the metadata implies");
    // A checkpoint copied in from a run of another size: refused, config.json untouched.
    assert!(sized("a", &["--steps", "2", "--hidden", "16"]).status.success());
    assert!(sized("b", &["--steps", "2", "--hidden", "24"]).status.success());
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    let config = std::fs::read(a.join("config.json")).unwrap();
    std::fs::copy(b.join("checkpoint.safetensors"), a.join("checkpoint.safetensors")).unwrap();
    let o = bptt(&["train", "--resume", a.to_str().unwrap(), "--steps", "4"]);
    one_line(&o, "checkpoint.safetensors is not this run's: its settings differ from config.json (model.hidden)");
    assert_eq!(std::fs::read(a.join("config.json")).unwrap(), config);
    // An --out that is a file is refused before the text is read.
    let file = d.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let o = bptt(&["train", "--text", "/nonexistent", "--out", file.to_str().unwrap()]);
    one_line(&o, "is a file, not a folder");
    // A run that saved nothing (it failed at its start) is replaced by a new one without --force.
    let failed = d.path().join("failed");
    std::fs::create_dir_all(&failed).unwrap();
    std::fs::copy(a.join("config.json"), failed.join("config.json")).unwrap();
    std::fs::write(failed.join("metrics.jsonl"), "").unwrap();
    assert!(train(d.path(), &text, "failed", &["--steps", "1"]).status.success());
    // Validation asked for but empty: said, not silent.
    let o = sized("v", &["--steps", "1", "--hidden", "8", "--val-fraction", "0.00001"]);
    assert!(o.status.success() && stderr(&o).contains("the run has no validation"), "{}", stderr(&o));
}

/// Softmax is unchanged by a uniform shift of the logits; in f32, a shift near the largest
/// float erases their differences, and the honest loss is then that of a uniform guess, ln V —
/// never 0 (a "perfect model", what adding the max back to a small log-sum reported).
#[test]
fn a_uniform_shift_of_the_decoder_bias_never_reports_a_perfect_model() {
    let text = "the quick brown fox jumps over the lazy dog\n".repeat(20);
    let mut m = small_model_for(&text);
    let ids = m.vocab.encode(&text).unwrap();
    let before = m.evaluate_stream(&ids, 1).unwrap().loss;
    let bias = m.net.params().iter().find(|p| p.name == "decoder.bias").unwrap().clone();
    for shift in [1e3f32, 1e30, 3e38] {
        let mut shifted = m.params.clone();
        shifted[bias.offset..bias.offset + bias.shape[0]].iter_mut().for_each(|b| *b += shift);
        std::mem::swap(&mut m.params, &mut shifted);
        let loss = m.evaluate_stream(&ids, 1).unwrap().loss;
        std::mem::swap(&mut m.params, &mut shifted);
        let uniform = (m.vocab.len() as f64).ln();
        if shift == 1e3 {
            assert!((loss - before).abs() < 1e-3 * before, "shift {shift}: {loss} vs {before}");
        } else {
            assert!((loss - uniform).abs() < 0.05 * uniform, "shift {shift}: loss {loss}, ln V = {uniform}");
        }
    }
}

fn small_model_for(text: &str) -> bptt::charlm::CharModel {
    use bptt::charlm::{CharModel, ModelSpec, Vocab};
    let spec = ModelSpec {
        cell: bptt::CellKind::Lstm,
        embedding_dim: 4,
        hidden: 8,
        layers: 1,
        layer_norm: false,
        zoneout: bptt::Zoneout::NONE,
    };
    CharModel::new(spec, Vocab::from_text(text).unwrap(), 3).unwrap()
}
