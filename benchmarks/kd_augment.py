"""Students that keep the teacher's margin: sizes x inputs for KD x seeds, against the TF-IDF baseline (resumable).

    python -m benchmarks.kd_augment --sizes 10x --seeds 0          # one column first
    python -m benchmarks.kd_augment                                # 3 sizes x 3 methods x 3 seeds (GPU-sized)
    python -m benchmarks.kd_augment --teacher quickstart           # the quickstart teacher instead (own files)
    python -m benchmarks.kd_augment --report-only                  # rewrite the results from the recorded runs
    python -m benchmarks.kd_augment --quick                        # plumbing only (64 rows, few steps)
Teacher: the strong teacher (benchmarks/strong_teacher.py) or the quickstart's. Students: benchmarks/compact's
sizes, each its method (b); ``--sizes 10x-block1 10x-block6`` adds students made of one of the teacher's own
blocks. VanillaKD on the first 6,000 labelled rows plus, by method (:data:`METHODS`), inputs
the teacher labels (kdlight.data.augment.AugmentedKDDataModule): the other 4,202 training rows unlabelled
(``rt_rest``), + 8,000 Wikipedia sentences (``wiki``), 2 token-augmented copies per row (``token_aug``), both
(``rest_and_aug``), or the trained generator's rewrites of each batch (``rewrites``: MATE-KD, kd_mate.yaml);
``kd_long``, plain KD for as many updates as ``token_aug`` makes, tells its inputs from its extra steps. Every row
shows the margin kept over the TF-IDF baseline on the same 6,000 rows and on all rows (docs/compact.md; results:
benchmarks/results/kd_augment[_<label>].{md,json,png}).
"""

from __future__ import annotations

import functools
from itertools import product
from pathlib import Path

import numpy as np
import yaml

from benchmarks.common import component, fine_tuned_rt_teacher, recorded_rt_baseline
from benchmarks.compact import run as compact
from benchmarks.compact.run import FRESH_SIZES, SIZES, plot, task_distillation, task_results
from benchmarks.strong_teacher import strong_teacher_export
from benchmarks.study import Job, Study, study_name, study_parser, target
from kdlight.assets import cache_dir
from kdlight.data.augment import WIKI_SUMMARIES, read_texts

WORK = Path("runs/benchmarks")
METHODS = {
    "kd": "KD on the 6,000 labelled rows",
    "rt_rest": "+ 4,202 unlabelled in-domain rows",
    "wiki": "+ in-domain + 8,000 Wikipedia sentences",
    "token_aug": "+ 2 token-augmented copies per row",
    "token_aug8": "+ 8 token-augmented copies per row (token_aug's dose, 4x; not run by default)",
    "rest_and_aug": "+ the 4,202 unlabelled rows and 2 token-augmented copies per row (kd_more_inputs.yaml's inputs)",
    "rewrites": "+ generator rewrites (MATE-KD)",
    "kd_long": "KD on the 6,000 labelled rows for 3x the epochs (token_aug's number of updates)",
    "rewrites_earlier": "+ rewrites by the earlier generator (top block, 150 steps; not run by default)",
}
TOKEN_AUG_COPIES = 2
COPIES = {"token_aug": TOKEN_AUG_COPIES, "token_aug8": 8, "rest_and_aug": TOKEN_AUG_COPIES}
# a method whose gain could be its extra updates alone, and the control that has as many updates without its inputs
SAME_UPDATES = {"token_aug": "kd_long"}
# a larger dose of an input kind, against the study's own dose
DOSES = {"token_aug8": "token_aug"}
MATE_RECIPE = Path(__file__).resolve().parents[1] / "configs" / "quickstart" / "kd_mate.yaml"
FULL = {"epochs": 2, "train_examples": 6000, "learning_rate": 5e-4, "wiki_sentences": 8000}
QUICK = {"epochs": 1, "train_examples": 64, "learning_rate": 5e-4, "wiki_sentences": 32}


def augmentation(method: str, setting: dict) -> dict:
    """AugmentedKDDataModule's arguments for a method (empty: plain KD on the labelled rows)."""
    if method not in METHODS:
        raise ValueError(f"{method}: unknown method")
    if method == "wiki":  # a fixed sample of the Wikipedia sentences, all the in-domain rows
        return {"unlabelled": ["task_rest", str(wiki_sample(setting["wiki_sentences"]))]}
    copies = {"token_augment_copies": COPIES.get(method), "mask_prob": 0.15, "replace_prob": 0.15}
    rest = {"unlabelled": ["task_rest"]}
    # kd, rewrites: the labelled rows (the module rewrites each batch: module_config); kd_long: more epochs only
    choices = {"rt_rest": rest, "token_aug": copies, "token_aug8": copies, "rest_and_aug": {**rest, **copies}}
    return choices.get(method, {})


