"""One timed training run of one system, in its own process (``run.py`` starts one per run).

    python -m benchmarks.throughput.worker --system kdlight --warmup 5 --steps 25 --out run.json

Every system trains the same student (the teacher cut to its first and last blocks) from the same
weights, on the same batches in the same order (Rotten Tomatoes train split, max_length 64, batch 32,
dynamic padding by kdlight's ``Collator``, one seeded epoch permutation), with the same AdamW
(lr 2e-4, no weight decay) and the same linear warm-up/decay schedule, and the global RNG is
re-seeded just before the first training step so that every system draws the same dropout masks.

What is written (JSON): end-of-step timestamps (after the optimiser and scheduler step) of every
step, the throughput over the timed window (samples / wall seconds, data loading and all framework
work between steps included), memory (see ``Memory``), and the student's test accuracy and test
logits after training (outside the timed window).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SEED = 42
BATCH = 32
MAX_LENGTH = 64
LR = 2e-4
WARMUP_RATIO = 0.1
TEMPERATURE = 2.0
ALPHA = 0.5  # weight of the KD term (kdlight's convention); the CE term gets 1 - ALPHA


# ------------------------------------------------------------------------------------------ memory
class Memory:
    """Resident memory of this process from /proc/self/status (Linux).

    ``start()`` records the current RSS and resets the kernel's peak-RSS mark (VmHWM, via
    ``/proc/self/clear_refs``); ``stop()`` reads the peak reached since then. ``delta_mb`` is the
    extra resident memory the training run needed on top of everything loaded before it (teacher,
    student, tokenised data, imports); ``process_peak_mb`` the process's peak RSS over its whole life.
    """

    @staticmethod
    def status() -> dict[str, float]:
        out = {}
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(("VmHWM", "VmRSS")):
                    key, value = line.split(":")
                    out[key] = int(value.split()[0]) / 1024
        return out

    def start(self) -> None:
        before = self.status()
        self.setup_peak_mb = before["VmHWM"]
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        self.baseline_mb = self.status()["VmRSS"]

    def stop(self) -> dict[str, float]:
        now = self.status()
        return {
            "baseline_rss_mb": self.baseline_mb,
            "train_peak_rss_mb": now["VmHWM"],
            "peak_mem_mb": now["VmHWM"] - self.baseline_mb,
            "process_peak_mb": max(now["VmHWM"], self.setup_peak_mb),
        }


# ----------------------------------------------------------------------------------------- shared
def lr_factor(total_steps: int):
    """kdlight's default schedule (KDLightTask.linear_warmup), reproduced for the other systems."""
    warmup = int(total_steps * WARMUP_RATIO)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def teacher_path() -> str:
    from benchmarks.common import fine_tuned_rt_teacher

    return str(fine_tuned_rt_teacher())


def task_data(teacher: str):
    from kdlight.data import RottenTomatoesDataModule

    return RottenTomatoesDataModule(tokenizer=teacher, max_length=MAX_LENGTH, batch_size=BATCH)


def models(teacher: str, label_names):
    from kdlight.models import TruncatedTeacher
    from kdlight.models.hf import load_classifier

    t = load_classifier(teacher, 2, label_names, require_head=True).eval().requires_grad_(False)
    s = TruncatedTeacher(2).build(t, 2, label_names)
    return t, s


def train_loader(dataset):
    """The loader kdlight's datamodule builds for one process: the seeded epoch permutation
    (DistributedSampler, 1 replica, seed = the run seed) and kdlight's dynamic-padding Collator."""
    from torch.utils.data import DataLoader, DistributedSampler

    from kdlight.data.base import Collator

    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=SEED)
    return DataLoader(dataset, batch_size=BATCH, sampler=sampler, collate_fn=Collator(0))


def evaluate(student, dataset) -> tuple[float, torch.Tensor]:
    import torch
    from torch.utils.data import DataLoader

    from kdlight.data.base import Collator

    student.eval()
    logits, labels = [], []
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=128, collate_fn=Collator(0)):
            labels.append(batch.pop("labels"))
            batch.pop("idx", None)
            logits.append(student(**batch).logits.float())
    logits, labels = torch.cat(logits), torch.cat(labels)
    return float((logits.argmax(-1) == labels).float().mean()), logits


