"""What ALM-KD's LightningModule needs that is not its algorithm.

* :class:`MetaArgument`: the ``meta:`` init argument (a :class:`~kdlight.components.meta.MetaLearner`,
  :class:`~kdlight.components.meta.NetworkMetaLearner` or
  :class:`~kdlight.components.meta_official.OfficialMetaLearner`, by ``class_path``; the learner checks its
  own settings), and the flat keys it replaced (``algorithm: official``, ``meta_learning_rate``, ...): a
  script's call or an old checkpoint's hyper-parameters that hold them keep working, with a one-line notice
  naming the new form; a YAML or command line that gives them is one parser error naming the new key;
* :func:`ordered_training_split`: the training split in a seeded, epoch-dependent order, split across
  ranks (the official meta pass, and the lambda plot with the mixing network).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Subset

from kdlight.components.meta import MetaLearner
from kdlight.components.meta_official import PER_BATCH_SETTINGS
from kdlight.data.base import Collator
from kdlight.errors import KDLightError, check_choice
from kdlight.modules.migrations import pop_moved

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

    The flat keys ``meta:`` replaced (:data:`FLAT_META_KEYS`: ``meta.init_args.<key>``; ``algorithm: official``
    is ``meta.class_path: OfficialMetaLearner``) reach ``__init__`` only from a script or an old checkpoint's
    hyper-parameters, and are translated with a notice; the CLI's parser names the new key
    (:attr:`moved_arguments`).
    """

    #: the parser's hint for a moved key in a YAML (:mod:`kdlight.parse_errors`)
    moved_arguments = {
        **{key: f"meta.init_args.{key}" for key in FLAT_META_KEYS if key != "algorithm"},
        "algorithm": "meta.class_path (official: OfficialMetaLearner)",
    }

    extra_teacher_sources: tuple[str, ...] | list[str] = ()  # MultiTeacherALMKD: the teachers after the first

    def __init__(self, meta: MetaLearner | None = None, **kwargs: Any) -> None:
        flat = pop_moved(kwargs, FLAT_META_KEYS)
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
