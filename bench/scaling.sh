#!/usr/bin/env bash
# bptt and PyTorch side by side at 1, 2, 4, 8 and 16 threads (the table of BENCHMARKS.md,
# "Scaling"). Builds nothing: give it a built bptt binary. Needs python3 with torch (PYTHON=...).
#
#   bench/scaling.sh target/release/bptt > scaling.md        # ≈ 6 min on a 16-core machine
#   THREADS="1 2" bench/scaling.sh target/release/bptt       # fewer thread counts
#
# Every (config, thread count) runs bptt, then PyTorch, right after each other; tokens/s are
# one run each (training steps with Adam and clipping, after 3 warm-up steps). The last column
# is the smallest share of parts that any bptt thread ran at the highest thread count (1/N when
# every thread ran its share). A second table sets the schedule model's predictions
# (`bptt bench --plan`, part times measured on one thread of this machine) beside the measured
# tokens/s, and a third bptt's own runs with row blocks only (`--grid off`) beside its default
# (machines with 8+ cores cut row blocks into rows × units: the grid), for the batches of 8 and
# more. The raw JSON lines go to $RAW (default: a temp file).
set -euo pipefail
BPTT=${1:?usage: bench/scaling.sh PATH/TO/bptt}
HERE=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python3}
THREADS=${THREADS:-"1 2 4 8 16"}
RAW=${RAW:-$(mktemp)}
"$PYTHON" -c "import torch" 2>/dev/null || { echo "bench/scaling.sh: $PYTHON cannot import torch; install it (pip install torch) or set PYTHON" >&2; exit 2; }
[ -x "$BPTT" ] || { echo "bench/scaling.sh: $BPTT is not an executable; build it with cargo build --release" >&2; exit 2; }
: > "$RAW"
# cell H L B T timed-steps
CONFIGS=(
  "lstm 256 1 32 100 10"
  "lstm 512 2 64 100 3"
  "lstm 1024 1 64 100 3"
  "gru 256 1 32 100 10"
  "lstm 256 1 1 100 30"
  "lstm 128 1 32 64 20"
  "lstm 64 1 16 50 20"
)
for cfg in "${CONFIGS[@]}"; do
  read -r cell h l b t steps <<<"$cfg"
  for th in $THREADS; do
    echo "$cell H=$h L=$l B=$b T=$t: $th threads" >&2
    args=(--cell "$cell" --hidden "$h" --layers "$l" --batch "$b" --seq-len "$t" --steps "$steps" --threads "$th")
    "$BPTT" bench --json "${args[@]}" | tail -n 1 >> "$RAW"
    if [ "$b" -ge 8 ]; then
      "$BPTT" bench --json --grid off "${args[@]}" | tail -n 1 >> "$RAW"
    fi
    "$PYTHON" "$HERE/torch_reference.py" "${args[@]}" | tail -n 1 >> "$RAW"
  done
  echo "$cell H=$h L=$l B=$b T=$t: the schedule model" >&2
  "$BPTT" bench --json --plan --cell "$cell" --hidden "$h" --layers "$l" --batch "$b" --seq-len "$t" \
    --steps "$steps" | tail -n 1 >> "$RAW"
done
"$PYTHON" - "$RAW" "$THREADS" <<'PY'
import json, sys
every = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
# (The `--grid off` runs have their own table, the last.)
rows = [r for r in every if r.get("grid", "auto") != "off"]
grid_off = [r for r in every if r.get("grid") == "off"]
threads = [int(t) for t in sys.argv[2].split()]
key = lambda r: (r["cell"], r["hidden"], r["layers"], r["batch"], r["seq_len"])
configs = list(dict.fromkeys(key(r) for r in rows))
cpu = next((r.get("cpu") for r in rows if r["system"] == "bptt"), "unknown")
torch = next((r["system"] for r in rows if r["system"].startswith("pytorch")), "pytorch")
print(f"CPU: {cpu}; {torch}; tokens/s, one run per cell; E = 64, V = 65.\n")
head = " | ".join(f"bptt {t}" for t in threads) + " | " + " | ".join(f"PyTorch {t}" for t in threads)
print(f"| config | {head} | best ÷ best | bptt {threads[-1]} ÷ {threads[min(1, len(threads) - 1)]} | min share at {threads[-1]} |")
print("|---" * (2 * len(threads) + 4) + "|")
for c in configs:
    is_ = lambda r, sys_: r["system"] == "bptt" if sys_ == "bptt" else r["system"].startswith(sys_)
    get = lambda sys_, t: next((r for r in rows if key(r) == c and is_(r, sys_) and r.get("threads") == t), None)
    ours = [get("bptt", t) for t in threads]
    theirs = [get("pytorch", t) for t in threads]
    tok = lambda r: r["tokens_per_s"] if r else float("nan")
    fmt = lambda v: f"{v / 1000:.1f}k"
    best_o, best_t = max(map(tok, ours)), max(map(tok, theirs))
    share = ours[-1].get("thread_share", []) if ours[-1] else []
    low = min(share) if len(share) == threads[-1] else 0.0
    scale = tok(ours[-1]) / tok(ours[min(1, len(ours) - 1)])
    cell, h, l, b, t = c
    cells = " | ".join(fmt(tok(r)) for r in ours) + " | " + " | ".join(fmt(tok(r)) for r in theirs)
    print(f"| {cell.upper() if cell != 'rnn_tanh' else 'RNN-tanh'} H{h} L{l} B{b} T{t} | {cells} | "
          f"{best_o / best_t:.2f}× | {scale:.2f}× | {low:.3f} |")

print("\nThe schedule model (`bptt bench --plan`): predicted ÷ measured bptt tokens/s per thread count.\n")
print("| config | " + " | ".join(f"{t} threads" for t in threads) + " |")
print("|---" * (len(threads) + 1) + "|")
for c in configs:
    plan = next((r for r in rows if key(r) == c and r["system"] == "bptt-plan"), None)
    if plan is None:
        continue
    predicted = {p["threads"]: p["tokens_per_s"] for p in plan["predicted"]}
    measured = {r["threads"]: r["tokens_per_s"] for r in rows if key(r) == c and r["system"] == "bptt"}
    ratio = lambda t: f"{predicted[t] / measured[t]:.2f}" if t in predicted and t in measured else "–"
    cell, h, l, b, t = c
    print(f"| {cell.upper()} H{h} L{l} B{b} T{t} | " + " | ".join(ratio(t) for t in threads) + " |")

print("\nThe grid (rows × units, on by default with 8+ cores): bptt's default ÷ `--grid off` tokens/s.\n")
print("| config | " + " | ".join(f"{t} threads" for t in threads) + " |")
print("|---" * (len(threads) + 1) + "|")
for c in configs:
    off = {r["threads"]: r["tokens_per_s"] for r in grid_off if key(r) == c}
    if not off:
        continue
    on = {r["threads"]: r["tokens_per_s"] for r in rows if key(r) == c and r["system"] == "bptt"}
    ratio = lambda t: f"{on[t] / off[t]:.2f}" if t in on and t in off else "–"
    cell, h, l, b, t = c
    print(f"| {cell.upper()} H{h} L{l} B{b} T{t} | " + " | ".join(ratio(t) for t in threads) + " |")
PY
