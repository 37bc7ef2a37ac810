"""pytest for the Python package: agreement with the CLI, array layouts, errors, callbacks,
model files both ways, and gradients against finite differences (and torch, if installed)."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import bptt

ROOT = Path(__file__).resolve().parents[2]


def cli():
    """The `bptt` binary: $BPTT_BIN, else the workspace's release build."""
    exe = Path(os.environ.get("BPTT_BIN", ROOT / "target" / "release" / "bptt"))
    if not exe.exists():
        pytest.fail(f"{exe} is missing: run `cargo build --release` first (or set BPTT_BIN)")
    return str(exe)


def corpus():
    words = ["the ", "cat ", "sat ", "on ", "a ", "mat. ", "dog ", "ran\n", "to ", "me, "]
    x, s = 7, []
    while sum(map(len, s)) < 6000:
        x = (x * 6364136223846793005 + 1442695040888963407) % 2**64
        s.append(words[(x >> 60) % len(words)])
    return "".join(s)


SMALL = dict(hidden=16, embedding_dim=8, layers=2, batch=4, seq_len=16, threads=1)


def cli_train(tmp_path, **flags):
    """`bptt train --text tmp_path/t.txt --out tmp_path/run` with `flags` as --flags; the model's
    state dict."""
    args = [cli(), "train", "--text", str(tmp_path / "t.txt"), "--out", str(tmp_path / "run")]
    for k, v in flags.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    subprocess.run(args, check=True, capture_output=True)
    return bptt.load_state_dict(tmp_path / "run" / "model.safetensors")


def test_train_equals_the_cli_bit_for_bit(tmp_path):
    text = corpus()
    (tmp_path / "t.txt").write_text(text)
    m = bptt.CharLM.train(text, steps=12, seed=5, **SMALL)
    ours, theirs = m.state_dict(), cli_train(tmp_path, steps=12, seed=5, **SMALL)
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert np.array_equal(ours[k], theirs[k]), k
    losses = [json.loads(l)["train_loss"] for l in open(tmp_path / "run" / "metrics.jsonl")]
    assert [h["train_loss"] for h in m.history] == losses


def test_online_training_equals_the_cli_bit_for_bit(tmp_path):
    """CharLM.train(online="snap"): one stream, an update after every character, as
    `bptt train --online snap` (batch 1 by default)."""
    text = corpus()
    (tmp_path / "t.txt").write_text(text)
    small = dict(hidden=16, embedding_dim=8, layers=2, seq_len=16, threads=1)
    m = bptt.CharLM.train(text, steps=6, seed=5, online="snap", **small)
    ours, theirs = m.state_dict(), cli_train(tmp_path, steps=6, seed=5, online="snap", **small)
    for k in ours:
        assert np.array_equal(ours[k], theirs[k]), k
    assert [h["tokens"] for h in m.history] == [16 * (k + 1) for k in range(6)]
    with pytest.raises(ValueError, match="give batch 1"):
        bptt.CharLM.train(text, steps=1, online="snap", batch=4, **small)


def test_bf16_training_equals_the_cli_bit_for_bit(tmp_path):
    """CharLM.train(precision="bf16") is `bptt train --precision bf16` (f32 where the CPU lacks
    AVX512-BF16); an unknown precision is a ValueError."""
    text = corpus()
    (tmp_path / "t.txt").write_text(text)
    m = bptt.CharLM.train(text, steps=5, seed=3, precision="bf16", **SMALL)
    ours, theirs = m.state_dict(), cli_train(tmp_path, steps=5, seed=3, precision="bf16", **SMALL)
    for k in ours:
        assert np.array_equal(ours[k], theirs[k]), k
    with pytest.raises(ValueError, match="f32 or bf16"):
        bptt.CharLM.train(text, steps=1, precision="f16", **SMALL)


