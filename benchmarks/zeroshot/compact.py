"""Zero-shot distillation at real compression: the paper's setting with a small *pretrained* student (one command).

    python -m benchmarks.zeroshot.compact                 # everything (many CPU hours: resumable, run it in parts)
    python -m benchmarks.zeroshot.compact --seeds 0       # one seed of every row first
    python -m benchmarks.zeroshot.compact --quick         # a few steps per run, to check the plumbing

Rashid et al. (2021) distil BERT-large into a *pretrained* BERT-Mini with no task data (92 % of the teacher).
The CPU-scale analog: the quickstart teacher; students ``general`` (a 2-block ALBERT general-distilled first, the
BERT-Mini analog), ``scratch`` (the same, random) and ``truncated``; methods :data:`METHODS` (supervised KD as the
upper bound, zero-shot with the trained or the untrained generator, its ablations, no distillation). Fair by
construction: every method gets the same student updates of ``inputs_per_update`` inputs (out-of-domain +
adversarial: half texts, half their rewrites). The headline is the FINAL weights (no checkpoint chosen on task
data); the validation-selected checkpoint is beside it, labelled. Students, methods and results: docs/zeroshot.md.
Results: benchmarks/results/zeroshot_compact[_<label>].{md,json,png} (+ _curves, _divergence), runs in *_runs.json.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import time
from itertools import product
from pathlib import Path

import torch

from benchmarks.common import fine_tuned_rt_teacher, general_distillation, runner_for, teacher_size
from benchmarks.harness import component, figure, logged_rows
from benchmarks.study import Job, Study, markdown_table, mean_std, over_seeds, study_name, study_parser, target
from kdlight.baseline import baseline_for, margin_kept
from kdlight.callbacks_zeroshot import DIVERGENCE_KEYS
from kdlight.components.rewriting import rewrites_markdown
from kdlight.data import RottenTomatoesDataModule
from kdlight.models.hf import count_parameters

WORK = Path("runs/benchmarks")  # each study's run folders: WORK / <results name>
ARCH = {"num_hidden_layers": 2, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 512}
EMBEDDING = 32
WIKI, NEWS = "packaged/wiki_summaries", "packaged/lee_news"
# name -> (inputs, perturbation, corpus, generator); None: supervised KD; "untrained": no distillation.
# generator: "trained" (configs/zeroshot/generator.yaml's export), "earlier" (the recipe's export before 2026-12-07:
# its top block only, 150 steps), "untrained" (the packaged MiniLM with a fresh head, every zero-shot result before
# the trained generator), None (no generator: nothing is rewritten by one)
METHODS = {
    "supervised KD (task data, upper bound)": None,
    "zero-shot: out-of-domain + adversarial": ("both", "generator", WIKI, "trained"),
    "adversarial only": ("adversarial", "generator", WIKI, "trained"),
    "out-of-domain only": ("out_of_domain", "generator", WIKI, None),
    "random tokens": ("random_tokens", "generator", WIKI, None),
    "zero-shot, untrained generator head": ("both", "generator", WIKI, "untrained"),
    "no distillation (student as built)": "untrained",
    "zero-shot, news corpus (lee_news)": ("both", "generator", NEWS, "trained"),
    "zero-shot, earlier generator (top block, 150 steps)": ("both", "generator", WIKI, "earlier"),
}
ZERO_SHOT, ADVERSARIAL, OOD, RANDOM, UNTRAINED_HEAD = list(METHODS)[1:6]
STUDENTS = ("general", "scratch", "truncated")
FULL = dict(student_steps=1000, generator_steps=10, cycle=100, inputs_per_update=64, max_length=32)
FULL.update(general_steps=600, train_examples=None, show_rewrites_every=50)
QUICK = dict(student_steps=6, generator_steps=2, cycle=3, inputs_per_update=16, max_length=32)
QUICK.update(general_steps=4, train_examples=64, show_rewrites_every=1)


def albert(factorise_from: str) -> dict:
    """The stock ALBERT student: :data:`ARCH`, embeddings factorised from the student's own or the teacher's."""
    init = dict(embedding_rank=EMBEDDING, layout="albert", factorise_from=factorise_from)
    return component("CompressedEmbeddingStudent", base=component("FreshStudent", **ARCH), **init)


def student_config(student: str, general_export: str | None) -> dict:
    if student == "truncated":
        return component("TruncatedTeacher", num_layers=2)
    if student == "general":
        return component("PretrainedStudent", name_or_path=general_export)
    return albert("student")


def paired(method: str) -> bool:
    """Whether the method's student inputs are a batch plus its rewrites (half the batch size, the same inputs)."""
    return METHODS[method] not in (None, "untrained") and METHODS[method][0] == "both"


