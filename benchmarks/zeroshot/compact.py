"""Zero-shot distillation at real compression: the paper's setting with a small *pretrained* student (one command).

    python -m benchmarks.zeroshot.compact                 # everything (many CPU hours: resumable, run it in parts)
    python -m benchmarks.zeroshot.compact --seeds 0       # one seed of every row first
    python -m benchmarks.zeroshot.compact --quick         # a few steps per run, to check the plumbing

Rashid et al. (2021) distil a BERT-large teacher into BERT-Mini, a *pretrained* student 30x smaller, with no
task data (SST-2: 85.9 vs 93.0, 92 % of the teacher). The CPU-scale analog here:

* teacher: the quickstart teacher (all-MiniLM-L6-v2 fine-tuned on the Rotten Tomatoes stand-in, 22.7M);
* students: ``general`` -- a stock ALBERT student (2 blocks, hidden 256, feed-forward 512, 32-wide embeddings
  over the full vocabulary, ~11x fewer parameters) general-distilled from the packaged MiniLM on the
  Wikipedia summaries first (the BERT-Mini analog); ``scratch`` -- the same architecture, random; ``truncated``
  -- the teacher cut to 2 blocks (1.45x, the earlier study's student, for continuity);
* methods: supervised KD on the task data (upper bound), zero-shot (out-of-domain + adversarial),
  adversarial only, out-of-domain only, random tokens, no distillation; the zero-shot rows never read the
  task's training split. One more row: zero-shot with a second out-of-domain corpus (ABC news sentences from
  gensim's test data, ``packaged/lee_news``) for the general student.

Every method gets the same number of student updates and batch size; validation accuracy is logged after
each generator/student cycle (the curves plot). Results: benchmarks/results/zeroshot_compact.{md,json,png},
curves in zeroshot_compact_curves.png, finished runs in zeroshot_compact_runs.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

from benchmarks.common import fine_tuned_rt_teacher, fit_and_test, general_distillation_config, runner_for
from benchmarks.study import Job, Study, mean_std

WORK = Path("runs/benchmarks")  # each study's run folders: WORK / <results name>
ARCH = {"num_hidden_layers": 2, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 512}
EMBEDDING = 32
METHODS = {  # name -> (inputs, perturbation, corpus); None: supervised KD; "untrained": no distillation
    "supervised KD (task data, upper bound)": None,
    "zero-shot: out-of-domain + adversarial": ("both", "generator", "packaged/wiki_summaries"),
    "adversarial only": ("adversarial", "generator", "packaged/wiki_summaries"),
    "out-of-domain only": ("out_of_domain", "generator", "packaged/wiki_summaries"),
    "random tokens": ("random_tokens", "generator", "packaged/wiki_summaries"),
    "no distillation (student as built)": "untrained",
    "zero-shot, news corpus (lee_news)": ("both", "generator", "packaged/lee_news"),
}
STUDENTS = ("general", "scratch", "truncated")
FULL = {
    "student_steps": 1000,
    "generator_steps": 10,
    "cycle": 100,
    "batch_size": 32,
    "max_length": 32,
    "general_steps": 600,
    "train_examples": None,
    "show_rewrites_every": 50,
}
QUICK = {
    "student_steps": 6,
    "generator_steps": 2,
    "cycle": 3,
    "batch_size": 8,
    "max_length": 32,
    "general_steps": 4,
    "train_examples": 64,
    "show_rewrites_every": 1,
}


def student_config(student: str, general_export: str | None) -> dict:
    if student == "truncated":
        return {"class_path": "TruncatedTeacher", "init_args": {"num_layers": 2}}
    if student == "general":
        return {"class_path": "PretrainedStudent", "init_args": {"name_or_path": general_export}}
    return {
        "class_path": "CompressedEmbeddingStudent",
        "init_args": {
            "base": {"class_path": "FreshStudent", "init_args": dict(ARCH)},
            "embedding_rank": EMBEDDING,
            "layout": "albert",
            "factorise_from": "student",
        },
    }


def run_cli(config: dict, root: Path, fit: bool = True) -> dict:
    from kdlight.models.hf import count_parameters

    runner = runner_for(config, root)
    record = {"params": count_parameters(runner.model.predictor)}
    start = time.perf_counter()
    best = None
    if fit:
        runner.trainer.fit(runner.model, datamodule=runner.datamodule)
        best = runner.trainer.checkpoint_callback.best_model_path or None
        record["steps"] = runner.trainer.global_step
        record["student_steps"] = student_updates(runner.model, runner.trainer.global_step)
    record["fit_seconds"] = time.perf_counter() - start
    metrics = runner.trainer.test(runner.model, datamodule=runner.datamodule, ckpt_path=best, verbose=False)[0]
    record.update({k: float(v) for k, v in metrics.items()})
    record["curve"] = validation_curve(root)
    record["rewrites"] = shown_rewrites(root)
    record["export"] = str(runner.model.export_path()) if fit else None
    return record


def student_updates(model, global_step: int) -> int:
    progress = getattr(model, "progress", None)  # ZeroShotAdversarialKD: batches, student steps, generator steps, skips
    return int(progress[1]) if progress is not None else global_step


def validation_curve(root: Path) -> list[tuple[int, float]]:
    files = sorted(root.rglob("metrics.csv"))
    if not files:
        return []
    rows = list(csv.DictReader(files[-1].open()))
    return [(int(r["step"]), float(r["val/score"])) for r in rows if r.get("val/score")]


def shown_rewrites(root: Path) -> list[dict]:
    """The generator's rewrites the run decoded for people (``show_rewrites_every``), last shown step first."""
    files = sorted(root.rglob("rewrites.jsonl"))
    if not files:
        return []
    rows = [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]
    return sorted(rows, key=lambda r: -r["generator_step"])


