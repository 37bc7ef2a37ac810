"""Loads a `bptt fit` model (`seq/1` safetensors) into PyTorch and predicts with it.

    python reference/seq_torch.py MODEL.safetensors DATA.ts [PREDICTIONS.csv]

The model file holds `rnn.*` (an `nn.LSTM` / `nn.GRU` / `nn.RNN` state_dict), `head.*` (an
`nn.Linear(P·H, O)`), `standardize.mean` and `standardize.std` (F), and metadata `spec` (JSON:
task, cell, hidden_size, num_layers, bidirectional, pool, patch, features, classes, target_mean,
target_std).
A sequence of T steps is standardised, cut into ⌈T/k⌉ patches of k steps (the last zero-padded
after standardisation), run through the RNN from a zero state, pooled over its own steps (last,
mean, max, concatenated in that order) and read by the head: softmax for classification, or
value · target_std + target_mean for regression. A bidirectional model (`bidirectional=True`,
`…_reverse` tensors) pools its 2H-wide outputs; its `last` is both directions' final states,
`torch.cat((h_n[-2], h_n[-1]))`. A projected LSTM (`proj_size` P, `weight_hr_l{k}`) outputs P
values per step.

With PREDICTIONS.csv (the output of `bptt predict`), prints the largest difference between the
two implementations' probabilities (or values) and exits non-zero above 1e-5.
"""

import csv
import json
import sys

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file


def read_ts(path):
    """The sequences of a .ts file, each a (T, F) float32 array (labels are ignored)."""
    seqs, data, labelled = [], False, False
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            words = line.lower().split()
            if words[0] in ("@classlabel", "@targetlabel") and len(words) > 1 and words[1] == "true":
                labelled = True
            if words[0] == "@data":
                data = True
                continue
            if line.startswith("@") or not data:
                continue
            dims = line.split(":")[:-1] if labelled else line.split(":")
            seqs.append(np.array([[float(v) for v in d.split(",")] for d in dims], dtype=np.float32).T)
    return seqs


def load(path):
    with safe_open(path, "pt") as f:
        spec = json.loads(f.metadata()["spec"])
    sd = load_file(path)
    # (torch.nn's recurrent layers have neither: such a model would load and silently differ.)
    if spec.get("layer_norm") or spec.get("zoneout_h", 0) or spec.get("zoneout_c", 0):
        raise SystemExit(f"{path}: a LayerNorm-LSTM or zoneout model has no torch.nn counterpart to load into")
    kind = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn_tanh": torch.nn.RNN, "rnn_relu": torch.nn.RNN}
    kw = {"nonlinearity": "relu"} if spec["cell"] == "rnn_relu" else {}
    width = spec["features"] * spec["patch"]
    d = 2 if spec.get("bidirectional") else 1
    if spec.get("proj_size", 0):
        kw["proj_size"] = spec["proj_size"]
    rnn = kind[spec["cell"]](width, spec["hidden_size"], spec["num_layers"], bidirectional=d == 2, **kw)
    rnn.load_state_dict({k[4:]: v for k, v in sd.items() if k.startswith("rnn.")})
    pools = spec["pool"].split("+")
    outputs = len(spec["classes"]) if spec["task"] == "classify" else 1
    head = torch.nn.Linear(len(pools) * d * (spec.get("proj_size", 0) or spec["hidden_size"]), outputs)
    head.load_state_dict({"weight": sd["head.weight"], "bias": sd["head.bias"]})
    return spec, rnn.eval(), head.eval(), sd["standardize.mean"], sd["standardize.std"]


@torch.no_grad()
def predict(spec, rnn, head, mean, std, seqs):
    k, out = spec["patch"], []
    for s in seqs:
        x = (torch.from_numpy(s) - mean) / std
        steps = -(-len(x) // k)
        x = torch.cat([x, torch.zeros(steps * k - len(x), x.shape[1])]).reshape(steps, -1)
        h, state = rnn(x.unsqueeze(1))  # (steps, 1, D·H)
        h = h[:, 0]
        h_n = state[0] if isinstance(state, tuple) else state  # (L·D, 1, H)
        last = torch.cat([h_n[-2, 0], h_n[-1, 0]]) if rnn.bidirectional else h[-1]
        feats = {"last": last, "mean": h.mean(0), "max": h.max(0).values}
        z = head(torch.cat([feats[p] for p in spec["pool"].split("+")]))
        if spec["task"] == "classify":
            out.append(torch.softmax(z, 0).numpy())
        else:
            out.append((z * spec["target_std"] + spec["target_mean"]).numpy())
    return np.array(out)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    spec, rnn, head, mean, std = load(sys.argv[1])
    pred = predict(spec, rnn, head, mean, std, read_ts(sys.argv[2]))
    if len(sys.argv) < 4:
        np.savetxt(sys.stdout, pred, fmt="%.6f", delimiter=",")
        return
    with open(sys.argv[3]) as f:
        rows = list(csv.reader(f))[1:]
    theirs = np.array([[float(v) for v in (r[2:] if spec["task"] == "classify" else r[1:])] for r in rows])
    diff = float(np.abs(theirs - pred).max())
    agree = float(np.mean(theirs.argmax(1) == pred.argmax(1))) if spec["task"] == "classify" else 1.0
    print(f"{len(pred)} sequences: max |bptt - torch| = {diff:.2e}, same class for {agree:.2%}")
    sys.exit(0 if diff <= 1e-5 else 1)


if __name__ == "__main__":
    main()
