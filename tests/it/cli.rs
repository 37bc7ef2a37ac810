//! The `bptt` binary end to end: train / sample / eval, files, resume, Ctrl-C, bad input.

use bptt::charlm::CharModel;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bptt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bptt")).args(args).output().expect("run bptt")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A small deterministic text with some structure to learn.
pub fn corpus(dir: &Path) -> PathBuf {
    let words = ["the ", "cat ", "sat ", "on ", "a ", "mat. ", "dog ", "ran\n", "to ", "me, "];
    let mut s = String::new();
    let mut x = 7u64;
    while s.len() < 6000 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        s.push_str(words[(x >> 60) as usize % words.len()]);
    }
    let p = dir.join("corpus.txt");
    std::fs::write(&p, s).unwrap();
    p
}

const SMALL: &[&str] =
    &["--hidden", "16", "--embedding-dim", "8", "--layers", "2", "--batch", "4", "--seq-len", "16", "--threads", "1"];

/// The `train_loss` of every line of a run folder's metrics.jsonl.
fn train_losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["train_loss"].as_f64().unwrap())
        .collect()
}

/// `bptt train` on `text` with a small model (SMALL), output in `dir/out`.
pub fn train(dir: &Path, text: &Path, out: &str, extra: &[&str]) -> Output {
    let out = dir.join(out);
    let mut args = vec!["train", "--text", text.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend_from_slice(SMALL);
    args.extend_from_slice(extra);
    bptt(&args)
}

#[test]
fn train_writes_every_file_and_a_metrics_line_per_step() {
    let d = tempfile::tempdir().unwrap();
    let text = corpus(d.path());
    let o = train(d.path(), &text, "run", &["--steps", "12", "--eval-every", "5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let run = d.path().join("run");
    for f in ["model.safetensors", "best.safetensors", "config.json", "metrics.jsonl", "checkpoint.safetensors"] {
        assert!(run.join(f).metadata().map(|m| m.len() > 0).unwrap_or(false), "{f} missing or empty");
    }
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 12);
    for (k, l) in lines.iter().enumerate() {
        assert_eq!(l["step"], k as u64 + 1);
        for key in
            ["epoch", "tokens", "train_loss", "grad_norm", "clipped", "skipped", "lr", "tokens_per_s", "elapsed_s"]
        {
            assert!(!l[key].is_null(), "metrics line {k} lacks {key}");
        }
        assert_eq!(l["tokens"], (k as u64 + 1) * 64);
        assert_eq!(!l["val_loss"].is_null(), [5, 10, 12].contains(&(k + 1)), "val_loss at step {}", k + 1);
    }
    assert!(lines[11]["train_loss"].as_f64().unwrap() < lines[0]["train_loss"].as_f64().unwrap());
    // No temp files left behind.
    assert!(std::fs::read_dir(&run).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".tmp")));
}

