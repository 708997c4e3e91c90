"""FSDP for teachers (or students) too large for one GPU, configurable from YAML.

Lightning's ``FSDPStrategy`` takes ``auto_wrap_policy`` as a set of module classes, which a YAML
file cannot name. ``LayerWiseFSDP`` takes their import paths instead and shards every transformer
block as its own FSDP unit, so a forward pass gathers one block at a time rather than the whole
model. ``use_orig_params=True`` is the default because a distiller mixes a frozen teacher and a
trainable student in one module.
"""

from __future__ import annotations

import importlib

from lightning.pytorch.strategies import FSDPStrategy

from kdlight.errors import KDLightError


def import_class(path: str) -> type:
    module_name, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        raise KDLightError(
            f"cannot import layer class {path!r}; "
            "give its full path, e.g. transformers.models.bert.modeling_bert.BertLayer"
        ) from None


class LayerWiseFSDP(FSDPStrategy):
    """FSDP that wraps each transformer block (by class import path) as its own unit.

    Args:
        layer_classes: import paths of the block classes to wrap (default: BERT's ``BertLayer``).
        **kwargs: passed to ``FSDPStrategy`` (``sharding_strategy``, ``cpu_offload``, ...).
    """

    def __init__(
        self,
        layer_classes: list[str] | None = None,
        sharding_strategy: str = "FULL_SHARD",
        use_orig_params: bool = True,
        **kwargs,
    ) -> None:
        paths = layer_classes or ["transformers.models.bert.modeling_bert.BertLayer"]
        self.layer_classes = {import_class(p) for p in paths}
        super().__init__(
            auto_wrap_policy=self.layer_classes,
            sharding_strategy=sharding_strategy,
            use_orig_params=use_orig_params,
            **kwargs,
        )
