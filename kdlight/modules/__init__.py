"""kdlight's LightningModules."""

from kdlight.modules.distiller import BaseDistiller
from kdlight.modules.task import KDLightTask
from kdlight.modules.teacher import TeacherFineTuning
from kdlight.modules.vanilla import VanillaKD

__all__ = ["BaseDistiller", "KDLightTask", "TeacherFineTuning", "VanillaKD"]
from kdlight.modules.alm import AdaptiveLossMixingKD, MultiTeacherALMKD  # noqa: E402

__all__ += ["AdaptiveLossMixingKD", "MultiTeacherALMKD"]
from kdlight.modules.zeroshot import ZeroShotAdversarialKD  # noqa: E402

__all__ += ["ZeroShotAdversarialKD"]
from kdlight.modules.general import GeneralDistillation  # noqa: E402
from kdlight.modules.layerwise import LayerwiseKD  # noqa: E402

__all__ += ["GeneralDistillation", "LayerwiseKD"]
from kdlight.modules.mlm import MaskedLMPretraining  # noqa: E402

__all__ += ["MaskedLMPretraining"]
