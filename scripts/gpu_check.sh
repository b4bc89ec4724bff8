#!/usr/bin/env bash
# Every GPU check in one call (for a lent GPU machine with torch, cupy, pytest), most
# important first, each step capped so that the whole fits in BUDGET_S seconds (550:
# one device call is at most 600 s); a step that would not fit is skipped and listed:
#   1. the captured-step and torch-CUDA equivalence tests (pytest),
#   2. training throughput against the plain loop (CUDA graph in float32, bf16 and channels-last
#      memory; seeds 0 and 1; the eager step was measured at the plain loop's speed before),
#      then where the step's time goes: ms per step and its kernels by time, captured and
#      eager, float32 and bf16, contiguous and channels-last memory (benchmarks/step_profile.py);
#      and the hierarchical VAE's throughput against its plain loop, then 3 epochs of it with its
#      stability defaults (does that step capture?), and the sequence model (svg) for 2
#      epochs of the sequence study's configuration with its bits/dim, SSIM and PSNR,
#   3. the likelihood benchmark (torch eager, CuPy fused under each gradient policy,
#      torch.compile with BENCH_COMPILE=1; each also replayed from a CUDA graph),
#   4. the CuPy tests and `vae verify` on both GPU backends,
#   5. bf16 against float32: paired seeds' test ELBO after PREC_EPOCHS epochs, in one
#      process, as many of PREC_PAIRS pairs as fit in 60 s (the seed alone moves the
#      ELBO by several percent, docs/performance.md; benchmarks/precision_study.py),
#   6. the precision study's rounding control (float32 against float32 with channels-last
#      convolutions, 30 s),
#   7. training throughput of the compiled step (not compile+bf16: its capture failed on
#      an H200 with torch 2.11; such a step is now captured uncompiled, which step 1's
#      tests check, so its row would time the bf16 step again after a compile), the main
#      job on the GPU with each backend, evaluation throughput, FID features,
# then the summary and, last, the table of issue 8's targets (scripts/gpu_targets.py).
# Logs go to $OUT (or /tmp/gpu_check).  ONLY='regex' runs just
# the steps whose names match it (grep -E), for a second call that completes a first.
# PACK_TO=DIR: at the end (also after an error) the logs are packed into
# DIR/gpu_check.tgz, with steps.txt and targets.md beside it: the device tool returns
# at most 8 files from its $OUT, and this run writes about 27.  On the device:
#   PACK_TO=$OUT OUT=/tmp/gpu_check BUDGET_S=550 bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-/tmp/gpu_check}"
mkdir -p "$out"
pack() {
  if [ -n "${PACK_TO:-}" ]; then
    mkdir -p "$PACK_TO"
    tar czf "$PACK_TO/gpu_check.tgz" -C "$(dirname "$out")" "$(basename "$out")"
    cp "$out/steps.txt" "$PACK_TO/" 2>/dev/null
    cp "$out/targets.md" "$PACK_TO/" 2>/dev/null
  fi
  return 0
}
trap pack EXIT
seed="${SEED:-$RANDOM}"
budget="${BUDGET_S:-550}"
repeat="${REPEAT:-15}"  # training throughput: passes over mnist5k's 4,000 images per epoch
BENCH_COMPILE="${BENCH_COMPILE-}"  # BENCH_COMPILE=1 adds torch.compile rows to the likelihood benchmark
                                   # (a compile per likelihood and variant: a minute or two more)
t0=$(date +%s)
: > "$out/steps.txt"
# the targets table reads these: none may be left from an earlier run in the same folder
rm -f "$out"/{train_throughput,train_throughput_hvae,train_throughput_compiled,bench,precision_study,rounding_control,step_profile}.json

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, cupy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cupy', cupy.__version__, 'devices', torch.cuda.device_count(), cupy.cuda.runtime.getDeviceCount())"