def rewrite_examples(records: list[dict], limit: int = 8) -> str:
    """A results-file section: what the generator wrote for the general student (zero-shot, first seed)."""
    from kdlight.components.rewriting import rewrites_markdown

    zero_shot = list(METHODS)[1]
    runs = sorted(
        (r for r in records if r["student"] == "general" and r["method"] == zero_shot and r.get("rewrites")),
        key=lambda r: r["seed"],
    )
    if not runs:
        return ""
    shown = runs[0]["rewrites"][:limit]
    steps = sorted({r["generator_step"] for r in shown})
    return (
        f"## What the generator writes\n\nGeneral student, zero-shot, seed {runs[0]['seed']}: rewrites of "
        f"out-of-domain sentences decoded at generator step(s) {', '.join(map(str, steps))} "
        "(`rewrites.jsonl` in each run's log folder; TensorBoard shows them as text). Masked positions that "
        "the generator filled are the changed spans; teacher and student are each model's predicted class "
        "on the rewrite.\n\n" + rewrites_markdown(shown)
    )


def general_distillation(teacher: str, setting: dict, work: str) -> dict:
    root = Path(work) / "general"
    student = {
        "class_path": "CompressedEmbeddingStudent",
        "init_args": {
            "base": {"class_path": "FreshStudent", "init_args": dict(ARCH)},
            "embedding_rank": EMBEDDING,
            "layout": "albert",
            "factorise_from": "teacher",
        },
    }
    return fit_and_test(
        general_distillation_config(student, setting["general_steps"], root / "export"), root, test=False
    )


def batches_for(student_steps: int, generator_steps: int, cycle: int) -> int:
    """Training batches (= optimiser steps) that hold exactly ``student_steps`` student updates."""
    full, rest = divmod(student_steps, cycle)
    return full * (generator_steps + cycle) + (generator_steps + rest if rest else 0)


