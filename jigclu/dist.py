"""``torch.distributed`` helpers that degrade to the identity in a single process.

Trainers never import Ray. Under Ray Train (or torchrun) the process group is already
initialised and these helpers communicate; in a plain process they are no-ops, so the same
loop runs on a laptop.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums each slice's gradient over all ranks.

    Every rank computes the same loss from the gathered tensor, so the gradient of its own
    slice is the sum of what every rank's loss sends back (a reduce-scatter). Combined with
    DDP's gradient averaging this gives exactly the single-process gradient.
    """

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # type: ignore[override]
        ctx.size = tensor.shape[0]
        gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, tensor.contiguous())
        return torch.cat(gathered, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        r = dist.get_rank()
        return grad[r * ctx.size:(r + 1) * ctx.size]


def gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` from every rank (rank order) along dim 0, differentiably."""
    if not is_distributed():
        return tensor
    return _GatherWithGrad.apply(tensor)


@torch.no_grad()
def gather(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, without gradient."""
    if not is_distributed():
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


def all_reduce_mean(tensor: Tensor) -> Tensor:
    """Mean of ``tensor`` over ranks (a copy; the identity in one process)."""
    if not is_distributed():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def all_agree(mine: bool) -> bool:
    """True when every rank passes True (an all-reduce of ``min``; the identity in one process)."""
    if not is_distributed():
        return mine
    flag = torch.tensor([1 if mine else 0], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over ranks (the identity in one process)."""
    if not is_distributed():
        return list(values)
    out = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.tolist()


def _collective_device() -> torch.device:
    """Where a small tensor must live for a collective: NCCL only moves CUDA tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_true(flags: list[bool]) -> list[bool]:
    """Element-wise: True where any rank passes True (an all-reduce of ``max``; the identity in
    one process). How every worker learns, at the same step, that one of them was asked to stop."""
    if not is_distributed():
        return list(flags)
    out = torch.tensor([1 if f else 0 for f in flags], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return [bool(v) for v in out.tolist()]


def all_gather_objects(obj: object) -> list[object]:
    """``obj`` of every rank, in rank order (pickled; for small things such as an epoch's sums)."""
    if not is_distributed():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
