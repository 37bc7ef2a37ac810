#!/usr/bin/env python3
"""bptt and PyTorch side by side on the BENCHMARKS.md configs (optional; needs torch).

The machines this runs on are shared and their speed drifts from minute to minute, so every
config is run in rounds — bptt, then PyTorch, right after each other — and the table reports
the median of each system and the median (and range) of the per-round ratios.

    cargo build --release
    python3 bench/side_by_side.py --rounds 3 --threads 2 > /tmp/table.md

Prints the markdown table of BENCHMARKS.md on stdout (progress on stderr) and, with --json,
every measurement as JSON lines instead. With --before OTHER_BPTT, each round runs that build,
this one and PyTorch right after each other (a change's cost, measured beside its base):

    git worktree add /tmp/base BASE && (cd /tmp/base && cargo build --release)
    python3 bench/side_by_side.py --rounds 5 --threads 2 --before /tmp/base/target/release/bptt
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# (cell, H, L, B, T, target speed-up), as in the issue and `bptt bench --suite`.
SUITE = [
    ("lstm", 64, 1, 16, 50, 3.0),
    ("lstm", 128, 1, 32, 64, 2.5),
    ("lstm", 256, 1, 32, 100, 2.0),
    ("gru", 256, 1, 32, 100, 2.0),
    ("rnn_tanh", 256, 1, 32, 100, 2.0),
    ("lstm", 256, 1, 1, 100, 5.0),
    ("lstm", 512, 2, 64, 100, 1.2),
    ("lstm", 1024, 1, 64, 100, 1.0),
]


def timed_steps(h, b):
    """Timed steps per run: fewer for the large configs, more for one row."""
    return "3" if h >= 1024 else "5" if h >= 512 else "50" if b == 1 else "20"


def run(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bptt", default=os.path.join(HERE, "..", "target", "release", "bptt"))
    p.add_argument("--json", action="store_true")
    p.add_argument("--before", help="another bptt build, run beside this one in every round")
    p.add_argument("--bidirectional", action="store_true", help="bidirectional layers in both systems")
    p.add_argument("--proj-size", type=int, default=0, help="LSTM projections of this size in both systems")
    p.add_argument("--layer-norm", action="store_true",
                   help="LayerNorm-LSTMs in both systems (PyTorch: an eager LN-LSTM, it has no fused one)")
    p.add_argument("--zoneout-h", type=float, default=0.0,
                   help="zoneout of h in both systems (PyTorch: an eager per-step cell loop, it has none)")
    p.add_argument("--zoneout-c", type=float, default=0.0, help="zoneout of c (LSTM) in both systems")
    p.add_argument("--precision", default="f32", choices=["f32", "bf16", "both"],
                   help="bf16: bptt --precision bf16 beside PyTorch's bf16 autocast; both: f32 and bf16 of "
                        "both systems in every round (the bf16 table)")
    p.add_argument("--config", action="append", default=[], metavar="CELL,H,L,B,T",
                   help="run these configs instead of the suite (repeatable)")
    a = p.parse_args()
    suite = [(c, int(h), int(l), int(b), int(t), 1.0) for c, h, l, b, t in (x.split(",") for x in a.config)] or SUITE

    out = subprocess.run([a.bptt, "bench", "--gemm-peak", "--json", "--threads", str(a.threads)], check=True,
                         capture_output=True, text=True).stdout
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    peak = max((r for r in lines if r["system"] == "gemm-crate"), key=lambda r: r["gflops"])
    fma = next((r["gflops"] for r in lines if r["system"] == "fma-peak"), float("nan"))
    amx = next((r["gflops"] for r in lines if r["system"] == "amx-peak"), None)
    bf16 = next((r["gflops"] for r in lines if r["system"] == "bf16-peak"), None)
    if a.precision == "both":
        both(a, suite, peak["gflops"], fma, amx or bf16)
        return
    rows = []
    for cell, h, l, b, t, target in suite:
        steps = timed_steps(h, b)
        args = ["--cell", cell, "--hidden", str(h), "--layers", str(l), "--batch", str(b), "--seq-len", str(t),
                "--steps", steps, "--threads", str(a.threads)] + (["--bidirectional"] if a.bidirectional else []) \
            + (["--proj-size", str(a.proj_size)] if a.proj_size else []) + (["--layer-norm"] if a.layer_norm else []) \
            + (["--zoneout-h", str(a.zoneout_h)] if a.zoneout_h else []) \
            + (["--zoneout-c", str(a.zoneout_c)] if a.zoneout_c else []) \
            + (["--precision", a.precision] if a.precision != "f32" else [])
        ours, theirs, before = [], [], []
        for r in range(a.rounds):
            print(f"{cell} H={h} L={l} B={b} T={t}: round {r + 1}/{a.rounds}", file=sys.stderr)
            if a.before:
                before.append(run([a.before, "bench", "--json"] + args))
            ours.append(run([a.bptt, "bench", "--json"] + args))
            theirs.append(run([sys.executable, os.path.join(HERE, "torch_reference.py")] + args))
            if a.json:
                print(json.dumps(ours[-1]))
                print(json.dumps(theirs[-1]))
        rows.append((cell, h, l, b, t, target, ours, theirs, before))
    if a.json:
        print(json.dumps(peak))
        return
    if a.before:
        print_before_now(rows, a, peak["gflops"], fma)
        return

    med = lambda runs, key: statistics.median(r[key] for r in runs)  # noqa: E731
    print(f"GEMM crate peak (f32, {a.threads} threads, best square size): {peak['gflops']} GFLOP/s; the machine's "
          f"f32 FMA peak (registers only, `bptt bench --gemm-peak`): {fma} GFLOP/s; "
          f"{a.rounds} rounds per config; CPU: {ours_cpu(rows)}.\n")
    print("| config | bptt tokens/s | PyTorch tokens/s | ratio (median) | ratio range | target | status "
          "| bptt GFLOP/s (of GEMM peak, of FMA peak) | PyTorch GFLOP/s | bptt peak RSS MB | PyTorch peak RSS MB "
          "| bptt activations MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for cell, h, l, b, t, target, ours, theirs, _ in rows:
        ratios = sorted(o["tokens_per_s"] / p["tokens_per_s"] for o, p in zip(ours, theirs))
        ratio = statistics.median(ratios)
        gf = med(ours, "gflops")
        status = "met" if ratio >= target else "missed"
        print(f"| {cell} H={h} L={l} B={b} T={t} | {med(ours, 'tokens_per_s'):.0f} | {med(theirs, 'tokens_per_s'):.0f} "
              f"| **{ratio:.2f}×** | {ratios[0]:.2f}–{ratios[-1]:.2f}× | ≥ {target:g}× | {status} "
              f"| {gf:.1f} ({100 * gf / peak['gflops']:.0f}%, {100 * gf / fma:.0f}%) | {med(theirs, 'gflops'):.1f} "
              f"| {med(ours, 'peak_rss_mb'):.1f} | {med(theirs, 'peak_rss_mb'):.1f} | {med(ours, 'activation_mb'):.1f} |")


def both(a, suite, peak, fma, bf16_peak):
    """Every round runs bptt f32, bptt bf16, PyTorch f32 and PyTorch under bf16 autocast right
    after each other; the table gives medians, per-round ratios and each system's model GFLOP/s
    (f32-equivalent FLOPs) as a share of the GEMM crate's f32 peak, the f32 FMA peak and the
    bf16 peak (AMX tiles where the CPU has them, else vdpbf16ps)."""
    rows = []
    for cell, h, l, b, t, _ in suite:
        args = ["--cell", cell, "--hidden", str(h), "--layers", str(l), "--batch", str(b), "--seq-len", str(t),
                "--steps", timed_steps(h, b), "--threads", str(a.threads)]
        runs = {k: [] for k in ("b32", "b16", "t32", "t16")}
        for r in range(a.rounds):
            print(f"{cell} H={h} L={l} B={b} T={t}: round {r + 1}/{a.rounds}", file=sys.stderr)
            for key, cmd in (("b32", [a.bptt, "bench", "--json"] + args),
                             ("b16", [a.bptt, "bench", "--json", "--precision", "bf16"] + args),
                             ("t32", [sys.executable, os.path.join(HERE, "torch_reference.py")] + args),
                             ("t16", [sys.executable, os.path.join(HERE, "torch_reference.py"), "--precision", "bf16"]
                              + args)):
                runs[key].append(run(cmd))
        rows.append((cell, h, l, b, t, runs))
    med = lambda runs, key="tokens_per_s": statistics.median(r[key] for r in runs)  # noqa: E731
    ratio = lambda xs, ys: sorted(x["tokens_per_s"] / y["tokens_per_s"] for x, y in zip(xs, ys))  # noqa: E731
    share = lambda gf: f"{gf:.0f} ({100 * gf / peak:.0f}%, {100 * gf / fma:.0f}%, {100 * gf / bf16_peak:.0f}%)"  # noqa: E731
    cpu = rows[0][5]["b32"][0].get("cpu", "unknown") if rows else "unknown"
    print(f"{a.rounds} rounds per config, {a.threads} threads; CPU: {cpu}; tokens/s; GFLOP/s counts the model's "
          f"f32-equivalent FLOPs, in brackets as a share of the GEMM crate's f32 peak ({peak}), the f32 FMA peak "
          f"({fma}) and the bf16 peak ({bf16_peak}).\n")
    print("| config | bptt f32 | bptt bf16 | PyTorch f32 | PyTorch bf16 | bptt bf16 ÷ f32 (median, range) "
          "| bptt f32 ÷ PyTorch f32 | bptt bf16 ÷ PyTorch bf16 | bptt bf16 ÷ PyTorch f32 | bptt f32 GFLOP/s "
          "| bptt bf16 GFLOP/s | PyTorch f32 GFLOP/s | PyTorch bf16 GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for cell, h, l, b, t, r in rows:
        q = lambda x, y: ratio(r[x], r[y])  # noqa: E731
        m = lambda xs: f"**{statistics.median(xs):.2f}×** ({xs[0]:.2f}–{xs[-1]:.2f})"  # noqa: E731
        print(f"| {cell} H={h} L={l} B={b} T={t} | {med(r['b32']) / 1e3:.1f}k | {med(r['b16']) / 1e3:.1f}k "
              f"| {med(r['t32']) / 1e3:.1f}k | {med(r['t16']) / 1e3:.1f}k | {m(q('b16', 'b32'))} | {m(q('b32', 't32'))} "
              f"| {m(q('b16', 't16'))} | {m(q('b16', 't32'))} | {share(med(r['b32'], 'gflops'))} "
              f"| {share(med(r['b16'], 'gflops'))} | {share(med(r['t32'], 'gflops'))} "
              f"| {share(med(r['t16'], 'gflops'))} |")


def print_before_now(rows, a, peak, fma):
    """The table of a change: the other build, this one and PyTorch, medians and per-round ratios,
    and each one's model GFLOP/s as a share of the GEMM crate's peak and of the FMA peak."""
    med = lambda runs, key="tokens_per_s": statistics.median(r[key] for r in runs)  # noqa: E731
    ratio = lambda xs, ys: sorted(x["tokens_per_s"] / y["tokens_per_s"] for x, y in zip(xs, ys))  # noqa: E731
    share = lambda gf: f"{gf:.0f} ({100 * gf / peak:.0f}%, {100 * gf / fma:.0f}%)"  # noqa: E731
    print(f"{a.rounds} rounds per config, {a.threads} threads; CPU: {ours_cpu(rows)}; tokens/s; GFLOP/s (share "
          f"of the GEMM crate's peak {peak} and of the FMA peak {fma}).\n")
    print("| config | bptt before | bptt now | now ÷ before (median, range) | PyTorch | now ÷ PyTorch (median, range) "
          "| GFLOP/s before | GFLOP/s now | PyTorch GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for cell, h, l, b, t, _, ours, theirs, before in rows:
        nb, nt = ratio(ours, before), ratio(ours, theirs)
        print(f"| {cell} H={h} L={l} B={b} T={t} | {med(before) / 1e3:.1f}k | {med(ours) / 1e3:.1f}k "
              f"| **{statistics.median(nb):.2f}×** ({nb[0]:.2f}–{nb[-1]:.2f}) | {med(theirs) / 1e3:.1f}k "
              f"| **{statistics.median(nt):.2f}×** ({nt[0]:.2f}–{nt[-1]:.2f}) | {share(med(before, 'gflops'))} "
              f"| {share(med(ours, 'gflops'))} | {share(med(theirs, 'gflops'))} |")


def ours_cpu(rows):
    return rows[0][6][0].get("cpu", "unknown") if rows else "unknown"


if __name__ == "__main__":
    main()
