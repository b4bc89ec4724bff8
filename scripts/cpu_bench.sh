#!/usr/bin/env bash
# The CPU benchmarks of docs/performance.md in one go (run by hand on a quiet machine):
# training throughput against the plain loop (float32, bf16, compiled), evaluation
# throughput, likelihood forward+backward (eager and compiled), and bf16 against
# float32 test ELBO after the main job's 10 epochs.  Output in $OUT (/tmp/cpu_bench).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/cpu_bench}"
mkdir -p "$out"
{ date -u; uname -m; nproc; python3 -c "import torch; print('torch', torch.__version__, 'threads', torch.get_num_threads())"; } \
  | tee "$out/machine.txt"
python3 benchmarks/train_throughput.py --device cpu --batch 128 --batch 1024 --epochs 3 \
  --variant float32 --variant bf16 --variant compile 2>&1 | grep -v Warning | tee "$out/train_throughput.txt"
python3 benchmarks/eval_throughput.py --device cpu --nll-images 20 --iw-samples 1000 --fid-images 200 --repeats 2 \
  2>&1 | tee "$out/eval_throughput.txt"
python3 benchmarks/likelihood_speed.py --device cpu --compile --iters 20 2>&1 | grep -v Warning \
  | tee "$out/likelihood_speed.txt"
for precision in float32 bf16; do
  rm -f "$out/main_$precision.h5"
  /usr/bin/time -f "%e s wall" vae train --precision "$precision" --quiet --json --out "$out/main_$precision.h5" \
    > "$out/main_$precision.json" 2> "$out/main_${precision}_time.txt"
  vae eval "$out/main_$precision.h5" --metric elbo --metric bpd --json > "$out/main_${precision}_eval.json"
done
python3 - "$out" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
for p in ("float32", "bf16"):
    t = json.loads((out / f"main_{p}.json").read_text())["last_epoch"]
    e = json.loads((out / f"main_{p}_eval.json").read_text())["results"]
    wall = (out / f"main_{p}_time.txt").read_text().strip().splitlines()[-1]
    print(f"main job, --precision {p}: test ELBO {t['test_elbo']:.2f} (history), eval ELBO {e['elbo']['value']:.2f}, "
          f"bpd {e['bpd']['value']:.4f}, train {wall}, mean epoch {t['seconds']:.2f} s (last)")
PY
