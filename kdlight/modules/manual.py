"""ManualOptimization: what every kdlight module with its own optimisation loop shares.

A seed paper's loop (an adversarial generator, a meta-learner) steps more than one optimiser per
batch. This mixin keeps the bookkeeping out of the module's ``training_step``, so that step reads
as the paper's algorithm box:

* :meth:`step_student`: zero the student's gradients, ``manual_backward``, step, advance the
  learning-rate schedule. It is the only step Lightning counts, so ``trainer.max_steps`` and the
  schedule count *student updates* in every module, whatever else a batch steps.
* :meth:`step_auxiliary`: a step of another optimiser (the generator's, the meta-learner's) on the
  raw torch optimiser, outside Lightning's step count.
* one batch counter, ``progress`` (a buffer, so checkpoints carry it and a resume continues it):
  batches seen, student steps, auxiliary steps, skipped non-finite steps; :meth:`batch_count`
  reads its host twin (no device read in a step); :meth:`end_batch` advances it and logs it.
* the non-finite guard (``guard=True``): a loss that is non-finite on any rank skips the step on
  every rank; skips are counted, and ``max_consecutive_skips`` in a row stop the run with an error.
  With ``fused`` Adam/AdamW/SGD (kdlight's default on CUDA) the optimiser skips on the device
  (``found_inf``, no host sync; the stop is checked at the logger's cadence); with other optimisers
  the host reads the flag once per step.

Use: ``class MyKD(ManualOptimization, BaseDistiller)``; see ``docs/architecture.md`` for a
complete variant in under 40 lines.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from kdlight.distributed import any_rank
from kdlight.errors import KDLightError

BATCHES, STUDENT_STEPS, AUXILIARY_STEPS, SKIPPED = range(4)  # the columns of ``progress``
#: checkpoint key: what Lightning's global step counts in this checkpoint. Absent: written before every
#: manual-optimisation module counted student updates only (zero-shot KD counted generator steps too).
STEP_COUNT_KEY = "kdlight_global_step_counts"
STUDENT_UPDATES = "student_updates"


def raw_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimiser inside Lightning's ``LightningOptimizer`` wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def steps_on_device(optimizer: Any) -> bool:
    """Whether the optimiser can skip a step on the device (fused kernels read ``found_inf``)."""
    inner = raw_optimizer(optimizer)
    return bool(inner.param_groups) and all(group.get("fused") for group in inner.param_groups)


class ManualOptimization:
    """Mixin for a :class:`~kdlight.modules.task.KDLightTask` with its own optimisation loop (see the module
    docstring). ``max_consecutive_skips``: the guard's stop (a module may expose it as an argument)."""

    max_consecutive_skips: int = 50
    auxiliary_name = "auxiliary"  # what the other optimiser steps (train/<name>_steps)
    #: functions that rewrite an older checkpoint in place before it loads (see :mod:`kdlight.modules.migrations`)
    checkpoint_migrations: tuple[Callable[[dict[str, Any]], None], ...] = ()

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False
        self.register_buffer("progress", torch.zeros(4, dtype=torch.long))
        self.consecutive_skips = 0  # host path of the guard
        self._host_batches: int | None = None  # progress[0] on the host (None: read it at fit start)
        self._skip_streak: Tensor | None = None  # device path: the current run of skips and its longest
        self._worst_streak: Tensor | None = None

    # --------------------------------------------------------------------------- optimisers
    def student_optimizer(self):
        """The student's optimiser (the first that ``configure_optimizers`` returns), Lightning-wrapped."""
        optimizers = self.optimizers()
        return optimizers[0] if isinstance(optimizers, list) else optimizers

    def auxiliary_optimizer(self, index: int = 0) -> torch.optim.Optimizer | None:
        """The ``index``-th optimiser after the student's (raw), or None when there is none."""
        optimizers = self.optimizers()
        rest = optimizers[1:] if isinstance(optimizers, list) else []
        return raw_optimizer(rest[index]) if index < len(rest) else None

    def step_student(self, loss: Tensor, guard: bool = False) -> Tensor | int | None:
        """One student update on ``loss`` (zero_grad, manual_backward, step, schedule). Returns the steps
        taken (see :meth:`step_if_finite`; 1 without the guard)."""
        optimizer = self.student_optimizer()

        def backward() -> None:
            optimizer.zero_grad()
            self.manual_backward(loss)

        if guard:
            taken = self.step_if_finite(optimizer, loss, backward)
        else:
            backward()
            optimizer.step()
            taken = 1
        if taken is not None:
            self.lr_schedulers().step()
            self.progress[STUDENT_STEPS] += taken
        return taken

    def step_auxiliary(
        self,
        optimizer: torch.optim.Optimizer,
        set_gradients: Callable[[], Any] | None = None,
        loss: Tensor | None = None,
    ) -> Tensor | int | None:
        """A step of a non-student optimiser (raw: Lightning's step count stays the student's). ``set_gradients``
        fills the gradients (if they are not set yet); with a ``loss`` the step is guarded (and
        ``set_gradients`` runs only for a finite one). Returns the steps taken, as :meth:`step_student`."""
        optimizer = raw_optimizer(optimizer)
        set_gradients = set_gradients or (lambda: None)
        if loss is None:
            set_gradients()
            optimizer.step()
            taken = 1
        else:
            taken = self.step_if_finite(optimizer, loss, set_gradients)
        if taken is not None:
            optimizer.zero_grad()
            self.progress[AUXILIARY_STEPS] += taken
        return taken

    def student_steps_in(self, batches: int) -> int:
        """Student updates in the first ``batches`` training batches (override when some batches step
        another optimiser only)."""
        return batches

    def scheduled_steps(self) -> int:
        """Student updates in this fit (the schedule's length): ``max_steps``, or :meth:`student_steps_in`
        of the epochs' batches, whichever comes first."""
        total = super().scheduled_steps()  # Lightning's estimate; it also sets the training batches up
        trainer = self.trainer if self._trainer is not None else None
        if trainer is None or trainer.max_epochs in (None, -1) or not math.isfinite(trainer.num_training_batches):
            return total
        students = self.student_steps_in(int(trainer.num_training_batches) * max(trainer.max_epochs, 1))
        return max(1, min(students, trainer.max_steps) if trainer.max_steps >= 0 else students)

    # ----------------------------------------------------------------------- batch counter
    def batch_count(self) -> int:
        """Batches trained so far (``progress[0]``), read from the host twin."""
        if self._host_batches is None:
            self._host_batches = int(self.progress[BATCHES])
        return self._host_batches

    def end_batch(self, batch_size: int) -> None:
        """Count the batch; at the logger's cadence, check the device path's stop and log the counters."""
        self.progress[BATCHES] += 1
        self._host_batches = self.batch_count() + 1
        if self.logs_this_step():
            if self._worst_streak is not None:
                self.stop_if_diverged(int(self._worst_streak))
            self.log_dict(self.progress_metrics(), batch_size=batch_size)

    def progress_metrics(self) -> dict[str, Tensor]:
        """What :meth:`end_batch` logs; override to name the auxiliary steps."""
        return {
            "train/student_steps": self.progress[STUDENT_STEPS].float(),
            f"train/{self.auxiliary_name}_steps": self.progress[AUXILIARY_STEPS].float(),
            "train/skipped_nonfinite": self.progress[SKIPPED].float(),
        }

    # ----------------------------------------------------------------------- non-finite guard
    def step_if_finite(self, optimizer, loss: Tensor, backward: Callable[[], Any]) -> Tensor | int | None:
        """``backward()`` then ``optimizer.step()``, unless ``loss`` is non-finite on any rank: then every
        rank skips, and the skip is counted. Returns the steps taken: 1, or a 0/1 device tensor when the
        optimiser skips on the device (fused Adam/AdamW/SGD read ``found_inf`` and leave parameters and
        state untouched: no host sync); None when the host decided to skip."""
        bad = any_rank(~torch.isfinite(loss.detach()))  # every rank skips together, or DDP would hang
        if not steps_on_device(optimizer):
            if bad.item():  # other optimisers: the host reads the flag once per step
                self.progress[SKIPPED] += 1
                self.consecutive_skips += 1
                self.stop_if_diverged(self.consecutive_skips)
                return None
            self.consecutive_skips = 0
            backward()
            optimizer.step()
            return 1
        backward()
        inner = raw_optimizer(optimizer)
        inner.found_inf = bad  # torch's fused kernels skip the update where this is set (GradScaler's channel)
        try:
            optimizer.step()
        finally:
            del inner.found_inf
        self.progress[SKIPPED] += bad.long()
        if self._skip_streak is None:  # outside fit (on_fit_start made them)
            self._reset_streaks()
        self._skip_streak = (self._skip_streak + 1) * bad.long()
        self._worst_streak = torch.maximum(self._worst_streak, self._skip_streak)
        return 1 - bad.long()

    def stop_if_diverged(self, streak: int) -> None:
        limit = self.hparams.get("max_consecutive_skips", self.max_consecutive_skips)
        if streak >= limit:
            raise KDLightError(
                f"{streak} non-finite losses in a row: the run has diverged; lower the learning rate(s), "
                "or resume from an earlier checkpoint"
            )

    def _reset_streaks(self) -> None:
        self._skip_streak = torch.zeros((), dtype=torch.long, device=self.device)
        self._worst_streak = torch.zeros((), dtype=torch.long, device=self.device)

    # ---------------------------------------------------------------------------- hooks
    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._host_batches = int(self.progress[BATCHES])  # once per fit, after any checkpoint restore
        self._reset_streaks()

    def on_train_end(self) -> None:
        super().on_train_end()
        if self._worst_streak is not None:
            self.stop_if_diverged(int(self._worst_streak))
        skipped = int(self.progress[SKIPPED])
        if skipped:
            rank_zero_warn(f"[kdlight] {skipped} step(s) had a non-finite loss and were skipped")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[STEP_COUNT_KEY] = STUDENT_UPDATES

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        for migrate in self.checkpoint_migrations:  # before the base class reads the global step
            migrate(checkpoint)
        super().on_load_checkpoint(checkpoint)
        self._host_batches = None  # re-read from the restored buffer
        state = checkpoint["state_dict"]
        if "progress" not in state:  # written before the shared counter: Lightning's batches and (student) steps
            loops = checkpoint.get("loops", {}).get("fit_loop", {})
            done = loops.get("epoch_loop.batch_progress", {}).get("total", {}).get("completed", 0)
            state["progress"] = torch.tensor([done, checkpoint.get("global_step", 0), 0, 0], dtype=torch.long)


def subtract_optimizer_steps(checkpoint: dict[str, Any], steps: int) -> None:
    """Take ``steps`` optimiser steps out of a manual-optimisation checkpoint's global step (Lightning
    restores it from the loop's step progress)."""
    if steps <= 0:
        return
    checkpoint["global_step"] = max(0, int(checkpoint.get("global_step", 0)) - steps)
    loop = checkpoint.get("loops", {}).get("fit_loop", {})
    progress = loop.get("epoch_loop.manual_optimization.optim_step_progress")
    if progress is None:
        return
    for counts in (progress.get("total", {}), progress.get("current", {})):
        for key, value in counts.items():
            counts[key] = max(0, int(value) - steps)


__all__ = ["ManualOptimization", "raw_optimizer", "steps_on_device", "subtract_optimizer_steps"]
