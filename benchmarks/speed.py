"""Framework overhead: kdlight's VanillaKD against a hand-written PyTorch loop doing the same maths (one command).

    python -m benchmarks.speed --label after    # ~2 min on 2 CPU cores: benchmarks/results/speed.{md,json,png}
    python -m benchmarks.speed --gpu            # MiniLM shape, batch 64 and 256, bf16-mixed on CUDA: speed_gpu.*
    python -m benchmarks.speed --quick          # a 15-second smoke run (results in a temp folder)

Both train the same student from the same weights on the same batches with kdlight's losses, optimiser and
schedule; only the loop differs (kdlight: Trainer + CSVLogger as a user runs it). Tiny random BERTs at ~10, ~25 and
~100 ms a step (or MiniLM's shape with ``--gpu``); the systems take turns over rounds, each round gives one
throughput ratio over steps ``FIRST`` to ``LAST``, the figure is their median (CPU: process CPU time, one thread).
A cProfile at the smallest size says where the extra time goes. Method and numbers: docs/scale.md.
"""

from __future__ import annotations

import cProfile
import functools
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning import seed_everything
from lightning.pytorch.loggers import CSVLogger
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

from benchmarks.harness import PROFILE_CATEGORIES, StepTimer, bar_plot, interleaved, profile_summary, quiet_trainer
from benchmarks.study import RESULTS, Job, Study, markdown_table, study_parser
from kdlight.data import TextClassificationDataModule
from kdlight.losses import distillation_loss
from kdlight.models.students import TruncatedTeacher
from kdlight.modules import VanillaKD

SEED, ALPHA, TEMPERATURE, FIRST, LAST = 0, 0.5, 2.0, 7, 31
CPU_SIZES = {  # a VanillaKD step of ~10, ~25 and ~100 ms on one thread of the 2-core CI machine
    "10ms": {"hidden": 48, "layers": 2, "student_layers": 1, "batch": 8, "length": 32},
    "25ms": {"hidden": 48, "layers": 2, "student_layers": 1, "batch": 16, "length": 48},
    "100ms": {"hidden": 128, "layers": 2, "student_layers": 1, "batch": 32, "length": 64},
}
GPU_SIZES = {  # all-MiniLM-L6-v2's shape (the step time depends on the shape only), a 2-layer student
    f"gpu-b{b}": {"hidden": 384, "layers": 6, "student_layers": 2, "batch": b, "length": 64, "words": 30517}
    for b in (64, 256)
}
TARGETS = {"10ms": 0.95, "25ms": 0.97, "gpu-b64": 0.95, "gpu-b256": 0.95}  # the overhead issue's targets


def make_assets(root: Path, spec: dict) -> Path:
    """A word-level tokenizer, a random BERT teacher and CSV splits of random words, written once per size."""
    if (root / "done").is_file():
        return root
    words = [f"w{i}" for i in range(spec.get("words", 2000))]
    vocabulary = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    tokenizer = BertTokenizerFast(vocab=vocabulary)
    heads = 12 if spec["hidden"] == 384 else (4 if spec["hidden"] % 4 == 0 else 2)
    shape = dict(hidden_size=spec["hidden"], num_hidden_layers=spec["layers"], intermediate_size=4 * spec["hidden"])
    config = BertConfig(
        vocab_size=len(tokenizer), num_attention_heads=heads, max_position_embeddings=128, num_labels=2, **shape
    )
    torch.manual_seed(SEED)
    BertForSequenceClassification(config).save_pretrained(root / "teacher")
    tokenizer.save_pretrained(root / "teacher")
    rng = random.Random(SEED)
    for split, n in (("train", 2048), ("validation", 64), ("test", 64)):
        text = (
            " ".join(rng.choice(words) for _ in range(spec["length"])) + f",{'pos' if i % 2 else 'neg'}"
            for i in range(n)
        )
        (root / f"{split}.csv").write_text("\n".join(["text,label", *text]) + "\n")
    (root / "done").write_text("")
    return root


