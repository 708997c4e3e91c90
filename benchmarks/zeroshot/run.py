"""Zero-shot adversarial KD, measured on the offline stand-in task (one command).

    python -m benchmarks.zeroshot.run            # the study (~30 min on 2 CPU cores, +3 min for the teacher once)
    python -m benchmarks.zeroshot.run --quick    # a few steps per run, to check the plumbing (temp folder)

Teacher: the packaged all-MiniLM-L6-v2 fine-tuned on Rotten Tomatoes (the quickstart teacher, trained
once and cached). Students: 2 layers, truncated from the teacher or freshly initialised ("scratch").
Every method gets the same number of *student* updates and the same batch size; the zero-shot
methods never read the task's training split (only its test split, for the score).

Rows: supervised KD on the task's training data (upper bound); zero-shot (out-of-domain +
adversarial); out-of-domain only; adversarial only; random tokens. Results go to
benchmarks/results/zeroshot.{md,json,png}; finished runs to zeroshot_runs.json (resumable).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from benchmarks.common import CONFIGS, fine_tuned_rt_teacher
from benchmarks.study import RESULTS, Job, Study, keyed_list, mean_std, target
from kdlight.assets import PACKAGED_WIKI_SUMMARIES
from kdlight.data import OutOfDomainCorpus, RottenTomatoesDataModule, ZeroShotDataModule
from kdlight.data.base import Collator
from kdlight.models import FreshStudent, TruncatedTeacher, count_parameters, load_classifier
from kdlight.modules import VanillaKD, ZeroShotAdversarialKD

METHODS = {  # name -> (ZeroShotAdversarialKD inputs, perturbation) or None for supervised KD
    "supervised KD (task data, upper bound)": None,
    "zero-shot: out-of-domain + adversarial": ("both", "generator"),
    "out-of-domain only": ("out_of_domain", "generator"),
    "adversarial only": ("adversarial", "generator"),
    "random tokens": ("random_tokens", "generator"),
    "no distillation (student as initialised)": "untrained",
}
STUDENTS = {"truncated": lambda: TruncatedTeacher(2), "scratch": lambda: FreshStudent(num_hidden_layers=2)}


@dataclass
class Setting:
    student_steps: int
    seeds: list[int]
    batch_size: int = 32
    max_length: int = 64
    work: Path = Path("runs/benchmarks/zeroshot")

    @property
    def key(self) -> list[int]:
        return [self.student_steps, self.batch_size, self.max_length]


def recipe_args() -> dict:
    """The offline recipe's ZeroShotAdversarialKD arguments, so the study and the recipe agree."""
    args = dict(yaml.safe_load((CONFIGS / "zeroshot" / "offline.yaml").read_text())["model"]["init_args"])
    for key in ("teacher", "student", "inputs"):
        args.pop(key, None)
    return args


def batches_for(student_steps: int, generator_steps: int, cycle_students: int) -> int:
    """Training batches (= optimiser steps) that hold exactly ``student_steps`` student updates."""
    full, rest = divmod(student_steps, cycle_students)
    return full * (generator_steps + cycle_students) + (generator_steps + rest if rest else 0)


def trainer(max_steps: int, root: Path):
    from lightning import Trainer

    return Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=root,
    )


@torch.no_grad()
def test_accuracy(model: torch.nn.Module, dm) -> float:
    model.eval()
    dataset = dm.splits.get("test") or dm.tokenize_split("test")
    loader = torch.utils.data.DataLoader(dataset, batch_size=128, collate_fn=Collator(dm.tokenizer.pad_token_id or 0))
    correct = total = 0
    for batch in loader:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        correct += (model(**inputs).logits.argmax(-1) == batch["labels"]).sum().item()
        total += len(batch["labels"])
    return correct / total


def task_data(setting: Setting, teacher: str) -> RottenTomatoesDataModule:
    return RottenTomatoesDataModule(tokenizer=teacher, max_length=setting.max_length, batch_size=setting.batch_size)


