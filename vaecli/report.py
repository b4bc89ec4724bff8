"""The text vaecli prints: epoch lines, and what ``vae eval``, ``vae info``, ``vae
compare`` and ``vae verify`` show.  Pure formatting of values computed elsewhere."""

from __future__ import annotations

import csv
import io
import json
import math

from .errors import VaeError


def objective_name(config) -> str:
    """"ELBO", or "objective" where the training objective is no ELBO (sigma-image,
    bernoulli on non-binary data; `vae eval` calls their ELBO not applicable)."""
    from .evaluate import applicability

    return "ELBO" if applicability(config.likelihood, "elbo", config.binarize)[0] else "objective"


# ------------------------------------------------------------------------ training

def epoch_line(history, config) -> str:
    i = -1
    what = objective_name(config)
    train = (f"{history['train_elbo'][i]:.2f}" if math.isfinite(history["train_elbo"][i])
             else "n/a (no finite step in this epoch)")
    text = (f"epoch {history['epoch'][i]}: train {what} {train}, "
            f"test {what} {history['test_elbo'][i]:.2f} nats (KL {history['test_kl'][i]:.2f})")
    if not math.isnan(history["sigma"][i]):
        text += f", sigma {history['sigma'][i]:.4f} (beta-equivalent {history['equivalent_beta'][i]:.4g})"
    if history["skipped_steps"][i]:
        text += f", {history['skipped_steps'][i]} non-finite steps skipped"
    return text


def progress_postfix(epoch, loss, kl, lik, x, raw) -> str:
    """The progress bar's text: loss, KL and (one shared sigma) the decoder sigma."""
    text = f"epoch {epoch} loss {float(loss.detach()):.1f} KL {float(kl.detach().mean()):.1f}"
    info = lik.info
    if info.gaussian_family and "log_sigma" not in info.params:
        from_batch = info.separable in ("batch", "image")  # sigma* of this batch (or its images)
        try:
            sigma = lik.current_sigma(x if from_batch else None, raw if from_batch else None)
            text += f" sigma {sigma:.4f}"
        except VaeError:
            pass
    return text


def train_summary(run) -> dict:
    history = {k: [float(v) for v in vals] for k, vals in run.history.items()}
    last = {k: v[-1] for k, v in history.items()} if history.get("epoch") else {}
    return {"run": run.path, "status": run.attrs.get("status"), "epochs_done": int(run.attrs.get("epochs_done", 0)),
            "config": json.loads(run.config.to_json()), "last_epoch": last, "calibration": run.calibration,
            "cuda_graph": run.attrs.get("cuda_graph", "not recorded")}


def trained_line(run, summary) -> str | None:
    """`vae train`'s closing line (None when no epoch was trained)."""
    from .evaluate import applicability

    last = summary["last_epoch"]
    if not last:
        return None
    config = run.config
    is_elbo, why = applicability(config.likelihood, "elbo", config.binarize)
    what, note = ("ELBO", "") if is_elbo else ("objective", f" (not an ELBO: {why})")
    return (f"trained {config.likelihood} for {summary['epochs_done']} epochs on {run.attrs['dataset']}: "
            f"test {what} {last['test_elbo']:.2f} {per_example(run)}{note}")


def per_example(run) -> str:
    """The unit of a run's per-example nats: a video model's examples are videos."""
    return "nats/video" if len(run.attrs.get("image_shape") or ()) == 4 else "nats/image"


# ---------------------------------------------------------------------- evaluation

