"""The analysis scripts of docs/study.md compute what vaecli computes."""

import importlib.util
from pathlib import Path

import pytest
import torch

from vaecli.backends import torch_backend

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["student-t", "gaussian-pixel"])
def test_floor_share_pixel_densities_sum_to_the_decoders_log_prob(name):
    floor_share = _script("floor_share")
    gen = torch.Generator().manual_seed(0)
    channels = 3 if name == "student-t" else 2
    raw = 3 * torch.randn(4, channels, 5, 6, generator=gen, dtype=torch.float64) - 2  # some scales at the floor
    x = torch.randint(0, 256, (4, 1, 5, 6), generator=gen, dtype=torch.uint8)
    log_p, log_scale = floor_share.pixel_log_density(name, x.double() / 255, raw)
    assert log_p.shape == log_scale.shape == x.shape
    assert (log_scale < floor_share.LOG_SIGMA_MIN + floor_share.NEAR_FLOOR).any()
    torch.testing.assert_close(log_p.sum((1, 2, 3)), torch_backend.log_prob(name, x, raw), rtol=1e-12, atol=1e-9)


def test_floor_share_refuses_a_decoder_without_a_per_pixel_scale():
    with pytest.raises(SystemExit, match="no per-pixel scale"):
        _script("floor_share").pixel_log_density("sigma", torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))


def _run_study_table(directory):
    import subprocess
    import sys

    return subprocess.run([sys.executable, str(SCRIPTS / "study_table.py"), str(directory)], capture_output=True,
                          text=True, timeout=300)


def test_study_table_sorts_betas_as_numbers_and_fails_in_one_line(tmp_path):
    import numpy as np
    from click.testing import CliRunner

    from vaecli.cli import main

    data = tmp_path / "d.npz"
    np.savez(data, images=np.random.default_rng(0).integers(0, 256, (60, 1, 8, 8), dtype=np.uint8))
    sweep = tmp_path / "sweep"
    result = CliRunner().invoke(main, ["sweep", "--out-dir", str(sweep), "--dataset", str(data), "--likelihood",
                                       "gaussian", "--beta", "10", "--beta", "2", "--epochs", "1", "--batch-size",
                                       "32", "--latent-dim", "2", "--device", "cpu", "--metric", "elbo"])
    assert result.exit_code == 0, result.output
    table = _run_study_table(sweep)
    assert table.returncode == 0, table.stderr
    rows = [line.split(" | ")[0] for line in table.stdout.splitlines()[2:] if line.startswith("| gaussian")]
    assert rows == ["| gaussian β=2", "| gaussian β=10"]
    (sweep / "damaged.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    table = _run_study_table(sweep)
    assert table.returncode == 1 and "Traceback" not in table.stderr
    assert table.stderr.strip().startswith("Error: ") and "damaged.h5" in table.stderr
    empty = _run_study_table(tmp_path / "nothing")
    assert empty.returncode == 1 and "no run files (*.h5) here" in empty.stderr


def test_a_stripped_run_evaluates_as_the_original_and_refuses_to_resume(tmp_path):
    import json

    import numpy as np
    from click.testing import CliRunner

    from fakes import blob_images
    from vaecli import VaeError, runfile
    from vaecli.cli import main

    data = tmp_path / "d.npz"
    np.savez(data, images=blob_images(40, size=8))
    run = tmp_path / "r.h5"
    train = ["train", "--data", str(data), "--epochs", "1", "--latent-dim", "2", "--width", "4", "--batch-size", "16",
             "--device", "cpu", "-q", "--out", str(run)]
    assert CliRunner().invoke(main, train).exit_code == 0
    assert CliRunner().invoke(main, ["eval", str(run), "--metric", "bpd", "--device", "cpu"]).exit_code == 0
    strip = _script("strip_run")
    out = tmp_path / "s.h5"
    strip.strip(str(run), str(out))
    a, b = runfile.read(run), runfile.read(out)
    assert b.optimizer is None and b.attrs["stripped"] and out.stat().st_size < run.stat().st_size
    assert b.evaluations == a.evaluations and b.history.keys() == a.history.keys()
    again = CliRunner().invoke(main, ["eval", str(out), "--metric", "bpd", "--device", "cpu", "--json", "--no-store"])
    assert json.loads(again.stdout)["results"]["bpd"]["value"] == a.evaluations["test"]["bpd"]["value"]
    with pytest.raises(VaeError, match="no optimizer state to resume from"):
        from vaecli.training import train as train_run

        train_run(a.config.replace(epochs=2), out, resume=True, progress=False)
