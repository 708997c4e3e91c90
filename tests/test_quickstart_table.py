"""The quickstart's printed table against its results.json: same numbers, baseline and margin kept included."""

import json
import re

import pytest

from kdlight.quickstart import format_table, summarise


def _stage(score: float, params: int, samples_per_s: float, baseline: dict | None = None) -> dict:
    record = {
        "metrics": {"test/score": score},
        "params": params,
        "seconds": 100.0,
        "steps": 375,
        "export": "runs/x/export",
        "samples_per_s": samples_per_s,
    }
    if baseline is not None:
        record["baseline"] = baseline
    return record


BASELINE = {"test_score": 0.737, "val_score": 0.75, "C": 3.0, "ngram_range": [1, 2], "train_rows": 6000}


def _row(table: str, label: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith(label))
    return [cell.strip() for cell in line.split("|")[1:]]


def test_table_numbers_are_the_results_json_numbers():
    summary = summarise(
        _stage(0.8141, 22_713_986, 100.0), _stage(0.7592, 5_567_042, 400.0, baseline=BASELINE), total_seconds=500.0
    )
    summary = json.loads(json.dumps(summary))  # what results.json holds, read back
    table = format_table(summary)
    assert _row(table, "test accuracy") == [f"{summary['teacher_score']:.4f}", f"{summary['student_score']:.4f}"]
    assert float(_row(table, "% of teacher")[1]) == pytest.approx(summary["pct_of_teacher"], abs=0.05)
    kept = float(_row(table, "% of margin over baseline")[1])
    assert kept == pytest.approx(100 * summary["margin_kept"], abs=0.05)
    baseline_line = next(line for line in table.splitlines() if line.startswith("baseline:"))
    assert float(re.search(r"test accuracy ([0-9.]+)", baseline_line).group(1)) == summary["baseline_score"]
    assert "6000 training rows" in baseline_line and "C=3" in baseline_line


def test_margin_kept_on_the_issue_numbers():
    """The issue's own case: teacher 0.8141, student 0.7592, baseline 0.737 keeps 29 % of the margin."""
    summary = summarise(_stage(0.8141, 4, 1.0), _stage(0.7592, 1, 4.0, baseline=BASELINE), total_seconds=1.0)
    assert summary["margin_kept"] == pytest.approx((0.7592 - 0.737) / (0.8141 - 0.737))
    assert f"{100 * summary['margin_kept']:.1f}" == "28.8"
    assert summary["baseline_score"] == 0.737


def test_no_margin_and_no_baseline_print_na_not_nan():
    below = dict(BASELINE, test_score=0.9)  # the teacher does not beat the baseline: no margin to keep
    summary = summarise(_stage(0.8, 4, 1.0), _stage(0.7, 1, 4.0, baseline=below), total_seconds=1.0)
    assert summary["margin_kept"] is None
    assert json.loads(json.dumps(summary))["margin_kept"] is None  # valid JSON, no NaN
    assert _row(format_table(summary), "% of margin over baseline")[1] == "n/a"
    without = summarise(_stage(0.8, 4, 1.0), _stage(0.7, 1, 4.0), total_seconds=1.0)
    assert without["baseline_score"] is None and "pip install scikit-learn" in format_table(without)
