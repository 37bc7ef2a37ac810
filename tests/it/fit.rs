//! `bptt fit` / `predict` / `evaluate` end to end on the shipped JapaneseVowels set: learning,
//! files, formats (.ts and CSV give the same model), bit-exact resume after SIGTERM and kill -9,
//! and one-line errors for bad data.

use crate::cli::{bptt, stderr};
use bptt::seq::{Labels, SeqModel, ts};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/JapaneseVowels").join(name)
}

/// A small, quick model.
const QUICK: &[&str] = &["--hidden", "32", "--threads", "1"];

fn fit(out: &Path, train: &Path, extra: &[&str]) -> std::process::Output {
    let mut a = vec!["fit", "--train", train.to_str().unwrap(), "--out", out.to_str().unwrap()];
    a.extend_from_slice(QUICK);
    a.extend_from_slice(extra);
    bptt(&a)
}

fn json(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

#[test]
fn fit_learns_japanese_vowels_then_predicts_and_evaluates() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    let o =
        fit(&run, &data("JapaneseVowels_TRAIN.ts"), &["--epochs", "20", "--valid-fraction", "0.2", "--patience", "30"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("216 training and 54 validation sequences"), "{}", stderr(&o));
    for f in ["model.safetensors", "best.safetensors", "config.json", "metrics.jsonl", "checkpoint.safetensors"] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    // One line per update, validation on the last update of each epoch.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 20 * 216usize.div_ceil(8));
    assert_eq!(lines.iter().filter(|l| l.get("val_accuracy").is_some()).count(), 20);
    let model = run.join("model.safetensors");
    let test = data("JapaneseVowels_TEST.ts");
    let e = bptt(&["evaluate", "--model", model.to_str().unwrap(), "--data", test.to_str().unwrap(), "--json"]);
    assert!(e.status.success(), "{}", stderr(&e));
    let r = json(&e);
    let acc = r["accuracy"].as_f64().unwrap();
    assert!(acc > 0.93, "test accuracy {acc} after 20 epochs");
    assert_eq!(r["n"], 370);
    assert_eq!(r["confusion"].as_array().unwrap().len(), 9);
    let recall: f64 = r["per_class"].as_array().unwrap().iter().map(|c| c["recall"].as_f64().unwrap()).sum();
    assert!((recall / 9.0 - r["balanced_accuracy"].as_f64().unwrap()).abs() < 1e-12);
    // predict: a row per sequence, its class the most probable, the probabilities summing to 1.
    let p = bptt(&["predict", "--model", model.to_str().unwrap(), "--data", test.to_str().unwrap()]);
    assert!(p.status.success(), "{}", stderr(&p));
    let text = String::from_utf8(p.stdout).unwrap();
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows.len(), 371);
    assert!(rows[0].starts_with("index,class,p_1,p_2"), "{}", rows[0]);
    let truth = ts::read(&test).unwrap();
    let Labels::Classes { names, ids } = &truth.labels else { panic!() };
    let mut right = 0;
    for (i, row) in rows[1..].iter().enumerate() {
        let f: Vec<&str> = row.split(',').collect();
        let probs: Vec<f64> = f[2..].iter().map(|v| v.parse().unwrap()).collect();
        assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-4);
        right += usize::from(f[1] == names[ids[i]]);
    }
    assert!((right as f64 / 370.0 - acc).abs() < 1e-12, "predict and evaluate disagree");
    // The confusion matrix as a picture.
    let png = d.path().join("confusion.png");
    let e = bptt(&[
        "evaluate",
        "--model",
        model.to_str().unwrap(),
        "--data",
        test.to_str().unwrap(),
        "--confusion",
        png.to_str().unwrap(),
    ]);
    assert!(e.status.success(), "{}", stderr(&e));
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    // JSON output to a file.
    let out = d.path().join("p.json");
    let p = bptt(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--data",
        test.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(p.status.success(), "{}", stderr(&p));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 370);
}

/// A `.npy` array: `descr` (e.g. `<f4`), shape, raw little-endian bytes.
fn npy(descr: &str, shape: &[usize], data: &[u8], fortran: bool) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let order = if fortran { "True" } else { "False" };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