def run_cli(config: dict, root: Path, fit: bool = True) -> dict:
    runner = runner_for(config, root)
    model, trainer, data = runner.model, runner.trainer, runner.datamodule
    record = {"params": count_parameters(model.predictor)}
    start = time.perf_counter()
    best = None
    if fit:
        trainer.fit(model, datamodule=data)
        best = trainer.checkpoint_callback.best_model_path or None
        progress, steps = getattr(model, "progress", None), trainer.global_step  # progress: ZeroShotAdversarialKD's
        record.update(steps=steps, student_steps=int(progress[1]) if progress is not None else steps)
    record["fit_seconds"] = time.perf_counter() - start
    # the headline: the final weights (the model holds them: export_best is off), chosen on nothing
    record.update({k: float(v) for k, v in trainer.test(model, datamodule=data, verbose=False)[0].items()})
    if best:  # beside it, labelled as such: the checkpoint the task's labelled validation split picked
        selected = trainer.test(model, datamodule=data, ckpt_path=best, verbose=False)[0]
        record["test/score_val_selected"] = float(selected["test/score"])
    record["curve"] = [(int(r["step"]), float(r["val/score"])) for r in logged_rows(root, "val/score")]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    machine = f"{platform.machine()}, {os.cpu_count()} CPU core(s), {device}"
    record.update(divergence=divergence_curve(root), machine=machine)
    record.update(rewrites=shown_rewrites(root), export=str(model.export_path()) if fit else None)
    return record


def divergence_curve(root: Path) -> list[dict]:
    """Per generator step (AdversaryMonitor): the divergence on its rewrites before/after it, and on the plain batch."""
    return [
        {
            "generator_step": int(float(r["adversary/generator_step"])),
            **{k.split("/")[1]: float(r[k]) for k in DIVERGENCE_KEYS},
        }
        for r in logged_rows(root, DIVERGENCE_KEYS[0])
    ]


def generator_network(generator: str | None) -> str:
    """The generator's network: ``trained``, configs/zeroshot/generator.yaml's export, or ``earlier``, the export
    of that recipe before 2026-12-07 (each fitted here first when absent: ``benchmarks.zeroshot.generator``);
    otherwise the packaged MiniLM with a fresh head."""
    from benchmarks.zeroshot.generator import earlier_generator, export_dir, train

    if generator == "trained":
        train(retrain=False)
        return str(export_dir())
    return earlier_generator() if generator == "earlier" else "packaged/all-MiniLM-L6-v2"


def shown_rewrites(root: Path) -> list[dict]:
    """The generator's rewrites the run decoded for people (``show_rewrites_every``), last shown step first."""
    files = sorted(root.rglob("rewrites.jsonl"))
    rows = [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()] if files else []
    return sorted(rows, key=lambda r: -r["generator_step"])


def rewrite_examples(records: list[dict], limit: int = 8) -> str:
    """A results-file section: what the generator wrote for the general student (zero-shot, first seed)."""
    runs = [r for r in records if r["student"] == "general" and r["method"] == ZERO_SHOT and r.get("rewrites")]
    runs.sort(key=lambda r: r["seed"])
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


