"""A strong teacher for the studies: the best the offline data allows, chosen on validation (resumable).

    python -m benchmarks.strong_teacher                 # 2 candidates x 3 epochs on all 10,202 rows (hours on CPU)
    python -m benchmarks.strong_teacher --report-only   # rewrite the results from the recorded runs
    python -m benchmarks.strong_teacher --quick         # 64 rows, 1 epoch: plumbing only

configs/quickstart/teacher.yaml on every training row for ``EPOCHS`` epochs at each of ``LEARNING_RATES``,
validated twice per epoch; each run's best checkpoint by validation accuracy is its teacher, and the best of those
is the strong teacher (test accuracy is reported, never used to choose). A stopped run resumes from its last.ckpt.
:func:`strong_teacher_export` returns the chosen export for other studies.
Results: benchmarks/results/strong_teacher.{md,json,png}; finished runs in strong_teacher_runs.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from benchmarks.common import CONFIGS, choose, fit_and_test, in_progress, recorded_rt_baseline
from benchmarks.harness import curves_plot
from benchmarks.study import RESULTS, Job, Study, study_name, study_parser
from kdlight.assets import cache_dir

LEARNING_RATES = (5e-5, 1e-4)
EPOCHS = 3


def candidate_key(learning_rate: float, epochs: int) -> str:
    return f"lr{learning_rate:g}_epochs{epochs}"


def teacher_root(key: str) -> Path:
    return cache_dir() / "teachers" / "strong_rt" / key


def recipe(learning_rate: float, epochs: int, root: Path, quick: bool = False) -> dict:
    config = yaml.safe_load((CONFIGS / "quickstart" / "teacher.yaml").read_text())
    config["trainer"].update(max_epochs=epochs, val_check_interval=0.5)
    config["model"]["init_args"].update(learning_rate=learning_rate, export_dir=str(root / "export"))
    config["data"]["init_args"]["max_train_examples"] = 64 if quick else None  # every training row
    if quick:
        config["trainer"].update(limit_val_batches=2, limit_test_batches=2, val_check_interval=1.0)
    return config


def train(learning_rate: float, epochs: int, quick: bool = False) -> dict:
    key = candidate_key(learning_rate, epochs) + ("_quick" if quick else "")
    root = teacher_root(key)
    record = fit_and_test(recipe(learning_rate, epochs, root, quick), root, resume=True)
    record.update(learning_rate=learning_rate, epochs=epochs, key=key)
    return record


def strong_teacher_export(results: Path = RESULTS) -> Path | None:
    """The chosen strong teacher's export, if the study has chosen one and its export is on this machine."""
    path = results / "strong_teacher.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    export = next((Path(r["export"]) for r in rows if r.get("chosen") == "yes"), None)
    return export if export is not None and (export / "config.json").is_file() else None


def main(argv: list[str] | None = None) -> list[dict]:
    parser = study_parser(__doc__, "report-only", "quick")
    parser.add_argument("--learning-rates", type=float, nargs="+", default=list(LEARNING_RATES))
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    args = parser.parse_args(argv)
    epochs = 1 if args.quick else args.epochs
    study = Study(study_name("strong_teacher", args), report_only=args.report_only)
    jobs = {
        candidate_key(lr, epochs): Job(train, learning_rate=lr, epochs=epochs, quick=args.quick)
        for lr in args.learning_rates
    }
    done = study.run(jobs)
    records = [done[k] for k in jobs if k in done]
    baseline = recorded_rt_baseline(64 if args.quick else None)
    chosen = choose(records) if records else None

    def row(learning_rate: float, curve: list[dict], chosen_text: str, record: dict | None = None) -> dict:
        best, record = max(curve, key=lambda p: p["val_score"]) if curve else {}, record or {}
        row = {"learning_rate": learning_rate, "epochs": epochs}
        row.update(best_val_score=record.get("best_val_score", best.get("val_score")), best_at_step=best.get("step"))
        row.update(chosen=chosen_text, test_score=record.get("test/score"), baseline_test_score=baseline["test_score"])
        row.update(val_curve=[[p["step"], p["val_score"]] for p in curve], fit_seconds=record.get("fit_seconds"))
        resumed = "yes" if record.get("resumed_from") else ""  # its fit s: the part after the resume
        return {**row, "resumed": resumed, "export": record.get("export")}

    rows = [row(r["learning_rate"], r["val_curve"], "yes" if r is chosen else "", r) for r in records]
    missing = [k for k in jobs if k not in done]
    for key, curve in in_progress(jobs, done, lambda key: teacher_root(key + ("_quick" if args.quick else ""))).items():
        learning_rate = jobs[key].kwargs["learning_rate"]
        rows.append(row(learning_rate, curve, f"in progress (step {curve[-1]['step']})"))
        records.append({"learning_rate": learning_rate, "val_curve": curve})
    notes = (
        f"Chosen on validation: lr {chosen['learning_rate']:g}, best checkpoint at step "
        f"{max(chosen['val_curve'], key=lambda p: p['val_score'])['step']} (validation {chosen['best_val_score']:.4f}, "
        f"test {chosen['test/score']:.4f}; the margin a student must keep is {chosen['test/score']:.4f} - "
        f"{baseline['test_score']:.4f} = {chosen['test/score'] - baseline['test_score']:.4f})."
        if chosen
        else "No run has finished yet."
    )
    study.write(
        rows,
        "learning_rate=lr; epochs; best_val_score=best val acc; best_at_step=at step; chosen=chosen on val; "
        "test_score=test acc (best ckpt); baseline_test_score=TF-IDF baseline (all rows); fit_seconds=fit s; resumed",
        title="Strong teacher: all-MiniLM-L6-v2 on every Rotten Tomatoes training row"
        + (" (--quick: plumbing only)" if args.quick else ""),
        intro="configs/quickstart/teacher.yaml on all training rows, validated twice per epoch; each run's best "
        "checkpoint by validation accuracy is exported and tested. Baseline: TF-IDF + logistic regression on the "
        f"same {baseline['train_rows']} rows. "
        + (f"Not finished: {', '.join(missing)} (re-run the command to resume)." if missing else "All runs finished."),
        notes=notes,
        plot=curves_plot(
            records,
            lambda point: point["step"],
            lambda r: f"lr {r['learning_rate']:g}",
            ("training step (batch 32)", "validation accuracy", "MiniLM teacher on all Rotten Tomatoes training rows"),
            figsize=(6.5, 4),
            hline=(baseline["test_score"], "TF-IDF + LR baseline (test, same rows)"),
        ),
    )
    return rows


if __name__ == "__main__":
    main()
