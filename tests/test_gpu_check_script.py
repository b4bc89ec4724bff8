"""scripts/gpu_check.sh runs through on a machine without a GPU when its commands are
stood in for: each benchmark is called with the JSON path that the targets table reads,
the step log and the summary come out, and the table of targets is printed last.  This
is what a lent GPU's few minutes must not be spent finding out."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SHIM = """#!/usr/bin/env bash
# python3 stand-in: the summary (python3 - ...) and the targets table run for real;
# every other command is logged and succeeds without doing anything
if [ "${1:-}" = "-" ] || [ "${1:-}" = "scripts/gpu_targets.py" ]; then exec "$REAL_PYTHON" "$@"; fi
echo "$*" >> "$COMMAND_LOG"
"""


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout")
def test_gpu_check_calls_each_benchmark_with_the_json_the_targets_table_reads(tmp_path):
    from test_gpu_targets import gpu_targets

    bin_dir, out, log = tmp_path / "bin", tmp_path / "out", tmp_path / "commands.txt"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(SHIM)
    (bin_dir / "nvidia-smi").write_text("#!/usr/bin/env bash\necho 'Stand-in GPU, 0.0, 1 MiB'\n")
    for shim in bin_dir.iterdir():
        shim.chmod(0o755)
    packed = tmp_path / "device-out"
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", REAL_PYTHON=sys.executable,
               COMMAND_LOG=str(log), OUT=str(out), SEED="7", PACK_TO=str(packed))
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "command not found" not in done.stderr and "unbound variable" not in done.stderr, done.stderr
    commands = log.read_text().splitlines()
    for name in gpu_targets.INPUTS:  # every file the table reads is one that a benchmark writes
        assert sum(f"--json {out / name}" in c for c in commands) == 1, (name, commands)
    benchmarks = {c.split()[0] for c in commands if c.startswith("benchmarks/")}
    assert benchmarks == {"benchmarks/train_throughput.py", "benchmarks/step_profile.py",
                          "benchmarks/likelihood_speed.py", "benchmarks/precision_study.py",
                          "benchmarks/eval_throughput.py"}
    study, control = [c for c in commands if c.startswith("benchmarks/precision_study.py")]
    assert "--device cuda" in study and "--time-limit 60" in study and "--pair" not in study
    assert "--pair float32 channels_last" in control
    steps = (out / "steps.txt").read_text().splitlines()
    assert any(s.startswith("precision study: rc 0") for s in steps) and not any("skipped (budget" in s for s in steps)
    # the summary, then the targets table, last
    lines = done.stdout.rstrip().splitlines()
    assert "== gpu_check summary (seed 7) ==" in done.stdout and "Stand-in GPU" in done.stdout
    table_at = lines.index("issue 8 targets, Stand-in GPU, 0.0, 1 MiB")
    assert all(line.startswith("|") for line in lines[table_at + 1:])
    assert lines[-1] == "| bf16 within 0.5% of float32's test ELBO | not measured | n/a |"
    assert (out / "targets.md").read_text().splitlines()[0] == lines[table_at]
    # the bf16 study and its control run before the compiled step, a reference row only
    order = [s.split(":")[0] for s in steps]
    assert order.index("rounding control") < order.index("train throughput, compiled")
    # the device tool returns at most 8 files: PACK_TO gets the logs in one archive
    import tarfile

    assert sorted(p.name for p in packed.iterdir()) == ["gpu_check.tgz", "steps.txt", "targets.md"]
    with tarfile.open(packed / "gpu_check.tgz") as tar:
        names = tar.getnames()
    assert f"{out.name}/steps.txt" in names and f"{out.name}/targets.md" in names and len(names) > 8
