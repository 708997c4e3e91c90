"""benchmarks/quickstart_lr.py: the quickstart student's learning rate is chosen on validation, never on test."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/ is not installed

from benchmarks.quickstart_lr import CANDIDATES, choose, recipe, summarise  # noqa: E402


def _record(lr: float, epochs: int, val: float, test: float) -> dict:
    return {
        "learning_rate": lr,
        "epochs": epochs,
        "best_val_score": val,
        "test/score": test,
        "test/teacher_score": 0.8,
        "val_curve": [{"epoch": 0, "step": 1, "val_score": val}],
        "fit_seconds": 1.0,
    }


def test_choice_is_by_validation_not_test():
    records = [_record(2e-4, 2, 0.76, 0.79), _record(5e-4, 2, 0.78, 0.75)]
    assert choose(records)["learning_rate"] == 5e-4  # best on validation, though worse on test
    rows = summarise(records, {"test_score": 0.7})
    assert [r["chosen"] for r in rows] == ["", "yes"]
    assert rows[1]["margin_kept_pct"] == pytest.approx(100 * (0.75 - 0.7) / (0.8 - 0.7))
    tie = [_record(2e-4, 2, 0.78, 0.70), _record(5e-4, 2, 0.78, 0.90)]
    assert choose(tie)["learning_rate"] == 2e-4  # a tie goes to the earlier candidate, not the better test


def test_recipe_is_the_quickstart_config_with_lr_and_epochs_changed(tmp_path):
    import yaml

    from benchmarks.common import CONFIGS

    original = yaml.safe_load((CONFIGS / "quickstart" / "kd.yaml").read_text())
    config = recipe("teacher/export", 3e-4, 3, tmp_path)
    assert config["trainer"]["max_epochs"] == 3 and config["model"]["init_args"]["learning_rate"] == 3e-4
    assert config["model"]["init_args"]["teacher"] == "teacher/export"
    assert config["data"] == original["data"] and config["seed_everything"] == original["seed_everything"]
    assert config["model"]["init_args"]["student"] == original["model"]["init_args"]["student"]
    assert (3e-4, 3) in CANDIDATES and len(CANDIDATES) == 4
