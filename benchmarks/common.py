"""What several studies in benchmarks/ use: the repository's paths, the CLI, the fine-tuned offline teacher.

Runs, workers and result files are ``benchmarks/study.py``'s."""

from __future__ import annotations

import functools
import time
from pathlib import Path

from kdlight.assets import cache_dir

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def run_cli(args: list[str]):
    """Build a kdlight CLI run without running it (returns the LightningCLI with trainer/model/data)."""
    from kdlight.cli import cli

    return cli(args, run=False)


def runner_for(config: dict, root: Path):
    """A CLI run of ``config`` (written to ``root/config.yaml``, as a user's recipe) logging under ``root``, quiet."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return run_cli(
        [
            "--config",
            str(root / "config.yaml"),
            f"--trainer.default_root_dir={root}",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
        ]
    )


class ValidationCurve:
    """A callback recording ``val/score`` (and the step and epoch) at every validation, sanity check excluded."""

    def __new__(cls):
        from lightning.pytorch.callbacks import Callback

        class _Curve(Callback):
            def __init__(self) -> None:
                self.points: list[dict] = []

            def state_dict(self) -> dict:  # saved in checkpoints: a resumed run keeps its earlier points
                return {"points": list(self.points)}

            def load_state_dict(self, state_dict: dict) -> None:
                self.points = list(state_dict.get("points", []))

            def on_validation_end(self, trainer, pl_module) -> None:
                if trainer.sanity_checking or "val/score" not in trainer.callback_metrics:
                    return
                self.points.append(
                    {
                        "epoch": trainer.current_epoch,
                        "step": trainer.global_step,
                        "val_score": float(trainer.callback_metrics["val/score"]),
                    }
                )

        return _Curve()


def latest_last_checkpoint(root: Path) -> Path | None:
    """The newest ``last.ckpt`` under ``root`` (a run interrupted part-way), or None."""
    found = sorted(root.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    return found[-1] if found else None


def finished_fit(last: Path, trainer: dict) -> dict | None:
    """What ``last`` recorded if its fit already reached ``trainer``'s max_epochs / max_steps (kdlight refuses
    to resume a run with nothing left to train), else None."""
    import torch

    state = torch.load(last, map_location="cpu", weights_only=True)
    epochs_done = state["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"]
    max_epochs, max_steps = trainer.get("max_epochs"), trainer.get("max_steps", -1)
    done = (max_steps not in (None, -1) and state["global_step"] >= max_steps) or (
        max_epochs not in (None, -1) and epochs_done >= max_epochs
    )
    if not done:
        return None
    callbacks = state.get("callbacks", {})
    checkpoint = next((v for k, v in callbacks.items() if "best_model_path" in v), {})
    curve = next((v for k, v in callbacks.items() if k.endswith("_Curve")), {})
    score = checkpoint.get("best_model_score")
    return {
        "steps": state["global_step"],
        "best_model_path": checkpoint.get("best_model_path"),
        "best_val_score": None if score is None else float(score),
        "val_curve": curve.get("points", []),
    }


def fit_and_test(config: dict, root: Path, test: bool = True, resume: bool = False) -> dict:
    """One run as `kdlight fit` then `kdlight test --ckpt_path best`: fit time, steps, size, export, the
    validation curve and the best checkpoint's validation score (what selection may use), test metrics.
    ``resume``: continue from the newest ``last.ckpt`` under ``root`` if an earlier attempt left one."""
    from kdlight.models.hf import count_parameters

    last = latest_last_checkpoint(root) if resume else None
    finished = finished_fit(last, config["trainer"]) if last else None
    runner = runner_for(config, root)
    if finished is not None:  # an earlier attempt trained every step and stopped before its test: test it
        record = {
            "fit_seconds": None,  # not measured: the fit ran in an earlier process
            "steps": finished["steps"],
            "params": count_parameters(runner.model.predictor),
            "export": str(runner.model.export_path()),
            "val_curve": finished["val_curve"],
            "best_val_score": finished["best_val_score"],
            "resumed_from": str(last),
        }
        best = finished["best_model_path"]
    else:
        curve = ValidationCurve()
        runner.trainer.callbacks.append(curve)
        start = time.perf_counter()
        runner.trainer.fit(runner.model, datamodule=runner.datamodule, ckpt_path=str(last) if last else None)
        checkpoint = runner.trainer.checkpoint_callback
        best_val = checkpoint.best_model_score if checkpoint is not None else None
        record = {
            "fit_seconds": time.perf_counter() - start,
            "steps": runner.trainer.global_step,
            "params": count_parameters(runner.model.predictor),
            "export": str(runner.model.export_path()),
            "val_curve": curve.points,
            "best_val_score": None if best_val is None else float(best_val),
            "resumed_from": str(last) if last else None,
        }
        best = checkpoint.best_model_path if checkpoint is not None else None
    if test:
        metrics = runner.trainer.test(runner.model, datamodule=runner.datamodule, ckpt_path=best, verbose=False)[0]
        record.update({k: float(v) for k, v in metrics.items()})
    return record


def general_distillation_config(student: dict, steps: int, export_dir: Path) -> dict:
    """MiniLMv2-style general distillation of ``student`` from the packaged MiniLM on the Wikipedia summaries."""
    return {
        "seed_everything": 0,
        "trainer": {
            "max_steps": steps,
            "val_check_interval": max(2, steps // 3),
            "check_val_every_n_epoch": None,
            "log_every_n_steps": 20,
        },
        "model": {
            "class_path": "GeneralDistillation",
            "init_args": {
                "teacher": "packaged/all-MiniLM-L6-v2",
                "student": student,
                "num_relation_heads": 16,
                "relations": ["query", "key", "value"],
                "learning_rate": 5e-4,
                "warmup_ratio": 0.05,
                "export_dir": str(export_dir),
            },
        },
        "data": {
            "class_path": "CorpusDataModule",
            "init_args": {"source": "packaged/wiki_summaries", "max_length": 64, "batch_size": 32, "val_examples": 200},
        },
    }


def cached_rt_teacher(name: str = "minilm_rt") -> Path | None:
    """The export :func:`fine_tuned_rt_teacher` made, if it is on this machine (None otherwise; trains nothing)."""
    export = cache_dir() / "teachers" / name / "export"
    return export if (export / "config.json").is_file() else None


def fine_tuned_rt_teacher(extra_args: list[str] | None = None, name: str = "minilm_rt") -> Path:
    """The quickstart teacher (all-MiniLM-L6-v2 fine-tuned on Rotten Tomatoes), trained once and cached.

    Returns the ``save_pretrained`` folder. Delete ``<cache>/teachers/<name>`` to retrain.
    """
    out = cache_dir() / "teachers" / name
    if (out / "export" / "config.json").is_file():
        return out / "export"
    start = time.perf_counter()
    runner = run_cli(
        [
            "--config",
            str(CONFIGS / "quickstart" / "teacher.yaml"),
            f"--trainer.default_root_dir={out}",
            f"--model.init_args.export_dir={out / 'export'}",
            "--trainer.enable_progress_bar=false",
            *(extra_args or []),
        ]
    )
    runner.trainer.fit(runner.model, datamodule=runner.datamodule)
    print(f"[benchmarks] teacher {name} trained in {time.perf_counter() - start:.0f}s -> {out / 'export'}")
    return out / "export"


@functools.cache
def rt_baseline(train_examples: int | None) -> dict:
    """The TF-IDF + logistic regression reference on the first ``train_examples`` Rotten Tomatoes training
    rows (None: all of them), C and n-grams chosen on validation (:mod:`kdlight.baseline`)."""
    from kdlight.baseline import baseline_for
    from kdlight.data import RottenTomatoesDataModule

    return baseline_for(RottenTomatoesDataModule(max_train_examples=train_examples)).to_dict()


def recorded_rt_baseline(train_examples: int | None) -> dict:
    """:func:`rt_baseline`, fit once and kept in ``benchmarks/results/baselines_runs.json`` (keyed by the
    rows it saw), so that every study and every ``--report-only`` rebuild quotes the same fit."""
    from benchmarks.study import Job, Study

    key = f"rotten_tomatoes/{'all' if train_examples is None else train_examples}"
    return Study("baselines").run({key: Job(rt_baseline, train_examples=train_examples)})[key]


def in_progress_curve(root: Path) -> list[dict]:
    """The validation points an unfinished run has logged so far (every ``metrics.csv`` of the CSV logger
    under ``root``, in step order; a resumed run's versions together): what a study can report about a run
    it has not recorded. Nothing is chosen or tested from these."""
    import csv

    points: dict[int, dict] = {}
    for path in sorted(Path(root).rglob("metrics.csv")) if Path(root).is_dir() else []:
        with path.open() as handle:
            for row in csv.DictReader(handle):
                if row.get("val/score"):
                    step = int(row["step"])
                    points[step] = {"epoch": int(row["epoch"]), "step": step, "val_score": float(row["val/score"])}
    return [points[k] for k in sorted(points)]