def one_run(
    student: str, method: str, seed: int, teacher: str, general_export: str | None, setting: dict, work: str
) -> dict:
    mode = METHODS[method]
    root = Path(work) / student / method.split(" ")[0].strip(":,") / f"seed{seed}"
    if mode is not None and mode != "untrained":
        root = Path(work) / student / "_".join(mode[:1] + (Path(mode[2]).name,)) / f"seed{seed}"
    task = {
        "class_path": "RottenTomatoesDataModule",
        "init_args": {
            "max_length": setting["max_length"],
            "batch_size": setting["batch_size"],
            "max_train_examples": setting["train_examples"],
        },
    }
    common = {
        "teacher": teacher,
        "student": student_config(student, general_export),
        "learning_rate": 5e-4,
        "warmup_ratio": 0.1,
        "export_dir": str(root / "export"),
    }
    if mode is None or mode == "untrained":
        steps = setting["student_steps"]
        model = {
            "class_path": "VanillaKD",
            "init_args": {**common, "alpha": 0.5, "temperature": 2.0, "cache_teacher_logits": True},
        }
        data = task
        val_every = setting["cycle"]
    else:
        inputs, perturbation, corpus = mode
        model = {
            "class_path": "ZeroShotAdversarialKD",
            "init_args": {
                **common,
                "generator": "packaged/all-MiniLM-L6-v2",
                "inputs": inputs,
                "perturbation": perturbation,
                "mask_rate": 0.3,
                "generator_steps": setting["generator_steps"],
                "student_steps": setting["cycle"],
                "generator_learning_rate": 1e-5,
                "temperature": 1.0,
                "show_rewrites_every": setting["show_rewrites_every"],
                # the teacher's logits on the fixed out-of-domain text, once (benchmarks/zeroshot/step_cost.py)
                "cache_teacher_logits": inputs in ("both", "out_of_domain"),
            },
        }
        generator_steps = setting["generator_steps"] if inputs in ("both", "adversarial") else 0  # trains_generator
        steps = batches_for(setting["student_steps"], generator_steps, setting["cycle"])
        val_every = setting["cycle"] + generator_steps
        data = {
            "class_path": "ZeroShotDataModule",
            "init_args": {
                "task": {"class_path": "RottenTomatoesDataModule"},
                "corpus": {"class_path": "OutOfDomainCorpus", "init_args": {"source": corpus}},
                "max_length": setting["max_length"],
                "batch_size": setting["batch_size"],
                "max_train_examples": setting["train_examples"],
            },
        }
    config = {
        "seed_everything": seed,
        "trainer": {
            "max_steps": steps,
            "val_check_interval": val_every,
            "check_val_every_n_epoch": None,
            "log_every_n_steps": 10,
            # metrics.csv holds the validation curve; the default logger is TensorBoard where it is installed
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(root)}},
        },
        "model": model,
        "data": data,
    }
    record = run_cli(config, root, fit=mode != "untrained")
    record.update(student=student, method=method, seed=seed)
    return record


def summarise(records: list[dict], teacher_score: float, teacher_params: int) -> list[dict]:
    rows = []
    for student in STUDENTS:
        for method in METHODS:
            runs = [r for r in records if r["student"] == student and r["method"] == method]
            if not runs:
                continue
            mean, std = mean_std([r["test/score"] for r in runs])
            rows.append(
                {
                    "student": student,
                    "method": method,
                    "params": runs[0]["params"],
                    "compression": teacher_params / runs[0]["params"],
                    "accuracy_mean": mean,
                    "accuracy_std": std,
                    "seeds": len(runs),
                    "pct_of_teacher": 100 * mean / teacher_score,
                    "seconds": sum(r["fit_seconds"] for r in runs) / len(runs),
                    "student_steps": runs[0].get("student_steps", 0),
                    "uses_task_training_data": METHODS[method] is None,
                }
            )
    return rows


def targets(rows: list[dict]) -> str:
    def row(student, method):
        return next((r for r in rows if r["student"] == student and r["method"] == method), None)

    names = list(METHODS)
    lines = ["## Targets", ""]
    zs = row("general", names[1])
    if zs:
        verdict = "met" if zs["pct_of_teacher"] >= 92 else "missed"
        lines.append(
            f"- general student ({zs['compression']:.1f}x) zero-shot >= 92 % of the teacher: **{verdict}** "
            f"({zs['pct_of_teacher']:.1f} %, {zs['seeds']} seeds)."
        )
    pairs = [
        (("general", names[1]), ("general", names[3])),
        (("general", names[3]), ("general", names[4])),
        (("general", names[1]), ("scratch", names[1])),
    ]
    for a_key, b_key in pairs:
        a, b = row(*a_key), row(*b_key)
        if a and b:
            gap, spread = a["accuracy_mean"] - b["accuracy_mean"], max(a["accuracy_std"], b["accuracy_std"])
            seeds = min(a["seeds"], b["seeds"])
            verdict = "met" if gap > spread and seeds > 1 else ("missed" if seeds > 1 else "not judged (1 seed)")
            lines.append(
                f"- {a_key[0]}/{a_key[1]} > {b_key[0]}/{b_key[1]} by more than the seed spread: **{verdict}** "
                f"({100 * gap:+.2f} points vs larger std {100 * spread:.2f}, {seeds} seeds)."
            )
    return "\n".join(lines)


