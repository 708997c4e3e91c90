"""Training loaders that can resume mid-epoch at the exact batch they stopped at.

The training order is one seeded permutation per epoch, shared by every world size (rank r of N
takes every N-th example), so 1 and N processes see the same examples per step. Lightning saves
``state_dict()`` of a stateful training loader in every checkpoint and hands it back through
``load_state_dict()`` before the first batch of a resumed fit; the sampler then skips the batches the
interrupted run had already trained on, so a resumed run sees the same batches, in the same order,
as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from kdlight.distributed import run_seed


def loader_generator() -> torch.Generator:
    """A private generator for a DataLoader, so that creating its iterator (which draws a base seed)
    never advances the global RNG that dropout uses: otherwise an extra ``iter()`` on resume would
    shift every later dropout mask."""
    return torch.Generator().manual_seed(run_seed())


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` that can start its epoch after a number of already-trained batches."""

    def __init__(self, dataset: Dataset, batch_size: int, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.batch_size = batch_size
        self.resume_at: tuple[int, int] | None = None  # (epoch, batches to skip in it)

    def __iter__(self):
        indices = list(super().__iter__())
        if self.resume_at is not None:
            epoch, batches = self.resume_at
            self.resume_at = None  # only the interrupted epoch is shortened
            if epoch == self.epoch:
                indices = indices[batches * self.batch_size :]
        return iter(indices)


class ResumableLoader(DataLoader):
    """A training ``DataLoader`` whose position in the epoch is saved in checkpoints.

    ``len()`` stays the full epoch, so Lightning's batch counters (which it restores itself) and
    validation schedule line up with the shortened first epoch of a resumed run.
    """

    sampler: ResumableSampler

    def __init__(
        self, dataset: Dataset, *, batch_size: int, shuffle: bool, world_size: int = 1, rank: int = 0, **kwargs: Any
    ) -> None:
        kwargs.pop("sampler", None)  # Lightning may re-instantiate the loader with our own sampler
        sampler = ResumableSampler(
            dataset, batch_size, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=run_seed()
        )
        kwargs.setdefault("generator", loader_generator())
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        self.batches_yielded = 0

    def __iter__(self):
        self.batches_yielded = 0
        for batch in super().__iter__():
            self.batches_yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches": self.batches_yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.resume_at = (int(state["epoch"]), int(state["batches"]))
