#!/usr/bin/env bash
# The model-family study (docs/models.md): conv, mlp and hvae on Fashion-MNIST (60,000 /
# 10,000), each trained for the same wall-clock budget on one CPU core, with the sigma-VAE,
# the logistic mixture and the fixed gaussian (sigma = 1, beta = 1), then evaluated on
# Fashion-MNIST's test split and on the bundled mnist5k's (held out: another dataset).
#
#   scripts/model_study.sh          train and evaluate the runs of RUNS, one after another
#   scripts/model_study.sh eval     evaluate every complete run that has no results yet
#
# Resumable: a finished run is skipped, an interrupted one resumed (the budget counts its
# training seconds).  Several queues may share the list, one a core (CORE=0 and CORE=1):
# each run is claimed with a lock, so a queue skips the runs another one holds.
# Environment: BUDGET (30m), OUT (study-models), CORE (the CPU core this queue runs on: 0),
# RUNS (model:likelihood:seed words, in order; default below), FID (0: prior samples for
# FID; 10000 is the issue's number, about 30 min a run on one core).
# CODE=DIR runs vaecli from DIR (a git worktree at a fixed commit), so that work on the
# checkout does not change the code of runs in progress.
set -euo pipefail
if [[ -n "${CODE:-}" ]]; then export PYTHONPATH="$CODE${PYTHONPATH:+:$PYTHONPATH}"; fi
out="${OUT:-study-models}"
budget="${BUDGET:-30m}"
core="${CORE:-0}"
runs="${RUNS:-conv:sigma:0 hvae:sigma:0 conv:logistic-mixture:0 hvae:logistic-mixture:0 \
hvae:sigma:1 hvae:logistic-mixture:1 mlp:sigma:0 mlp:logistic-mixture:0 conv:gaussian:0 hvae:gaussian:0 \
hvae:gaussian:1 mlp:gaussian:0}"
mnist5k="$(python3 -c 'import vaecli.datasets as d, os; print(os.path.join(os.path.dirname(d.__file__), "data", "mnist5k.npz"))')"
mkdir -p "$out"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1  # one core a process: the budget buys the same CPU for each

source "$(dirname "$0")/study_queue.sh"

evaluate() {  # the run's results as JSON beside it: its test split, then mnist5k's
  local file="$1" json="${1%.h5}.json"
  [[ -f "$json" ]] && return 0
  echo "== $(date -u +%FT%TZ) evaluating $file"
  local metrics=(--metric elbo --metric bpd --metric kl --metric mse --metric active-units) fid=()
  [[ "${FID:-0}" -gt 0 ]] && fid=(--metric fid --fid-samples "$FID")
  taskset -c "$core" python3 -m vaecli eval "$file" "${metrics[@]}" --metric nll --iw-samples 10 "${fid[@]}" --device cpu \
    --json > "$file.test.tmp"
  taskset -c "$core" python3 -m vaecli eval "$file" "${metrics[@]}" --data "$mnist5k" --device cpu --no-store --json \
    > "$file.mnist5k.tmp"
  python3 "$(dirname "$0")/model_study_result.py" "$file" "$file.test.tmp" "$file.mnist5k.tmp" > "$json.tmp"
  mv "$json.tmp" "$json"
  rm -f "$file.test.tmp" "$file.mnist5k.tmp"
  echo "wrote $json"
}

case "${1:-train}" in
train)
  for spec in $runs; do
    IFS=: read -r model likelihood seed <<< "$spec"
    file="$out/$model-$likelihood-s$seed.h5"
    claim "$file" || continue
    train_or_resume "$file" taskset -c "$core" python3 -m vaecli train --dataset fashion-mnist --model "$model" \
      --likelihood "$likelihood" --seed "$seed" --epochs 1000 --time-budget "$budget" --out "$file" --device cpu --quiet
    evaluate "$file"
    release
  done
  ;;
eval)
  for file in "$out"/*.h5; do
    [[ "$(run_status "$file")" == complete ]] && evaluate "$file"
  done
  ;;
*) echo "usage: $0 [train|eval]" >&2; exit 2 ;;
esac
