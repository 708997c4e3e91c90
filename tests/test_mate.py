"""AdversarialAugmentedKD (MATE-KD) on tiny random models: the generator's ascent, the student's three-part loss,
what max_steps counts, and the CLI path."""

import pytest
import torch
import torch.nn.functional as F
from lightning import Trainer, seed_everything

from conftest import KDLIGHT, data_args, generator_config, generator_step_gains, trainer_args
from kdlight.components.generator import REWRITE_MASK
from kdlight.data import TextClassificationDataModule
from kdlight.data.base import load_tokenizer
from kdlight.errors import KDLightError
from kdlight.models import CompressedEmbeddingStudent
from kdlight.models.students import TruncatedTeacher
from kdlight.modules import AdversarialAugmentedKD
from kdlight.modules.manual import BATCHES, STUDENT_STEPS

LABELS = ["negative", "positive"]


def mate_module(assets, sharpen: bool = True, **kwargs) -> AdversarialAugmentedKD:
    module = AdversarialAugmentedKD(
        teacher=str(assets["teacher"]),
        tokenizer=str(assets["tokenizer"]),
        label_names=LABELS,
        **{"generator": str(assets["encoder"]), "student": TruncatedTeacher(1), "show_rewrites_every": 0, **kwargs},
    )
    if sharpen:
        with torch.no_grad():  # random tiny models agree to ~1e-6 (float noise); sharp, opposed heads disagree
            module.teacher.classifier.weight.mul_(30.0)
            module.student.classifier.weight.mul_(-30.0)
    return module


def labelled_data(assets, batch_size: int = 8) -> TextClassificationDataModule:
    d = assets["data"]
    return TextClassificationDataModule(
        train_file=str(d / "train.csv"),
        val_file=str(d / "validation.csv"),
        test_file=str(d / "test.csv"),
        label_names=LABELS,
        tokenizer=str(assets["tokenizer"]),
        max_length=32,
        batch_size=batch_size,
    )


def quiet_trainer(tmp_path, max_steps: int, **kwargs) -> Trainer:
    return Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        logger=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        **kwargs,
    )


def test_arguments_are_checked_before_anything_loads(assets):
    with pytest.raises(KDLightError, match="adversarial_weight must be in"):
        AdversarialAugmentedKD(teacher=str(assets["teacher"]), adversarial_weight=1.5)
    with pytest.raises(KDLightError, match="student_steps must be >= 1"):
        AdversarialAugmentedKD(teacher=str(assets["teacher"]), student_steps=0)


def test_generator_steps_raise_the_divergence_on_their_labelled_batch(assets, tmp_path):
    """Each generator step of a real fit on labelled text, measured on its own batch and noise before and after the
    update on the soft Gumbel-softmax rewrite (the smooth function the straight-through rows carry the gradient of):
    gradient ascent raises KL(teacher || student). Descent (a flipped sign) lowers it, and this test fails."""
    seed_everything(0)
    module = mate_module(
        assets, generator_steps=8, student_steps=1, generator=generator_config(assets, learning_rate=1e-3)
    )
    gains = generator_step_gains(module, quiet_trainer(tmp_path, 1), labelled_data(assets))
    assert int(module.generator.steps) == 8 and len(gains) == 8
    assert sum(g > 0 for g in gains) >= 7, gains


def planned_batch(module: AdversarialAugmentedKD, assets) -> dict:
    data = labelled_data(assets, batch_size=16)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    module.generator.prepare(load_tokenizer(str(assets["tokenizer"])), module.teacher)
    return module.generator.plan(batch, 0, module.generator.mask_rate)


def student_gradients(module: AdversarialAugmentedKD, batch: dict) -> tuple[dict, torch.Tensor]:
    module.student.zero_grad()
    parts = module.student_loss(batch)
    parts["loss"].backward()
    return parts, torch.cat([p.grad.flatten() for p in module.student.parameters() if p.grad is not None])