/// A zip of stored members, as `np.savez` writes (`method` 0; 8 pretends deflate). The CRC is
/// left 0: the reader does not need it.
fn zip(members: &[(&str, Vec<u8>)], method: u16) -> Vec<u8> {
    let (mut out, mut cd) = (Vec::new(), Vec::new());
    for (name, data) in members {
        let offset = out.len() as u32;
        let fixed = |sig: u32, extra: &[u8]| {
            let mut h = sig.to_le_bytes().to_vec();
            h.extend(extra);
            h
        };
        let mut common = vec![20, 0, 0, 0];
        common.extend(method.to_le_bytes());
        common.extend([0u8; 8]); // time, date, crc
        common.extend((data.len() as u32).to_le_bytes());
        common.extend((data.len() as u32).to_le_bytes());
        common.extend((name.len() as u16).to_le_bytes());
        common.extend([0u8, 0]); // extra length
        out.extend(fixed(0x0403_4b50, &common));
        out.extend(name.as_bytes());
        out.extend(data);
        let mut c = fixed(0x0201_4b50, &[20, 0]);
        c.extend(&common);
        c.extend([0u8; 6]); // comment length, disk, internal attributes
        c.extend([0u8; 4]); // external attributes
        c.extend(offset.to_le_bytes());
        c.extend(name.as_bytes());
        cd.extend(c);
    }
    let at = out.len() as u32;
    out.extend(&cd);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend((members.len() as u16).to_le_bytes());
    out.extend((members.len() as u16).to_le_bytes());
    out.extend((cd.len() as u32).to_le_bytes());
    out.extend(at.to_le_bytes());
    out.extend([0u8, 0]);
    out
}

/// `data` as an .npz: X (N, T, F) float32 zero-padded, y (N) int64 class names, lengths (N) int64.
fn npz_of(data: &bptt::seq::Dataset) -> Vec<u8> {
    let (n, t, f) = (data.len(), data.max_len(), data.features);
    let mut x = vec![0f32; n * t * f];
    let starts = data.starts();
    for i in 0..n {
        let seq = &data.values[starts[i]..starts[i] + data.lengths[i] * f];
        x[i * t * f..i * t * f + seq.len()].copy_from_slice(seq);
    }
    let Labels::Classes { names, ids } = &data.labels else { panic!() };
    let y: Vec<u8> = ids.iter().flat_map(|&c| names[c].parse::<i64>().unwrap().to_le_bytes()).collect();
    let l: Vec<u8> = data.lengths.iter().flat_map(|&k| (k as i64).to_le_bytes()).collect();
    let xb: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    zip(
        &[
            ("X.npy", npy("<f4", &[n, t, f], &xb, false)),
            ("y.npy", npy("<i8", &[n], &y, false)),
            ("lengths.npy", npy("<i8", &[n], &l, false)),
        ],
        0,
    )
}

