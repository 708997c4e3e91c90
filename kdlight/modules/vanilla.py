"""VanillaKD: the reference distiller, and the pattern every loss-only variant follows."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlight.errors import KDLightError
from kdlight.lambda_monitor import LambdaMonitor
from kdlight.losses import KLDivergence, labelled_loss
from kdlight.modules.distiller import BaseDistiller


class VanillaKD(BaseDistiller):
    """Hinton et al. (2015): ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE``.

    For regression heads (num_labels=1) the KD term is MSE between logits.

    Args:
        alpha: weight of the KD term; 1.0 distils from the teacher alone (no labels needed).
        **kwargs: see :class:`BaseDistiller`.

    Rows without a label (``AugmentedKDDataModule``'s unlabelled text and augmented copies, label -100)
    get the KD term only: the cross-entropy averages over the labelled rows of the batch.
    """

    learns_from_unlabelled = True  # AugmentedKDDataModule checks this before adding rows without labels

    def __init__(self, teacher: str, alpha: float = 0.5, **kwargs) -> None:
        if not 0 <= alpha <= 1:
            raise KDLightError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = alpha
        super().__init__(teacher, **kwargs)

    def compute_loss(self, student_logits, teacher_logits, batch):
        kd = self.kd_loss(student_logits, teacher_logits)
        ce = labelled_loss(student_logits, batch["labels"])
        return {"loss": self.alpha * kd + (1 - self.alpha) * ce, "kd": kd, "ce": ce}


class TeacherDisagreementKD(VanillaKD):
    """KD for noisy labels without meta-learning: the teacher alone where its prediction is not the label.

    Per example, the teacher weight is 1 where the teacher's argmax differs from the example's label (the labels
    likeliest to be wrong) and ``alpha`` elsewhere: ``w * KD_i + (1 - w) * CE_i``. Rows without a label (-100) get
    the KD term only. The simplest per-example weighting, and the one ALM-KD's learned weights should beat (docs/alm.md
    has it beside every ALM mode in the noisy-label study); a KD step's cost. Classification heads only.

    The per-example weights are what :class:`~kdlight.lambda_monitor.LambdaMonitor` reads, so with a
    :class:`~kdlight.data.NoisyLabelDataModule` the log has the flag's share of flipped and clean labels and its
    flipped-label AUC every epoch (``lambda/*``).
    """

    def teacher_only(self, teacher_logits: Tensor, batch: dict) -> Tensor:
        """The examples whose label is left out (the teacher predicts another class)."""
        return teacher_logits.argmax(-1) != batch["labels"]

    def compute_loss(self, student_logits, teacher_logits, batch):
        if student_logits.shape[-1] == 1:
            raise KDLightError(
                "TeacherDisagreementKD needs a classification head (a regression teacher predicts no class); "
                "use VanillaKD for regression tasks"
            )
        labels = batch["labels"].long()
        kd = KLDivergence(self.hparams.temperature, reduction="none")(student_logits, teacher_logits)
        ce = F.cross_entropy(student_logits.float(), labels, ignore_index=-100, reduction="none")
        flagged = self.teacher_only(teacher_logits, batch) | (labels == -100)
        weight = torch.where(flagged, 1.0, self.alpha)
        self.last_teacher_weight = (batch.get("idx"), weight.detach())
        loss = (weight * kd + (1 - weight) * ce).mean()
        return {
            "loss": loss,
            "kd": kd.mean(),
            "ce": labelled_loss(student_logits, labels),
            "teacher_only": flagged.float().mean(),
        }

    def configure_callbacks(self) -> list:
        return [LambdaMonitor(plot=False)]  # the flag's share of flipped / clean labels and its AUC, as ALM's
