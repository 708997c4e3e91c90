"""LightningDataModules: labelled text (GLUE, local files), and their variants."""

from kdlight.data.base import LabelledTextDataModule, load_tokenizer
from kdlight.data.glue import GLUE_TASKS, GLUEDataModule
from kdlight.data.spec import TaskSpec
from kdlight.data.text import RottenTomatoesDataModule, TextClassificationDataModule, TweetSentimentDataModule

__all__ = [
    "GLUE_TASKS",
    "GLUEDataModule",
    "LabelledTextDataModule",
    "RottenTomatoesDataModule",
    "TaskSpec",
    "TextClassificationDataModule",
    "TweetSentimentDataModule",
    "load_tokenizer",
]
from kdlight.data.noisy import NoisyLabelDataModule  # noqa: E402

__all__ += ["NoisyLabelDataModule"]
from kdlight.data.corpus import OutOfDomainCorpus  # noqa: E402
from kdlight.data.zeroshot import ZeroShotDataModule  # noqa: E402

__all__ += ["OutOfDomainCorpus", "ZeroShotDataModule"]
from kdlight.data.general import CorpusDataModule  # noqa: E402

__all__ += ["CorpusDataModule"]
from kdlight.data.mlm import MaskedLMCorpusDataModule  # noqa: E402

__all__ += ["MaskedLMCorpusDataModule"]
from kdlight.data.augment import AugmentedKDDataModule, TextRewriter  # noqa: E402

__all__ += ["AugmentedKDDataModule", "TextRewriter"]
