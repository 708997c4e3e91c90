"""Framework overhead where steps are short: kdlight vs a hand-written loop doing the same maths.

    python -m benchmarks.overhead.run --label after     # ~5 min on 2 CPU cores (benchmarks/results/overhead.*)
    python -m benchmarks.overhead.run --quick           # a 1-minute smoke run (results in a temp folder)

VanillaKD, ZeroShotAdversarialKD and AdaptiveLossMixingKD, each against its hand-written twin
(``worker.py``: same batches from the same datamodule, same starting weights, same loss functions),
on tiny random BERTs sized so that a VanillaKD step takes ~10, ~25 and ~100 ms on one thread. One
process per (module, size) runs both systems alternately, round after round, the order flipping
every round; each round gives one ratio (throughput kdlight / hand-written over the same timed
steps), and the figure reported is the median of those ratios. A cProfile of each system at the
~10 ms size says where kdlight's extra time goes.

Every run of this command replaces the rows of its ``--label`` in the results and keeps the others,
so the committed file holds the measurement before the overhead work and the one after it. Runs are
not resumed across invocations: a measurement is one sitting on one machine.

kdlight runs as a user runs it: ``Trainer`` + module + datamodule, ``CSVLogger`` at Lightning's default
``log_every_n_steps=50``; the progress bar, checkpointing, the model summary and validation are off for
both systems. Zero-shot: cycles of 2 generator + 6 student steps, timed over whole cycles; its
hand-written twin draws its noise from one global RNG (kdlight's per-example seeded noise, which makes 1
and N processes agree, is counted as overhead). ALM: table mixer, last-layer look-ahead, a meta step
every batch. ``--gpu``: all-MiniLM-L6-v2-shaped random models (6 layers, hidden 384, 12 heads, vocabulary
30,522; student 2 layers), batch 64 and 256, length 64, bf16-mixed on CUDA (autocast around the
hand-written step), fused AdamW in both; the clock waits for the GPU only at the timed window's ends.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.study import RESULTS, Study, markdown_table
from benchmarks.timing import git_state, own_time, run_module, stderr_tail

MODULES = {"vanilla": "VanillaKD", "zeroshot": "ZeroShotAdversarialKD", "alm": "AdaptiveLossMixingKD"}
SIZES = ["10ms", "25ms", "100ms"]
TARGETS = {"10ms": 0.95, "25ms": 0.97}  # the targets; ~100 ms has none (shown for the trend)
GPU_SIZES = ["gpu-b64", "gpu-b256"]
GPU_TARGET = 0.95  # the GPU target for VanillaKD


def settings(quick: bool, gpu: bool = False) -> argparse.Namespace:
    # timed window: from the end of step `first` to the end of step `last` (zero-shot: whole 2+6 cycles)
    if quick:
        cfg = argparse.Namespace(rounds=1, steps=16, first=7, last=15, sizes=["10ms"], profile=(8, 16))
    else:
        cfg = argparse.Namespace(rounds=7, steps=32, first=7, last=31, sizes=SIZES, profile=(8, 32))
    cfg.device = "cuda" if gpu else "cpu"
    if gpu:  # three rounds: a device call has 10 minutes
        cfg.sizes, cfg.rounds = (GPU_SIZES[:1] if quick else GPU_SIZES), min(cfg.rounds, 3)
    return cfg


def worker(module: str, size: str, cfg, work: Path, assets: Path, profile: bool = False) -> dict:
    out = work / f"{module}_{size}{'_profile' if profile else ''}.json"
    args = [
        "--module",
        module,
        "--size",
        size,
        "--rounds",
        "1" if profile else str(cfg.rounds),
        "--steps",
        str(cfg.steps),
        "--assets",
        str(assets),
        "--out",
        str(out),
    ]
    if profile:
        args += ["--profile", *map(str, cfg.profile)]
    if cfg.device != "cpu":  # wait for the GPU at the timed window's ends only (stamps index i = step i + 1)
        args += ["--device", cfg.device, "--sync-at", str(cfg.first + 1), str(cfg.last + 1)]
    start = time.perf_counter()
    proc = run_module("benchmarks.overhead.worker", args, 1800, {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"worker {module} {size} failed (exit {proc.returncode}):\n{stderr_tail(proc, 12)}")
    print(f"[overhead] {module} {size}{' profile' if profile else ''}: {time.perf_counter() - start:.0f}s", flush=True)
    return json.loads(out.read_text())


def step_time(stamps: list[float], cfg) -> float:
    return (stamps[cfg.last] - stamps[cfg.first]) / (cfg.last - cfg.first)


def summarise(result: dict, cfg) -> dict:
    """Per clock (process CPU time and wall time): median step times and the median of per-round ratios.

    On CPU the judged ratio is the CPU-time one: each process runs one thread, so its CPU time per step
    is the work a step costs, while wall time also counts the time other jobs on the shared 2 cores
    take the core away (the load average was 5-6 during these runs). On a GPU only wall time means
    anything (the host waits for the device)."""
    out = {}
    for clock, key in (("cpu", "cpu_stamps"), ("wall", "stamps")):
        by_round: dict[int, dict[str, float]] = {}
        for run in result["runs"]:
            if run.get(key):
                by_round.setdefault(run["round"], {})[run["system"]] = step_time(run[key], cfg)
        if not by_round:
            continue
        ratios = [r["handwritten"] / r["kdlight"] for r in by_round.values()]  # throughput kdlight / hand-written
        hand = statistics.median(r["handwritten"] for r in by_round.values())
        kd = statistics.median(r["kdlight"] for r in by_round.values())
        out[clock] = {
            "handwritten_ms": 1000 * hand,
            "kdlight_ms": 1000 * kd,
            "ratio": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "ratios": ratios,
            "extra_ms_per_step": 1000 * (kd - hand),
        }
    judged = out["wall"] if cfg.device != "cpu" or "cpu" not in out else out["cpu"]
    return {
        **judged,
        "clock": "wall" if judged is out.get("wall") else "cpu",
        "wall_ratio": out["wall"]["ratio"],
        "wall_range": f"{out['wall']['ratio_min']:.3f}-{out['wall']['ratio_max']:.3f}",
        "by_clock": out,
    }


# --------------------------------------------------------------------------------------- profiling
CATEGORIES = [
    (
        "torch kernels (model maths, autograd, optimiser)",
        lambda f, n: f == "~" and ("torch" in n or "_EngineBase" in n),
    ),
    (
        "Lightning (loops, hooks, logging)",
        lambda f, n: "/lightning/" in f or "/lightning_utilities/" in f or "/torchmetrics/" in f,
    ),
    ("kdlight (Python)", lambda f, n: "/kdlight/" in f),
    ("transformers (Python)", lambda f, n: "/transformers/" in f),
    ("torch.optim / lr_scheduler (Python)", lambda f, n: "/torch/optim/" in f),
    (
        "data loading (sampler, collate)",
        lambda f, n: "/torch/utils/data/" in f or "/datasets/" in f or "/pyarrow/" in f,
    ),
    ("torch.nn / autograd (Python)", lambda f, n: "/torch/" in f),
    ("other Python and builtins", lambda f, n: True),
]
# what the model's forward/backward and the optimiser do, whoever drives them: left out of the top list
MODEL_MATHS = ("/transformers/", "/torch/nn/", "/torch/optim/", "/torch/autograd/", "/torch/_tensor.py")


def profile_summary(path: Path, steps: int) -> dict:
    seconds, stats = own_time(path, CATEGORIES)
    top = sorted(
        (
            (tottime, ncalls, f"{Path(file).parent.name}/{Path(file).name}:{line}({name})")
            for (file, line, name), (_, ncalls, tottime, _, _) in stats.items()
            if file != "~" and not any(part in file for part in MODEL_MATHS)
        ),
        reverse=True,
    )
    return {
        "ms_per_step": {k: 1000 * v / steps for k, v in seconds.items()},
        "total_ms_per_step": 1000 * sum(seconds.values()) / steps,
        "top_own_time": [
            {"ms_per_step": 1000 * t / steps, "calls_per_step": n / steps, "where": w} for t, n, w in top[:15]
        ],
    }


def run_profiles(cfg, work: Path, assets: Path) -> dict:
    out = {}
    steps = cfg.profile[1] - cfg.profile[0]
    size = cfg.sizes[0]
    for module in MODULES:
        worker(module, size, cfg, work, assets, profile=True)
        out[module] = {
            system: profile_summary(work / f"{module}_{size}_profile.{system}.prof", steps)
            for system in ("handwritten", "kdlight")
        }
    return out


# ------------------------------------------------------------------------------------------ output
def verdict(ratio: float, size: str) -> str:
    target = GPU_TARGET if size.startswith("gpu") else TARGETS.get(size)
    if target is None:
        return "no target"
    return f"{'met' if ratio >= target else 'MISSED'} (>= {target})"


def write(study: Study, all_rows: list[dict], gpu: bool) -> None:
    """One table of every label's ratios; per label, when and how it was measured and its profiles."""
    table = [
        {**r, "range": f"{r['ratio_min']:.3f}-{r['ratio_max']:.3f}", "judged": verdict(r["ratio"], r["size"])}
        for r in all_rows
        if r.get("section") == "ratio"
    ]
    notes = []
    for info in [r for r in all_rows if r.get("section") == "meta"]:
        label = info["label"]
        notes.append(
            f"## {label}: {info['description']}\n\n"
            f"{('Commit ' + info['commit'] + ', ') if info['commit'] else ''}{info['date']}, {info['rounds']} "
            f"rounds x {info['timed_steps']} timed steps; load average at the end {info['loadavg_end']:.2f}."
        )
        for p in [r for r in all_rows if r.get("label") == label and r.get("section") == "profile"]:
            hand, kd = p["handwritten"]["ms_per_step"], p["kdlight"]["ms_per_step"]
            cats = [
                {"category": c, "handwritten": hand[c], "kdlight": kd[c], "difference": kd[c] - hand[c]} for c in kd
            ]
            notes.append(
                f"### Where the time goes: {p['module']} at the smallest size (cProfile, ms per step)\n\n"
                + markdown_table(
                    cats,
                    [
                        ("category", "category (own time)"),
                        ("handwritten", "hand-written"),
                        ("kdlight", "kdlight"),
                        ("difference", "kdlight - hand-written"),
                    ],
                )
                + "\nkdlight's top entries by own time outside the model forward/backward and the optimiser:"
                "\n\n"
                + markdown_table(
                    p["kdlight"]["top_own_time"],
                    [("where", "function"), ("ms_per_step", "ms/step"), ("calls_per_step", "calls/step")],
                )
            )
    intro = (
        "Made by `python -m benchmarks.overhead.run` (see its docstring for the method). "
        + (
            "MiniLM-shaped random models on CUDA, bf16-mixed, batch 64 and 256; judged on wall time. "
            if gpu
            else "Tiny random BERTs (teacher 2 layers, student 1 layer cut from it; vocabulary 2,005), one thread per "
            "process; judged on process CPU time per step (`clock`; wall-time ratios, which also count other "
            "jobs taking the core, alongside). "
        )
        + "Both systems on the same batches from the same weights. Ratio = throughput kdlight / hand-written, "
        "median over rounds of the ratio within a round."
    )
    study.write(
        all_rows,
        [
            ("label", "label"),
            ("module", "module"),
            ("size", "size"),
            ("handwritten_ms", "hand-written ms/step"),
            ("kdlight_ms", "kdlight ms/step"),
            ("extra_ms_per_step", "extra ms/step"),
            ("ratio", "ratio"),
            ("range", "range"),
            ("judged", "target"),
            ("clock", "clock"),
            ("wall_ratio", "wall-time ratio"),
            ("wall_range", "wall range"),
        ],
        title="Framework overhead: kdlight vs hand-written loops at short steps"
        + (" (GPU)" if gpu else " (CPU proxy)"),
        intro=intro,
        notes="\n\n".join(notes),
        plot=lambda path: plot(all_rows, path, gpu),
        table_rows=table,
    )


