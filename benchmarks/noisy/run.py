"""Noisy-label study: CE vs fixed-lambda KD vs ALM-KD on Rotten Tomatoes with injected label noise.

    python -m benchmarks.noisy.run            # the study: 5 noise settings x 3 seeds, 2 runs at a time
    python -m benchmarks.noisy.run --quick    # a 2-minute smoke run (results in a temp folder)

Resumable (``benchmarks/results/noisy_runs.json``, see ``benchmarks/study.py``). Per noise setting: the
packaged all-MiniLM-L6-v2 is fine-tuned on the *noisy* training labels (the teacher a user would have;
cached under ``<kdlight cache>/teachers/noisy_<type>_<rate>_...``), then a 2-layer student cut from it is
trained with each method. Clean test accuracy is the wrapped task's test split (never corrupted). Step
time is measured per training step (teacher logits cached for every method, so a "KD step" is the
student's forward/backward), relative to KD with lambda = 0.5; after the study, the methods are timed
again interleaved round-robin, so that load from other processes hits every method alike.
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
from lightning import Callback, Trainer, seed_everything  # noqa: E402

from benchmarks.study import RESULTS, Job, Study, mean_std  # noqa: E402
from kdlight.assets import PACKAGED_MINILM, cache_dir  # noqa: E402
from kdlight.data import NoisyLabelDataModule, RottenTomatoesDataModule  # noqa: E402
from kdlight.models import TruncatedTeacher  # noqa: E402
from kdlight.modules import AdaptiveLossMixingKD, TeacherFineTuning, VanillaKD  # noqa: E402

SETTINGS = [("symmetric", 0.4), ("symmetric", 0.0), ("symmetric", 0.2), ("symmetric", 0.6), ("asymmetric", 0.4)]
LAMBDAS = (0.3, 0.5, 0.9)
KD = "KD (fixed lambda)"
METHODS = {
    "CE only": lambda lam: (VanillaKD, {"alpha": 0.0}),
    KD: lambda lam: (VanillaKD, {"alpha": lam}),
    "ALM-KD (table)": lambda lam: (AdaptiveLossMixingKD, {"mixer": "table"}),
    "ALM-KD (mixing net)": lambda lam: (AdaptiveLossMixingKD, {"mixer": "network"}),
    "ALM-KD (all-param look-ahead)": lambda lam: (AdaptiveLossMixingKD, {"mixer": "table", "lookahead": "all"}),
}


class StepTimer(Callback):
    """Wall time of every training step (forward, backward, optimiser, meta step)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self._start)


def trainer(root: Path, epochs: int, callbacks=(), max_steps: int = -1) -> Trainer:
    return Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=str(root),
        callbacks=list(callbacks),
        num_sanity_val_steps=0,
    )


def datamodule(cfg, noise: str, rate: float, meta_batch_size: int = 32) -> NoisyLabelDataModule:
    return NoisyLabelDataModule(
        RottenTomatoesDataModule(),
        noise_type=noise,
        noise_rate=rate,
        clean_val_size=0.1,
        seed=0,
        tokenizer=PACKAGED_MINILM,
        max_length=cfg.max_length,
        batch_size=32,
        eval_batch_size=128,
        max_train_examples=cfg.train_examples,
        meta_batch_size=meta_batch_size,
    )


def noisy_teacher(cfg, dm, noise: str, rate: float) -> str:
    """The teacher fine-tuned on ``dm``'s noisy labels (trained once, cached). ``dm`` is set up on return."""
    out = (
        cache_dir()
        / "teachers"
        / f"noisy_{noise}_{int(rate * 100)}_n{cfg.train_examples}_l{cfg.max_length}_e{cfg.teacher_epochs}"
    )
    if not (out / "config.json").is_file():
        start = time.perf_counter()
        seed_everything(0, verbose=False)
        model = TeacherFineTuning(
            model=PACKAGED_MINILM, learning_rate=1e-4, warmup_ratio=0.1, export_dir=str(out), task=dm.task
        )
        trainer(out.parent / (out.name + "_run"), cfg.teacher_epochs).fit(model, datamodule=dm)
        print(f"[noisy] teacher {out.name} trained in {time.perf_counter() - start:.0f}s", flush=True)
    if dm.noise_report is None:  # a cached teacher: the noise report comes from setting the data up
        dm.prepare_data()
        dm.setup("fit")
    return str(out)


