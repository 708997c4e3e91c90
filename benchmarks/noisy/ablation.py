"""What we tried to make ALM-KD pay off: 40 % symmetric noise on a larger, better-taught setting.

    python -m benchmarks.noisy.ablation            # ~40 min on 2 CPU cores (2 worker processes)
    python -m benchmarks.noisy.ablation --quick    # a smoke run (results in a temp folder)

The main study (``benchmarks.noisy.run``) is sized for five noise settings in ~40 minutes, which
leaves 1,080 noisy examples, a 1-epoch teacher and ~70 student steps per run: too little for any
method to get far above the class prior at 40 % noise. This study spends the same budget on one
setting: 2,700 noisy training examples (+300 clean), a teacher fine-tuned 2 epochs on the noisy
labels, 3 student epochs, and varies what the main study's notes list as untried: a meta warm-up
(no meta steps in the first epoch), a centred meta-gradient (``center_meta_grad``) with the initial
lambda at 0.9 (the official code's) and 0.5, a larger clean batch for the meta step, the
all-parameter look-ahead, and the mixing network's meta learning rate.
Each variant runs with 3 seeds, two at a time (worker processes with one torch thread each); resumable
(``benchmarks/results/noisy_ablation_runs.json``). Writes ``benchmarks/results/noisy_ablation.{md,json,png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from benchmarks.noisy import run as study  # noqa: E402
from benchmarks.study import RESULTS, Job, Study, keyed_list, mean_std  # noqa: E402
from kdlight.assets import cache_dir  # noqa: E402

NOISE, RATE = "symmetric", 0.4

# name -> (method of benchmarks.noisy.run, fixed lambda, extra ALM-KD arguments[, datamodule arguments])
TABLE, NET = "ALM-KD (table)", "ALM-KD (mixing net)"
CENTRED = {"init_lambda": 0.9, "center_meta_grad": True}
VARIANTS: dict[str, tuple] = {
    "CE only": ("CE only", None, {}),
    "KD lambda=0.3": (study.KD, 0.3, {}),
    "KD lambda=0.5": (study.KD, 0.5, {}),
    "KD lambda=0.9": (study.KD, 0.9, {}),
    "ALM table, init 0.9 (as in the main study)": (TABLE, None, {"init_lambda": 0.9}),
    "ALM table, init 0.9, meta from epoch 1": (
        TABLE,
        None,
        {"init_lambda": 0.9, "meta_interval": "epoch", "meta_warmup": 1},
    ),
    "ALM table, init 0.9, centred meta-gradient": (TABLE, None, CENTRED),
    "ALM table, init 0.5, centred meta-gradient": (TABLE, None, {**CENTRED, "init_lambda": 0.5}),
    "ALM table, init 0.9, centred, clean batch 128": (TABLE, None, CENTRED, {"meta_batch_size": 128}),
    "ALM table, init 0.9, centred, all-parameter look-ahead": (TABLE, None, {**CENTRED, "lookahead": "all"}),
    "ALM mixing net, Adam lr 0.01 (as in the main study)": (NET, None, {"init_lambda": 0.9}),
    "ALM mixing net, Adam lr 0.001": (NET, None, {"init_lambda": 0.9, "meta_learning_rate": 1e-3}),
}


def config(quick: bool) -> argparse.Namespace:
    cfg = argparse.Namespace(
        train_examples=3000,
        max_length=32,
        epochs=3,
        teacher_epochs=2,
        lr=2e-4,
        meta_lr=1.0,
        net_meta_lr=0.01,
        work=cache_dir() / "noisy_ablation",
    )
    if quick:
        cfg.train_examples, cfg.epochs, cfg.teacher_epochs = 200, 1, 1
    return cfg


def one_run(cfg: argparse.Namespace, variant: str, seed: int) -> dict:
    """A Study job: train one variant with one seed and return its record."""
    method, lam, alm_args, *data_args = VARIANTS[variant]
    cfg = argparse.Namespace(**{**vars(cfg), "work": cfg.work / f"variant{list(VARIANTS).index(variant)}_seed{seed}"})
    dm = study.datamodule(cfg, NOISE, RATE, **(data_args[0] if data_args else {}))
    teacher = study.noisy_teacher(cfg, dm, NOISE, RATE)  # trained by the parent before any worker starts
    start = time.perf_counter()
    out = study.train_student(cfg, dm, teacher, method, seed, lam, alm_args=alm_args)
    return {"variant": variant, "seed": seed, "seconds": time.perf_counter() - start, **out}


def summarise(runs: list[dict], teacher_accuracy: float, majority: float) -> list[dict]:
    rows = []
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        if not mine:
            continue
        accs = [r["accuracy"] for r in mine]
        acc_mean, acc_std = mean_std(accs)
        row = {
            "method": variant,
            "noise": NOISE,
            "rate": RATE,
            "accuracy_mean": acc_mean,
            "accuracy_std": acc_std,
            "seeds": len(accs),
            "accuracy_per_seed": accs,
            "teacher_accuracy": teacher_accuracy,
            "majority_accuracy": majority,
            "step_time_ms": 1000 * statistics.mean(r["step_time"] for r in mine),
        }
        for key in ("lambda_flipped", "lambda_clean"):
            if key in mine[0]:
                row[key] = statistics.mean(r[key] for r in mine)
        rows.append(row)
    kd_time = next((r["step_time_ms"] for r in rows if r["method"] == "KD lambda=0.5"), None)
    for row in rows:
        row["step_time_vs_kd"] = row["step_time_ms"] / kd_time if kd_time else None
    return rows


def plot(rows: list[dict]):
    def draw(path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(10, 4.8))
        names = [r["method"] for r in rows]
        colors = [
            "tab:gray" if n.startswith("CE") else "tab:blue" if n.startswith("KD") else "tab:orange" for n in names
        ]
        ax.barh(
            names, [100 * r["accuracy_mean"] for r in rows], xerr=[100 * r["accuracy_std"] for r in rows], color=colors
        )
        teacher, majority = 100 * rows[0]["teacher_accuracy"], 100 * rows[0]["majority_accuracy"]
        ax.axvline(teacher, color="k", ls="--", lw=1, label="noisy teacher")
        ax.axvline(majority, color="r", ls=":", lw=1, label="majority class")
        lo = min(100 * r["accuracy_mean"] - 100 * r["accuracy_std"] for r in rows)
        ax.set_xlim(min(lo, majority) - 2, max(teacher, lo) + 4)
        ax.invert_yaxis()
        ax.set_xlabel("clean test accuracy (%), mean ± std over seeds")
        ax.set_title("Rotten Tomatoes, 40% symmetric noise, 2-layer students", loc="left")
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    return draw


def pct(v: float) -> str:
    return f"{100 * v:.2f}"


def reading(rows: list[dict]) -> str:
    """The verdict: does the best ALM-KD variant beat the best fixed lambda by more than the seed spread?"""
    best_kd = max((r for r in rows if r["method"].startswith("KD")), key=lambda r: r["accuracy_mean"])
    alm = [r for r in rows if r["method"].startswith("ALM")]
    best_alm = max(alm, key=lambda r: r["accuracy_mean"])
    gap = 100 * (best_alm["accuracy_mean"] - best_kd["accuracy_mean"])
    spread = 100 * max(best_alm["accuracy_std"], best_kd["accuracy_std"])
    verdict = "beats" if gap > spread else "does not beat"
    gaps = "; ".join(
        f"{r['method']}: {r['lambda_flipped'] - r['lambda_clean']:+.3f}" for r in alm if "lambda_flipped" in r
    )
    teacher = rows[0]["teacher_accuracy"]
    return (
        "## Reading\n\n"
        f"- Best ALM-KD variant: {best_alm['method']}, {pct(best_alm['accuracy_mean'])} ± "
        f"{pct(best_alm['accuracy_std'])} vs the best fixed lambda ({best_kd['method']}) "
        f"{pct(best_kd['accuracy_mean'])} ± {pct(best_kd['accuracy_std'])}: {gap:+.2f} points, larger std "
        f"{spread:.2f}, so it **{verdict}** the best fixed lambda by more than the seed spread.\n"
        f"- Noisy teacher {pct(teacher)} %: the best students are within "
        f"{100 * teacher - 100 * best_kd['accuracy_mean']:.2f} points of it.\n"
        "- Mean lambda on flipped minus clean training examples (positive = more teacher where the label is wrong): "
        f"{gaps}.\n"
    )


def write(results: Study, rows: list[dict], cfg, fit_minutes: float, workers: int) -> None:
    best_kd = max((r for r in rows if r["method"].startswith("KD")), key=lambda r: r["accuracy_mean"])
    table = [
        {
            "method": r["method"],
            "acc": f"{pct(r['accuracy_mean'])} ± {pct(r['accuracy_std'])}",
            "vs": f"{100 * (r['accuracy_mean'] - best_kd['accuracy_mean']):+.2f}",
            "seeds": r["seeds"],
            "time": None if r["step_time_vs_kd"] is None else f"{r['step_time_vs_kd']:.2f}x",
            "lf": f"{r['lambda_flipped']:.3f}" if "lambda_flipped" in r else None,
            "lc": f"{r['lambda_clean']:.3f}" if "lambda_clean" in r else None,
        }
        for r in rows
    ]
    intro = (
        f"`python -m benchmarks.noisy.ablation`: the runs' fits took {fit_minutes:.0f} min in all, {workers} at a "
        "time (worker processes with one torch thread each).\n\n"
        f"Rotten Tomatoes, first {cfg.train_examples} training rows: 10 % carved off as the clean split before any "
        f"corruption, the other {int(cfg.train_examples * 0.9)} corrupted with 40 % symmetric noise (binary task: "
        f"every flipped label is the wrong class). max_length {cfg.max_length}, batch 32. Teacher: packaged "
        f"all-MiniLM-L6-v2 fine-tuned {cfg.teacher_epochs} epochs on the noisy labels: "
        f"**{pct(rows[0]['teacher_accuracy'])} %** clean test accuracy (majority class: "
        f"{pct(rows[0]['majority_accuracy'])} %). Student: TruncatedTeacher(2), word embeddings frozen, AdamW lr "
        f"{cfg.lr}, {cfg.epochs} epochs, T = 4, teacher logits cached. ALM-KD as in the main study (meta step every "
        "step, look-ahead on the last layer with step = current lr, SGD meta lr "
        f"{cfg.meta_lr} with per-batch normalised meta-gradient; mixing net: Adam lr {cfg.net_meta_lr}); the variants "
        "change only what the row names. Step times come from the runs themselves (two runs share the machine at "
        "any time), so treat them as rough."
    )
    results.write(
        rows,
        [
            ("method", "method"),
            ("acc", "clean test acc. (%) mean ± std"),
            ("vs", f"vs best KD ({best_kd['method']})"),
            ("seeds", "seeds"),
            ("time", "step time vs KD 0.5 (in-study)"),
            ("lf", "mean lambda (flipped)"),
            ("lc", "mean lambda (clean)"),
        ],
        title="Noisy labels, 40 % symmetric: what we tried for ALM-KD",
        intro=intro,
        notes=reading(rows),
        plot=plot(rows),
        table_rows=table,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (results in a temp folder)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--results", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    cfg = config(args.quick)
    seeds = 1 if args.quick else args.seeds
    torch.set_num_threads(args.workers)  # the teacher trains alone, on every core
    dm = study.datamodule(cfg, NOISE, RATE)
    teacher = study.noisy_teacher(cfg, dm, NOISE, RATE)
    dm.prepare_data()
    dm.setup("test")
    teacher_accuracy = study.clean_test_accuracy(study.load_student_like(teacher), dm)
    results = args.results or (Path(tempfile.mkdtemp(prefix="noisy_ablation_quick_")) if args.quick else RESULTS)
    runs = Study(
        "noisy_ablation", workers=args.workers, results=results, **keyed_list(lambda r: f"{r['variant']}|{r['seed']}")
    )
    records = runs.run(
        {
            f"{variant}|{seed}": Job(one_run, cfg=cfg, variant=variant, seed=seed)
            for seed in range(seeds)
            for variant in VARIANTS
        }
    )
    records = list(records.values())
    rows = summarise(records, teacher_accuracy, study.majority_accuracy())
    write(runs, rows, cfg, sum(r["seconds"] for r in records) / 60, args.workers)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
