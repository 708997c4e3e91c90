"""ManualOptimization: the variant in docs/architecture.md runs as written, and the one rule kdlight reads
from Lightning without a public API (when it logs a training step) agrees with Lightning's own decision."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from lightning import Trainer, seed_everything

from kdlight.models.students import TruncatedTeacher
from kdlight.modules import VanillaKD
from kdlight.modules.task import lightning_logs_now

ARCHITECTURE_DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def documented_variant() -> type:
    """The class the docs show, executed from the docs' own text."""
    match = re.search(r"<!-- variant-with-own-loop -->\n```python\n(.*?)```", ARCHITECTURE_DOC.read_text(), re.S)
    assert match, "docs/architecture.md lost its variant with its own optimisation loop"
    code = match.group(1)
    assert len(code.strip().splitlines()) < 40  # the bound: a variant with its own loop in under 40 lines
    namespace: dict = {}
    exec(compile(code, "docs/architecture.md", "exec"), namespace)  # noqa: S102  (the docs' own example)
    return namespace["CurriculumTemperatureKD"]


def task_data(assets):
    from kdlight.data import TextClassificationDataModule

    d = assets["data"]
    return TextClassificationDataModule(
        train_file=str(d / "train.csv"),
        val_file=str(d / "validation.csv"),
        test_file=str(d / "test.csv"),
        tokenizer=str(assets["tokenizer"]),
        max_length=32,
        batch_size=8,
    )


def quiet_trainer(tmp_path, **kwargs) -> Trainer:
    return Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=str(tmp_path),
        **kwargs,
    )


def test_the_documented_variant_trains_both_optimisers_and_max_steps_counts_student_updates(assets, tmp_path):
    seed_everything(0)
    variant = documented_variant()
    dm = task_data(assets)
    module = variant(teacher=str(assets["teacher"]), student=TruncatedTeacher(1), temperature_lr=0.5, task=dm.task)
    student = {k: v.clone() for k, v in module.student.state_dict().items()}
    trainer = quiet_trainer(tmp_path, max_steps=3)
    trainer.fit(module, datamodule=dm)
    # 3 batches: 3 student updates (what max_steps counts), 3 temperature updates (outside Lightning's count)
    assert trainer.global_step == 3 and module.progress.tolist() == [3, 3, 3, 0]
    assert float(module.log_temperature) > 0  # ascending the KD loss raised the temperature above 1
    assert any(not torch.equal(student[k], v) for k, v in module.student.state_dict().items())
    assert all(not k.startswith("teacher.") for k in module.student.state_dict())
    assert "train/temperature" in trainer.callback_metrics and "train/temperature_steps" in trainer.callback_metrics


@pytest.mark.parametrize("manual", [False, True])
def test_when_kdlight_logs_a_step_is_when_lightning_sends_it_to_the_logger(assets, tmp_path, manual):
    """kdlight skips building its train/* values on steps Lightning would not send; Lightning decides that in
    a private method (``trainer._logger_connector.should_update_logs``). This pins kdlight's public reading."""
    seed_everything(0)
    dm = task_data(assets)
    common = dict(teacher=str(assets["teacher"]), student=TruncatedTeacher(1), task=dm.task)
    module = documented_variant()(**common) if manual else VanillaKD(**common)
    decisions: list[tuple[bool, bool]] = []
    original = module.training_step

    def recorded(batch, batch_idx):
        trainer = module.trainer
        decisions.append(
            (lightning_logs_now(trainer, module.automatic_optimization), trainer._logger_connector.should_update_logs)
        )
        return original(batch, batch_idx)

    module.training_step = recorded
    quiet_trainer(tmp_path, max_epochs=2, limit_train_batches=5, log_every_n_steps=3).fit(module, datamodule=dm)
    assert len(decisions) == 10 and any(ours for ours, _ in decisions)
    assert [ours for ours, _ in decisions] == [lightnings for _, lightnings in decisions]