def train_student(
    cfg, dm, teacher: str, method: str, seed: int, lam: float | None = None, alm_args: dict | None = None
) -> dict:
    """Train one student and score it; ``alm_args`` override ALM-KD's arguments (ablations)."""
    cls, extra = METHODS[method](lam)
    if cls is AdaptiveLossMixingKD:
        extra.update(init_lambda=0.9, meta_learning_rate=cfg.meta_lr if extra["mixer"] == "table" else cfg.net_meta_lr)
        extra.update(alm_args or {})
    seed_everything(seed, verbose=False)
    model = cls(
        teacher=teacher,
        student=TruncatedTeacher(2),
        temperature=4.0,
        cache_teacher_logits=True,
        learning_rate=cfg.lr,
        warmup_ratio=0.1,
        export_dir=str(cfg.work / "export"),
        export_best=False,
        **extra,
        task=dm.task,
    )
    model.student.get_input_embeddings().requires_grad_(False)  # frozen word embeddings: cheaper, same for all
    timer = StepTimer()
    trainer(cfg.work / "student", cfg.epochs, [timer]).fit(model, datamodule=dm)
    accuracy = clean_test_accuracy(model.student, dm)
    times = timer.times[2:] or timer.times  # first steps include lazy set-up (teacher cache look-up)
    out = {"accuracy": accuracy, "step_time": statistics.mean(times)}
    out.update(getattr(model, "last_flip_stats", {}) or {})
    print(
        f"[noisy] {dm.noise_type} {dm.noise_rate:.1f} {method}{'' if lam is None else f' lambda={lam}'} "
        f"seed={seed}: acc={accuracy:.4f} step={out['step_time'] * 1000:.0f}ms "
        f"{out.get('lambda_flipped', '')} {out.get('lambda_clean', '')}",
        flush=True,
    )
    return out


def student_job(cfg, noise: str, rate: float, teacher: str, method: str, seed: int, lam: float | None) -> dict:
    """One student run (a Study job; the teacher is trained and cached before any job starts)."""
    cfg = argparse.Namespace(**{**vars(cfg), "work": cfg.work / f"worker{os.getpid()}"})  # own export folder
    return train_student(cfg, datamodule(cfg, noise, rate), teacher, method, seed, lam)


def run_key(noise: str, rate: float, method: str, lam: float | None, seed: int) -> str:
    return f"{noise}|{rate}|{method}|{lam}|{seed}"


def load_student_like(path: str):
    """A ``save_pretrained`` classifier (e.g. the noisy teacher), to score with :func:`clean_test_accuracy`."""
    from kdlight.models.hf import load_classifier

    return load_classifier(path, 2, None, require_head=True)


@torch.no_grad()
def clean_test_accuracy(student, dm) -> float:
    """A classifier's accuracy on the wrapped task's (never corrupted) test split."""
    student = student.eval()
    correct = total = 0
    for batch in dm.test_dataloader():
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        correct += int((student(**inputs).logits.argmax(-1) == batch["labels"]).sum())
        total += len(batch["labels"])
    return correct / total


def interleaved_timing(cfg, rounds: int = 2, steps: int = 30) -> dict[str, float]:
    """Median training-step time per method, runs interleaved round-robin (40% symmetric data), so
    that load from other processes hits every method alike. Returns ms per step."""
    dm = datamodule(cfg, "symmetric", 0.4)
    teacher = noisy_teacher(cfg, dm, "symmetric", 0.4)
    plan = [
        (KD, 0.5),
        ("CE only", None),
        ("ALM-KD (table)", None),
        ("ALM-KD (mixing net)", None),
        ("ALM-KD (all-param look-ahead)", None),
    ]
    times: dict[str, list[float]] = {m: [] for m, _ in plan}
    for _ in range(rounds):
        for method, lam in plan:
            cls, extra = METHODS[method](lam)
            if cls is AdaptiveLossMixingKD:
                extra.update(meta_learning_rate=cfg.meta_lr if extra["mixer"] == "table" else cfg.net_meta_lr)
            seed_everything(0, verbose=False)
            model = cls(
                teacher=teacher,
                student=TruncatedTeacher(2),
                temperature=4.0,
                cache_teacher_logits=True,
                learning_rate=cfg.lr,
                export_dir=str(cfg.work / "export"),
                export_best=False,
                **extra,
                task=dm.task,
            )
            model.student.get_input_embeddings().requires_grad_(False)
            timer = StepTimer()
            trainer(cfg.work / "timing", 1, [timer], max_steps=steps).fit(model, datamodule=dm)
            times[method] += timer.times[3:]
    return {m: 1000 * statistics.median(v) for m, v in times.items()}


