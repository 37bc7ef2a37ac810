//! Every bad input gives one line on stderr naming the problem, a non-zero exit, no panic and
//! no partial file.

use crate::cli::{bptt, corpus};
use std::path::Path;

/// Runs bptt and checks the failure is clean; returns the error line.
fn fails(args: &[&str], want: &str) -> String {
    let o = bptt(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{args:?} succeeded");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: not one line: {err}");
    assert!(err.starts_with("error: "), "{args:?}: {err}");
    assert!(err.contains(want), "{args:?}: expected '{want}' in: {err}");
    err
}

/// A safetensors file with the given header JSON (as text) and data bytes.
fn raw_file(path: &Path, header: &str, data: &[u8]) {
    let mut h = header.as_bytes().to_vec();
    h.resize(h.len().next_multiple_of(8), b' ');
    let mut b = (h.len() as u64).to_le_bytes().to_vec();
    b.extend(h);
    b.extend_from_slice(data);
    std::fs::write(path, b).unwrap();
}

/// Metadata for a tiny 2-char rnn_tanh model, E = H = L = 1, with `patch` applied.
fn tiny_model(path: &Path, patch: impl Fn(&mut serde_json::Value), value: f32) {
    let meta = serde_json::json!({
        "bptt.format": "charlm/1", "cell": "rnn_tanh", "vocab": "[\"a\",\"b\"]",
        "embedding_dim": "1", "hidden_size": "1", "num_layers": "1"
    });
    let shapes: [(&str, Vec<usize>); 7] = [
        ("encoder.weight", vec![2, 1]),
        ("rnn.weight_ih_l0", vec![1, 1]),
        ("rnn.weight_hh_l0", vec![1, 1]),
        ("rnn.bias_ih_l0", vec![1]),
        ("rnn.bias_hh_l0", vec![1]),
        ("decoder.weight", vec![2, 1]),
        ("decoder.bias", vec![2]),
    ];
    let mut header = serde_json::json!({ "__metadata__": meta });
    let mut off = 0;
    for (name, shape) in &shapes {
        let n: usize = shape.iter().product();
        header[name] = serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [off, off + 4 * n]});
        off += 4 * n;
    }
    patch(&mut header);
    let data: Vec<u8> = (0..off / 4).flat_map(|_| value.to_le_bytes()).collect();
    raw_file(path, &header.to_string(), &data);
}

#[test]
fn bad_text_files() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n).to_str().unwrap().to_string();
    std::fs::write(p("empty.txt"), "").unwrap();
    std::fs::write(p("latin1.txt"), b"caf\xe9 au lait").unwrap();
    std::fs::write(p("binary.txt"), b"ab\0cd").unwrap();
    std::fs::write(p("short.txt"), "abcabc").unwrap();
    std::fs::write(p("one.txt"), "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa").unwrap();
    let train = |f: &str, want: &str| {
        let out = p(&format!("out-{f}"));
        fails(&["train", "--text", &p(f), "--out", &out, "--batch", "2", "--seq-len", "8"], want);
        assert!(!Path::new(&out).join("checkpoint.safetensors").exists());
    };
    train("missing.txt", "No such file");
    train("empty.txt", "empty");
    train("latin1.txt", "not valid UTF-8");
    train("binary.txt", "binary");
    train("short.txt", "too short");
    train("one.txt", "at least 2 distinct characters");
    train(".", "directory");
}

#[test]
fn impossible_flags() {
    let d = tempfile::tempdir().unwrap();
    let text = corpus(d.path());
    let t = text.to_str().unwrap();
    let out = d.path().join("o");
    let o = out.to_str().unwrap();
    let run = |extra: &[&str], want: &str| {
        let mut a = vec!["train", "--text", t, "--out", o, "--steps", "2"];
        a.extend_from_slice(extra);
        fails(&a, want);
        assert!(!out.join("checkpoint.safetensors").exists(), "{extra:?} left a checkpoint");
    };
    run(&["--tbptt", "20:10"], "K1 <= K2");
    run(&["--tbptt", "ten"], "K1:K2");
    run(&["--checkpoint-every", "some"], "whole number or auto");
    run(&["--hidden", "0"], "hidden size");
    run(&["--layers", "0"], "layers");
    run(&["--embedding-dim", "0"], "embedding");
    run(&["--batch", "0"], "at least 1");
    run(&["--seq-len", "0"], "at least 1");
    run(&["--lr", "-1"], "learning rate must be positive");
    run(&["--lr", "nan"], "must be a finite number");
    run(&["--clip-norm", "inf"], "must be a finite number");
    run(&["--cell", "transformer"], "unknown cell");
    run(&["--optimizer", "lbfgs"], "unknown optimizer");
    run(&["--momentum", "0.9"], "no momentum");
    run(&["--clip-norm", "-1"], "clip-norm");
    run(&["--val-fraction", "1.5"], "val-fraction");
    run(&["--lr-schedule", "wiggly"], "lr-schedule");
    run(&["--dropout", "1"], "--dropout must be in [0, 1)");
    run(&["--dropout", "nan"], "'--dropout <DROPOUT>': must be a finite number");
    run(&["--locked-dropout", "-0.5"], "--locked-dropout must be in [0, 1)");
    run(&["--locked-dropout", "1"], "--locked-dropout must be in [0, 1)");
    run(&["--hidden", "-5"], "invalid value '-5' for '--hidden");
    run(&["--dropout", "0.2", "--locked-dropout", "0.2"], "cannot be used with");
    run(&["--weight-drop", "1.5"], "--weight-drop must be in [0, 1)");
    run(&["--hidden", "abc"], "invalid value");
    run(&["--no-such-flag"], "unexpected argument");
    run(&["--online", "bptt"], "snap, uoro or rtrl");
    run(&["--online", "snap", "--batch", "4"], "give batch 1");
    run(&["--online", "snap", "--dropout", "0.1"], "no dropout");
    run(&["--online", "snap", "--layer-norm"], "plain cells");
    run(&["--online", "snap", "--tbptt", "5:10"], "cannot be used with");
    run(&["--online", "rtrl"], "GFLOP per character");
    run(&["--precision", "f16"], "f32 or bf16");
    fails(&["train", "--text", t, "--out", o, "--steps", "0"], "at least 1");
    fails(&["train", "--text", t, "--out", o, "--epochs", "0"], "at least 1");
    fails(&["train", "--resume", d.path().join("nothing").to_str().unwrap()], "no such run folder");
    // NaN and infinities are refused for every real-valued flag, in one place.
    for (flag, value) in [("--clip-norm", "nan"), ("--w-hh-scale", "inf"), ("--forget-bias", "inf"), ("--lr", "NaN")] {
        fails(&["task", "adding", "--steps", "1", flag, value], "must be a finite number");
    }
    fails(&["fit", "--train", t, "--dropout", "nan"], "must be a finite number");
}

