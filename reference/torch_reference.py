#!/usr/bin/env python3
"""Generates tests/it/torch_expected.rs: known answers from PyTorch for the Rust tests.

Run from the repository root with torch installed (not needed by the tests themselves):

    python3 reference/torch_reference.py > tests/it/torch_expected.rs

Every input is a closed-form function of its index so the Rust test rebuilds it exactly:
parameters, in state_dict order over one slab, are p[k] = 0.6 sin(1.3 k + 0.5); dense
inputs x[k] = sin(0.7 k + 0.3); class targets y[k] = (7 k + 3) mod O; value targets
v[k] = cos(0.9 k); token ids (5 k + 1) mod V; h0[k] = 0.3 sin(0.5 k + 1), c0[k] =
0.3 cos(0.5 k + 1). Everything is float64 unless stated.

Dropout cases (DROP_*) apply fixed masks where bptt drops (PyTorch's word-language-model
placement): the first layer's input (the embedding output for tokens), each layer's output
feeding the next, and the top layer's output before the decoder. The masks are 0 or 1/(1 - 0.4):
the input mask (T, B, I) is 0 where (3 k + 1) mod 5 = 0, the layer-output masks (L, T, B, H)
where (7 k + 2) mod 4 = 0.

Packed cases (PACKED_*) run sequences of lengths (4, 1) through pack_padded_sequence
(enforce_sorted=False): the loss is the mean cross-entropy over the valid positions plus
sum_k w[k] (h_n[k] + c_n[k]) with w[k] = 0.1 cos(0.3 k + 0.2), so the gradients check the final
states taken at each length; h_n and c_n are given too.
Bidirectional cases (BIDIR_*) are packed cases of `bidirectional=True` nets of 1 or 2 layers
(lengths (4, 2, 3), B = 3): the decoder reads 2H, h0/c0 are (2L, B, H) by the same formulas,
and the top layer's padded outputs `out` (T, B, 2H) are given as well. Projected cases (PROJ_*)
are the same with `proj_size` = P: h0 is (D·L, B, P), the decoder reads D·P, the final-state
weights w are of h_n's and c_n's sizes by the same formula. LayerNorm-LSTM cases (LN_*) are the
same for `LnLstm` below, bptt's `layer_norm` written out with torch.nn.functional.layer_norm
(lengths handled by holding each ended sequence's state, as packing does).
"""
import math
import torch
import torch.nn as nn

torch.set_default_dtype(torch.float64)
T, B, I, H, O, V, L = 4, 2, 3, 4, 3, 5, 2


def fill(values, f):
    return torch.tensor([f(k) for k in range(values)])