def zero_shot_data(setting: Setting, teacher: str) -> ZeroShotDataModule:
    return ZeroShotDataModule(
        task=RottenTomatoesDataModule(),
        corpus=OutOfDomainCorpus(source=PACKAGED_WIKI_SUMMARIES),
        tokenizer=teacher,
        max_length=setting.max_length,
        batch_size=setting.batch_size,
    )


def run_one(setting: Setting, teacher: str, method: str, student: str, seed: int) -> dict:
    """One run (a Study job): its record, with the setting it ran under."""
    from lightning import seed_everything

    seed_everything(seed, verbose=False)
    mode = METHODS[method]
    record = {"method": method, "student": student, "seed": seed}
    tag = f"[zeroshot] {student:9s} {method:42s} seed {seed}"
    if mode == "untrained":  # the floor every method starts from: the truncated student keeps the teacher's head
        built = STUDENTS[student]().build(load_classifier(teacher, 2, require_head=True), 2)
        accuracy = test_accuracy(built, task_data(setting, teacher))
        print(f"{tag}: accuracy {accuracy:.4f} (no training)", flush=True)
        return {
            **record,
            "accuracy": accuracy,
            "seconds": 0.0,
            "student_steps": 0,
            "batches": 0,
            "params": count_parameters(built),
            "setting": setting.key,
        }
    common = {
        "teacher": teacher,
        "student": STUDENTS[student](),
        "export_dir": str(setting.work / "export"),
        "export_best": False,
    }
    if mode is None:
        dm = task_data(setting, teacher)
        module = VanillaKD(alpha=0.5, temperature=2.0, learning_rate=2e-4, warmup_ratio=0.1, task=dm.task, **common)
        max_steps = setting.student_steps
    else:
        dm = zero_shot_data(setting, teacher)
        args = {**recipe_args(), "inputs": mode[0], "perturbation": mode[1]}
        module = ZeroShotAdversarialKD(task=dm.task, **common, **args)
        max_steps = setting.student_steps  # max_steps counts student updates (generator steps are not counted)
    fit = trainer(max_steps, setting.work)
    start = time.perf_counter()
    fit.fit(module, datamodule=dm)
    seconds = time.perf_counter() - start
    student_steps = int(module.progress[1]) if mode is not None else fit.global_step
    accuracy = test_accuracy(module.student, dm)
    record.update(
        accuracy=accuracy,
        seconds=seconds,
        student_steps=student_steps,
        batches=max_steps,
        params=count_parameters(module.student),
    )
    if mode is not None:
        record["skipped_nonfinite"] = int(module.progress[3])
    print(f"{tag}: accuracy {accuracy:.4f} in {seconds:.0f}s ({student_steps} student steps)", flush=True)
    return {**record, "setting": setting.key}


def run_key(record: dict) -> str:
    """A run's key in the runs file: its setting (records from before settings were recorded ran at batch 16,
    length 32), student, method and seed."""
    setting = record["setting"] if "setting" in record else [record["student_steps"], 16, 32]
    return f"{'/'.join(map(str, setting))}|{record['student']}|{record['method']}|{record['seed']}"


def summarise(runs: list[dict], teacher_accuracy: float, teacher_params: int) -> list[dict]:
    rows = []
    for student in dict.fromkeys(r["student"] for r in runs):
        for method in METHODS:
            group = [r for r in runs if r["method"] == method and r["student"] == student]
            if not group:
                continue
            accs = [r["accuracy"] for r in group]
            mean, std = mean_std(accs)
            rows.append(
                {
                    "method": method,
                    "student": student,
                    "accuracy_mean": mean,
                    "accuracy_std": std,
                    "accuracies": accs,
                    "pct_of_teacher": 100 * mean / teacher_accuracy,
                    "params": group[0]["params"],
                    "compression": teacher_params / group[0]["params"],
                    "seconds": statistics.median(r["seconds"] for r in group),
                    "student_steps": group[0]["student_steps"],
                    "batches": group[0]["batches"],
                    "seeds": len(group),
                    "uses_task_training_data": METHODS[method] is None,
                }
            )
    return rows


