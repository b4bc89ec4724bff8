#!/usr/bin/env bash
# The sequence study (docs/sequence.md): SVG-LP on stochastic moving MNIST (vaecli's
# smmnist, 4,000 / 1,000 videos of 20 frames at 64x64) with the decoders the sigma-VAE
# paper compares on video, each trained for the same wall-clock budget on one CPU core,
# then evaluated on the 1,000 test videos: ELBO, bits/dim and KL per predicted frame,
# MSE, and SVG's best-of-N SSIM and PSNR per future step.
#
#   scripts/svg_study.sh          train and evaluate the runs of RUNS, one after another
#
# Resumable: a finished run is skipped, an interrupted one resumed (the budget counts its
# training seconds).  Several queues may share the list, one a core (CORE=0 and CORE=1):
# each run is claimed with a lock.  Environment: BUDGET (45m), OUT (study-svg), CORE (0),
# RUNS (name:likelihood:beta:seed words; default below), FUTURES (20 sampled futures a
# test video for SSIM/PSNR), OPTIONS (model options, default below: SVG's architecture
# at half width, to train several epochs in the budget on one core), TRAIN ("--lr 0.002
# --batch-size 100": SVG's Adam settings), CODE=DIR (run vaecli from a fixed worktree;
# start the queue from that directory).
# "svg-beta1e-4" is SVG's setting as the sigma-VAE authors' SVG code trains it: a Gaussian
# of sigma 1 whose log-density is summed over pixels, and beta = 1e-4 on the KL.
set -euo pipefail
if [[ -n "${CODE:-}" ]]; then export PYTHONPATH="$CODE${PYTHONPATH:+:$PYTHONPATH}"; fi
out="${OUT:-study-svg}"
budget="${BUDGET:-45m}"
core="${CORE:-0}"
futures="${FUTURES:-20}"
options="${OPTIONS:-width=32 g_dim=64 rnn_size=128}"
read -r -a train_args <<< "${TRAIN:---lr 0.002 --batch-size 100}"
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

evaluate() {  # the run's results as JSON beside it
  local file="$1" json="${1%.h5}.json"
  [[ -f "$json" ]] && return 0
  echo "== $(date -u +%FT%TZ) evaluating $file"
  taskset -c "$core" python3 -m vaecli eval "$file" --metric elbo --metric bpd --metric kl --metric mse \
    --metric ssim --metric psnr --future-samples "$futures" --device cpu --json > "$file.test.tmp"
  python3 "$(dirname "$0")/model_study_result.py" "$file" "$file.test.tmp" > "$json.tmp"
  mv "$json.tmp" "$json"
  rm -f "$file.test.tmp"
  echo "wrote $json"
}

for spec in $runs; do
  IFS=: read -r name likelihood beta seed <<< "$spec"
  file="$out/$name-s$seed.h5"
  claim "$file" || continue
  train_or_resume "$file" taskset -c "$core" python3 -m vaecli train --dataset smmnist --model svg \
    "${model_options[@]}" --likelihood "$likelihood" --beta "$beta" --seed "$seed" --epochs 1000 \
    --time-budget "$budget" "${train_args[@]}" --out "$file" --device cpu --quiet
  evaluate "$file"
  release
done
