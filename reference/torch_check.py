#!/usr/bin/env python3
"""Optional PyTorch round trip for bptt char-LM model files (needs torch and safetensors).

    # 1. A bptt model loads into nn.Embedding + nn.LSTM/GRU/RNN + nn.Linear and gives the same
    #    loss as `bptt eval` (pass its --json line):
    python3 reference/torch_check.py eval --model M.safetensors --text FILE --bptt-json "$(bptt eval --model M.safetensors --text FILE --json)"

    # 2. `bptt train --batch 1 --val-fraction 0 --optimizer sgd --clip-norm 0 --steps 1 --init M
    #    --seq-len T --lr LR --out DIR` equals one plain SGD step of PyTorch on text[0..T] -> text[1..T+1]:
    python3 reference/torch_check.py sgd-step --model M.safetensors --text FILE --seq-len T --lr LR --result DIR/model.safetensors

    # 3. A model written by PyTorch (fresh init, documented names and metadata) for bptt to read:
    python3 reference/torch_check.py write --cell gru --text FILE --out torch_model.safetensors
"""
import argparse
import json
import math

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from safetensors import safe_open


class RNNModel(nn.Module):
    """PyTorch word_language_model's RNNModel, as far as bptt's files use it."""

    def __init__(self, cell, vocab, emb, hidden, layers):
        super().__init__()
        self.encoder = nn.Embedding(vocab, emb)
        if cell in ("lstm", "gru"):
            self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell](emb, hidden, layers)
        else:
            self.rnn = nn.RNN(emb, hidden, layers, nonlinearity=cell[4:])
        self.decoder = nn.Linear(hidden, vocab)

    def forward(self, ids, state=None):
        out, state = self.rnn(self.encoder(ids), state)
        return self.decoder(out), state


def load(path):
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    vocab = json.loads(meta["vocab"])
    m = RNNModel(meta["cell"], len(vocab), int(meta["embedding_dim"]), int(meta["hidden_size"]), int(meta["num_layers"]))
    m.load_state_dict(load_file(path))
    return m, vocab, meta


def encode(text, vocab):
    index = {c: i for i, c in enumerate(vocab)}
    return torch.tensor([index[c] for c in text])


def cmd_eval(a):
    m, vocab, _ = load(a.model)
    ids = encode(open(a.text, encoding="utf-8").read(), vocab)
    with torch.no_grad():
        logits, _ = m(ids[:-1].view(-1, 1))
        loss = nn.functional.cross_entropy(logits.view(-1, len(vocab)), ids[1:]).item()
    print(json.dumps({"torch_loss": loss, "bits_per_char": loss / math.log(2), "tokens": len(ids) - 1}))
    if a.bptt_json:
        theirs = json.loads(a.bptt_json)["loss"]
        print(f"bptt loss {theirs:.7f}, torch loss {loss:.7f}, |diff| {abs(theirs - loss):.2e}")
        assert abs(theirs - loss) < 1e-4, "losses differ"


def cmd_sgd_step(a):
    m, vocab, _ = load(a.model)
    ids = encode(open(a.text, encoding="utf-8").read(), vocab)
    x, y = ids[: a.seq_len].view(-1, 1), ids[1 : a.seq_len + 1]
    logits, _ = m(x)
    loss = nn.functional.cross_entropy(logits.view(-1, len(vocab)), y)
    opt = torch.optim.SGD(m.parameters(), lr=a.lr)
    opt.zero_grad()
    loss.backward()
    opt.step()
    result = load_file(a.result)
    worst = max((result[k] - v).abs().max().item() for k, v in m.state_dict().items())
    scale = max(v.abs().max().item() for v in m.state_dict().values())
    print(f"loss {loss.item():.6f}; max |bptt - torch| over all weights after one SGD step: {worst:.3e} (weights up to {scale:.3f})")
    assert worst < 1e-5, "weights differ"


def cmd_write(a):
    text = open(a.text, encoding="utf-8").read()
    vocab = sorted(set(text))
    torch.manual_seed(0)
    m = RNNModel(a.cell, len(vocab), a.embedding_dim, a.hidden, a.layers)
    meta = {"bptt.format": "charlm/1", "cell": a.cell, "vocab": json.dumps(vocab), "embedding_dim": str(a.embedding_dim),
            "hidden_size": str(a.hidden), "num_layers": str(a.layers)}
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, a.out, metadata=meta)
    print(f"wrote {a.out}")


p = argparse.ArgumentParser()
sub = p.add_subparsers(dest="cmd", required=True)
e = sub.add_parser("eval")
e.add_argument("--model", required=True)
e.add_argument("--text", required=True)
e.add_argument("--bptt-json")
s = sub.add_parser("sgd-step")
s.add_argument("--model", required=True)
s.add_argument("--text", required=True)
s.add_argument("--seq-len", type=int, default=100)
s.add_argument("--lr", type=float, default=2e-3)
s.add_argument("--result", required=True)
w = sub.add_parser("write")
w.add_argument("--cell", default="lstm")
w.add_argument("--text", required=True)
w.add_argument("--embedding-dim", type=int, default=16)
w.add_argument("--hidden", type=int, default=32)
w.add_argument("--layers", type=int, default=2)
w.add_argument("--out", required=True)
a = p.parse_args()
{"eval": cmd_eval, "sgd-step": cmd_sgd_step, "write": cmd_write}[a.cmd](a)
