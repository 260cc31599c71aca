#!/usr/bin/env bash
# Issue 25's table in stages (one process at a time, nice 10, one thread): each stage is one attacker against
# every defense of configs/adaptive/mnist-cpu.yaml; the points are cached in the output directory, so a stage
# that was cut off resumes where it stopped. Usage: scripts/adaptive_table.sh [OUT] [ATTACK ...]
set -euo pipefail
OUT=${1:-results/adaptive/mnist-cpu}; shift || true
STAGES=("$@"); [ ${#STAGES[@]} -eq 0 ] && STAGES=(knockoff knockoff-argmax d-dae smoothing semi-supervised active-thief)
PY=${PYTHON:-python}
for a in "${STAGES[@]}"; do
  echo "== $a $(date -u +%H:%M:%S)"
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 10 "$PY" -m modelsteal sweep configs/adaptive/mnist-cpu.yaml \
    --out "$OUT" --only "$a" --quiet --no-plots
done
echo "== done $(date -u +%H:%M:%S)"
