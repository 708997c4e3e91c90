"""The lambda monitor: does ALM-KD's learned teacher weight find the noisy labels?

ALM-KD (:class:`~kdlight.modules.alm.AdaptiveLossMixingKD`) exists to give each training example its own
balance between the teacher and its (possibly wrong) label. When the datamodule knows which labels it
corrupted (:class:`~kdlight.data.noisy.NoisyLabelDataModule` puts ``is_flipped`` in every training batch),
:class:`LambdaMonitor` measures that mechanism every epoch, from the weights the student was actually
trained with (each training example's teacher weight at the step it was seen):

* ``lambda/flipped`` and ``lambda/clean``: the mean teacher weight on flipped and on clean examples;
* ``lambda/flipped_auc``: the ROC-AUC of the teacher weight as a detector of flipped labels (1: every
  flipped example has more teacher weight than every clean one; 0.5: chance; below 0.5: inverted);
* ``lambda/mean``, ``lambda/std`` over all examples.

It keeps the per-epoch numbers in :attr:`LambdaMonitor.history` (a study reads them) and, at the end of
fit, writes ``<log_dir>/lambda.png``: a histogram of the learned teacher weights, flipped vs clean.
:class:`~kdlight.modules.alm.AdaptiveLossMixingKD` returns one from ``configure_callbacks``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from kdlight.components.meta import MixingNetwork, teacher_share


def flipped_label_auc(weight: Tensor, flipped: Tensor) -> float | None:
    """ROC-AUC of ``weight`` as a score for ``flipped`` (Mann-Whitney U, ties counted one half).

    ``None`` when one of the two groups is empty.
    """
    weight, flipped = weight.detach().double().flatten().cpu(), flipped.bool().flatten().cpu()
    n_pos, n_neg = int(flipped.sum()), int((~flipped).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    # average ranks (ties share their mean rank)
    values, inverse, counts = torch.unique(weight, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    mean_rank = ends - (counts.double() - 1) / 2  # 1-based mean rank of each distinct value
    ranks = mean_rank[inverse]
    u = ranks[flipped].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def weight_summary(weight: Tensor, flipped: Tensor | None) -> dict[str, float]:
    """Mean/std of the teacher weight, and on flipped/clean examples with the AUC when ``flipped`` is known."""
    weight = weight.detach().float().cpu()
    out = {"mean": float(weight.mean()), "std": float(weight.std()) if len(weight) > 1 else 0.0}
    if flipped is not None:
        flipped = flipped.bool().cpu()
        if flipped.any():
            out["flipped"] = float(weight[flipped].mean())
        if (~flipped).any():
            out["clean"] = float(weight[~flipped].mean())
        auc = flipped_label_auc(weight, flipped)
        if auc is not None:
            out["flipped_auc"] = auc
    return out


class LambdaMonitor(Callback):
    """Per-epoch statistics of ALM-KD's teacher weights on flipped vs clean examples, and the histogram.

    Reads ``pl_module.last_teacher_weight`` (``(idx, weight)`` of the batch just trained on), which
    :class:`~kdlight.modules.alm.AdaptiveLossMixingKD` sets every training step, and the batch's
    ``is_flipped``. Args:
        plot: write ``<log_dir>/lambda.png`` at the end of fit (and log it if the logger takes images).
    """

    def __init__(self, plot: bool = True) -> None:
        self.plot = plot
        self.history: list[dict[str, float]] = []
        self._weights: list[Tensor] = []
        self._flipped: list[Tensor] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._weights, self._flipped = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int) -> None:
        seen = getattr(pl_module, "last_teacher_weight", None)
        if seen is None:
            return
        self._weights.append(seen[1].detach())
        if "is_flipped" in batch:
            self._flipped.append(batch["is_flipped"].detach())
        pl_module.last_teacher_weight = None

    def epoch_weights(self, pl_module) -> tuple[Tensor, Tensor | None]:
        """This epoch's teacher weights and flipped flags, gathered from every rank."""
        weight = torch.cat(self._weights) if self._weights else torch.zeros(0)
        flipped = torch.cat(self._flipped) if len(self._flipped) == len(self._weights) and self._flipped else None
        if pl_module.trainer.world_size > 1:  # equal shares per rank (the distributed sampler pads)
            weight = pl_module.all_gather(weight).flatten()
            flipped = pl_module.all_gather(flipped).flatten() if flipped is not None else None
        return weight, flipped

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        weight, flipped = self.epoch_weights(pl_module)
        if not len(weight):
            return
        stats = weight_summary(weight, flipped)
        self.history.append({"epoch": int(trainer.current_epoch), **stats})
        pl_module.log_dict({f"lambda/{k}": v for k, v in stats.items()}, sync_dist=False, rank_zero_only=True)
        pl_module.last_flip_stats = {
            f"lambda_{k}": v for k, v in stats.items() if k in ("flipped", "clean", "flipped_auc")
        }

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.plot and not trainer.fast_dev_run and getattr(pl_module.meta, "mixer", None) is not None:
            write_lambda_plot(trainer, pl_module)