/// The same data as .ts, as long-form CSV and as .npz give the same model file, byte for byte.
#[test]
fn ts_and_csv_of_the_same_data_give_the_same_model() {
    let d = tempfile::tempdir().unwrap();
    let train = ts::read(&data("JapaneseVowels_TRAIN.ts")).unwrap();
    let csv = d.path().join("train.csv");
    std::fs::write(&csv, bptt::seq::csv::to_csv(&train)).unwrap();
    let back = bptt::seq::csv::read(&csv, &Default::default()).unwrap();
    assert_eq!(back, train, "the CSV reads back as the same dataset");
    let npz = d.path().join("train.npz");
    std::fs::write(&npz, npz_of(&train)).unwrap();
    assert_eq!(bptt::seq::read(&npz, &Default::default()).unwrap(), train, "the .npz reads back as the same dataset");
    let (a, b) = (d.path().join("ts"), d.path().join("csv"));
    let extra = ["--epochs", "2"];
    assert!(fit(&a, &data("JapaneseVowels_TRAIN.ts"), &extra).status.success());
    let o = fit(&b, &csv, &extra);
    assert!(o.status.success(), "{}", stderr(&o));
    let x = std::fs::read(a.join("model.safetensors")).unwrap();
    assert!(x == std::fs::read(b.join("model.safetensors")).unwrap(), "the models differ");
    let n = d.path().join("npz");
    assert!(fit(&n, &npz, &extra).status.success());
    assert!(x == std::fs::read(n.join("model.safetensors")).unwrap(), "the .npz model differs");
    // The thread count changes nothing either.
    let c = d.path().join("threads");
    let (cs, csvs) = (c.to_str().unwrap(), csv.to_str().unwrap());
    let o = bptt(&["fit", "--train", csvs, "--out", cs, "--hidden", "32", "--epochs", "2", "--threads", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(x == std::fs::read(c.join("model.safetensors")).unwrap(), "2 threads gave another model");
}

/// A run stopped by SIGTERM, and one killed with kill -9, resume to the uninterrupted run's
/// files, byte for byte (validation split, dropout, class weights, cosine schedule).
#[test]
fn fit_resumes_bit_exactly_after_sigterm_and_kill_9() {
    let extra =
        ["--epochs", "12", "--valid-fraction", "0.1", "--class-weight", "balanced", "--checkpoint-every-steps", "1"];
    resumes_bit_exactly(&extra, &["-TERM", "-KILL"]);
    // A bidirectional model too (its reverse tensors and their optimizer state).
    resumes_bit_exactly(&[&extra[..], &["--bidirectional", "--layers", "2"]].concat(), &["-TERM"]);
    // A LayerNorm-LSTM (its norms' gains and biases and their optimizer state).
    resumes_bit_exactly(&[&extra[..], &["--cell", "lstm", "--layer-norm"]].concat(), &["-TERM"]);
    // Zoneout (its masks drawn from each update's seed).
    let zoneout = ["--cell", "lstm", "--zoneout-h", "0.1", "--zoneout-c", "0.3"];
    resumes_bit_exactly(&[&extra[..], &zoneout[..]].concat(), &["-TERM"]);
}

/// `fit` with `extra`, straight and stopped by each signal then resumed: the same files.
fn resumes_bit_exactly(extra: &[&str], signals: &[&str]) {
    let d = tempfile::tempdir().unwrap();
    let train = data("JapaneseVowels_TRAIN.ts");
    let straight = d.path().join("straight");
    let o = fit(&straight, &train, extra);
    assert!(o.status.success(), "{}", stderr(&o));
    for (k, signal) in signals.iter().enumerate() {
        let run = d.path().join(format!("stopped{k}"));
        let mut a = vec!["fit", "--train", train.to_str().unwrap(), "--out", run.to_str().unwrap()];
        a.extend_from_slice(QUICK);
        a.extend_from_slice(extra);
        let mut child =
            Command::new(env!("CARGO_BIN_EXE_bptt")).args(&a).stderr(Stdio::piped()).spawn().expect("run bptt");
        // Wait for the first checkpoints, then stop it mid-run.
        let t0 = Instant::now();
        while !run.join("checkpoint.safetensors").exists() && t0.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(150));
        assert!(Command::new("kill").args([*signal, &child.id().to_string()]).status().unwrap().success());
        let status = child.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        if *signal == "-TERM" {
            assert_eq!(status.code(), Some(143), "{err}");
            assert!(err.contains("bptt fit --resume"), "{err}");
        }
        let o = bptt(&["fit", "--resume", run.to_str().unwrap(), "--threads", "1"]);
        assert!(o.status.success(), "{signal}: {}", stderr(&o));
        for f in ["model.safetensors", "best.safetensors", "checkpoint.safetensors"] {
            let x = std::fs::read(straight.join(f)).unwrap();
            assert!(x == std::fs::read(run.join(f)).unwrap(), "{signal}: {f} differs after resume");
        }
        let losses = |p: &Path| -> Vec<f64> {
            std::fs::read_to_string(p.join("metrics.jsonl"))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["train_loss"].as_f64().unwrap())
                .collect()
        };
        assert_eq!(losses(&straight), losses(&run), "{signal}: the metrics differ");
    }
}

/// A model file round trip keeps everything, and loading refuses other files in one line.
#[test]
fn model_files_round_trip_and_refuse_others() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    assert!(fit(&run, &data("JapaneseVowels_TRAIN.ts"), &["--epochs", "1"]).status.success());
    let m = SeqModel::load(&run.join("model.safetensors")).unwrap();
    assert_eq!(m.spec.classes.len(), 9);
    assert_eq!((m.spec.features, m.spec.patch, m.spec.pool.as_str()), (12, 1, "last+mean"));
    let bytes = m.to_bytes_with(&[], &[]).unwrap();
    assert_eq!(bytes, std::fs::read(run.join("model.safetensors")).unwrap());
    // A char-LM file is not a sequence model.
    let e = SeqModel::from_bytes(&bytes[..bytes.len() - 4]).err().unwrap().to_string();
    assert!(e.contains("truncated"), "{e}");
}

