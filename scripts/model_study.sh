#!/usr/bin/env bash
# The model-family study (docs/models.md): conv, mlp and hvae on Fashion-MNIST (60,000 /
# 10,000), each trained for the same wall-clock budget on one CPU core, with the sigma-VAE,
# the logistic mixture and the fixed gaussian (sigma = 1, beta = 1).  Resumable: a finished
# run is skipped, an interrupted one resumed (the budget counts its training seconds).
#
#   scripts/model_study.sh train   train the runs of RUNS, one after another
#   scripts/model_study.sh eval    evaluate every complete run that has no results yet
#
# Environment: BUDGET (30m), OUT (study-models), CORE (the CPU core training is pinned
# to: 0), EVAL_CORE (1), RUNS (model:likelihood:seed words, in order; default below),
# FID (0: FID samples per run; 10000 is the issue's number, about 30 min a run on one core).
set -euo pipefail
out="${OUT:-study-models}"
budget="${BUDGET:-30m}"
runs="${RUNS:-conv:sigma:0 hvae:sigma:0 conv:logistic-mixture:0 hvae:logistic-mixture:0 \
hvae:sigma:1 hvae:logistic-mixture:1 mlp:sigma:0 mlp:logistic-mixture:0 conv:gaussian:0 hvae:gaussian:0 \
hvae:gaussian:1 mlp:gaussian:0}"
mnist5k="$(python3 -c 'import vaecli.datasets as d, os; print(os.path.join(os.path.dirname(d.__file__), "data", "mnist5k.npz"))')"
mkdir -p "$out"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1  # one core a process: the budget buys the same CPU for each

case "${1:-train}" in
train)
  for spec in $runs; do
    IFS=: read -r model likelihood seed <<< "$spec"
    file="$out/$model-$likelihood-s$seed.h5"
    resume=()
    [[ -f "$file" ]] && resume=(--resume)
    echo "== $(date -u +%FT%TZ) $file"
    taskset -c "${CORE:-0}" vae train --dataset fashion-mnist --model "$model" --likelihood "$likelihood" \
      --seed "$seed" --epochs 1000 --time-budget "$budget" --out "$file" --quiet "${resume[@]}"
    vae info "$file" | grep -E '^(training|epoch|  )' | tail -4
  done
  ;;
eval)
  for file in "$out"/*.h5; do
    json="${file%.h5}.json"
    [[ -f "$json" ]] && continue
    [[ "$(python3 -c "import vaecli.runfile as r, sys; print(r.read(sys.argv[1]).attrs['status'])" "$file")" == complete ]] || continue
    echo "== $(date -u +%FT%TZ) evaluating $file"
    metrics=(--metric elbo --metric bpd --metric kl --metric mse --metric active-units)
    fid=()
    [[ "${FID:-0}" -gt 0 ]] && fid=(--metric fid --fid-samples "$FID")
    taskset -c "${EVAL_CORE:-1}" vae eval "$file" "${metrics[@]}" --metric nll --iw-samples 10 "${fid[@]}" \
      --json > "$file.test.tmp"
    taskset -c "${EVAL_CORE:-1}" vae eval "$file" "${metrics[@]}" --data "$mnist5k" --no-store --json \
      > "$file.mnist5k.tmp"
    python3 - "$file" "$file.test.tmp" "$file.mnist5k.tmp" "$json" <<'EOF'
import json, sys
from vaecli import runfile
run, test, held, out = sys.argv[1:]
r = runfile.read(run)
seconds = list(map(float, r.history["seconds"]))
full = seconds[:-1] or seconds  # the last epoch may have ended early
result = {
    "run": run, "model": r.config.model, "likelihood": r.config.likelihood, "seed": r.config.seed,
    "model_options": r.config.model_options, "time_budget": r.config.time_budget,
    "epochs": int(r.attrs["epochs_done"]), "trained_seconds": sum(seconds),
    "images_per_second": int(r.attrs["num_train"]) * len(full) / sum(full),
    "parameters": int(sum(v.size for v in r.model.values())), "latent_groups": json.loads(r.attrs["latent_groups"]),
    "history_test_kl_groups": {k: list(map(float, v)) for k, v in r.history.items() if k.startswith("test_kl_group")},
    "test": json.load(open(test)), "mnist5k": json.load(open(held)), "library_versions": r.attrs["library_versions"],
}
json.dump(result, open(out, "w"), indent=1)
EOF
    rm -f "$file.test.tmp" "$file.mnist5k.tmp"
    echo "wrote $json"
  done
  ;;
*) echo "usage: $0 train|eval" >&2; exit 2 ;;
esac
