"""`vae train|eval|fid --nproc N ...`: the same command again under torchrun on this
machine, with signals passed on and failures said in one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from ..errors import VaeError


def launch_data_parallel(nproc, out, what="training"):
    """Run this command line (less --nproc) under torchrun with ``nproc`` processes."""
    args, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            args.append(a)
    cmd = [sys.executable, "-m", "vaecli.cli.torchrun", str(nproc), *args]  # (not torchrun's parser: see there)
    proc = subprocess.Popen(cmd, preexec_fn=_die_with_parent, env=rank_environment(nproc))

    def forward(signum, frame):
        # Ctrl-C in a terminal reaches torchrun and the ranks too (one process group):
        # they stop together and checkpoint, so SIGINT is only waited for.  A SIGTERM
        # (a scheduler's, or kill PID) reaches this process alone: torchrun gets it.
        if signum == signal.SIGTERM:
            proc.send_signal(signal.SIGTERM)

    # a handler, not SIG_IGN, which children would inherit
    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        returncode = proc.wait()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if returncode != 0:
        raise VaeError(_failure(returncode, out, what))


def rank_environment(nproc, environ=None) -> dict:
    """The ranks' environment: unless OMP_NUM_THREADS is set, each rank gets its share of
    the cores this process may use (torchrun would give each one thread, and say so in a
    banner)."""
    env = dict(os.environ if environ is None else environ)
    if not env.get("OMP_NUM_THREADS"):
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        env["OMP_NUM_THREADS"] = str(max(1, cores // nproc))
    return env


def _failure(returncode, out, what) -> str:
    if what != "training":
        unchanged = f"; {out} is unchanged" if out else ""
        return (f"data-parallel {what} failed: a worker exited with code {returncode} "
                f"(its error is above){unchanged}")
    status = _run_status(out)
    if status["status"] == "interrupted":
        return (f"data-parallel training interrupted after epoch {status['epochs_done']} + "
                f"{status['step_in_epoch']} steps; saved {out}; continue with --resume")
    where = (f"the last checkpoint in {out} is intact; continue with --resume" if os.path.exists(out)
             else "no checkpoint was written")
    return f"data-parallel training failed: a worker exited with code {returncode} (its error is above); {where}"


def _die_with_parent():
    """In the torchrun child, before it starts (Linux): SIGTERM it when this launcher
    dies, even by SIGKILL, so that torchrun stops its ranks instead of leaving them
    running as orphans.  Elsewhere nothing."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _run_status(path):
    """The status, epochs done and step in epoch of a run file ({"status": None} when unreadable)."""
    from .. import runfile

    try:
        run = runfile.read(path)
    except (OSError, VaeError):
        return {"status": None}
    return {"status": run.attrs.get("status"), "epochs_done": int(run.attrs.get("epochs_done", 0)),
            "step_in_epoch": int(run.progress.get("step_in_epoch", 0))}