/// Every bad input is one line on stderr naming the file or flag and a non-zero exit.
#[test]
fn bad_sequence_data_gives_one_line() {
    let d = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = d.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ok_csv = write("ok.csv", "id,a,b,label\n1,0.5,1,x\n1,0.7,2,x\n2,0.1,1,y\n3,0.2,0,y\n3,1,1,y\n4,2,2,x\n");
    let cases: Vec<(PathBuf, &str)> = vec![
        (write("ragged.csv", "id,a,b,label\n1,0.5,x\n"), "line 2: 3 fields, the header has 4"),
        (write("nan.csv", "id,a,b,label\n1,0.5,nan,x\n2,1,1,y\n"), "line 2: missing value in column 'b'"),
        (write("empty.csv", "id,a,b,label\n1,0.5,,x\n2,1,1,y\n"), "line 2: missing value in column 'b'"),
        (write("twolabels.csv", "id,a,label\n1,0.5,x\n1,0.6,y\n2,1,y\n"), "line 3: sequence '1' has label 'y'"),
        (write("noid.csv", "a,b,label\n1,2,x\n"), "no sequence-id column"),
        (write("text.csv", "id,a,label\n1,abc,x\n"), "'abc' in column 'a' is not a number"),
        (write("one.csv", "id,a,label\n1,0.5,x\n2,0.6,x\n"), "at least 2 classes"),
        (write("bad.ts", "@dimensions 1\n@classLabel true a b\n@data\n1,2:c\n"), "label 'c' is not among"),
        (write("x.parquet", "PAR1"), "unknown data format"),
        (write("x.npz", "PK"), "not a .npz file"),
        (
            write("noclass.ts", "@dimensions 1\n@classLabel true a b c\n@data\n1,2:a\n3,4:b\n"),
            "class 'c' has no training sequence",
        ),
    ];
    for (path, want) in cases {
        let o = fit(&d.path().join("out"), &path, &["--force", "--epochs", "1"]);
        let err = stderr(&o);
        assert!(!o.status.success(), "{}: accepted", path.display());
        assert_eq!(err.trim_end().lines().count(), 1, "{}: {err}", path.display());
        assert!(
            err.contains(want) && err.contains(path.file_name().unwrap().to_str().unwrap()),
            "{}: {err}",
            path.display()
        );
    }
    // NumPy files: a compressed member, Fortran order, an integer X, a cut array, NaN inside.
    let f4 = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let y2: Vec<u8> = [0i64, 1].iter().flat_map(|v| v.to_le_bytes()).collect();
    let yy = npy("<i8", &[2], &y2, false);
    let npz_cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "deflated.npz",
            zip(&[("X.npy", npy("<f4", &[2, 1, 1], &f4(&[1.0, 2.0]), false))], 8),
            "np.savez (not np.savez_compressed)",
        ),
        (
            "fortran.npz",
            zip(&[("X.npy", npy("<f4", &[2, 1, 1], &f4(&[1.0, 2.0]), true)), ("y.npy", yy.clone())], 0),
            "Fortran order",
        ),
        (
            "int.npz",
            zip(&[("X.npy", npy("<i8", &[2, 1, 1], &y2, false)), ("y.npy", yy.clone())], 0),
            "save the values as float32",
        ),
        (
            "cut.npz",
            zip(&[("X.npy", npy("<f4", &[2, 3, 1], &f4(&[1.0, 2.0]), false)), ("y.npy", yy.clone())], 0),
            "cut short",
        ),
        (
            "nan.npz",
            zip(&[("X.npy", npy("<f4", &[2, 2, 1], &f4(&[f32::NAN, 2.0, 1.0, 1.0]), false)), ("y.npy", yy.clone())], 0),
            "X[0, 0, 0] is NaN",
        ),
        ("noX.npz", zip(&[("y.npy", yy.clone())], 0), "no array 'X'"),
        ("big.npz", zip(&[("X.npy", npy("<f4", &[1 << 40, 1 << 30, 1], &[], false))], 0), "too large"),
    ];
    for (name, bytes, want) in npz_cases {
        let path = d.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let o = fit(&d.path().join("out"), &path, &["--force", "--epochs", "1"]);
        let err = stderr(&o);
        assert!(!o.status.success() && err.trim_end().lines().count() == 1, "{name}: {err}");
        assert!(err.contains(want) && err.contains(name), "{name}: {err}");
    }
    // Flags.
    for (flag, value, want) in [
        ("--pool", "median", "--pool"),
        ("--patch", "0", "--patch"),
        ("--dropout", "1.5", "--dropout"),
        ("--task", "cluster", "classify, regress, label or forecast"),
        ("--class-weight", "heavy", "--class-weight"),
    ] {
        let o = fit(&d.path().join("out"), &ok_csv, &["--force", "--epochs", "1", flag, value]);
        let err = stderr(&o);
        assert!(!o.status.success() && err.trim_end().lines().count() == 1 && err.contains(want), "{flag}: {err}");
    }
    // A model used on data of another shape, and test data with a class it never saw.
    let run = d.path().join("run");
    assert!(fit(&run, &ok_csv, &["--epochs", "1"]).status.success());
    let model = run.join("model.safetensors");
    let wide = write("wide.csv", "id,a,b,c,label\n1,0,1,2,x\n");
    let unseen = write("unseen.csv", "id,a,b,label\n1,0.5,1,z\n");
    for (path, want) in [(wide, "3 values per step but the model was trained on 2"), (unseen, "class 'z' is not one")] {
        let o = bptt(&["evaluate", "--model", model.to_str().unwrap(), "--data", path.to_str().unwrap()]);
        let err = stderr(&o);
        assert!(!o.status.success() && err.trim_end().lines().count() == 1 && err.contains(want), "{err}");
        assert!(err.contains(path.file_name().unwrap().to_str().unwrap()), "{err}");
    }
    // A char-LM model given to evaluate.
    let o = bptt(&["evaluate", "--model", ok_csv.to_str().unwrap(), "--data", ok_csv.to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).trim_end().lines().count() == 1, "{}", stderr(&o));
}

