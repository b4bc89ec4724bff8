"""Out-of-range options are refused where they are parsed, with the reason, and sizes
are checked against a memory estimate before anything is allocated: one line each."""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from vaecli.cli import main  # noqa: E402

SCHEMA1 = Path(__file__).parent / "data" / "schema1_sigma.h5"


def _one_line_error(args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.mark.parametrize("value", ["1", "0.7", "710", "1e300"])
def test_a_log_sigma_floor_above_ln_2_is_refused_with_the_reason(tmp_path, value):
    line = _one_line_error(["train", "--out", str(tmp_path / "r.h5"), "--log-sigma-min", value])
    assert "log_sigma_min must be at most ln 2 = 0.6931" in line and "PMF calibration" in line
    assert not (tmp_path / "r.h5").exists()


def test_a_beta_beyond_float32_is_refused(tmp_path):
    line = _one_line_error(["train", "--out", str(tmp_path / "r.h5"), "--beta", "3.5e38"])
    assert "beta must be >= 0 and finite in float32 (at most 3.403e+38), got 3.5e+38" in line


@pytest.mark.parametrize("args, what", [
    (["--latent-dim", "1000000000"], "conv (latent_dim 1000000000, width 32) on 1x28x28 images needs about"),
    (["--width", "1000000"], "conv (latent_dim 20, width 1000000) on 1x28x28 images needs about"),
    (["--likelihood", "logistic-mixture", "--mixtures", "1000000"], "on 1x28x28 images needs about"),
])
def test_a_model_too_large_for_memory_is_refused_before_allocating(tmp_path, args, what):
    line = _one_line_error(["train", "--out", str(tmp_path / "r.h5"), "--epochs", "1", "--device", "cpu", *args])
    assert what in line and "but cpu has" in line and "available; ask for less" in line
    assert not (tmp_path / "r.h5").exists()


def test_huge_training_images_are_refused_before_allocating(tmp_path):
    data = tmp_path / "big.npz"
    np.savez(data, images=np.zeros((4, 1, 4096, 4096), np.uint8))
    line = _one_line_error(["train", "--data", str(data), "--out", str(tmp_path / "r.h5"), "--epochs", "1",
                            "--device", "cpu"])
    assert "on 1x4096x4096 images needs about" in line and "activations" in line


def test_a_billion_samples_are_refused_before_drawing(tmp_path):
    line = _one_line_error(["sample", str(SCHEMA1), "-n", "1000000000", "-o", str(tmp_path / "s.png"),
                            "--device", "cpu"])
    assert "1000000000 prior samples (their noise and uint8 pictures) needs about" in line
    assert not (tmp_path / "s.png").exists()
