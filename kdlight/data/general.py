"""CorpusDataModule: unlabelled text with a held-out split, for task-agnostic (general) distillation."""

from __future__ import annotations

import datasets
from torch.utils.data import DataLoader

from kdlight.data.base import Collator
from kdlight.data.corpus import OutOfDomainCorpus
from kdlight.data.spec import TaskSpec
from kdlight.errors import KDLightError


class CorpusDataModule(OutOfDomainCorpus):
    """The out-of-domain corpus as training batches, minus ``val_examples`` held-out inputs for validation.

    Read, shaped, shuffled, tokenised and cached exactly as :class:`OutOfDomainCorpus` (Wikipedia
    summaries offline, WikiText, or local text files); the last ``val_examples`` examples of the seeded
    shuffle are held out, so they never reach training. Batches carry no labels.

    Args:
        val_examples: held-out examples scored at validation (the relation loss on unseen text).
        **kwargs: see :class:`OutOfDomainCorpus` (source, num_examples, max_length, batch_size ...).
    """

    def __init__(self, val_examples: int = 500, **kwargs) -> None:
        super().__init__(**kwargs)
        if val_examples < 1:
            raise KDLightError(f"val_examples must be >= 1, got {val_examples}")
        self.val_examples = val_examples
        self.val_dataset: datasets.Dataset | None = None

    @property
    def task(self) -> TaskSpec:
        """Unlabelled text: the model (GeneralDistillation) takes only the tokenizer from it."""
        return TaskSpec(num_labels=0, tokenizer=self.tokenizer_name)

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        full = self.build()
        if len(full) <= self.val_examples:
            raise KDLightError(
                f"the corpus has {len(full)} examples, not more than val_examples={self.val_examples}; "
                "lower val_examples or use more text"
            )
        cut = len(full) - self.val_examples
        self.dataset, self.val_dataset = full.select(range(cut)), full.select(range(cut, len(full)))

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(
            self.val_dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=Collator(self.tokenizer.pad_token_id or 0),
        )


__all__ = ["CorpusDataModule"]
