"""The shared machinery of every labelled-text datamodule: load splits, tokenise, batch.

A subclass says what the task is (``num_labels``, ``metric``, ``label_names``, split names; a model
receives them with the tokenizer as one :class:`~kdlight.data.spec.TaskSpec`, ``datamodule.task``) and how
to load one split as a ``datasets.Dataset`` with the standard columns ``text``, optionally
``text_pair``, ``labels`` and ``idx`` (a stable example id: the row's position in its source split).
Everything else (tokenisation, cached ``map``, dynamic padding, loaders) lives here once.

DDP: ``prepare_data`` runs once per node and fills the datasets cache; ``setup`` repeats the same
loads and ``map`` calls on every rank, which are then cache hits for file-backed datasets.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import datasets
import torch
from lightning import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from kdlight.data.sampler import ResumableLoader, loader_generator
from kdlight.data.spec import TaskSpec
from kdlight.errors import KDLightError
from kdlight.models.hf import load_tokenizer  # re-exported: it lives with the model loaders

STANDARD_COLUMNS = ("text", "text_pair", "labels", "idx")
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(batch: dict) -> dict:
    """The keys of a batch that a model's forward takes (no labels, no ``idx``)."""
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


def tokenize_dataset(dataset: datasets.Dataset, tokenizer, max_length: int, desc: str) -> datasets.Dataset:
    """Tokenise the ``text`` (and ``text_pair``) columns with a cached ``map``; other columns stay."""
    pair = "text_pair" in dataset.column_names

    def encode(batch):
        if pair:
            return tokenizer(batch["text"], batch["text_pair"], truncation="longest_first", max_length=max_length)
        return tokenizer(batch["text"], truncation=True, max_length=max_length)

    drop = [c for c in ("text", "text_pair") if c in dataset.column_names]
    return dataset.map(encode, batched=True, remove_columns=drop, desc=f"tokenising {desc}")