def general_student(teacher: str, setting: dict, work: str) -> dict:
    return general_distillation(albert("teacher"), setting["general_steps"], Path(work) / "general")


def one_run(
    student: str, method: str, seed: int, teacher: str, general_export: str | None, setting: dict, work: str
) -> dict:
    mode = METHODS[method]
    zero_shot = mode not in (None, "untrained")
    folder = "_".join([mode[0], Path(mode[2]).name, str(mode[3])]) if zero_shot else method.split(" ")[0].strip(":,")
    root = Path(work) / student / folder / f"seed{seed}"
    # the same number of student inputs per update for every method: "both" sees a batch plus its rewrite
    batch_size = setting["inputs_per_update"] // (2 if paired(method) else 1)
    sizes = dict(max_length=setting["max_length"], batch_size=batch_size, max_train_examples=setting["train_examples"])
    model = dict(teacher=teacher, student=student_config(student, general_export), learning_rate=5e-4)
    model.update(warmup_ratio=0.1, export_dir=str(root / "export"), export_best=False)  # tested: the final weights
    # max_steps counts student updates (generator steps are not counted), validation after every cycle
    steps, val_every = setting["student_steps"], setting["cycle"]
    if not zero_shot:
        model = component("VanillaKD", **model, alpha=0.5, temperature=2.0, cache_teacher_logits=True)
        data = component("RottenTomatoesDataModule", **sizes)
    else:
        inputs, perturbation, corpus, generator = mode
        network = generator_network(generator)
        rewriting = dict(mask_rate=0.3, learning_rate=1e-5)  # 30 % of tokens; the generator's AdamW
        generator = component("AdversarialGenerator", network=network, perturbation=perturbation, **rewriting)
        model.update(generator=generator, inputs=inputs, generator_steps=setting["generator_steps"])
        model.update(
            student_steps=setting["cycle"], temperature=1.0, show_rewrites_every=setting["show_rewrites_every"]
        )
        # the teacher's logits on the fixed out-of-domain text, once (benchmarks/zeroshot/step_cost.py)
        model = component("ZeroShotAdversarialKD", **model, cache_teacher_logits=inputs in ("both", "out_of_domain"))
        val_every += setting["generator_steps"] if inputs in ("both", "adversarial") else 0  # trains_generator
        corpus = component("OutOfDomainCorpus", source=corpus)
        task = {"class_path": "RottenTomatoesDataModule"}
        data = component("ZeroShotDataModule", task=task, corpus=corpus, **sizes)
    # metrics.csv holds the validation curve (the default logger is TensorBoard where it is installed)
    logger = component("lightning.pytorch.loggers.CSVLogger", save_dir=str(root))
    trainer = dict(max_steps=steps, val_check_interval=val_every, check_val_every_n_epoch=None, log_every_n_steps=10)
    config = {"seed_everything": seed, "trainer": {**trainer, "logger": logger}, "model": model, "data": data}
    record = run_cli(config, root, fit=mode != "untrained")
    record.update(student=student, method=method, seed=seed, batch_size=batch_size)
    return record


def summarise(records: list[dict], teacher_score: float, teacher_params: int, baseline: float) -> list[dict]:
    rows = []
    for student, method in product(STUDENTS, METHODS):
        runs = [r for r in records if r["student"] == student and r["method"] == method]
        if not runs:
            continue
        stats = over_seeds(runs, teacher_params, teacher_score)
        selected = [r["test/score_val_selected"] for r in runs if "test/score_val_selected" in r]
        selected_mean = mean_std(selected)[0] if len(selected) == len(runs) else None
        kept = margin_kept(stats["accuracy_mean"], teacher_score, baseline)
        row = {"student": student, "method": method, **stats, "baseline": baseline, "margin_kept": kept}
        row.update(val_selected_mean=selected_mean, seconds=sum(r["fit_seconds"] for r in runs) / len(runs))
        inputs = runs[0].get("batch_size", 0) * (2 if paired(method) else 1)  # the student's, per update
        row.update(student_steps=runs[0].get("student_steps", 0), inputs_per_update=inputs)
        rows.append({**row, "uses_task_training_data": METHODS[method] is None})
    return rows


