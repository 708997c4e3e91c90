"""VanillaKD: the reference distiller, and the pattern every loss-only variant follows."""

from __future__ import annotations

from kdlight.errors import KDLightError
from kdlight.losses import labelled_loss
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
