#!/usr/bin/env bash
# Issue 25's table in stages (one process at a time, nice 10, one thread). A stage is one attacker, optionally
# restricted to some defenses: "d-dae" runs it against every defense of the config,
# "semi-supervised:none,mad,top-1" against those (names or labels, as --only takes them). Points are cached in
# the output directory, so a stage that was cut off resumes where it stopped.
# Usage: scripts/adaptive_table.sh OUT STAGE [STAGE ...]   (PYTHON=... picks the interpreter; CONFIG=... the sweep
# config, default configs/adaptive/adaptive-mnist.yaml; SCALE=... its scale, default cpu, SCALE= for a config
# without scales; SEEDS="1 2" runs other seeds than the config's)
set -euo pipefail
OUT=$1; shift
PY=${PYTHON:-python}
CFG=${CONFIG:-configs/adaptive/adaptive-mnist.yaml}
SCALE_ARGS=()
[[ -n ${SCALE-cpu} ]] && SCALE_ARGS=(--scale "${SCALE-cpu}")
SEED_ARGS=()
[[ -n ${SEEDS:-} ]] && read -r -a SEED_ARGS <<< "--seeds $SEEDS"
for stage in "$@"; do
  attack=${stage%%:*}; defenses=""
  [[ $stage == *:* ]] && defenses=${stage#*:}
  echo "== $stage $(date -u +%H:%M:%S)"
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 10 "$PY" -m modelsteal sweep "$CFG" "${SCALE_ARGS[@]}" \
    --out "$OUT" --only "$attack" ${defenses//,/ } "${SEED_ARGS[@]}" --quiet --no-plots
done
echo "== done $(date -u +%H:%M:%S)"
