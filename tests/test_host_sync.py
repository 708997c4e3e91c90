"""No host sync inside a training step: every module's ``training_step`` is run by a real Trainer while
the Python-level calls that read a tensor's value on the host are counted.

On a GPU each of these calls waits for every queued kernel (``.item()``, ``.tolist()``, ``bool(t)``,
``float(t)``, ``int(t)``, ``.cpu()``, ``.numpy()``, ``nonzero`` and boolean-mask indexing, whose output
size lives on the device). On CPU nothing waits, so this test counts the calls instead. Only calls
made from kdlight or Lightning code are counted: torch's own optimisers read their step counters,
which are host tensors even on a GPU. Steps that log (``KDLightTask.logs_this_step``: Lightning's
``log_every_n_steps`` cadence and a fit's last batch) may read values; every other step must not.
The CUDA twin, with ``torch.cuda.set_sync_debug_mode("error")``, is in ``test_gpu.py``.
"""

from __future__ import annotations

import functools
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from lightning import Trainer, seed_everything

from kdlight.components import AdversarialGenerator
from kdlight.data import NoisyLabelDataModule, TextClassificationDataModule
from kdlight.losses.layerwise import HiddenMSE
from kdlight.models.students import TruncatedTeacher
from kdlight.modules import (
    AdaptiveLossMixingKD,
    AdversarialAugmentedKD,
    LayerwiseKD,
    TeacherFineTuning,
    VanillaKD,
    ZeroShotAdversarialKD,
)

KDLIGHT = str(Path(__file__).resolve().parents[1] / "kdlight")
STEPS, LOG_EVERY = 6, 4  # batches 4 and 6 log; the others must be sync-free

SYNC_METHODS = [
    "item",
    "tolist",
    "__bool__",
    "__float__",
    "__int__",
    "__index__",
    "cpu",
    "numpy",
    "nonzero",
    "masked_select",
]


def _bool_index(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)


