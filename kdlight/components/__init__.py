"""Plain torch components (no Lightning) that own a seed paper's extra networks and their maths.

A kdlight LightningModule registers a component as an ordinary submodule and only orders the steps:
the component holds its network, its optimiser factory, its step counter and state, and reduces its
own gradients across ranks (:mod:`kdlight.distributed`).
"""

from kdlight.components.generator import AdversarialGenerator
from kdlight.components.meta import LambdaTable, MetaBatch, MetaLearner, MixingNetwork
from kdlight.components.meta_official import OfficialMetaLearner

__all__ = ["AdversarialGenerator", "LambdaTable", "MetaBatch", "MetaLearner", "MixingNetwork", "OfficialMetaLearner"]
