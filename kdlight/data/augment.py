"""More inputs for the student than the labelled rows: the training set of a KD run, augmented.

KD transfers more with more inputs: the teacher labels any text, so the student can learn from text
nobody labelled. :class:`AugmentedKDDataModule` wraps a task datamodule and extends its training split
with, in this order:

(a) the labelled training rows themselves (what plain KD uses; always there),
(b) ``unlabelled`` text: the wrapped training split's rows beyond ``max_train_examples`` (``task_rest``,
    their labels dropped), sentences of the offline Wikipedia summaries (``packaged/wiki_summaries``), or a
    local ``.txt`` (one text per line) / ``.csv`` (a ``text`` column) file,
(c) ``rewriter``: rewrites of the labelled texts by a :class:`TextRewriter` (the interface a trained
    masked-LM generator plugs into, as in MATE-KD; none ships yet), ``rewrite_copies`` per row,
(d) ``token_augment_copies`` copies of each labelled row with tokens masked or replaced at random
    (TinyBERT-style augmentation, the cheap control): each non-special token becomes ``[MASK]`` with
    probability ``mask_prob``, or a random token of the labelled training text with ``replace_prob``.

Every added row has the label :data:`UNLABELLED` (-100): the student learns only the teacher's soft
labels on it (the distiller's cross-entropy skips it; a module that cannot is refused at setup). Every
row has its own stable ``idx`` and every input is fixed when the datamodule is set up -- the random
draws of (c) and (d) are seeded per example (``augment_seed``, the row's ``idx``, the copy) -- so
``cache_teacher_logits: true`` computes the teacher once for all of them, and DDP (each rank takes every
N-th row of one seeded permutation) and ``--ckpt_path last`` resume see exactly the single-process rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import numpy as np

from kdlight.assets import wiki_summaries_path
from kdlight.data.base import LabelledTextDataModule, WrappedTaskDataModule, tokenize_dataset
from kdlight.data.corpus import clean_paragraph, split_sentences
from kdlight.errors import KDLightError

#: the label of a row the teacher labels and no person did (cross-entropy's ignore index)
UNLABELLED = -100
TASK_REST = "task_rest"
WIKI_SUMMARIES = "packaged/wiki_summaries"


class TextRewriter:
    """The interface of (c): rewrite texts, deterministically for a given seed.

    ``rewrite(texts, seeds)`` returns one rewrite per text; ``seeds[i]`` seeds the rewrite of
    ``texts[i]`` (the datamodule derives it from ``augment_seed``, the row's ``idx`` and the copy), so the
    same call gives the same rewrites on every rank and after a resume. A masked-LM generator (MATE-KD's,
    trained elsewhere) implements it by masking a share of each text's words and sampling its fill-ins.
    Rewrites are made once at setup, so the teacher's logits on them can be cached; a generator trained
    against the student as it learns (MATE-KD's adversarial loop) belongs in a module, not here.
    """

    def rewrite(self, texts: list[str], seeds: list[int]) -> list[str]:
        raise NotImplementedError


def example_seed(augment_seed: int, idx: int, copy: int) -> int:
    """The seed of one augmented copy of one example: a function of the three, nothing else."""
    return int(np.random.SeedSequence([augment_seed, idx, copy]).generate_state(1)[0])


def token_augment(
    input_ids: list[int],
    seed: int,
    mask_prob: float,
    replace_prob: float,
    mask_id: int,
    replacements: np.ndarray,
    special_ids: set[int],
) -> list[int]:
    """One copy of ``input_ids``: each non-special token masked with ``mask_prob``, else replaced by a
    random entry of ``replacements`` with ``replace_prob``; the same ``seed`` gives the same copy."""
    rng = np.random.default_rng(seed)
    draws = rng.random(len(input_ids))
    picks = rng.integers(0, max(len(replacements), 1), len(input_ids))
    out = list(input_ids)
    for i, token in enumerate(input_ids):
        if token in special_ids:
            continue
        if draws[i] < mask_prob:
            out[i] = mask_id
        elif draws[i] < mask_prob + replace_prob and len(replacements):
            out[i] = int(replacements[picks[i]])
    return out


def read_texts(source: str, min_words: int) -> list[str]:
    if source == WIKI_SUMMARIES:
        texts = []
        for line in wiki_summaries_path().read_text(encoding="utf-8").splitlines():
            paragraph = clean_paragraph(line)
            if paragraph:
                texts.extend(split_sentences(paragraph, min_words))
        return texts
    path = Path(source).expanduser()
    if not path.is_file():
        raise KDLightError(
            f"unlabelled source {source!r} not found: use {TASK_REST!r}, {WIKI_SUMMARIES!r}, "
            "or a local .txt (one text per line) or .csv (a 'text' column) file"
        )
    if path.suffix == ".csv":
        import pandas as pd

        frame = pd.read_csv(path)
        if "text" not in frame.columns:
            raise KDLightError(f"{source}: no 'text' column (columns: {', '.join(map(str, frame.columns))})")
        return [t for t in frame["text"].astype(str) if len(t.split()) >= min_words]
    return [t.strip() for t in path.read_text(encoding="utf-8").splitlines() if len(t.split()) >= min_words]


class AugmentedKDDataModule(WrappedTaskDataModule):
    """Wraps a task datamodule: its validation/test splits as they are, its training split extended with
    unlabelled text, rewrites and token-augmented copies (see the module's docstring).

    Args:
        datamodule: the task (``RottenTomatoesDataModule``, ``TextClassificationDataModule`` ...; single
            texts, not pairs, when text is added). Its loading settings are used unless given here.
        unlabelled: sources of unlabelled text: ``task_rest``, ``packaged/wiki_summaries``, or file paths.
        max_unlabelled: keep at most this many unlabelled texts in all (a seeded random choice; None: all).
        min_words: texts shorter than this are dropped from file and Wikipedia sources.
        rewriter: a :class:`TextRewriter` (class_path + init_args in a recipe), or null.
        rewrite_copies: rewrites per labelled row.
        token_augment_copies: token-augmented copies per labelled row (0: none).
        mask_prob, replace_prob: per-token probabilities of masking and of replacement in those copies.
        augment_seed: seeds every random draw here (independent of the training seed).
        tokenizer, max_length, batch_size, eval_batch_size, num_workers, max_train_examples, shuffle: as in
            :class:`LabelledTextDataModule`; ``max_train_examples`` counts the labelled rows only.
    """

    def __init__(
        self,
        datamodule: LabelledTextDataModule,
        unlabelled: list[str] | None = None,
        max_unlabelled: int | None = None,
        min_words: int = 4,
        rewriter: TextRewriter | None = None,
        rewrite_copies: int = 1,
        token_augment_copies: int = 0,
        mask_prob: float = 0.1,
        replace_prob: float = 0.1,
        augment_seed: int = 0,
        **loader_settings: Any,
    ) -> None:
        super().__init__(datamodule, **loader_settings)  # the loading settings: see WrappedTaskDataModule
        for name, value in (("rewrite_copies", rewrite_copies), ("token_augment_copies", token_augment_copies)):
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
                raise KDLightError(f"{name} must be a whole number >= 0, got {value!r}")
        if not (0 <= mask_prob <= 1 and 0 <= replace_prob <= 1 and mask_prob + replace_prob <= 1):
            raise KDLightError(
                f"mask_prob and replace_prob must be in [0, 1] with a sum <= 1, got {mask_prob} and {replace_prob}"
            )
        if max_unlabelled is not None and not (isinstance(max_unlabelled, int) and max_unlabelled >= 1):
            raise KDLightError(f"max_unlabelled must be a whole number >= 1 or null, got {max_unlabelled!r}")
        if rewriter is not None and not isinstance(rewriter, TextRewriter):
            raise KDLightError(f"rewriter must be a kdlight TextRewriter, got {type(rewriter).__name__}")
        if (unlabelled or rewriter is not None or token_augment_copies) and getattr(datamodule, "num_labels", 2) < 2:
            raise KDLightError(
                "unlabelled text, rewrites and token augmentation are for classification tasks (rows without "
                "a label are marked -100, which a regression target cannot tell from a value)"
            )
        if (unlabelled or rewriter is not None) and datamodule.is_pair_task:
            raise KDLightError("unlabelled text and rewrites are for single-text tasks; this task has text pairs")
        self.unlabelled = list(unlabelled or [])
        self.max_unlabelled, self.min_words = max_unlabelled, min_words
        self.rewriter, self.rewrite_copies = rewriter, rewrite_copies
        self.token_augment_copies, self.mask_prob, self.replace_prob = token_augment_copies, mask_prob, replace_prob
        self.augment_seed = augment_seed
        self.num_labels, self.metric, self.label_names = (
            datamodule.num_labels,
            datamodule.metric,
            datamodule.label_names,
        )
        self.train_split = datamodule.train_split
        self.val_splits, self.test_splits = tuple(datamodule.val_splits), tuple(datamodule.test_splits)
        self.predict_split = datamodule.predict_split
        self.added_rows: dict[str, int] = {}  # what was added, by kind (filled at setup)

    @property
    def is_pair_task(self) -> bool:
        return self.inner.is_pair_task

    # ------------------------------------------------------------------------------ the rows
    def labelled_rows(self) -> datasets.Dataset:
        full = self.inner.load_split(self.inner.train_split)
        limit = len(full) if self.max_train_examples is None else min(self.max_train_examples, len(full))
        return full.select(range(limit))

    def _unlabelled_texts(self) -> list[tuple[str, int | None]]:
        """(text, own idx or None) of every unlabelled source, in order; ``task_rest`` rows keep their idx."""
        rows: list[tuple[str, int | None]] = []
        for source in self.unlabelled:
            if source == TASK_REST:
                full = self.inner.load_split(self.inner.train_split)
                start = len(full) if self.max_train_examples is None else min(self.max_train_examples, len(full))
                rest = full.select(range(start, len(full)))
                rows.extend(zip(rest["text"], rest["idx"], strict=True))
            else:
                rows.extend((text, None) for text in read_texts(source, self.min_words))
        if self.max_unlabelled is not None and len(rows) > self.max_unlabelled:
            keep = np.random.default_rng(self.augment_seed).choice(len(rows), self.max_unlabelled, replace=False)
            rows = [rows[i] for i in sorted(keep)]
        return rows

    def load_split(self, split: str) -> datasets.Dataset:
        """The training split: the labelled rows, then the unlabelled texts and the rewrites (token-level
        copies are added after tokenisation); other splits: the wrapped module's."""
        if split != self.train_split:
            return self.inner.load_split(split)
        labelled = self.labelled_rows()
        full_size = len(self.inner.load_split(self.inner.train_split))
        next_idx = max(full_size, max(labelled["idx"], default=-1) + 1)
        texts, idxs = [], []
        unlabelled = self._unlabelled_texts()
        for text, own in unlabelled:
            if own is None:
                own, next_idx = next_idx, next_idx + 1
            texts.append(text)
            idxs.append(int(own))
        # new ids start above every id of the wrapped split (task_rest rows keep theirs)
        next_idx = max([next_idx, *(i + 1 for i in idxs)])
        rewrites = 0
        if self.rewriter is not None and self.rewrite_copies:
            for copy in range(self.rewrite_copies):
                seeds = [example_seed(self.augment_seed, int(i), 1000 + copy) for i in labelled["idx"]]
                new = self.rewriter.rewrite(list(labelled["text"]), seeds)
                if len(new) != len(labelled):
                    raise KDLightError(
                        f"the rewriter returned {len(new)} texts for {len(labelled)}: it must return one per text"
                    )
                texts.extend(new)
                idxs.extend(range(next_idx, next_idx + len(new)))
                next_idx += len(new)
                rewrites += len(new)
        self.added_rows = {"unlabelled": len(unlabelled), "rewrites": rewrites}
        if not texts:
            return labelled
        extra = datasets.Dataset.from_dict(
            {"text": texts, "labels": [UNLABELLED] * len(texts), "idx": idxs},
            features=datasets.Features(
                {"text": labelled.features["text"], "labels": datasets.Value("int64"), "idx": datasets.Value("int64")}
            ),
        )
        labelled = labelled.select_columns(["text", "labels", "idx"]).cast(
            datasets.Features(
                {"text": labelled.features["text"], "labels": datasets.Value("int64"), "idx": datasets.Value("int64")}
            )
        )
        return datasets.concatenate_datasets([labelled, extra])

    def tokenize_split(self, split: str) -> datasets.Dataset:
        if split != self.train_split:
            return super().tokenize_split(split)
        encoded = tokenize_dataset(self.load_split(split), self.tokenizer, self.max_length, split)
        return self._add_token_augmented(encoded)

    def _add_token_augmented(self, encoded: datasets.Dataset) -> datasets.Dataset:
        self.added_rows["token_augmented"] = 0
        if not self.token_augment_copies:
            return encoded
        tokenizer = self.tokenizer
        if tokenizer.mask_token_id is None and self.mask_prob > 0:
            raise KDLightError("token augmentation with mask_prob > 0 needs a tokenizer with a [MASK] token")
        labelled = encoded.filter(lambda labels: labels != UNLABELLED, input_columns="labels")
        special = set(tokenizer.all_special_ids)
        # replacements come from the labelled text's own tokens: a compact student's pruned vocabulary
        # holds exactly those, so a replacement is never an [UNK] to it
        vocabulary = np.array(sorted({t for ids in labelled["input_ids"] for t in ids} - special), dtype=np.int64)
        next_idx = max(encoded["idx"]) + 1
        columns = {c: [] for c in encoded.column_names}
        for copy in range(self.token_augment_copies):
            for row in labelled:
                for c in encoded.column_names:
                    columns[c].append(row[c])
                columns["input_ids"][-1] = token_augment(
                    row["input_ids"],
                    example_seed(self.augment_seed, int(row["idx"]), copy),
                    self.mask_prob,
                    self.replace_prob,
                    tokenizer.mask_token_id if tokenizer.mask_token_id is not None else 0,
                    vocabulary,
                    special,
                )
                columns["labels"][-1] = UNLABELLED
                columns["idx"][-1] = next_idx
                next_idx += 1
        self.added_rows["token_augmented"] = len(columns["idx"])
        extra = datasets.Dataset.from_dict(columns, features=encoded.features)
        return datasets.concatenate_datasets([encoded, extra])

    # ------------------------------------------------------------------------------- checks
    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        module = self.trainer.lightning_module if self.trainer is not None else None
        adds = self.unlabelled or self.rewriter is not None or self.token_augment_copies
        if (
            stage in ("fit", None)
            and adds
            and module is not None
            and not getattr(module, "learns_from_unlabelled", False)
        ):
            raise KDLightError(
                f"{type(module).__name__} cannot train on rows without labels: use AugmentedKDDataModule's unlabelled "
                "text, rewrites and token augmentation with a distiller that can (VanillaKD)"
            )

    def state_dict(self) -> dict:
        return {"added_rows": dict(self.added_rows)}


__all__ = ["UNLABELLED", "AugmentedKDDataModule", "TextRewriter", "example_seed", "token_augment"]
