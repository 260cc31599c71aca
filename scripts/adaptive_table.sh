#!/usr/bin/env bash
# Issue 25's table in stages (one process at a time, nice 10, one thread). A stage is one attacker, optionally
# restricted to some defenses: "d-dae" runs it against every defense of configs/adaptive/adaptive-mnist.yaml --scale cpu,
# "semi-supervised:none,mad,top-1" against those (names or labels, as --only takes them). Points are cached in
# the output directory, so a stage that was cut off resumes where it stopped.
# Usage: scripts/adaptive_table.sh OUT STAGE [STAGE ...]   (PYTHON=... picks the interpreter)
set -euo pipefail
OUT=$1; shift
PY=${PYTHON:-python}
for stage in "$@"; do
  attack=${stage%%:*}; defenses=""
  [[ $stage == *:* ]] && defenses=${stage#*:}
  echo "== $stage $(date -u +%H:%M:%S)"
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 10 "$PY" -m modelsteal sweep configs/adaptive/adaptive-mnist.yaml --scale cpu \
    --out "$OUT" --only "$attack" ${defenses//,/ } --quiet --no-plots
done
echo "== done $(date -u +%H:%M:%S)"