def setup(assets: Path, spec: dict):
    """The datamodule and the VanillaKD module, built as a user builds them (the same for both systems)."""
    seed_everything(SEED, verbose=False)
    splits = (("train", "train"), ("val", "validation"), ("test", "test"))
    files = {f"{key}_file": str(assets / f"{split}.csv") for key, split in splits}
    sizes = dict(max_length=spec["length"], batch_size=spec["batch"])
    dm = TextClassificationDataModule(**files, label_names=["neg", "pos"], tokenizer=str(assets / "teacher"), **sizes)
    dm.prepare_data()
    dm.setup("fit")
    student = TruncatedTeacher(spec["student_layers"])
    kd = dict(alpha=ALPHA, temperature=TEMPERATURE, weight_decay=0.0)
    return dm, VanillaKD(teacher=str(assets / "teacher"), student=student, task=dm.task, **kd)


def run_kdlight(assets: Path, spec: dict, steps: int, device: str, timer, work: Path) -> None:
    dm, module = setup(assets, spec)
    hardware = {"accelerator": "cuda", "precision": "bf16-mixed"} if device == "cuda" else {}
    logger = CSVLogger(str(work), name="speed")
    trainer = quiet_trainer(work, 1, [timer], limit_train_batches=steps, logger=logger, **hardware)
    trainer.fit(module, datamodule=dm)


