#!/usr/bin/env bash
# Every GPU check in one call (for a lent GPU machine with torch, cupy, pytest):
#   1. CuPy tests and the torch-CUDA equivalence tests (pytest),
#   2. vae verify on the torch CUDA and CuPy backends (JSON kept),
#   3. the likelihood benchmark (torch eager vs CuPy fused kernels),
#   4. training throughput against the plain loop (float32, bf16, compiled), bf16 vs
#      float32 test ELBO after 10 epochs, evaluation throughput,
# then a short table last.  Logs go to $OUT (or /tmp/gpu_check).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-/tmp/gpu_check}"
mkdir -p "$out"
seed="${SEED:-$RANDOM}"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, cupy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cupy', cupy.__version__, 'devices', torch.cuda.device_count(), cupy.cuda.runtime.getDeviceCount())"

status=0
timeout 270 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_cupy_gpu.py 2>&1 | tee "$out/pytest_cupy.txt" || status=1
timeout 120 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_torch_equivalence.py -k cuda 2>&1 | tail -5 | tee "$out/pytest_torch_cuda.txt" || status=1
timeout 90 python3 -m vaecli verify --backend torch --device cuda --seed "$seed" --json > "$out/verify_torch_cuda.json" || status=1
timeout 120 python3 -m vaecli verify --backend cupy --seed "$seed" --json > "$out/verify_cupy.json" || status=1
timeout 240 python3 benchmarks/likelihood_speed.py --device cuda --compile --json "$out/bench.json" 2>&1 | tee "$out/bench.txt" || status=1
# FID on the GPU: the distance maths on CuPy/torch-CUDA, and (when the 87 MB Inception
# file is there: $VAECLI_INCEPTION, else .weights/inception-2015-12-05.pt) feature extraction
timeout 120 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_fid_math.py 2>&1 | tail -3 | tee "$out/pytest_fid_math.txt" || status=1
weights="${VAECLI_INCEPTION:-.weights/inception-2015-12-05.pt}"
if [ -f "$weights" ]; then
  ( time timeout 240 python3 -m vaecli fid mnist5k:train mnist5k:test --device cuda --inception "$weights" --json \
      > "$out/fid_cuda.json" ) 2> "$out/fid_cuda_time.txt" || status=1
else
  echo "no Inception weights at $weights: GPU feature extraction not measured" | tee "$out/fid_cuda_time.txt"
fi
# training throughput against the plain DataLoader loop (issue 8's baseline), same card
timeout 300 python3 benchmarks/train_throughput.py --device cuda --batch 128 --batch 1024 --epochs 3 --workers 4 \
  --variant float32 --variant bf16 --variant compile --variant compile+bf16 \
  2>&1 | tee "$out/train_throughput.txt" || status=1
# bf16 against float32: test ELBO after 10 epochs on the bundled data (target: within 0.5%)
for precision in float32 bf16; do
  rm -f "/tmp/gpu_prec_$precision.h5"
  timeout 120 python3 -m vaecli train --device cuda --precision "$precision" --epochs 10 --quiet --json \
    --out "/tmp/gpu_prec_$precision.h5" > "$out/precision_$precision.json" || status=1
done
timeout 120 python3 benchmarks/eval_throughput.py --device cuda --nll-images 200 --iw-samples 1000 --fid-images 1000 \
  2>&1 | tee "$out/eval_throughput.txt" || status=1
# the main job on the GPU: the sigma-VAE with the likelihood in torch and in the CuPy kernels
for backend in torch cupy; do
  rm -f "/tmp/gpu_train_$backend.h5"
  timeout 150 python3 -m vaecli train --device cuda --backend "$backend" --epochs 3 --quiet --json \
    --out "/tmp/gpu_train_$backend.h5" > "$out/train_$backend.json" || status=1
  timeout 60 python3 -m vaecli eval "/tmp/gpu_train_$backend.h5" --metric elbo --metric bpd --json \
    > "$out/eval_$backend.json" || status=1
done

python3 - "$out" "$seed" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
print(f"\n== gpu_check summary (seed {sys.argv[2]}) ==")
print((out / "gpu.txt").read_text().strip())
for f in ("pytest_cupy.txt", "pytest_torch_cuda.txt"):
    lines = [l for l in (out / f).read_text().splitlines() if l.strip()] if (out / f).exists() else ["missing"]
    print(f"{f}: {lines[-1]}")
for f in ("verify_torch_cuda.json", "verify_cupy.json"):
    try:
        d = json.loads((out / f).read_text())
    except Exception as exc:
        print(f"{f}: unreadable ({exc})"); continue
    worst = {}
    for r in d["results"]:
        k = r["dtype"]
        worst[k] = max(worst.get(k, 0.0), r["value_max_rel"], r["grad_max_rel"])
    fails = [f"{r['likelihood']}/{r['kind']}/C{r['channels']}/{r['dtype']}" for r in d["results"] if not r["passed"]]
    print(f"{f}: {d['passed']} passed, {d['failed']} failed, skipped {d['skipped'] or '-'}; "
          f"worst rel error {worst}; failing: {fails[:8]}")
for backend in ("torch", "cupy"):
    try:
        t = json.loads((out / f"train_{backend}.json").read_text())["last_epoch"]
        e = json.loads((out / f"eval_{backend}.json").read_text())["results"]
        print(f"train --backend {backend} (3 epochs, cuda): {t['seconds']:.2f} s last epoch, test ELBO "
              f"{t['test_elbo']:.2f}, eval bpd {e['bpd']['value']:.4f}, sigma {t['sigma']:.4f}")
    except Exception as exc:
        print(f"train --backend {backend}: failed ({exc})")
try:
    e = {p: json.loads((out / f"precision_{p}.json").read_text())["last_epoch"]["test_elbo"] for p in ("float32", "bf16")}
    print(f"10 epochs test ELBO: float32 {e['float32']:.2f}, bf16 {e['bf16']:.2f}, "
          f"difference {100 * (e['bf16'] - e['float32']) / abs(e['float32']):+.2f}%")
except Exception as exc:
    print(f"precision check: failed ({exc})")
for f in ("pytest_fid_math.txt", "fid_cuda_time.txt", "train_throughput.txt", "eval_throughput.txt"):
    if (out / f).exists():
        print(f"{f}: " + " | ".join(l.strip() for l in (out / f).read_text().splitlines() if l.strip())[-200:])
bench = out / "bench.txt"
if bench.exists():
    print("\n".join(l for l in bench.read_text().splitlines() if l.startswith(("|", "likelihood"))))
PY
exit $status
