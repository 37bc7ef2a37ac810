//! Data-parallel training under `mpirun` (feature `mpi`; needs Open MPI): N ranks against one
//! process, reproducibility, resume, resharding and a rank that dies.

use crate::cli::{corpus, stderr};
use bptt::charlm::CharModel;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const MODEL: &[&str] = &[
    "--hidden",
    "24",
    "--embedding-dim",
    "8",
    "--layers",
    "2",
    "--seq-len",
    "12",
    "--threads",
    "1",
    "--val-fraction",
    "0.1",
];

/// `mpirun -np N` with the flags a container needs (root, more ranks than cores).
fn mpirun(np: usize) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--oversubscribe", "-np", &np.to_string()])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    c
}

/// `bptt ARGS`, alone (np = 1) or under `mpirun -np N`.
fn bptt_np(np: usize, args: &[&str]) -> Output {
    let mut c = if np == 1 {
        Command::new(env!("CARGO_BIN_EXE_bptt"))
    } else {
        let mut c = mpirun(np);
        c.arg(env!("CARGO_BIN_EXE_bptt"));
        c
    };
    c.args(args).output().expect("run bptt (is Open MPI's mpirun installed?)")
}

/// A small char-LM run of `steps` updates into `dir/out`.
fn train(np: usize, dir: &Path, out: &str, extra: &[&str]) -> Output {
    let text = corpus(dir);
    let out = dir.join(out);
    let mut args = vec!["train", "--text", text.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend_from_slice(MODEL);
    if !extra.contains(&"--batch") {
        args.extend_from_slice(&["--batch", "8"]);
    }
    args.extend_from_slice(extra);
    bptt_np(np, &args)
}

fn weights(run: &Path) -> Vec<f32> {
    CharModel::load(&run.join("model.safetensors")).unwrap().params
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

#[test]
fn two_and_four_ranks_match_one_process_with_the_same_global_batch() {
    let d = tempfile::tempdir().unwrap();
    let steps = ["--steps", "20", "--eval-every", "10"];
    for (np, out) in [(1, "one"), (2, "two"), (4, "four")] {
        let o = train(np, d.path(), out, &steps);
        assert!(o.status.success(), "np={np}: {}", stderr(&o));
    }
    let one = widen(&weights(&d.path().join("one")));
    for out in ["two", "four"] {
        let w = widen(&weights(&d.path().join(out)));
        let diff = max_diff(&one, &w);
        assert!(diff <= 1e-5, "{out} ranks: max |dw| = {diff:e} after 20 updates");
        assert!(one != w || out == "four", "np=2 should round differently from one process (a real reduction)");
    }
}

/// The library driven directly in f32 and f64 (examples/dist_check.rs): after 20 updates the
/// weights of N ranks and of one process differ only by the rounding of the reduction order.
#[test]
fn f64_ranks_agree_with_one_process_to_1e_12() {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_bptt")).parent().unwrap().join("examples/dist_check");
    assert!(exe.exists(), "{} is missing: cargo build --release --features mpi --example dist_check", exe.display());
    let d = tempfile::tempdir().unwrap();
    let read = |p: &Path| -> Vec<f64> {
        std::fs::read(p).unwrap().chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect()
    };
    for (precision, tol) in [("f64", 1e-12), ("f32", 1e-5)] {
        let mut runs = Vec::new();
        for np in [1, 2, 4] {
            let out = d.path().join(format!("{precision}-{np}.bin"));
            let mut c = if np == 1 { Command::new(&exe) } else { mpirun(np) };
            if np > 1 {
                c.arg(&exe);
            }
            let o = c.arg(precision).arg(&out).output().unwrap();
            assert!(o.status.success(), "{precision} np={np}: {}", stderr(&o));
            runs.push(read(&out));
        }
        for (np, w) in [(2, &runs[1]), (4, &runs[2])] {
            let diff = max_diff(&runs[0], w);
            assert!(diff <= tol, "{precision}, {np} ranks: max |dw| = {diff:e} > {tol:e}");
        }
    }
}

#[test]
fn two_ranks_reproduce_bit_for_bit_and_resume_bit_exactly() {
    let d = tempfile::tempdir().unwrap();
    // With truncated BPTT (k1 < k2) and dropout, resume must also restore history and masks.
    let extra = ["--tbptt", "6:12", "--dropout", "0.2", "--eval-every", "5"];
    let with = |steps: &'static str| [&extra[..], &["--steps", steps]].concat();
    for out in ["a", "b", "half"] {
        let steps = if out == "half" { "9" } else { "18" };
        let o = train(2, d.path(), out, &with(steps));
        assert!(o.status.success(), "{out}: {}", stderr(&o));
    }
    let bytes = |run: &str| std::fs::read(d.path().join(run).join("model.safetensors")).unwrap();
    assert_eq!(bytes("a"), bytes("b"), "two runs of np=2 with one seed differ");
    let half = d.path().join("half");
    let o = bptt_np(2, &["train", "--resume", half.to_str().unwrap(), "--steps", "18"]);
    assert!(o.status.success(), "resume: {}", stderr(&o));
    assert_eq!(bytes("a"), bytes("half"), "np=2 resumed at step 9 differs from a straight run");
}

#[test]
fn a_checkpoint_of_two_ranks_resumes_elsewhere_only_with_reshard() {
    let d = tempfile::tempdir().unwrap();
    let o = train(2, d.path(), "run", &["--steps", "6"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let run = d.path().join("run");
    let o = bptt_np(1, &["train", "--resume", run.to_str().unwrap(), "--steps", "8"]);
    let err = stderr(&o);
    assert!(!o.status.success() && err.contains("written by 2 rank(s)") && err.contains("--reshard"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let o = bptt_np(1, &["train", "--resume", run.to_str().unwrap(), "--steps", "8", "--reshard"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_batch_the_ranks_cannot_share_is_refused_in_one_line() {
    let d = tempfile::tempdir().unwrap();
    let o = train(2, d.path(), "run", &["--steps", "2", "--batch", "7"]);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("--batch 7 cannot be shared by 2 ranks"), "{err}");
}

#[test]
fn a_rank_that_dies_ends_the_job_within_10_s_and_the_checkpoint_resumes() {
    let d = tempfile::tempdir().unwrap();
    let text = corpus(d.path());
    let run = d.path().join("run");
    let mut c = mpirun(2);
    c.arg(env!("CARGO_BIN_EXE_bptt")).args(["train", "--text", text.to_str().unwrap(), "--out", run.to_str().unwrap()]);
    c.args(MODEL).args(["--batch", "8", "--steps", "1000000", "--checkpoint-every-steps", "20", "--eval-every", "0"]);
    let mut job = c.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let ckpt = run.join("checkpoint.safetensors");
    let t0 = Instant::now();
    while !ckpt.exists() {
        assert!(t0.elapsed() < Duration::from_secs(60), "no checkpoint after 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Rank 1's process: a bptt whose environment says so.
    let rank1 = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let has = |hay: &[u8], s: &str| hay.windows(s.len()).any(|w| w == s.as_bytes());
            has(&cmd, run.to_str().unwrap()) && has(&env, "OMPI_COMM_WORLD_RANK=1\0")
        })
        .expect("rank 1's process");
    let killed = Instant::now();
    Command::new("kill").args(["-9", &rank1.to_string()]).status().unwrap();
    let status = loop {
        if let Some(s) = job.try_wait().unwrap() {
            break s;
        }
        assert!(killed.elapsed() < Duration::from_secs(10), "the job still runs 10 s after rank 1 died");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(job.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("rank 1") && err.contains("Killed"), "no message naming the dead rank: {err}");
    // The checkpoint on disk is whole: the run goes on from it.
    let o = bptt_np(2, &["train", "--resume", run.to_str().unwrap(), "--steps", "25", "--eval-every", "0"]);
    assert!(o.status.success(), "resume after the crash: {}", stderr(&o));
}

/// `bptt fit` under mpirun -np 2 and -np 4 (uneven shares of batch 7, class weights, a
/// validation split) trains the model one process trains, to f32 rounding.
#[test]
fn fit_under_mpirun_matches_one_process() {
    let d = tempfile::tempdir().unwrap();
    let train = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/JapaneseVowels/JapaneseVowels_TRAIN.ts");
    let flags = ["--hidden", "32", "--epochs", "2", "--threads", "1", "--dropout", "0", "--valid-fraction", "0.1"];
    let run = |np: usize| -> Vec<f32> {
        let out = d.path().join(format!("np{np}"));
        let mut a = vec!["fit", "--train", train.to_str().unwrap(), "--out", out.to_str().unwrap()];
        a.extend_from_slice(&flags);
        a.extend_from_slice(&["--class-weight", "balanced", "--batch", "7"]);
        let o = bptt_np(np, &a);
        assert!(o.status.success(), "np={np}: {}", stderr(&o));
        bptt::seq::SeqModel::load(&out.join("model.safetensors")).unwrap().params
    };
    let one = run(1);
    for np in [2, 4] {
        let w = run(np);
        let diff = one.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff <= 1e-5, "np={np}: max |dw| = {diff}");
    }
}

/// Ranks started with other flags or another copy of the data: rank 0 says what differs in one
/// line and every rank exits 1 — never a heap error or an abort inside the all-reduce.
#[test]
fn ranks_started_differently_are_refused_in_one_line_naming_the_difference() {
    let d = tempfile::tempdir().unwrap();
    let text = corpus(d.path());
    let other = d.path().join("other.txt");
    let mut changed = std::fs::read_to_string(&text).unwrap();
    changed.replace_range(0..1, "Z");
    std::fs::write(&other, changed).unwrap();
    // MODEL's flags, --batch 8 --steps 3, with `flags` (pairs) replacing or adding values.
    let base = |t: &Path, out: &str, flags: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = MODEL.iter().chain(&["--batch", "8", "--steps", "3"]).map(|s| s.to_string()).collect();
        for pair in flags.chunks(2) {
            match a.iter().position(|x| x == pair[0]) {
                Some(i) => a[i + 1] = pair[1].to_string(),
                None => a.extend(pair.iter().map(|s| s.to_string())),
            }
        }
        let out = d.path().join(out);
        let head = ["train", "--text", t.to_str().unwrap(), "--out", out.to_str().unwrap()];
        head.iter().map(|s| s.to_string()).chain(a).collect()
    };
    for (k, (flags, other_text, want)) in [
        (vec!["--hidden", "32"], false, "model.hidden"),
        (vec!["--seed", "7"], false, "seed"),
        (vec!["--steps", "5"], false, "steps"),
        (vec![], true, "text"),
    ]
    .into_iter()
    .enumerate()
    {
        let out = format!("run{k}");
        let mut c = mpirun(1);
        c.arg(env!("CARGO_BIN_EXE_bptt")).args(base(&text, &out, &[]));
        c.args([":", "-np", "1", env!("CARGO_BIN_EXE_bptt")]);
        c.args(base(if other_text { &other } else { &text }, &out, &flags));
        let o = c.output().unwrap();
        let err = stderr(&o);
        assert!(!o.status.success(), "{flags:?}: {err}");
        let ours: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(ours.len(), 1, "{flags:?}: {err}");
        assert!(ours[0].contains("the ranks were not started alike") && ours[0].contains(want), "{flags:?}: {err}");
        for bad in ["free()", "corrupted", "Abort", "Segmentation", "panicked"] {
            assert!(!err.contains(bad), "{flags:?}: {err}");
        }
        assert!(!d.path().join(&out).join("checkpoint.safetensors").exists());
    }
}