class Collator:
    """Pads a list of tokenised examples to the longest in the batch (dynamic padding)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(e["input_ids"]) for e in examples)
        batch: dict[str, torch.Tensor] = {}
        for key in MODEL_INPUTS:
            if key not in examples[0]:
                continue
            pad = self.pad_token_id if key == "input_ids" else 0
            batch[key] = torch.tensor([list(e[key]) + [pad] * (longest - len(e[key])) for e in examples])
        for key in examples[0]:
            if key not in MODEL_INPUTS:
                batch[key] = torch.tensor([e[key] for e in examples])
        return batch


#: fewer validation examples than this make val/score (which picks the best checkpoint) mostly noise
TINY_VALIDATION = 30


def warn_if_tiny(split: str, size: int) -> None:
    if size < TINY_VALIDATION:
        rank_zero_info(
            f"[kdlight] warning: the {split} split has only {size} example{'s' if size != 1 else ''}; val/score, "
            "which picks the best checkpoint and the export, is measured on them alone: give a larger validation set"
        )


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_loader_settings(batch_size, eval_batch_size, num_workers, max_train_examples) -> None:
    """Reject sizes that would only fail later (a zero batch size fails inside the DataLoader)."""
    for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
        if value is not None and not (_is_count(value) and value >= 1):
            raise KDLightError(
                f"{name} must be a whole number >= 1, got {value!r}; set data.init_args.{name} (e.g. 32)"
            )
    if not (_is_count(num_workers) and num_workers >= 0):
        raise KDLightError(f"num_workers must be >= 0, got {num_workers!r}; 0 loads batches in the main process")
    if max_train_examples is not None and not (_is_count(max_train_examples) and max_train_examples >= 1):
        raise KDLightError(
            f"max_train_examples must be >= 1 or null (null keeps every training example), got {max_train_examples!r}"
        )


#: the loading settings every LabelledTextDataModule takes, with their defaults
LOADER_SETTINGS: dict[str, Any] = {
    "tokenizer": None,
    "max_length": 128,
    "batch_size": 32,
    "eval_batch_size": None,
    "num_workers": 0,
    "max_train_examples": None,
    "shuffle": True,
}


def loader_settings(datamodule: LabelledTextDataModule) -> dict[str, Any]:
    """The loading settings a datamodule was built with, by argument name."""
    return {
        "tokenizer": datamodule.tokenizer_name,
        "max_length": datamodule.max_length,
        "batch_size": datamodule.batch_size,
        "eval_batch_size": datamodule.given_eval_batch_size,
        "num_workers": datamodule.num_workers,
        "max_train_examples": datamodule.max_train_examples,
        "shuffle": datamodule.shuffle,
    }


def inherit_loader_settings(
    wrapper: str, arguments: dict[str, Any], inner: LabelledTextDataModule, inner_arg: str
) -> dict[str, Any]:
    """Loading settings for a datamodule that wraps ``inner``: its own where given, else the inner one's.

    ``arguments`` holds the wrapper's own arguments (its ``__init__``'s ``locals()``: only the loading
    settings are read), ``None`` where not given. ``inner`` must be a task datamodule. A setting given on both
    with different values is an error, since either silent choice would ignore one of them. (An
    inner setting equal to its default counts as not given: the constructed inner module cannot
    tell the two apart.)
    """
    if not isinstance(inner, LabelledTextDataModule):
        raise KDLightError(
            f"{inner_arg} must be a kdlight task datamodule (TextClassificationDataModule, RottenTomatoesDataModule, "
            f"GLUEDataModule ...), got {type(inner).__name__}"
        )
    given = {name: arguments.get(name) for name in LOADER_SETTINGS}
    inner_settings = loader_settings(inner)
    merged = {}
    for name, default in LOADER_SETTINGS.items():
        mine, theirs = given.get(name), inner_settings[name]
        if mine is not None and theirs != default and theirs != mine:
            raise KDLightError(
                f"{name} is set twice with different values: {mine!r} on {wrapper} and {theirs!r} on its {inner_arg} "
                f"({type(inner).__name__}); set it in one place (data.init_args.{name} or "
                f"data.init_args.{inner_arg}.init_args.{name})"
            )
        merged[name] = theirs if mine is None else mine
    return merged


class LabelledTextDataModule(LightningDataModule):
    """Base class: tokenised train/validation/test/predict splits of a labelled text task.

    Args:
        tokenizer: hub name or local folder of the tokenizer (``packaged/all-MiniLM-L6-v2`` for the
            offline model). Left empty in a recipe, the CLI fills in the model's own (its teacher's).
        max_length: tokens per example after truncation (pairs are truncated longest-first).
        batch_size: training batch size per process.
        eval_batch_size: validation/test batch size (defaults to ``2 * batch_size``).
        num_workers: dataloader worker processes.
        max_train_examples: keep only the first N training examples (after any shuffling the
            subclass does); for quick runs and studies. ``None`` keeps all.
        shuffle: shuffle the training set each epoch (seeded by ``seed_everything``; under DDP the
            distributed sampler shuffles with the same seed on every rank).
    """

    #: split names used for each stage; subclasses override
    train_split: str = "train"
    val_splits: tuple[str, ...] = ("validation",)
    test_splits: tuple[str, ...] = ("test",)
    predict_split: str = "test"

    def __init__(
        self,
        tokenizer: str | None = None,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        max_train_examples: int | None = None,
        shuffle: bool = True,
    ) -> None:
        super().__init__()
        if max_length < 8:
            raise KDLightError(f"max_length={max_length} is too short to hold a sentence; use 32 or more")
        check_loader_settings(batch_size, eval_batch_size, num_workers, max_train_examples)
        self.tokenizer_name = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.given_eval_batch_size = eval_batch_size  # kept apart: a wrapping datamodule inherits it as given
        self.eval_batch_size = eval_batch_size or 2 * batch_size
        self.num_workers = num_workers
        self.max_train_examples = max_train_examples
        self.shuffle = shuffle
        self.splits: dict[str, datasets.Dataset] = {}

    # ----------------------------------------------------------------- what a subclass provides
    num_labels: int
    metric: str
    label_names: list[str] | None = None

    def load_split(self, split: str) -> datasets.Dataset:
        """Return one split with columns ``text``, [``text_pair``], ``labels``, ``idx``."""
        raise NotImplementedError

    @property
    def is_pair_task(self) -> bool:
        return False

    @property
    def task(self) -> TaskSpec:
        """What a model needs to know about this data, in one object: ``VanillaKD(..., task=datamodule.task)``
        (the CLI links it into ``model.init_args.task``)."""
        return TaskSpec(
            num_labels=self.num_labels, label_names=self.label_names, metric=self.metric, tokenizer=self.tokenizer_name
        )

    # ----------------------------------------------------------------------------- machinery
    @cached_property
    def tokenizer(self):
        if not self.tokenizer_name:
            raise KDLightError(
                f"{type(self).__name__} needs a tokenizer: set "
                "data.init_args.tokenizer to a hub name or local model folder"
            )
        return load_tokenizer(self.tokenizer_name)

    def stage_splits(self, stage: str | None) -> list[str]:
        if stage == "fit":
            return [self.train_split, *self.val_splits]
        if stage == "validate":
            return list(self.val_splits)
        if stage == "test":
            return list(self.test_splits)
        if stage == "predict":
            return [self.predict_split]
        return list(dict.fromkeys([self.train_split, *self.val_splits, *self.test_splits]))

    def tokenize_split(self, split: str) -> datasets.Dataset:
        dataset = self.load_split(split)
        if split == self.train_split and self.max_train_examples is not None:
            dataset = dataset.select(range(min(self.max_train_examples, len(dataset))))
        return tokenize_dataset(dataset, self.tokenizer, self.max_length, split)

    def prepare_data(self) -> None:
        for split in self.stage_splits(None):
            self.tokenize_split(split)

    def setup(self, stage: str | None = None) -> None:
        for split in self.stage_splits(stage):
            if split not in self.splits:
                self.splits[split] = self.tokenize_split(split)
                if stage in ("fit", "validate") and split in self.val_splits:
                    warn_if_tiny(split, len(self.splits[split]))

    def _loader(self, split: str, shuffle: bool, batch_size: int) -> DataLoader:
        if split not in self.splits:  # a loader asked for outside trainer.fit/validate/test
            self.splits[split] = self.tokenize_split(split)
        return DataLoader(
            self.splits[split],
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=Collator(self.tokenizer.pad_token_id or 0),
            persistent_workers=self.num_workers > 0,
            generator=loader_generator(),
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_split not in self.splits:
            self.splits[self.train_split] = self.tokenize_split(self.train_split)
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        # One seeded epoch permutation on 1 process as on N (rank r of N takes every N-th example), so
        # a step of N x batch_size sees exactly the examples of a single-process step with N times the
        # batch; the loader also records its position so `--ckpt_path last` resumes mid-epoch exactly.
        return ResumableLoader(
            self.splits[self.train_split],
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            world_size=world,
            rank=rank,
            num_workers=self.num_workers,
            collate_fn=Collator(self.tokenizer.pad_token_id or 0),
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self):
        loaders = [self._loader(s, False, self.eval_batch_size) for s in self.val_splits]
        return loaders[0] if len(loaders) == 1 else loaders

    def test_dataloader(self):
        loaders = [self._loader(s, False, self.eval_batch_size) for s in self.test_splits]
        return loaders[0] if len(loaders) == 1 else loaders

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_split, False, self.eval_batch_size)

    def eval_split_names(self, stage: str) -> list[str]:
        """Names of the evaluation loaders, in dataloader order, for per-split metric keys."""
        return list(self.val_splits if stage in ("fit", "validate", "val") else self.test_splits)

    # ----------------------------------------------------------------------- checks for subclasses
    @staticmethod
    def require_columns(columns: list[str], wanted: dict[str, str | None], source: str) -> None:
        missing = {arg: col for arg, col in wanted.items() if col is not None and col not in columns}
        if missing:
            named = ", ".join(f"{arg}={col!r}" for arg, col in missing.items())
            raise KDLightError(
                f"{source}: column(s) not found: {named}. Available columns: {', '.join(map(str, columns))}. "
                f"Set the matching *_column argument to one of them."
            )


class WrappedTaskDataModule(LabelledTextDataModule):
    """Base of the datamodules built around a task datamodule (``datamodule``: noisy labels, augmented inputs).

    Args:
        datamodule: the wrapped task datamodule (``RottenTomatoesDataModule``, ``TextClassificationDataModule``,
            ``GLUEDataModule`` ...): its splits, labels and its own loading settings are used, unless given here.
        tokenizer, max_length, batch_size, eval_batch_size, num_workers, max_train_examples, shuffle: see
            :class:`LabelledTextDataModule`; left null, the wrapped datamodule's own value is used. Set on both
            with different values is an error (either silent choice would ignore one of them).
    """

    def __init__(
        self,
        datamodule: LabelledTextDataModule,
        tokenizer: str | None = None,
        max_length: int | None = None,
        batch_size: int | None = None,
        eval_batch_size: int | None = None,
        num_workers: int | None = None,
        max_train_examples: int | None = None,
        shuffle: bool | None = None,
    ) -> None:
        # null defaults, so that an unset setting defers to the wrapped module: a user who sets
        # max_train_examples there expects it to hold (it once corrupted the whole training set)
        super().__init__(**inherit_loader_settings(type(self).__name__, locals(), datamodule, "datamodule"))
        self.inner = datamodule
