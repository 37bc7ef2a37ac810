#!/usr/bin/env python3
"""PyTorch reference for `bptt bench` (optional; never needed by the tests or CI).

The same model and step as `bptt bench`: nn.Embedding(V, E) -> nn.LSTM/GRU/RNN(E, H, L) ->
nn.Linear(H, V), cross-entropy over B*T, backward, clip_grad_norm_(5), Adam(lr 2e-3), the hidden
state carried (detached) between steps; random tokens; 3 warm-up steps, then timed steps.
Prints the same JSON line as `bptt bench --json`, so both can be run side by side:

    python3 bench/torch_reference.py --suite --threads 2
    cargo run --release -- bench --suite --json --threads 2
"""
import argparse
import json
import resource
import time

import torch
import torch.nn as nn

SUITE = [("lstm", 64, 1, 16, 50), ("lstm", 128, 1, 32, 64), ("lstm", 256, 1, 32, 100), ("gru", 256, 1, 32, 100),
         ("rnn_tanh", 256, 1, 32, 100), ("lstm", 256, 1, 1, 100), ("lstm", 512, 2, 64, 100)]


def flops_per_token(cell, h, layers, e, v, d=1):
    g = {"lstm": 4, "gru": 3}.get(cell, 1)
    fwd = sum(d * 2 * g * h * ((e if k == 0 else d * h) + h) for k in range(layers)) + 2 * v * d * h
    return 3 * fwd


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