class Clock:
    """End-of-step timestamps. With a profile window ``(first, last)``, cProfile runs from the end of
    step ``first - 1`` to the end of step ``last - 1`` (the same steps a timed window covers)."""

    def __init__(self, profile: tuple[int, int] | None = None) -> None:
        self.stamps: list[float] = []
        self.profile = profile
        self.profiler = None

    def tick(self) -> None:
        self.stamps.append(time.perf_counter())
        if self.profile is None:
            return
        if len(self.stamps) == self.profile[0]:
            import cProfile

            self.profiler = cProfile.Profile()
            self.profiler.enable()
        elif len(self.stamps) == self.profile[1] and self.profiler is not None:
            self.profiler.disable()


def seed_now() -> None:
    import torch

    torch.manual_seed(SEED)


# ---------------------------------------------------------------------------------------- systems
def run_handwritten(args, clock: Clock, memory: Memory, epochs: int = 1, cached: bool = False) -> dict:
    """The minimal PyTorch loop: the same math as VanillaKD, nothing else. With ``epochs=2`` it runs
    two epochs of ``--epoch-steps`` batches (like the kdlight cache rows); with ``cached`` it looks the
    teacher's logits up in the table kdlight's cache wrote (the lower bound of a cached step)."""
    import torch
    import torch.nn.functional as F

    from kdlight.teacher_cache import TeacherLogitCache

    teacher_dir = teacher_path()
    dm = task_data(teacher_dir)
    train = dm.tokenize_split("train")
    teacher, student = models(teacher_dir, dm.label_names)
    cache = None
    if cached:
        cache, _, _ = TeacherLogitCache.load_or_compute(
            teacher, train, None, torch.device("cpu"), Path(args.cache_dir), compute=False
        )
    memory.start()
    loader = train_loader(train)
    steps_per_epoch = args.total_steps if epochs == 1 else args.epoch_steps
    total = steps_per_epoch * epochs
    optimizer = torch.optim.AdamW(student.parameters(), lr=LR, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(total))
    student.train()
    t = TEMPERATURE
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        for step, batch in enumerate(loader):
            if step == steps_per_epoch:
                break
            if epoch == 0 and step == 0:
                seed_now()
            labels = batch.pop("labels")
            idx = batch.pop("idx")
            if cache is not None:
                teacher_logits = cache.lookup(idx)
            else:
                with torch.no_grad():
                    teacher_logits = teacher(**batch).logits
            logits = student(**batch).logits
            log_p_s = F.log_softmax(logits.float() / t, dim=-1)
            log_p_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
            kd = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean() * t * t
            loss = ALPHA * kd + (1 - ALPHA) * F.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            clock.tick()
    return {"student": student, "dm": dm}


def kdlight_args(
    args, work: Path, teacher_dir: str, model: list[str], data: list[str], trainer: list[str] = ()
) -> list[str]:
    return [
        f"--seed_everything={SEED}",
        *model,
        f"--model.init_args.export_dir={work / 'export'}",
        "--model.init_args.export_best=false",
        *data,
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        f"--trainer.default_root_dir={work}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0",
        "--checkpoint.save_top_k=0",
        "--checkpoint.save_last=false",
        *trainer,
    ]


def vanilla_args(args, work: Path, teacher_dir: str, cached: bool = False) -> list[str]:
    model = [
        "--model=VanillaKD",
        f"--model.init_args.teacher={teacher_dir}",
        "--model.init_args.student=TruncatedTeacher",
        "--model.init_args.student.init_args.num_layers=2",
        f"--model.init_args.alpha={ALPHA}",
        f"--model.init_args.temperature={TEMPERATURE}",
        f"--model.init_args.learning_rate={LR}",
        "--model.init_args.weight_decay=0.0",
        f"--model.init_args.warmup_ratio={WARMUP_RATIO}",
        f"--model.init_args.cache_teacher_logits={str(cached).lower()}",
    ]
    if cached:
        model.append(f"--model.init_args.teacher_cache_dir={args.cache_dir}")
    data = [
        "--data=RottenTomatoesDataModule",
        f"--data.init_args.max_length={MAX_LENGTH}",
        f"--data.init_args.batch_size={BATCH}",
    ]
    return kdlight_args(args, work, teacher_dir, model, data)


