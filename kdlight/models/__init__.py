"""Plain torch/transformers building blocks (no Lightning): model loading and student builders."""

from kdlight.models.compact import CompressedEmbeddingStudent
from kdlight.models.hf import count_parameters, load_classifier, load_from_checkpoint, load_tokenizer
from kdlight.models.students import FreshStudent, PretrainedStudent, StudentSpec, TruncatedTeacher, check_compatible

__all__ = [
    "CompressedEmbeddingStudent",
    "FreshStudent",
    "PretrainedStudent",
    "StudentSpec",
    "TruncatedTeacher",
    "check_compatible",
    "count_parameters",
    "load_classifier",
    "load_from_checkpoint",
    "load_tokenizer",
]
