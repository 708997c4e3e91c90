"""Logit losses: small distillation losses on the two models' outputs, each a module with one job.

All take logits shaped ``(batch, num_labels)`` and return a scalar, or per-example values with
``reduction="none"`` (ALM-KD weighs examples one by one).
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from kdlight.errors import KDLightError, check_choice


def check_temperature(temperature: float) -> None:
    """A softmax temperature must be positive (a bad one is a user error, raised as one line)."""
    if not temperature > 0:  # also catches NaN
        raise KDLightError(f"temperature must be > 0, got {temperature}; 1 is plain softmax, KD usually uses 1 to 8")


#: how per-example values become the loss: averaged, summed, or returned as they are
Reduction = Literal["mean", "sum", "none"]


def _reduce(values: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    check_choice("reduction", reduction, Reduction)
    return values


class SoftTargetLoss(nn.Module):
    """A loss between the student's and the teacher's logits softened by ``temperature``, reduced per example."""

    def __init__(self, temperature: float = 1.0, reduction: Reduction = "mean") -> None:
        super().__init__()
        check_temperature(temperature)
        check_choice("reduction", reduction, Reduction)
        self.temperature = temperature
        self.reduction = reduction


class KLDivergence(SoftTargetLoss):
    """Hinton's soft-target loss: KL(teacher_T || student_T) * T^2.

    The T^2 factor keeps gradient magnitudes comparable across temperatures (Hinton et al. 2015).
    """

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        t = self.temperature
        log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
        log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
        per_example = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1) * t * t
        return _reduce(per_example, self.reduction)


class SoftCrossEntropy(SoftTargetLoss):
    """Cross-entropy against the teacher's softened distribution (KL plus the teacher's entropy)."""

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        t = self.temperature
        p_teacher = F.softmax(teacher_logits.float() / t, dim=-1)
        per_example = -(p_teacher * F.log_softmax(student_logits.float() / t, dim=-1)).sum(-1) * t * t
        return _reduce(per_example, self.reduction)


class LogitMSE(nn.Module):
    """Mean squared error between logits: the KD loss for regression heads (num_labels=1)."""

    def __init__(self, reduction: Reduction = "mean") -> None:
        super().__init__()
        check_choice("reduction", reduction, Reduction)
        self.reduction = reduction

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        per_example = (student_logits.float() - teacher_logits.float()).pow(2).mean(-1)
        return _reduce(per_example, self.reduction)


def label_loss(logits: Tensor, labels: Tensor, reduction: Reduction = "mean") -> Tensor:
    """Cross-entropy for classification heads, MSE for a single regression output."""
    if logits.shape[-1] == 1:
        return _reduce((logits.squeeze(-1).float() - labels.float()).pow(2), reduction)
    return F.cross_entropy(logits.float(), labels.long(), reduction=reduction)


def labelled_loss(logits: Tensor, labels: Tensor, ignore_label: int = -100) -> Tensor:
    """:func:`label_loss` averaged over the rows that have a label: rows labelled ``ignore_label`` (text
    only the teacher labelled, see :mod:`kdlight.data.augment`) add nothing, and a batch without any
    labelled row gives 0, not NaN. Equal to ``label_loss`` when every row is labelled; no host sync."""
    if logits.shape[-1] == 1:
        return label_loss(logits, labels)
    labelled = labels != ignore_label
    per_row = F.cross_entropy(logits.float(), labels.long(), ignore_index=ignore_label, reduction="none")
    return per_row.sum() / labelled.sum().clamp(min=1)


def distillation_loss(num_labels: int, temperature: float, reduction: Reduction = "mean") -> nn.Module:
    """The default teacher-matching loss for a head: KL at temperature T, or MSE for regression."""
    return LogitMSE(reduction) if num_labels == 1 else KLDivergence(temperature, reduction)