#[test]
fn eval_matches_the_in_process_loss_and_sampling_is_deterministic() {
    let d = tempfile::tempdir().unwrap();
    let text = corpus(d.path());
    assert!(train(d.path(), &text, "run", &["--steps", "20", "--eval-every", "0"]).status.success());
    let model = d.path().join("run/model.safetensors");
    let m = model.to_str().unwrap();
    let o = bptt(&["eval", "--model", m, "--text", text.to_str().unwrap(), "--json", "--split", "all"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("the whole file as one stream"), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // The default split is the validation part, scored as `train` validates (B = 4 streams here):
    // the run's last val_loss (to rounding: `train` runs windows of 16 steps, `eval` of 100).
    let o = bptt(&["eval", "--model", m, "--text", text.to_str().unwrap(), "--json", "--streams", "4"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let val: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let metrics = std::fs::read_to_string(d.path().join("run/metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    let (ours, theirs) = (val["loss"].as_f64().unwrap(), last["val_loss"].as_f64().unwrap());
    assert!((ours - theirs).abs() < 1e-6 * theirs, "eval {ours} against the run's val_loss {theirs}");
    let cm = CharModel::load(&model).unwrap();
    let ids = cm.vocab.encode(&std::fs::read_to_string(&text).unwrap()).unwrap();
    let e = cm.evaluate_stream(&ids, 1).unwrap();
    assert_eq!(v["loss"].as_f64().unwrap(), e.loss);
    assert_eq!(v["tokens"].as_u64().unwrap(), ids.len() as u64 - 1);
    assert!((v["bits_per_char"].as_f64().unwrap() - e.loss / std::f64::consts::LN_2).abs() < 1e-12);
    assert!((v["perplexity"].as_f64().unwrap() - e.loss.exp()).abs() < 1e-9);

    let sample = |extra: &[&str]| {
        let mut args = vec!["sample", "--model", m, "--length", "80", "--prime", "the "];
        args.extend_from_slice(extra);
        let o = bptt(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    let a = sample(&["--seed", "1"]);
    assert_eq!(a, sample(&["--seed", "1"]));
    assert_ne!(a, sample(&["--seed", "2"]));
    assert!(a.starts_with("the ") && a.chars().count() == 4 + 80 + 1);
    assert_eq!(sample(&["--temperature", "0", "--seed", "1"]), sample(&["--temperature", "0", "--seed", "9"]));
    assert_eq!(sample(&["--top-k", "1", "--seed", "3"]), sample(&["--temperature", "0"]));
}

#[test]
fn resume_is_bit_exact() {
    let d = tempfile::tempdir().unwrap();
    let text = corpus(d.path());
    let variants = [
        [].as_slice(),
        ["--tbptt", "6:16"].as_slice(),
        ["--tbptt", "6:16", "--checkpoint-every", "5"].as_slice(),
        ["--dropout", "0.3", "--tbptt", "6:16", "--checkpoint-every", "5"].as_slice(),
        ["--tbptt", "6:16", "--locked-dropout", "0.3", "--weight-drop", "0.4"].as_slice(),
    ];
    for tb in variants {
        let mut a = vec!["--steps", "14", "--eval-every", "4", "--optimizer", "rmsprop", "--momentum", "0.5"];
        a.extend_from_slice(tb);
        assert!(train(d.path(), &text, "straight", &a).status.success());
        let mut b = a.clone();
        b[1] = "6";
        assert!(train(d.path(), &text, "split", &b).status.success());
        let split = d.path().join("split");
        let o = bptt(&["train", "--resume", split.to_str().unwrap(), "--steps", "14", "--threads", "1"]);
        assert!(o.status.success(), "{}", stderr(&o));
        for f in ["model.safetensors", "checkpoint.safetensors", "best.safetensors"] {
            let x = std::fs::read(d.path().join("straight").join(f)).unwrap();
            let y = std::fs::read(split.join(f)).unwrap();
            assert!(x == y, "{f} differs after resume ({tb:?})");
        }
        assert_eq!(train_losses(&d.path().join("straight")), train_losses(&split));
        std::fs::remove_dir_all(d.path().join("straight")).unwrap();
        std::fs::remove_dir_all(&split).unwrap();
    }
}

/// `--checkpoint-every` (memory-efficient BPTT: windows recomputed segment by segment) trains
/// like plain BPTT, to f32 rounding, and records itself in config.json.
#[test]
fn checkpointed_training_follows_plain_training() {
    let d = tempfile::tempdir().unwrap();
    let text = corpus(d.path());
    let losses = |dir: &str| train_losses(&d.path().join(dir));
    let a = ["--steps", "10", "--eval-every", "0"];
    assert!(train(d.path(), &text, "plain", &a).status.success());
    let o = train(d.path(), &text, "ck", &[&a[..], &["--checkpoint-every", "auto"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let (p, c) = (losses("plain"), losses("ck"));
    assert_eq!(p.len(), 10);
    for (k, (x, y)) in p.iter().zip(&c).enumerate() {
        assert!((x - y).abs() <= 1e-4 * x.abs(), "step {}: plain {x}, checkpointed {y}", k + 1);
    }
    let config = std::fs::read_to_string(d.path().join("ck").join("config.json")).unwrap();
    assert!(config.contains("\"checkpoint_every\": 4"), "{config}"); // √16
}

#[test]
fn model_file_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let text = corpus(d.path());
    assert!(train(d.path(), &text, "run", &["--steps", "3", "--cell", "gru"]).status.success());
    let p = d.path().join("run/model.safetensors");
    let m = CharModel::load(&p).unwrap();
    let q = d.path().join("copy.safetensors");
    m.save(&q).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&q).unwrap());
    let n = CharModel::load(&q).unwrap();
    assert_eq!(m.params, n.params);
    assert_eq!(m.vocab, n.vocab);
    assert_eq!(m.spec, n.spec);
}

#[cfg(unix)]
#[test]
fn ctrl_c_saves_a_checkpoint_that_resumes() {
    let d = tempfile::tempdir().unwrap();
    let text = corpus(d.path());
    let out = d.path().join("run");
    let mut args = vec!["train", "--text", text.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend_from_slice(SMALL);
    args.extend_from_slice(&["--steps", "1000000", "--eval-every", "0"]);
    let child =
        Command::new(env!("CARGO_BIN_EXE_bptt")).args(&args).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let metrics = out.join("metrics.jsonl");
    let t0 = std::time::Instant::now();
    while std::fs::metadata(&metrics).map(|m| m.len()).unwrap_or(0) == 0 && t0.elapsed().as_secs() < 30 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.contains("--resume"), "{err}");
    let m = CharModel::load(&out.join("model.safetensors")).unwrap();
    assert!(m.params.iter().all(|v| v.is_finite()));
    let o = bptt(&["train", "--resume", out.to_str().unwrap(), "--steps", "2", "--threads", "1"]);
    // The interrupted run is past step 2 already, so resuming to 2 steps just saves and exits.
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn task_bench_plot_and_diagnose_print_what_they_document() {
    let o = bptt(&["task", "adding", "--length", "12", "--steps", "30", "--hidden", "8", "--json", "--threads", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for key in ["task", "cell", "length", "steps", "final_loss", "baseline", "solved", "seconds"] {
        assert!(!v[key].is_null(), "task --json lacks {key}: {v}");
    }
    assert_eq!(v["baseline"].as_f64().unwrap(), 1.0 / 6.0);

    let o = bptt(&[
        "bench",
        "--hidden",
        "16",
        "--batch",
        "4",
        "--seq-len",
        "8",
        "--steps",
        "3",
        "--json",
        "--threads",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for key in ["tokens_per_s", "ms_per_step", "gflops", "peak_rss_mb", "activation_mb", "cpu"] {
        assert!(!v[key].is_null(), "bench --json lacks {key}: {v}");
    }
    assert!(v["tokens_per_s"].as_f64().unwrap() > 0.0);

    // The schedule model: the measured line at 1 thread, then the predictions for 1–16 threads,
    // whose 1-thread time is the measured one (the parts timed plus the time outside them).
    let o = bptt(&["bench", "--hidden", "64", "--batch", "2", "--seq-len", "8", "--steps", "3", "--json", "--plan"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> =
        o.stdout.split(|&c| c == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect();
    assert_eq!((lines.len(), lines[0]["threads"].as_u64()), (2, Some(1)), "{lines:?}");
    let predicted = lines[1]["predicted"].as_array().unwrap();
    let threads: Vec<u64> = predicted.iter().map(|p| p["threads"].as_u64().unwrap()).collect();
    assert_eq!(threads, [1, 2, 4, 8, 16]);
    let (one, measured) = (predicted[0]["ms_per_step"].as_f64().unwrap(), lines[0]["ms_per_step"].as_f64().unwrap());
    assert!((one - measured).abs() <= 0.002 + 1e-3 * measured, "{one} against {measured}");
    assert!(predicted.iter().all(|p| p["parts_ms"].as_f64().unwrap() > 0.0), "{predicted:?}");

    // `--plan-cores`: the plan of a machine with that many cores — a 16-core one cuts LSTM
    // H = 128, B = 32's 2 row blocks into a 2 × 2 grid (and its deep products into narrower
    // tiles), a 2-core one keeps the row blocks; the run reports the schedule it ran.
    for (cores, want) in [(2, "layer by layer, 2 row blocks"), (16, "layer by layer, 2 × 2 row × unit blocks")] {
        let cores = cores.to_string();
        let args = ["bench", "--hidden", "128", "--batch", "32", "--seq-len", "8", "--steps", "2", "--json"];
        let o = bptt(&[&args[..], &["--threads", "2", "--plan-cores", &cores]].concat());
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["schedule"].as_str(), Some(want), "{v}");
        assert_eq!(v["plan_cores"].as_u64().map(|c| c.to_string()), Some(cores.clone()), "{v}");
    }

    let d = tempfile::tempdir().unwrap();
    let text = corpus(d.path());
    assert!(train(d.path(), &text, "run", &["--steps", "6", "--eval-every", "3"]).status.success());
    let run = d.path().join("run");
    let o = bptt(&["plot", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in ["loss.png", "loss.svg", "grad_norm.png", "grad_norm.svg"] {
        assert!(std::fs::metadata(run.join(f)).map(|m| m.len() > 0).unwrap_or(false), "{f}");
    }
    let out = d.path().join("diag");
    let o = bptt(&[
        "diagnose",
        "--length",
        "10",
        "--hidden",
        "8",
        "--batch",
        "4",
        "--out",
        out.to_str().unwrap(),
        "--threads",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in ["gradient_flow.png", "gradient_flow.svg", "gradient_flow.csv", "gradient_flow.json"] {
        assert!(std::fs::metadata(out.join(f)).map(|m| m.len() > 0).unwrap_or(false), "{f}");
    }
    let csv = std::fs::read_to_string(out.join("gradient_flow.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 3 * 10, "header + 3 cells × 10 steps");
}

/// `bptt` alone lists the commands (and exits 2, as for a usage error); `train --text` on a
/// sequence data file warns that it is not a text and names `fit`.
#[test]
fn bare_bptt_lists_the_commands_and_train_warns_on_data_files() {
    let o = bptt(&[]);
    assert_eq!(o.status.code(), Some(2));
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    for cmd in ["demo", "train", "fit", "predict", "evaluate", "diagnose", "bench"] {
        assert!(all.lines().any(|l| l.trim_start().starts_with(cmd)), "{cmd} not listed: {all}");
    }
    let d = tempfile::tempdir().unwrap();
    let ts = d.path().join("data.ts");
    std::fs::copy(corpus(d.path()), &ts).unwrap();
    let o = train(d.path(), &ts, "run", &["--steps", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("looks like a data file") && stderr(&o).contains("bptt fit"), "{}", stderr(&o));
}
