"""GLUE: every task, its columns, labels, metric and splits, from the hub or local files.

Sources:
* ``source: null`` (default): the hub dataset ``nyu-mll/glue`` through ``datasets.load_dataset``.
* a folder in the original GLUE TSV layout (``train.tsv``, ``dev.tsv``, ``dev_matched.tsv`` ...),
  as unpacked from the GLUE download script (``CoLA/`` has no header row; that is handled).
* a folder of ``{split}.parquet`` / ``{split}.jsonl`` / ``{split}.json`` / ``{split}.csv`` files with the hub's
  column names (what ``load_dataset("nyu-mll/glue", task).save_to_disk``-style exports look like).

GLUE's test labels are hidden, so ``test`` evaluates the labelled dev split(s) by default, as KD
papers report; ``predict`` runs on the unlabelled test split.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from kdlight.data.base import LabelledTextDataModule
from kdlight.errors import KDLightError, first_line


@dataclass(frozen=True)
class GlueTask:
    text_columns: tuple[str, ...]
    label_names: tuple[str, ...] | None  # None: regression
    metric: str
    # the original TSV layout: column names (or positions for header-less CoLA), label column
    tsv_text: tuple[str | int, ...]
    tsv_label: str | int
    tsv_has_header: bool = True
    val_splits: tuple[str, ...] = ("validation",)
    test_splits: tuple[str, ...] = ("validation",)
    predict_split: str = "test"
    tsv_files: dict[str, str] = field(default_factory=lambda: {"train": "train", "validation": "dev", "test": "test"})


_NLI = ("entailment", "not_entailment")
_MNLI_FILES = {
    "train": "train",
    "validation_matched": "dev_matched",
    "validation_mismatched": "dev_mismatched",
    "test_matched": "test_matched",
    "test_mismatched": "test_mismatched",
}

GLUE_TASKS: dict[str, GlueTask] = {
    "cola": GlueTask(("sentence",), ("unacceptable", "acceptable"), "matthews", (3,), 1, tsv_has_header=False),
    "sst2": GlueTask(("sentence",), ("negative", "positive"), "accuracy", ("sentence",), "label"),
    "mrpc": GlueTask(
        ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), "f1", ("#1 String", "#2 String"), "Quality"
    ),
    "qqp": GlueTask(
        ("question1", "question2"), ("not_duplicate", "duplicate"), "f1", ("question1", "question2"), "is_duplicate"
    ),
    "stsb": GlueTask(("sentence1", "sentence2"), None, "pearson_spearman", ("sentence1", "sentence2"), "score"),
    "mnli": GlueTask(
        ("premise", "hypothesis"),
        ("entailment", "neutral", "contradiction"),
        "accuracy",
        ("sentence1", "sentence2"),
        "gold_label",
        val_splits=("validation_matched",),
        test_splits=("validation_matched", "validation_mismatched"),
        predict_split="test_matched",
        tsv_files=_MNLI_FILES,
    ),
    "qnli": GlueTask(("question", "sentence"), _NLI, "accuracy", ("question", "sentence"), "label"),
    "rte": GlueTask(("sentence1", "sentence2"), _NLI, "accuracy", ("sentence1", "sentence2"), "label"),
    "wnli": GlueTask(
        ("sentence1", "sentence2"), ("not_entailment", "entailment"), "accuracy", ("sentence1", "sentence2"), "label"
    ),
}
GLUE_TASK_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli"}


def glue_task(name: str) -> GlueTask:
    key = GLUE_TASK_ALIASES.get(name.lower(), name.lower())
    if key not in GLUE_TASKS:
        raise KDLightError(f"unknown GLUE task {name!r}: choose one of {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[key]


class GLUEDataModule(LabelledTextDataModule):
    """One GLUE task.

    Args:
        task: cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte or wnli.
        source: ``None`` for the hub (``nyu-mll/glue``), or a local folder (see module docstring).
        hub_dataset: the hub dataset id, for mirrors.
        val_splits / test_splits: override which labelled splits validation and test use.
    """

    def __init__(
        self,
        task: str = "sst2",
        source: str | None = None,
        hub_dataset: str = "nyu-mll/glue",
        val_splits: list[str] | None = None,
        test_splits: list[str] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.task_name = GLUE_TASK_ALIASES.get(task.lower(), task.lower())
        self.spec = glue_task(task)
        if source is not None and not Path(source).is_dir():
            raise KDLightError(
                f"GLUE source folder not found: {source!r}; give a local folder or leave source empty for the hub"
            )
        self.source, self.hub_dataset = source, hub_dataset
        self.label_names = list(self.spec.label_names) if self.spec.label_names else None
        self.num_labels = len(self.spec.label_names) if self.spec.label_names else 1
        self.metric = self.spec.metric
        self.val_splits = tuple(val_splits or self.spec.val_splits)
        self.test_splits = tuple(test_splits or self.spec.test_splits)
        self.predict_split = self.spec.predict_split

    @property
    def is_pair_task(self) -> bool:
        return len(self.spec.text_columns) == 2

    # ------------------------------------------------------------------------------- loading
    def load_split(self, split: str) -> datasets.Dataset:
        if self.source is None:
            raw = self._load_hub(split)
        else:
            raw = self._load_local(split)
        return self._standardise(raw, split)

    def _load_hub(self, split: str) -> datasets.Dataset:
        try:
            return datasets.load_dataset(self.hub_dataset, self.task_name, split=split)
        except Exception as err:
            raise KDLightError(
                f"cannot load GLUE {self.task_name}/{split} from the hub ({self.hub_dataset}): {first_line(err)}. "
                "Offline? Point data.init_args.source at a local GLUE folder."
            ) from None

    def _load_local(self, split: str) -> datasets.Dataset:
        folder = Path(self.source)
        tsv = folder / f"{self.spec.tsv_files.get(split, split)}.tsv"
        if tsv.is_file():
            return self._read_glue_tsv(tsv, split)
        for suffix, builder in ((".parquet", "parquet"), (".jsonl", "json"), (".json", "json"), (".csv", "csv")):
            path = folder / f"{split}{suffix}"
            if path.is_file():
                return datasets.load_dataset(builder, data_files=str(path.resolve()), split="train")
        raise KDLightError(
            f"GLUE {self.task_name}: no file for split {split!r} in "
            f"{str(folder)!r}; expected {tsv.name} (GLUE TSV layout) "
            f"or {split}.parquet/.jsonl/.json/.csv"
        )

    def _read_glue_tsv(self, path: Path, split: str) -> datasets.Dataset:
        """Read the original GLUE TSVs, whose quoting is not CSV quoting (QUOTE_NONE)."""
        import pandas as pd

        spec = self.spec
        # GLUE test files have a header even for CoLA, and no labels.
        has_header = spec.tsv_has_header or split.startswith("test")
        frame = pd.read_csv(
            path,
            sep="\t",
            quoting=csv.QUOTE_NONE,
            header=0 if has_header else None,
            dtype=str,
            keep_default_na=False,
            on_bad_lines="error",
        )
        if not has_header:
            columns = {spec.tsv_text[0]: spec.text_columns[0], spec.tsv_label: "label"}
        elif split.startswith("test"):
            test_text = {"cola": ("sentence",)}.get(self.task_name, spec.tsv_text)
            columns = dict(zip(test_text, spec.text_columns, strict=True))
        else:
            columns = {**dict(zip(spec.tsv_text, spec.text_columns, strict=True)), spec.tsv_label: "label"}
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise KDLightError(
                f"{str(path)!r} is not in the GLUE {self.task_name} layout: "
                f"columns {missing} not found (has {list(frame.columns)})"
            )
        frame = frame[list(columns)].rename(columns=columns)
        if "label" not in frame:
            frame["label"] = -1
        elif spec.label_names is None:
            frame["label"] = frame["label"].astype(float)
        else:
            names = list(spec.label_names)
            ids = [str(i) for i in range(len(names))]
            bad = sorted(set(frame["label"]) - set(names) - set(ids))
            if bad:
                raise KDLightError(
                    f"{str(path)!r}: labels {bad[:10]} are outside GLUE {self.task_name}'s label set {names}"
                )
            frame["label"] = [names.index(v) if v in names else int(v) for v in frame["label"]]
        return datasets.Dataset.from_pandas(frame.reset_index(drop=True), preserve_index=False)

    def _standardise(self, raw: datasets.Dataset, split: str) -> datasets.Dataset:
        columns = self.spec.text_columns
        self.require_columns(
            raw.column_names,
            {f"text {i}": c for i, c in enumerate(columns)} | {"label": "label"},
            f"GLUE {self.task_name}/{split}",
        )
        regression = self.spec.label_names is None
        has_idx = "idx" in raw.column_names

        def standardise(batch, indices):
            out = {"text": batch[columns[0]], "labels": [float(v) if regression else int(v) for v in batch["label"]]}
            if len(columns) == 2:
                out["text_pair"] = batch[columns[1]]
            out["idx"] = batch["idx"] if has_idx else indices
            return out

        return raw.map(
            standardise, batched=True, with_indices=True, remove_columns=raw.column_names, desc=f"reading {split}"
        )

    def state_dict(self) -> dict:
        return {"task": self.task_name}