def apply_timing(rows: list[dict], timing: dict[str, float]) -> None:
    kd = timing[KD]
    for row in rows:
        row.setdefault("step_time_vs_kd_in_study", row["step_time_vs_kd"])
        if row["method"] in timing:
            row["step_time_vs_kd"] = timing[row["method"]] / kd
            row["step_time_ms_interleaved"] = timing[row["method"]]


def study_setting(study: Study, cfg, noise: str, rate: float, seeds: list[int], methods: list[str]) -> list[dict]:
    """Every run of one noise setting (those not yet in the runs file), then its rows."""
    dm = datamodule(cfg, noise, rate)
    teacher = noisy_teacher(cfg, dm, noise, rate)
    plan = [(KD, s, lam) for lam in LAMBDAS for s in seeds]
    plan += [(method, s, None) for method in methods if method != KD for s in seeds]
    records = study.run(
        {
            run_key(noise, rate, m, lam, s): Job(
                student_job, cfg=cfg, noise=noise, rate=rate, teacher=teacher, method=m, seed=s, lam=lam
            )
            for m, s, lam in plan
        }
    )
    results = {(m, s, lam): records[run_key(noise, rate, m, lam, s)] for m, s, lam in plan}
    kd = {lam: [results[(KD, s, lam)] for s in seeds] for lam in LAMBDAS}
    best = max(LAMBDAS, key=lambda lam: statistics.mean(r["accuracy"] for r in kd[lam]))
    kd_time = statistics.mean(r["step_time"] for r in kd[0.5])
    runs = {method: [results[(method, s, None)] for s in seeds] for method in methods if method != KD}
    runs[KD] = kd[best]
    rows = []
    for method in methods:
        mine = runs[method]
        acc_mean, acc_std = mean_std([r["accuracy"] for r in mine])
        row = {
            "method": method,
            "noise": noise,
            "rate": rate,
            "accuracy_mean": acc_mean,
            "accuracy_std": acc_std,
            "step_time_vs_kd": statistics.mean(r["step_time"] for r in mine) / kd_time,
            "step_time_ms": 1000 * statistics.mean(r["step_time"] for r in mine),
            "seeds": len(mine),
            "realised_rate": dm.noise_report["realised_rate"],
        }
        if method == KD:
            row["lambda"] = best
            row["kd_grid"] = {str(lam): mean_std([r["accuracy"] for r in kd[lam]])[0] for lam in LAMBDAS}
        for key in ("lambda_flipped", "lambda_clean"):
            if key in mine[0]:
                row[key] = statistics.mean(r[key] for r in mine)
        rows.append(row)
    return rows