def eval_lines(run_path, run, results: dict, metrics, n_images: int) -> list:
    first = results[metrics[0]]
    levels = first["data_levels"]
    reduced = "" if levels == 256 else f", {'binarized' if run.config.binarize else f'{levels} levels'}: " \
                                       "bits/dim of that data, not of the 8-bit images"
    lines = [f"{run_path}: {run.config.likelihood} on {first['data']} ({n_images} images{reduced})"]
    if results.get("fid", {}).get("applicable", True) and "fid" in results:
        r = results["fid"]
        verified = "" if r["inception_verified"] else ", UNVERIFIED weights (override)"
        lines.append(f"  {'fid':13s} {r['value']:.4f} ({r['n_generated']} generated vs {r['n_reference']} "
                     f"{r['reference']}{verified})")
    for metric, r in results.items():
        if metric == "fid" and r.get("applicable", True):
            continue
        if not r["applicable"]:
            lines.append(f"  {metric:13s} not applicable: {r['reason']}")
            continue
        extra = ""
        if metric == "nll":
            extra = f"  ({r['bpd']:.4f} bits/dim discrete, K={r['iw_samples']})"
        if metric in ("bpd", "nll") and "pmf_sigma" in r:
            source = f": the {r['pmf_sigma_source']}" if "pmf_sigma_source" in r else ""
            extra += f"  (PMF sigma {r['pmf_sigma']:.4f}{source})"
        if metric == "elbo" and "decoder_sigma" in r:
            extra = f"  (sigma {r['decoder_sigma']:.4f}, equivalent beta {r['equivalent_beta']:.4g})"
        value = f"{r['value']:.0f}" if metric == "active-units" else f"{r['value']:.4f} ± {r['stderr']:.4f}"
        if "best_per_step" in r:  # a video model's ssim or psnr
            value = f"{r['value']:.4f}"
            extra = ("\n" + f"  {'':13s} best per step: " + " ".join(f"{v:.3f}" for v in r["best_per_step"])
                     + "\n" + f"  {'':13s} mean per step: " + " ".join(f"{v:.3f}" for v in r["mean_per_step"]))
        lines.append(f"  {metric:13s} {value} {r['unit']}{extra}")
        if "per_group" in r and len(json.loads(r["per_group"])) > 1:
            groups = json.loads(r["per_group"])
            lines.append(f"  {'':13s} per group: " + ", ".join(
                f"{name} {v:.2f}" if isinstance(v, float) else f"{name} {v}" for name, v in groups.items()))
    return lines


# ---------------------------------------------------------------------------- info

def _groups_text(attrs) -> str:
    """The model's latent groups, top first, where it has more than one."""
    try:
        names = json.loads(attrs.get("latent_groups", "[]"))
    except ValueError:
        return ""
    return f"; {len(names)} latent groups: {', '.join(map(str, names))}" if len(names) > 1 else ""


def _validation_lines(run) -> list:
    """The validation split and early stopping of a run that has them."""
    c = run.config
    if not c.validation:
        return []
    from .config import MONITOR_NAMES
    from .training.state import best_validation

    best = best_validation(run.history, c.min_delta, c.monitor)
    text = (f"validation   {run.attrs.get('num_validation', '?')} images ({c.validation:.0%} of the training split)"
            + (f", best {MONITOR_NAMES[c.monitor]} {best[0]:.4f} at epoch {best[1] + 1}" if best else ""))
    if c.early_stop:
        text += f"; early stop after {c.early_stop} epochs without a gain > {c.min_delta:g} bits/dim"
    return [text]


def info_lines(run_path, run) -> list:
    a, c = run.attrs, run.config
    options = ", ".join(f"{k} {v}" for k, v in c.model_options.items())
    lines = [
        f"run file     {run_path} (schema {a['schema_version']}, vaecli {a['vaecli_version']}, {a.get('status')})",
        f"likelihood   {c.likelihood} (backend {c.backend}, n_bits {c.n_bits}, beta {c.beta})",
        f"model        {c.model} ({options})" + _groups_text(a),
        f"data         {a['dataset']} {tuple(a['image_shape'])}, {a['num_train']} train / {a['num_test']} test, "
        f"sha256 {a['dataset_checksum'][:16]}…",
        f"training     {a['epochs_done']}/{c.epochs} epochs, batch {c.batch_size}, lr {c.lr}, "
        f"seed {c.seed}, device {a['device']}"
        + (f", time budget {c.time_budget:g} s ({math.fsum(run.history.get('seconds', [])):.1f} s trained)"
           if c.time_budget is not None else ""),
        *_validation_lines(run),
        f"step         precision {c.precision}, compile {'on' if c.compile else 'off'}, "
        f"memory {c.memory_format}, CUDA graph {a.get('cuda_graph', 'not recorded')}",
        f"versions     {a.get('library_versions', '?')}",
    ]
    if run.calibration:
        cal = run.calibration
        lines.append(f"eval sigma   {cal['eval_sigma']:.5f} (MSE {cal['mse']:.5f}): {cal['method']}")
        if cal.get("pmf_sigma") is not None:
            lines.append(f"PMF sigma    {cal['pmf_sigma']:.5f}: {cal['pmf_method']}")
        else:
            lines.append("PMF sigma    none stored (an older run file): "
                         "bits/dim use the eval sigma; `vae calibrate` stores one")
    h = run.history
    if len(h.get("epoch", [])):
        lines.append(f"{'epoch':>5s} {'train ELBO':>11s} {'test ELBO':>10s} {'test KL':>8s} {'sigma':>8s} "
                     f"{'seconds':>8s}")
        for i in range(len(h["epoch"])):
            lines.append(f"{int(h['epoch'][i]):5d} {h['train_elbo'][i]:11.2f} {h['test_elbo'][i]:10.2f} "
                         f"{h['test_kl'][i]:8.2f} {h['sigma'][i]:8.4f} {h['seconds'][i]:8.1f}")
    for split, metrics in run.evaluations.items():
        for metric, r in metrics.items():
            if r.get("applicable", True) in (False, 0):
                lines.append(f"eval {split:6s} {metric:13s} not applicable: {r.get('reason')}")
            else:
                lines.append(f"eval {split:6s} {metric:13s} {r['value']:.4f} ± {r.get('stderr', 0):.4f} {r['unit']}")
    for name, (arr, _) in run.samples.items():
        lines.append(f"samples      {name} {arr.shape}")
    return lines