def targets(rows: list[dict], student: str = "general") -> str:
    row = {r["method"]: r for r in rows if r["student"] == student}.get  # one row per student and method
    if not any(r["student"] == student for r in rows):
        return ""
    lines = ["## Targets", "", f"All on the {student} student's final weights (no checkpoint chosen on task data)."]
    if zs := row(ZERO_SHOT):
        claim = f"{student} student ({zs['compression']:.1f}x) zero-shot (trained generator) >= 92 % of the teacher"
        lines.append(target(claim, zs["pct_of_teacher"] >= 92, f"{zs['pct_of_teacher']:.1f} %, {zs['seeds']} seed(s)"))
    for a_name, b_name in ((ZERO_SHOT, OOD), (OOD, RANDOM), (ZERO_SHOT, UNTRAINED_HEAD)):
        a, b = row(a_name), row(b_name)
        if a and b:
            gap, spread = a["accuracy_mean"] - b["accuracy_mean"], max(a["accuracy_std"], b["accuracy_std"])
            seeds = min(a["seeds"], b["seeds"])
            verdict = "met" if gap > spread and seeds > 1 else ("missed" if seeds > 1 else "not judged (1 seed)")
            detail = f"{100 * gap:+.2f} points vs larger std {100 * spread:.2f}, {seeds} seed(s)"
            lines.append(f"- {a_name} > {b_name} by more than the larger seed std: **{verdict}** ({detail}).")
    return "\n".join(lines)


DIVERGENCE_COLUMNS = ("divergence_before", "divergence_after", "divergence_out_of_domain")


def divergence_summary(records: list[dict]) -> str:
    """Per method with a generator: how often and by how much a generator step raised the divergence."""
    rows = []
    for r in sorted(records, key=lambda r: (r["student"], r["method"], r["seed"])):
        if curve := r.get("divergence"):
            raised = sum(c["divergence_after"] > c["divergence_before"] for c in curve)
            means = {k: f"{sum(c[k] for c in curve) / len(curve):.4f}" for k in DIVERGENCE_COLUMNS}
            rows.append({**r, "steps": len(curve), "raised": f"{raised} ({100 * raised / len(curve):.0f} %)", **means})
    columns = "student; method; seed; steps=generator steps; raised=raised by the step; divergence_before=mean "
    columns += "before; divergence_after=mean after; divergence_out_of_domain=mean on the unmodified batch"
    return (
        "## The adversary, measured\n\nPer generator step (AdversaryMonitor, generator and student in eval mode, the "
        "step's own noise): the teacher-student KL on the generator's rewrites before and after its update, and on "
        "the unmodified out-of-domain batch. Curves: the `_divergence.png` plot.\n\n"
        + markdown_table(rows, columns).rstrip("\n")
        if rows
        else ""
    )