def plot(rows: list[dict]):
    def draw(path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for method in dict.fromkeys(r["method"] for r in rows):
            sym = sorted(
                (r for r in rows if r["method"] == method and r["noise"] == "symmetric"), key=lambda r: r["rate"]
            )
            if sym:
                ax.errorbar(
                    [r["rate"] * 100 for r in sym],
                    [r["accuracy_mean"] * 100 for r in sym],
                    yerr=[r["accuracy_std"] * 100 for r in sym],
                    marker="o",
                    capsize=3,
                    label=method,
                )
            for r in rows:
                if r["method"] == method and r["noise"] == "asymmetric":
                    ax.scatter([r["rate"] * 100 + 1.5], [r["accuracy_mean"] * 100], marker="x")
        ax.set_xlabel("symmetric label noise (%)  [x: 40% asymmetric]")
        ax.set_ylabel("clean test accuracy (%)")
        ax.set_title("Rotten Tomatoes, 2-layer MiniLM student, noisy MiniLM-L6 teacher")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    return draw


def write(study: Study, rows: list[dict], cfg, minutes: float | None) -> None:
    def pct(v):
        return f"{100 * v:.2f}"

    table = [
        {
            "noise": f"{r['noise']} {int(round(r['rate'] * 100))}%",
            "method": r["method"] + (f" (lambda={r['lambda']})" if "lambda" in r else ""),
            "acc": f"{pct(r['accuracy_mean'])} ± {pct(r['accuracy_std'])}",
            "seeds": r["seeds"],
            "time": f"{r['step_time_vs_kd']:.2f}x",
            "lf": f"{r['lambda_flipped']:.3f}" if "lambda_flipped" in r else None,
            "lc": f"{r['lambda_clean']:.3f}" if "lambda_clean" in r else None,
        }
        for r in rows
    ]
    took = "" if minutes is None else f"{minutes:.0f} min, "
    intro = (
        f"`python -m benchmarks.noisy.run` ({took}one torch thread per student run, {cfg.workers} run(s) at a "
        "time).\n\n"
        f"Rotten Tomatoes (first {cfg.train_examples} training rows; 10 % carved as the clean validation split before "
        f"any corruption, the rest corrupted), max_length {cfg.max_length}, batch 32. Teacher: packaged "
        f"all-MiniLM-L6-v2 fine-tuned {cfg.teacher_epochs} epoch(s) on the noisy labels. Student: its first and last "
        f"layers (TruncatedTeacher(2)), word embeddings frozen, AdamW lr {cfg.lr}, {cfg.epochs} epochs, T = 4, teacher "
        "logits cached. ALM-KD: lambda initialised at 0.9, meta step every training step, look-ahead step = current "
        f"lr, SGD meta lr {cfg.meta_lr} on sigmoid logits with per-batch normalised meta-gradient (mixing net: Adam, "
        f"lr {cfg.net_meta_lr}). KD row: the best of lambda in {{0.3, 0.5, 0.9}} by mean test accuracy over the same "
        "seeds (the grid is in the JSON). Mean lambda (weight on the teacher term) on flipped / clean training "
        "examples: as used in the last epoch's steps. Step time vs KD: median training-step time (meta step "
        "included) over runs of each method interleaved round-robin after the study (the study's own per-run means "
        "are in the JSON as step_time_vs_kd_in_study).\n\n"
        f"Majority class (always predicting the most frequent test label) scores {pct(majority_accuracy())} % on "
        "this test split."
    )
    study.write(
        rows,
        [
            ("noise", "noise"),
            ("method", "method"),
            ("acc", "clean test acc. (%) mean ± std"),
            ("seeds", "seeds"),
            ("time", "step time vs KD"),
            ("lf", "mean lambda (flipped)"),
            ("lc", "mean lambda (clean)"),
        ],
        title="Noisy labels: CE vs fixed-lambda KD vs ALM-KD",
        intro=intro,
        plot=plot(rows),
        table_rows=table,
    )


def majority_accuracy() -> float:
    from collections import Counter

    labels = RottenTomatoesDataModule().load_split("test")["labels"]
    return max(Counter(labels).values()) / len(labels)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (results in a temp folder)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=3, help="seeds at 40%% symmetric noise")
    parser.add_argument("--other-seeds", type=int, default=3, help="seeds at the other noise settings")
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="student runs in parallel, one process and one torch thread each (1: in this process)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="also keep the settings of results/noisy.json that already have enough seeds (runs "
        "recorded in noisy_runs.json are always kept) and the interleaved step times",
    )
    parser.add_argument(
        "--timing-only",
        action="store_true",
        help="only re-measure step times (interleaved) and rewrite the existing results/noisy.*",
    )
    parser.add_argument("--results", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = argparse.Namespace(
        train_examples=1200,
        max_length=40,
        epochs=2,
        teacher_epochs=1,
        lr=2e-4,
        meta_lr=1.0,
        net_meta_lr=0.01,
        work=cache_dir() / "noisy_study",
        workers=args.workers,
    )
    settings = SETTINGS
    if args.quick:
        cfg.train_examples, cfg.epochs, settings = 200, 1, [("symmetric", 0.4)]
        args.seeds = 1
    results = args.results or (Path(tempfile.mkdtemp(prefix="noisy_quick_")) if args.quick else RESULTS)
    study = Study("noisy", workers=args.workers, results=results)
    rows_file = study.results / "noisy.json"
    if args.timing_only:
        rows = json.loads(rows_file.read_text())
        apply_timing(rows, interleaved_timing(cfg))
        write(study, rows, cfg, None)
        return
    earlier = json.loads(rows_file.read_text()) if args.resume else []
    start = time.perf_counter()
    rows: list[dict] = []
    for noise, rate in settings:
        main_setting = (noise, rate) == ("symmetric", 0.4)
        seeds = list(range(args.seeds if main_setting else args.other_seeds))
        methods = list(METHODS) if main_setting else [m for m in METHODS if "all-param" not in m]
        kept = [r for r in earlier if (r["noise"], r["rate"]) == (noise, rate) and r["seeds"] >= len(seeds)]
        rows += kept if len(kept) == len(methods) else study_setting(study, cfg, noise, rate, seeds, methods)
        study.log(f"{noise} {rate}: done at {(time.perf_counter() - start) / 60:.1f} min")
    if args.resume:  # the interleaved step times of the earlier study, per method
        timing = {r["method"]: r["step_time_ms_interleaved"] for r in earlier if "step_time_ms_interleaved" in r}
    else:
        timing = interleaved_timing(cfg) if not args.quick else {}
    if timing:
        apply_timing(rows, timing)
    write(study, rows, cfg, (time.perf_counter() - start) / 60)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
