#!/usr/bin/env bash
# Learning a char-LM online (one stream, an update after every character, SnAp-1's gradient)
# beside truncated BPTT on the same single stream, each for the same wall-clock time.
# Usage: bench/online_charlm.sh [SECONDS=150] [OUT=/tmp/online_charlm]
# Writes OUT/<run>/ (each run's folder) and OUT/compare_{seconds,chars}.{png,svg,csv}.
set -euo pipefail
secs=${1:-150}
out=${2:-/tmp/online_charlm}
bin=${BPTT_BIN:-target/release/bptt}
text=${TEXT:-data/tinyshakespeare.txt}
mkdir -p "$out"
common=(--text "$text" --cell lstm --hidden 128 --layers 1 --embedding-dim 64 --val-fraction 0.02
        --steps 100000000 --threads 2 --seed 1 --force)
run() {
  local name=$1; shift
  # SIGTERM after $secs: the run saves a checkpoint and its metrics, and exits.
  timeout -s TERM "$secs" "$bin" train "${common[@]}" --out "$out/$name" "$@" 2>"$out/$name.log" || true
  tail -n 1 "$out/$name.log"
}
run snap-online --online snap --lr 5e-4 --seq-len 100 --eval-every 100
run tbptt-50 --batch 1 --seq-len 50 --eval-every 1000
run tbptt-10 --batch 1 --seq-len 10 --eval-every 5000
"$bin" plot "$out/snap-online" "$out/tbptt-50" "$out/tbptt-10" --out "$out/compare"
for r in snap-online tbptt-50 tbptt-10; do
  last=$(grep val_loss "$out/$r/metrics.jsonl" | tail -n 1)
  best=$(grep -o '"val_loss":[0-9.]*' "$out/$r/metrics.jsonl" | cut -d: -f2 | sort -g | head -n 1)
  echo "$r: $(echo "$last" | grep -o '"tokens":[0-9]*' | cut -d: -f2) chars, best val $best"
done
