"""TaskSpec: everything a model needs to know about its data, in one frozen object.

A datamodule describes its task as ``datamodule.task``; a module takes it as ``task=``. The CLI
passes it with one link (``data.task`` -> ``model.init_args.task``), and from Python it is one
argument::

    data = TextClassificationDataModule(train_file="train.csv", val_file="dev.csv", tokenizer="bert-base-uncased")
    model = VanillaKD(teacher="runs/teacher/export", task=data.task)

In a module's hyper-parameters (and so in checkpoints) the spec is a plain dict (:meth:`TaskSpec.to_dict`),
read back with :meth:`TaskSpec.from_hparams`, which also takes the separate ``num_labels``, ``metric``,
``label_names`` and ``tokenizer`` hyper-parameters of checkpoints written before the spec existed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from kdlight.errors import KDLightError, check_choice
from kdlight.metrics import Metric

#: what a model predicts: classes, one number, or nothing (task-agnostic distillation on plain text)
TaskType = Literal["classification", "regression", "unlabelled"]
#: a task's metric: one of kdlight's metrics, or ``none`` for unlabelled data
TaskMetric = Literal[Metric, "none"]
#: the hyper-parameters that held the task before TaskSpec (read from old checkpoints)
LEGACY_TASK_KEYS = ("num_labels", "metric", "label_names", "tokenizer")

_LABEL_COUNT = {"regression": 1, "unlabelled": 0}
_DEFAULT_METRIC = {"classification": "accuracy", "regression": "pearson_spearman", "unlabelled": "none"}


@dataclass(frozen=True)
class TaskSpec:
    """What a model needs from the data: its outputs, how they are scored, and how text becomes ids.

    Args:
        num_labels: classes (2 or more); 1 for regression; 0 for unlabelled text.
        label_names: the classes' names in output order (exported as ``id2label``); None when unnamed.
        metric: ``accuracy``, ``matthews``, ``f1``, ``pearson_spearman`` (regression) or ``none``
            (unlabelled); default by task type.
        tokenizer: hub name or local folder of the tokenizer the data is tokenised with.
        task_type: ``classification``, ``regression`` or ``unlabelled``; default from ``num_labels``.
    """

    num_labels: int = 2
    label_names: tuple[str, ...] | None = None
    metric: TaskMetric | None = None
    tokenizer: str | None = None
    task_type: TaskType | None = None

    def __post_init__(self) -> None:
        if isinstance(self.num_labels, bool) or not isinstance(self.num_labels, int) or self.num_labels < 0:
            raise KDLightError(f"num_labels must be a whole number >= 0, got {self.num_labels!r}")
        task_type = self.task_type or {1: "regression", 0: "unlabelled"}.get(self.num_labels, "classification")
        check_choice("task_type", task_type, TaskType)
        expected = _LABEL_COUNT.get(task_type)
        if (expected is not None and self.num_labels != expected) or (expected is None and self.num_labels < 2):
            wanted = "2 or more" if expected is None else str(expected)
            raise KDLightError(f"a {task_type} task has {wanted} label(s), got num_labels={self.num_labels}")
        metric = self.metric or _DEFAULT_METRIC[task_type]
        check_choice("metric", metric, TaskMetric)
        regression, unlabelled = task_type == "regression", task_type == "unlabelled"
        if (metric == "pearson_spearman") != regression or (metric == "none") != unlabelled:
            raise KDLightError(
                f"metric {metric!r} does not score a {task_type} task; use {_DEFAULT_METRIC[task_type]!r}"
                + (" (or matthews, f1)" if task_type == "classification" else "")
            )
        names = None if self.label_names is None else tuple(str(name) for name in self.label_names)
        if names is not None and len(names) != self.num_labels:
            raise KDLightError(f"label_names {list(names)} name {len(names)} classes, but num_labels={self.num_labels}")
        tokenizer = os.fspath(self.tokenizer) if isinstance(self.tokenizer, os.PathLike) else self.tokenizer
        resolved = {"task_type": task_type, "metric": metric, "label_names": names, "tokenizer": tokenizer}
        for name, value in resolved.items():
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, strings, ints) for hyper-parameters: checkpoints load with ``weights_only=True``."""
        plain = asdict(self)
        plain["label_names"] = None if self.label_names is None else list(self.label_names)
        return plain

    @classmethod
    def from_hparams(cls, task: TaskSpec | Mapping | None = None, legacy: Mapping[str, Any] | None = None) -> TaskSpec:
        """The spec from a module's ``task`` argument: a TaskSpec, its :meth:`to_dict` form (read from a
        checkpoint), or None: then from ``legacy``, an old checkpoint's separate ``num_labels``,
        ``metric``, ``label_names`` and ``tokenizer`` hyper-parameters, else the defaults (two unnamed
        classes scored by accuracy). A given task wins over legacy values, as the data's own values
        won over a checkpoint's when they were linked one by one."""
        if isinstance(task, TaskSpec):
            return task
        if task is None:
            return cls(**{k: v for k, v in (legacy or {}).items() if k in LEGACY_TASK_KEYS})
        if not isinstance(task, Mapping):
            raise KDLightError(f"task must be a TaskSpec (e.g. task=datamodule.task), got {type(task).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(task) - known)
        if unknown:
            raise KDLightError(
                f"task: unknown field(s) {', '.join(unknown)}; a TaskSpec has {', '.join(sorted(known))}"
            )
        return cls(**task)


__all__ = ["LEGACY_TASK_KEYS", "TaskMetric", "TaskSpec", "TaskType"]