def plots(rows: list[dict], records: list[dict], teacher_score: float):
    def draw(path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(11, 4.8))
        students = [s for s in STUDENTS if any(r["student"] == s for r in rows)]
        methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
        width = 0.8 / max(1, len(students))
        for j, student in enumerate(students):
            values = [next((r for r in rows if r["method"] == m and r["student"] == student), None) for m in methods]
            xs = [i + (j - (len(students) - 1) / 2) * width for i in range(len(methods))]
            ax.bar(
                xs,
                [v["pct_of_teacher"] if v else 0 for v in values],
                width,
                yerr=[100 * v["accuracy_std"] / teacher_score if v else 0 for v in values],
                capsize=3,
                label=student,
            )
        ax.axhline(100, color="black", lw=0.8)
        ax.axhline(92, color="grey", lw=0.8, ls="--", label="target: 92 % of teacher")
        ax.set_xticks(range(len(methods)), [m.replace(": ", ":\n").replace(" (", "\n(") for m in methods], fontsize=7)
        ax.set_ylabel("% of teacher test accuracy")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

        fig, axes = plt.subplots(1, len(students), figsize=(5 * len(students), 4), squeeze=False)
        for ax, student in zip(axes[0], students, strict=True):
            for method in methods:
                for record in (r for r in records if r["student"] == student and r["method"] == method):
                    if record["curve"]:
                        steps, scores = zip(*record["curve"], strict=True)
                        ax.plot(
                            steps,
                            scores,
                            lw=1,
                            label=method if record["seed"] == 0 else None,
                            color=f"C{list(METHODS).index(method)}",
                        )
            ax.axhline(teacher_score, color="black", lw=0.8, ls=":")
            ax.set_title(f"{student} student: validation accuracy")
            ax.set_xlabel("training batch")
        axes[0][0].legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(path.with_name(path.stem + "_curves.png"), dpi=110)
        plt.close(fig)

    return draw


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--students", nargs="+", default=list(STUDENTS), choices=STUDENTS)
    parser.add_argument(
        "--methods",
        type=int,
        nargs="+",
        default=list(range(len(METHODS))),
        help="method numbers, in the order of METHODS",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--label", default="", help="a suffix for the result files and run folders, e.g. gpu for a GPU run"
    )
    parser.add_argument("--student-steps", type=int, help=f"student updates per run (default {FULL['student_steps']})")
    parser.add_argument("--general-steps", type=int, help=f"general distillation steps ({FULL['general_steps']})")
    parser.add_argument("--report-only", action="store_true", help="run nothing; write results from the runs file")
    args = parser.parse_args(argv)
    setting = dict(QUICK if args.quick else FULL)
    for key in ("student_steps", "general_steps"):
        if getattr(args, key) is not None:
            setting[key] = getattr(args, key)
    name = "zeroshot_compact" + ("_quick" if args.quick else "") + (f"_{args.label}" if args.label else "")
    work = str(WORK / name)  # passed to each job: spawned workers do not see a changed global
    study = Study(name, workers=args.workers, report_only=args.report_only)
    teacher = str(fine_tuned_rt_teacher())  # cached after the first run; its size is in the tables
    general = {}
    if "general" in args.students:
        general = Study(name, workers=1, report_only=args.report_only).run(
            {"general": Job(general_distillation, teacher=teacher, setting=setting, work=work)}
        )
    export = general.get("general", {}).get("export")
    names = list(METHODS)
    jobs = {}
    for student in args.students:  # the general student's rows first: the study's point
        for seed in args.seeds:
            for index in args.methods:
                method = names[index]
                if method.startswith("zero-shot, news") and student != "general":
                    continue
                jobs[f"{student}/{method}/seed{seed}"] = Job(
                    one_run,
                    student=student,
                    method=method,
                    seed=seed,
                    teacher=teacher,
                    general_export=export,
                    setting=setting,
                    work=work,
                )
    study.run(jobs)
    records = [r for k, r in study.done().items() if k != "general"]
    from kdlight.models.hf import count_parameters, load_classifier

    teacher_params = count_parameters(load_classifier(teacher, 2))
    teacher_score = next(r["test/teacher_score"] for r in records if "test/teacher_score" in r)
    rows = summarise(records, teacher_score, teacher_params)
    study.write(
        rows,
        [
            ("student", "student"),
            ("method", "method"),
            ("accuracy_mean", "test acc (mean)"),
            ("accuracy_std", "std"),
            ("seeds", "seeds"),
            ("pct_of_teacher", "% of teacher"),
            ("params", "params"),
            ("compression", "compression"),
            ("student_steps", "student steps"),
            ("seconds", "fit s/run"),
        ],
        title="Zero-shot distillation at real compression (Rotten Tomatoes stand-in)"
        + (" -- --quick: plumbing only" if args.quick else ""),
        intro=f"Teacher: the quickstart teacher, test accuracy {teacher_score:.4f}, {teacher_params:,} parameters. "
        f"Setting: {json.dumps(setting)}. Students and methods: see benchmarks/zeroshot/compact.py.",
        notes=targets(rows) + "\n\n" + rewrite_examples(records),
        plot=plots(rows, records, teacher_score),
    )


if __name__ == "__main__":
    main()