class LnLstm(nn.Module):
    """bptt's `--layer-norm` LSTM in eager PyTorch, which has no fused LayerNorm-LSTM (pytorch#6760):
    the input side of all steps at once, a = LN(x W_ih^T) + b, then per step a += LN(h W_hh^T),
    c = f c + i g, h = o tanh(LN(c))."""

    def __init__(self, e, h, layers):
        super().__init__()
        self.h = h
        self.ih = nn.ModuleList(nn.Linear(e if k == 0 else h, 4 * h) for k in range(layers))
        self.hh = nn.ModuleList(nn.Linear(h, 4 * h, bias=False) for _ in range(layers))
        self.ln = nn.ModuleList(nn.ModuleList([nn.LayerNorm(4 * h), nn.LayerNorm(4 * h), nn.LayerNorm(h)])
                                for _ in range(layers))

    def forward(self, x, state):
        t, b = x.shape[:2]
        hs, cs = [], []
        for k, (ih, hh, (ln_i, ln_h, ln_c)) in enumerate(zip(self.ih, self.hh, self.ln)):
            h, c = (state[0][k], state[1][k]) if state is not None else (x.new_zeros(b, self.h),) * 2
            xi = ln_i(x @ ih.weight.T) + ih.bias
            outs = []
            for s in range(t):
                i, f, g, o = (xi[s] + ln_h(hh(h))).chunk(4, 1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(ln_c(c))
                outs.append(h)
            x = torch.stack(outs)
            hs.append(h)
            cs.append(c)
        return x, (torch.stack(hs), torch.stack(cs))


class ZoneoutRnn(nn.Module):
    """bptt's zoneout (Krueger et al. 2016) in eager PyTorch, which has none: per layer and step an
    nn.LSTMCell / GRUCell / RNNCell, then each unit of h (and c) keeps its previous value with
    probability z (training masks), h = h_new + m * (h_prev - h_new)."""

    def __init__(self, cell, e, h, layers, zh, zc):
        super().__init__()
        self.h, self.zh, self.zc, self.lstm = h, zh, zc, cell == "lstm"
        make = {"lstm": nn.LSTMCell, "gru": nn.GRUCell}.get(cell)
        kw = {} if make else {"nonlinearity": cell[4:]}
        self.cells = nn.ModuleList((make or nn.RNNCell)(e if k == 0 else h, h, **kw) for k in range(layers))

    def zone(self, new, prev, z):
        if z == 0.0:
            return new
        m = torch.bernoulli(torch.full_like(new, z))
        return new + m * (prev - new)

    def forward(self, x, state):
        t, b = x.shape[:2]
        hs, cs = [], []
        for k, cell in enumerate(self.cells):
            if state is None:
                h, c = (x.new_zeros(b, self.h),) * 2
            else:
                h, c = (state[0][k], state[1][k]) if self.lstm else (state[k], None)
            outs = []
            for s in range(t):
                if self.lstm:
                    h_new, c_new = cell(x[s], (h, c))
                    c = self.zone(c_new, c, self.zc)
                else:
                    h_new = cell(x[s], h)
                h = self.zone(h_new, h, self.zh)
                outs.append(h)
            x = torch.stack(outs)
            hs.append(h)
            cs.append(c)
        return x, (torch.stack(hs), torch.stack(cs)) if self.lstm else torch.stack(hs)


def bench(cell, h, layers, b, t, e, v, steps, threads, dropout=0.0, weight_drop=0.0, bidirectional=False,
          proj_size=0, layer_norm=False, zoneout_h=0.0, zoneout_c=0.0, precision="f32"):
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    kind = {"lstm": nn.LSTM, "gru": nn.GRU}.get(cell)
    kw = {} if kind else {"nonlinearity": cell[4:]}
    d = 2 if bidirectional else 1
    if proj_size:
        kw["proj_size"] = proj_size
    if layer_norm:
        rnn = LnLstm(e, h, layers)
    elif zoneout_h or zoneout_c:
        rnn = ZoneoutRnn(cell, e, h, layers, zoneout_h, zoneout_c)
    else:
        rnn = (kind or nn.RNN)(e, h, layers, dropout=dropout if layers > 1 else 0.0, bidirectional=bidirectional, **kw)
    model = nn.ModuleDict({"encoder": nn.Embedding(v, e), "rnn": rnn, "decoder": nn.Linear(d * (proj_size or h), v)})
    drop = nn.Dropout(dropout)  # the embedding output and the decoder input, as bptt
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    state = None

    def run_rnn(x, state):
        if weight_drop == 0.0:
            return model["rnn"](x, state)
        # AWD-LSTM's weight drop: W_hh dropped for this step (one mask), the raw weights learn.
        w = {f"weight_hh_l{k}": nn.functional.dropout(getattr(rnn, f"weight_hh_l{k}"), weight_drop)
             for k in range(layers)}
        return torch.func.functional_call(rnn, w, (x, state))

    # bf16: PyTorch's CPU autocast (bf16 matmuls through oneDNN, f32 master weights and Adam),
    # beside `bptt --precision bf16`.
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def step():
        nonlocal state
        x = torch.randint(0, v, (t, b))
        y = torch.randint(0, v, (t * b,))
        with autocast:
            out, state = run_rnn(drop(model["encoder"](x)), state)
            out = drop(out)
            # (As `bptt bench --bidirectional`: a bidirectional net's state is not carried.)
            state = None if bidirectional else tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
            loss = nn.functional.cross_entropy(model["decoder"](out).view(-1, v).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t0) / steps
    tps = b * t / dt
    return {
        "system": f"pytorch {torch.__version__}", "cell": cell, "hidden": h, "layers": layers, "embedding_dim": e,
        "vocab": v, "batch": b, "seq_len": t, "threads": threads, "steps": steps, "tokens_per_s": round(tps),
        "ms_per_step": round(dt * 1e3, 3), "gflops": round(flops_per_token(cell, h, layers, e, v, d) * tps / 1e9, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "cpu": cpu_model(),
        "dropout": dropout, "weight_drop": weight_drop, "bidirectional": bidirectional, "proj_size": proj_size,
        "layer_norm": layer_norm, "zoneout_h": zoneout_h, "zoneout_c": zoneout_c, "precision": precision,
    }


p = argparse.ArgumentParser()
p.add_argument("--cell", default="lstm")
p.add_argument("--hidden", type=int, default=256)
p.add_argument("--layers", type=int, default=1)
p.add_argument("--embedding-dim", type=int, default=64)
p.add_argument("--vocab", type=int, default=65)
p.add_argument("--batch", type=int, default=32)
p.add_argument("--seq-len", type=int, default=100)
p.add_argument("--steps", type=int, default=20)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--suite", action="store_true")
p.add_argument("--dropout", type=float, default=0.0)
p.add_argument("--weight-drop", type=float, default=0.0)
p.add_argument("--bidirectional", action="store_true")
p.add_argument("--proj-size", type=int, default=0)
p.add_argument("--layer-norm", action="store_true")
p.add_argument("--zoneout-h", type=float, default=0.0)
p.add_argument("--zoneout-c", type=float, default=0.0)
p.add_argument("--precision", default="f32", choices=["f32", "bf16"])
a = p.parse_args()
configs = SUITE if a.suite else [(a.cell, a.hidden, a.layers, a.batch, a.seq_len)]
for cell, h, layers, b, t in configs:
    steps = 50 if (a.suite and b == 1) else a.steps
    out = bench(cell, h, layers, b, t, a.embedding_dim, a.vocab, steps, a.threads, a.dropout, a.weight_drop,
                a.bidirectional, a.proj_size, a.layer_norm, a.zoneout_h, a.zoneout_c, a.precision)
    print(json.dumps(out), flush=True)
