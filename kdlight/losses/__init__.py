"""Distillation losses: on logits (:mod:`kdlight.losses.logits`) and inside the networks
(:mod:`kdlight.losses.layerwise`: TinyBERT, MiniLMv2, PKD)."""

from kdlight.losses.layerwise import (
    AttentionMSE,
    EmbeddingMSE,
    HiddenMSE,
    IntermediateLoss,
    PatientCLS,
    SelfAttentionRelations,
)
from kdlight.losses.logits import (
    KLDivergence,
    LogitMSE,
    SoftCrossEntropy,
    check_temperature,
    distillation_loss,
    label_loss,
    labelled_loss,
)

__all__ = [
    "AttentionMSE",
    "EmbeddingMSE",
    "HiddenMSE",
    "IntermediateLoss",
    "KLDivergence",
    "LogitMSE",
    "PatientCLS",
    "SelfAttentionRelations",
    "SoftCrossEntropy",
    "check_temperature",
    "distillation_loss",
    "label_loss",
    "labelled_loss",
]
