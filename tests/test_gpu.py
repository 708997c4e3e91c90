"""Every module on a CUDA GPU: fit -> test in bf16-mixed and 32-true, side modules and the teacher-logit
cache on the device, resume from a GPU checkpoint, the export loaded back on CPU with the same
predictions, and no host sync inside a training step (``torch.cuda.set_sync_debug_mode("error")``).

Marked ``gpu``: skipped where ``torch.cuda.is_available()`` is false (CI has no GPU). Run them with
``python3 -m pytest -q -m gpu tests/test_gpu.py`` (``benchmarks/gpu/run.sh`` does, on the GPU machine).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import pytest
import torch
from lightning import Callback, Trainer, seed_everything

from kdlight.data import NoisyLabelDataModule, TextClassificationDataModule
from kdlight.losses.layerwise import HiddenMSE
from kdlight.models.students import TruncatedTeacher
from kdlight.modules import AdaptiveLossMixingKD, LayerwiseKD, TeacherFineTuning, VanillaKD, ZeroShotAdversarialKD

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

STEPS, LOG_EVERY = 6, 4


def task_data(assets):
    d = assets["data"]
    return TextClassificationDataModule(
        train_file=str(d / "train.csv"),
        val_file=str(d / "validation.csv"),
        test_file=str(d / "test.csv"),
        tokenizer=str(assets["tokenizer"]),
        max_length=32,
        batch_size=8,
    )


def build(name: str, assets, tmp_path):
    teacher = str(assets["teacher"])
    if name == "teacher":
        dm = task_data(assets)
        return TeacherFineTuning(model=teacher, task=dm.task), dm
    if name in ("vanilla_kd", "vanilla_kd_cached"):
        dm = task_data(assets)
        cache = (
            {"cache_teacher_logits": True, "teacher_cache_dir": str(tmp_path / "logits")}
            if name.endswith("cached")
            else {}
        )
        return VanillaKD(teacher=teacher, student=TruncatedTeacher(1), **cache, task=dm.task), dm
    if name == "layerwise_kd":
        dm = task_data(assets)
        return LayerwiseKD(teacher=teacher, student=TruncatedTeacher(2), losses=[HiddenMSE()], task=dm.task), dm
    if name == "zeroshot":
        from conftest import zeroshot_datamodule

        dm = zeroshot_datamodule(assets, tmp_path)
        return ZeroShotAdversarialKD(
            teacher=teacher,
            generator=str(assets["encoder"]),
            student=TruncatedTeacher(1),
            task=dm.task,
            generator_steps=2,
            student_steps=2,
        ), dm
    if name == "alm_kd":
        d = assets["data"]
        base = TextClassificationDataModule(
            train_file=str(d / "train.csv"), val_file=str(d / "validation.csv"), test_file=str(d / "test.csv")
        )
        dm = NoisyLabelDataModule(
            base, noise_rate=0.4, clean_val_size=16, tokenizer=teacher, max_length=32, batch_size=8
        )
        return AdaptiveLossMixingKD(teacher=teacher, student=TruncatedTeacher(1), task=dm.task), dm
    raise ValueError(name)


MODULES = ["teacher", "vanilla_kd", "vanilla_kd_cached", "layerwise_kd", "zeroshot", "alm_kd"]


def trainer(tmp_path, precision: str, **kwargs) -> Trainer:
    args = {
        "accelerator": "cuda",
        "devices": 1,
        "precision": precision,
        "max_steps": STEPS,
        "log_every_n_steps": LOG_EVERY,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": str(tmp_path),
    }
    args.update(kwargs)
    return Trainer(**args)


@contextmanager
def sync_free_steps(module, logged_steps: list[bool]):
    """Training steps run under ``set_sync_debug_mode("error")`` (a host sync raises), except steps
    on which Lightning logs. transformers' SDPA mask drops an all-ones padding mask after checking it
    on the host (``padding_mask.all()``): that check is the model library's, made by any loop over
    these models, and is switched off here so that only kdlight's and Lightning's code is judged."""
    import transformers.masking_utils as masking

    original_step, original_skip = module.training_step, masking._ignore_bidirectional_mask_sdpa

    def step(batch, batch_idx):
        logs = module.logs_this_step()
        logged_steps.append(logs)
        torch.cuda.set_sync_debug_mode("default" if logs else "error")
        try:
            return original_step(batch, batch_idx)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    module.training_step = step
    masking._ignore_bidirectional_mask_sdpa = lambda *args, **kwargs: False
    try:
        yield
    finally:
        module.training_step = original_step
        masking._ignore_bidirectional_mask_sdpa = original_skip


class DevicesAtTrainEnd(Callback):
    """The device types of the module's state (and of its teacher-logit cache) as training ends."""

    def on_train_end(self, trainer, module) -> None:
        self.seen = {t.device.type for t in module.state_dict().values()}
        cache = getattr(module, "teacher_cache", None)
        self.cache = {cache.logits.device.type, cache.present.device.type} if cache is not None else set()


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
@pytest.mark.parametrize("name", MODULES)
def test_fit_then_test_on_cuda_without_host_syncs(assets, tmp_path, name, precision):
    seed_everything(0)
    module, dm = build(name, assets, tmp_path)
    logged: list[bool] = []
    devices = DevicesAtTrainEnd()  # Lightning moves the module back to the CPU when fit ends
    fit = trainer(tmp_path, precision, val_check_interval=STEPS, callbacks=[devices])
    with sync_free_steps(module, logged):
        fit.fit(module, datamodule=dm)
    assert fit.global_step >= STEPS // 2 and len(logged) >= STEPS // 2 and not all(logged)
    # every parameter and buffer, registered components too (zero-shot generator, ALM's meta-learner and counter)
    assert devices.seen == {"cuda"}, devices.seen
    if name == "vanilla_kd_cached":
        assert devices.cache == {"cuda"}, devices.cache
    best = fit.checkpoint_callback.best_model_path  # "best" names the fitting trainer's checkpoint, not a new one's
    assert best
    results = trainer(tmp_path, precision).test(module, datamodule=dm, ckpt_path=best)
    assert results and math.isfinite(results[0]["test/score"])


