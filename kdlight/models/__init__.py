"""Plain torch/transformers building blocks (no Lightning): model loading and student builders."""

from kdlight.models.hf import count_parameters, load_classifier, load_from_checkpoint
from kdlight.models.students import FreshStudent, PretrainedStudent, StudentSpec, TruncatedTeacher, check_compatible

__all__ = [
    "FreshStudent",
    "PretrainedStudent",
    "StudentSpec",
    "TruncatedTeacher",
    "check_compatible",
    "count_parameters",
    "load_classifier",
    "load_from_checkpoint",
]
from kdlight.models.compact import CompressedEmbeddingStudent  # noqa: E402

__all__ += ["CompressedEmbeddingStudent"]
