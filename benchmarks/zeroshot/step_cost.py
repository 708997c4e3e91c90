"""What caching the teacher's out-of-domain logits saves in a zero-shot student step (one command).

    python -m benchmarks.zeroshot.step_cost [--steps 30] [--rounds 3]

The teacher's outputs on the fixed out-of-domain inputs never change, so ``cache_teacher_logits: true`` computes
them once (keyed by teacher and corpus) and the teacher runs live only on the generator's rewrites. This times
student steps (``inputs: both``: out-of-domain + rewrite; generator_steps 0 so every batch is a student step) of
the quickstart teacher (MiniLM-L6), the packaged MiniLM generator and the compact 10x student of the zero-shot
study, batch 32 x 32 tokens, on CPU, with and without the cache, in interleaved rounds (median step time per
round, then the median over rounds). Writes benchmarks/results/zeroshot_step_cost.{md,json,png}.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from benchmarks.common import fine_tuned_rt_teacher
from benchmarks.study import Study

CORPUS_LINES = 2000


def timed_fit(teacher: str, cache: bool, steps: int, work: Path) -> list[float]:
    from lightning import Callback, Trainer, seed_everything

    from benchmarks.zeroshot.compact import ARCH, EMBEDDING
    from kdlight.assets import PACKAGED_WIKI_SUMMARIES
    from kdlight.data import OutOfDomainCorpus, RottenTomatoesDataModule, ZeroShotDataModule
    from kdlight.models.compact import CompressedEmbeddingStudent
    from kdlight.models.students import FreshStudent
    from kdlight.modules import ZeroShotAdversarialKD

    class StepTimes(Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_batch_start(self, *args) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, *args) -> None:
            self.times.append(time.perf_counter() - self.start)

    seed_everything(0, verbose=False)
    data = ZeroShotDataModule(
        task=RottenTomatoesDataModule(),
        corpus=OutOfDomainCorpus(source=PACKAGED_WIKI_SUMMARIES),
        tokenizer=teacher,
        max_length=32,
        batch_size=32,
        max_train_examples=CORPUS_LINES,
    )
    student = CompressedEmbeddingStudent(
        FreshStudent(**ARCH), embedding_rank=EMBEDDING, layout="albert", factorise_from="student"
    )
    module = ZeroShotAdversarialKD(
        teacher=teacher,
        student=student,
        generator="packaged/all-MiniLM-L6-v2",
        inputs="both",
        generator_steps=0,
        student_steps=100,
        task=data.task,
        cache_teacher_logits=cache,
        show_rewrites_every=0,
        teacher_cache_dir=str(work / "teacher_logits"),
        export_dir=str(work / "export"),
    )
    clock = StepTimes()
    trainer = Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        accelerator="cpu",
        callbacks=[clock],
        default_root_dir=work,
    )
    trainer.fit(module, datamodule=data)
    return clock.times[2:]  # the first steps warm up allocators


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    teacher = str(fine_tuned_rt_teacher())
    work = Path("runs/benchmarks/zeroshot_step_cost")
    timed_fit(teacher, True, 3, work)  # fills the cache once, outside the timed rounds
    medians: dict[str, list[float]] = {"live teacher": [], "cached out-of-domain logits": []}
    for _ in range(args.rounds):
        for name, cache in (("live teacher", False), ("cached out-of-domain logits", True)):
            medians[name].append(statistics.median(timed_fit(teacher, cache, args.steps, work)))
    live = statistics.median(medians["live teacher"])
    rows = [
        {
            "setting": name,
            "step_seconds": statistics.median(values),
            "rounds": values,
            "ratio_to_live": statistics.median(values) / live,
        }
        for name, values in medians.items()
    ]

    def plot(path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.bar([r["setting"] for r in rows], [r["step_seconds"] for r in rows], color=["C0", "C2"])
        ax.set_ylabel("seconds per student step (median)")
        fig.tight_layout()
        fig.savefig(path, dpi=120)

    Study("zeroshot_step_cost").write(
        rows,
        [
            ("setting", "teacher on out-of-domain inputs"),
            ("step_seconds", "s / student step"),
            ("ratio_to_live", "ratio to live"),
        ],
        title="Zero-shot student step: live teacher vs cached out-of-domain logits",
        intro=f"{args.rounds} interleaved rounds of {args.steps} student steps (inputs: both), batch 32 x 32 tokens, "
        "CPU; teacher MiniLM-L6 (fine-tuned), generator MiniLM-L6, student: the zero-shot study's 10x ALBERT. "
        "Compare the two rows (measured in the same rounds), not absolute times across machines.",
        plot=plot,
    )


if __name__ == "__main__":
    main()