class Model(nn.Module):
    def __init__(self, cell, tokens, v=V, i=I, h=H, layers=L, o=O):
        super().__init__()
        if tokens:
            self.encoder = nn.Embedding(v, i)
        kind = {"lstm": nn.LSTM, "gru": nn.GRU}.get(cell, nn.RNN)
        kw = {"nonlinearity": cell[4:]} if cell.startswith("rnn") else {}
        self.rnn = kind(i, h, num_layers=layers, **kw)
        self.decoder = nn.Linear(h, o)
        self.tokens = tokens
        # One-layer modules that run layer k with rnn's weights (not registered: the
        # parameters stay those of rnn, in state_dict order), to drop between layers.
        self.__dict__["one"] = [kind(i if k == 0 else h, h, num_layers=1, **kw) for k in range(layers)]

    def forward(self, x, state, masks=None):
        if self.tokens:
            x = self.encoder(x)
        if masks is None:
            out, _ = self.rnn(x, state)
            return self.decoder(out)
        mx, mh = masks
        x = x * mx
        for k, one in enumerate(self.one):
            w = {f"{n}_l0": getattr(self.rnn, f"{n}_l{k}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
            st = (state[0][k:k + 1], state[1][k:k + 1]) if isinstance(state, tuple) else state[k:k + 1]
            out, _ = torch.func.functional_call(one, w, (x, st))
            x = out * mh[k]
        return self.decoder(x)


class LnLstm(nn.Module):
    """The LayerNorm-LSTM (Ba et al. 2016) as bptt's `layer_norm` defines it, layer by layer:
    a = LN(W_ih x) + LN(W_hh h) + b_ih + b_hh, c = f c + i g, h = o tanh(LN(c)), each LN with
    its own weight and bias (eps 1e-5). Parameters in bptt's slab order."""

    def __init__(self, i, h, layers):
        super().__init__()
        self.layers, self.h = layers, h
        for k in range(layers):
            shapes = [("weight_ih", (4 * h, i if k == 0 else h)), ("weight_hh", (4 * h, h)),
                      ("bias_ih", (4 * h,)), ("bias_hh", (4 * h,)),
                      ("ln_weight_ih", (4 * h,)), ("ln_bias_ih", (4 * h,)),
                      ("ln_weight_hh", (4 * h,)), ("ln_bias_hh", (4 * h,)),
                      ("ln_weight_c", (h,)), ("ln_bias_c", (h,))]
            for name, shape in shapes:
                setattr(self, f"{name}_l{k}", nn.Parameter(torch.zeros(shape)))

    def forward(self, x, state, lengths):
        """x (T, B, I), state (h0, c0) (L, B, H); returns the top layer's outputs (zero past
        each length) and the final states (h_n, c_n) taken at each length."""
        ln = nn.functional.layer_norm
        alive = [torch.tensor([t < n for n in lengths]).unsqueeze(1) for t in range(x.shape[0])]
        h_n, c_n = [], []
        for k in range(self.layers):
            p = lambda n: getattr(self, f"{n}_l{k}")
            h, c, outs = state[0][k], state[1][k], []
            for t in range(x.shape[0]):
                a = (ln(x[t] @ p("weight_ih").T, (4 * self.h,), p("ln_weight_ih"), p("ln_bias_ih"))
                     + ln(h @ p("weight_hh").T, (4 * self.h,), p("ln_weight_hh"), p("ln_bias_hh"))
                     + p("bias_ih") + p("bias_hh"))
                i, f, g, o = a.chunk(4, 1)
                c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h_new = torch.sigmoid(o) * torch.tanh(ln(c_new, (self.h,), p("ln_weight_c"), p("ln_bias_c")))
                h, c = torch.where(alive[t], h_new, h), torch.where(alive[t], c_new, c)
                outs.append(torch.where(alive[t], h_new, torch.zeros_like(h_new)))
            x = torch.stack(outs)
            h_n.append(h)
            c_n.append(c)
        return x, (torch.stack(h_n), torch.stack(c_n))


def load(slab, values):
    """Copies one flat tensor of values over the parameters, in state_dict order."""
    off = 0
    with torch.no_grad():
        for p in slab:
            p.copy_(values[off:off + p.numel()].view_as(p))
            off += p.numel()


def setup(cell, tokens):
    """The model with the closed-form weights, its parameter slab, the input and h0, c0."""
    m = Model(cell, tokens)
    slab = [p for p in m.parameters()]
    n = sum(p.numel() for p in slab)
    load(slab, fill(n, lambda k: 0.6 * math.sin(1.3 * k + 0.5)))
    if tokens:
        x = torch.tensor([(5 * k + 1) % V for k in range(T * B)]).view(T, B)
    else:
        x = fill(T * B * I, lambda k: math.sin(0.7 * k + 0.3)).view(T, B, I)
    h0 = fill(L * B * H, lambda k: 0.3 * math.sin(0.5 * k + 1)).view(L, B, H).requires_grad_()
    c0 = fill(L * B * H, lambda k: 0.3 * math.cos(0.5 * k + 1)).view(L, B, H).requires_grad_()
    return m, slab, x, h0, c0


def case(name, cell, tokens, loss, dropout=False):
    m, slab, x, h0, c0 = setup(cell, tokens)
    state = (h0, c0) if cell == "lstm" else h0
    masks = None
    if dropout:
        keep = 1 / (1 - 0.4)
        mx = fill(T * B * I, lambda k: 0.0 if (3 * k + 1) % 5 == 0 else keep).view(T, B, I)
        mh = fill(L * T * B * H, lambda k: 0.0 if (7 * k + 2) % 4 == 0 else keep).view(L, T, B, H)
        masks = (mx, mh)
    y = m(x, state, masks)
    if loss == "ce":
        t = torch.tensor([(7 * k + 3) % O for k in range(T * B)])
        out = nn.functional.cross_entropy(y.reshape(T * B, O), t)
    else:  # many-to-one mse: only the last step counts
        t = fill(T * B * O, lambda k: math.cos(0.9 * k)).view(T, B, O)
        out = nn.functional.mse_loss(y[T - 1], t[T - 1])
    out.backward()
    grads = torch.cat([p.grad.reshape(-1) for p in slab])
    dh0 = h0.grad.reshape(-1)
    dc0 = c0.grad.reshape(-1) if cell == "lstm" else torch.zeros(0)
    print(f"pub const {name}: Case = Case {{")
    print(f'    cell: "{cell}", tokens: {str(tokens).lower()}, mse: {str(loss == "mse").lower()},')
    print_fields(out, [("grads", grads), ("dh0", dh0), ("dc0", dc0)])


def packed_run(m, slab, x, h0, c0, cell, lengths):
    """Runs `x` (T, b, ·) packed with `lengths` from (h0, c0): the mean cross-entropy over the
    valid positions plus sum_k w[k] (h_n[k] + c_n[k]), w[k] = 0.1 cos(0.3 k + 0.2) (over each
    state's own size), then backward. Returns the loss, the slab's gradient, dh0, dc0, h_n, c_n
    and the padded outputs of the top layer."""
    b = len(lengths)
    state = (h0, c0) if cell == "lstm" else h0
    if isinstance(m.rnn, LnLstm):
        out, last = m.rnn(x, state, lengths)
    else:
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, last = m.rnn(packed, state)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    y = m.decoder(out)
    t = torch.tensor([(7 * k + 3) % O for k in range(T * b)])
    valid = torch.tensor([1.0 if k // b < lengths[k % b] else 0.0 for k in range(T * b)])
    ce = nn.functional.cross_entropy(y.reshape(T * b, O), t, reduction="none")
    loss = (ce * valid).sum() / valid.sum()
    h_n, c_n = last if cell == "lstm" else (last, torch.zeros(0))
    w = fill(h0.numel(), lambda k: 0.1 * math.cos(0.3 * k + 0.2))
    wc = fill(c0.numel(), lambda k: 0.1 * math.cos(0.3 * k + 0.2))
    loss = loss + (w * h_n.reshape(-1)).sum() + ((wc * c_n.reshape(-1)).sum() if cell == "lstm" else 0.0)
    loss.backward()
    grads = torch.cat([q.grad.reshape(-1) for q in slab])
    dc0 = c0.grad.reshape(-1) if cell == "lstm" else torch.zeros(0)
    return loss, [("grads", grads), ("dh0", h0.grad.reshape(-1)), ("dc0", dc0),
                  ("h_n", h_n.detach().reshape(-1)), ("c_n", c_n.detach().reshape(-1)),
                  ("out", out.detach().reshape(-1))]


def print_fields(loss, fields):
    print(f"    loss: {loss.item()!r},")
    for label, v in fields:
        print(f"    {label}: &[{', '.join(repr(float(a)) for a in v)}],")
    print("};")


def packed_case(name, cell, tokens):
    m, slab, x, h0, c0 = setup(cell, tokens)
    if tokens:
        x = m.encoder(x)
    loss, fields = packed_run(m, slab, x, h0, c0, cell, [4, 1])
    print(f"pub const {name}: PackedCase = PackedCase {{")
    print(f'    cell: "{cell}", tokens: {str(tokens).lower()}, lengths: &[4, 1],')
    print_fields(loss, fields[:-1])


def bidir_case(name, cell, tokens, layers, bidirectional=True, proj=0, layer_norm=False):
    """A packed case of lengths (4, 2, 3), B = 3, bidirectional and/or projected, or a
    LayerNorm-LSTM (see the docstring)."""
    b, d = 3, 2 if bidirectional else 1
    p = proj or H
    m = Model(cell, tokens, layers=layers)
    kind = {"lstm": nn.LSTM, "gru": nn.GRU}.get(cell, nn.RNN)
    kw = {"nonlinearity": cell[4:]} if cell.startswith("rnn") else {}
    if proj:
        kw["proj_size"] = proj
    m.rnn = LnLstm(I, H, layers) if layer_norm else kind(I, H, num_layers=layers, bidirectional=bidirectional, **kw)
    m.decoder = nn.Linear(d * p, O)
    slab = [q for q in m.parameters()]
    load(slab, fill(sum(q.numel() for q in slab), lambda k: 0.6 * math.sin(1.3 * k + 0.5)))
    if tokens:
        x = m.encoder(torch.tensor([(5 * k + 1) % V for k in range(T * b)]).view(T, b))
    else:
        x = fill(T * b * I, lambda k: math.sin(0.7 * k + 0.3)).view(T, b, I)
    n, nc = d * layers * b * p, d * layers * b * H
    h0 = fill(n, lambda k: 0.3 * math.sin(0.5 * k + 1)).view(d * layers, b, p).requires_grad_()
    c0 = fill(nc, lambda k: 0.3 * math.cos(0.5 * k + 1)).view(d * layers, b, H).requires_grad_()
    loss, fields = packed_run(m, slab, x, h0, c0, cell, [4, 2, 3])
    print(f"pub const {name}: BidirCase = BidirCase {{")
    print(f'    cell: "{cell}", tokens: {str(tokens).lower()}, layers: {layers}, lengths: &[4, 2, 3],')
    print(f"    bidirectional: {str(bidirectional).lower()}, proj: {proj}, layer_norm: {str(layer_norm).lower()},")
    print_fields(loss, fields)


def optim_case(name, make, dtype):
    n, steps = 6, 5
    p = fill(n, lambda k: 0.5 * math.sin(0.8 * k + 0.2)).to(dtype).requires_grad_()
    opt = make([p])
    for s in range(steps):
        p.grad = fill(n, lambda k: math.sin(1.7 * k + 0.9 * s + 0.4) * (1 + s)).to(dtype)
        opt.step()
    print(f"pub const {name}: &[f64] = &[{', '.join(repr(float(a)) for a in p.detach())}];")


print("// Generated by reference/torch_reference.py with torch", torch.__version__, "- do not edit.")
print("#![allow(clippy::excessive_precision, clippy::approx_constant)]")
print("pub struct Case { pub cell: &'static str, pub tokens: bool, pub mse: bool, pub loss: f64,")
print("    pub grads: &'static [f64], pub dh0: &'static [f64], pub dc0: &'static [f64] }")
case("RNN_TANH", "rnn_tanh", False, "ce")
case("RNN_RELU", "rnn_relu", False, "ce")
case("LSTM", "lstm", False, "ce")
case("GRU", "gru", False, "ce")
case("LSTM_TOKENS", "lstm", True, "ce")
case("GRU_TOKENS_MSE", "gru", True, "mse")
case("RNN_TANH_MSE", "rnn_tanh", False, "mse")
case("DROP_RNN_TANH", "rnn_tanh", False, "ce", dropout=True)
case("DROP_LSTM_TOKENS", "lstm", True, "ce", dropout=True)
case("DROP_GRU", "gru", False, "ce", dropout=True)
case("DROP_GRU_TOKENS_MSE", "gru", True, "mse", dropout=True)
print("pub struct PackedCase { pub cell: &'static str, pub tokens: bool, pub lengths: &'static [usize],")
print("    pub loss: f64, pub grads: &'static [f64], pub dh0: &'static [f64], pub dc0: &'static [f64],")
print("    pub h_n: &'static [f64], pub c_n: &'static [f64] }")
packed_case("PACKED_LSTM", "lstm", False)
packed_case("PACKED_GRU_TOKENS", "gru", True)
packed_case("PACKED_RNN_TANH", "rnn_tanh", False)
print("pub struct BidirCase { pub cell: &'static str, pub tokens: bool, pub layers: usize,")
print("    pub bidirectional: bool, pub proj: usize, pub layer_norm: bool,")
print("    pub lengths: &'static [usize], pub loss: f64, pub grads: &'static [f64], pub dh0: &'static [f64],")
print("    pub dc0: &'static [f64], pub h_n: &'static [f64], pub c_n: &'static [f64], pub out: &'static [f64] }")
bidir_case("BIDIR_LSTM", "lstm", False, 1)
bidir_case("BIDIR_GRU_2", "gru", False, 2)
bidir_case("BIDIR_LSTM_TOKENS_2", "lstm", True, 2)
bidir_case("BIDIR_RNN_TANH_2", "rnn_tanh", False, 2)
bidir_case("PROJ_LSTM_2", "lstm", False, 2, bidirectional=False, proj=2)
bidir_case("PROJ_LSTM_TOKENS", "lstm", True, 1, bidirectional=False, proj=3)
bidir_case("PROJ_BIDIR_LSTM_2", "lstm", False, 2, bidirectional=True, proj=2)
bidir_case("LN_LSTM_2", "lstm", False, 2, bidirectional=False, layer_norm=True)
bidir_case("LN_LSTM_TOKENS", "lstm", True, 1, bidirectional=False, layer_norm=True)


def big_case(name, cell, tokens, T, B, I, H, L, O, V=0):
    """A case at sizes that engage bptt's parallel splits (row blocks, unit blocks, GEMM tiles).

    Same closed forms, but the parameters are scaled to p[k] = (1.5 / sqrt(H)) sin(1.3 k + 0.5);
    cross-entropy over every step. Too many gradients to list: the expected values are the loss,
    the norm of every tensor's gradient, 8 entries of each (index (7919 j) mod len, j < 8), and
    the norm and 16 entries of dh0 and dc0 (index (7919 j) mod len).
    """
    m = Model(cell, tokens, V, I, H, L, O)
    slab = list(m.parameters())
    n = sum(p.numel() for p in slab)
    scale = 1.5 / math.sqrt(H)
    k = torch.arange(n, dtype=torch.float64)
    load(slab, scale * torch.sin(1.3 * k + 0.5))
    if tokens:
        x = m.encoder(torch.tensor([(5 * k + 1) % V for k in range(T * B)]).view(T, B))
    else:
        x = torch.sin(0.7 * torch.arange(T * B * I, dtype=torch.float64) + 0.3).view(T, B, I)
    kh = torch.arange(L * B * H, dtype=torch.float64)
    h0 = (0.3 * torch.sin(0.5 * kh + 1)).view(L, B, H).requires_grad_()
    c0 = (0.3 * torch.cos(0.5 * kh + 1)).view(L, B, H).requires_grad_()
    out, _ = m.rnn(x, (h0, c0) if cell == "lstm" else h0)
    y = m.decoder(out)
    t = torch.tensor([(7 * k + 3) % O for k in range(T * B)])
    loss = nn.functional.cross_entropy(y.reshape(T * B, O), t)
    loss.backward()

    def picks(v, count):
        v = v.reshape(-1)
        return [((7919 * j) % v.numel(), float(v[(7919 * j) % v.numel()])) for j in range(count)]

    print(f"pub const {name}: BigCase = BigCase {{")
    print(f'    cell: "{cell}", tokens: {str(tokens).lower()}, t: {T}, b: {B}, i: {I}, h: {H}, l: {L}, o: {O}, v: {V},')
    print(f"    loss: {loss.item()!r},")
    print(f"    grad_norms: &[{', '.join(repr(float(p.grad.norm())) for p in slab)}],")
    print(f"    grad_picks: &[{', '.join(f'({i}, {v!r})' for p in slab for i, v in picks(p.grad, 8))}],")
    print(f"    dh0_norm: {float(h0.grad.norm())!r},")
    print(f"    dh0_picks: &[{', '.join(f'({i}, {v!r})' for i, v in picks(h0.grad, 16))}],")
    dc = c0.grad if cell == "lstm" else None
    print(f"    dc0_norm: {float(dc.norm()) if dc is not None else 0.0!r},")
    print(f"    dc0_picks: &[{', '.join(f'({i}, {v!r})' for i, v in picks(dc, 16)) if dc is not None else ''}],")
    print("};")


print("pub struct BigCase { pub cell: &'static str, pub tokens: bool, pub t: usize, pub b: usize, pub i: usize,")
print("    pub h: usize, pub l: usize, pub o: usize, pub v: usize, pub loss: f64, pub grad_norms: &'static [f64],")
print("    pub grad_picks: &'static [(usize, f64)], pub dh0_norm: f64, pub dh0_picks: &'static [(usize, f64)],")
print("    pub dc0_norm: f64, pub dc0_picks: &'static [(usize, f64)] }")
# Row blocks (B = 128: 4 parts), unit blocks (B = 1 and B = 4 at H = 256: 4 parts; H = 512: 8),
# GEMM tiles and softmax row blocks (B = 32, H = 256, T = 8: 4 tiles for dW_hh).
big_case("BIG_LSTM_ROWS", "lstm", False, 5, 128, 3, 16, 2, 5)
big_case("BIG_GRU_TOKENS_UNITS_B1", "gru", True, 4, 1, 8, 256, 2, 11, 11)
big_case("BIG_RNN_TANH_UNITS_B4", "rnn_tanh", False, 4, 4, 6, 256, 2, 7)
big_case("BIG_LSTM_UNITS_H512", "lstm", False, 3, 2, 5, 512, 1, 4)
big_case("BIG_LSTM_TOKENS_TILES", "lstm", True, 8, 32, 16, 256, 1, 70, 70)
big_case("BIG_GRU_ROWS", "gru", False, 4, 128, 4, 16, 1, 6)
# Three layers over 10 steps: a wavefront in runs of 2 (unit blocks at B = 2, H = 256).
big_case("BIG_LSTM_WAVEFRONT", "lstm", False, 10, 2, 5, 256, 3, 6)
# Whole steps with tiled recurrent products (W_hh of 4 MB in f32).
big_case("BIG_LSTM_TILES", "lstm", False, 3, 16, 5, 512, 1, 6)

O_ = torch.optim
optims = {
    "SGD": lambda ps: O_.SGD(ps, lr=0.1),
    "SGD_MOMENTUM": lambda ps: O_.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01),
    "SGD_NESTEROV": lambda ps: O_.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "ADAM": lambda ps: O_.Adam(ps, lr=0.01),
    "ADAM_AMSGRAD_WD": lambda ps: O_.Adam(ps, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, amsgrad=True),
    "ADAMW": lambda ps: O_.AdamW(ps, lr=0.01),
    "RMSPROP": lambda ps: O_.RMSprop(ps, lr=0.01),
    "RMSPROP_CENTERED_MOMENTUM": lambda ps: O_.RMSprop(ps, lr=0.01, alpha=0.9, momentum=0.5, centered=True, weight_decay=0.05),
    "ADAGRAD": lambda ps: O_.Adagrad(ps, lr=0.1, lr_decay=0.01, weight_decay=0.02, initial_accumulator_value=0.1),
}
for name, make in optims.items():
    optim_case(f"OPT_{name}_F64", make, torch.float64)
    optim_case(f"OPT_{name}_F32", make, torch.float32)
