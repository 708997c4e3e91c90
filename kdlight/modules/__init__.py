"""kdlight's LightningModules."""

from kdlight.modules.base import BaseDistiller
from kdlight.modules.task import KDLightTask
from kdlight.modules.teacher import TeacherFineTuning
from kdlight.modules.vanilla import VanillaKD

__all__ = ["BaseDistiller", "KDLightTask", "TeacherFineTuning", "VanillaKD"]