def method_setting(method: str, setting: dict) -> dict:
    """The run's setting: ``kd_long`` trains (1 + token_aug's copies) times the epochs on the labelled rows, so it
    makes as many student updates as ``token_aug`` does on its rows and their copies."""
    if method == "kd_long":
        return {**setting, "epochs": setting["epochs"] * (1 + TOKEN_AUG_COPIES)}
    return setting


def module_config(method: str, quick: bool) -> dict | None:
    """``rewrites``: MATE-KD's module with what configs/quickstart/kd_mate.yaml adds to kd.yaml (``rewrites_earlier``:
    with the generator recipe's export before 2026-12-07); else None."""
    if not method.startswith("rewrites"):
        return None
    recipe = yaml.safe_load(MATE_RECIPE.read_text())["model"]
    plain = yaml.safe_load(MATE_RECIPE.with_name("kd.yaml").read_text())["model"]["init_args"]
    extra = {k: v for k, v in recipe["init_args"].items() if k not in plain}
    if quick:  # 2 batches an epoch: one generator and one student step each
        extra.update(generator_steps=1, student_steps=1, show_rewrites_every=0)
    if method == "rewrites_earlier":
        from benchmarks.zeroshot.generator import earlier_generator

        extra["generator"]["init_args"]["network"] = earlier_generator()
    return component(recipe["class_path"], **extra)


def data_config(method: str, setting: dict, quick: bool) -> dict:
    inner = component(
        "RottenTomatoesDataModule", max_length=64, batch_size=32, max_train_examples=setting["train_examples"]
    )
    extra = augmentation(method, setting)
    if quick and "unlabelled" in extra:
        extra["max_unlabelled"] = 48
    return component("AugmentedKDDataModule", datamodule=inner, **extra) if extra else inner


def wiki_sample(count: int, seed: int = 0) -> Path:
    """``count`` Wikipedia-summary sentences (a seeded choice), written once as a text file."""
    path = cache_dir() / "augment" / f"wiki_sentences_{count}_seed{seed}.txt"
    if not path.is_file():
        texts = read_texts(WIKI_SUMMARIES, min_words=4)
        keep = sorted(np.random.default_rng(seed).choice(len(texts), min(count, len(texts)), replace=False))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(texts[i] for i in keep) + "\n", encoding="utf-8")
    return path


def summarise(records: list[dict], speeds: dict, teacher_params: int, baselines: dict[str, float]) -> list[dict]:
    """The compact study's rows, with the margin kept over both baselines (``rows``: the same labelled rows)."""
    return compact.summarise(records, speeds, teacher_params, baselines["rows"], baselines["all"], METHODS)


