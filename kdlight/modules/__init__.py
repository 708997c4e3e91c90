"""kdlight's LightningModules."""

from kdlight.modules.alm import AdaptiveLossMixingKD, MultiTeacherALMKD
from kdlight.modules.distiller import BaseDistiller
from kdlight.modules.general import GeneralDistillation
from kdlight.modules.layerwise import LayerwiseKD
from kdlight.modules.mate import AdversarialAugmentedKD
from kdlight.modules.mlm import MaskedLMPretraining
from kdlight.modules.task import KDLightTask
from kdlight.modules.teacher import TeacherFineTuning
from kdlight.modules.vanilla import TeacherDisagreementKD, VanillaKD
from kdlight.modules.zeroshot import ZeroShotAdversarialKD

__all__ = [
    "AdaptiveLossMixingKD",
    "AdversarialAugmentedKD",
    "BaseDistiller",
    "GeneralDistillation",
    "KDLightTask",
    "LayerwiseKD",
    "MaskedLMPretraining",
    "MultiTeacherALMKD",
    "TeacherDisagreementKD",
    "TeacherFineTuning",
    "VanillaKD",
    "ZeroShotAdversarialKD",
]
