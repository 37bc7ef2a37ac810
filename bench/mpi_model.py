#!/usr/bin/env python3
"""Scaling model for data-parallel `bptt train` over MPI (BENCHMARKS.md, "Several machines").

Weak scaling: every node trains a batch of 32 streams x T = 100 per update, so the global batch
is 32 N. Per update a node spends T_c computing (measured on one node) and all-reduces the
gradient, S = 4 P bytes, with the ring algorithm:

    T_ar(S, N) = 2 (N - 1) / N * S / BW + 2 (N - 1) * alpha

With overlap, every bucket but the bottom layer's (with the embedding) can travel while the
layers below are still in their backward pass (about 2/3 of T_c, shared equally by L layers):

    hidden = min(T_ar(S - S_bottom, N), 2/3 * T_c * (L - 1) / L)
    T_step = T_c + T_ar(S, N) - hidden          (without overlap: hidden = 0)

Efficiency = T_c / T_step; throughput = N * 32 * 100 / T_step characters per second.
Inputs: T_c measured with `bptt train --threads 2` on the 2-core Sapphire Rapids of
BENCHMARKS.md and with `bptt bench --threads 16` on a 16-core Xeon (the device machine);
alpha = 25 us per ring step (a typical TCP/Ethernet latency, assumed, not measured).
"""

ALPHA = 25e-6
MODELS = [
    # name, hidden, layers, measured T_c (s) per update of 32 x 100
    ("LSTM H256 L2 (0.88M params), 2-core nodes", 256, 2, 0.0771),
    ("LSTM H256 L2 (0.88M params), 16-core nodes", 256, 2, 0.0525),
    ("LSTM H1024 L3 (21.3M params), 2-core nodes", 1024, 3, 2.487),
    ("LSTM H1024 L3 (21.3M params), 16-core nodes", 1024, 3, 0.797),
]


def params(h, layers, e=64, v=65):
    p, inp, bottom = v * e, e, 0
    for k in range(layers):
        p += 4 * h * (inp + h) + 8 * h
        if k == 0:
            bottom = p
        inp = h
    return p + v * h + v, bottom


def t_ar(s, n, bw):
    return 2 * (n - 1) / n * s / bw + 2 * (n - 1) * ALPHA


def main():
    for name, h, layers, tc in MODELS:
        p, bottom = params(h, layers)
        s, s_bottom = 4 * p, 4 * bottom
        print(f"\n{name}: S = {s / 1e6:.1f} MB, T_c = {tc * 1e3:.0f} ms")
        print("| nodes | 10 Gb/s: eff. (overlap / after) | 25 Gb/s | 100 Gb/s |")
        print("|---|---|---|---|")
        for n in [2, 4, 8, 16, 32, 64]:
            cells = []
            for gbps in [10, 25, 100]:
                bw = gbps * 1e9 / 8
                ar = t_ar(s, n, bw)
                hidden = min(t_ar(s - s_bottom, n, bw), 2 / 3 * tc * (layers - 1) / layers)
                eff_o, eff_a = tc / (tc + ar - hidden), tc / (tc + ar)
                cells.append(f"{eff_o:.0%} / {eff_a:.0%}")
            print(f"| {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
