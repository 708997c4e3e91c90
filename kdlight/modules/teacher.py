"""TeacherFineTuning: fine-tune any Hugging Face sequence classifier on a labelled task."""

from __future__ import annotations

import os

from kdlight.losses import label_loss
from kdlight.models.hf import load_classifier
from kdlight.modules.task import KDLightTask


class TeacherFineTuning(KDLightTask):
    """Supervised fine-tuning of ``AutoModelForSequenceClassification``.

    Args:
        model: hub name, local folder, ``packaged/all-MiniLM-L6-v2``, or a kdlight ``.ckpt``. A bare
            encoder without a head (all-MiniLM-L6-v2 is one) gets a fresh classification head.
        **kwargs: see :class:`KDLightTask` (optimiser, schedule, export).
    """

    predictor_attr = "model"
    default_tokenizer_arg = "model"

    def __init__(self, model: str = "bert-base-uncased", **kwargs) -> None:
        self.model_name = os.fspath(model)
        super().__init__(**kwargs)

    def model_sources(self) -> dict[str, str]:
        return {"model": self.model_name}

    def configure_models(self) -> None:
        # from_pretrained returns eval mode, and Lightning keeps submodule modes as it finds them
        self.model = load_classifier(self.model_name, self.task.num_labels, self.task.label_names).train()

    def training_step(self, batch, batch_idx):
        logits = self(batch)
        loss = label_loss(logits, batch["labels"])
        # the progress bar's value keeps its historical name here (``train/loss``)
        if self.logs_this_step() or (self._trainer is not None and self.trainer.progress_bar_callback is not None):
            self.log("train/loss", loss.detach(), prog_bar=True, batch_size=len(logits))
        return loss