status=0
# step NAME CAP_S 'shell command': runs it under a timeout of CAP_S or what is left of
# the budget (20 s kept for the summary), logs rc and seconds to steps.txt
step() {
  local name="$1" cap="$2" cmd="$3" left t s0 rc
  if [ -n "${ONLY:-}" ] && ! grep -qE "$ONLY" <<< "$name"; then
    echo "$name: not selected (ONLY=$ONLY)" | tee -a "$out/steps.txt"; return
  fi
  left=$(( t0 + budget - 35 - $(date +%s) ))  # 20 s for the summary, 15 s for timeout's -k
  t=$(( cap < left ? cap : left ))
  if [ "$t" -lt 15 ]; then
    echo "$name: skipped (budget spent)" | tee -a "$out/steps.txt"; return
  fi
  s0=$(date +%s)
  # SIGTERM first (a training run checkpoints after the step in flight), SIGKILL 15 s later
  timeout -k 15 "$t" bash -o pipefail -c "$cmd"
  rc=$?
  echo "$name: rc $rc in $(( $(date +%s) - s0 )) s (limit $t s)" | tee -a "$out/steps.txt"
  [ "$rc" -eq 0 ] || status=1
}

step "pytest captured step + torch cuda" 120 \
  "CUBLAS_WORKSPACE_CONFIG=:4096:8 python3 -m pytest -q -p no:cacheprovider -rfE ${TORCH_TESTS:-tests/test_step.py tests/test_torch_equivalence.py -k 'cuda or captured'} > '$out/pytest_torch_cuda_full.txt' 2>&1; rc=\$?; tail -8 '$out/pytest_torch_cuda_full.txt' > '$out/pytest_torch_cuda.txt'; exit \$rc"
# training throughput against the plain DataLoader loop (issue 8's baseline), same card
step "train throughput" 200 \
  "python3 benchmarks/train_throughput.py --device cuda --batch 128 --batch 1024 --epochs 3 --workers 4 \
     --repeat $repeat --seeds 2 --variant float32 --variant bf16 --variant channels_last \
     --json '$out/train_throughput.json' 2>&1 | tee '$out/train_throughput.txt'"
# the hierarchical VAE (vae train --model hvae): its throughput against the plain loop of
# the same model (stability measures off in both), then a short run with its defaults
# (gradient clipping and skipping, the weights' average) to see whether that step captures
step "train throughput, hvae" 70 \
  "python3 benchmarks/train_throughput.py --device cuda --model hvae --batch 128 --batch 1024 --epochs 3 \
     --workers 4 --repeat $repeat --variant float32 --variant bf16 --json '$out/train_throughput_hvae.json' \
     2>&1 | tee '$out/train_throughput_hvae.txt'"
step "main job hvae" 60 \
  "rm -f /tmp/gpu_train_hvae.h5; python3 -m vaecli train --device cuda --model hvae --epochs 3 --quiet --json \
     --out /tmp/gpu_train_hvae.h5 > '$out/train_hvae.json' && python3 -m vaecli eval /tmp/gpu_train_hvae.h5 \
     --metric elbo --metric bpd --metric kl --json > '$out/eval_hvae.json'"
# the sequence model (vae train --model svg): the sequence study's configuration
# (docs/sequence.md) for 2 epochs of smmnist's 4,000 training videos, then the test
# split's bits/dim and SVG's best-of-100 SSIM and PSNR on the study's first 25 test videos
step "main job svg" 90 \
  "rm -f /tmp/gpu_train_svg.h5; python3 -m vaecli train --device cuda --model svg --dataset smmnist \
     --model-option width=32 --model-option g_dim=64 --model-option rnn_size=128 --lr 0.002 --batch-size 100 \
     --epochs 2 --quiet --json --out /tmp/gpu_train_svg.h5 > '$out/train_svg.json' \
   && python3 -c 'import sys, numpy as np; from vaecli.runs import load_split
