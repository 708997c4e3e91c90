"""ZeroShotDataModule: train on out-of-domain text only, evaluate on the task.

Training batches come from an :class:`~kdlight.data.corpus.OutOfDomainCorpus` shaped like the task's
inputs (pairs for pair tasks); validation and test batches come from the task's own splits with its
own metric. The task's training split is never loaded: asking for it is an error, so no task
training example can reach the student or the generator.
"""

from __future__ import annotations

import datasets

from kdlight.data.base import LabelledTextDataModule
from kdlight.data.corpus import OutOfDomainCorpus
from kdlight.errors import KDLightError

OUT_OF_DOMAIN_SPLIT = "out_of_domain"


class ZeroShotDataModule(LabelledTextDataModule):
    """Args:
    task: the task to evaluate on (``GLUEDataModule``, ``TextClassificationDataModule`` with
        only ``val_file``/``test_file``, ``RottenTomatoesDataModule`` ...). Only its evaluation
        splits and label set are used (kept as ``inner``; ``task`` is this module's TaskSpec).
    corpus: the out-of-domain text (default ``OutOfDomainCorpus()``: WikiText-103). A copy of it
        is used, with the tokenizer, max length, pair shape and batch size of this module and the task.
    **kwargs: see :class:`LabelledTextDataModule` (tokenizer: the teacher's, filled by the CLI;
        max_length: the task's; batch sizes ...). ``max_train_examples`` caps the corpus.
    """

    train_split = OUT_OF_DOMAIN_SPLIT

    def __init__(self, task: LabelledTextDataModule, corpus: OutOfDomainCorpus | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if not isinstance(task, LabelledTextDataModule):
            raise KDLightError(
                "task must be a kdlight task datamodule (GLUEDataModule, TextClassificationDataModule ...), "
                f"got {type(task).__name__}"
            )
        self.inner = task  # ``self.task`` is this module's TaskSpec, as on every datamodule
        self.num_labels, self.metric, self.label_names = task.num_labels, task.metric, task.label_names
        self.val_splits, self.test_splits = tuple(task.val_splits), tuple(task.test_splits)
        self.predict_split = task.predict_split
        corpus = corpus or OutOfDomainCorpus()
        # a copy shaped like the task's inputs; the corpus given is left as it is
        self.corpus = corpus.shaped_like(
            pair=task.is_pair_task,
            tokenizer=self.tokenizer_name,
            max_length=self.max_length,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            num_examples=corpus.num_examples if self.max_train_examples is None else self.max_train_examples,
        )

    @property
    def is_pair_task(self) -> bool:
        return self.inner.is_pair_task

    def load_split(self, split: str) -> datasets.Dataset:
        if split == self.inner.train_split and split != OUT_OF_DOMAIN_SPLIT:
            raise KDLightError(
                "zero-shot distillation never reads the task's training "
                f"split ({split!r}); training inputs come from the corpus"
            )
        return self.inner.load_split(split)

    def tokenize_split(self, split: str) -> datasets.Dataset:
        if split == OUT_OF_DOMAIN_SPLIT:
            return self.corpus.build()
        return super().tokenize_split(split)

    def state_dict(self) -> dict:
        return {"label_names": self.label_names, "num_labels": self.num_labels, "corpus": self.corpus.source}
