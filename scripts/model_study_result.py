"""One run of the model study as JSON (scripts/model_study.sh): its settings, training
seconds and throughput, parameters, the per-group KL history and its evaluations.

    python scripts/model_study_result.py RUN.h5 TEST.json [MNIST5K.json] > RUN.json

The held-out evaluation is optional (the sequence study, scripts/svg_study.sh, has none).
"""

from __future__ import annotations

import json
import sys

from vaecli import runfile


def result(run_path, test_path, held_out_path=None) -> dict:
    run = runfile.read(run_path)
    seconds = [float(s) for s in run.history["seconds"]]
    full = seconds[:-1] or seconds  # the last epoch may have ended early, at the budget
    return {
        "run": run_path, "model": run.config.model, "likelihood": run.config.likelihood, "seed": run.config.seed,
        "model_options": run.config.model_options, "time_budget": run.config.time_budget,
        "epochs": int(run.attrs["epochs_done"]), "trained_seconds": sum(seconds),
        "images_per_second": int(run.attrs["num_train"]) * len(full) / sum(full),
        "parameters": int(sum(v.size for k, v in run.model.items())),
        "latent_groups": json.loads(run.attrs["latent_groups"]),
        "beta": run.config.beta, "validation": run.config.validation, "early_stop": run.config.early_stop,
        "min_delta": run.config.min_delta, "monitor": run.config.monitor, "epochs_limit": run.config.epochs,
        "test_elbo_history": [float(v) for v in run.history["test_elbo"]],
        **{f"{k}_history": [float(x) for x in run.history[k]] for k in ("val_bpd", "val_loss", "sigma", "equivalent_beta")
           if k in run.history},
        "test_kl_groups_history": {k: [float(x) for x in v] for k, v in run.history.items()
                                   if k.startswith("test_kl_group")},
        "test": json.load(open(test_path)),
        **({"mnist5k": json.load(open(held_out_path))} if held_out_path else {}),
        "library_versions": run.attrs["library_versions"], "device": run.attrs["device"],
    }


if __name__ == "__main__":
    json.dump(result(*sys.argv[1:4]), sys.stdout, indent=1)
    print()