/// `fit --task forecast` on a seasonal series beats the naive and seasonal-naive baselines on the
/// held-out end; `predict` forecasts past the end; `evaluate` scores every window; a resumed
/// forecaster equals the straight run.
#[test]
fn forecasting_beats_the_baselines_on_held_out_data() {
    let d = tempfile::tempdir().unwrap();
    let mut csv = String::from("date,load\n");
    let mut x = 1u64;
    for t in 0..400 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let noise = ((x >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 0.3;
        let v = (t as f64 * std::f64::consts::TAU / 12.0).sin()
            + 0.5 * (t as f64 * std::f64::consts::TAU / 5.0).cos()
            + noise;
        csv.push_str(&format!("2000-{t},{v}\n"));
    }
    let series = d.path().join("series.csv");
    std::fs::write(&series, csv).unwrap();
    let run = d.path().join("run");
    let o = fit(&run, &series, &["--task", "forecast", "--season", "12", "--horizon", "3", "--epochs", "15"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8(o.stdout).unwrap();
    let mae = |row: &str| -> f64 {
        let line = table.lines().find(|l| l.starts_with(row)).unwrap_or_else(|| panic!("{row}: {table}"));
        line.split('|').nth(2).unwrap().trim().parse().unwrap()
    };
    let (ours, naive, seasonal) = (mae("| bptt"), mae("| naive"), mae("| seasonal naive"));
    assert!(ours < naive && ours < seasonal, "{table}");
    let model = run.join("model.safetensors");
    let p = bptt(&["predict", "--model", model.to_str().unwrap(), "--data", series.to_str().unwrap()]);
    assert!(p.status.success(), "{}", stderr(&p));
    assert_eq!(String::from_utf8(p.stdout).unwrap().lines().collect::<Vec<_>>().len(), 4, "a header and 3 steps");
    let e = bptt(&["evaluate", "--model", model.to_str().unwrap(), "--data", series.to_str().unwrap(), "--json"]);
    assert!(e.status.success(), "{}", stderr(&e));
    let v = json(&e);
    assert_eq!(v["n"], 400 - 36 - 3 + 1);
    assert!(v["mae"].as_f64().unwrap() < v["naive_mae"].as_f64().unwrap());
    // A forecaster resumes: the windows are rebuilt from the series (hash-checked) and the run ends where it was.
    let split = d.path().join("split");
    let o = fit(
        &split,
        &series,
        &["--task", "forecast", "--season", "12", "--horizon", "3", "--epochs", "15", "--checkpoint-every-steps", "1"],
    );
    assert!(o.status.success());
    let o = bptt(&["fit", "--resume", split.to_str().unwrap(), "--epochs", "15", "--threads", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&model).unwrap(), std::fs::read(split.join("model.safetensors")).unwrap());
}

/// `diagnose --model M --data FILE` measures the gradient flow of a `fit` model on its own data.
#[test]
fn diagnose_measures_a_fit_model_on_its_data() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    assert!(fit(&run, &data("JapaneseVowels_TRAIN.ts"), &["--epochs", "1"]).status.success());
    let out = d.path().join("diag");
    let model = run.join("model.safetensors");
    let test = data("JapaneseVowels_TEST.ts");
    let o = bptt(&[
        "diagnose",
        "--model",
        model.to_str().unwrap(),
        "--data",
        test.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = std::fs::read_to_string(out.join("gradient_flow.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert!(rows.len() >= 7, "{csv}");
    assert!(rows.iter().all(|r| r.starts_with("gru,0,") && r.split(',').nth(3).unwrap().parse::<f64>().unwrap() > 0.0));
    assert!(out.join("gradient_flow.png").is_file());
    let o = bptt(&["diagnose", "--model", model.to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("--data"), "{}", stderr(&o));
}

/// `fit --task label` learns a label per step that needs memory (did the value rise since the
/// previous step?); `evaluate` scores every real step and `predict` writes a row per step.
#[test]
fn labelling_learns_a_label_per_step() {
    let d = tempfile::tempdir().unwrap();
    let mut x = 3u64;
    let mut rand = || {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (x >> 33) as f64 / (1u64 << 31) as f64
    };
    let mut write = |name: &str, n: usize| {
        let mut csv = String::from("id,value,label\n");
        let mut steps = 0;
        for i in 0..n {
            let len = 5 + (rand() * 15.0) as usize;
            let mut prev = rand();
            for t in 0..len {
                let v = rand();
                let label = if t > 0 && v > prev { "up" } else { "down" };
                csv.push_str(&format!("s{i},{v},{label}\n"));
                prev = v;
                steps += 1;
            }
        }
        let p = d.path().join(name);
        std::fs::write(&p, csv).unwrap();
        (p, steps)
    };
    let (train, _) = write("train.csv", 150);
    let (test, test_steps) = write("test.csv", 40);
    let run = d.path().join("run");
    let o = fit(&run, &train, &["--task", "label", "--epochs", "15", "--class-weight", "balanced"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let model = run.join("model.safetensors");
    let e = bptt(&["evaluate", "--model", model.to_str().unwrap(), "--data", test.to_str().unwrap(), "--json"]);
    assert!(e.status.success(), "{}", stderr(&e));
    let r = json(&e);
    assert_eq!(r["n"].as_u64().unwrap() as usize, test_steps, "every real step is scored");
    assert!(r["accuracy"].as_f64().unwrap() > 0.9, "{r}");
    let p = bptt(&["predict", "--model", model.to_str().unwrap(), "--data", test.to_str().unwrap()]);
    assert!(p.status.success(), "{}", stderr(&p));
    let text = String::from_utf8(p.stdout).unwrap();
    assert!(text.starts_with("index,step,class,p_down,p_up"), "{}", &text[..60]);
    assert_eq!(text.lines().count(), test_steps + 1);
    // A patch would merge labelled steps: refused in one line.
    let o = fit(&d.path().join("bad"), &train, &["--task", "label", "--patch", "2", "--epochs", "1"]);
    assert!(!o.status.success() && stderr(&o).contains("patch must be 1"), "{}", stderr(&o));
}

/// `--bidirectional`: the model learns, its file holds the `…_reverse` tensors (PyTorch's names)
/// and says so in its spec, and `predict`/`evaluate` read it back.
#[test]
fn fit_bidirectional_learns_and_writes_reverse_tensors() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    let o = fit(&run, &data("JapaneseVowels_TRAIN.ts"), &["--epochs", "8", "--bidirectional", "--seed", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let model = SeqModel::load(&run.join("model.safetensors")).unwrap();
    assert!(model.spec.bidirectional);
    let names: Vec<&str> = model.net.params().iter().map(|p| p.name.as_str()).collect();
    for name in
        ["rnn.weight_ih_l0_reverse", "rnn.weight_hh_l0_reverse", "rnn.bias_ih_l0_reverse", "rnn.bias_hh_l0_reverse"]
    {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    // The head reads both directions: (O, P·2H) with last+mean and H = 32.
    assert_eq!(model.net.param("head.weight").unwrap().shape, vec![9, 2 * 2 * 32]);
    let (m, test) = (run.join("model.safetensors"), data("JapaneseVowels_TEST.ts"));
    let e = bptt(&["evaluate", "--model", m.to_str().unwrap(), "--data", test.to_str().unwrap(), "--json"]);
    assert!(e.status.success(), "{}", stderr(&e));
    let acc = json(&e)["accuracy"].as_f64().unwrap();
    assert!(acc > 0.9, "test accuracy {acc} after 8 epochs");
    let o = bptt(&["fit", "--resume", run.to_str().unwrap(), "--bidirectional"]);
    assert!(!o.status.success() && stderr(&o).lines().count() <= 3, "{}", stderr(&o));
}

/// `--proj-size` (LSTM only, below `--hidden`): a projected model learns, holds PyTorch's
/// `weight_hr_l{k}` (and `…_reverse`) tensors, and a projection the cell cannot have is one line
/// naming the flag.
#[test]
fn fit_projected_lstm_learns_and_refuses_other_cells() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    let extra = ["--epochs", "8", "--cell", "lstm", "--proj-size", "12", "--bidirectional", "--seed", "2"];
    let o = fit(&run, &data("JapaneseVowels_TRAIN.ts"), &extra);
    assert!(o.status.success(), "{}", stderr(&o));
    let model = SeqModel::load(&run.join("model.safetensors")).unwrap();
    assert_eq!(model.spec.proj_size, 12);
    assert_eq!(model.net.param("rnn.weight_hr_l0_reverse").unwrap().shape, vec![12, 32]);
    assert_eq!(model.net.param("rnn.weight_hh_l0").unwrap().shape, vec![4 * 32, 12]);
    let (m, test) = (run.join("model.safetensors"), data("JapaneseVowels_TEST.ts"));
    let e = bptt(&["evaluate", "--model", m.to_str().unwrap(), "--data", test.to_str().unwrap(), "--json"]);
    assert!(e.status.success(), "{}", stderr(&e));
    let acc = json(&e)["accuracy"].as_f64().unwrap();
    assert!(acc > 0.9, "test accuracy {acc} after 8 epochs");
    for cell in ["gru", "rnn_tanh"] {
        let o = fit(&d.path().join(cell), &data("JapaneseVowels_TRAIN.ts"), &["--cell", cell, "--proj-size", "4"]);
        assert!(!o.status.success(), "{cell}: a projection was accepted");
        assert!(stderr(&o).trim().lines().count() == 1 && stderr(&o).contains("--proj-size"), "{}", stderr(&o));
    }
}

/// `--layer-norm` (LSTM only): a LayerNorm-LSTM learns, holds its norms' gains and biases
/// (`ln_weight_…`, `ln_bias_…`), and layer norm on another cell or with a projection is one line
/// naming the flag. (Its bit-exact resume: `fit_resumes_bit_exactly_after_sigterm_and_kill_9`.)
#[test]
fn fit_layer_norm_lstm_learns_and_refuses_other_cells() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    let extra = ["--epochs", "6", "--cell", "lstm", "--layer-norm", "--seed", "2"];
    let o = fit(&run, &data("JapaneseVowels_TRAIN.ts"), &extra);
    assert!(o.status.success(), "{}", stderr(&o));
    let model = SeqModel::load(&run.join("model.safetensors")).unwrap();
    assert!(model.spec.layer_norm);
    assert_eq!(model.net.param("rnn.ln_weight_ih_l0").unwrap().shape, vec![4 * 32]);
    assert_eq!(model.net.param("rnn.ln_bias_c_l0").unwrap().shape, vec![32]);
    let (m, test) = (run.join("model.safetensors"), data("JapaneseVowels_TEST.ts"));
    let e = bptt(&["evaluate", "--model", m.to_str().unwrap(), "--data", test.to_str().unwrap(), "--json"]);
    assert!(e.status.success(), "{}", stderr(&e));
    let acc = json(&e)["accuracy"].as_f64().unwrap();
    assert!(acc > 0.9, "test accuracy {acc} after 6 epochs");
    for (cell, more) in [("gru", &[][..]), ("rnn_tanh", &[][..]), ("lstm", &["--proj-size", "4"][..])] {
        let args: Vec<&str> = ["--cell", cell, "--layer-norm"].iter().chain(more).copied().collect();
        let o = fit(&d.path().join(cell), &data("JapaneseVowels_TRAIN.ts"), &args);
        assert!(!o.status.success(), "{cell} {more:?}: layer norm was accepted");
        assert!(stderr(&o).trim().lines().count() == 1 && stderr(&o).contains("--layer-norm"), "{}", stderr(&o));
    }
}

/// `--zoneout-h` / `--zoneout-c`: an LSTM with zoneout learns and keeps its rates in the model
/// (evaluation then blends by them); a rate outside [0, 1) and zoneout of c without a cell state
/// are one line naming the flag.
#[test]
fn fit_zoneout_learns_and_refuses_bad_settings() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    let extra = ["--epochs", "6", "--cell", "lstm", "--zoneout-h", "0.05", "--zoneout-c", "0.3", "--seed", "2"];
    let o = fit(&run, &data("JapaneseVowels_TRAIN.ts"), &extra);
    assert!(o.status.success(), "{}", stderr(&o));
    let model = SeqModel::load(&run.join("model.safetensors")).unwrap();
    assert_eq!((model.spec.zoneout_h, model.spec.zoneout_c), (0.05, 0.3));
    assert_eq!(model.net.config().zoneout, bptt::Zoneout { h: 0.05, c: 0.3 });
    let (m, test) = (run.join("model.safetensors"), data("JapaneseVowels_TEST.ts"));
    let e = bptt(&["evaluate", "--model", m.to_str().unwrap(), "--data", test.to_str().unwrap(), "--json"]);
    assert!(e.status.success(), "{}", stderr(&e));
    let acc = json(&e)["accuracy"].as_f64().unwrap();
    assert!(acc > 0.9, "test accuracy {acc} after 6 epochs");
    let bad: [(&[&str], &str); 3] = [
        (&["--zoneout-h", "1.5"], "--zoneout-h"),
        (&["--zoneout-h", "-0.1"], "--zoneout-h"),
        (&["--cell", "gru", "--zoneout-c", "0.2"], "--zoneout-c"),
    ];
    for (k, (args, flag)) in bad.into_iter().enumerate() {
        let o = fit(&d.path().join(format!("bad{k}")), &data("JapaneseVowels_TRAIN.ts"), args);
        assert!(!o.status.success(), "{args:?} was accepted");
        let msg = stderr(&o);
        assert!(msg.trim().lines().count() == 1 && msg.contains(flag), "{args:?}: {msg}");
    }
}

/// `--group-by-length` (batches of similar lengths, as Hugging Face's `group_by_length`): the run
/// records it, learns as well, and is the same model at any thread count.
#[test]
fn fit_grouped_by_length_learns() {
    let d = tempfile::tempdir().unwrap();
    let (run, run2) = (d.path().join("run"), d.path().join("run2"));
    let extra = ["--epochs", "8", "--group-by-length", "--seed", "3"];
    let o = fit(&run, &data("JapaneseVowels_TRAIN.ts"), &extra);
    assert!(o.status.success(), "{}", stderr(&o));
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["fit"]["group_by_length"], true, "{config}");
    let (m, test) = (run.join("model.safetensors"), data("JapaneseVowels_TEST.ts"));
    let e = bptt(&["evaluate", "--model", m.to_str().unwrap(), "--data", test.to_str().unwrap(), "--json"]);
    assert!(e.status.success(), "{}", stderr(&e));
    let acc = json(&e)["accuracy"].as_f64().unwrap();
    assert!(acc > 0.9, "test accuracy {acc} after 8 epochs grouped by length");
    let (train, out2) = (data("JapaneseVowels_TRAIN.ts"), run2.to_str().unwrap().to_string());
    let head = ["fit", "--train", train.to_str().unwrap(), "--out", &out2, "--hidden", "32", "--threads", "2"];
    let o = bptt(&[&head[..], &extra[..]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read(&m).unwrap() == std::fs::read(run2.join("model.safetensors")).unwrap(), "threads changed it");
}
