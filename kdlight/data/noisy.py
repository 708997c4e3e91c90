"""NoisyLabelDataModule: any classification datamodule with a clean validation split and label noise.

Order of operations (a pure function of the wrapped data and ``seed``):

1. the wrapped datamodule's training split is read (first ``max_train_examples`` rows if given);
2. a clean validation split of ``clean_val_size`` examples (a count, or a fraction if < 1) is carved
   out with a seeded permutation, *before any corruption*; the meta step of ALM-KD draws from it;
3. the remaining training examples get noisy labels (``uniform``, ``symmetric``, ``asymmetric`` or
   ``instance``);
4. validation and test splits are the wrapped module's own, never touched.

The nominal rate, the realised flip rate (for ``uniform`` about ``rate * (K - 1) / K``), the flipped
``idx`` values and the empirical transition matrix
``T[clean, noisy]`` are written to ``<log_dir>/noise.json`` at setup and logged. Training batches
carry ``labels`` (noisy), and for analysis only ``is_flipped`` and ``clean_labels``; no kdlight
module trains on the last two.
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, DistributedSampler, Subset

from kdlight.data.base import Collator, LabelledTextDataModule, WrappedTaskDataModule, tokenize_dataset
from kdlight.errors import KDLightError, check_choice
from kdlight.models.hf import load_classifier

NoiseType = Literal["uniform", "symmetric", "asymmetric", "instance"]
CLEAN_VAL_SPLIT = "clean_validation"


def corrupt_labels(
    labels: np.ndarray,
    num_labels: int,
    noise_type: NoiseType,
    rate: float,
    seed: int,
    mapping: dict[int, int] | None = None,
    scores: np.ndarray | None = None,
    targets: np.ndarray | None = None,
) -> np.ndarray:
    """Return noisy labels. ``round(rate * n)`` examples are corrupted (per class for asymmetric).

    * uniform (the official ALM-KD code, ``KD/utils/custom_dataset.py`` ``create_noisy``): a uniformly
      chosen set of examples gets a label drawn uniformly over all ``num_labels`` classes, so about
      ``1 / num_labels`` of them keep their label and ``rate * (K - 1) / K`` of all labels change;
    * symmetric: a uniformly chosen set of examples, each moved to a uniformly random *other* class;
    * asymmetric: in every class ``c`` with ``c in mapping``, ``round(rate * n_c)`` examples flip to
      ``mapping[c]`` (default mapping ``c -> (c + 1) % num_labels``);
    * instance: examples drawn without replacement with probability proportional to ``scores``
      (e.g. one minus a reference model's probability of the label), flipped to ``targets``
      (e.g. the reference model's most likely other class) or a random other class.
    """
    check_choice("noise_type", noise_type, NoiseType)
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels, dtype=np.int64)
    noisy = labels.copy()
    n = len(labels)
    if noise_type == "uniform":
        chosen = rng.permutation(n)[: int(round(rate * n))]
        noisy[chosen] = rng.integers(0, num_labels, size=len(chosen))
    elif noise_type == "symmetric":
        chosen = rng.permutation(n)[: int(round(rate * n))]
        shift = rng.integers(1, num_labels, size=len(chosen))
        noisy[chosen] = (labels[chosen] + shift) % num_labels
    elif noise_type == "asymmetric":
        mapping = mapping if mapping is not None else {c: (c + 1) % num_labels for c in range(num_labels)}
        for source, target in mapping.items():
            members = np.flatnonzero(labels == source)
            chosen = rng.permutation(members)[: int(round(rate * len(members)))]
            noisy[chosen] = target
    else:  # instance
        if scores is None:
            raise KDLightError("instance-dependent noise needs per-example scores (give reference_model)")
        weights = np.clip(np.asarray(scores, dtype=np.float64), 1e-6, None)
        k = int(round(rate * n))
        chosen = rng.choice(n, size=k, replace=False, p=weights / weights.sum()) if k else np.array([], dtype=np.int64)
        if targets is not None:
            noisy[chosen] = np.asarray(targets)[chosen]
        else:
            noisy[chosen] = (labels[chosen] + rng.integers(1, num_labels, size=len(chosen))) % num_labels
    return noisy


def transition_matrix(clean: np.ndarray, noisy: np.ndarray, num_labels: int) -> list[list[float]]:
    """Empirical ``T[i][j] = P(noisy = j | clean = i)`` on the corrupted split."""
    counts = np.zeros((num_labels, num_labels))
    np.add.at(counts, (clean, noisy), 1)
    return (counts / counts.sum(1, keepdims=True).clip(min=1)).round(6).tolist()


class NoisyLabelDataModule(WrappedTaskDataModule):
    """Wraps a classification datamodule: clean validation split for meta-learning + label noise.

    Args:
        datamodule: the wrapped task (``GLUEDataModule``, ``TextClassificationDataModule``,
            ``RottenTomatoesDataModule`` ...): its splits, label set and its own loading settings
            (tokenizer, ``max_length``, batch sizes, ``num_workers``, ``max_train_examples``,
            ``shuffle``) are used, unless this module is given them.
        noise_type: ``uniform`` (resampled over all classes, may land on the true class: the official
            ALM-KD noise), ``symmetric`` (uniform to another class), ``asymmetric`` (class-pair flips) or
            ``instance`` (flip probability from a reference model's confidence).
        noise_rate: fraction of the (remaining) training examples whose label is corrupted, in [0, 1)
            (for ``uniform`` the realised flip rate is about ``noise_rate * (K - 1) / K``).
        clean_val_size: size of the clean validation split carved from the training data before
            corruption: a count (>= 1) or a fraction (< 1). ALM-KD's paper default is 10 %.
        asymmetric_map: ``{class name or id: class name or id}`` for asymmetric noise; default
            ``c -> c + 1`` cyclically (for two classes: a swap).
        reference_model: a fine-tuned classifier (folder/hub name) for instance-dependent noise:
            flip probability proportional to ``1 - p_ref(label)``, flipped to its likeliest other class.
        seed: seeds the carve and the noise (independent of the training seed).
        meta_batch_size: batch size of the clean batches the meta step draws (default ``batch_size``).
        tokenizer, max_length, batch_size, eval_batch_size, num_workers, max_train_examples, shuffle:
            see :class:`LabelledTextDataModule`; left null, the wrapped datamodule's own value is used
            (``max_train_examples`` caps the training split before the clean carve). Set on both
            with different values is an error.
    """

    train_split = "train"

    def __init__(
        self,
        datamodule: LabelledTextDataModule,
        noise_type: NoiseType = "symmetric",
        noise_rate: float = 0.4,
        clean_val_size: float = 0.1,
        asymmetric_map: dict[str, str] | None = None,
        reference_model: str | None = None,
        seed: int = 0,
        meta_batch_size: int | None = None,
        **loader_settings: Any,
    ) -> None:
        super().__init__(datamodule, **loader_settings)  # the loading settings: see WrappedTaskDataModule
        if meta_batch_size is not None and not (isinstance(meta_batch_size, int) and meta_batch_size >= 1):
            raise KDLightError(
                f"meta_batch_size must be a whole number >= 1 or null (null: batch_size), got {meta_batch_size!r}"
            )
        if not (isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0):
            raise KDLightError(
                f"seed must be a whole number >= 0 (it seeds the clean carve-out and the noise), got {seed!r}"
            )
        check_choice("noise_type", noise_type, NoiseType)
        if not (isinstance(noise_rate, (int, float)) and 0 <= noise_rate < 1):
            raise KDLightError(f"noise_rate must be in [0, 1), got {noise_rate!r}")
        if clean_val_size <= 0:
            raise KDLightError(f"clean_val_size must be a count >= 1 or a fraction in (0, 1), got {clean_val_size}")
        if getattr(datamodule, "num_labels", 2) < 2:
            raise KDLightError("label noise needs a classification task (num_labels >= 2), not a regression task")
        if noise_type == "instance" and noise_rate > 0 and not reference_model:
            raise KDLightError(
                "noise_type='instance' needs reference_model: "
                "a fine-tuned classifier whose confidence sets the flip probability"
            )
        self.noise_type, self.noise_rate, self.clean_val_size = noise_type, float(noise_rate), clean_val_size
        self.reference_model = reference_model
        self.seed = seed
        self.meta_batch_size = meta_batch_size or self.batch_size
        self.num_labels = datamodule.num_labels
        self.metric = datamodule.metric
        self.label_names = datamodule.label_names
        self.asymmetric_map = self._parse_map(asymmetric_map) if asymmetric_map else None
        self.val_splits = tuple(datamodule.val_splits)
        self.test_splits = tuple(datamodule.test_splits)
        self.predict_split = datamodule.predict_split
        self.noise_report: dict | None = None

    def _parse_map(self, mapping: dict) -> dict[int, int]:
        names = self.label_names or [str(i) for i in range(self.num_labels)]

        def to_id(value) -> int:
            if str(value) in names:
                return names.index(str(value))
            if str(value).isdigit() and int(value) < self.num_labels:
                return int(value)
            raise KDLightError(f"asymmetric_map: {value!r} is not a label of this task ({names})")

        return {to_id(k): to_id(v) for k, v in mapping.items()}

    # ------------------------------------------------------------------------- partition + noise
    @cached_property
    def _partition(self) -> dict[str, datasets.Dataset]:
        full = self.inner.load_split(self.inner.train_split)
        if self.max_train_examples is not None:
            full = full.select(range(min(self.max_train_examples, len(full))))
        n = len(full)
        n_clean = int(round(self.clean_val_size * n)) if self.clean_val_size < 1 else int(self.clean_val_size)
        if not 1 <= n_clean < n:
            raise KDLightError(
                f"clean_val_size={self.clean_val_size} leaves no clean or no training examples out of {n}"
            )
        order = np.random.default_rng(self.seed).permutation(n)
        clean = full.select(sorted(order[:n_clean].tolist()))
        train = full.select(sorted(order[n_clean:].tolist()))
        labels = np.asarray(train["labels"], dtype=np.int64)
        scores = targets = None
        if self.noise_type == "instance" and self.noise_rate > 0:
            scores, targets = self._reference_scores(train)
        noisy = (
            corrupt_labels(
                labels,
                self.num_labels,
                self.noise_type,
                self.noise_rate,
                self.seed + 1,
                self.asymmetric_map,
                scores,
                targets,
            )
            if self.noise_rate > 0
            else labels.copy()
        )
        flipped = noisy != labels
        train = train.rename_column("labels", "clean_labels")
        train = train.add_column("labels", noisy.tolist()).add_column("is_flipped", flipped.astype(np.int64).tolist())
        idx = np.asarray(train["idx"])
        self.noise_report = {
            "noise_type": self.noise_type,
            "noise_rate": self.noise_rate,
            "seed": self.seed,
            "num_train": int(n - n_clean),
            "num_clean_validation": n_clean,
            "nominal_rate": self.noise_rate,
            "realised_rate": float(flipped.mean()) if len(flipped) else 0.0,  # labels that actually differ
            "transition_matrix": transition_matrix(labels, noisy, self.num_labels),
            "label_names": self.label_names,
            "flipped_idx": sorted(int(i) for i in idx[flipped]),
            "clean_validation_idx": sorted(int(i) for i in clean["idx"]),
        }
        return {self.train_split: train, CLEAN_VAL_SPLIT: clean}

    def _reference_scores(self, train: datasets.Dataset) -> tuple[np.ndarray, np.ndarray]:
        model = load_classifier(self.reference_model, self.num_labels, self.label_names, require_head=True).eval()
        tokenised = self._encode(train, "reference scores")
        loader = DataLoader(
            tokenised, batch_size=self.eval_batch_size, collate_fn=Collator(self.tokenizer.pad_token_id or 0)
        )
        probs = []
        with torch.no_grad():
            for batch in loader:
                inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
                probs.append(torch.softmax(model(**inputs).logits.float(), -1))
        p = torch.cat(probs)
        labels = torch.tensor(train["labels"])
        score = 1 - p.gather(1, labels.view(-1, 1)).squeeze(1)
        other = p.scatter(1, labels.view(-1, 1), -1.0).argmax(1)
        return score.numpy(), other.numpy()

    def _encode(self, dataset: datasets.Dataset, desc: str) -> datasets.Dataset:
        return tokenize_dataset(dataset, self.tokenizer, self.max_length, desc)

    # ---------------------------------------------------------------------- LabelledTextDataModule
    @property
    def is_pair_task(self) -> bool:
        return self.inner.is_pair_task

    def load_split(self, split: str) -> datasets.Dataset:
        if split in (self.train_split, CLEAN_VAL_SPLIT):
            return self._partition[split]
        if split == self.inner.train_split:
            raise KDLightError(
                f"split {split!r} is the wrapped training split; use {self.train_split!r} or {CLEAN_VAL_SPLIT!r}"
            )
        return self.inner.load_split(split)

    def tokenize_split(self, split: str) -> datasets.Dataset:
        if split in (self.train_split, CLEAN_VAL_SPLIT):  # already subsampled before the carve
            return self._encode(self.load_split(split), split)
        return super().tokenize_split(split)

    def stage_splits(self, stage: str | None) -> list[str]:
        splits = super().stage_splits(stage)
        if stage in ("fit", None):
            splits.append(CLEAN_VAL_SPLIT)
        return splits

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if stage in ("fit", None) and self.noise_report is not None:
            self._save_report()

    def _save_report(self) -> None:
        trainer = self.trainer
        rank_zero_info(
            f"[kdlight] label noise: {self.noise_type} at {self.noise_rate:.2f} (nominal), realised flip rate "
            f"{self.noise_report['realised_rate']:.4f} over {self.noise_report['num_train']} training examples; "
            f"{self.noise_report['num_clean_validation']} clean validation examples"
        )
        if trainer is None:
            return
        root = Path(trainer.log_dir or trainer.default_root_dir)  # a collective under DDP: every rank asks
        if not trainer.is_global_zero:
            return
        root.mkdir(parents=True, exist_ok=True)
        (root / "noise.json").write_text(json.dumps(self.noise_report, indent=1))
        for logger in trainer.loggers:
            logger.log_hyperparams(
                {
                    "noise/type": self.noise_type,
                    "noise/rate": self.noise_rate,
                    "noise/nominal_rate": self.noise_rate,
                    "noise/realised_rate": self.noise_report["realised_rate"],
                    "noise/num_flipped": len(self.noise_report["flipped_idx"]),
                }
            )

    @property
    def max_train_idx(self) -> int:
        """Largest ``idx`` in the noisy training split (the lambda table has ``max + 1`` rows)."""
        return int(max(self._partition[self.train_split]["idx"]))

    # ---------------------------------------------------------------------------- clean batches
    def clean_val_batches(self, start: int = 0):
        """An endless iterator of clean validation batches for the meta step, from its ``start``-th batch
        (a resumed run continues where it stopped; the skipped batches are not loaded).

        Under DDP each rank draws from its own shard (``DistributedSampler``), reshuffled each pass.
        """
        if CLEAN_VAL_SPLIT not in self.splits:
            self.splits[CLEAN_VAL_SPLIT] = self.tokenize_split(CLEAN_VAL_SPLIT)
        dataset = self.splits[CLEAN_VAL_SPLIT]
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = DistributedSampler(
            dataset,
            num_replicas=world,
            rank=rank,
            shuffle=True,
            seed=int(os.environ.get("PL_GLOBAL_SEED", 0)) + self.seed,
        )
        loader = DataLoader(
            dataset,
            batch_size=self.meta_batch_size,
            sampler=sampler,
            collate_fn=Collator(self.tokenizer.pad_token_id or 0),
        )
        epoch, skip = divmod(start, len(loader)) if len(loader) else (0, 0)
        while True:
            sampler.set_epoch(epoch)
            if skip:  # the rest of a pass: the same batches the loader would give after its first `skip`
                rest = list(sampler)[skip * self.meta_batch_size :]
                yield from DataLoader(
                    Subset(dataset, rest), batch_size=self.meta_batch_size, collate_fn=loader.collate_fn
                )
                skip = 0
            else:
                yield from loader
            epoch += 1

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {
            "label_names": self.label_names,
            "num_labels": self.num_labels,
            "noise": {k: self.noise_report[k] for k in ("noise_type", "noise_rate", "seed", "realised_rate")}
            if self.noise_report
            else None,
        }
