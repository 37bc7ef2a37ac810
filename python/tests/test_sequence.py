"""pytest for ``bptt.SequenceModel``: the CLI's model bit for bit, array layouts (C, Fortran,
NaN-padded, lists, lengths), scikit-learn's conventions (clone, cross_val_score, Pipeline; skipped
without scikit-learn), model files both ways, bad input, callbacks."""

import subprocess
from pathlib import Path

import numpy as np
import pytest

import bptt

from test_bptt import cli

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "data" / "JapaneseVowels" / "JapaneseVowels_TRAIN.ts"
TEST = ROOT / "data" / "JapaneseVowels" / "JapaneseVowels_TEST.ts"
QUICK = dict(hidden=16, epochs=2, threads=1)


def padded(X, order="C"):
    T = max(len(s) for s in X)
    A = np.full((len(X), T, X[0].shape[1]), np.nan, dtype=np.float64, order=order)
    for i, s in enumerate(X):
        A[i, : len(s)] = s
    return A


def test_fit_equals_the_cli_bit_for_bit(tmp_path):
    X, y = bptt.read_sequences(TRAIN)
    assert len(X) == 270 and X[0].shape == (20, 12) and y[0] == "1"
    m = bptt.SequenceModel(seed=3, dropout=0.2, **QUICK).fit(X, y)
    m.save(tmp_path / "py.safetensors")
    run = tmp_path / "run"
    subprocess.run([cli(), "fit", "--train", str(TRAIN), "--out", str(run), "--seed", "3", "--dropout", "0.2",
                    "--hidden", "16", "--epochs", "2", "--threads", "1"], check=True, capture_output=True)
    assert (tmp_path / "py.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()
    # The CLI predicts with the Python model, and Python with the CLI's.
    out = subprocess.run([cli(), "predict", "--model", str(tmp_path / "py.safetensors"), "--data", str(TEST)],
                         check=True, capture_output=True, text=True).stdout.splitlines()
    Xt, yt = bptt.read_sequences(TEST)
    assert [r.split(",")[1] for r in out[1:]] == list(m.predict(Xt))
    back = bptt.SequenceModel.load(run / "model.safetensors")
    assert np.array_equal(back.predict_proba(Xt), m.predict_proba(Xt))
    assert list(back.classes_) == list(m.classes_)


def test_layouts_give_the_same_model():
    X, y = bptt.read_sequences(TRAIN)
    X, y = X[:60], y[:60]
    lengths = [len(s) for s in X]
    ref = bptt.SequenceModel(**QUICK).fit(X, y).state_dict()
    A = padded(X)
    zero = np.nan_to_num(A)  # zero padding with explicit lengths
    wide = np.zeros(A.shape[:2] + (2 * A.shape[2],))
    wide[:, :, ::2] = A
    variants = {
        "nan-padded C": (A, None),
        "nan-padded Fortran": (np.asfortranarray(A), None),
        "float32": (A.astype(np.float32), None),
        "strided": (wide[:, :, ::2], None),
        "lengths": (zero, lengths),
    }
    for name, (data, lens) in variants.items():
        got = bptt.SequenceModel(**QUICK).fit(data, y, lengths=lens).state_dict()
        for k in ref:
            assert np.array_equal(ref[k], got[k]), f"{name}: {k}"


def test_predict_proba_score_and_regression():
    X, y = bptt.read_sequences(TRAIN)
    Xt, yt = bptt.read_sequences(TEST)
    m = bptt.SequenceModel(hidden=32, epochs=15, threads=1).fit(X, y)
    p = m.predict_proba(Xt)
    assert p.shape == (370, 9) and np.allclose(p.sum(1), 1, atol=1e-5)
    assert m.score(Xt, yt) > 0.9
    assert np.array_equal(m.predict(Xt), m.classes_[p.argmax(1)])
    # Regression: the mean of the first feature of each sequence.
    target = np.array([s[:, 0].mean() for s in X])
    r = bptt.SequenceModel(task="regress", hidden=32, epochs=20, threads=1).fit(X, target)
    assert r.score(X, target) > 0.8
    assert r.predict(X).shape == (270,)


def test_bad_input_raises_one_line_value_errors():
    X, y = bptt.read_sequences(TRAIN)
    m = bptt.SequenceModel(**QUICK)
    cases = [
        (lambda: m.fit(X, y[:10]), "one label per sequence"),
        (lambda: m.fit([np.zeros((3, 2)), np.zeros((3, 3))], ["a", "b"]), "features per step"),
        (lambda: m.fit([np.array([[1.0, np.nan]]), np.zeros((2, 2))], ["a", "b"]), "sequence 0 step 0"),
        (lambda: m.fit(np.zeros((2, 3, 4, 5)), ["a", "b"]), "must be (N, T, F)"),
        (lambda: m.fit(np.array([["a"]]), ["a"]), "must hold numbers"),
        (lambda: m.fit(X, ["x"] * len(X)), "at least 2 classes"),
        (lambda: bptt.SequenceModel(task="cluster").fit(X, y), "task must be"),
        (lambda: bptt.SequenceModel(pool="median", **QUICK).fit(X, y), "pooling 'median'"),
        (lambda: m.predict(X), "not fitted"),
        (lambda: bptt.read_sequences(ROOT / "README.md"), "unknown data format"),
    ]
    for call, want in cases:
        with pytest.raises((ValueError, OSError)) as e:
            call()
        msg = str(e.value)
        assert want in msg and "\n" not in msg, msg
    fitted = bptt.SequenceModel(**QUICK).fit(X, y)
    with pytest.raises(ValueError, match="trained on 12"):
        fitted.predict([np.zeros((4, 3))])


def test_callback_sees_every_update_and_can_stop():
    X, y = bptt.read_sequences(TRAIN)
    seen = []

    def cb(step, metrics):
        seen.append((step, metrics))
        return step < 5

    m = bptt.SequenceModel(callback=cb, **QUICK).fit(X, y)
    assert [s for s, _ in seen] == [1, 2, 3, 4, 5]
    assert len(m.history_) == 5 and "train_loss" in seen[0][1]


def test_scikit_learn_clone_cross_val_score_and_pipeline():
    sklearn = pytest.importorskip("sklearn")
    from sklearn.base import clone, is_classifier
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    X, y = bptt.read_sequences(TRAIN)
    A = padded(X)
    m = bptt.SequenceModel(hidden=32, epochs=10, threads=1)
    assert is_classifier(m) and clone(m).get_params() == m.get_params()
    scores = cross_val_score(m, A, y, cv=3)
    assert len(scores) == 3 and scores.min() > 0.7, (sklearn.__version__, scores)
    pipe = Pipeline([("scale", FunctionTransformer(lambda a: a * 2.0)), ("rnn", m)])
    assert pipe.fit(A, y).score(A, y) > 0.8


def test_bidirectional_equals_the_cli_and_round_trips(tmp_path):
    """``bidirectional=True``: the CLI's ``--bidirectional`` model bit for bit, PyTorch's
    ``_reverse`` names in ``state_dict``, and ``load`` gives the parameter back."""
    X, y = bptt.read_sequences(TRAIN)
    m = bptt.SequenceModel(bidirectional=True, seed=5, **QUICK).fit(X, y)
    assert m.get_params()["bidirectional"] is True
    sd = m.state_dict()
    assert sd["rnn.weight_hh_l0_reverse"].shape == sd["rnn.weight_hh_l0"].shape
    assert sd["head.weight"].shape == (9, 2 * 2 * 16)
    m.save(tmp_path / "py.safetensors")
    run = tmp_path / "run"
    subprocess.run([cli(), "fit", "--train", str(TRAIN), "--out", str(run), "--seed", "5", "--bidirectional",
                    "--hidden", "16", "--epochs", "2", "--threads", "1"], check=True, capture_output=True)
    assert (tmp_path / "py.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()
    back = bptt.SequenceModel.load(tmp_path / "py.safetensors")
    assert back.bidirectional is True
    Xt, _ = bptt.read_sequences(TEST)
    assert np.array_equal(back.predict_proba(Xt), m.predict_proba(Xt))


def test_layer_norm_lstm_equals_the_cli(tmp_path):
    """``layer_norm``: the LayerNorm-LSTM's gains and biases in ``state_dict``, the CLI's
    ``--layer-norm`` model bit for bit, a GRU with layer norm refused with a ValueError naming it."""
    X, y = bptt.read_sequences(TRAIN)
    m = bptt.SequenceModel(cell="lstm", layer_norm=True, seed=5, **QUICK).fit(X, y)
    assert m.state_dict()["rnn.ln_weight_c_l0"].shape == (16,)
    assert m.state_dict()["rnn.ln_bias_ih_l0"].shape == (64,)
    m.save(tmp_path / "py.safetensors")
    run = tmp_path / "run"
    subprocess.run([cli(), "fit", "--train", str(TRAIN), "--out", str(run), "--seed", "5", "--cell", "lstm",
                    "--layer-norm", "--hidden", "16", "--epochs", "2", "--threads", "1"], check=True,
                   capture_output=True)
    assert (tmp_path / "py.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()
    assert bptt.SequenceModel.load(run / "model.safetensors").layer_norm is True
    with pytest.raises(ValueError, match="layer_norm"):
        bptt.SequenceModel(cell="gru", layer_norm=True, **QUICK).fit(X, y)


def test_zoneout_equals_the_cli(tmp_path):
    """``zoneout_h`` / ``zoneout_c``: the CLI's ``--zoneout-h`` / ``--zoneout-c`` model bit for bit,
    the rates back from the file, zoneout of c on a GRU refused with a ValueError naming it."""
    X, y = bptt.read_sequences(TRAIN)
    m = bptt.SequenceModel(cell="lstm", zoneout_h=0.1, zoneout_c=0.3, seed=5, **QUICK).fit(X, y)
    m.save(tmp_path / "py.safetensors")
    run = tmp_path / "run"
    subprocess.run([cli(), "fit", "--train", str(TRAIN), "--out", str(run), "--seed", "5", "--cell", "lstm",
                    "--zoneout-h", "0.1", "--zoneout-c", "0.3", "--hidden", "16", "--epochs", "2",
                    "--threads", "1"], check=True, capture_output=True)
    assert (tmp_path / "py.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()
    back = bptt.SequenceModel.load(run / "model.safetensors")
    assert (back.zoneout_h, back.zoneout_c) == (0.1, 0.3)
    assert np.array_equal(back.predict_proba(X[:20]), m.predict_proba(X[:20]))
    with pytest.raises(ValueError, match="zoneout_c"):
        bptt.SequenceModel(cell="gru", zoneout_c=0.2, **QUICK).fit(X, y)


def test_group_by_length_equals_the_cli(tmp_path):
    """``group_by_length``: batches of similar lengths, the CLI's ``--group-by-length`` model bit
    for bit, and ``get_params`` names it (scikit-learn's clone keeps it)."""
    X, y = bptt.read_sequences(TRAIN)
    m = bptt.SequenceModel(group_by_length=True, seed=5, **QUICK).fit(X, y)
    assert m.get_params()["group_by_length"] is True
    m.save(tmp_path / "py.safetensors")
    run = tmp_path / "run"
    subprocess.run([cli(), "fit", "--train", str(TRAIN), "--out", str(run), "--seed", "5", "--group-by-length",
                    "--hidden", "16", "--epochs", "2", "--threads", "1"], check=True, capture_output=True)
    assert (tmp_path / "py.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()
    plain = bptt.SequenceModel(seed=5, **QUICK).fit(X, y)
    assert not np.array_equal(plain.state_dict()["head.weight"], m.state_dict()["head.weight"])


def test_projected_lstm_equals_the_cli(tmp_path):
    """``proj_size``: PyTorch's ``weight_hr_l0`` in ``state_dict``, the CLI's ``--proj-size`` model
    bit for bit, a GRU with a projection refused with a ValueError naming it."""
    X, y = bptt.read_sequences(TRAIN)
    m = bptt.SequenceModel(cell="lstm", proj_size=6, seed=5, **QUICK).fit(X, y)
    assert m.state_dict()["rnn.weight_hr_l0"].shape == (6, 16)
    m.save(tmp_path / "py.safetensors")
    run = tmp_path / "run"
    subprocess.run([cli(), "fit", "--train", str(TRAIN), "--out", str(run), "--seed", "5", "--cell", "lstm",
                    "--proj-size", "6", "--hidden", "16", "--epochs", "2", "--threads", "1"], check=True,
                   capture_output=True)
    assert (tmp_path / "py.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()
    assert bptt.SequenceModel.load(run / "model.safetensors").proj_size == 6
    with pytest.raises(ValueError, match="proj_size"):
        bptt.SequenceModel(cell="gru", proj_size=6, **QUICK).fit(X, y)
