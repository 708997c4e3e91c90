"""benchmarks/harness.py: a study's run that is stopped and started again continues the same run."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/ is not installed

from benchmarks.harness import fit_and_test  # noqa: E402
from tests.conftest import tiny_task_data  # noqa: E402


def _recipe(assets, max_steps: int, root: Path) -> dict:
    model = {"teacher": str(assets["teacher"]), "learning_rate": 1e-3, "export_dir": str(root / "export")}
    return {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "max_steps": max_steps, "val_check_interval": 2, "log_every_n_steps": 1},
        "model": {"class_path": "VanillaKD", "init_args": model},
        "data": tiny_task_data(assets, batch_size=8),
    }


def test_a_resumed_run_keeps_its_folder_and_the_first_attempts_best_checkpoint(assets, tmp_path):
    first = fit_and_test(_recipe(assets, 4, tmp_path), tmp_path, test=False, resume=True)
    assert first["best_val_score"] is not None
    # Started again with more steps to go, as a study does after an interruption: the run must continue in the
    # same version folder, so its best checkpoint so far stays a candidate for "best" (a new folder resets
    # ModelCheckpoint's best score, and a worse later checkpoint would silently become the run's "best").
    second = fit_and_test(_recipe(assets, 8, tmp_path), tmp_path, resume=True)
    versions = sorted(p.name for p in (tmp_path / "lightning_logs").iterdir())
    assert versions == ["version_0"]
    assert second["resumed_from"].endswith("version_0/checkpoints/last.ckpt")
    assert second["best_val_score"] >= first["best_val_score"]
    assert second["steps"] == 8 and "test/score" in second


def test_a_checkpoint_holds_the_validation_point_it_was_chosen_on(assets, tmp_path):
    """A run resumed from a checkpoint written at a validation must keep that validation's point in its curve:
    the curve callback records it before the checkpoint callback saves (it once ran after, and a resumed
    study's curve silently lost the point)."""
    from kdlight.checkpoints import load_checkpoint

    fit_and_test(_recipe(assets, 4, tmp_path), tmp_path, test=False)
    checkpoints = sorted((tmp_path / "lightning_logs" / "version_0" / "checkpoints").glob("best-*.ckpt"))
    assert checkpoints
    for path in checkpoints:
        state = load_checkpoint(path)
        points = next(v for k, v in state["callbacks"].items() if k.endswith("_Curve"))["points"]
        assert points and points[-1]["step"] == state["global_step"], path.name


def test_a_run_that_finished_its_fit_before_stopping_is_tested_not_trained_again(assets, tmp_path):
    """A resumed run whose last.ckpt already reached max_steps (stopped between fit and test) is only tested:
    its steps, validation curve and best score come from the checkpoint."""
    first = fit_and_test(_recipe(assets, 4, tmp_path), tmp_path, test=False, resume=True)
    again = fit_and_test(_recipe(assets, 4, tmp_path), tmp_path, resume=True)
    assert again["fit_seconds"] is None and again["steps"] == 4 and "test/score" in again
    assert again["val_curve"] == first["val_curve"] and again["best_val_score"] == first["best_val_score"]
