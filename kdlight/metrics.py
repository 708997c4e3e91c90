"""Task metrics, built from the metric name a datamodule declares.

GLUE's official metrics: CoLA Matthews correlation; MRPC and QQP F1 and accuracy; STS-B Pearson
and Spearman; accuracy for the rest. The first metric of each set is the task's headline score,
logged again as ``<stage>/score`` so checkpointing and "% of teacher" need no per-task code.
"""

from __future__ import annotations

from typing import Literal, get_args

from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassMatthewsCorrCoef
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef

from kdlight.errors import check_choice

#: the task metrics kdlight computes (GLUE's, by name)
Metric = Literal["accuracy", "matthews", "f1", "pearson_spearman"]
METRICS: tuple[str, ...] = get_args(Metric)


def build_metrics(metric: Metric, num_labels: int) -> MetricCollection:
    """A metric collection whose first entry is the headline score."""
    check_choice("metric", metric, Metric)
    if metric == "pearson_spearman":
        if num_labels != 1:
            raise ValueError(f"metric 'pearson_spearman' is for regression (num_labels=1), got num_labels={num_labels}")
        return MetricCollection({"pearson": PearsonCorrCoef(), "spearman": SpearmanCorrCoef()})
    if num_labels < 2:
        raise ValueError(
            f"metric {metric!r} needs num_labels >= 2, got {num_labels}; use 'pearson_spearman' for regression"
        )
    accuracy = MulticlassAccuracy(num_classes=num_labels, average="micro")
    if metric == "accuracy":
        return MetricCollection({"accuracy": accuracy})
    if metric == "matthews":
        return MetricCollection({"matthews": MulticlassMatthewsCorrCoef(num_classes=num_labels), "accuracy": accuracy})
    # GLUE's F1 is the binary F1 of the positive class (label 1).
    return MetricCollection({"f1": PositiveClassF1(num_classes=num_labels), "accuracy": accuracy})


def headline(metric: Metric) -> str:
    return {"accuracy": "accuracy", "matthews": "matthews", "f1": "f1", "pearson_spearman": "pearson"}[metric]


class PositiveClassF1(MulticlassF1Score):
    """F1 of class 1 only, as GLUE reports for MRPC and QQP."""

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes=num_classes, average="none")

    def compute(self):
        return super().compute()[1]