@torch.no_grad()
def learned_lambdas(pl_module) -> tuple[Tensor, Tensor]:
    """(idx, teacher share) of every training example under the module's current mixer (the network: a
    forward pass over the training set)."""
    mixer, datamodule = pl_module.mixer, pl_module.trainer.datamodule
    if not isinstance(mixer, MixingNetwork):
        idx = torch.as_tensor(datamodule.splits[datamodule.train_split]["idx"], device=pl_module.device)
        return idx, teacher_share(mixer(idx))
    ids, shares = [], []
    for seen in pl_module.training_split():
        ids.append(seen.idx)
        shares.append(teacher_share(pl_module.meta.weights(seen, *pl_module.meta.losses(seen))))
    return torch.cat(ids), torch.cat(shares)


def write_lambda_plot(trainer, pl_module) -> Path | None:
    """``<log_dir>/lambda.png``: histogram of the learned teacher weights, flipped vs clean if known."""
    was_training = pl_module.student.training
    pl_module.student.eval()
    try:
        idx, lam = learned_lambdas(pl_module)
    finally:
        pl_module.student.train(was_training)
    root = Path(trainer.log_dir or trainer.default_root_dir)  # a collective under DDP: every rank asks
    if not trainer.is_global_zero:
        return None
    report = getattr(trainer.datamodule, "noise_report", None) or {}
    flipped_ids = set(report.get("flipped_idx", []))
    lam, idx = lam.float().cpu(), idx.cpu()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4))
    lo, hi = float(lam.min()), float(lam.max())
    if hi - lo < 1e-3:  # weights that did not move (e.g. no meta step yet): numpy cannot bin a zero range
        lo, hi = lo - 0.01, hi + 0.01
    bins = np.linspace(lo, hi, 41)
    if flipped_ids:
        mask = torch.tensor([int(i) in flipped_ids for i in idx], dtype=torch.bool)
        flipped, clean = lam[mask].numpy(), lam[~mask].numpy()
        auc = flipped_label_auc(lam, mask)
        label = f"clean labels (n={len(clean)}, mean {clean.mean():.3f})"
        ax.hist(clean, bins=bins, alpha=0.6, density=True, label=label)
        if len(flipped):
            label = f"flipped labels (n={len(flipped)}, mean {flipped.mean():.3f})"
            ax.hist(flipped, bins=bins, alpha=0.6, density=True, label=label)
        ax.legend(fontsize=8, title=None if auc is None else f"flipped-label AUC {auc:.3f}", title_fontsize=8)
    else:
        ax.hist(lam.numpy(), bins=bins, alpha=0.8, density=True)
    ax.set_xlabel("learned teacher weight lambda (w_KD / (w_CE + w_KD))")
    ax.set_ylabel("density")
    learner = f"{type(pl_module.meta).__name__}, {pl_module.meta.kind}"
    ax.set_title(f"ALM-KD ({learner}) after {pl_module.current_epoch} epoch(s)")
    fig.tight_layout()
    root.mkdir(parents=True, exist_ok=True)
    path = root / "lambda.png"
    fig.savefig(path, dpi=110)
    logged = False
    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(logger, "log_image"):  # W&B, Neptune
            logger.log_image(key="lambda", images=[str(path)])
            logged = True
        elif hasattr(experiment, "add_figure"):  # TensorBoard
            experiment.add_figure("lambda", fig, global_step=pl_module.global_step)
            logged = True
    plt.close(fig)
    rank_zero_info(f"[kdlight] learned lambda histogram: {path}{' (also logged)' if logged else ''}")
    return path


__all__ = ["LambdaMonitor", "flipped_label_auc", "learned_lambdas", "weight_summary", "write_lambda_plot"]
