#!/usr/bin/env python3
"""Mixed-length efficiency: the time to fit sequences of mixed lengths against sequences of one
length with the same number of real steps, `bptt fit` beside PyTorch's packed sequences.

    python bench/mixed_lengths.py [--bptt target/release/bptt] [--rounds 3] [--threads 2] [--batch 8,32]

256 random sequences of 8 features, lengths uniform in 20–180 (about 25,600 real steps), against
256 sequences of their mean length; binary labels; a GRU H256, batch 8 (bptt's unit split) and 32
(its row blocks), 3 epochs, Adam, the last
state and the mean over each sequence's own steps into a linear head (bptt's defaults with
`--patch 1 --dropout 0`; the same model in PyTorch with `pack_padded_sequence`). Efficiency is
equal-length time ÷ mixed-length time (1 = padding costs nothing); "grouped" draws the batches
with `--group-by-length` (in PyTorch the same order: runs of 50 batches sorted by length).
Needs numpy and torch.
"""

import argparse
import os
import statistics
import subprocess
import tempfile
import time

import numpy as np
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

HERE = os.path.dirname(os.path.abspath(__file__))


def data(n=256, t=180, f=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, t, f)).astype(np.float32)
    y = rng.integers(0, 2, n)
    mixed = rng.integers(20, t + 1, n)
    equal = int(round(mixed.mean()))
    return x, y, mixed, equal


def bptt_seconds(exe, path, threads, batch, group=False):
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        subprocess.run([exe, "fit", "--train", path, "--out", d + "/run", "--epochs", "3", "--patch", "1",
                        "--dropout", "0", "--threads", str(threads), "--batch", str(batch)]
                       + (["--group-by-length"] if group else []),
                       check=True, capture_output=True)
        return time.perf_counter() - t0


class Model(torch.nn.Module):
    def __init__(self, f):
        super().__init__()
        self.rnn = torch.nn.GRU(f, 256)
        self.head = torch.nn.Linear(512, 2)

    def forward(self, x, lengths):
        out, _ = self.rnn(pack_padded_sequence(x, lengths, enforce_sorted=False))
        out, _ = pad_packed_sequence(out)
        last = out[lengths - 1, torch.arange(len(lengths))]
        return self.head(torch.cat([last, out.sum(0) / lengths[:, None].float()], 1))


def grouped(order, lengths, b=8):
    """Hugging Face's group_by_length: runs of 50 batches of the shuffled order, each sorted by
    length (longest first), as `bptt fit --group-by-length`."""
    runs = [sorted(order[k:k + 50 * b], key=lambda i: -lengths[i]) for k in range(0, len(order), 50 * b)]
    return np.array([i for run in runs for i in run])


def torch_seconds(x, y, lengths, batch, group=False):
    torch.manual_seed(0)
    model = Model(x.shape[2])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(1)
    yt = torch.from_numpy(y)
    t0 = time.perf_counter()
    for _ in range(3):
        order = rng.permutation(len(x))
        if group:
            order = grouped(order, lengths, batch)
        for k in range(0, len(x), batch):
            idx = order[k:k + batch]
            lens = torch.from_numpy(lengths[idx])
            xb = torch.from_numpy(np.ascontiguousarray(x[idx, : int(lens.max())].transpose(1, 0, 2)))
            loss = torch.nn.functional.cross_entropy(model(xb, lens), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bptt", default=os.path.join(HERE, "..", "target", "release", "bptt"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", default="8,32", help="batch sizes, comma-separated")
    a = ap.parse_args()
    batches = [int(v) for v in a.batch.split(",")]
    torch.set_num_threads(a.threads)
    x, y, mixed, equal = data()
    with tempfile.TemporaryDirectory() as d:
        np.savez(d + "/mixed.npz", X=x, y=y, lengths=mixed)
        np.savez(d + "/equal.npz", X=x[:, :equal], y=y, lengths=np.full(len(x), equal))
        runs = {(s, k, b): [] for s in ("bptt", "torch") for k in ("mixed", "equal", "grouped") for b in batches}
        eq = np.full(len(x), equal)
        for _ in range(a.rounds):
            for b in batches:
                runs["bptt", "mixed", b].append(bptt_seconds(a.bptt, d + "/mixed.npz", a.threads, b))
                runs["bptt", "grouped", b].append(bptt_seconds(a.bptt, d + "/mixed.npz", a.threads, b, group=True))
                runs["bptt", "equal", b].append(bptt_seconds(a.bptt, d + "/equal.npz", a.threads, b))
                runs["torch", "mixed", b].append(torch_seconds(x, y, mixed, b))
                runs["torch", "grouped", b].append(torch_seconds(x, y, mixed, b, group=True))
                runs["torch", "equal", b].append(torch_seconds(x[:, :equal], y, eq, b))
    print(f"{mixed.sum()} real steps mixed (lengths 20–180), {equal * len(x)} equal ({equal} each); "
          f"{a.rounds} rounds, {a.threads} threads, torch {torch.__version__}; times: medians (best of the "
          "rounds); efficiency: the median of each round's ratio (the runs of a round are back to back, "
          "so a machine's slow phases cancel), then (the ratio of the best rounds)")
    print("| system | batch | mixed lengths s | equal lengths s | efficiency (equal ÷ mixed) "
          "| mixed, grouped by length s | efficiency, grouped |")
    print("|---|---|---|---|---|---|---|")
    for b in batches:
        for s in ("bptt", "torch"):
            med = {k: statistics.median(runs[s, k, b]) for k in ("mixed", "equal", "grouped")}
            best = {k: min(runs[s, k, b]) for k in ("mixed", "equal", "grouped")}
            ratio = {k: statistics.median(e / v for e, v in zip(runs[s, "equal", b], runs[s, k, b]))
                     for k in ("mixed", "grouped")}
            print(f"| {s} | {b} | {med['mixed']:.2f} ({best['mixed']:.2f}) | {med['equal']:.2f} ({best['equal']:.2f}) "
                  f"| {ratio['mixed']:.0%} ({best['equal'] / best['mixed']:.0%}) "
                  f"| {med['grouped']:.2f} ({best['grouped']:.2f}) "
                  f"| {ratio['grouped']:.0%} ({best['equal'] / best['grouped']:.0%}) |")

if __name__ == "__main__":
    main()
