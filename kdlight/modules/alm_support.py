"""What ALM-KD's LightningModule needs that is not its algorithm.

* :class:`MetaArgument`: the ``meta:`` init argument (a :class:`~kdlight.components.meta.MetaLearner`,
  :class:`~kdlight.components.meta.NetworkMetaLearner` or
  :class:`~kdlight.components.meta_official.OfficialMetaLearner`, by ``class_path``; the learner checks its
  own settings), and the flat keys it replaced (``algorithm: official``, ``meta_learning_rate``, ...), still
  accepted with a one-line deprecation notice naming the new key, so old YAMLs, scripts and checkpoints
  (whose hyper-parameters hold the flat keys) keep working;
* :func:`ordered_training_split`: the training split in a seeded, epoch-dependent order, split across
  ranks (the official meta pass, and the lambda plot with the mixing network).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Subset

from kdlight.components.meta import CleanScore, LookaheadScope, MetaInterval, MetaLearner, Mixer
from kdlight.components.meta_official import PER_BATCH_SETTINGS
from kdlight.data.base import Collator
from kdlight.errors import KDLightError, check_choice
from kdlight.modules.migrations import Flat

#: the flat keys of AdaptiveLossMixingKD before ``meta:`` (each is now ``meta.init_args.<key>``, except
#: ``algorithm``, which is ``meta.class_path``)
FLAT_META_KEYS = (
    "mixer",
    "init_lambda",
    "lookahead",
    "lookahead_lr",
    "meta_every",
    "meta_interval",
    "meta_warmup",
    "meta_steps",
    "meta_optimizer",
    "meta_learning_rate",
    "normalize_meta_grad",
    "center_meta_grad",
    "num_examples",
    "mixer_hidden",
    "clean_score",
    "algorithm",
    "grad_fit",
    "select_every",
    "warm_epoch",
    "meta_iterations",
)
Algorithm = Literal["default", "official"]
TABLE_ONLY = ("mixer", "num_examples", "normalize_meta_grad", "center_meta_grad")
OFFICIAL_ONLY = ("grad_fit", "select_every", "warm_epoch", "meta_iterations")


def meta_config_from_flat(flat: dict[str, Any]) -> dict[str, Any]:
    """The ``meta`` config that the old flat keys meant (each algorithm ignored the keys of the others:
    they are dropped, as before)."""
    algorithm = flat.pop("algorithm", "default")
    check_choice("algorithm", algorithm, Algorithm)
    if algorithm == "official":
        learner, ignored = "OfficialMetaLearner", PER_BATCH_SETTINGS
    elif flat.get("mixer") == "network":
        learner, ignored = "NetworkMetaLearner", (*OFFICIAL_ONLY, *TABLE_ONLY)
    else:
        learner, ignored = "MetaLearner", OFFICIAL_ONLY
    return {"class_path": learner, "init_args": {k: v for k, v in flat.items() if k not in ignored}}


class MetaArgument:
    """Mixin of :class:`~kdlight.modules.alm.AdaptiveLossMixingKD`: builds ``self.meta`` from ``meta``.

    Args:
        meta: the meta-learner, by ``class_path`` (``MetaLearner``, ``NetworkMetaLearner``,
            ``OfficialMetaLearner``) with its ``init_args`` (see those classes); default ``MetaLearner()``.
        mixer ... meta_iterations: deprecated flat forms of ``meta.init_args.<key>`` (``algorithm: official``:
            ``meta.class_path: OfficialMetaLearner``); accepted with a notice.
    """

    extra_teacher_sources: tuple[str, ...] | list[str] = ()  # MultiTeacherALMKD: the teachers after the first

    def __init__(
        self,
        meta: MetaLearner | None = None,
        mixer: Flat[Mixer] = None,
        init_lambda: Flat[float] = None,
        lookahead: Flat[LookaheadScope] = None,
        lookahead_lr: Flat[float] = None,
        meta_every: Flat[int] = None,
        meta_interval: Flat[MetaInterval] = None,
        meta_warmup: Flat[int] = None,
        meta_steps: Flat[int] = None,
        meta_optimizer: Flat[OptimizerCallable] = None,
        meta_learning_rate: Flat[float] = None,
        normalize_meta_grad: Flat[bool] = None,
        center_meta_grad: Flat[bool] = None,
        num_examples: Flat[int] = None,
        mixer_hidden: Flat[int] = None,
        clean_score: Flat[CleanScore] = None,
        algorithm: Flat[Algorithm] = None,
        grad_fit: Flat[int] = None,
        select_every: Flat[int] = None,
        warm_epoch: Flat[int] = None,
        meta_iterations: Flat[int] = None,
        **kwargs: Any,
    ) -> None:
        flat = {k: v for k, v in locals().items() if k in FLAT_META_KEYS and v is not None}
        if flat:
            if meta is not None:
                raise KDLightError(f"give {sorted(flat)[0]} in meta.init_args, not beside meta")
            rank_zero_info(
                f"[kdlight] AdaptiveLossMixingKD's flat keys ({', '.join(sorted(flat))}) are deprecated: write them as "
                "meta: {class_path: MetaLearner (algorithm: official -> OfficialMetaLearner), init_args: {<key>: ...}}"
            )
            meta = meta_config_from_flat(flat)
        owner = {"num_teachers": 1 + len(self.extra_teacher_sources), "temperature": kwargs.get("temperature", 4.0)}
        learner = MetaLearner.from_config(meta, **owner)  # its settings checked before any model loads
        super().__init__(**kwargs)
        for key in FLAT_META_KEYS:
            self.hparams.pop(key, None)
        self.hparams["meta"] = learner.to_config()  # plain data: Module(**hparams) rebuilds the same learner
        self.meta = learner


def ordered_training_split(trainer: Any, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
    """The whole training split in a seeded, epoch-dependent order (the authors' shuffled ``trainloader_ind``),
    every rank taking every N-th example of one permutation, padded so all ranks see as many batches."""
    datamodule = trainer.datamodule
    dataset = datamodule.splits[datamodule.train_split]
    world, rank = trainer.world_size, trainer.global_rank
    seed = int(datamodule.seed if hasattr(datamodule, "seed") else 0) * 1000 + epoch
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    per_rank = -(-len(order) // world)
    order = (order + order[: per_rank * world - len(order)])[rank::world]
    pad = datamodule.tokenizer.pad_token_id or 0
    yield from DataLoader(Subset(dataset, order), batch_size=datamodule.batch_size, collate_fn=Collator(pad))


__all__ = ["FLAT_META_KEYS", "MetaArgument", "meta_config_from_flat", "ordered_training_split"]
