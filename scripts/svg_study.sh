#!/usr/bin/env bash
# The sequence study (docs/sequence.md): SVG-LP on stochastic moving MNIST (vaecli's
# smmnist, 4,000 / 1,000 videos of 20 frames at 64x64) with the decoders the sigma-VAE
# paper compares on video, each trained for the same wall-clock budget on one CPU core,
# then evaluated on the 1,000 test videos (ELBO, bits/dim and KL per predicted frame,
# MSE) and on the first 25 of them (SVG's best-of-N SSIM and PSNR per future step).
#
#   scripts/svg_study.sh          train and evaluate the runs of RUNS, one after another
#
# Resumable: a finished run (its JSON results present) is skipped, an interrupted one
# resumed (the budget counts its training seconds).  Several queues may share the list,
# one a core (CORE=0 and CORE=1): each run is claimed with a lock.  Environment: BUDGET
# (20m), OUT (study-svg), CORE (0), RUNS (name:likelihood:beta:seed words; default
# below), FUTURES (100 sampled futures a test video for SSIM/PSNR, SVG's number) on the
# first VIDEOS (25) test videos, OPTIONS (model options; default: SVG's architecture at
# an eighth of its convolution width, width=8, so that a run takes a few thousand steps
# in its budget on one core: at width 32 and batch 100 a 12-minute run took 80 steps
# and predicted a faint grey haze), TRAIN ("--lr 0.002 --batch-size 16": SVG's Adam rate,
# a smaller batch for more steps), CODE=DIR (run vaecli from a fixed worktree; start the
# queue from that directory).
# "svg-beta1e-4" is SVG's setting as the sigma-VAE authors' SVG code trains it: a Gaussian
# of sigma 1 whose log-density is summed over pixels, and beta = 1e-4 on the KL.
set -euo pipefail
if [[ -n "${CODE:-}" ]]; then export PYTHONPATH="$CODE${PYTHONPATH:+:$PYTHONPATH}"; fi
out="${OUT:-study-svg}"
budget="${BUDGET:-20m}"
core="${CORE:-0}"
futures="${FUTURES:-100}"
videos="${VIDEOS:-25}"
options="${OPTIONS:-width=8 g_dim=64 rnn_size=128}"
read -r -a train_args <<< "${TRAIN:---lr 0.002 --batch-size 16}"
runs="${RUNS:-svg-beta1e-4:gaussian:1e-4:0 sigma:sigma:1:0 sigma-learned:sigma-learned:1:0 \
gaussian:gaussian:1:0 logistic-mixture:logistic-mixture:1:0 \
svg-beta1e-4:gaussian:1e-4:1 sigma:sigma:1:1 sigma-learned:sigma-learned:1:1 gaussian:gaussian:1:1 \
logistic-mixture:logistic-mixture:1:1 \
svg-beta1e-4:gaussian:1e-4:2 sigma:sigma:1:2 sigma-learned:sigma-learned:1:2 gaussian:gaussian:1:2 \
logistic-mixture:logistic-mixture:1:2}"
mkdir -p "$out"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1  # one core a process: the budget buys the same CPU for each
model_options=()
for kv in $options; do model_options+=(--model-option "$kv"); done

source "$(dirname "$0")/study_queue.sh"

subset="$out/smmnist-test-first$videos.npz"  # the test videos whose futures are sampled and scored
if [[ ! -f "$subset" ]]; then
  python3 -c "import numpy as np, sys; from vaecli.runs import load_split
np.savez(sys.argv[1], test_images=load_split('smmnist', 'test').images[: int(sys.argv[2])])" \
    "$subset.$$.tmp.npz" "$videos"
  mv "$subset.$$.tmp.npz" "$subset"  # a file per queue: two queues starting at once both succeed
fi

evaluate() {  # the run's results as JSON beside it
  local file="$1" json="${1%.h5}.json"
  [[ -f "$json" ]] && return 0
  echo "== $(date -u +%FT%TZ) evaluating $file"
  taskset -c "$core" python3 -m vaecli eval "$file" --metric elbo --metric bpd --metric kl --metric mse \
    --device cpu --json > "$file.test.tmp"
  taskset -c "$core" python3 -m vaecli eval "$file" --metric ssim --metric psnr --future-samples "$futures" \
    --data "$subset" --device cpu --no-store --json > "$file.predict.tmp"
  python3 - "$file.test.tmp" "$file.predict.tmp" <<'PY'
import json, sys
test, predicted = (json.load(open(p)) for p in sys.argv[1:3])
for metric, result in predicted["results"].items():  # scored on the first test videos: say which
    test["results"][metric] = {**result, "videos": result["n"]}
json.dump(test, open(sys.argv[1], "w"))
PY
  python3 "$(dirname "$0")/model_study_result.py" "$file" "$file.test.tmp" > "$json.tmp"
  mv "$json.tmp" "$json"
  rm -f "$file.test.tmp" "$file.predict.tmp"
  echo "wrote $json"
}

for spec in $runs; do
  IFS=: read -r name likelihood beta seed <<< "$spec"
  file="$out/$name-s$seed.h5"
  [[ -f "${file%.h5}.json" ]] && continue  # done: its results are kept even where the run file is not
  claim "$file" || continue
  train_or_resume "$file" taskset -c "$core" python3 -m vaecli train --dataset smmnist --model svg \
    "${model_options[@]}" --likelihood "$likelihood" --beta "$beta" --seed "$seed" --epochs 1000 \
    --time-budget "$budget" "${train_args[@]}" --out "$file" --device cpu --quiet
  evaluate "$file"
  release
done
