"""The training step: device-side skips of non-finite steps, bf16 autocast, fused Adam."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from vaecli import VaeError  # noqa: E402
from vaecli.config import TrainConfig  # noqa: E402
from vaecli.training.step import (  # noqa: E402
    EpochSums, NonFiniteGuard, TrainStep, capture_failure, fused_state, make_optimizer,
)
from vaecli.runs import build_model  # noqa: E402
from vaecli.training import train  # noqa: E402
from fakes import FakeData  # noqa: E402


def _model(precision="float32", likelihood="sigma"):
    torch.manual_seed(0)
    config = TrainConfig(likelihood=likelihood, model_options=dict(latent_dim=4, width=4), precision=precision)
    model = build_model(config, (1, 12, 12), torch.device("cpu"))
    opt = make_optimizer(model.parameters(), 1e-3)
    step = TrainStep(model, model, opt, beta=1.0, world=1, precision=precision, device="cpu", levels=256)
    return model, opt, step


def _batch(seed=0, n=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, 12, 12), generator=g, dtype=torch.uint8)
    return x, torch.randn(n, 4, generator=g)


def test_a_nonfinite_step_changes_nothing_and_is_counted():
    model, opt, step = _model()
    sums, guard = EpochSums("cpu"), NonFiniteGuard(2, "cpu")
    x, eps = _batch()
    step(x, x, eps, x.shape[0], sums, guard)  # one real step: Adam state exists
    before = {k: v.clone() for k, v in model.state_dict().items()}
    moments = [s["exp_avg"].clone() for s in opt.state.values()]
    bad = eps * float("nan")
    step(x, x, bad, x.shape[0], sums, guard)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    for s, m in zip(opt.state.values(), moments):
        torch.testing.assert_close(s["exp_avg"], m, rtol=0, atol=0)
        assert float(s["step"]) == 1
    assert int(sums.skipped) == 1 and int(sums.images) == x.shape[0]
    assert np.isfinite(float(sums.rec)) and guard.tripped() is None
    step(x, x, bad, x.shape[0], sums, guard)
    assert guard.tripped() == 3  # the 3rd step is the 2nd non-finite one in a row
    step(x, x, eps, x.shape[0], sums, guard)  # a good step resets the run, not the record
    assert guard.tripped() == 3 and int(guard.run) == 0


def test_huge_but_finite_gradients_are_a_step_taken():
    """Gradients of 1e38 in every parameter (float32's maximum is 3.4e38) are finite:
    the step is taken, not skipped; an infinite one in a single parameter is skipped."""
    model, opt, step = _model()
    sums, guard = EpochSums("cpu"), NonFiniteGuard(5, "cpu")
    x, eps = _batch()
    hooks = [p.register_hook(lambda g: torch.full_like(g, 1e38)) for p in model.parameters()]
    step(x, x, eps, x.shape[0], sums, guard)
    assert int(sums.skipped) == 0 and int(sums.images) == x.shape[0]
    for h in hooks:
        h.remove()
    hook = next(model.parameters()).register_hook(lambda g: g * float("inf"))
    step(x, x, eps, x.shape[0], sums, guard)
    hook.remove()
    assert int(sums.skipped) == 1 and int(sums.images) == x.shape[0]


def test_bf16_runs_the_network_in_bf16_and_the_likelihood_in_float32():
    model, _, step = _model("bf16")
    seen = {}
    real = model.likelihood.log_prob

    def spy(x, raw):
        seen["raw"] = raw.dtype
        return real(x, raw)

    model.likelihood.log_prob = spy
    conv_dtypes = []
    hook = model.decoder[0].register_forward_hook(lambda m, i, o: conv_dtypes.append(o.dtype))
    x, eps = _batch()
    loss, kl, raw = step(x, x, eps, x.shape[0], EpochSums("cpu"), NonFiniteGuard(5, "cpu"))
    assert seen["raw"] == torch.float32 and raw.dtype == torch.float32 and kl.dtype == torch.float32
    assert torch.isfinite(loss)
    hook.remove()
    assert conv_dtypes == [torch.bfloat16]  # the network ran under autocast


def test_bf16_training_tracks_float32(tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:12, :12]

    def make(n):
        cx, cy = rng.uniform(3, 9, (2, n, 1, 1))
        return (255 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 6.0))[:, None].round().astype(np.uint8)

    data = (FakeData(make(256)), FakeData(make(64), split="test", checksum="1" * 64))
    elbo = {}
    for precision in ("float32", "bf16"):
        config = TrainConfig(epochs=3, batch_size=32, model_options=dict(latent_dim=4, width=8), seed=3, precision=precision)
        run = train(config, tmp_path / f"{precision}.h5", data=data, progress=False)
        elbo[precision] = run.history["test_elbo"][-1]
        assert run.config.precision == precision
    # same trajectory up to bf16 rounding of the network (measured: -10.634 vs -10.655 nats)
    assert abs(elbo["bf16"] - elbo["float32"]) < 0.02 * abs(elbo["float32"]) + 0.5, elbo


def test_unknown_precision_is_one_clear_error():
    with pytest.raises(VaeError, match="precision must be float32 or bf16"):
        TrainConfig(precision="fp8")


def test_an_adam_state_from_before_the_fused_kernel_loads_and_skips():
    params = [torch.nn.Parameter(torch.ones(3))]
    plain = torch.optim.Adam(params, lr=0.1)
    params[0].grad = torch.ones(3)
    plain.step()
    state = plain.state_dict()
    assert state["param_groups"][0]["fused"] in (None, False)
    fused = make_optimizer(params, 0.1)
    fused.load_state_dict(fused_state(state))
    assert fused.param_groups[0]["fused"] is True
    params[0].grad = torch.full((3,), float("nan"))
    fused.found_inf = torch.ones(())
    fused.step()
    torch.testing.assert_close(params[0].detach(), torch.full((3,), 0.9))
    fused.found_inf = torch.zeros(())
    params[0].grad = torch.ones(3)
    fused.step()
    assert float(fused.state[params[0]]["step"]) == 2
    torch.testing.assert_close(params[0].detach(), torch.full((3,), 0.8))


def test_compiled_forward_follows_the_eager_trajectory(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (64, 1, 8, 8)).astype(np.uint8)
    data = (FakeData(x), FakeData(x[:16], split="test", checksum="1" * 64))
    elbo = {}
    for compiled in (False, True):
        config = TrainConfig(epochs=1, batch_size=16, model_options=dict(latent_dim=2, width=2), seed=1, compile=compiled)
        run = train(config, tmp_path / f"c{compiled}.h5", data=data, progress=False)
        elbo[compiled] = run.history["test_elbo"][-1]
    # the same float32 arithmetic, fused differently: equal to rounding
    assert elbo[True] == pytest.approx(elbo[False], rel=1e-4), elbo


def test_the_step_updates_its_state_in_place():
    """A captured CUDA graph replays its writes into the tensors it saw at capture, so
    the step must never rebind the guard's or the sums' tensors."""
    _, _, step = _model()
    sums, guard = EpochSums("cpu"), NonFiniteGuard(1, "cpu")
    tensors = [getattr(sums, k) for k in EpochSums.KEYS] + [guard.steps, guard.run, guard.tripped_at]
    pointers = [t.data_ptr() for t in tensors]
    x, eps = _batch()
    step(x, x, eps, x.shape[0], sums, guard)
    step(x, x, eps * float("nan"), x.shape[0], sums, guard)  # skipped: the guard trips at step 2
    after = [getattr(sums, k) for k in EpochSums.KEYS] + [guard.steps, guard.run, guard.tripped_at]
    assert all(a is b for a, b in zip(after, tensors))
    assert [t.data_ptr() for t in after] == pointers
    assert int(sums.images) == x.shape[0] and int(sums.skipped) == 1 and guard.tripped() == 2
    sums.reset()
    assert all(getattr(sums, k) is t for k, t in zip(EpochSums.KEYS, tensors))
    assert all(float(getattr(sums, k)) == 0 for k in EpochSums.KEYS)


def test_no_graph_off_cuda_and_the_run_file_says_so(tmp_path):
    _, _, step = _model()
    assert step.graph_state == "off"  # cuda_graph not asked for
    model, opt, _ = _model()
    step = TrainStep(model, model, opt, beta=1.0, world=1, precision="float32", device="cpu", levels=256,
                     cuda_graph=True)
    assert step.graph_state == "off" and step.graph is None  # CPU: asked for, not applicable
    x = np.random.default_rng(2).integers(0, 256, (32, 1, 8, 8)).astype(np.uint8)
    data = (FakeData(x), FakeData(x[:8], split="test", checksum="1" * 64))
    config = TrainConfig(epochs=1, batch_size=16, model_options=dict(latent_dim=2, width=2), device="cpu")
    assert config.cuda_graph is True  # the default
    run = train(config, tmp_path / "r.h5", data=data, progress=False)
    assert run.attrs["cuda_graph"] == "off"


def test_an_adam_state_saved_after_a_capture_loads_uncaptured():
    params = [torch.nn.Parameter(torch.ones(3))]
    opt = make_optimizer(params, 0.1)
    params[0].grad = torch.ones(3)
    opt.step()
    state = opt.state_dict()
    state["param_groups"][0]["capturable"] = True  # as written by a run with a captured step
    fresh = make_optimizer(params, 0.1)
    fresh.load_state_dict(fused_state(state))
    assert fresh.param_groups[0]["capturable"] is False
    fresh.step()
    assert float(fresh.state[params[0]]["step"]) == 2


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)")


def _blobs(n, side=16, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    cx, cy = rng.uniform(4, side - 4, (2, n, 1, 1))
    return (255 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 8.0))[:, None].round().astype(np.uint8)


@cuda
@pytest.mark.parametrize("options", [
    {}, {"precision": "bf16"}, {"likelihood": "logistic-mixture", "mixtures": 3}, {"dequantize": True},
    {"memory_format": "channels_last"}, {"memory_format": "channels_last", "likelihood": "logistic-mixture",
                                         "mixtures": 3, "precision": "bf16"},
])
def test_the_captured_step_trains_exactly_like_the_eager_one(tmp_path, monkeypatch, options):
    """Replay runs the eager step's kernels on the same tensors: with deterministic
    cuDNN (and cuBLAS: scripts/gpu_check.sh sets CUBLAS_WORKSPACE_CONFIG) the two runs
    agree bit for bit, through the partial last batch of each epoch (run eagerly), a
    resume and the running sums."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    data = (FakeData(_blobs(200)), FakeData(_blobs(40, seed=1), split="test", checksum="1" * 64))
    runs = {}
    for graph in (False, True):
        config = TrainConfig(epochs=2, batch_size=32, model_options=dict(latent_dim=4, width=8), seed=4, device="cuda",
                             cuda_graph=graph, **options)  # 200 = 6 * 32 + 8: a partial batch each epoch
        path = tmp_path / f"g{graph}.h5"
        train(config, path, data=data, progress=False)
        runs[graph] = train(config.replace(epochs=3), path, data=data, progress=False, resume=True)
    assert runs[True].attrs["cuda_graph"] == "captured" and runs[False].attrs["cuda_graph"] == "off"
    for k, v in runs[False].model.items():
        np.testing.assert_array_equal(runs[True].model[k], v, err_msg=k)
    for k in ("train_elbo", "train_mse", "test_elbo", "skipped_steps"):
        np.testing.assert_array_equal(runs[True].history[k], runs[False].history[k], err_msg=k)


@cuda
def test_a_captured_step_skips_a_nonfinite_batch_on_the_device():
    torch.manual_seed(0)
    config = TrainConfig(model_options=dict(latent_dim=4, width=4), device="cuda")
    model = build_model(config, (1, 12, 12), torch.device("cuda"))
    opt = make_optimizer(model.parameters(), 1e-3)
    step = TrainStep(model, model, opt, beta=1.0, world=1, precision="float32", device="cuda", levels=256,
                     cuda_graph=True)
    sums, guard = EpochSums("cuda"), NonFiniteGuard(2, "cuda")
    x, eps = (t.cuda() for t in _batch())
    for _ in range(5):  # 3 warm-up steps, the capture (and its replay), one replay
        step(x, x, eps, x.shape[0], sums, guard)
    assert step.graph_state == "captured"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    step(x, x, eps * float("nan"), x.shape[0], sums, guard)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert int(sums.skipped) == 1 and int(sums.images) == 5 * x.shape[0] and guard.tripped() is None
    step(x, x, eps * float("nan"), x.shape[0], sums, guard)
    assert guard.tripped() == 7
    assert all(float(s["step"]) == 5 for s in opt.state.values())


@cuda
def test_a_failed_capture_trains_on_and_leaves_the_cuda_generator_usable():
    """A model that synchronizes while being captured breaks the capture: the step
    says why, goes on eagerly, and the default CUDA generator still draws (and still
    reproduces from a seed) afterwards."""
    torch.manual_seed(0)
    config = TrainConfig(model_options=dict(latent_dim=4, width=4), device="cuda")
    model = build_model(config, (1, 12, 12), torch.device("cuda"))
    forward = model.forward

    def syncing_forward(*args, **kwargs):
        if torch.cuda.is_current_stream_capturing():
            torch.cuda.synchronize()  # not allowed in a capture
        return forward(*args, **kwargs)

    model.forward = syncing_forward
    opt = make_optimizer(model.parameters(), 1e-3)
    logged = []
    step = TrainStep(model, model, opt, beta=1.0, world=1, precision="float32", device="cuda", levels=256,
                     cuda_graph=True, log=logged.append)
    sums, guard = EpochSums("cuda"), NonFiniteGuard(2, "cuda")
    x, eps = (t.cuda() for t in _batch())
    for _ in range(6):  # 3 warm-up steps, the failed capture (then eager), two eager steps
        step(x, x, eps, x.shape[0], sums, guard)
    assert step.graph_state.startswith("capture failed") and step.graph is None
    assert len(logged) == 1 and "training goes on without it" in logged[0]
    assert int(sums.images) == 6 * x.shape[0] and all(float(s["step"]) == 6 for s in opt.state.values())
    torch.cuda.manual_seed(5)
    a = torch.randn(8, device="cuda")
    torch.cuda.manual_seed(5)
    np.testing.assert_array_equal(torch.randn(8, device="cuda").cpu().numpy(), a.cpu().numpy())


@cuda
def test_a_compiled_step_that_fails_its_capture_is_captured_uncompiled_on_the_device(monkeypatch):
    """The device path of the fallback: a capture that fails (a forward that synchronizes
    while captured stands in for the compiled one), a second warm-up and a second capture
    in the same process, whose replays train exactly like an eager step."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    x, eps = (t.cuda() for t in _batch())
    models = {}
    for graph in (False, True):
        torch.manual_seed(0)
        config = TrainConfig(model_options=dict(latent_dim=4, width=4), device="cuda")
        model = build_model(config, (1, 12, 12), torch.device("cuda"))
        opt = make_optimizer(model.parameters(), 1e-3)
        logged = []
        step = TrainStep(model, model, opt, beta=1.0, world=1, precision="float32", device="cuda", levels=256,
                         cuda_graph=graph, log=logged.append)

        def syncing_forward(*args, step=step):
            if torch.cuda.is_current_stream_capturing():
                torch.cuda.synchronize()  # not allowed in a capture
            return step._forward(*args)

        step.forward, step.compiled = syncing_forward, True
        sums, guard = EpochSums("cuda"), NonFiniteGuard(2, "cuda")
        # 3 warm-up steps; the failed capture, whose batch is the first of 3 new warm-up
        # steps; the capture and its replay; 2 replays
        for _ in range(9):
            step(x, x, eps, x.shape[0], sums, guard)
        assert int(sums.images) == 9 * x.shape[0] and all(float(s["step"]) == 9 for s in opt.state.values())
        models[graph] = model
    assert step.graph is not None and step.graph_state.startswith("captured uncompiled (the compiled step's "
                                                                  "capture failed: ")
    assert len(logged) == 1 and "the uncompiled step will be captured instead" in logged[0]
    for (k, v), w in zip(models[False].state_dict().items(), models[True].state_dict().values()):
        torch.testing.assert_close(w, v, rtol=0, atol=0, msg=k)


def test_a_capture_failure_names_the_first_error_of_its_chain():
    try:
        try:
            raise RuntimeError("Detected recompile\nguard details")
        except RuntimeError:
            raise ValueError("operation failed due to a previous error during capture")  # noqa: B904
    except ValueError as exc:
        chained = exc
    assert capture_failure(chained) == ("ValueError: operation failed due to a previous error during capture; "
                                        "first: RuntimeError: Detected recompile")
    assert capture_failure(KeyError("x")) == "KeyError: 'x'"


def test_no_recompile_while_a_compiled_step_is_captured():
    """Inside the capture a compiled function may run what it compiled, not compile
    anew (that raises, naming the guard); uncompiled steps are left alone."""
    from vaecli.training.step import _no_recompile

    double = torch.compile(lambda t: t * 2, backend="eager")
    double(torch.ones(3))
    with _no_recompile(True):
        assert double(torch.ones(3)).tolist() == [2.0, 2.0, 2.0]
        with pytest.raises(RuntimeError, match="recompile"):
            double(torch.ones(3, dtype=torch.float64))
    with _no_recompile(False):
        assert double(torch.ones(3, dtype=torch.int64)).tolist() == [2, 2, 2]


def _dispatching_step(monkeypatch, full_batch, capture_error=None, capture_errors=()):
    """A CPU TrainStep whose CUDA parts are replaced by recorders: what it would do when.
    Its captures raise ``capture_error`` every time, or the errors of ``capture_errors``
    one after the other and then succeed."""
    model, opt, step = _model()
    step.graph_wanted, step.full_batch, step._log = True, full_batch, lambda m: calls.append(("log", m))
    calls, errors = [], list(capture_errors)

    def side(*args):
        calls.append(("warm-up", args[0].shape[0], "compiled" if step.compiled else "uncompiled"))
        return step._step(*args)

    def capture(x, x_in, eps, n_global, sums, guard):
        if capture_error is not None:
            raise capture_error
        if errors:
            calls.append(("failed capture", n_global))
            raise errors.pop(0)
        calls.append(("capture", n_global))
        step.graph, step._static = object(), (x, x_in, eps, n_global, sums, guard)

    def replay(x, x_in, eps):
        calls.append(("replay", x.shape[0]))

    monkeypatch.setattr(step, "_side_stream_step", side)
    monkeypatch.setattr(step, "_capture", capture)
    monkeypatch.setattr(step, "_replay", replay)
    return step, calls


def test_the_graph_is_captured_on_a_full_batch_and_partial_batches_run_eagerly(monkeypatch):
    step, calls = _dispatching_step(monkeypatch, full_batch=8)
    sums, guard = EpochSums("cpu"), NonFiniteGuard(5, "cpu")
    full, part = _batch(n=8), _batch(n=3)
    # a resume that starts on the partial batch, then epochs of 2 full + 1 partial
    for x, eps in [part, full, full, part, full, full, part, full, full, part]:
        step(x, x, eps, x.shape[0], sums, guard)
    assert calls == [("warm-up", 8, "uncompiled")] * 3 + [("capture", 8), ("replay", 8), ("replay", 8),
                                                           ("replay", 8)]
    # the partial batches and nothing else ran as plain eager steps
    assert int(sums.images) == 4 * 3 + 3 * 8


def test_a_failed_capture_says_so_once_and_training_goes_on(monkeypatch):
    step, calls = _dispatching_step(monkeypatch, full_batch=8, capture_error=RuntimeError(""))
    sums, guard = EpochSums("cpu"), NonFiniteGuard(5, "cpu")
    x, eps = _batch(n=8)
    for _ in range(6):
        step(x, x, eps, x.shape[0], sums, guard)
    assert step.graph_state == "capture failed (RuntimeError: )" and step.graph is None
    assert [c for c in calls if c[0] == "log"] == [
        ("log", "warning: CUDA graph capture failed (RuntimeError: ); training goes on without it "
                "(--no-cuda-graph skips the attempt)")]
    assert int(sums.images) == 6 * 8  # 3 warm-up steps, then 3 eager ones: none lost


def _compiled(step):
    """Mark a dispatching step as compiled, with a stand-in for the compiled forward."""
    step.compiled = True
    step.forward = lambda *args: step._forward(*args)
    return step


def test_a_compiled_step_whose_capture_fails_is_captured_uncompiled(monkeypatch):
    """compile + bf16 failed to capture on an H200 (torch 2.11) and then trained eagerly at a
    fifth of the captured speed; the uncompiled step is warmed up and captured instead."""
    step, calls = _dispatching_step(monkeypatch, full_batch=8, capture_errors=[RuntimeError("bad")])
    _compiled(step)
    sums, guard = EpochSums("cpu"), NonFiniteGuard(5, "cpu")
    x, eps = _batch(n=8)
    for _ in range(9):
        step(x, x, eps, x.shape[0], sums, guard)
    assert calls == ([("warm-up", 8, "compiled")] * 3 + [("failed capture", 8)] + [
        ("log", "warning: CUDA graph capture of the compiled step failed (RuntimeError: bad); the uncompiled "
                "step will be captured instead (--no-cuda-graph skips the attempt)")]
        + [("warm-up", 8, "uncompiled")] * 3 + [("capture", 8)] + [("replay", 8)] * 3)
    assert step.forward == step._forward and not step.compiled
    assert step.graph_state == "captured uncompiled (the compiled step's capture failed: RuntimeError: bad)"
    assert int(sums.images) == 6 * 8  # the six warm-up steps; the replays are recorders here


def test_when_the_uncompiled_capture_fails_too_training_goes_on_eagerly(monkeypatch):
    step, calls = _dispatching_step(monkeypatch, full_batch=8,
                                    capture_errors=[RuntimeError("first"), RuntimeError("second")])
    _compiled(step)
    sums, guard = EpochSums("cpu"), NonFiniteGuard(5, "cpu")
    x, eps = _batch(n=8)
    for _ in range(10):
        step(x, x, eps, x.shape[0], sums, guard)
    assert [c[0] for c in calls] == (["warm-up"] * 3 + ["failed capture", "log"] + ["warm-up"] * 3
                                     + ["failed capture", "log"])
    assert calls[-1] == ("log", "warning: CUDA graph capture failed (RuntimeError: second); training goes on "
                                "without it (--no-cuda-graph skips the attempt)")
    assert step.graph_state == ("capture failed (RuntimeError: second); the compiled step's capture failed "
                                "before (RuntimeError: first)")
    assert not step.graph_wanted and step.graph is None
    assert int(sums.images) == 10 * 8  # 6 warm-up steps, 4 eager ones (the second failure's batch included)


def _stepper(**measures):
    torch.manual_seed(0)
    config = TrainConfig(model_options=dict(latent_dim=4, width=4))
    model = build_model(config, (1, 12, 12), torch.device("cpu"))
    opt = make_optimizer(model.parameters(), 1e-3)
    return model, opt, TrainStep(model, model, opt, beta=1.0, world=1, precision="float32", device="cpu",
                                 levels=256, **measures)


def test_grad_clip_takes_the_step_of_the_clipped_gradient():
    """The clipped step equals a plain Adam step on gradients scaled to norm grad_clip."""
    x, eps = _batch()
    model, opt, step = _stepper(grad_clip=0.5)
    step(x, x, eps, x.shape[0], EpochSums("cpu"), NonFiniteGuard(5, "cpu"))
    ref, ref_opt, ref_step = _stepper()
    raw, _, log_px, kl, _ = ref_step._forward(x, eps)
    (-(log_px - kl).sum() / x.shape[0]).backward()
    norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), float("inf"))
    assert norm > 0.5  # the clip binds
    for p in ref.parameters():
        p.grad.mul_(0.5 / (norm + 1e-6))
    ref_opt.step()
    for (name, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)


def test_grad_skip_skips_a_step_whose_norm_is_too_large():
    x, eps = _batch()
    model, opt, step = _stepper(grad_skip=1e-6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sums = EpochSums("cpu")
    step(x, x, eps, x.shape[0], sums, NonFiniteGuard(5, "cpu"))
    assert int(sums.skipped) == 1
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_free_bits_floor_each_groups_kl_in_the_objective_only():
    x, eps = _batch()
    _, _, plain = _stepper()
    _, _, floored = _stepper(free_bits=1e6)
    _, _, log_px, kl, objective = floored._forward(x, eps)
    torch.testing.assert_close(objective, torch.full_like(kl, 1e6))  # one group, under the floor
    sums = EpochSums("cpu")
    floored(x, x, eps, x.shape[0], sums, NonFiniteGuard(5, "cpu"))
    assert float(sums.kl) == pytest.approx(float(kl.sum()), rel=1e-5)  # the true KL is what is logged
    assert float(sums.loss) == pytest.approx(-float((log_px - 1e6).sum()), rel=1e-5)  # loss = -objective
    _, _, _, kl_plain, objective_plain = plain._forward(x, eps)
    assert objective_plain is kl_plain  # off: the objective is the KL itself


def test_the_hvae_default_measures_come_from_the_model():
    assert (TrainConfig(model="hvae").grad_clip, TrainConfig(model="hvae").grad_skip) == (1e4, 1e5)
    assert (TrainConfig().grad_clip, TrainConfig().grad_skip) == (0.0, 0.0)
    assert TrainConfig(model="hvae", grad_clip=0).grad_clip == 0.0
