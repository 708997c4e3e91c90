"""MaskedLMPretraining: train a masked language model (the zero-shot generator) on unlabelled text.

The zero-shot adversary (:class:`~kdlight.components.AdversarialGenerator`) is a masked LM whose
rewrites should stay fluent (Rashid et al., 2021; MATE-KD). Offline, the only encoder in the
teacher's vocabulary is the packaged all-MiniLM-L6-v2, which ships without an MLM head;
:func:`~kdlight.models.hf.load_generator` gives it a fresh one (identity transform, decoder tied to
the word embeddings). This module trains that head, and the encoder under it at a smaller learning
rate, with BERT's masking (:func:`~kdlight.data.mlm.mask_tokens`: 15 % of the tokens, 80 % ``[MASK]``
/ 10 % random / 10 % kept) on the offline out-of-domain corpora
(:class:`~kdlight.data.mlm.MaskedLMCorpusDataModule`), and exports a stock ``AutoModelForMaskedLM``
with ``save_pretrained``: ``configs/zeroshot/generator.yaml``.

Validation masks the held-out text with a fixed seed (the same positions every time) and logs the
masked-token top-1 accuracy (``val/accuracy``, also ``val/score``, which picks the checkpoint) and
the perplexity (``val/perplexity``: exp of the mean cross-entropy per masked token).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.aggregation import SumMetric

from kdlight.components.rewriting import banned_token_ids, masked_logits
from kdlight.data.base import load_tokenizer
from kdlight.data.mlm import IGNORE_INDEX, mask_tokens
from kdlight.errors import KDLightError
from kdlight.models.hf import load_generator
from kdlight.modules.task import KDLightTask, model_inputs
from kdlight.optim import fused_on_gpu

VALIDATION_SEED = 1234  # held-out masking: the same positions and replacements every validation


class MaskedLMPretraining(KDLightTask):
    """Args:
    model: an ``AutoModelForMaskedLM`` hub name or folder, or a bare encoder (the packaged
        all-MiniLM-L6-v2), which gets a fresh MLM head (see :func:`~kdlight.models.hf.load_generator`).
    mask_rate: share of real, non-special tokens chosen for prediction (BERT: 0.15).
    mask_share, random_share: of the chosen tokens, the share replaced by ``[MASK]`` (0.8) and by a
        random token (0.1); the rest stay as they are.
    head_learning_rate: the learning rate of the MLM head's own parameters (its transform and output
        bias); ``learning_rate`` is the encoder's (and the tied word embeddings'). 0 freezes the encoder.
    train_layers: how many of the encoder's top blocks train (with the head); the embeddings (tied to the
        decoder) and the blocks below stay frozen, so no gradient is computed through them (a CPU saver).
        ``None``: the whole model trains.
    **kwargs: see :class:`KDLightTask` (``learning_rate``, ``warmup_ratio``, ``export_dir`` ...).
    """

    predictor_attr = "model"
    default_tokenizer_arg = "model"

    def __init__(
        self,
        model: str = "packaged/all-MiniLM-L6-v2",
        mask_rate: float = 0.15,
        mask_share: float = 0.8,
        random_share: float = 0.1,
        head_learning_rate: float = 1e-3,
        train_layers: int | None = None,
        **kwargs,
    ) -> None:
        if not 0 < mask_rate < 1:
            raise KDLightError(f"mask_rate must be in (0, 1), got {mask_rate}")
        if mask_share < 0 or random_share < 0 or mask_share + random_share > 1:
            raise KDLightError(
                f"mask_share and random_share must be >= 0 and sum to at most 1, got {mask_share} and {random_share}"
            )
        if train_layers is not None and train_layers < 0:
            raise KDLightError(f"train_layers must be >= 0 or null (all), got {train_layers}")
        if head_learning_rate < 0:
            raise KDLightError(f"head_learning_rate must be >= 0, got {head_learning_rate}")
        self.model_source = model
        super().__init__(**kwargs)
        self.val_loss_sum, self.val_correct, self.val_count = SumMetric(), SumMetric(), SumMetric()
        self.special_ids: Tensor | None = None

    def configure_models(self) -> None:
        self.model = load_generator(self.model_source).train()
        layers = self.hparams.train_layers
        if layers is not None:
            blocks = self.model.base_model.encoder.layer
            if layers > len(blocks):
                raise KDLightError(f"train_layers={layers} but the model has {len(blocks)} blocks")
            head = {id(p) for p in self.head_parameters()}
            trained = {id(p) for block in list(blocks)[len(blocks) - layers :] for p in block.parameters()}
            for p in self.model.parameters():
                p.requires_grad_(id(p) in head or id(p) in trained)

    def model_sources(self) -> dict[str, str]:
        return {"model": self.model_source}

    def configure_metrics(self, datamodule) -> None:
        pass  # unlabelled text: the masked tokens are the labels (see _eval_step)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        tokenizer = load_tokenizer(self.task.tokenizer or self.model_source)
        if tokenizer.mask_token_id is None:
            raise KDLightError(f"the tokenizer {tokenizer.name_or_path!r} has no mask token; an MLM needs one")
        self.mask_token_id = tokenizer.mask_token_id
        self.special_ids = torch.tensor(tokenizer.all_special_ids)
        vocab = self.model.get_input_embeddings().weight.shape[0]
        banned = set(banned_token_ids(tokenizer))
        self.random_ids = torch.tensor([i for i in range(vocab) if i not in banned])

    # ---------------------------------------------------------------------------------- steps
    def masked_loss(self, batch: dict[str, Tensor], generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
        """(summed cross-entropy, correct top-1 count, masked-token count) on one freshly masked batch."""
        hp = self.hparams
        inputs, labels = mask_tokens(
            batch["input_ids"],
            batch["attention_mask"],
            self.special_ids,
            self.mask_token_id,
            self.random_ids,
            hp.mask_rate,
            hp.mask_share,
            hp.random_share,
            generator,
        )
        chosen = labels != IGNORE_INDEX
        logits = masked_logits(self.model, {**model_inputs(batch), "input_ids": inputs}, chosen)
        targets = labels[chosen]
        loss_sum = F.cross_entropy(logits.float(), targets, reduction="sum")
        correct = (logits.argmax(-1) == targets).sum()
        return loss_sum, correct, chosen.sum()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss_sum, correct, count = self.masked_loss(batch, None)
        loss = loss_sum / count.clamp(min=1)
        parts = {"loss": loss, "accuracy": correct.float() / count.clamp(min=1)} if self.logs_this_step() else None
        self.log_training(parts, loss, len(batch["input_ids"]))
        return loss

    def _eval_step(self, stage: str, batch: dict[str, Tensor], dataloader_idx: int) -> Tensor:
        # the batch's first example index seeds its masking: the same held-out positions every validation
        generator = torch.Generator(device=batch["input_ids"].device)
        generator.manual_seed(VALIDATION_SEED + int(batch["idx"][0]) if "idx" in batch else VALIDATION_SEED)
        loss_sum, correct, count = self.masked_loss(batch, generator)
        self.val_loss_sum.update(loss_sum.detach())
        self.val_correct.update(correct.float())
        self.val_count.update(count.float())
        return loss_sum

    def on_validation_epoch_end(self) -> None:
        self.log_eval_metrics("val")

    def on_test_epoch_end(self) -> None:
        self.log_eval_metrics("test")

    def log_eval_metrics(self, stage: str) -> dict[str, Tensor]:
        """Token-weighted held-out accuracy, cross-entropy and perplexity (synced across ranks)."""
        count = self.val_count.compute().clamp(min=1)
        loss = self.val_loss_sum.compute() / count
        accuracy = self.val_correct.compute() / count
        for metric in (self.val_loss_sum, self.val_correct, self.val_count):
            metric.reset()
        logged = {
            f"{stage}/loss": loss,
            f"{stage}/accuracy": accuracy,
            f"{stage}/perplexity": torch.exp(loss.clamp(max=math.log(1e30))),
            f"{stage}/score": accuracy,
        }
        self.log_dict(logged, sync_dist=False, add_dataloader_idx=False)
        return logged

    def predict_step(self, batch, batch_idx, dataloader_idx: int = 0) -> Any:
        raise KDLightError("MaskedLMPretraining has no predictions; use its export as a zero-shot generator")

    def export_path(self) -> Path:
        return Path(os.path.expanduser(str(super().export_path())))  # the recipe's ~/.cache/kdlight/...

    # ------------------------------------------------------------------------- optimisation
    def head_parameters(self) -> list[nn.Parameter]:
        """The MLM head's own parameters (its decoder weight is the tied word embeddings: not these)."""
        head = getattr(self.model, "cls", None) or getattr(self.model, "lm_head", None)
        if head is None:
            return []
        shared = {id(p) for p in self.model.get_input_embeddings().parameters()}
        return [p for p in head.parameters() if p.requires_grad and id(p) not in shared]

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is not None:
            return super().configure_optimizers()
        hp = self.hparams
        head = self.head_parameters()
        head_ids = {id(p) for p in head}
        body = [p for p in self.trainable_parameters() if id(p) not in head_ids]
        groups = [
            {"params": [p for p in body if p.ndim >= 2], "lr": hp.learning_rate, "weight_decay": hp.weight_decay},
            {"params": [p for p in body if p.ndim < 2], "lr": hp.learning_rate, "weight_decay": 0.0},
            {"params": head, "lr": hp.head_learning_rate, "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], **fused_on_gpu(self.device))
        if self.scheduler_factory is not None:
            scheduler = self.scheduler_factory(optimizer)
        else:
            scheduler = self.linear_warmup(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


__all__ = ["MaskedLMPretraining"]