def run_handwritten(assets: Path, spec: dict, steps: int, device: str, timer, work: Path) -> None:
    """The same maths on the same batches in plain PyTorch: kdlight's models, loss, optimiser and schedule."""
    dm, module = setup(assets, spec)
    module.configure_models()
    module.to(device)
    module.scheduled_steps = lambda: steps  # what Lightning's estimated_stepping_batches tells the module
    optimizers = module.configure_optimizers()
    optimizer, scheduler = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    teacher, student, kd_loss = module.teacher, module.student, distillation_loss(2, TEMPERATURE)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):  # bf16-mixed as Lightning does it
        for step, batch in enumerate(dm.train_dataloader()):
            if step == steps:
                break
            timer.on_train_batch_start()
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if hasattr(v, "to")}
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
            with torch.no_grad():
                teacher_logits = teacher(**inputs).logits
            logits = student(**inputs).logits
            loss = ALPHA * kd_loss(logits, teacher_logits) + (1 - ALPHA) * F.cross_entropy(logits, batch["labels"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            timer.on_train_batch_end()


SYSTEMS = {"handwritten": run_handwritten, "kdlight": run_kdlight}


def measure(size: str, rounds: int, steps: int, device: str, work: str) -> dict:
    """One size: both systems, ``rounds`` rounds taking turns; per clock, median step times and ratios."""
    if device == "cpu":
        torch.set_num_threads(1)
    spec = {**CPU_SIZES, **GPU_SIZES}[size]
    assets = make_assets(Path(work) / size, spec)

    def wait_for_gpu(i: int) -> None:
        if device == "cuda" and i in (FIRST, LAST):
            torch.cuda.synchronize()

    def one(system: str) -> dict[str, float]:
        timer = StepTimer(wait_for_gpu)
        with tempfile.TemporaryDirectory() as tmp:
            SYSTEMS[system](assets, spec, steps, device, timer, Path(tmp))
        stamps = {"cpu": timer.cpu_stamps, "wall": timer.stamps}
        return {clock: (t[LAST] - t[FIRST]) / (LAST - FIRST) for clock, t in stamps.items()}

    runs = interleaved({system: (lambda s=system: one(s)) for system in SYSTEMS}, rounds)
    clocks = {}
    for clock in ["wall"] if device == "cuda" else ["cpu", "wall"]:  # on a GPU the host's CPU time means little
        times = {system: [r[clock] for r in values] for system, values in runs.items()}
        ms = {f"{system}_ms": 1000 * statistics.median(values) for system, values in times.items()}
        # hand-written time / kdlight time in a round: the throughput ratio kdlight / hand-written
        ratios = [h / k for h, k in zip(times["handwritten"], times["kdlight"], strict=True)]
        clocks[clock] = {**ms, "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}
    return clocks


def profile(size: str, steps: int, work: str) -> dict:
    """Own time per library of each system over the timed steps (one run each, cProfile on process CPU time)."""
    torch.set_num_threads(1)
    spec = CPU_SIZES[size]
    assets = make_assets(Path(work) / size, spec)
    out = {}
    for system, run in SYSTEMS.items():
        profiler = cProfile.Profile(time.process_time)

        def window(i: int, profiler=profiler) -> None:
            if i in (FIRST, LAST):
                (profiler.enable if i == FIRST else profiler.disable)()

        with tempfile.TemporaryDirectory() as tmp:
            run(assets, spec, steps, "cpu", StepTimer(window), Path(tmp))
            profiler.dump_stats(str(Path(tmp) / "profile"))
            out[system] = profile_summary(Path(tmp) / "profile", LAST - FIRST)
    return out


def profile_notes(label: str, record: dict) -> str:
    hand, kd = record["handwritten"]["ms_per_step"], record["kdlight"]["ms_per_step"]
    own = [{"in": c, "hand": hand[c], "kdlight": kd[c], "extra": kd[c] - hand[c]} for c, _ in PROFILE_CATEGORIES]
    return (
        f"## {label}: where the time goes at ~{list(CPU_SIZES)[0]} (cProfile, CPU ms per step)\n\n"
        + markdown_table(own, "in=own time in; hand=hand-written; kdlight; extra")
        + "\nkdlight's top entries by own time outside the model maths and the optimiser:\n\n"
        + markdown_table(
            record["kdlight"]["top_own_time"], "where=function; ms_per_step=ms/step; calls_per_step=calls/step"
        )
    )


def main(argv: list[str] | None = None) -> list[dict]:
    parser = study_parser(__doc__, "report-only")
    parser.add_argument("--label", default="after", help="a measurement's name: its rows replace that label's")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--gpu", action="store_true", help="MiniLM-shaped models, batch 64 and 256, bf16-mixed on CUDA")
    parser.add_argument("--quick", action="store_true", help="one round at ~10 ms (results in a temp folder)")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--results", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    sizes = list(GPU_SIZES if args.gpu else CPU_SIZES)[: 1 if args.quick else None]
    rounds = 1 if args.quick else (min(args.rounds, 3) if args.gpu else args.rounds)  # a GPU call has 10 minutes
    results = args.results or (Path(tempfile.mkdtemp(prefix="kdlight_speed_")) if args.quick else RESULTS)
    study = Study("speed_gpu" if args.gpu else "speed", results=results, report_only=args.report_only)
    if not args.report_only:
        study.forget(f"{args.label}/")  # a label is measured again as a whole, in one sitting
    with tempfile.TemporaryDirectory(prefix="kdlight_speed_") as work:
        device = "cuda" if args.gpu else "cpu"
        jobs = {
            f"{args.label}/{s}": Job(measure, size=s, rounds=rounds, steps=LAST + 1, device=device, work=work)
            for s in sizes
        }
        if not (args.no_profile or args.gpu):
            jobs[f"{args.label}/profile"] = Job(profile, size=sizes[0], steps=LAST + 1, work=work)
        study.run(jobs)
    rows, notes, order = [], [], [*CPU_SIZES, *GPU_SIZES, "profile"]
    for key, record in sorted(
        study.done().items(), key=lambda kv: (kv[0].split("/")[0], order.index(kv[0].split("/")[1]))
    ):
        label, size = key.split("/")
        if size == "profile":
            notes.append(profile_notes(label, record))
            continue
        judged, target = record.get("cpu", record["wall"]), TARGETS.get(size)
        verdict = "none" if target is None else f"{'met' if judged['ratio'] >= target else 'missed'} (>= {target})"
        row = {"label": label, "size": size, "name": f"{label} ~{size}", **judged}
        row.update(range=f"{judged['ratio_min']:.3f}-{judged['ratio_max']:.3f}", target=verdict)
        clock = "cpu" if "cpu" in record else "wall"
        rows.append({**row, "clock": clock, "wall_ratio": record["wall"]["ratio"], "seconds": record["seconds"]})
    study.write(
        rows,
        "label; size; handwritten_ms=hand-written ms/step; kdlight_ms=kdlight ms/step; ratio; range; target; clock; "
        "wall_ratio=wall-time ratio",
        title="Framework overhead: kdlight's VanillaKD vs a hand-written loop" + (" (GPU)" if args.gpu else " (CPU)"),
        intro="Made by `python -m benchmarks.speed` (its docstring has the method). Ratio = throughput kdlight / "
        "hand-written, the median over rounds of the ratio within a round (range: the rounds' extremes). "
        + (
            "MiniLM-shaped random models, bf16-mixed on CUDA, wall time."
            if args.gpu
            else "Tiny random BERTs, one thread; judged on process CPU time (`clock`), wall-time ratios alongside."
        ),
        notes="\n\n".join(notes),
        plot=functools.partial(bar_plot, rows, "name", "ratio", "throughput kdlight / hand-written"),
    )
    return rows


if __name__ == "__main__":
    main()
