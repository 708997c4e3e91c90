"""The quickstart student's learning rate and epochs, chosen on the VALIDATION split (resumable).

    python -m benchmarks.quickstart_lr                 # the four candidates (about 2 min each on 2 idle cores)
    python -m benchmarks.quickstart_lr --report-only   # rewrite the results from the recorded runs

configs/quickstart/kd.yaml verbatim (seed 42, the quickstart teacher, 6,000 rows) at the four :data:`CANDIDATES`
the README's choice once came from (on test accuracy); the one whose best checkpoint scores highest on validation
is chosen, test accuracy is reported beside it. Every row has the TF-IDF baseline and the margin kept.
Results: benchmarks/results/quickstart_lr.{md,json,png}; finished runs in quickstart_lr_runs.json.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from benchmarks.common import (
    CONFIGS,
    cached_rt_teacher,
    choose,
    fine_tuned_rt_teacher,
    fit_and_test,
    in_progress,
    margin_kept_pct,
    recorded_rt_baseline,
)
from benchmarks.harness import curves_plot
from benchmarks.study import Job, Study, study_name, study_parser

WORK = Path("runs/benchmarks/quickstart_lr")
#: (learning rate, epochs): the four runs the README's choice came from
CANDIDATES = [(2e-4, 2), (3e-4, 2), (5e-4, 2), (3e-4, 3)]


def candidate_key(learning_rate: float, epochs: int) -> str:
    return f"lr{learning_rate:g}/epochs{epochs}"


def recipe(teacher: str, learning_rate: float, epochs: int, root: Path, quick: bool = False) -> dict:
    """configs/quickstart/kd.yaml with this learning rate and number of epochs (and the run's paths)."""
    config = yaml.safe_load((CONFIGS / "quickstart" / "kd.yaml").read_text())
    config["trainer"]["max_epochs"] = epochs
    config["model"]["init_args"].update(teacher=teacher, learning_rate=learning_rate, export_dir=str(root / "export"))
    if quick:  # plumbing only
        config["data"]["init_args"]["max_train_examples"] = 64
        config["trainer"].update(limit_val_batches=2, limit_test_batches=2)
    return config


def train(teacher: str, learning_rate: float, epochs: int, work: str, quick: bool = False) -> dict:
    root = Path(work) / candidate_key(learning_rate, epochs).replace("/", "_")
    # an interrupted candidate continues from its last.ckpt (the validation curve is in the checkpoint)
    record = fit_and_test(recipe(teacher, learning_rate, epochs, root, quick), root, resume=True)
    record.update(learning_rate=learning_rate, epochs=epochs)
    return record


def warm_teacher_cache(teacher: str, work: str, quick: bool = False) -> None:
    """Fill the teacher-logit cache the candidates share with a one-step fit, before they run in parallel."""
    root = Path(work) / "teacher_cache_warmup"
    config = recipe(teacher, 1e-4, 1, root, quick)
    config["trainer"].update(max_steps=1, limit_val_batches=0, num_sanity_val_steps=0)
    fit_and_test(config, root, test=False)


def summarise(records: list[dict], baseline: dict) -> list[dict]:
    chosen = choose(records) if records else None
    return [
        {
            "learning_rate": r["learning_rate"],
            "epochs": r["epochs"],
            "val_score": r["best_val_score"],
            "chosen": "yes" if r is chosen else "",
            "test_score": r["test/score"],
            "teacher_test_score": r["test/teacher_score"],
            "baseline_test_score": baseline["test_score"],
            "pct_of_teacher": 100 * r["test/score"] / r["test/teacher_score"],
            "margin_kept_pct": margin_kept_pct(r["test/score"], r["test/teacher_score"], baseline["test_score"]),
            "val_curve": [p["val_score"] for p in r["val_curve"]],
            "fit_seconds": r["fit_seconds"],
        }
        for r in records
    ]


def main(argv: list[str] | None = None) -> list[dict]:
    args = study_parser(__doc__, "report-only", "quick", "workers").parse_args(argv)
    name = study_name("quickstart_lr", args)
    study = Study(name, report_only=args.report_only)
    # report-only trains nothing (the teacher's path is only passed to the jobs it does not run)
    teacher = str(cached_rt_teacher() if args.report_only else fine_tuned_rt_teacher())
    jobs = {
        candidate_key(lr, epochs): Job(
            train, teacher=teacher, learning_rate=lr, epochs=epochs, work=str(WORK / name), quick=args.quick
        )
        for lr, epochs in CANDIDATES
    }
    if not args.report_only and set(jobs) - set(study.done()):
        warm_teacher_cache(teacher, str(WORK / name), args.quick)  # once, before the candidates run in parallel
    done = Study(name, workers=args.workers, report_only=args.report_only).run(jobs)
    records = [done[key] for key in jobs if key in done]
    baseline = recorded_rt_baseline(64 if args.quick else 6000)
    rows = summarise(records, baseline)
    going = in_progress(jobs, done, lambda key: WORK / name / key.replace("/", "_"))
    going = [{**jobs[key].kwargs, "val_curve": curve} for key, curve in going.items()]  # plotted dashed
    for run in going:
        lr, epochs, scores = run["learning_rate"], run["epochs"], [p["val_score"] for p in run["val_curve"]]
        state = f"in progress (epoch {run['val_curve'][-1]['epoch'] + 1} of {epochs})"
        rows.append(dict(learning_rate=lr, epochs=epochs, val_score=max(scores), chosen=state, val_curve=scores))
    chosen = next((r for r in rows if r["chosen"] == "yes"), None)
    missing = [k for k in jobs if k not in done]
    not_run = f"; not yet run: {', '.join(missing)}." if missing else "."
    status = f"{len(records)} of {len(jobs)} candidates run{not_run}"
    choice = (
        ("Provisional, among the finished candidates only: " if missing else "")
        + f"Chosen on validation: learning rate {chosen['learning_rate']:g}, {chosen['epochs']} epochs "
        f"(best validation accuracy {chosen['val_score']:.4f}; its test accuracy {chosen['test_score']:.4f})."
        if chosen
        else "Nothing chosen yet."
    )
    study.write(
        rows,
        "learning_rate=lr; epochs; val_score=val acc (best ckpt); chosen=chosen on val; test_score=test acc; "
        "teacher_test_score=teacher test acc; baseline_test_score=TF-IDF baseline test acc; pct_of_teacher=% of "
        "teacher; margin_kept_pct=% of margin kept; fit_seconds=fit s",
        title="Quickstart student: learning rate and epochs chosen on validation"
        + (" (--quick: plumbing only)" if args.quick else ""),
        intro="configs/quickstart/kd.yaml verbatim (seed 42, quickstart teacher, 6,000 training rows, batch 32) with "
        "only the learning rate and epochs changed; each run's best checkpoint by validation accuracy is tested. "
        "Margin kept = (student - baseline) / (teacher - baseline), baseline = TF-IDF + logistic regression on the "
        f"same rows (C={baseline['C']:g}, n-grams 1-{baseline['ngram_range'][1]}, chosen on validation). " + status,
        notes=choice,
        plot=curves_plot(
            records + going,
            lambda point: point["epoch"] + 1,  # epochs done
            lambda r: candidate_key(r["learning_rate"], r["epochs"]),
            ("epoch", "validation accuracy (Rotten Tomatoes)", "quickstart student: validation curve per candidate"),
            figsize=(6, 4),
        ),
    )
    return rows


if __name__ == "__main__":
    main()