def test_a_saved_model_loads_in_the_cli_and_back(tmp_path):
    m = bptt.CharLM.train(corpus(), steps=3, **SMALL)
    path = tmp_path / "m.safetensors"
    m.save(path)
    out = subprocess.run([cli(), "sample", "--model", str(path), "--length", "40", "--seed", "3",
                          "--prime", "the "], check=True, capture_output=True, text=True).stdout
    ours = m.sample(prime="the ", length=40, seed=3)
    assert out in (ours, ours + "\n")  # the CLI ends its output with a newline
    ev = json.loads(subprocess.run([cli(), "eval", "--model", str(path), "--text", str(_write(tmp_path, corpus())),
                                    "--json", "--split", "all"], check=True, capture_output=True, text=True).stdout)
    assert abs(ev["loss"] - m.evaluate(corpus())["loss"]) < 1e-12
    back = bptt.CharLM.load(path)
    assert all(np.array_equal(a, b) for a, b in zip(back.state_dict().values(), m.state_dict().values()))
    # And a model trained by the CLI loads here.
    subprocess.run([cli(), "train", "--text", str(_write(tmp_path, corpus())), "--out", str(tmp_path / "run"),
                    "--steps", "2", "--hidden", "8", "--layers", "1", "--threads", "1"], check=True, capture_output=True)
    cli_model = bptt.CharLM.load(tmp_path / "run" / "model.safetensors")
    assert cli_model.spec == ("lstm", 64, 8, 1)
    assert len(cli_model.sample(length=10)) == 10


def _write(tmp_path, text):
    p = tmp_path / "text.txt"
    p.write_text(text)
    return p


def test_a_callback_stops_training_and_sees_every_update():
    seen = []

    def cb(step, metrics):
        seen.append((step, metrics["train_loss"]))
        return step < 4

    m = bptt.CharLM.train(corpus(), steps=50, callback=cb, **SMALL)
    assert [s for s, _ in seen] == [1, 2, 3, 4]
    assert len(m.history) == 4 and all(np.isfinite(l) for _, l in seen)


def test_bad_arguments_raise_one_line_exceptions(tmp_path):
    cases = [
        (ValueError, lambda: bptt.CharLM.train(corpus(), cell="lsmt", **{k: v for k, v in SMALL.items()})),
        (ValueError, lambda: bptt.CharLM.train(corpus(), steps=2, lr=-1.0, **SMALL)),
        (ValueError, lambda: bptt.CharLM.train("", steps=2, **SMALL)),
        (OSError, lambda: bptt.CharLM.load(tmp_path / "missing.safetensors")),
        (ValueError, lambda: bptt.gradient(np.zeros((3, 2, 4), np.float32), np.zeros((3, 2, 1)))),
        (ValueError, lambda: bptt.gradient(np.zeros((3, 2)), np.zeros((3, 2, 1)))),
        (ValueError, lambda: bptt.gradient(np.full((3, 2, 4), np.nan), np.zeros((3, 2, 1)))),
        (ValueError, lambda: bptt.gradient(np.zeros((3, 2, 4)), np.zeros((3, 5, 1)))),
        (ValueError, lambda: bptt.gradient(np.zeros((3, 2, 4)), np.full((3, 2), 7), loss="cross_entropy", output=3)),
    ]
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    cases.append((ValueError, lambda: bptt.CharLM.load(tmp_path / "bad.safetensors")))
    for kind, call in cases:
        with pytest.raises(kind) as e:
            call()
        msg = str(e.value)
        assert msg and "\n" not in msg, msg