def plot(all_rows: list[dict], path: Path, gpu: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["label"] for r in all_rows if r.get("section") == "meta"]
    sizes = GPU_SIZES if gpu else SIZES
    fig, axes = plt.subplots(1, len(MODULES), figsize=(4 * len(MODULES), 3.4), sharey=True)
    width = 0.8 / max(1, len(labels))
    for ax, title in zip(axes, MODULES.values(), strict=True):
        for i, label in enumerate(labels):
            rows = {
                r["size"]: r
                for r in all_rows
                if r.get("label") == label and r.get("section") == "ratio" and r["module"] == title
            }
            xs = [j + i * width for j in range(len(sizes))]
            ys = [rows[s]["ratio"] if s in rows else 0 for s in sizes]
            errs = [
                [(rows[s]["ratio"] - rows[s]["ratio_min"]) if s in rows else 0 for s in sizes],
                [(rows[s]["ratio_max"] - rows[s]["ratio"]) if s in rows else 0 for s in sizes],
            ]
            ax.bar(xs, ys, width, yerr=errs, label=label, capsize=2)
        for j, size in enumerate(sizes):
            if size in TARGETS or size.startswith("gpu"):
                ax.hlines(TARGETS.get(size, GPU_TARGET), j - 0.1, j + 0.8, colors="k", linestyles="dashed", linewidth=1)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(sizes))], [f"~{s}" for s in sizes])
        ax.set_title(title, fontsize=9)
        ax.set_ylim(0.4, 1.1)
    axes[0].set_ylabel("throughput kdlight / hand-written")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Framework overhead on {'GPU' if gpu else 'CPU'} (dashed: targets)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--label", default="after")
    parser.add_argument("--description", default="")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--gpu", action="store_true", help="MiniLM-shaped models, batch 64 and 256, bf16-mixed on CUDA")
    parser.add_argument(
        "--results",
        "--results-dir",
        dest="results",
        type=Path,
        default=None,
        help="results folder (default benchmarks/results; a temp folder with --quick)",
    )
    args = parser.parse_args(argv)
    cfg = settings(args.quick, args.gpu)
    name = "gpu_overhead" if args.gpu else "overhead"
    results = args.results or (Path(tempfile.mkdtemp(prefix="kdlight_overhead_results_")) if args.quick else RESULTS)
    with tempfile.TemporaryDirectory(prefix="kdlight_overhead_") as tmp:
        work, assets = Path(tmp), Path(tmp) / "assets"
        rows = []
        for size in cfg.sizes:
            for module, title in MODULES.items():
                summary = summarise(worker(module, size, cfg, work, assets), cfg)
                rows.append({"label": args.label, "section": "ratio", "module": title, "size": size, **summary})
                print(
                    f"[overhead] {title} ~{size}: ratio {summary['ratio']:.3f} ({summary['clock']} time; wall "
                    f"{summary['wall_ratio']:.3f}) ({summary['handwritten_ms']:.1f} vs "
                    f"{summary['kdlight_ms']:.1f} ms/step)",
                    flush=True,
                )
        profiles = {} if args.no_profile else run_profiles(cfg, work, assets)
    rows += [{"label": args.label, "section": "profile", "module": MODULES[m], **p} for m, p in profiles.items()]
    rows.append(
        {
            "label": args.label,
            "section": "meta",
            "description": args.description or args.label,
            "commit": git_state(),
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "rounds": cfg.rounds,
            "timed_steps": cfg.last - cfg.first,
            "loadavg_end": os.getloadavg()[0],
        }
    )
    study = Study(name, results=results)
    existing = []
    if (study.results / f"{name}.json").is_file():  # the other labels' rows are kept
        existing = [r for r in json.loads((study.results / f"{name}.json").read_text()) if r.get("label") != args.label]
    write(study, existing + rows, args.gpu)


if __name__ == "__main__":
    main()