def lightning_clock(clock: Clock, kinds: list | None = None):
    from lightning import Callback

    class StepClock(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == 0 and batch_idx == 0:
                seed_now()
            if kinds is not None:  # ZeroShotAdversarialKD: is this a generator or a student step?
                kinds.append("generator" if module.is_generator_step() else "student")

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            clock.tick()

    return StepClock()


def run_kdlight_cli(args, clock: Clock, memory: Memory, cli_args: list[str], kinds: list | None = None) -> dict:
    from benchmarks.common import run_cli

    sys.argv = sys.argv[:1]  # LightningCLI warns when it is given args and also sees this process's argv
    runner = run_cli(cli_args)
    trainer, model = runner.trainer, runner.model
    trainer.callbacks.append(lightning_clock(clock, kinds))
    memory.start()
    fit_start = time.perf_counter()
    trainer.fit(model, datamodule=runner.datamodule)
    extra = {"fit_s": time.perf_counter() - fit_start}
    if getattr(model, "teacher_cache", None) is not None:
        extra["cache_rows"] = int(model.teacher_cache.present.sum())
    return {"student": model.student, "dm": None, "extra": extra, "model": model}


def run_kdlight(args, clock, memory):
    work = Path(args.work)
    cli_args = vanilla_args(args, work, teacher_path(), cached=False) + [f"--trainer.max_steps={args.total_steps}"]
    return run_kdlight_cli(args, clock, memory, cli_args)


def run_kdlight_epochs(args, clock, memory, cached: bool):
    """Two short epochs (``--epoch-steps`` batches each); run.py times the second one."""
    work = Path(args.work)
    cli_args = vanilla_args(args, work, teacher_path(), cached=cached) + [
        "--trainer.max_epochs=2",
        f"--trainer.limit_train_batches={args.epoch_steps}",
        "--trainer.log_every_n_steps=50",
    ]
    t0 = time.perf_counter()
    out = run_kdlight_cli(args, clock, memory, cli_args)
    out["extra"]["time_to_first_step_s"] = clock.stamps[0] - t0 if clock.stamps else None
    return out


def run_alm(args, clock, memory):
    """AdaptiveLossMixingKD as configs/noisy/alm.yaml (table mixer, last-layer look-ahead, meta step
    every step, T = 4), on the same task, teacher and student, teacher logits *not* cached (as VanillaKD)."""
    work = Path(args.work)
    teacher_dir = teacher_path()
    model = [
        "--model=AdaptiveLossMixingKD",
        f"--model.init_args.teacher={teacher_dir}",
        "--model.init_args.student=TruncatedTeacher",
        "--model.init_args.student.init_args.num_layers=2",
        "--model.init_args.mixer=table",
        "--model.init_args.init_lambda=0.9",
        "--model.init_args.temperature=4.0",
        "--model.init_args.lookahead=last_layer",
        "--model.init_args.meta_every=1",
        "--model.init_args.meta_interval=step",
        "--model.init_args.meta_warmup=0",
        "--model.init_args.meta_steps=1",
        "--model.init_args.meta_learning_rate=1.0",
        "--model.init_args.cache_teacher_logits=false",
        f"--model.init_args.learning_rate={LR}",
        "--model.init_args.weight_decay=0.0",
        f"--model.init_args.warmup_ratio={WARMUP_RATIO}",
    ]
    data = [
        "--data=NoisyLabelDataModule",
        "--data.init_args.datamodule=RottenTomatoesDataModule",
        "--data.init_args.noise_type=symmetric",
        "--data.init_args.noise_rate=0.4",
        "--data.init_args.clean_val_size=0.1",
        "--data.init_args.seed=0",
        f"--data.init_args.max_length={MAX_LENGTH}",
        f"--data.init_args.batch_size={BATCH}",
    ]
    # ALM steps two optimisers per batch (Lightning counts both in global_step): limit batches instead
    cli_args = kdlight_args(
        args,
        work,
        teacher_dir,
        model,
        data,
        ["--trainer.max_steps=-1", "--trainer.max_epochs=1", f"--trainer.limit_train_batches={args.total_steps}"],
    )
    return run_kdlight_cli(args, clock, memory, cli_args)


def run_zeroshot(args, clock, memory):
    """ZeroShotAdversarialKD from configs/zeroshot/offline.yaml (the quickstart teacher swapped for the
    benchmark's, which is the same recipe), with shorter generator/student cycles so that both kinds
    of step fall in the timed window; run.py reports each kind's time and the recipe's 10:100 mix."""
    from benchmarks.common import CONFIGS

    work = Path(args.work)
    teacher_dir = teacher_path()
    cli_args = [
        "--config",
        str(CONFIGS / "zeroshot" / "offline.yaml"),
        f"--model.init_args.teacher={teacher_dir}",
        f"--model.init_args.generator_steps={args.zs_generator_steps}",
        f"--model.init_args.student_steps={args.zs_student_steps}",
        "--trainer.max_steps=-1",
        "--trainer.max_epochs=1",
        f"--trainer.limit_train_batches={args.total_steps}",
        f"--data.init_args.batch_size={BATCH}",
        f"--data.init_args.max_length={MAX_LENGTH}",
    ]
    cli_args += kdlight_args(args, work, teacher_dir, [], [])
    kinds: list[str] = []
    out = run_kdlight_cli(args, clock, memory, cli_args, kinds)
    out["extra"]["step_kinds"] = kinds
    return out


def run_textbrewer(args, clock: Clock, memory: Memory) -> dict:
    """textbrewer's BasicDistiller: soft cross-entropy at T (``kd_loss_type='ce'``: the KL plus the
    teacher's entropy, a constant, so the same gradients) weighted alpha * T^2 (textbrewer does not
    scale by T^2 itself), plus the hard-label CE (the student's own HF loss) weighted 1 - alpha."""
    import torch

    from benchmarks.throughput.stubs import install_tensorboardx_stub

    teacher_dir = teacher_path()
    dm = task_data(teacher_dir)
    train = dm.tokenize_split("train")
    teacher, student = models(teacher_dir, dm.label_names)
    stubbed = install_tensorboardx_stub()
    from textbrewer import BasicDistiller, DistillationConfig, TrainingConfig

    memory.start()
    loader = train_loader(train)
    optimizer = torch.optim.AdamW(student.parameters(), lr=LR, weight_decay=0.0)

    class TimedLambdaLR(torch.optim.lr_scheduler.LambdaLR):
        """textbrewer steps the scheduler right after each optimiser step: our end-of-step clock."""

        def step(self, *a, **k):
            super().step(*a, **k)
            if getattr(self, "_timing", False):
                clock.tick()

    def scheduler_class(optimizer, lr_lambda):
        scheduler = TimedLambdaLR(optimizer, lr_lambda)
        scheduler._timing = True
        return scheduler

    first = [True]

    def batch_postprocessor(batch):
        batch = dict(batch)
        batch.pop("idx")
        if first[0]:
            first[0] = False
            seed_now()
        return batch  # labels stay in: the HF model computes the hard-label CE

    train_config = TrainingConfig(
        device="cpu", ckpt_steps=args.total_steps, output_dir=str(Path(args.work) / "textbrewer"), log_dir=None
    )
    distill_config = DistillationConfig(
        temperature=TEMPERATURE, kd_loss_type="ce", kd_loss_weight=ALPHA * TEMPERATURE**2, hard_label_weight=1 - ALPHA
    )
    distiller = BasicDistiller(
        train_config,
        distill_config,
        teacher,
        student,
        adaptor_T=lambda batch, out: {"logits": out.logits},
        adaptor_S=lambda batch, out: {"logits": out.logits, "losses": out.loss},
    )
    with distiller:
        distiller.train(
            optimizer,
            loader,
            num_steps=args.total_steps,
            scheduler_class=scheduler_class,
            scheduler_args={"lr_lambda": lr_factor(args.total_steps)},
            batch_postprocessor=batch_postprocessor,
        )
    return {"student": student, "dm": dm, "extra": {"tensorboardX_stub": stubbed}}


def run_torchdistill(args, clock: Clock, memory: Memory) -> dict:
    """torchdistill's DistillationBox from a config dict: forward hooks on both classifiers, its
    ``KDLoss`` (alpha * CE + (1 - alpha) * T^2 * KL(batchmean); torchdistill's alpha weighs the CE term,
    so alpha = 1 - ALPHA), its optimiser/scheduler registries, its data-loader builder."""
    import torch
    from torch.utils.data import DistributedSampler

    from benchmarks.throughput.stubs import install_torchvision_stub
    from kdlight.data.base import Collator

    teacher_dir = teacher_path()
    dm = task_data(teacher_dir)
    train = dm.tokenize_split("train")
    teacher, student = models(teacher_dir, dm.label_names)
    # only now: datasets/transformers have recorded (at their import) that torchvision is absent
    stubbed = install_torchvision_stub()
    from torchdistill.core.distillation import get_distillation_box
    from torchdistill.datasets.registry import register_collate_func

    memory.start()
    register_collate_func(Collator(0))
    hook = {"input": [], "output": ["classifier"]}
    kd = {
        "student_module_path": "classifier",
        "student_module_io": "output",
        "teacher_module_path": "classifier",
        "teacher_module_io": "output",
        "temperature": TEMPERATURE,
        "alpha": 1 - ALPHA,
        "reduction": "batchmean",
    }
    train_config = {
        "num_epochs": 1,
        "train_data_loader": {
            "dataset_id": "train",
            "requires_supp": False,
            "collate_fn": "Collator",
            "sampler": {
                "class_or_func": DistributedSampler,
                "kwargs": {"num_replicas": 1, "rank": 0, "shuffle": True, "seed": SEED},
            },
            "kwargs": {"batch_size": BATCH, "num_workers": 0},
        },
        "teacher": {"forward_proc": "forward_batch_only_as_kwargs", "forward_hook": hook, "requires_grad": False},
        "student": {"forward_proc": "forward_batch_only_as_kwargs", "forward_hook": hook, "requires_grad": True},
        "optimizer": {"key": "AdamW", "kwargs": {"lr": LR, "weight_decay": 0.0}},
        "scheduler": {"key": "LambdaLR", "kwargs": {"lr_lambda": lr_factor(args.total_steps)}, "scheduling_step": 1},
        "criterion": {
            "key": "WeightedSumLoss",
            "kwargs": {"sub_terms": {"kd": {"criterion": {"key": "KDLoss", "kwargs": kd}, "weight": 1.0}}},
        },
    }
    box = get_distillation_box(teacher, student, {"train": train}, train_config, torch.device("cpu"), None, False, 1)
    box.pre_epoch_process(epoch=0)
    for step, batch in enumerate(box.train_data_loader):
        if step == args.total_steps:
            break
        if step == 0:
            seed_now()
        targets = batch.pop("labels")
        batch.pop("idx")
        loss = box.forward_process(batch, targets=targets, supp_dict=None)
        box.post_forward_process(loss=loss)
        clock.tick()
    return {"student": student, "dm": dm, "extra": {"torchvision_stub": stubbed}}


SYSTEMS = {
    "handwritten": run_handwritten,
    "kdlight": run_kdlight,
    "textbrewer": run_textbrewer,
    "torchdistill": run_torchdistill,
    "kdlight_uncached_2ep": lambda a, c, m: run_kdlight_epochs(a, c, m, cached=False),
    "kdlight_cached_2ep": lambda a, c, m: run_kdlight_epochs(a, c, m, cached=True),
    "handwritten_cached_2ep": lambda a, c, m: run_handwritten(a, c, m, epochs=2, cached=True),
    "alm": run_alm,
    "zeroshot": run_zeroshot,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--system", required=True, choices=sorted(SYSTEMS))
    parser.add_argument("--total-steps", type=int, default=30)
    parser.add_argument("--epoch-steps", type=int, default=12)
    parser.add_argument("--zs-generator-steps", type=int, default=2)
    parser.add_argument("--zs-student-steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--work", default=None)
    parser.add_argument("--no-eval", action="store_true")
    parser.add_argument(
        "--profile-window",
        type=int,
        nargs=2,
        default=None,
        metavar=("FIRST", "LAST"),
        help="cProfile steps FIRST..LAST-1 and write the stats next to --out (.prof)",
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    start = time.perf_counter()
    clock, memory = Clock(tuple(args.profile_window) if args.profile_window else None), Memory()
    with tempfile.TemporaryDirectory(prefix="kdlight_throughput_") as tmp:
        args.work = args.work or tmp
        out = SYSTEMS[args.system](args, clock, memory)
        mem = memory.stop()
        if clock.profiler is not None:
            clock.profiler.disable()
            clock.profiler.dump_stats(str(Path(args.out).with_suffix(".prof")))
        result = {
            "system": args.system,
            "stamps": clock.stamps,
            **mem,
            "extra": out.get("extra", {}),
            "threads": torch.get_num_threads(),
            "loadavg_end": os.getloadavg()[0],
        }
        if not args.no_eval:
            dm = out["dm"] or task_data(teacher_path())
            accuracy, logits = evaluate(out["student"], dm.tokenize_split("test"))
            result["accuracy"] = accuracy
            logits_path = Path(args.out).with_suffix(".logits.pt")
            torch.save(logits, logits_path)
            result["logits"] = str(logits_path)
    result["wall_s"] = time.perf_counter() - start
    Path(args.out).write_text(json.dumps(result))
    steps = [b - a for a, b in zip(clock.stamps, clock.stamps[1:], strict=False)]
    median = statistics.median(steps) if steps else float("nan")
    print(
        f"[throughput] {args.system}: {len(clock.stamps)} steps, median step {median:.3f}s, "
        f"peak +{mem['peak_mem_mb']:.0f} MB, acc {result.get('accuracy')}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