def plots(rows: list[dict], records: list[dict], teacher_score: float, path: Path) -> None:
    students = [s for s in STUDENTS if any(r["student"] == s for r in rows)]
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    with figure(path, figsize=(11, 4.8)) as (_, ax):
        width = 0.8 / max(1, len(students))
        for j, student in enumerate(students):
            values = [next((r for r in rows if r["method"] == m and r["student"] == student), None) for m in methods]
            xs = [i + (j - (len(students) - 1) / 2) * width for i in range(len(methods))]
            pct = [v["pct_of_teacher"] if v else 0 for v in values]
            std = [100 * v["accuracy_std"] / teacher_score if v else 0 for v in values]
            ax.bar(xs, pct, width, yerr=std, capsize=3, label=f"{student} (final weights)")
        if rows:
            baseline = 100 * rows[0]["baseline"] / teacher_score
            ax.axhline(baseline, color="C3", lw=0.8, ls=":", label="TF-IDF baseline")
        ax.axhline(100, color="black", lw=0.8)
        ax.axhline(92, color="grey", lw=0.8, ls="--", label="target: 92 % of teacher")
        ticks = [m.replace(": ", ":\n").replace(" (", "\n(") for m in methods]
        ax.set_xticks(range(len(methods)), ticks, fontsize=7)
        ax.set(ylabel="% of teacher test accuracy", ylim=(50, None))
        ax.legend(fontsize=8)
    if not students:  # nothing finished yet: the bar chart says so (empty), no curves to draw
        return
    curves = path.with_name(path.stem + "_curves.png")
    with figure(curves, 1, len(students), dpi=110, figsize=(5 * len(students), 4), squeeze=False) as (_, axes):
        for ax, student in zip(axes[0], students, strict=True):
            for method in methods:
                for record in (r for r in records if r["student"] == student and r["method"] == method):
                    if record["curve"]:
                        first = record["seed"] == min(r["seed"] for r in records)
                        color = f"C{list(METHODS).index(method)}"
                        ax.plot(*zip(*record["curve"], strict=True), lw=1, label=method if first else None, color=color)
            ax.axhline(teacher_score, color="black", lw=0.8, ls=":")
            ax.set_title(f"{student} student: validation accuracy (reported, not used to choose)")
            ax.set_xlabel("training batch")
        axes[0][0].legend(fontsize=6)
    measured = sorted((r for r in records if r.get("divergence")), key=lambda r: (r["student"], r["method"], r["seed"]))
    if measured:
        with figure(path.with_name(path.stem + "_divergence.png"), dpi=110, figsize=(8, 4.5)) as (_, ax):
            for i, record in enumerate(measured):
                steps = [c["generator_step"] for c in record["divergence"]]
                name = f"{record['student']} / {record['method']} / seed {record['seed']}"
                for key, style in zip(DIVERGENCE_COLUMNS, ("--", "-", ":"), strict=True):
                    label = f"{name}: after" if style == "-" else None
                    values = [c[key] for c in record["divergence"]]
                    ax.plot(steps, values, color=f"C{i}", lw=1.2 if style == "-" else 0.8, ls=style, label=label)
            ax.set(xlabel="generator step", ylabel="KL(teacher || student)")
            ax.set_title("rewrites before (dashed) / after (solid) each generator step; unmodified batch (dotted)")
            ax.legend(fontsize=6)


