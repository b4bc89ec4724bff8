"""Devices and processes: which device a run uses, and the collectives of
data-parallel training under torchrun (one process per device, gloo on the CPU)."""

from __future__ import annotations

import datetime
import os

import torch

from ..devices import resolve_device

DIST_TIMEOUT_S = 300  # a collective waiting longer than this means a rank is gone
INTERRUPT_SYNC_STEPS = 16  # under torchrun, the ranks agree on an interrupt every this many steps


def environment_rank() -> int:
    """This process's rank as torchrun set it (0 outside torchrun), before any setup."""
    return int(os.environ.get("RANK", "0"))


def setup(device_name: str):
    """(rank, world size, device).  Under torchrun (WORLD_SIZE > 1) this joins the
    process group: NCCL on CUDA, gloo on the CPU; each rank uses cuda:LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, resolve_device(device_name)
    import torch.distributed as dist

    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=DIST_TIMEOUT_S))
    return dist.get_rank(), dist.get_world_size(), device


def teardown(world: int):
    """After the work of every rank: wait for all of them (rank 0's files are complete
    before anyone reads them), then leave the process group."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks whose backward sums the incoming gradients over the ranks
    too: d(sum_r f_r(global))/d(local) needs every rank's upstream gradient."""

    @staticmethod
    def forward(ctx, t):
        import torch.distributed as dist

        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_reduce_sum(t):
    """A differentiable all-reduce (sum): a batch-coupled likelihood's global batch sums."""
    return _AllReduceSum.apply(t)


def all_finite(flag: torch.Tensor) -> torch.Tensor:
    """``flag`` (a device bool) and-ed over the ranks, without a host read."""
    import torch.distributed as dist

    t = flag.to(torch.float32).reshape(1)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t[0] > 0


def any_ranks(flags, device) -> list:
    """Each flag, True on every rank when it is set on any (a MAX all-reduce; one host read)."""
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0 for flag in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v > 0) for v in t.tolist()]
