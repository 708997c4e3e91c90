"""LayerwiseKD: task distillation that also matches what happens inside the network.

One distiller for TinyBERT, MiniLMv2-style relations, PKD and their mixes: a list of intermediate
losses (:mod:`kdlight.losses.layerwise`), each with its own weight and layer map, plus the usual logit
KD / label mix of :class:`~kdlight.modules.vanilla.VanillaKD`::

    loss = sum_i weight_i * intermediate_i + logit_weight * (alpha * KD_T + (1 - alpha) * CE)

``logit_weight: 0`` is TinyBERT's first (intermediate-only) stage; a second run from its checkpoint
with only the logit term is its prediction-layer stage. Teacher and student forwards return hidden
states, attention maps or Q/K/V only when a configured loss needs them (attention maps switch both
models to eager attention: see :class:`~kdlight.losses.layerwise.AttentionMSE`). The losses' learned
projections train with the student and are saved in checkpoints (so ``--ckpt_path last`` resumes
them), but they are not part of the student and are never exported.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from kdlight.errors import KDLightError
from kdlight.losses import label_loss
from kdlight.losses.layerwise import IntermediateLoss
from kdlight.models.layers import LayerOutputs, Needs, use_eager_attention
from kdlight.modules.distiller import BaseDistiller


def bind_losses(
    losses: list[IntermediateLoss], student: nn.Module, teacher: nn.Module
) -> tuple[nn.ModuleList, Needs, Needs]:
    """Bind each loss to the two models; return them with what each model's forward must return."""
    student_needs, teacher_needs = Needs(), Needs()
    for loss in losses:
        if not isinstance(loss, IntermediateLoss):
            raise KDLightError(
                f"losses must be intermediate losses (HiddenMSE, AttentionMSE, ...), got {type(loss).__name__}"
            )
        loss.bind(student, teacher)
        student_needs, teacher_needs = student_needs | loss.student_needs(), teacher_needs | loss.teacher_needs()
    if student_needs.attentions:
        use_eager_attention(student)
    if teacher_needs.attentions:
        use_eager_attention(teacher)
    return nn.ModuleList(losses), student_needs, teacher_needs


