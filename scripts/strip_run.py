"""A weights-only copy of a complete run file (no Adam state), for keeping a study's
trained models small: `vae eval`, `sample`, `fid`, `info` and `compare` read it as the
original; it cannot be resumed.

    python scripts/strip_run.py RUN.h5 OUT.h5
"""

from __future__ import annotations

import sys

from vaecli import VaeError, runfile


def strip(path, out):
    run = runfile.read(path)
    if run.attrs.get("status") != "complete":
        raise VaeError(f"{path}: only a complete run is stripped (this one is {run.attrs.get('status')})")
    attrs = {k: v for k, v in run.attrs.items()
             if k not in ("format", "schema_version", "vaecli_version", "units", "config", "updated")}
    runfile.write(out, config=run.config, attrs={**attrs, "stripped": "weights only: the Adam state was removed"},
                  model=run.model, optimizer=None, rng=run.rng, progress=run.progress, history=run.history,
                  calibration=run.calibration, samples=run.samples, ema=run.ema or None)
    for key, results in run.evaluations.items():
        runfile.store_evaluation(out, key, results)


if __name__ == "__main__":
    try:
        strip(*sys.argv[1:3])
    except VaeError as exc:
        sys.exit(f"Error: {exc}")
