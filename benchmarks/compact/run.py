"""Compact students, measured: how small can a KD student be, and what gets it there (one command, resumable).

    python -m benchmarks.compact.run                   # all sizes, methods and seeds (hours on 2 CPU cores)
    python -m benchmarks.compact.run --seeds 0         # one seed first; re-running with --seeds 0 1 2 adds the rest
    python -m benchmarks.compact.run --quick           # a few steps per run, to check the plumbing

Students: stock 2-block ALBERT exports at :data:`SIZES` (4x, 10x, 20x fewer parameters than the quickstart
teacher), vocabulary pruned to the training text. Methods :data:`METHODS`: (a) scratch, (b) + the teacher's SVD
embeddings, (c) + general distillation (MiniLMv2 on the Wikipedia summaries), (d) (c) + layer-wise KD, (e) the
teacher's blocks 1 and 6 (4x only); then the quickstart's task distillation. Every row shows the TF-IDF baseline
and the margin kept = (student - baseline) / (teacher - baseline), and the CPU inference speed-up. The study and
its numbers: docs/compact.md. Results: benchmarks/results/compact[_<label>].{md,json,png}; runs in *_runs.json.
"""

from __future__ import annotations

import functools
import json
from itertools import product
from pathlib import Path

from benchmarks.common import (
    cached_rt_teacher,
    fine_tuned_rt_teacher,
    fit_and_test,
    general_distillation,
    margin_kept_pct,
    recorded_rt_baseline,
    teacher_size,
)
from benchmarks.harness import component, figure
from benchmarks.study import Job, Study, over_seeds, study_name, study_parser
from kdlight.quickstart import inference_speed, test_texts