def effect_line(size: str, row: dict, reference: dict, why: str = "") -> str:
    """One method's effect on test accuracy against a reference method, judged against the larger seed std."""
    effect = row["accuracy_mean"] - reference["accuracy_mean"]
    spread = max(row["accuracy_std"], reference["accuracy_std"])
    seeds = min(row["seeds"], reference["seeds"])
    verdict = "beyond the seed spread" if abs(effect) > spread and seeds > 1 else "none shown"
    return (
        f"- {size}, {row['method']} vs {reference['method']}{why}: {effect:+.4f} test accuracy "
        f"(seed std up to {spread:.4f}, {seeds} seeds): {verdict}."
    )


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets, computed from the rows (margin kept against the all-rows baseline, the stricter)."""
    lines = []
    for row in rows:
        if row["compression"] >= 9.5 and row["margin_kept_all_pct"] is not None:
            met = row["margin_kept_all_pct"] >= 75 and (row["speedup"] or 0) >= 5 and row["seeds"] >= 3
            speed = f"{row['speedup']:.1f}x" if row["speedup"] else "speed-up not measured yet"
            claim = f">= 10x ({row['student']}), {row['method']}: margin kept >= 75 % at >= 5x CPU speed-up, 3 seeds"
            detail = f"{row['margin_kept_all_pct']:.1f} % kept, {speed}, {row['seeds']} seeds"
            lines.append(target(claim, met, detail))
    by_size: dict[str, dict[str, dict]] = {}
    for row in rows:
        by_size.setdefault(row["student"], {})[row["method"]] = row
    for size, methods in by_size.items():
        pairs = [(m, "kd", "") for m in methods if m != "kd"]
        pairs += [(m, c, " (as many student updates)") for m, c in SAME_UPDATES.items() if m in methods]
        pairs += [(m, c, " (8 copies a row vs 2)") for m, c in DOSES.items() if m in methods]
        lines += [effect_line(size, methods[m], methods[c], why) for m, c, why in pairs if c in methods]
    return lines


def main(argv: list[str] | None = None) -> list[dict]:
    parser = study_parser(__doc__, "workers", "label", "quick", "report-only", "seeds")
    parser.add_argument("--sizes", nargs="+", default=FRESH_SIZES, choices=list(SIZES))  # + the pretrained-block pilots
    default_methods = [m for m in METHODS if m not in ("rewrites_earlier", "token_aug8")]
    parser.add_argument("--methods", nargs="+", default=default_methods, choices=list(METHODS))
    parser.add_argument("--teacher", choices=["strong", "quickstart"], default="strong")
    args = parser.parse_args(argv)
    setting = dict(QUICK if args.quick else FULL)
    name = study_name("kd_augment" + ("_quickstart_teacher" if args.teacher == "quickstart" else ""), args)
    study = Study(name, workers=args.workers, report_only=args.report_only)
    if args.teacher == "strong":
        teacher_path = strong_teacher_export()
        if teacher_path is None and not args.report_only:
            raise SystemExit(
                "no strong teacher here: run `python -m benchmarks.strong_teacher` or use --teacher quickstart"
            )
    else:
        teacher_path = fine_tuned_rt_teacher() if not args.report_only else None
    teacher = str(teacher_path or "packaged/all-MiniLM-L6-v2")  # report-only: only the teacher's size is read
    common = dict(teacher=teacher, general_export=None, work=str(WORK / name), quick=args.quick, student_method="b")
    jobs = {  # every student is compact's method (b): the teacher's SVD embeddings, vocabulary pruned
        f"task/{size}/{method}/seed{seed}": Job(
            task_distillation,
            size=size,
            method=method,
            seed=seed,
            data=data_config(method, setting, args.quick),
            module=module_config(method, args.quick),
            setting=method_setting(method, setting),
            **common,
        )
        for seed, size, method in product(args.seeds, args.sizes, args.methods)
    }
    study.run(jobs)
    done, speed, teacher_params = task_results(study, teacher, args.quick, args.report_only)
    # TF-IDF on the same labelled rows, and on every training row
    train_rows = {"rows": setting["train_examples"], "all": 64 if args.quick else None}
    baselines = {key: recorded_rt_baseline(train_examples)["test_score"] for key, train_examples in train_rows.items()}
    rows = summarise(list(done.values()), speed, teacher_params, baselines)
    planned = len(args.sizes) * len(args.methods) * len(args.seeds)
    finished = sum(1 for k in jobs if k in done)
    status = (
        f"## Status (written by the study)\n\n{finished} of the {planned} runs asked for are recorded "
        f"({len(done)} in all in {study.runs_path.name})."
    )
    teacher_score = rows[0]["teacher_accuracy"] if rows else float("nan")
    baseline_lines = {"TF-IDF + LR, 6k rows": baselines["rows"], "TF-IDF + LR, all rows": baselines["all"]}
    study.write(
        rows,
        "student=size; method; compression; accuracy_mean=test acc (mean); accuracy_std=std; seeds; "
        "teacher_accuracy=teacher; pct_of_teacher=% of teacher; baseline_accuracy=baseline (6k rows); "
        "margin_kept_pct=% margin kept; baseline_all=baseline (all rows); margin_kept_all_pct=% margin kept "
        "(all-rows baseline); speedup=CPU speed-up; train_seconds=train s/run",
        title="KD inputs: students at 4x/10x/20x, against a bag-of-words baseline"
        + (" (--quick: plumbing only)" if args.quick else ""),
        intro=f"Teacher: {args.teacher} ({'benchmarks.strong_teacher' if args.teacher == 'strong' else 'quickstart'}"
        f"'s export), {teacher_params / 1e6:.2f}M parameters. Setting: {setting}. "
        "Methods: " + "; ".join(f"{k} = {v}" for k, v in METHODS.items()) + ". See benchmarks/kd_augment.py.",
        notes="\n\n".join(["## Targets\n\n" + ("\n".join(targets(rows)) or "- nothing to compute yet."), status]),
        plot=functools.partial(plot, rows, teacher_score, baseline_lines, METHODS),
    )
    return rows


if __name__ == "__main__":
    main()