def freeze_unreached(student: nn.Module, probe_loss: Callable[[dict[str, Tensor]], Tensor]) -> int:
    """Freeze the student's parameters that ``probe_loss`` never reaches (one tiny probe batch).

    Relations of the last block leave its attention output, feed-forward and the pooler without a
    gradient, and an intermediate-only loss leaves the classifier head without one. Under DDP such
    parameters stop training with an "unused parameters" error; frozen, they simply keep their values
    (what training would have done anyway). Returns how many tensors were frozen.
    """
    probe = {"input_ids": torch.tensor([[1, 2, 3, 4]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    params = [p for p in student.parameters() if p.requires_grad]
    grads = torch.autograd.grad(probe_loss(probe), params, allow_unused=True)
    unreached = [p for p, g in zip(params, grads, strict=True) if g is None]
    for p in unreached:
        p.requires_grad_(False)
    if unreached:
        count = sum(p.numel() for p in unreached)
        rank_zero_info(f"[kdlight] {count:,} student parameters get no gradient from the configured losses; frozen")
    return len(unreached)


def loss_names(losses: nn.ModuleList) -> list[str]:
    """Log names, numbered when a loss type appears twice."""
    names = [loss.name for loss in losses]
    return [f"{n}_{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


class LayerwiseKD(BaseDistiller):
    """Args:
    teacher: the fine-tuned teacher (see :class:`BaseDistiller`).
    losses: intermediate losses (``HiddenMSE``, ``EmbeddingMSE``, ``AttentionMSE``,
        ``SelfAttentionRelations``, ``PatientCLS``), each with ``weight`` and its layer map.
    alpha: weight of KD against the label loss in the logit term (as in VanillaKD).
    logit_weight: weight of the logit term; 0 trains on the intermediate losses only.
    **kwargs: see :class:`BaseDistiller` (student, temperature, optimiser ...).
    """

    def __init__(
        self,
        teacher: str,
        losses: list[IntermediateLoss] | None = None,
        alpha: float = 0.5,
        logit_weight: float = 1.0,
        **kwargs,
    ) -> None:
        if not 0 <= alpha <= 1:
            raise KDLightError(f"alpha must be in [0, 1], got {alpha}")
        if logit_weight < 0:
            raise KDLightError(f"logit_weight must be >= 0, got {logit_weight}")
        if not losses and logit_weight == 0:
            raise KDLightError("LayerwiseKD has nothing to train on: add losses or set logit_weight > 0")
        if losses and kwargs.get("cache_teacher_logits"):
            raise KDLightError(
                "LayerwiseKD runs the teacher every step for its internals, "
                "so cache_teacher_logits saves nothing; remove it"
            )
        self.alpha, self.logit_weight = alpha, logit_weight
        self.pending_losses = list(losses or [])
        super().__init__(teacher, **kwargs)
        if any(isinstance(v, nn.Module) for v in self.hparams.get("losses") or []):
            # built from Python: keep modules (and their learned projections) out of the hyper-parameters
            self.hparams["losses"] = [type(loss).__name__ for loss in self.pending_losses]

    def configure_models(self) -> None:
        super().configure_models()
        self.layer_losses, self.student_needs, self.teacher_needs = bind_losses(
            self.pending_losses, self.student, self.teacher
        )
        self.layer_loss_names = loss_names(self.layer_losses)
        if self.logit_weight == 0:  # the head (at least) gets no gradient: see freeze_unreached
            freeze_unreached(self.student, self.intermediate_total)

    def trainable_parameters(self) -> list[nn.Parameter]:
        # the losses' projections learn with the student; they are not exported (predictor only)
        return super().trainable_parameters() + [p for p in self.layer_losses.parameters() if p.requires_grad]

    def intermediate_parts(
        self, student: LayerOutputs, teacher: LayerOutputs, attention_mask: Tensor
    ) -> dict[str, Tensor]:
        return {
            name: loss(student, teacher, attention_mask)
            for name, loss in zip(self.layer_loss_names, self.layer_losses, strict=True)
        }

    def intermediate_total(self, batch: dict[str, Tensor]) -> Tensor:
        """The weighted intermediate losses alone, on one batch (the probe of ``freeze_unreached``)."""
        student, teacher = self.internals(batch, self.student_needs, self.teacher_needs)
        parts = self.intermediate_parts(student, teacher, batch.get("attention_mask"))
        return sum(
            loss.loss_weight * parts[name] for name, loss in zip(self.layer_loss_names, self.layer_losses, strict=True)
        )

    def compute_loss(self, student_logits, teacher_logits, batch):
        kd = self.kd_loss(student_logits, teacher_logits)
        if self.alpha == 1:
            return {"loss": kd, "kd": kd}
        ce = label_loss(student_logits, batch["labels"])
        return {"loss": self.alpha * kd + (1 - self.alpha) * ce, "kd": kd, "ce": ce}

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        student, teacher = self.internals(batch, self.student_needs, self.teacher_needs)
        parts = self.intermediate_parts(student, teacher, batch.get("attention_mask"))
        total = sum(
            (
                loss.loss_weight * parts[name]
                for name, loss in zip(self.layer_loss_names, self.layer_losses, strict=True)
            ),
            torch.zeros((), device=self.device),
        )
        if self.logit_weight > 0:
            logit_parts = self.compute_loss(student.logits, teacher.logits, batch)
            total = total + self.logit_weight * logit_parts.pop("loss")
            parts.update(logit_parts)
        parts["loss"] = total
        self.log_training(parts, total, len(batch["input_ids"]))
        return total


__all__ = ["LayerwiseKD", "bind_losses", "freeze_unreached", "loss_names"]