@pytest.mark.parametrize("name", ["vanilla_kd", "zeroshot", "alm_kd"])
def test_resume_from_a_gpu_checkpoint_continues_the_run(assets, tmp_path, name):
    seed_everything(0)
    module, dm = build(name, assets, tmp_path)
    first = trainer(tmp_path, "bf16-mixed", max_steps=STEPS // 2, limit_val_batches=0)
    first.fit(module, datamodule=dm)
    last = first.checkpoint_callback.last_model_path or first.checkpoint_callback.best_model_path
    if not last:
        first.save_checkpoint(tmp_path / "last.ckpt")
        last = str(tmp_path / "last.ckpt")
    seed_everything(0)
    resumed_module, dm = build(name, assets, tmp_path)
    resumed = trainer(tmp_path, "bf16-mixed", limit_val_batches=0)
    resumed.fit(resumed_module, datamodule=dm, ckpt_path=last)
    assert resumed.global_step == STEPS
    if name == "zeroshot":
        assert int(resumed_module.progress[0]) > int(module.progress[0])
    if name == "alm_kd":
        assert int(resumed_module.meta.batches_seen[0]) > int(module.meta.batches_seen[0])


@pytest.mark.parametrize("name", ["teacher", "vanilla_kd"])
def test_gpu_export_loads_on_cpu_with_the_same_predictions(assets, tmp_path, name):
    from transformers import AutoModelForSequenceClassification

    seed_everything(0)
    module, dm = build(name, assets, tmp_path)
    module.hparams.export_dir = str(tmp_path / "export")
    trainer(tmp_path, "bf16-mixed", limit_val_batches=2).fit(module, datamodule=dm)
    batch = next(iter(dm.val_dataloader()))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    with torch.no_grad():
        predictor = module.predictor.cuda().eval()  # fit's end moved it back to the CPU
        on_gpu = predictor(**{k: v.cuda() for k, v in inputs.items()}).logits.float().cpu()
        exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export").eval()
        on_cpu = exported(**inputs).logits
    assert torch.allclose(on_gpu, on_cpu, atol=1e-4, rtol=1e-4), (on_gpu - on_cpu).abs().max()
