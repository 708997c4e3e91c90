"""Every LightningModule rebuilds from its own hyper-parameters and from its own checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning import Trainer

from kdlight.models import CompressedEmbeddingStudent, FreshStudent, TruncatedTeacher
from kdlight.modules import GeneralDistillation, VanillaKD


def save_checkpoint(module, path: Path) -> Path:
    """A Lightning checkpoint of ``module`` as ``fit`` writes it (its hooks run), without training."""
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], msg=key)


def test_vanilla_kd_checkpoint_of_the_quickstart_student_loads(assets, tmp_path):
    """configs/quickstart/kd.yaml's student: a spec (TruncatedTeacher) inside a spec (CompressedEmbeddingStudent)."""
    vocabulary = tmp_path / "vocabulary.txt"
    vocabulary.write_text("good movie\nbad plot\n")
    student = CompressedEmbeddingStudent(
        base=TruncatedTeacher(num_layers=1), embedding_rank=8, layout="albert", vocabulary_files=[str(vocabulary)]
    )
    module = VanillaKD(teacher=str(assets["teacher"]), student=student, tokenizer=str(assets["tokenizer"]))
    loaded = VanillaKD.load_from_checkpoint(save_checkpoint(module, tmp_path / "kd.ckpt"), weights_only=True)
    spec = loaded.student_spec
    assert isinstance(spec, CompressedEmbeddingStudent) and isinstance(spec.base, TruncatedTeacher)
    assert (spec.base.num_layers, spec.embedding_rank, spec.layout) == (1, 8, "albert")
    same_weights(loaded.student, module.student)


def test_general_distillation_rebuilds_from_its_own_hyper_parameters(assets):
    student = FreshStudent(num_hidden_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32)
    module = GeneralDistillation(
        teacher=str(assets["encoder"]), student=student, num_relation_heads=4, tokenizer=str(assets["tokenizer"])
    )
    again = GeneralDistillation(**module.hparams)
    assert isinstance(again.student_spec, FreshStudent)
    assert again.student.config.hidden_size == 16 and again.student.config.num_hidden_layers == 1