def test_layouts_c_fortran_and_strided_give_the_same_gradient():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 4))
    y = rng.standard_normal((5, 3, 2))
    base = bptt.gradient(x, y, hidden=6)
    fortran = bptt.gradient(np.asfortranarray(x), np.asfortranarray(y), hidden=6)
    big = rng.standard_normal((10, 3, 8))
    big[::2, :, ::2] = x
    strided = bptt.gradient(big[::2, :, ::2], y, hidden=6)
    for other in (fortran, strided):
        assert other[0] == base[0]
        for k in base[1]:
            assert np.array_equal(other[1][k], base[1][k]), k


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_gradient_agrees_with_finite_differences(cell, loss):
    rng = np.random.default_rng(1)
    t, b, i = 4, 2, 3
    x = rng.standard_normal((t, b, i))
    y = rng.standard_normal((t, b, 2)) if loss == "mse" else rng.integers(0, 3, (t, b))
    kw = dict(cell=cell, hidden=5, layers=2, loss=loss, output=3, seed=2)
    _, grads, params = bptt.gradient(x, y, **kw)
    h = 1e-5
    for name in ["rnn.weight_ih_l0", "rnn.weight_hh_l1", "rnn.bias_hh_l0", "decoder.weight"]:
        flat = params[name].reshape(-1)
        for j in rng.choice(flat.size, 4, replace=False):
            def loss_at(d):
                p = {k: v.copy() for k, v in params.items()}
                p[name].reshape(-1)[j] += d
                return bptt.gradient(x, y, params=p, **kw)[0]

            fd = (loss_at(-2 * h) - 8 * loss_at(-h) + 8 * loss_at(h) - loss_at(2 * h)) / (12 * h)
            g = grads[name].reshape(-1)[j]
            assert abs(fd - g) <= 1e-7 * max(1.0, abs(fd)), (name, j, fd, g)


def test_gradient_agrees_with_torch_autograd():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 2, 3))
    y = rng.standard_normal((6, 2, 2))
    loss, grads, params = bptt.gradient(x, y, cell="lstm", hidden=4, layers=2)
    rnn = torch.nn.LSTM(3, 4, 2).double()
    dec = torch.nn.Linear(4, 2).double()
    with torch.no_grad():
        for k, v in rnn.named_parameters():
            v.copy_(torch.from_numpy(params["rnn." + k]))
        dec.weight.copy_(torch.from_numpy(params["decoder.weight"]))
        dec.bias.copy_(torch.from_numpy(params["decoder.bias"]))
    out, _ = rnn(torch.from_numpy(x))
    tl = torch.nn.functional.mse_loss(dec(out), torch.from_numpy(y))
    tl.backward()
    assert abs(tl.item() - loss) < 1e-12
    for k, v in rnn.named_parameters():
        assert np.allclose(v.grad.numpy(), grads["rnn." + k], rtol=1e-9, atol=1e-12), k
    assert np.allclose(dec.weight.grad.numpy(), grads["decoder.weight"], rtol=1e-9, atol=1e-12)


def test_diagnose_returns_the_gradient_flow_per_layer_and_step():
    m = bptt.CharLM.train(corpus(), steps=2, **SMALL)
    d = bptt.diagnose(m, corpus(), seq_len=30)
    assert d["dh_norm"].shape == (2, 30) and np.isfinite(d["dh_norm"]).all() and d["loss"] > 0
    # The last step's state only feeds its own prediction; earlier steps collect more.
    assert d["dh_norm"][1, 0] > 0


def test_training_releases_the_gil():
    import threading

    ticks, stop = [0], threading.Event()

    def count():
        while not stop.is_set():
            ticks[0] += 1

    th = threading.Thread(target=count)
    th.start()
    bptt.CharLM.train(corpus(), steps=30, **SMALL)
    stop.set()
    th.join()
    assert ticks[0] > 1000, ticks


def test_ctrl_c_interrupts_training_with_keyboard_interrupt(tmp_path):
    import signal
    import sys
    import time

    code = (
        "import sys, bptt\n"
        "print('start', flush=True)\n"
        "try:\n"
        "    bptt.CharLM.train(open(sys.argv[1]).read(), steps=10**7, hidden=64, layers=1, threads=1)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
        "    sys.exit(3)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code, str(_write(tmp_path, corpus()))], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "start"
    time.sleep(1.0)
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=20)
    assert p.returncode == 3 and "interrupted" in out
    assert time.monotonic() - t0 < 5
