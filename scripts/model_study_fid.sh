#!/usr/bin/env bash
# FID with 10,000 prior samples of each run of the model study (docs/models.md), on the
# weights-only run files committed in docs/models-study/runs/, so that the number belongs
# to the weights anyone can download.  Against Fashion-MNIST's test split (10,000 images;
# its Inception statistics are computed once and cached).
#
#   scripts/model_study_fid.sh docs/models-study/runs/*.h5
#
# Writes docs/models-study/fid/NAME.json per run (vae eval --json); a run with its JSON
# is skipped, so an interrupted pass resumes where it stopped.  Environment: FID (10000
# samples), NPROC (2 processes, one core each), FID_OUT (docs/models-study/fid),
# TEMPERATURE (1; another, say 0.8, samples every latent group at it and writes
# NAME-tT.json: TEMPERATURE=0.8 scripts/model_study_fid.sh docs/models-study/runs/hvae-*.h5).
set -euo pipefail
out="${FID_OUT:-docs/models-study/fid}"
samples="${FID:-10000}"
nproc="${NPROC:-2}"
temperature="${TEMPERATURE:-1}"
suffix=""
[[ "$temperature" != 1 ]] && suffix="-t$temperature"
mkdir -p "$out"
for file in "$@"; do
  json="$out/$(basename "${file%.h5}")$suffix.json"
  if [[ -f "$json" ]]; then echo "-- $json exists"; continue; fi
  echo "== $(date -u +%FT%TZ) FID of $file, $samples samples at temperature $temperature, $nproc processes"
  python3 -m vaecli eval "$file" --metric fid --fid-samples "$samples" --fid-temperature "$temperature" \
    --device cpu --nproc "$nproc" \
    --no-store --json > "$json.tmp"
  mv "$json.tmp" "$json"
  echo "wrote $json"
done
