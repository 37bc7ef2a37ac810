"""PyTorch beside `bptt fit` on JapaneseVowels: the same recipe trained in PyTorch, and
PyTorch's usual bidirectional LSTM, timed on the same machine (test accuracy and seconds).

    python bench/seq_torch.py [--seeds 1 2 3] [--threads 2] [--bptt target/release/bptt]
    python bench/seq_torch.py --set data/extra/Trace --recipes bptt torch-bilstm

`--set DIR` takes `DIR/NAME_TRAIN.ts` and `DIR/NAME_TEST.ts` instead (a UCR set from
`reference/extract_ucr.py`); the BiLSTM then reads one value per step, as the issue measured.

Recipes:
- `bptt`: `bptt fit` with its defaults (the command in README), timed as a process.
- `torch-same`: that recipe in PyTorch — standardised features, GRU H256, the last state and the
  mean over each sequence's own steps into a linear head, dropout 0.3 on the input and on the
  GRU's outputs, Adam 3e-3 with a cosine decay over all updates, clip-norm 5, batch 8, 60 epochs, packed
  sequences.
- `torch-bilstm`: a bidirectional LSTM H64 (last states of both directions), Adam 1e-3, batch
  16, 60 epochs (or, with `--epochs-rule`, bptt's rule: at least 2,000 updates): the baseline
  the issue measured.
- `bptt-bilstm`: that BiLSTM recipe as `bptt fit --bidirectional` (the same sizes, optimizer,
  batch, epochs; no dropout, no clipping, a constant rate), timed as a process.
"""

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "reference"))
from seq_torch import read_ts  # noqa: E402


def labels(path):
    out = []
    for line in open(path):
        line = line.strip()
        if line and not line.startswith(("#", "@")):
            out.append(line.split(":")[-1])
    return out


class Model(torch.nn.Module):
    def __init__(self, features, classes, kind):
        super().__init__()
        self.kind = kind
        if kind == "same":
            self.rnn = torch.nn.GRU(features, 256)
            self.drop = torch.nn.Dropout(0.3)
            self.head = torch.nn.Linear(512, classes)
        else:
            self.rnn = torch.nn.LSTM(features, 64, bidirectional=True)
            self.drop = torch.nn.Identity()
            self.head = torch.nn.Linear(128, classes)

    def forward(self, x, lengths):
        x = self.drop(x)
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, h = self.rnn(packed)
        if self.kind == "same":
            out, _ = pad_packed_sequence(out)  # (T, B, H), zero after each end
            out = self.drop(out)
            last = out[lengths - 1, torch.arange(len(lengths))]
            mean = out.sum(0) / lengths[:, None].float()
            return self.head(torch.cat([last, mean], 1))
        h = h[0]  # (2, B, H)
        return self.head(torch.cat([h[0], h[1]], 1))


def batch(seqs, idx):
    lengths = torch.tensor([len(seqs[i]) for i in idx])
    x = torch.zeros(int(lengths.max()), len(idx), seqs[0].shape[1])
    for j, i in enumerate(idx):
        x[: len(seqs[i]), j] = torch.from_numpy(seqs[i])
    return x, lengths


def train_torch(kind, X, y, Xt, yt, seed, rule):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    allx = np.concatenate(X)
    mean, std = allx.mean(0), allx.std(0)
    X = [(s - mean) / std for s in X]
    Xt = [(s - mean) / std for s in Xt]
    classes = sorted(set(y), key=float)
    yi = torch.tensor([classes.index(c) for c in y])
    model = Model(X[0].shape[1], len(classes), kind)
    b, lr = (8, 3e-3) if kind == "same" else (16, 1e-3)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    per_epoch = math.ceil(len(X) / b)
    epochs = max(60, math.ceil(2000 / per_epoch)) if rule else 60
    steps = epochs * per_epoch
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if kind == "same" else None
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = rng.permutation(len(X))
        for k in range(0, len(X), b):
            idx = order[k:k + b]
            x, lengths = batch(X, idx)
            loss = torch.nn.functional.cross_entropy(model(x, lengths), yi[idx])
            opt.zero_grad()
            loss.backward()
            if kind == "same":
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            if sched:
                sched.step()
    seconds = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        x, lengths = batch(Xt, np.arange(len(Xt)))
        pred = model(x, lengths).argmax(1).numpy()
    acc = float(np.mean([classes[p] == c for p, c in zip(pred, yt)]))
    return acc, seconds


BILSTM = ["--cell", "lstm", "--hidden", "64", "--bidirectional", "--pool", "last", "--batch", "16", "--lr", "1e-3",
          "--lr-schedule", "constant", "--dropout", "0", "--clip-norm", "0"]


def train_bptt(exe, train, test, seed, threads, extra=(), epochs=None):
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        more = list(extra) + ([] if epochs is None else ["--epochs", str(epochs)])
        subprocess.run([exe, "fit", "--train", str(train), "--out", d + "/run", "--seed", str(seed),
                        "--threads", str(threads)] + more, check=True, capture_output=True)
        seconds = time.perf_counter() - t0
        out = subprocess.run([exe, "evaluate", "--model", d + "/run/model.safetensors", "--data", str(test),
                              "--json"], check=True, capture_output=True, text=True).stdout
    return json.loads(out)["accuracy"], seconds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bptt", default=str(ROOT / "target" / "release" / "bptt"))
    ap.add_argument("--set", default=str(ROOT / "data" / "JapaneseVowels"))
    ap.add_argument("--recipes", nargs="+", default=["bptt", "torch-same", "torch-bilstm"])
    ap.add_argument("--epochs-rule", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    name = Path(a.set).name
    train = Path(a.set) / f"{name}_TRAIN.ts"
    test = Path(a.set) / f"{name}_TEST.ts"
    X, y, Xt, yt = read_ts(train), labels(train), read_ts(test), labels(test)
    print(f"{name}: torch {torch.__version__}, {a.threads} threads")
    print("| recipe | seed | test accuracy | training s |")
    print("|---|---|---|---|")
    results = {}
    for recipe in a.recipes:
        for s in a.seeds:
            if recipe == "bptt":
                acc, sec = train_bptt(a.bptt, train, test, s, a.threads)
            elif recipe == "bptt-bilstm":
                epochs = max(60, math.ceil(2000 / math.ceil(len(X) / 16))) if a.epochs_rule else 60
                acc, sec = train_bptt(a.bptt, train, test, s, a.threads, BILSTM, epochs)
            else:
                acc, sec = train_torch(recipe.split("-")[1], X, y, Xt, yt, s, a.epochs_rule)
            results.setdefault(recipe, []).append((acc, sec))
            print(f"| {recipe} | {s} | {acc:.4f} | {sec:.1f} |", flush=True)
    for recipe, r in results.items():
        accs, secs = sorted(x[0] for x in r), sorted(x[1] for x in r)
        print(f"{recipe}: median accuracy {accs[len(accs) // 2]:.4f}, median time {secs[len(secs) // 2]:.1f} s")


if __name__ == "__main__":
    main()