# ------------------------------------------------------------------------- compare

def _number(v):
    """None for a missing or non-finite value: empty in tables, null in JSON."""
    return None if v is None or not math.isfinite(float(v)) else float(v)


def compare_row(path, run, split) -> dict:
    c, h = run.config, run.history
    last_elbo = _number(h["test_elbo"][-1]) if len(h.get("test_elbo", [])) else None
    row = {"run": path, "status": run.attrs.get("status"), "model": c.model, "likelihood": c.likelihood,
           "beta": c.beta, "epochs": int(run.attrs.get("epochs_done", 0)), "dataset": run.attrs["dataset"],
           "seed": c.seed,
           # the training objective of sigma-image and non-binary bernoulli is no ELBO
           "test_elbo": last_elbo if objective_name(c) == "ELBO" or last_elbo is None else "n/a",
           "sigma": _number(run.eval_sigma if run.eval_sigma is not None else
                            (h["sigma"][-1] if len(h.get("sigma", [])) else None))}
    if run.calibration.get("pmf_sigma") is not None:
        row["pmf_sigma"] = float(run.calibration["pmf_sigma"])
    for metric, r in run.evaluations.get(split, {}).items():
        row[metric] = r["value"] if r.get("applicable", True) not in (False, 0) else "n/a"
        if metric == "nll" and "bpd" in r:
            row["nll_bpd"] = r["bpd"]
    return row


def table(rows, fmt: str) -> str:
    """Rows of dicts as markdown, csv or json text."""
    from .cli.common import jsonable

    columns = list(dict.fromkeys(k for r in rows for k in r))
    if fmt == "json":
        return json.dumps(jsonable(rows), indent=2, allow_nan=False)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue().rstrip("\n")

    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e-2 else f"{v:.4f}" if abs(v) < 100 else f"{v:.2f}"
        return "" if v is None else str(v).replace("|", "\\|")  # a | would start a column

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k in columns) + " |" for r in rows]
    return "\n".join(lines)


# -------------------------------------------------------------------------- verify

def verify_lines(results, skipped, seed) -> list:
    lines = [f"seed {seed}; errors are max |backend - reference| and that over max |reference|"]
    if results:
        header = (
            f"{'likelihood':17s} {'kind':8s} {'C':>1s} {'backend':7s} {'device':6s} {'dtype':7s} "
            f"{'value abs':>10s} {'value rel':>10s} {'grad abs':>10s} {'grad rel':>10s}  result"
        )
        lines += [header, "-" * len(header)]
    for r in results:
        status = ("pass" if r.passed else "FAIL") + (f" ({r.message})" if r.message else "")
        lines.append(
            f"{r.likelihood:17s} {r.kind:8s} {r.channels:>1d} {r.backend:7s} {r.device:6s} {r.dtype:7s} "
            f"{r.value_max_abs:10.2e} {r.value_max_rel:10.2e} {r.grad_max_abs:10.2e} {r.grad_max_rel:10.2e}  {status}"
        )
    for backend, why in skipped.items():
        lines.append(f"{backend}: not verified: {why}")
    passed = sum(r.passed for r in results)
    lines.append(f"{passed} passed, {len(results) - passed} failed")
    return lines
