"""AugmentedKDDataModule: unlabelled text, rewrites and token-augmented copies for KD, teacher-cached."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from conftest import expect_user_error, tiny_task_data, trainer_args
from kdlight.cli import cli
from kdlight.data.augment import UNLABELLED, TextRewriter, example_seed, token_augment
from kdlight.errors import KDLightError
from kdlight.losses import label_loss, labelled_loss
from kdlight.modules.task import model_inputs


class ReversedWords(TextRewriter):
    """A stand-in generator: the words of each text in reverse order, the first word dropped for odd seeds."""

    def rewrite(self, texts: list[str], seeds: list[int]) -> list[str]:
        return [" ".join(t.split()[::-1][seed % 2 :]) for t, seed in zip(texts, seeds, strict=True)]


def config(assets, tmp_path, model: str = "VanillaKD", **augment) -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "extra.txt").write_text("a plain line of extra text\nanother line of text here\nshort\n")
    inner = tiny_task_data(assets, max_train_examples=48)
    init = {"datamodule": inner, **augment}
    model_args = {"teacher": str(assets["teacher"]), "learning_rate": 1e-3}
    if model == "VanillaKD":
        model_args.update(cache_teacher_logits=True, teacher_cache_dir=str(tmp_path / "cache"))
    else:
        model_args = {"model": str(assets["teacher"])}
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": {"class_path": model, "init_args": model_args},
                "data": {"class_path": "AugmentedKDDataModule", "init_args": init},
            }
        )
    )
    return str(path)


ALL = {
    "unlabelled": ["task_rest", "EXTRA"],
    "rewriter": {"class_path": "test_augment.ReversedWords"},
    "token_augment_copies": 1,
    "mask_prob": 0.2,
    "replace_prob": 0.2,
}


def runner(assets, tmp_path, model="VanillaKD", steps: int = 2, **augment):
    augment = {
        k: ([str(tmp_path / "extra.txt") if s == "EXTRA" else s for s in v] if k == "unlabelled" else v)
        for k, v in augment.items()
    }
    trainer = trainer_args(tmp_path, **{"--trainer.max_steps": steps, "--trainer.limit_val_batches": 1})
    return cli(["--config", config(assets, tmp_path, model, **augment), *trainer], run=False)


def test_training_split_holds_every_kind_with_own_ids_and_no_labels(assets, tmp_path):
    dm = runner(assets, tmp_path, **ALL).datamodule
    dm.setup("fit")
    train = dm.splits["train"]
    labels, idx = np.array(train["labels"]), np.array(train["idx"])
    # 48 labelled + 48 task_rest (96 rows in the file) + 2 text lines (one too short) + 48 rewrites + 48 copies
    assert len(train) == 48 + 48 + 2 + 48 + 48
    assert dm.added_rows == {"unlabelled": 50, "rewrites": 48, "token_augmented": 48}
    assert (labels[:48] != UNLABELLED).all() and (labels[48:] == UNLABELLED).all()
    assert len(set(idx.tolist())) == len(idx)  # every row its own teacher-cache slot
    assert idx[48:96].tolist() == list(range(48, 96))  # task_rest rows keep their ids in the task's split
    # token copies differ from their source rows only off the special tokens, and only some tokens
    originals, copies = train["input_ids"][:48], train["input_ids"][-48:]
    special = set(dm.tokenizer.all_special_ids) - {dm.tokenizer.mask_token_id}
    changed = 0
    for a, b in zip(originals, copies, strict=True):
        assert len(a) == len(b) and a[0] == b[0] and a[-1] == b[-1]
        assert all(x == y for x, y in zip(a, b, strict=True) if x in special)
        changed += sum(x != y for x, y in zip(a, b, strict=True))
    assert 0 < changed < sum(len(a) - 2 for a in originals)


def test_same_rows_on_every_setup(assets, tmp_path):
    """The rows are a function of augment_seed and the data only: not of the global RNG state, so every DDP
    rank and a resumed run build the same rows."""
    first = runner(assets, tmp_path / "a", **ALL).datamodule
    second = runner(assets, tmp_path / "b", **ALL).datamodule
    torch.manual_seed(1), np.random.seed(1)
    first.setup("fit")
    torch.manual_seed(2), np.random.seed(2), np.random.random(5)
    second.setup("fit")
    assert first.splits["train"]["input_ids"] == second.splits["train"]["input_ids"]
    other = runner(assets, tmp_path / "c", **{**ALL, "augment_seed": 1}).datamodule
    other.setup("fit")
    assert other.splits["train"]["input_ids"] != first.splits["train"]["input_ids"]


def test_kd_on_augmented_rows_uses_the_teacher_cache_for_all_of_them(assets, tmp_path):
    run = runner(assets, tmp_path, steps=3, **ALL)
    run.trainer.fit(run.model, datamodule=run.datamodule)
    model, dm = run.model, run.datamodule
    assert model.teacher_cache is not None
    for batch in dm.train_dataloader():
        cached = model.teacher_cache.lookup(batch["idx"])
        assert cached is not None  # no row falls back to the live teacher
        with torch.no_grad():
            assert torch.allclose(cached, model.teacher(**model_inputs(batch)).logits, atol=1e-5)
    assert all(torch.isfinite(p).all() for p in model.student.parameters())


def test_a_module_without_unlabelled_support_is_refused(assets, tmp_path):
    run = runner(assets, tmp_path, model="TeacherFineTuning", token_augment_copies=1)
    with pytest.raises(KDLightError, match="cannot train on rows without labels"):
        run.trainer.fit(run.model, datamodule=run.datamodule)


def test_bad_settings_are_one_line_errors(assets, tmp_path, capsys):
    bad = config(assets, tmp_path, mask_prob=0.7, replace_prob=0.5)
    expect_user_error(["fit", "--config", bad, *trainer_args(tmp_path)], capsys, "sum <= 1")
    missing = config(assets, tmp_path, unlabelled=["no/such/file.txt"])
    expect_user_error(["fit", "--config", missing, *trainer_args(tmp_path)], capsys, "no/such/file.txt.*not found")


def test_token_augment_is_seeded_per_example():
    ids, special = [2, 10, 11, 12, 13, 14, 3], {2, 3}
    vocab = np.array([20, 21, 22])
    copy = token_augment(ids, example_seed(0, 7, 0), 0.3, 0.3, 4, vocab, special)
    assert copy == token_augment(ids, example_seed(0, 7, 0), 0.3, 0.3, 4, vocab, special)
    assert copy[0] == 2 and copy[-1] == 3 and set(copy[1:-1]) <= {10, 11, 12, 13, 14, 4, 20, 21, 22}
    assert example_seed(0, 7, 0) != example_seed(0, 8, 0) != example_seed(0, 7, 1)
    assert token_augment(ids, 1, 0.0, 0.0, 4, vocab, special) == ids
    assert token_augment(ids, 1, 1.0, 0.0, 4, vocab, special) == [2, 4, 4, 4, 4, 4, 3]


def test_labelled_loss_skips_rows_without_labels():
    logits = torch.randn(4, 2)
    labels = torch.tensor([0, 1, 1, 0])
    assert torch.allclose(labelled_loss(logits, labels), label_loss(logits, labels))
    partial = torch.tensor([0, UNLABELLED, 1, UNLABELLED])
    assert torch.allclose(labelled_loss(logits, partial), label_loss(logits[[0, 2]], labels[[0, 2]]))
    assert labelled_loss(logits, torch.full((4,), UNLABELLED)).item() == 0.0  # not NaN


def test_regression_tasks_are_refused(assets):
    from kdlight.data import AugmentedKDDataModule, TextClassificationDataModule

    d = assets["data"]
    inner = TextClassificationDataModule(train_file=str(d / "train.csv"), task_type="regression")
    assert inner.num_labels == 1
    with pytest.raises(KDLightError, match="classification tasks"):
        AugmentedKDDataModule(inner, token_augment_copies=1)
