"""The reference every accuracy table carries: TF-IDF features + logistic regression.

"% of the teacher" flatters a student when the teacher is weak; a bag-of-words model trained on the
same rows says how much of the teacher's advantage a student keeps. :func:`tfidf_baseline` fits it on
exactly the training rows a datamodule trains on (its ``max_train_examples`` included), chooses the
regularisation ``C`` and the n-gram range on the validation split, and scores the test split with the
task's metric. :func:`margin_kept` is (student - baseline) / (teacher - baseline).

scikit-learn is an optional dependency (the ``test`` / ``bench`` extras): it is imported only here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from kdlight.errors import KDLightError

#: the grids searched on the validation split (a user of TF-IDF + LR would try about these)
C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
NGRAM_GRID = ((1, 1), (1, 2))


@dataclass(frozen=True)
class BaselineResult:
    """What the baseline scored and with which settings (``to_dict`` for results files)."""

    test_score: float
    val_score: float
    C: float
    ngram_range: tuple[int, int]
    train_rows: int
    metric: str = "accuracy"

    def to_dict(self) -> dict:
        return {**asdict(self), "ngram_range": list(self.ngram_range)}


def _sklearn():
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise KDLightError(
            "the TF-IDF baseline needs scikit-learn: pip install scikit-learn (or kdlight[test])"
        ) from None
    return TfidfVectorizer, LogisticRegression


def _score(predicted: Sequence[int], labels: Sequence[int], metric: str) -> float:
    if metric == "accuracy":
        return sum(int(p == y) for p, y in zip(predicted, labels, strict=True)) / max(len(labels), 1)
    if metric == "f1":  # binary F1 of class 1, as GLUE's MRPC/QQP
        tp = sum(int(p == 1 and y == 1) for p, y in zip(predicted, labels, strict=True))
        fp = sum(int(p == 1 and y != 1) for p, y in zip(predicted, labels, strict=True))
        fn = sum(int(p != 1 and y == 1) for p, y in zip(predicted, labels, strict=True))
        return 2 * tp / max(2 * tp + fp + fn, 1)
    if metric == "matthews":
        from sklearn.metrics import matthews_corrcoef

        return float(matthews_corrcoef(labels, predicted))
    raise KDLightError(f"the TF-IDF baseline scores classification only (accuracy, f1, matthews), not {metric!r}")


def tfidf_baseline(
    train: tuple[Sequence[str], Sequence[int]],
    val: tuple[Sequence[str], Sequence[int]],
    test: tuple[Sequence[str], Sequence[int]],
    metric: str = "accuracy",
    c_grid: Sequence[float] = C_GRID,
    ngram_grid: Sequence[tuple[int, int]] = NGRAM_GRID,
) -> BaselineResult:
    """Fit TF-IDF + logistic regression on ``train``, pick ``C`` and the n-gram range by the validation
    score (ties: the first in grid order), refit nothing, and score ``test``. Each argument is
    ``(texts, integer labels)``."""
    tfidf, logistic = _sklearn()
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = train, val, test
    if len(set(train_y)) < 2:
        raise KDLightError(f"the TF-IDF baseline needs at least 2 classes in the training rows, got {set(train_y)}")
    best = None
    for ngrams in ngram_grid:
        vectoriser = tfidf(ngram_range=tuple(ngrams), sublinear_tf=True, min_df=1)
        train_features = vectoriser.fit_transform(list(train_x))
        val_features = vectoriser.transform(list(val_x))
        for c in c_grid:
            classifier = logistic(C=c, max_iter=2000)
            classifier.fit(train_features, list(train_y))
            val_score = _score(classifier.predict(val_features).tolist(), list(val_y), metric)
            if best is None or val_score > best[0]:
                best = (val_score, c, tuple(ngrams), vectoriser, classifier)
    val_score, c, ngrams, vectoriser, classifier = best
    test_score = _score(classifier.predict(vectoriser.transform(list(test_x))).tolist(), list(test_y), metric)
    return BaselineResult(float(test_score), float(val_score), float(c), ngrams, len(train_x), metric)


def _texts_and_labels(datamodule, split: str, limit: int | None = None) -> tuple[list[str], list[int]]:
    table = datamodule.load_split(split)
    if limit is not None:
        table = table.select(range(min(limit, len(table))))
    texts = table["text"]
    if "text_pair" in table.column_names:  # a pair task: both sides, one bag of words with a separator
        texts = [f"{a} ||| {b}" for a, b in zip(texts, table["text_pair"], strict=True)]
    return list(texts), [int(y) for y in table["labels"]]


def baseline_for(datamodule, test_split: str | None = None) -> BaselineResult:
    """The baseline on a kdlight datamodule: the same training rows the students train on (its
    ``max_train_examples`` first rows), its validation split for the choice, and its test split."""
    task = datamodule.task
    if getattr(task, "task_type", "classification") != "classification":
        raise KDLightError("the TF-IDF baseline is for classification tasks; this task is a regression")
    splits = datamodule.eval_split_names("test")
    test_split = test_split or splits[0]
    return tfidf_baseline(
        _texts_and_labels(datamodule, datamodule.train_split, datamodule.max_train_examples),
        _texts_and_labels(datamodule, datamodule.eval_split_names("validate")[0]),
        _texts_and_labels(datamodule, test_split),
        metric=task.metric if task.metric in ("accuracy", "f1", "matthews") else "accuracy",
    )


def margin_kept(student: float, teacher: float, baseline: float) -> float:
    """The share of the teacher's advantage over the baseline that the student keeps:
    (student - baseline) / (teacher - baseline). NaN when the teacher does not beat the baseline
    (there is no margin to keep); negative when the student is below the baseline."""
    if not all(math.isfinite(x) for x in (student, teacher, baseline)) or teacher <= baseline:
        return math.nan
    return (student - baseline) / (teacher - baseline)


__all__ = ["BaselineResult", "baseline_for", "margin_kept", "tfidf_baseline"]