def test_student_loss_is_label_ce_kd_and_kd_on_the_rewrite(assets):
    """MATE-KD's student loss: (1 - w) * (alpha KD(x) + (1 - alpha) CE(x)) + w KD(x'), x' the generator's rewrite.
    Fails if the rewrite term or the label term is missing, or if the rewrite is the unmodified batch."""
    torch.manual_seed(0)
    module = mate_module(assets).eval()  # no dropout: the same rewrite and logits on every call
    batch = planned_batch(module, assets)
    rewritten = module.generator.rewrite(batch)
    assert (rewritten != batch["input_ids"]).any()  # some planned positions got another token
    with torch.no_grad():  # KD on the rewrite and CE on the batch, computed here, independently
        kd_rewrite = module.kd_loss(
            module.student(input_ids=rewritten, attention_mask=batch["attention_mask"]).logits,
            module.teacher(input_ids=rewritten, attention_mask=batch["attention_mask"]).logits,
        )
        ce = F.cross_entropy(module.student_logits(batch), batch["labels"])
    parts, with_rewrite = student_gradients(module, batch)
    assert set(parts) == {"loss", "kd", "ce", "kd_rewrite"}
    torch.testing.assert_close(parts["kd_rewrite"].detach(), kd_rewrite)
    torch.testing.assert_close(parts["ce"].detach(), ce)
    assert not torch.isclose(kd_rewrite, parts["kd"].detach())  # the rewrite moved the teacher-student gap
    w = 1 / 3
    expected = (1 - w) * (0.5 * parts["kd"] + 0.5 * ce) + w * kd_rewrite  # MATE-KD's three thirds by default
    torch.testing.assert_close(parts["loss"].detach(), expected.detach())

    flipped = {**batch, "labels": 1 - batch["labels"]}
    assert not torch.isclose(module.student_loss(flipped)["loss"], parts["loss"])  # the label CE is in the loss

    module.hparams.adversarial_weight = 0.0  # plain VanillaKD: no rewrite term, other gradients
    plain, without_rewrite = student_gradients(module, batch)
    assert "kd_rewrite" not in plain
    torch.testing.assert_close(plain["loss"].detach(), (0.5 * parts["kd"] + 0.5 * ce).detach())
    assert not torch.allclose(with_rewrite, without_rewrite * (1 - w), atol=1e-7)


def test_max_steps_counts_student_updates_only(assets, tmp_path):
    """Cycles of 2 generator batches then 3 student batches: 5 student updates take 9 batches, 4 of them the
    generator's. Counting every batch would stop after 5 batches (3 student updates) and fail."""
    seed_everything(0)
    module = mate_module(assets, sharpen=False, generator_steps=2, student_steps=3)
    trainer = quiet_trainer(tmp_path, 5)
    trainer.fit(module, datamodule=labelled_data(assets))
    assert trainer.global_step == 5
    assert int(module.progress[STUDENT_STEPS]) == 5 and int(module.progress[BATCHES]) == 9
    assert int(module.generator.steps) == 4
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 5  # the schedule steps with the student


def test_a_pruned_student_gets_rewrites_only_in_its_own_vocabulary(assets, tmp_path):
    """The quickstart's student keeps only the training text's tokens. The generator must never propose another
    token (the student would read it as [UNK]); the one-hot rows must embed as the student embeds the ids. Zero-shot
    KD still refuses such a student (tests/test_compact.py)."""
    kept_text = tmp_path / "kept.txt"
    kept_text.write_text("good bad movie film the a was\n")
    student = CompressedEmbeddingStudent(  # the quickstart student's shape: ALBERT layout, pruned vocabulary
        TruncatedTeacher(1), embedding_rank=8, layout="albert", vocabulary_files=[str(kept_text)]
    )
    module = mate_module(assets, student=student).eval()
    embeddings = module.student.get_input_embeddings()
    kept = set(embeddings.kept_token_ids.tolist())
    batch = planned_batch(module, assets)
    rewritten = module.generator.rewrite(batch)
    planned = batch[REWRITE_MASK]
    assert set(rewritten[planned].tolist()) <= kept, "the generator proposed a token the student does not keep"
    one_hot = F.one_hot(rewritten[planned], embeddings.num_embeddings).float()
    torch.testing.assert_close(one_hot @ embeddings.weight, embeddings(rewritten[planned]))
    assert torch.isfinite(module.student_loss(batch)["kd_rewrite"])


@pytest.mark.slow
@pytest.mark.skipif(KDLIGHT is None, reason="the kdlight console script is not installed (pip install -e .)")
def test_cli_fits_and_tests_the_module(assets, tmp_path, kdlight_here):
    args = [
        "--model=AdversarialAugmentedKD",
        f"--model.teacher={assets['teacher']}",
        f"--model.generator={assets['encoder']}",
        "--model.generator_steps=1",
        "--model.student_steps=1",
        *data_args(assets),
    ]
    kdlight_here("fit", *args, *trainer_args(tmp_path, **{"--trainer.fast_dev_run": 3}), cwd=tmp_path)
    tested = kdlight_here("test", *args, *trainer_args(tmp_path, **{"--trainer.fast_dev_run": 1}), cwd=tmp_path)
    assert "test/pct_of_teacher" in tested.stdout


def test_generator_defaults_are_matekds_for_a_name_and_the_components_for_a_class_path(assets):
    """A network name (or the old flat keys) takes MATE-KD's generator settings for the rest; a ``class_path``
    config takes AdversarialGenerator's own defaults, in Python as in the CLI (jsonargparse builds it so)."""
    by_name = mate_module(assets, sharpen=False)
    flat = mate_module(assets, sharpen=False, mask_rate=0.2)
    by_class = mate_module(assets, sharpen=False, generator=generator_config(assets))
    assert (by_name.generator.learning_rate, by_name.generator.clip) == (5e-7, 5.0)
    assert (flat.generator.learning_rate, flat.generator.clip, flat.generator.mask_rate) == (5e-7, 5.0, 0.2)
    assert (by_class.generator.learning_rate, by_class.generator.clip) == (1e-6, 1.0)