def where_it_ran(setting: dict, records: list[dict], planned: list[str], done: list[str]) -> str:
    """The status and the machine, generated from the runs file (no hand-written numbers)."""
    missing = [k for k in planned if k not in done]
    status = f"**Status: {len(done)} of {len(planned)} planned runs finished**"
    status += f"; not yet run: {', '.join(missing)}." if missing else "."
    machines = sorted({r.get("machine", "unrecorded") for r in records})
    here = f"{platform.machine()} with {os.cpu_count()} CPU core(s)"
    inputs, steps = setting["inputs_per_update"], setting["student_steps"]
    half = inputs // 2
    reduced = f" Student updates reduced from the study's default {FULL['student_steps']} for CPU time, the same for "
    return "\n".join(
        [
            "## Where and how this ran",
            "",
            status,
            f"Machines that produced these runs: {', '.join(machines)} (this report written on {here}).",
            f"Setting: {json.dumps(setting)}. Every method: {steps} student updates of {inputs} student inputs "
            f"each (out-of-domain + adversarial: {half} out-of-domain texts + their {half} rewrites; every other "
            "method: a batch of that size)." + (reduced + "every method." if steps != FULL["student_steps"] else ""),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = study_parser(__doc__, "workers", "quick", "label", "report-only", "seeds", workers=2)
    parser.add_argument("--students", nargs="+", default=list(STUDENTS), choices=STUDENTS)
    numbers = "method numbers, in the order of METHODS: " + "; ".join(f"{i}: {m}" for i, m in enumerate(METHODS))
    parser.add_argument("--methods", type=int, nargs="+", default=list(range(len(METHODS))), help=numbers)
    parser.add_argument("--student-steps", type=int, help=f"student updates per run (default {FULL['student_steps']})")
    parser.add_argument("--general-steps", type=int, help=f"general distillation steps ({FULL['general_steps']})")
    args = parser.parse_args(argv)
    setting = dict(QUICK if args.quick else FULL)
    setting.update({k: getattr(args, k) for k in ("student_steps", "general_steps") if getattr(args, k) is not None})
    name = study_name("zeroshot_compact", args)
    work = str(WORK / name)  # passed to each job: spawned workers do not see a changed global
    study = Study(name, workers=args.workers, report_only=args.report_only)
    teacher = str(fine_tuned_rt_teacher())  # cached after the first run; its size is in the tables
    general = {"general": Job(general_student, teacher=teacher, setting=setting, work=work)}
    general = Study(name, report_only=args.report_only).run(general if "general" in args.students else {})
    export = general.get("general", {}).get("export")
    common = dict(teacher=teacher, general_export=export, setting=setting, work=work)
    tag = f"fair{setting['inputs_per_update']}/steps{setting['student_steps']}"  # runs of another setting differ
    jobs = {  # the general student's rows first: the study's point
        f"{student}/{method}/seed{seed}/{tag}": Job(one_run, student=student, method=method, seed=seed, **common)
        for student in args.students
        for seed in args.seeds
        for method in (list(METHODS)[index] for index in args.methods)
        if student == "general" or not method.startswith("zero-shot, news")
    }
    study.run(jobs)
    done = study.done()
    records = [done[k] for k in jobs if k in done]
    teacher_params = teacher_size(teacher)
    teacher_score = next((r["test/teacher_score"] for r in records if "test/teacher_score" in r), float("nan"))
    # the baseline trains on the labelled rows the teacher saw (the quickstart's 6,000); zero-shot students see none
    baseline = baseline_for(RottenTomatoesDataModule(max_train_examples=6000, tokenizer=teacher)).test_score
    rows = summarise(records, teacher_score, teacher_params, baseline)
    sections = [targets(rows), targets(rows, "truncated"), divergence_summary(records), rewrite_examples(records)]
    sections.append(where_it_ran(setting, records, list(jobs), [k for k in jobs if k in done]))
    study.write(
        rows,
        "student; method; accuracy_mean=test acc, final weights (mean); accuracy_std=std; seeds; pct_of_teacher=% "
        "of teacher; baseline=TF-IDF baseline; margin_kept=margin kept; val_selected_mean=val-selected checkpoint "
        "(uses task labels); compression; student_steps=student steps; inputs_per_update=inputs/update; "
        "seconds=fit s/run",
        title="Zero-shot distillation at real compression (Rotten Tomatoes stand-in)"
        + (" -- --quick: plumbing only" if args.quick else ""),
        intro=f"Teacher: the quickstart teacher, test accuracy {teacher_score:.4f}, {teacher_params:,} parameters. "
        "Headline: each student's FINAL weights (no checkpoint is chosen on the task's labelled validation split, "
        "which is task data); the validation-selected checkpoint's test accuracy is beside it, labelled. "
        "Margin kept: (student - baseline) / (teacher - baseline), the baseline being TF-IDF + logistic regression "
        "on the teacher's 6,000 labelled training rows. Students and methods: see benchmarks/zeroshot/compact.py; "
        "the trained generator: benchmarks/results/generator.md.",
        notes="\n\n".join(part for part in sections if part),
        plot=functools.partial(plots, rows, records, teacher_score),
    )


if __name__ == "__main__":
    main()
