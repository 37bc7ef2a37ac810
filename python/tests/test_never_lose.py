"""Never lose a run from Python: sizes the machine cannot hold raise MemoryError (never an abort
of the interpreter), saves never replace what is not a regular file, and the Python API agrees
with the CLI on the edge cases (epochs overflow, top_k=0, a NumPy False from a callback)."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import bptt

TEXT = "the quick brown fox jumps over the lazy dog\n" * 20
QUICK = dict(hidden=8, embedding_dim=4, layers=1, seq_len=8, batch=2, threads=1)


def run_limited(code, limit_kib=1_500_000):
    """`code` in a fresh interpreter under `ulimit -v` (the limit is what makes an unchecked
    allocation abort): its exit status and output."""
    script = textwrap.dedent(code)
    return subprocess.run(
        ["sh", "-c", f'ulimit -v {limit_kib}; exec "$0" -c "$1"', sys.executable, script],
        capture_output=True, text=True, timeout=300,
    )


@pytest.mark.parametrize("code", [
    # A huge output layer or hidden size in gradient().
    """
    import numpy as np, bptt
    x = np.zeros((2, 1, 3)); y = np.zeros((2, 1), dtype=np.int64)
    try:
        bptt.gradient(x, y, loss="cross_entropy", output=10**10)
    except MemoryError as e:
        print("MemoryError", e)
    """,
    """
    import numpy as np, bptt
    x = np.zeros((2, 1, 3)); y = np.zeros((2, 1, 1))
    try:
        bptt.gradient(x, y, hidden=10**6)
    except MemoryError as e:
        print("MemoryError", e)
    """,
    # A broadcast (zero-stride) view of 10^12 elements: nothing to copy in memory.
    """
    import numpy as np, bptt
    x = np.broadcast_to(np.float64(0.5), (10**6, 10**6, 1))
    try:
        bptt.gradient(x, np.broadcast_to(np.float64(0.0), (10**6, 10**6, 1)))
    except MemoryError as e:
        print("MemoryError", e)
    """,
    # A huge model in CharLM.train.
    """
    import bptt
    try:
        bptt.CharLM.train("abc\\n" * 50, hidden=8000, layers=2, batch=2, seq_len=4, steps=1, threads=1)
    except MemoryError as e:
        print("MemoryError", e)
    """,
    # A huge sample.
    """
    import bptt
    m = bptt.CharLM.train("abc\\n" * 50, hidden=8, embedding_dim=4, seq_len=4, batch=2, steps=1, threads=1)
    try:
        m.sample(length=10**12)
    except MemoryError as e:
        print("MemoryError", e)
    """,
])
def test_sizes_that_do_not_fit_raise_memory_error_never_abort(code):
    r = run_limited(code)
    assert r.returncode == 0, f"exit {r.returncode} (-6 is an abort): {r.stderr[-2000:]}"
    assert "MemoryError" in r.stdout and "available" in r.stdout, r.stdout + r.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_save_replaces_only_regular_files(tmp_path):
    m = bptt.CharLM.train(TEXT, steps=1, **QUICK)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="is a device, pipe or socket"):
        m.save(str(fifo))
    assert os.path.exists(fifo) and not os.path.isfile(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        m.save("/dev/null")
    # Through a link to a file: the link stays, the file gets the model.
    target, link = tmp_path / "m.safetensors", tmp_path / "link.safetensors"
    target.write_bytes(b"old")
    os.symlink(target, link)
    m.save(str(link))
    assert os.path.islink(link)
    assert bptt.CharLM.load(str(target)).vocab == m.vocab


def test_the_python_api_agrees_with_the_cli_on_edge_cases():
    with pytest.raises(ValueError, match="more updates than can be counted"):
        bptt.CharLM.train(TEXT, epochs=2**64 - 1, **QUICK)
    m = bptt.CharLM.train(TEXT, steps=1, **QUICK)
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        m.sample(length=5, top_k=0)
    seen = []
    # A NumPy False stops training as Python's False does.
    bptt.CharLM.train(TEXT, steps=5, callback=lambda step, m: (seen.append(step), np.False_)[1], **QUICK)
    assert seen == [1]


def test_a_long_sample_is_interrupted_by_ctrl_c():
    code = """
    import os, signal, threading, bptt
    m = bptt.CharLM.train("abc\\n" * 50, hidden=8, embedding_dim=4, seq_len=4, batch=2, steps=1, threads=1)
    threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    try:
        m.sample(length=10**9)
    except KeyboardInterrupt:
        print("interrupted")
    """
    r = run_limited(code, limit_kib=16_000_000)
    assert r.returncode == 0 and "interrupted" in r.stdout, r.stdout + r.stderr


def test_fuzzed_arguments_raise_python_exceptions_never_abort():
    """Random values (huge, negative, NaN, wrong types, odd arrays) for every keyword of the
    entry points, 300 seeded cases in a fresh interpreter under `ulimit -v`: each call returns
    or raises a Python exception; the interpreter never aborts."""
    code = """
    import random, numpy as np, bptt
    rng = random.Random(7)
    def value():
        return rng.choice([0, 1, -1, 2**31, 2**63 - 1, 2**64, 10**12, 0.5, -0.5, float("nan"), float("inf"),
                           1e308, "", "x", "lstm", "gru", None, True, [], [1, 2], np.float32(3), np.int64(-7)])
    def array():
        return rng.choice([np.zeros((2, 1, 3)), np.zeros((0, 1, 3)), np.full((2, 1, 3), np.nan),
                           np.broadcast_to(np.float64(1), (10**6, 10**6, 1)), np.zeros((2, 1)), np.zeros(3, np.int64),
                           np.asfortranarray(np.ones((3, 2, 2))), np.ones((2, 3, 1), np.float32)])
    text = "hello world\\n" * 30
    calls = [
        (bptt.CharLM.train, ["cell", "embedding_dim", "hidden", "layers", "seq_len", "batch", "tbptt", "lr",
                             "clip_norm", "steps", "epochs", "val_fraction", "dropout", "weight_drop", "online",
                             "seed"]),
        (bptt.gradient, ["cell", "hidden", "layers", "loss", "output", "seed"]),
        (bptt.SequenceModel, ["task", "cell", "hidden", "layers", "pool", "patch", "epochs", "batch", "lr",
                              "dropout", "clip_norm", "valid_fraction", "patience", "seed"]),
    ]
    outcomes = {}
    for case in range(300):
        f, names = calls[case % 3]
        kw = {rng.choice(names): value() for _ in range(rng.randint(1, 3))}
        try:
            if f is bptt.CharLM.train:
                kw.setdefault("steps", 1); kw.setdefault("threads", 1)
                kw.setdefault("hidden", 8); kw.setdefault("batch", 2); kw.setdefault("seq_len", 8)
                f(text, **kw)
            elif f is bptt.gradient:
                x = array()
                f(x, np.zeros(x.shape[:2] + (1,)) if x.ndim == 3 else x, **kw)
            else:
                kw.setdefault("epochs", 1); kw.setdefault("hidden", 8)
                bptt.SequenceModel(threads=1, **kw).fit(np.random.default_rng(0).normal(size=(6, 5, 2)),
                                                        ["a", "b"] * 3)
            outcome = "ok"
        except (ValueError, TypeError, MemoryError, OverflowError, OSError) as e:
            outcome = type(e).__name__
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    print(sorted(outcomes.items()))
    """
    r = run_limited(code, limit_kib=3_000_000)
    assert r.returncode == 0, f"exit {r.returncode}: {r.stdout[-1000:]} {r.stderr[-3000:]}"
    assert "ok" in r.stdout and "ValueError" in r.stdout, r.stdout


def test_a_sample_streams_its_pieces_to_a_callback_that_can_stop_it():
    m = bptt.CharLM.train(TEXT, steps=1, **QUICK)
    pieces = []
    text = m.sample(prime="the", length=10_000, callback=lambda piece: (pieces.append(piece), len(pieces) < 2)[1])
    assert len(pieces) == 2 and text == "the" + "".join(pieces) and len(text) == 3 + 8192
    assert m.sample(prime="the", length=10_000, seed=3) == m.sample(prime="the", length=10_000, seed=3,
                                                                     callback=lambda piece: None)
