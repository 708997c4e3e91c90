"""What several studies in benchmarks/ use: the repository's paths, the fine-tuned offline teacher, the baseline,
the choice on validation. Training, timing and scoring are ``benchmarks/harness.py``'s (re-exported here for the
studies that import them from this module); runs, workers and result files are ``benchmarks/study.py``'s."""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.harness import component, fit_and_test, run_cli, runner_for  # noqa: F401 (imported from here)
from benchmarks.study import Job, Study
from kdlight.assets import cache_dir
from kdlight.baseline import baseline_for, margin_kept
from kdlight.data import RottenTomatoesDataModule
from kdlight.models.hf import count_parameters, load_classifier

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def general_distillation(student: dict, steps: int, root: Path) -> dict:
    """MiniLMv2-style general distillation of ``student`` from the packaged MiniLM on the Wikipedia summaries, in
    ``root`` (exported to ``root/export``; nothing tested: the student has no task head yet)."""
    relations = dict(num_relation_heads=16, relations=["query", "key", "value"], learning_rate=5e-4, warmup_ratio=0.05)
    model = component("GeneralDistillation", teacher="packaged/all-MiniLM-L6-v2", student=student, **relations)
    model["init_args"]["export_dir"] = str(root / "export")
    data = component(
        "CorpusDataModule", source="packaged/wiki_summaries", max_length=64, batch_size=32, val_examples=200
    )
    trainer = dict(max_steps=steps, val_check_interval=max(2, steps // 3), check_val_every_n_epoch=None)
    config = {"seed_everything": 0, "trainer": {**trainer, "log_every_n_steps": 20}, "model": model, "data": data}
    return fit_and_test(config, root, test=False)


def cached_rt_teacher() -> Path | None:
    """The export :func:`fine_tuned_rt_teacher` made, if it is on this machine (None otherwise; trains nothing)."""
    export = cache_dir() / "teachers" / "minilm_rt" / "export"
    return export if (export / "config.json").is_file() else None


def fine_tuned_rt_teacher() -> Path:
    """The quickstart teacher (all-MiniLM-L6-v2 fine-tuned on Rotten Tomatoes; its ``save_pretrained`` folder),
    trained once and cached: delete ``<cache>/teachers/minilm_rt`` to retrain."""
    out = cache_dir() / "teachers" / "minilm_rt"
    if cached_rt_teacher() is None:
        start = time.perf_counter()
        recipe = ["--config", str(CONFIGS / "quickstart" / "teacher.yaml"), f"--trainer.default_root_dir={out}"]
        runner = run_cli(
            [*recipe, f"--model.init_args.export_dir={out / 'export'}", "--trainer.enable_progress_bar=false"]
        )
        runner.trainer.fit(runner.model, datamodule=runner.datamodule)
        print(f"[benchmarks] teacher trained in {time.perf_counter() - start:.0f}s -> {out / 'export'}")
    return out / "export"


def rt_baseline(train_examples: int | None) -> dict:
    """TF-IDF + logistic regression on the first ``train_examples`` Rotten Tomatoes rows (None: all of them)."""
    return baseline_for(RottenTomatoesDataModule(max_train_examples=train_examples)).to_dict()


def recorded_rt_baseline(train_examples: int | None) -> dict:
    """:func:`rt_baseline` fit once, kept in ``results/baselines_runs.json``: every study quotes the same fit."""
    key = f"rotten_tomatoes/{'all' if train_examples is None else train_examples}"
    return Study("baselines").run({key: Job(rt_baseline, train_examples=train_examples)})[key]


def margin_kept_pct(student: float, teacher: float, baseline: float) -> float | None:
    """:func:`kdlight.baseline.margin_kept` in % (None where there is no margin to keep: it is NaN there)."""
    kept = margin_kept(student, teacher, baseline)
    return None if kept != kept else 100 * kept


def teacher_size(teacher: str) -> int:
    """The parameters of ``teacher`` with a 2-label head (the tables' compression is against this)."""
    return count_parameters(load_classifier(teacher, 2))


def choose(records: list[dict]) -> dict:
    """The run whose best checkpoint has the best validation score (ties: the earlier run). Test is never read."""
    return max(records, key=lambda r: (r["best_val_score"], -records.index(r)))


def in_progress(jobs: dict, done: dict, folder: Callable[[str], Path]) -> dict[str, list[dict]]:
    """The validation points so far (:func:`in_progress_curve` of ``folder(key)``) of the jobs not in ``done``."""
    return {key: curve for key in jobs if key not in done and (curve := in_progress_curve(folder(key)))}


def in_progress_curve(root: Path) -> list[dict]:
    """The validation points an unrecorded run has logged (every ``metrics.csv`` under ``root``, a resumed run's
    versions together, in step order): reported, marked as such; nothing is chosen or tested from them."""
    points: dict[int, dict] = {}
    for path in sorted(Path(root).rglob("metrics.csv")) if Path(root).is_dir() else []:
        with path.open() as handle:
            for row in csv.DictReader(handle):
                if row.get("val/score"):
                    step = int(row["step"])
                    points[step] = {"epoch": int(row["epoch"]), "step": step, "val_score": float(row["val/score"])}
    return [points[k] for k in sorted(points)]