def _counted_caller() -> str | None:
    """Where kdlight or Lightning made the patched call, or None when it is not theirs to fix: torch's
    optimisers (their step counters are host tensors even on a GPU), data loading (host tensors before
    the batch moves to the device) and third-party model code (transformers' SDPA mask check, which
    every hand-written loop over the same model makes too)."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if "/torch/optim/" in name or "/torch/utils/data/" in name:
            return None
        if "/torch/" not in name:
            if name.startswith(KDLIGHT) or "/lightning/" in name:
                return f"{Path(name).name}:{frame.f_lineno} ({frame.f_code.co_name})"
            return None
        frame = frame.f_back
    return None


@contextmanager
def counting_host_reads(calls: list[str]):
    originals = {name: getattr(torch.Tensor, name) for name in SYNC_METHODS + ["__getitem__", "__setitem__"]}

    def wrap(name, original):
        @functools.wraps(original)
        def counted(self, *args, **kwargs):
            where = _counted_caller()
            if where is not None:
                calls.append(f"{name} at {where}")
            return original(self, *args, **kwargs)

        return counted

    def getitem(self, index):
        if _bool_index(index) and (where := _counted_caller()) is not None:
            calls.append(f"boolean-mask indexing at {where}")
        return originals["__getitem__"](self, index)

    def setitem(self, index, value):
        if _bool_index(index) and (where := _counted_caller()) is not None:
            calls.append(f"boolean-mask assignment at {where}")
        return originals["__setitem__"](self, index, value)

    original_nonzero = torch.nonzero
    try:
        for name in SYNC_METHODS:
            setattr(torch.Tensor, name, wrap(name, originals[name]))
        torch.Tensor.__getitem__, torch.Tensor.__setitem__ = getitem, setitem
        torch.nonzero = wrap("torch.nonzero", original_nonzero)
        yield calls
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
        torch.nonzero = original_nonzero


def host_reads_per_step(module, datamodule, tmp_path) -> list[tuple[bool, list[str]]]:
    """Run STEPS training batches; per batch: (whether Lightning logs it, the host reads made in training_step)."""
    per_step: list[tuple[bool, list[str]]] = []
    original = module.training_step

    def counted_step(batch, batch_idx):
        logs = module.logs_this_step()
        calls: list[str] = []
        with counting_host_reads(calls):
            out = original(batch, batch_idx)
        per_step.append((logs, calls))
        return out

    module.training_step = counted_step
    seed_everything(0)
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_train_batches=STEPS,
        log_every_n_steps=LOG_EVERY,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, datamodule=datamodule)
    return per_step


def task_data(assets, batch_size=8):
    d = assets["data"]
    return TextClassificationDataModule(
        train_file=str(d / "train.csv"),
        val_file=str(d / "validation.csv"),
        test_file=str(d / "test.csv"),
        tokenizer=str(assets["tokenizer"]),
        max_length=32,
        batch_size=batch_size,
    )


def fused_adamw(lr):
    return lambda params: torch.optim.AdamW(params, lr=lr, fused=True)


def vanilla(assets, tmp_path):
    dm = task_data(assets)
    return VanillaKD(teacher=str(assets["teacher"]), student=TruncatedTeacher(1), temperature=2.0, task=dm.task), dm


def vanilla_cached(assets, tmp_path):
    dm = task_data(assets)
    return VanillaKD(
        teacher=str(assets["teacher"]),
        student=TruncatedTeacher(1),
        cache_teacher_logits=True,
        teacher_cache_dir=str(tmp_path / "teacher_logits"),
        task=dm.task,
    ), dm


def layerwise(assets, tmp_path):
    dm = task_data(assets)
    return LayerwiseKD(
        teacher=str(assets["teacher"]), student=TruncatedTeacher(2), losses=[HiddenMSE()], task=dm.task
    ), dm


def teacher(assets, tmp_path):
    dm = task_data(assets)
    return TeacherFineTuning(model=str(assets["teacher"]), task=dm.task), dm


def alm(mixer):
    def build(assets, tmp_path):
        d = assets["data"]
        base = TextClassificationDataModule(
            train_file=str(d / "train.csv"), val_file=str(d / "validation.csv"), test_file=str(d / "test.csv")
        )
        dm = NoisyLabelDataModule(
            base, noise_rate=0.4, clean_val_size=16, tokenizer=str(assets["teacher"]), max_length=32, batch_size=8
        )
        return AdaptiveLossMixingKD(
            teacher=str(assets["teacher"]), student=TruncatedTeacher(1), mixer=mixer, task=dm.task
        ), dm

    return build


def zeroshot(inputs, perturbation="generator"):
    """Fused optimisers skip a non-finite step on the device; the default (foreach) ones need the host
    to decide, which is the documented fallback (see ZeroShotAdversarialKD) and the default on CPU only."""

    def build(assets, tmp_path):
        from conftest import zeroshot_datamodule

        dm = zeroshot_datamodule(assets, tmp_path)
        module = ZeroShotAdversarialKD(
            teacher=str(assets["teacher"]),
            generator=AdversarialGenerator(str(assets["encoder"]), perturbation, optimizer=fused_adamw(1e-5)),
            student=TruncatedTeacher(1),
            task=dm.task,
            generator_steps=2,
            student_steps=2,
            inputs=inputs,
            optimizer=fused_adamw(1e-4),
        )
        return module, dm

    return build


def mate(assets, tmp_path):
    """MATE-KD as its quickstart recipe runs it: the batch's teacher logits cached, the rewrite's computed."""
    dm = task_data(assets)
    return AdversarialAugmentedKD(
        teacher=str(assets["teacher"]),
        generator=AdversarialGenerator(str(assets["encoder"]), optimizer=fused_adamw(1e-5)),
        student=TruncatedTeacher(1),
        cache_teacher_logits=True,
        teacher_cache_dir=str(tmp_path / "teacher_logits"),
        task=dm.task,
        generator_steps=2,
        student_steps=2,
        optimizer=fused_adamw(1e-4),
    ), dm


MODULES = {
    "mate_kd": mate,
    "teacher": teacher,
    "vanilla_kd": vanilla,
    "vanilla_kd_cached_teacher": vanilla_cached,
    "layerwise_kd": layerwise,
    "zeroshot_both": zeroshot("both"),
    "zeroshot_random": zeroshot("adversarial", "random"),
    "zeroshot_random_tokens": zeroshot("random_tokens"),
    "alm_table": alm("table"),
    "alm_network": alm("network"),
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_training_steps_read_nothing_back_from_the_device(assets, tmp_path, name):
    module, dm = MODULES[name](assets, tmp_path)
    per_step = host_reads_per_step(module, dm, tmp_path)
    assert len(per_step) == STEPS
    # logged: every LOG_EVERY-th batch, and the fit's last batch (see KDLightTask.logs_this_step)
    assert [logs for logs, _ in per_step] == [i % LOG_EVERY == LOG_EVERY - 1 or i == STEPS - 1 for i in range(STEPS)]
    offending = {i: calls for i, (logs, calls) in enumerate(per_step) if calls and not logs}
    assert not offending, f"host reads in non-logging training steps: {offending}"


def test_fused_optimisers_skip_non_finite_steps_on_the_device(assets, tmp_path):
    """The sync-free guard of zero-shot KD: no update, the skips counted on the device, and a diverged
    run stopped at the first logging step after ``max_consecutive_skips`` (not on the very step)."""
    from kdlight.errors import KDLightError

    module, dm = zeroshot("both")(assets, tmp_path)
    module.hparams.max_consecutive_skips = 3

    class NaNLoss(torch.nn.Module):
        def forward(self, student_logits, teacher_logits):
            return (student_logits.sum() + teacher_logits.sum()) * float("nan")

    module.kd_loss = NaNLoss()
    student = {k: v.clone() for k, v in module.student.state_dict().items()}
    generator = {k: v.clone() for k, v in module.generator.state_dict().items()}
    with pytest.raises(KDLightError, match="4 non-finite losses in a row: the run has diverged"):
        host_reads_per_step(module, dm, tmp_path)  # batch 4 logs: the streak is read there
    assert module.progress.tolist() == [4, 0, 0, 4]  # 4 batches, all skipped; the 4th raised at its log check
    assert all(torch.equal(student[k], v) for k, v in module.student.state_dict().items())
    assert all(torch.equal(generator[k], v) for k, v in module.generator.state_dict().items())
