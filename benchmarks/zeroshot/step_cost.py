"""What caching the teacher's out-of-domain logits saves in a zero-shot student step (one command).

    python -m benchmarks.zeroshot.step_cost [--steps 30] [--rounds 3]

Student steps (``inputs: both``, no generator steps) of the quickstart teacher, the packaged generator and the
zero-shot study's 10x student, batch 32 x 32 tokens, CPU, with and without ``cache_teacher_logits``, in
interleaved rounds. Writes benchmarks/results/zeroshot_step_cost.{md,json,png}; kept in
zeroshot_step_cost_runs.json (delete it to measure again).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from lightning import seed_everything

from benchmarks.common import fine_tuned_rt_teacher
from benchmarks.harness import StepTimer, interleaved, quiet_trainer, step_cost_main
from benchmarks.zeroshot.compact import ARCH, EMBEDDING
from kdlight.assets import PACKAGED_WIKI_SUMMARIES
from kdlight.data import OutOfDomainCorpus, RottenTomatoesDataModule, ZeroShotDataModule
from kdlight.models.compact import CompressedEmbeddingStudent
from kdlight.models.students import FreshStudent
from kdlight.modules import ZeroShotAdversarialKD

CORPUS_LINES = 2000
WORK = Path("runs/benchmarks/zeroshot_step_cost")
SETTINGS = {"live teacher": False, "cached out-of-domain logits": True}


def timed_fit(teacher: str, cache: bool, steps: int) -> float:
    """The median step time of ``steps`` student steps (the first two, which warm up allocators, left out)."""
    seed_everything(0, verbose=False)
    corpus = OutOfDomainCorpus(source=PACKAGED_WIKI_SUMMARIES)
    sizes = dict(tokenizer=teacher, max_length=32, batch_size=32, max_train_examples=CORPUS_LINES)
    data = ZeroShotDataModule(task=RottenTomatoesDataModule(), corpus=corpus, **sizes)
    student = CompressedEmbeddingStudent(FreshStudent(**ARCH), EMBEDDING, layout="albert", factorise_from="student")
    # every batch a student step (no generator steps): out-of-domain inputs and the packaged generator's rewrites
    batches = dict(
        inputs="both", generator_steps=0, student_steps=100, show_rewrites_every=0, cache_teacher_logits=cache
    )
    paths = dict(teacher_cache_dir=str(WORK / "teacher_logits"), export_dir=str(WORK / "export"))
    module = ZeroShotAdversarialKD(
        teacher=teacher, student=student, generator="packaged/all-MiniLM-L6-v2", task=data.task, **batches, **paths
    )
    timer = StepTimer()
    quiet_trainer(WORK, epochs=-1, max_steps=steps, callbacks=[timer]).fit(module, datamodule=data)
    return statistics.median(timer.times[2:])


def measure(steps: int, rounds: int) -> dict:
    teacher = str(fine_tuned_rt_teacher())
    timed_fit(teacher, True, 3)  # fills the cache once, outside the timed rounds
    settings = {name: (lambda c=cache: timed_fit(teacher, c, steps)) for name, cache in SETTINGS.items()}
    return interleaved(settings, rounds)


def main(argv: list[str] | None = None) -> list[dict]:
    columns = "setting=teacher on out-of-domain inputs; step_seconds=s / student step; ratio_to_live=ratio to live"
    intro = (
        "{rounds} interleaved rounds of {steps} student steps (inputs: both), batch 32 x 32 tokens, CPU; teacher "
        "MiniLM-L6 (fine-tuned), generator MiniLM-L6, student: the zero-shot study's 10x ALBERT. Compare the two rows "
        "(measured in the same rounds), not absolute times across machines."
    )
    title = "Zero-shot student step: live teacher vs cached out-of-domain logits"
    spec = dict(names=list(SETTINGS), table=("setting", "ratio_to_live", columns), title=title, intro=intro)
    plot = ("step_seconds", "seconds per student step (median)")
    return step_cost_main(argv, __doc__, "zeroshot_step_cost", measure, {"steps": 30, "rounds": 3}, plot=plot, **spec)


if __name__ == "__main__":
    main()
