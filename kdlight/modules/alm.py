"""ALM-KD: knowledge distillation with noisy labels via adaptive (meta-learned) loss mixing.

Sivasubramanian, Shenoy, Prathosh AP, Ramakrishnan, "ALM-KD: Knowledge Distillation with noisy labels
via adaptive loss mixing" (arXiv 2202.03250); official code durgas16/AMAL. Each training example gets
its own weight between the label loss and the KD term(s), meta-learned by a one-step look-ahead of the
student scored on clean data.

This file is the Lightning side: the teacher(s) and the student, the order of the steps, the data. The
algorithm's weights and maths are a plain torch component injected as ``meta`` (by ``class_path``):
:class:`~kdlight.components.meta.MetaLearner` (the default algorithm; its docstring says where it follows
the paper and where the code), :class:`~kdlight.components.meta.NetworkMetaLearner` (the mixing network) or
:class:`~kdlight.components.meta_official.OfficialMetaLearner` (the authors' code, with file/line
references to durgas16/AMAL). The steps' bookkeeping is :class:`~kdlight.modules.manual.ManualOptimization`'s
(``max_steps`` counts student updates); the ``meta`` argument and its deprecated flat keys, and the
ordered training split, are in :mod:`kdlight.modules.alm_support`; the display is
:class:`~kdlight.lambda_monitor.LambdaMonitor`; old checkpoints are migrated by :mod:`kdlight.modules.migrations`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from kdlight.components.meta import MetaBatch, lookahead_assumption, mixed_loss
from kdlight.distributed import keep_out_of_ddp
from kdlight.errors import KDLightError
from kdlight.lambda_monitor import LambdaMonitor, write_lambda_plot
from kdlight.models.hf import load_classifier
from kdlight.models.students import check_compatible
from kdlight.modules.alm_support import MetaArgument, ordered_training_split
from kdlight.modules.distiller import BaseDistiller
from kdlight.modules.manual import ManualOptimization
from kdlight.modules.migrations import migrate_alm_checkpoint
from kdlight.modules.task import model_inputs

CLEAN_DRAWN_KEY = "kdlight_clean_batches_drawn"  # checkpoint key: the clean-batch stream's position

__all__ = ["AdaptiveLossMixingKD", "MultiTeacherALMKD", "lookahead_assumption"]


class AdaptiveLossMixingKD(MetaArgument, ManualOptimization, BaseDistiller):
    """ALM-KD with per-example loss-mixing weights, meta-learned on clean data.

    Needs a datamodule that provides clean batches: :class:`~kdlight.data.noisy.NoisyLabelDataModule`
    (``clean_val_batches()``); training batches must carry ``idx``.

    Args:
        teacher: the fine-tuned teacher (see :class:`BaseDistiller`).
        meta: the meta-learner and its settings, by ``class_path``: ``MetaLearner`` (default: a weight table,
            a one-step look-ahead every ``meta_every`` batches), ``NetworkMetaLearner`` (a mixing network) or
            ``OfficialMetaLearner`` (the authors' algorithm: a meta pass every ``select_every`` epochs); each
            documents and checks its own ``init_args``. The flat keys these replaced (``algorithm``,
            ``mixer``, ``meta_learning_rate``, ...) still work, with a deprecation notice.
        temperature: KD temperature (T = 4 in the paper's code).
        lambda_plot: at the end of fit write ``<log_dir>/lambda.png`` (the learned teacher weights, flipped vs
            clean examples when the datamodule knows them); either way the
            :class:`~kdlight.lambda_monitor.LambdaMonitor` logs ``lambda/flipped``, ``lambda/clean`` and
            ``lambda/flipped_auc`` every epoch.
        **kwargs: see :class:`BaseDistiller` (student, optimiser, schedule, teacher-logit cache ...).
    """

    checkpoint_migrations = (migrate_alm_checkpoint,)
    auxiliary_name = "meta"

    def __init__(self, teacher: str, temperature: float = 4.0, lambda_plot: bool = True, **kwargs) -> None:
        self._clean_batches: Iterator | None = None
        self._clean_drawn = 0  # clean batches drawn so far (host counter; checkpointed)
        super().__init__(teacher=teacher, temperature=temperature, **kwargs)
        self._pass_score: Tensor | None = None  # the official meta pass's clean score, logged by the epoch's first step
        self.last_teacher_weight: tuple[Tensor, Tensor] | None = None  # (idx, weight) of the last training batch
        self.meta_pass_seconds = 0.0  # wall time of this process's official meta passes (a step-time cost)

    # ------------------------------------------------------------------------- the algorithm
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """One training batch of ALM-KD (the paper's Algorithm 1):

        1. every ``meta_every`` batches, ``meta_steps`` meta steps: a look-ahead SGD step of the student on
           the batch's mixed loss is scored by CE on a fresh clean batch, and the gradient of that score
           moves the batch's mixing weights;
        2. the student's step on the per-example mixed loss ``w_CE * CE + w_KD * T^2 KL`` with the new weights.

        ``OfficialMetaLearner`` moves the weights in a pass over the training set as an epoch starts instead.
        """
        seen = self.observe(batch)
        meta_loss, self._pass_score = self._pass_score, None
        if self.meta.step_due(self.current_epoch):
            for _ in range(self.meta.meta_steps):
                lr = self.student_optimizer().param_groups[0]["lr"]
                meta_loss = self.meta.meta_gradients(self.student, seen, self.next_clean_batch(), lr)
                self.step_auxiliary(self.auxiliary_optimizer())  # the weights' step, not counted by max_steps
        ce, kd = self.meta.losses(seen)
        weights = self.meta.weights(seen, ce, kd)
        loss = mixed_loss(weights, ce, kd)
        self.step_student(loss)
        lam = self.meta.teacher_weight(weights)
        self.last_teacher_weight = (seen.idx, lam)  # read by the LambdaMonitor callback
        self.log_step(loss, ce, kd, lam, meta_loss)
        self.meta.count_batch()
        self.end_batch(len(ce))
        return loss.detach()

    def on_train_epoch_start(self) -> None:
        self._pass_score = None
        if self.meta.pass_due(self.current_epoch):
            start = time.perf_counter()
            self._pass_score = self.official_meta_pass()
            self.meta_pass_seconds += time.perf_counter() - start

    @torch.no_grad()
    def official_meta_pass(self) -> Tensor | None:
        """The authors' meta pass over this rank's share of the training set, with the student frozen in
        eval mode (the code scores a frozen copy, update_model lines 41-42); returns the mean clean score."""
        was_training = self.student.training
        self.student.eval()
        try:
            lr, clean_batches = self.student_optimizer().param_groups[0]["lr"], iter(self.next_clean_batch, None)
            return self.meta.meta_pass(self.student, self.training_split(), clean_batches, lr)
        finally:
            self.student.train(was_training)

    # ------------------------------------------------------------------------------ batches
    def observe(self, batch: dict[str, Tensor]) -> MetaBatch:
        """A training batch as the meta-learner sees it: the teachers' and the student's logits, the head's input."""
        inputs, teacher_logits = model_inputs(batch), self.all_teacher_logits(batch)
        logits, head_input = self.meta.student_forward(self.student, inputs)
        return MetaBatch(inputs, batch["labels"], batch["idx"], logits, head_input.detach(), teacher_logits)

    def next_clean_batch(self) -> MetaBatch:
        """The next batch of the clean split (drawn in turn), on the device. How many were drawn goes into
        checkpoints, so a resumed run continues the same stream (an exact resume)."""
        if self._clean_batches is None:
            self._clean_batches = self.trainer.datamodule.clean_val_batches(start=self._clean_drawn)
        batch = {k: v.to(self.device, non_blocking=True) for k, v in next(self._clean_batches).items()}
        self._clean_drawn += 1
        return MetaBatch(model_inputs(batch), batch["labels"], batch.get("idx"))

    def training_split(self) -> Iterator[MetaBatch]:
        """The whole training split, observed batch by batch (see :func:`ordered_training_split`)."""
        for batch in ordered_training_split(self.trainer, self.current_epoch):
            yield self.observe({k: v.to(self.device) for k, v in batch.items()})

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        batch = super().on_before_batch_transfer(batch, dataloader_idx)
        # the table's bounds checked on the host copy of idx (checked on the device, it is a sync per step)
        if self._trainer is not None and self.trainer.training and "idx" in batch:
            self.meta.check_rows(batch["idx"])
        return batch

    # --------------------------------------------------------------------------- teachers
    def extra_teacher_list(self) -> list[nn.Module]:
        return list(self.extra_teachers) if hasattr(self, "extra_teachers") else []

    def configure_losses(self) -> None:  # the per-example CE and KD terms are the meta-learner's
        if self.task.num_labels < 2:
            raise KDLightError("AdaptiveLossMixingKD needs a classification head (num_labels >= 2)")

    def all_teacher_logits(self, batch: dict[str, Tensor]) -> list[Tensor]:
        logits = [self.teacher_logits(batch)]
        with torch.no_grad():
            logits += [t(**model_inputs(batch)).logits for t in self.extra_teacher_list()]
        return logits

    # ----------------------------------------------------------------------- fit plumbing
    @property
    def mixer(self) -> nn.Module:
        """The learned weights (``meta.mixer``): the lambda table or the mixing network."""
        if self.meta.mixer is None:
            raise KDLightError(
                "the mixing weights are built at fit start (or from a checkpoint); call trainer.fit first"
            )
        return self.meta.mixer

    def setup(self, stage: str) -> None:
        if stage == "fit" and not hasattr(self.trainer.datamodule, "clean_val_batches"):  # the first thing to fix
            raise KDLightError(
                "AdaptiveLossMixingKD meta-learns on clean data: wrap the datamodule in NoisyLabelDataModule"
            )
        super().setup(stage)
        if stage == "fit":
            if self.meta.mixer is None:
                self.meta.build(self.meta.rows_for(self.trainer.datamodule))
            keep_out_of_ddp(self, "meta")  # it steps outside the student's backward and reduces its own gradients

    def configure_optimizers(self):
        student = super().configure_optimizers()
        meta = self.meta.configure_optimizer()
        if meta is None:  # official: the weights move by the meta pass's plain steps, not by an optimiser
            return student
        return [student["optimizer"], meta], [student["lr_scheduler"]]

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._clean_batches = None  # reopened at the checkpointed position (0 for a new run)
        self.meta.read_batches_seen()  # once per fit (after any checkpoint restore)
        rank_zero_info(f"[kdlight] ALM-KD look-ahead: {lookahead_assumption(self.optimizers(), self.meta.settings)}")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[CLEAN_DRAWN_KEY] = self._clean_drawn
        state = checkpoint["state_dict"]
        checkpoint["state_dict"] = {k: v for k, v in state.items() if not k.startswith("extra_teachers.")}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._clean_drawn, self._clean_batches = int(checkpoint.get(CLEAN_DRAWN_KEY, 0)), None
        state = checkpoint["state_dict"]
        for i, t in enumerate(self.extra_teacher_list()):
            state.update({f"extra_teachers.{i}.{k}": v for k, v in t.state_dict().items()})
        missing = [k for k in self.state_dict() if k.startswith("meta.") and k not in state]
        if missing:  # Lightning would load the student and silently start a fresh lambda table
            source = self.trainer.ckpt_path if self._trainer is not None and self.trainer.ckpt_path else None
            raise KDLightError(
                f"{source or 'the checkpoint'} was not written by AdaptiveLossMixingKD (it has no {missing[0]}); "
                "resume an ALM run from its own checkpoint, or start a new run (a distilled student can be the "
                "teacher via its export)"
            )

    # ------------------------------------------------------------------------------ logs
    def log_step(self, loss: Tensor, ce: Tensor, kd: list[Tensor], lam: Tensor, meta_loss: Tensor | None) -> None:
        """``train/*`` at the logger's cadence (the per-epoch flipped/clean statistics: :class:`LambdaMonitor`)."""
        parts = None
        if self.logs_this_step():
            parts = {
                "loss": loss.detach(),
                "ce": ce.detach().mean(),
                "kd": torch.stack(kd).detach().mean(),
                "lambda_mean": lam.mean(),
                "lambda_std": lam.std() if len(ce) > 1 else torch.zeros((), device=lam.device),
            }
            if meta_loss is not None:
                parts["meta_loss"] = meta_loss
        self.log_training(parts, loss, len(ce))

    def configure_callbacks(self) -> list:
        """The lambda monitor: per-epoch teacher weights on flipped / clean examples, their AUC, ``lambda.png``."""
        return [LambdaMonitor(plot=self.hparams.get("lambda_plot", True))]

    def write_lambda_plot(self) -> Path | None:
        """``<log_dir>/lambda.png`` now (the monitor writes it at the end of fit)."""
        return write_lambda_plot(self.trainer, self)

    def table_lambdas(self) -> Tensor:
        """Current teacher weight of every table row (``1 - w_CE``), for analysis."""
        return self.meta.table_lambdas()


class MultiTeacherALMKD(AdaptiveLossMixingKD):
    """ALM-KD with K teachers: per-example softmax weights over CE and the K KD terms (the paper's
    multi-teacher setting). ``teachers[0]`` is the base teacher (logit cache, test score); the
    others are frozen, kept out of checkpoints and reloaded from their sources.

    Args:
        teachers: two or more fine-tuned teachers with the student's label set and tokenizer
            (set ``data.init_args.tokenizer`` in the recipe).
        teacher: leave empty (it is ``teachers[0]``).
        **kwargs: see :class:`AdaptiveLossMixingKD`.
    """

    def __init__(self, teachers: list[str], teacher: str | None = None, **kwargs) -> None:
        if len(teachers) < 2:
            raise KDLightError(
                f"MultiTeacherALMKD needs two or more teachers, got {len(teachers)}; use AdaptiveLossMixingKD for one"
            )
        if teacher is not None and teacher != teachers[0]:
            raise KDLightError("MultiTeacherALMKD: leave teacher empty (teachers[0] is the base teacher)")
        self.extra_teacher_sources = list(teachers[1:])
        super().__init__(teachers[0], **kwargs)

    def configure_models(self) -> None:
        super().configure_models()
        task = self.task
        extra = []
        for source in self.extra_teacher_sources:
            model = load_classifier(source, task.num_labels, task.label_names, require_head=True, role="teacher")
            model.eval().requires_grad_(False)
            check_compatible(model, self.student)
            extra.append(model)
        self.extra_teachers = nn.ModuleList(extra)

    def auxiliary_networks(self) -> dict[str, tuple[str, nn.Module]]:
        pairs = zip(self.extra_teacher_sources, self.extra_teacher_list(), strict=True)
        return {f"teacher {i + 2}": pair for i, pair in enumerate(pairs)}

    def train(self, mode: bool = True):
        super().train(mode)
        if hasattr(self, "extra_teachers"):
            self.extra_teachers.eval()
        return self