WORK = Path("runs/benchmarks")  # each study's run folders: WORK / <results name>
VOCABULARY = ["packaged/rotten_tomatoes/train.csv"]
# the FreshStudent's 2 blocks (their width where not the teacher's: hidden, heads, feed-forward) and the ALBERT
# embedding width
SIZES = {
    "4x": {"blocks": {}, "embedding": 128},
    "10x": {"blocks": {"hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024}, "embedding": 48},
    "20x": {"blocks": {"hidden_size": 128, "num_attention_heads": 2, "intermediate_size": 512}, "embedding": 48},
    # a pretrained block instead of fresh ones: one of the teacher's blocks as it is (its first, or its last), its
    # embeddings at rank 32, the tokens seen at least twice in the training text (10.0x; method b only: kd_augment.py)
    "10x-block1": {"teacher_layers": [0], "embedding": 32, "min_token_count": 2},
    "10x-block6": {"teacher_layers": [5], "embedding": 32, "min_token_count": 2},
}
FRESH_SIZES = [size for size, spec in SIZES.items() if "blocks" in spec]  # the compact study's own sizes
METHODS = {
    "a": "scratch + KD",
    "b": "+ teacher's embeddings (SVD)",
    "c": "+ general distillation",
    "d": "+ general + layer-wise KD",
    "e": "truncated teacher + KD",
}
FULL = {"general_steps": 600, "epochs": 2, "train_examples": 6000, "learning_rate": 5e-4}
QUICK = {"general_steps": 6, "epochs": 1, "train_examples": 64, "learning_rate": 5e-4}


def compressed(base: dict, size: str, **extra) -> dict:
    spec = SIZES[size]
    if "min_token_count" in spec:
        extra["min_token_count"] = spec["min_token_count"]
    rank = spec["embedding"]
    return component("CompressedEmbeddingStudent", base=base, embedding_rank=rank, layout="albert", **extra)


def fresh(size: str) -> dict:
    return component("FreshStudent", num_hidden_layers=2, **SIZES[size]["blocks"])


def student_config(size: str, method: str, general_export: str | None) -> dict:
    if "teacher_layers" in SIZES[size]:
        if method != "b":
            raise ValueError(f"{size} is the teacher's own blocks: method b only, not {method}")
        layers = SIZES[size]["teacher_layers"]
        base = component("TruncatedTeacher", num_layers=len(layers), layers=layers)
        return compressed(base, size, factorise_from="teacher", vocabulary_files=VOCABULARY)
    if method in ("a", "b"):  # a: the SVD of the fresh student's own random matrix (a random start); b: the teacher's
        factorise_from = "student" if method == "a" else "teacher"
        return compressed(fresh(size), size, factorise_from=factorise_from, vocabulary_files=VOCABULARY)
    if method in ("c", "d"):  # the general-distilled ALBERT, its vocabulary pruned to the task's tokens
        base = component("PretrainedStudent", name_or_path=general_export)
        return component("CompressedEmbeddingStudent", base=base, embedding_rank=None, vocabulary_files=VOCABULARY)
    if method == "e":
        return compressed(component("TruncatedTeacher", num_layers=2), size, vocabulary_files=VOCABULARY)
    raise ValueError(method)


def general_student(size: str, teacher: str, setting: dict, work: str) -> dict:
    student = compressed(fresh(size), size, factorise_from="teacher")
    return general_distillation(student, setting["general_steps"], Path(work) / size / "general")


def task_distillation(
    size: str,
    method: str,
    seed: int,
    teacher: str,
    general_export: str | None,
    setting: dict,
    work: str,
    student_method: str | None = None,
    data: dict | None = None,
    quick: bool = False,
    module: dict | None = None,
) -> dict:
    """The quickstart's task distillation of ``student_method``'s student (default: ``method``'s) on ``data`` (default:
    the first ``train_examples`` Rotten Tomatoes rows), in ``work/size/method/seed<seed>``. ``module``: another
    distiller's ``class_path`` and its own ``init_args`` in place of VanillaKD (e.g. MATE-KD's, kd_augment.py)."""
    student_method = student_method or method
    root = Path(work) / size / method / f"seed{seed}"
    student = student_config(size, student_method, general_export)
    model = dict(teacher=teacher, student=student, alpha=0.5, temperature=2.0, learning_rate=setting["learning_rate"])
    model["warmup_ratio"] = 0.1
    if student_method == "d":
        relations = component("SelfAttentionRelations", num_relation_heads=16, weight=1.0)
        model["losses"] = [component("HiddenMSE", layers="uniform", weight=1.0), relations]
    else:
        model["cache_teacher_logits"] = True
    module = module or component("LayerwiseKD" if student_method == "d" else "VanillaKD")
    model = component(module["class_path"], **{**model, **module["init_args"], "export_dir": str(root / "export")})
    rt = component(
        "RottenTomatoesDataModule", max_length=64, batch_size=32, max_train_examples=setting["train_examples"]
    )
    trainer = {"max_epochs": setting["epochs"], "log_every_n_steps": 20}
    if quick:
        trainer.update(limit_val_batches=2, limit_test_batches=2)
    record = fit_and_test({"seed_everything": seed, "trainer": trainer, "model": model, "data": data or rt}, root)
    record.update(size=size, method=method, seed=seed)
    return record


def inference(size: str, student_export: str, teacher: str, texts: int) -> dict:
    speed = inference_speed({"teacher": teacher, "student": student_export}, test_texts(texts))
    ratio = speed["student"] / speed["teacher"]
    return {"teacher_samples_per_s": speed["teacher"], "samples_per_s": speed["student"], "speedup": ratio}


def task_results(study: Study, teacher: str, quick: bool, report_only: bool) -> tuple[dict, dict, int]:
    """The recorded task runs, each size's CPU inference speed-up (one export of it against the teacher, measured
    once and recorded) and the teacher's size."""
    done = {k: v for k, v in study.done().items() if k.startswith("task/")}
    # a report from another machine's runs reads its recorded speeds: the exports stayed there
    here = [r for r in done.values() if report_only or Path(r["export"]).is_dir()]
    exports = {size: [r["export"] for r in here if r["size"] == size] for size in SIZES}
    speed = {"teacher": teacher, "texts": 64 if quick else 640}
    jobs = {f"speed/{s}": Job(inference, size=s, student_export=e[0], **speed) for s, e in exports.items() if e}
    speeds = {k.split("/")[1]: v for k, v in Study(study.name, report_only=report_only).run(jobs).items()}
    return done, speeds, teacher_size(teacher)


def summarise(
    records: dict[str, dict] | list[dict],
    speeds: dict[str, dict],
    teacher_params: int,
    baseline_score: float = float("nan"),
    all_rows_baseline: float | None = None,
    methods: dict[str, str] = METHODS,
) -> list[dict]:
    """One row per size and method: accuracy over seeds, the margin kept over each baseline, speed-up, time."""
    records = list(records.values()) if isinstance(records, dict) else records
    teacher = next((r["test/teacher_score"] for r in records if "test/teacher_score" in r), float("nan"))
    rows = []
    for size, method in product(SIZES, methods):
        runs = [r for r in records if (r["size"], r["method"]) == (size, method)]
        if not runs:
            continue
        stats = over_seeds(runs, teacher_params, teacher)
        mean = stats["accuracy_mean"]
        row = {"student": size, "method": method, "method_name": methods[method], **stats}
        row.update(baseline_accuracy=baseline_score, margin_kept_pct=margin_kept_pct(mean, teacher, baseline_score))
        if all_rows_baseline is not None:
            row.update(teacher_accuracy=teacher, baseline_all=all_rows_baseline)
            row["margin_kept_all_pct"] = margin_kept_pct(mean, teacher, all_rows_baseline)
        speed = speeds.get(size, {})
        row.update(samples_per_s=speed.get("samples_per_s"), speedup=speed.get("speedup"))
        rows.append({**row, "train_seconds": sum(r["fit_seconds"] for r in runs) / len(runs)})
    return rows


def hand_written_sections(path: Path) -> str:
    """The ``## ...`` sections added by hand to a committed results file (the study writes none), kept."""
    text = path.read_text() if path.is_file() else ""
    start = text.find("\n## ")
    return text[start + 1 :] if start >= 0 else ""


def plot(
    rows: list[dict], teacher_score: float, baselines: dict[str, float], methods: dict[str, str], path: Path
) -> None:
    """Accuracy against compression per method, with the teacher, 92 % of it and the baselines (label: score)."""
    with figure(path, figsize=(7, 4.5)) as (_, ax):
        for method, name in methods.items():
            mine = [r for r in rows if r["method"] == method]
            if mine:
                xs, ys = [r["compression"] for r in mine], [r["accuracy_mean"] for r in mine]
                yerr = [r["accuracy_std"] for r in mine]
                ax.errorbar(xs, ys, yerr=yerr, marker="o", capsize=3, label=f"{method}: {name}")
        ax.axhline(teacher_score, color="k", ls="--", lw=1, label="teacher")
        ax.axhline(0.92 * teacher_score, color="grey", ls=":", lw=1, label="92 % of teacher")
        for style, (label, score) in zip(("-.", (0, (1, 3))), baselines.items(), strict=False):
            if score == score:
                ax.axhline(score, color="tab:red", ls=style, lw=1, label=label)
        ax.set(xscale="log", xlabel="compression (teacher params / student params)")
        ax.set_ylabel("test accuracy (Rotten Tomatoes)")
        ax.legend(fontsize=8)


def main(argv: list[str] | None = None) -> None:
    parser = study_parser(__doc__, "workers", "quick", "label", "report-only", "seeds")
    parser.add_argument("--sizes", nargs="+", default=FRESH_SIZES, choices=FRESH_SIZES)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--general-steps", type=int, help=f"general distillation steps ({FULL['general_steps']})")
    args = parser.parse_args(argv)
    setting = dict(QUICK if args.quick else FULL)
    if args.general_steps is not None:
        setting["general_steps"] = args.general_steps
    name = study_name("compact", args)
    study = Study(name, workers=args.workers, report_only=args.report_only)
    work = str(WORK / name)  # passed to each job: spawned workers do not see a changed global
    # report-only trains nothing: the packaged MiniLM + a 2-label head has the teacher's size
    teacher = str((cached_rt_teacher() or "packaged/all-MiniLM-L6-v2") if args.report_only else fine_tuned_rt_teacher())
    common = dict(teacher=teacher, setting=setting, work=work)
    general = [size for size in args.sizes if {"c", "d"} & set(args.methods)]
    generals = study.run({f"general/{size}": Job(general_student, size=size, **common) for size in general})
    exports = {size: generals.get(f"general/{size}", {}).get("export") for size in args.sizes}
    study.run(
        {
            f"task/{size}/{method}/seed{seed}": Job(
                task_distillation, size=size, method=method, seed=seed, general_export=exports[size], **common
            )
            for seed, size, method in product(args.seeds, args.sizes, args.methods)
            if method != "e" or size == "4x"
        }
    )
    done, speed, teacher_params = task_results(study, teacher, args.quick, args.report_only)
    baseline = recorded_rt_baseline(setting["train_examples"])
    full_baseline = recorded_rt_baseline(None)  # every training row: what a user with all the data would get
    rows = summarise(done, speed, teacher_params, baseline["test_score"])
    teacher_score = next(r["test/teacher_score"] for r in done.values() if "test/teacher_score" in r)
    general_rows = "\n".join(
        f"- general distillation, {k.split('/')[1]}: {v['steps']} steps in {v['fit_seconds']:.0f}s"
        for k, v in study.done().items()
        if k.startswith("general/")
    )
    study.write(
        rows,
        "student=size; method=m; method_name=method; params; compression; accuracy_mean=test acc (mean); "
        "accuracy_std=std; seeds; pct_of_teacher=% of teacher; baseline_accuracy=TF-IDF baseline; "
        "margin_kept_pct=% of margin kept; samples_per_s=samples/s; speedup=speed-up; train_seconds=train s/run",
        title="Compact students on the Rotten Tomatoes stand-in" + (" (--quick: plumbing only)" if args.quick else ""),
        intro=f"Teacher: all-MiniLM-L6-v2 fine-tuned (quickstart teacher), {teacher_params / 1e6:.2f}M parameters, "
        f"test accuracy {teacher_score:.4f}. Setting: {json.dumps(setting)}. See benchmarks/compact/run.py "
        "for the methods; every student is a stock ALBERT export of the size shown. "
        f"Baseline: TF-IDF + logistic regression on the same {baseline['train_rows']} training rows "
        f"(C={baseline['C']:g}, n-grams 1-{baseline['ngram_range'][1]}, chosen on validation), test accuracy "
        f"{baseline['test_score']:.4f} ({full_baseline['test_score']:.4f} on all {full_baseline['train_rows']} "
        "training rows); % of margin kept = 100 (student - baseline) / (teacher - baseline).",
        notes="\n\n".join(p for p in (general_rows, hand_written_sections(study.results / f"{name}.md")) if p),
        plot=functools.partial(
            plot, rows, teacher_score, {"TF-IDF + LR baseline (same rows)": baseline["test_score"]}, METHODS
        ),
    )


if __name__ == "__main__":
    main()
