"""Every LightningModule rebuilds from its own hyper-parameters and from its own checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from lightning import Trainer

import kdlight.modules
from kdlight.models import CompressedEmbeddingStudent, FreshStudent, PretrainedStudent, StudentSpec, TruncatedTeacher
from kdlight.modules import GeneralDistillation, VanillaKD
from kdlight.modules.distiller import TeacherStudentModule

# How to build each LightningModule that kdlight.modules exports, on the tiny assets of conftest.py. A module added
# to kdlight.modules.__all__ needs an entry here (test_every_module_has_an_example says so); the matrix below then
# checks it against every student spec.
MODULE_EXAMPLES: dict[str, Callable[[dict], dict]] = {
    "TeacherFineTuning": lambda a: {"model": str(a["encoder"])},
    "VanillaKD": lambda a: {"teacher": str(a["teacher"])},
    "TeacherDisagreementKD": lambda a: {"teacher": str(a["teacher"]), "alpha": 0.2},
    "LayerwiseKD": lambda a: {"teacher": str(a["teacher"]), "losses": None, "logit_weight": 1.0},
    "GeneralDistillation": lambda a: {"teacher": str(a["encoder"]), "num_relation_heads": 2},
    "AdaptiveLossMixingKD": lambda a: {"teacher": str(a["teacher"])},
    "MultiTeacherALMKD": lambda a: {"teachers": [str(a["teacher"]), str(a["teacher"])]},
    "ZeroShotAdversarialKD": lambda a: {"teacher": str(a["teacher"]), "generator": str(a["encoder"])},
    "MaskedLMPretraining": lambda a: {"model": str(a["encoder"]), "train_layers": 1},
    "AdversarialAugmentedKD": lambda a: {"teacher": str(a["teacher"]), "generator": str(a["encoder"])},
}
# base classes exported for subclassing, not for use as they are
ABSTRACT = {"KDLightTask": "no networks of its own", "BaseDistiller": "compute_loss is the subclass's"}

# One example of every student spec kdlight defines; a spec holding a spec checks the recursive (de)serialisation.
SPEC_EXAMPLES: dict[str, Callable[[dict], StudentSpec]] = {
    "TruncatedTeacher": lambda a: TruncatedTeacher(num_layers=1),
    "FreshStudent": lambda a: FreshStudent(
        num_hidden_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32
    ),
    "PretrainedStudent": lambda a: PretrainedStudent(str(a["encoder"])),
    "CompressedEmbeddingStudent": lambda a: CompressedEmbeddingStudent(
        base=FreshStudent(num_hidden_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32),
        embedding_rank=8,
        layout="albert",
    ),
}

MODULES = sorted(MODULE_EXAMPLES)
SPECS = sorted(SPEC_EXAMPLES)


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


def same_shapes(a: torch.nn.Module, b: torch.nn.Module) -> None:
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}


def takes_a_student(name: str) -> bool:
    return issubclass(getattr(kdlight.modules, name), TeacherStudentModule)


CASES = [
    pytest.param(name, spec, id=f"{name}-{spec or 'own'}")
    for name in MODULES
    for spec in (SPECS if takes_a_student(name) else [None])
]


def build(name: str, spec: str | None, assets) -> torch.nn.Module:
    kwargs = MODULE_EXAMPLES[name](assets)
    if spec is not None:
        kwargs["student"] = SPEC_EXAMPLES[spec](assets)
    torch.manual_seed(0)
    return getattr(kdlight.modules, name)(tokenizer=str(assets["tokenizer"]), **kwargs)


def test_every_module_has_an_example():
    assert set(kdlight.modules.__all__) == set(MODULE_EXAMPLES) | set(ABSTRACT)


def test_every_kdlight_student_spec_has_an_example():
    own = {cls.__name__ for path, cls in StudentSpec.registry.items() if path.startswith("kdlight.")}
    assert own == set(SPEC_EXAMPLES)


@pytest.mark.parametrize(("name", "spec"), CASES)
def test_module_rebuilds_from_its_hyper_parameters(name, spec, assets):
    module = build(name, spec, assets)
    again = getattr(kdlight.modules, name)(**module.hparams)
    assert dict(again.hparams) == dict(module.hparams)
    same_shapes(again, module)
    if spec is not None:
        assert type(again.student_spec) is type(module.student_spec)
        assert again.student_spec.to_config() == module.student_spec.to_config()


@pytest.mark.parametrize(("name", "spec"), CASES)
def test_module_loads_from_its_checkpoint(name, spec, assets, tmp_path):
    module = build(name, spec, assets)
    path = save_checkpoint(module, tmp_path / "module.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    assert not any(k.startswith("teacher.") for k in checkpoint["state_dict"])  # reloaded from its source
    loaded = getattr(kdlight.modules, name).load_from_checkpoint(path, weights_only=True)
    assert dict(loaded.hparams) == dict(module.hparams)
    same_weights(loaded, module)


@pytest.mark.parametrize(("name", "spec"), [c for c in CASES if c.values[1] is not None])
def test_the_teacher_stays_frozen_in_eval_mode(name, spec, assets):
    module = build(name, spec, assets).train()
    assert not module.teacher.training and module.student.training
    assert not any(p.requires_grad for p in module.teacher.parameters())
    assert all(id(p) not in {id(t) for t in module.teacher.parameters()} for p in module.trainable_parameters())


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