#[test]
fn bad_model_files_and_vocabulary() {
    let d = tempfile::tempdir().unwrap();
    let text = corpus(d.path());
    let t = text.to_str().unwrap();
    let path = |n: &str| d.path().join(n).to_str().unwrap().to_string();
    let eval = |model: &str, want: &str| fails(&["eval", "--model", model, "--text", t], want);

    eval(&path("missing.safetensors"), "No such file");
    std::fs::write(path("tiny.bin"), b"abc").unwrap();
    eval(&path("tiny.bin"), "too short");
    std::fs::write(path("huge-header.bin"), u64::MAX.to_le_bytes()).unwrap();
    eval(&path("huge-header.bin"), "header declares");
    raw_file(Path::new(&path("notjson.bin")), "{not json", &[]);
    eval(&path("notjson.bin"), "not valid JSON");

    let m = path("m.safetensors");
    let mk = |patch: &dyn Fn(&mut serde_json::Value), value: f32| tiny_model(Path::new(&m), patch, value);
    mk(&|h| h.as_object_mut().unwrap().remove("__metadata__").map(|_| ()).unwrap(), 0.1);
    eval(&m, "no __metadata__");
    mk(&|h| h["__metadata__"]["hidden_size"] = "1000000000".into(), 0.1);
    eval(&m, "hidden size must be between");
    mk(&|h| h["__metadata__"]["num_layers"] = "many".into(), 0.1);
    eval(&m, "not a whole number");
    mk(&|h| h["__metadata__"]["vocab"] = "[\"a\",\"a\"]".into(), 0.1);
    eval(&m, "twice");
    mk(&|h| h["__metadata__"]["vocab"] = "[\"ab\",\"c\"]".into(), 0.1);
    eval(&m, "not exactly one character");
    mk(&|h| h["__metadata__"]["cell"] = "lstm".into(), 0.1);
    eval(&m, "shape");
    mk(&|h| h["decoder.bias"]["shape"] = serde_json::json!([3]), 0.1);
    eval(&m, "shape");
    mk(&|h| h["decoder.bias"]["dtype"] = "F64".into(), 0.1);
    eval(&m, "F32");
    mk(&|h| h.as_object_mut().unwrap().remove("decoder.bias").map(|_| ()).unwrap(), 0.1);
    eval(&m, "decoder.bias");
    mk(&|h| h["rnn.weight_hh_l0"]["shape"] = serde_json::json!([1, 4_000_000_000u64]), 0.1);
    eval(&m, "shape");
    mk(&|_| (), f32::NAN);
    eval(&m, "NaN");

    // A valid model, then damaged copies of it.
    mk(&|_| (), 0.1);
    let bytes = std::fs::read(&m).unwrap();
    std::fs::write(path("trunc.safetensors"), &bytes[..bytes.len() - 5]).unwrap();
    eval(&path("trunc.safetensors"), "truncated");
    // The corpus has characters the 2-letter vocabulary lacks.
    eval(&m, "not in the model's vocabulary");
    fails(&["sample", "--model", &m, "--prime", "xyz"], "not in the model's vocabulary");
    fails(&["sample", "--model", &m, "--temperature", "-1"], "temperature");
    fails(&["sample", "--model", &m, "--top-k", "0"], "top-k");
    let out = path("init-run");
    fails(&["train", "--text", t, "--init", &m, "--out", &out], "vocabulary");
}

/// Found by `cargo fuzz run model_file`: a well-formed file whose finite weights are so large
/// that the forward pass overflows. It must give a clean error, not NaN output or a panic.
#[test]
fn fuzz_regression_huge_finite_weights() {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz-huge-weights.safetensors");
    let m = bptt::charlm::CharModel::load(&p).unwrap();
    let err = m.evaluate(&bptt::charlm::TokenIds::from(vec![0, 3, 0]), 1, 2, 1).unwrap_err().to_string();
    assert!(err.contains("overflow"), "{err}");
    let mut s = bptt::charlm::Sampler::new(&m, 1, 1).unwrap();
    s.feed(&[0, 3]).unwrap();
    assert!(s.next(1.0, None).is_err());
    let o = bptt(&["sample", "--model", p.to_str().unwrap(), "--length", "5", "--prime", "c"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("overflow"));
}