def plot(rows: list[dict], teacher_accuracy: float):
    def draw(path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        students = list(dict.fromkeys(r["student"] for r in rows))
        methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
        fig, ax = plt.subplots(figsize=(10, 4.8))
        width = 0.8 / len(students)
        for j, student in enumerate(students):
            values = [next((r for r in rows if r["method"] == m and r["student"] == student), None) for m in methods]
            xs = [i + (j - (len(students) - 1) / 2) * width for i in range(len(methods))]
            ax.bar(
                xs,
                [v["pct_of_teacher"] if v else 0 for v in values],
                width,
                yerr=[100 * v["accuracy_std"] / teacher_accuracy if v else 0 for v in values],
                capsize=3,
                label=f"{student} 2-layer student",
            )
        ax.axhline(100, color="black", lw=0.8)
        ax.axhline(85, color="grey", lw=0.8, ls="--", label="target: 85% of teacher")
        ax.set_xticks(range(len(methods)), [m.replace(": ", ":\n").replace(" (", "\n(") for m in methods], fontsize=8)
        ax.set_ylabel("% of teacher test accuracy")
        ax.set_title(
            f"Zero-shot KD on Rotten Tomatoes (teacher {100 * teacher_accuracy:.1f}% accuracy), mean ± std over seeds"
        )
        ax.legend(fontsize=8, loc="lower left")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    return draw


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=32, help="tokens per input (corpus and task alike)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--students", nargs="+", default=list(STUDENTS), choices=list(STUDENTS))
    parser.add_argument(
        "--scratch-methods",
        type=int,
        default=5,
        help="how many methods the scratch student runs (zero-shot, out-of-domain only, random tokens, "
        "adversarial only, supervised KD, in that order); the truncated student runs all",
    )
    parser.add_argument("--quick", action="store_true", help="a few steps and one seed (results in a temp folder)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--name", default="zeroshot", help="results go to <results>/<name>.{md,json,png}")
    parser.add_argument("--results", type=Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument(
        "--budget-minutes",
        type=float,
        default=None,
        help="start no new run after this many minutes (0: only rebuild the results from the runs file)",
    )
    args = parser.parse_args(argv)
    setting = Setting(
        student_steps=5 if args.quick else args.student_steps,
        seeds=args.seeds[:1] if args.quick else args.seeds,
        max_length=args.max_length,
        batch_size=args.batch_size,
    )
    torch.set_num_threads(args.threads or torch.get_num_threads())

    teacher = str(fine_tuned_rt_teacher())
    teacher_model = load_classifier(teacher, 2, require_head=True)
    teacher_accuracy = test_accuracy(teacher_model, task_data(setting, teacher))
    teacher_params = count_parameters(teacher_model)
    print(f"[zeroshot] teacher test accuracy {teacher_accuracy:.4f}, {teacher_params} parameters", flush=True)
    results = args.results or (Path(tempfile.mkdtemp(prefix="zeroshot_quick_")) if args.quick else RESULTS)
    study = Study(args.name, results=results, **keyed_list(run_key))
    # The runs the targets compare (zero-shot, out-of-domain only, random tokens; truncated student) come
    # first for every seed, then the upper bound, then the rest, so that a study cut short by
    # --budget-minutes has complete tables for what it ran.
    names = list(METHODS)
    scratch_order = [names[1], names[2], names[4], names[3], names[0]]  # zero-shot first, the upper bound last
    groups = [
        ("truncated", [names[1], names[2], names[4]]),
        ("truncated", [names[0], names[5]]),
        ("truncated", [names[3]]),
        ("scratch", [names[5], *scratch_order[: args.scratch_methods]]),
    ]
    plan = {
        run_key({"setting": setting.key, "student": student, "method": method, "seed": seed}): Job(
            run_one, setting=setting, teacher=teacher, method=method, student=student, seed=seed
        )
        for student, methods in groups
        if student in args.students
        for seed in setting.seeds
        for method in methods
    }
    start, done = time.perf_counter(), study.done()
    for key, job in plan.items():
        if key in done:
            continue
        if args.budget_minutes is not None and (time.perf_counter() - start) / 60 >= args.budget_minutes:
            study.log(f"time budget of {args.budget_minutes} min reached: stopping")
            break
        study.run({key: job})
    records = [record for key, record in study.done().items() if key in plan]
    if not records:
        return
    rows = summarise(records, teacher_accuracy, teacher_params)
    study.write(
        rows,
        COLUMNS,
        title="Zero-shot adversarial KD on the offline stand-in task",
        intro=intro(
            setting, teacher_accuracy, teacher_params, sum(r["seconds"] for r in records) / 60, len(records), len(plan)
        ),
        notes=targets_text(rows),
        plot=plot(rows, teacher_accuracy),
    )


COLUMNS = [
    ("student", "student"),
    ("method", "method"),
    ("accuracy_mean", "test acc. (mean)"),
    ("accuracy_std", "std"),
    ("pct_of_teacher", "% of teacher"),
    ("params", "params"),
    ("compression", "compression"),
    ("seconds", "wall s / run (median)"),
    ("student_steps", "student steps"),
    ("seeds", "seeds"),
]


def intro(
    setting: Setting, teacher_accuracy: float, teacher_params: int, minutes: float, done: int, planned: int
) -> str:
    return "\n".join(
        [
            "Produced by `python -m benchmarks.zeroshot.run`.",
            f"Teacher: all-MiniLM-L6-v2 fine-tuned on Rotten Tomatoes (the quickstart teacher), test accuracy "
            f"{teacher_accuracy:.4f} at max length {setting.max_length}, {teacher_params:,} parameters. Students: 2 "
            "transformer layers, hidden 384, either truncated from the teacher (its first and last layers, weights "
            "copied) or freshly initialised (scratch).",
            f"Every run makes {setting.student_steps} student updates of batch {setting.batch_size} (max length "
            f"{setting.max_length}); the zero-shot rows use the recipe `configs/zeroshot/offline.yaml` "
            "(cycles of 10 generator + 100 student steps, 30% of tokens rewritten, hard Gumbel-softmax, tau 1) and "
            "train on the Wikipedia summaries only: the Rotten Tomatoes training split is never read. Test split: "
            "1,275 snippets (57.7% positive). 'supervised KD' is VanillaKD (T=2, alpha=0.5) on the task's training "
            "data.",
            f"Seeds: {setting.seeds}; {done} of {planned} planned runs done, their fits {minutes:.1f} min in all. Wall "
            "time per run is the fit alone (the generator's steps included): compare within the table, not across "
            "machines.",
            "'no distillation' is the student as built, before any update: the truncated student keeps the teacher's "
            "embeddings, two of its blocks and its classifier head, so it starts well above chance; the gain of each "
            "method is its distance from that row.",
        ]
    )


def targets_text(rows: list[dict]) -> str:
    """The issue's targets, judged on the truncated student's rows (mean over seeds vs the larger std)."""
    names = list(METHODS)
    row = {r["method"]: r for r in rows if r["student"] == "truncated"}
    lines = ["## Targets (truncated student)", ""]
    if names[1] in row:
        pct = row[names[1]]["pct_of_teacher"]
        lines.append(target("zero-shot >= 85% of the teacher", pct >= 85, f"{pct:.1f}%"))
    for better, worse in ((names[1], names[2]), (names[2], names[4])):
        if better in row and worse in row:
            a, b = row[better], row[worse]
            gap, spread = a["accuracy_mean"] - b["accuracy_mean"], max(a["accuracy_std"], b["accuracy_std"])
            seeds = min(a["seeds"], b["seeds"])
            lines.append(
                target(
                    f"{better} > {worse} by more than the seed spread",
                    gap > spread and seeds > 1,
                    f"difference {100 * gap:+.2f} points, larger std {100 * spread:.2f} points, {seeds} seeds",
                )
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
