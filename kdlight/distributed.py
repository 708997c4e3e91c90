"""Cross-rank arithmetic in one place: sums, means and "every rank takes the same branch" decisions.

kdlight's extra optimisers (the zero-shot generator, ALM's meta-learner) step outside DDP's reducer, so
they reduce their own gradients here; a decision that changes control flow (skip a non-finite step) must
be identical on every rank or the next collective hangs. Every function is the identity in a single
process, so callers never branch on the world size themselves.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    """Processes in the default group (1 when torch.distributed is not initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def run_seed() -> int:
    """The run's seed as ``seed_everything`` set it (0 when unset): the same on every rank."""
    return int(os.environ.get("PL_GLOBAL_SEED", "0"))


def sum_across_ranks(tensors: list[Tensor]) -> list[Tensor]:
    """Element-wise sums over ranks, in one all-reduce of the flattened tensors (new tensors; inputs untouched)."""
    if world_size() == 1 or not tensors:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    return [part.view_as(t) for part, t in zip(torch.split(flat, [t.numel() for t in tensors]), tensors, strict=True)]


def mean_across_ranks(tensors: list[Tensor]) -> list[Tensor]:
    """Element-wise means over ranks (gradients of a replicated component, averaged as DDP would)."""
    world = world_size()
    return tensors if world == 1 else [t / world for t in sum_across_ranks(tensors)]


def any_rank(flag: Tensor) -> Tensor:
    """1.0 on every rank when ``flag`` (a 0/1 scalar) is set on any rank, else 0.0; stays on the device."""
    (total,) = sum_across_ranks([flag.detach().float().reshape(1)])
    return (total > 0).float().reshape(())


def keep_out_of_ddp(module, *children: str) -> None:
    """Hide the parameters and buffers of ``module``'s named submodules from DDP's reducer.

    The zero-shot generator and ALM's meta-learner are ordinary registered submodules (so ``.to()``,
    ``state_dict`` and checkpoints handle them), but they step with their own optimisers outside the
    student's backward pass and reduce their own gradients with :func:`mean_across_ranks`. DDP would
    otherwise wait for gradients they never produce in the student's backward. Lightning hands the
    LightningModule itself to ``DistributedDataParallel``, so the names are relative to it. Call this
    once the children exist (``__init__`` or ``configure_model``); it replaces any earlier list.
    """
    from torch.nn.parallel import DistributedDataParallel

    names = []
    for child in children:
        sub = getattr(module, child)
        # every name, tied ones too: DDP looks a parameter up by each module's own name for it (a tied
        # MLM decoder is ``cls.predictions.decoder.weight`` as well as the word embeddings)
        names += [f"{child}.{name}" for name, _ in sub.named_parameters(remove_duplicate=False)]
        names += [f"{child}.{name}" for name, _ in sub.named_buffers(remove_duplicate=False)]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, names)


__all__ = ["any_rank", "keep_out_of_ddp", "mean_across_ranks", "run_seed", "sum_across_ranks", "world_size"]
