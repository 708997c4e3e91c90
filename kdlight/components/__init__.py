"""Plain torch components (no Lightning) that own an algorithm's networks and maths; thin LightningModules step them."""

from kdlight.components.meta import LambdaTable, MetaBatch, MetaLearner, MixingNetwork
from kdlight.components.meta_official import OfficialMetaLearner

__all__ = ["LambdaTable", "MetaBatch", "MetaLearner", "MixingNetwork", "OfficialMetaLearner"]
