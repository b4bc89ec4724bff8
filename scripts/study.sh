#!/usr/bin/env bash
# The decoder study (docs/study.md): every likelihood and the paper's beta sweep of the
# fixed-variance gaussian, same architecture and budget, then the table and the
# rate-distortion picture.  Resumable: rerun it to continue.
#   EPOCHS (5), SEEDS ("0"), DATASETS ("mnist5k fashion-mnist"), FID (500), OUT (study)
set -euo pipefail
epochs="${EPOCHS:-5}"
seeds="${SEEDS:-0}"
out="${OUT:-study}"
seed_args=()
for s in $seeds; do seed_args+=(--seed "$s"); done
for dataset in ${DATASETS:-mnist5k fashion-mnist}; do
  vae sweep --out-dir "$out/$dataset" --dataset "$dataset" --epochs "$epochs" "${seed_args[@]}" \
    --metric elbo --metric bpd --metric nll --metric kl --metric mse --metric active-units \
    --iw-samples 10 --fid-samples "${FID:-500}"
  # each table is written beside its old version and renamed only when complete, so a
  # failure (a damaged run file, say) leaves the last good table as it was
  vae compare "$out/$dataset" --format markdown > "$out/.$dataset.md.tmp"
  mv "$out/.$dataset.md.tmp" "$out/$dataset.md"
  python3 "$(dirname "$0")/study_table.py" "$out/$dataset" > "$out/.$dataset-table.md.tmp"
  mv "$out/.$dataset-table.md.tmp" "$out/$dataset-table.md"
  vae plot "$out/$dataset" --kind rate-distortion -o "$out/$dataset-rd.png"
done
