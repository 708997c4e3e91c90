"""Callbacks the CLI adds to every run."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint


class LatestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` always holds the latest state.

    Lightning 2.6 rewrites ``last.ckpt`` only when a top-k checkpoint is written, so after a plateau
    ``--ckpt_path last`` would resume from the last *improvement*. Here ``last.ckpt`` is refreshed at
    every validation and at the end of training, so a stopped run resumes where it stopped.
    """

    def _refresh_last(self, trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        self._refresh_last(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        self._refresh_last(trainer)


class PredictionWriter(BasePredictionWriter):
    """Writes ``kdlight predict`` output to ``<log_dir>/predictions.csv``: idx, prediction, label, logits.

    Under DDP each rank writes ``predictions_rank<r>.csv`` (the distributed sampler splits the rows).

    Args:
        output_file: where to write; default ``<log_dir or default_root_dir>/predictions.csv``.
    """

    def __init__(self, output_file: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output_file = output_file

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        # trainer.log_dir is a collective under DDP: every rank asks, even one with nothing to write
        path = Path(self.output_file) if self.output_file else Path(trainer.log_dir or trainer.default_root_dir) / "predictions.csv"
        if not predictions:
            return
        batches = predictions[0] if isinstance(predictions[0], list) else predictions
        idx = torch.cat([b["idx"] for b in batches]).tolist()
        preds = torch.cat([b["prediction"] for b in batches]).tolist()
        logits = torch.cat([b["logits"].float() for b in batches]).tolist()
        names = pl_module.hparams.get("label_names") or None
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}_rank{trainer.global_rank}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["idx", "prediction", "label", "logits"])
            for i, p, l in zip(idx, preds, logits):
                label = names[int(p)] if names and float(p).is_integer() and 0 <= int(p) < len(names) else ""
                writer.writerow([i, p, label, " ".join(f"{v:.5f}" for v in l)])
        print(f"[kdlight] wrote {len(idx)} predictions to {path}")