np.savez(sys.argv[1], test_images=load_split(\"smmnist\", \"test\").images[:25])' /tmp/smmnist-test-first25.npz \
   && python3 -m vaecli eval /tmp/gpu_train_svg.h5 --metric bpd --metric kl --json > '$out/eval_svg.json' \
   && python3 -m vaecli eval /tmp/gpu_train_svg.h5 --metric ssim --metric psnr --future-samples 100 \
     --data /tmp/smmnist-test-first25.npz --no-store --json > '$out/predict_svg.json'"
step "step profile" 75 \
  "python3 benchmarks/step_profile.py --device cuda --batch 128 --batch 1024 --precision float32 --precision bf16 \
     --memory-format contiguous --memory-format channels_last --eager --profile --json '$out/step_profile.json' \
     2>&1 | { grep --line-buffered -v '^USDT' || true; } | tee '$out/step_profile.txt'"
step "likelihood benchmark" 150 \
  "python3 benchmarks/likelihood_speed.py --device cuda ${BENCH_COMPILE:+--compile} --graph --policies --json '$out/bench.json' 2>&1 | tee '$out/bench.txt'"
step "pytest cupy" 150 \
  "python3 -m pytest -q -p no:cacheprovider -rfE tests/test_cupy_gpu.py > '$out/pytest_cupy_full.txt' 2>&1; rc=\$?; tail -12 '$out/pytest_cupy_full.txt' > '$out/pytest_cupy.txt'; exit \$rc"
step "verify torch cuda" 60 "python3 -m vaecli verify --backend torch --device cuda --seed $seed --json > '$out/verify_torch_cuda.json'"
step "verify cupy" 60 "python3 -m vaecli verify --backend cupy --seed $seed --json > '$out/verify_cupy.json'"
# bf16 against float32 (target: within 0.5% of the test ELBO): PREC_PAIRS paired seeds of
# PREC_EPOCHS epochs in one process, each model evaluated in float32; as many pairs as fit
step "precision study" 80 \
  "python3 benchmarks/precision_study.py --device cuda --seeds ${PREC_PAIRS:-24} --epochs ${PREC_EPOCHS:-10} \
     --time-limit 60 --json '$out/precision_study.json' 2>&1 | tee '$out/precision_study.txt'"
# the same study with a change of rounding alone (float32, channels-last convolutions):
# the spread against which bf16's is read (on the CPU the two spreads were alike)
step "rounding control" 45 \
  "python3 benchmarks/precision_study.py --device cuda --seeds ${PREC_PAIRS:-24} --epochs ${PREC_EPOCHS:-10} \
     --pair float32 channels_last --time-limit 30 --json '$out/rounding_control.json' 2>&1 \
     | tee '$out/rounding_control.txt'"
# the compiled step: a reference row of the targets table, so after the bf16 study and its control
step "train throughput, compiled" 120 \
  "python3 benchmarks/train_throughput.py --device cuda --batch 128 --batch 1024 --epochs 3 --workers 4 \
     --repeat $repeat --variant compile --json '$out/train_throughput_compiled.json' \
     2>&1 | tee '$out/train_throughput_compiled.txt'"
# the main job on the GPU: the sigma-VAE with the likelihood in torch and in the CuPy kernels
for backend in torch cupy; do
  step "main job $backend" 60 \
    "rm -f /tmp/gpu_train_$backend.h5; python3 -m vaecli train --device cuda --backend $backend --epochs 3 --quiet \
       --json --out /tmp/gpu_train_$backend.h5 > '$out/train_$backend.json' && python3 -m vaecli eval \
       /tmp/gpu_train_$backend.h5 --metric elbo --metric bpd --json > '$out/eval_$backend.json'"
done
step "eval throughput" 90 \
  "python3 benchmarks/eval_throughput.py --device cuda --nll-images 200 --iw-samples 1000 --fid-images 1000 \
     2>&1 | tee '$out/eval_throughput.txt'"
step "pytest fid maths" 60 \
  "python3 -m pytest -q -p no:cacheprovider -rfE tests/test_fid_math.py 2>&1 | tail -3 > '$out/pytest_fid_math.txt'"
# FID feature extraction on the GPU when the 87 MB Inception file is there
# ($VAECLI_INCEPTION, else .weights/inception-2015-12-05.pt)
weights="${VAECLI_INCEPTION:-.weights/inception-2015-12-05.pt}"
if [ -f "$weights" ]; then
  step "fid cuda" 90 "python3 -m vaecli fid mnist5k:train mnist5k:test --device cuda --inception '$weights' --json \
    > '$out/fid_cuda.json'"
else
  echo "fid cuda: skipped (no Inception weights at $weights)" | tee -a "$out/steps.txt"
fi

python3 - "$out" "$seed" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
print(f"\n== gpu_check summary (seed {sys.argv[2]}) ==")
print((out / "gpu.txt").read_text().strip())
for f in ("pytest_cupy.txt", "pytest_torch_cuda.txt"):
    lines = [l for l in (out / f).read_text().splitlines() if l.strip()] if (out / f).exists() else ["missing"]
    print(f"{f}: {lines[-1] if lines else 'empty'}")
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
for backend in ("torch", "cupy", "hvae"):
    try:
        t = json.loads((out / f"train_{backend}.json").read_text())["last_epoch"]
        e = json.loads((out / f"eval_{backend}.json").read_text())["results"]
        graph = json.loads((out / f"train_{backend}.json").read_text()).get("cuda_graph")
        print(f"train {'--model' if backend == 'hvae' else '--backend'} {backend} (3 epochs, cuda): {t['seconds']:.2f} s last epoch, test ELBO "
              f"{t['test_elbo']:.2f}, eval bpd {e['bpd']['value']:.4f}, sigma {t['sigma']:.4f}, CUDA graph: {graph}")
    except Exception as exc:
        print(f"train --backend {backend}: failed ({exc})")
try:  # the sequence model: seconds an epoch, test bits/dim, best-of-100 SSIM and PSNR
    t = json.loads((out / "train_svg.json").read_text())["last_epoch"]
    e = json.loads((out / "eval_svg.json").read_text())["results"]
    p = json.loads((out / "predict_svg.json").read_text())["results"]
    print(f"train --model svg (2 epochs of 4,000 videos, cuda): {t['seconds']:.2f} s last epoch "
          f"({4000 / t['seconds']:.0f} videos/s), eval bpd {e['bpd']['value']:.4f}, kl {e['kl']['value']:.2f}; "
          f"25 test videos, best of 100: SSIM {p['ssim']['value']:.4f}, PSNR {p['psnr']['value']:.2f}")
except Exception as exc:
    print(f"train --model svg: failed ({exc})")
for f in ("precision_study.txt", "rounding_control.txt"):  # their per-seed rows stay in the files
    if (out / f).exists():
        print("\n".join(l for l in (out / f).read_text().splitlines()
                        if " against float32, " in l or l.startswith(("float32 test ELBO", "stopped"))
                        or " − float32, " in l))
for f in ("pytest_fid_math.txt", "fid_cuda.json", "eval_throughput.txt"):
    if (out / f).exists():
        print(f"{f}: " + " | ".join(l.strip() for l in (out / f).read_text().splitlines() if l.strip())[-200:])
for f in ("train_throughput.txt", "train_throughput_hvae.txt", "train_throughput_compiled.txt", "bench.txt"):
    if (out / f).exists():
        print("\n".join(l for l in (out / f).read_text().splitlines() if l.startswith(("|", "training", "likelihood"))))
if (out / "step_profile.txt").exists():  # its first table; the kernels per variant stay in the file
    import re
    print("\n".join(l for l in (out / "step_profile.txt").read_text().splitlines()
                    if l.startswith(("training step", "| batch")) or re.match(r"\| \d+ \| (float32|bf16) \|", l)))
print("steps:\n" + (out / "steps.txt").read_text().strip())
PY
# last: issue 8's targets against this run's measurements
echo
python3 scripts/gpu_targets.py "$out" | tee "$out/targets.md"
exit $status
