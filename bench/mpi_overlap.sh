#!/usr/bin/env bash
# Step time of data-parallel training over MPI with 2 ranks on this machine (loopback, shared
# memory): gradient buckets all-reduced while the backward pass runs (`--grad-sync overlap`)
# against one all-reduce after it (`after`), alternated; and one process on half the batch
# (the same work per rank, no communication), whose difference is the exchange's cost.
#
#   cargo build --release --features mpi
#   bench/mpi_overlap.sh target/release/bptt TEXT HIDDEN LAYERS BATCH SEQ_LEN [ROUNDS]
set -euo pipefail
BPTT=${1:?usage: bench/mpi_overlap.sh BPTT TEXT H L B T [ROUNDS]}
TEXT=$2; H=$3; L=$4; B=$5; T=$6; ROUNDS=${7:-3}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
OUT=$(mktemp -d)
common=(--text "$TEXT" --hidden "$H" --layers "$L" --seq-len "$T" --steps 14 --threads 1 --eval-every 0
  --val-fraction 0 --force)
median() { # the median step time (ms) of a run folder, after 3 warm-up steps
  python3 - "$1" <<'PY'
import json, statistics, sys
e = [json.loads(l)["elapsed_s"] for l in open(sys.argv[1] + "/metrics.jsonl")]
print(f"{1000 * statistics.median([b - a for a, b in zip(e, e[1:])][2:]):.1f}")
PY
}
echo "| LSTM H$H L$L B$B T$T | one process, B/2 | 2 ranks, after | 2 ranks, overlap |"
echo "|---|---|---|---|"
for r in $(seq 1 "$ROUNDS"); do
  "$BPTT" train "${common[@]}" --batch $((B / 2)) --out "$OUT/one" >/dev/null 2>&1
  row="| round $r | $(median "$OUT/one") ms"
  for mode in after overlap; do
    mpirun --oversubscribe -np 2 "$BPTT" train "${common[@]}" --batch "$B" --grad-sync "$mode" --out "$OUT/$mode" \
      >/dev/null 2>&1
    row="$row | $(median "$OUT/$mode") ms"
  done
  echo "$row |"
done
rm -rf "$OUT"
