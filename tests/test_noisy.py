"""NoisyLabelDataModule: realised noise, clean carve before corruption, untouched test labels."""

from __future__ import annotations

import numpy as np
import pytest

from kdlight.data import NoisyLabelDataModule, TextClassificationDataModule
from kdlight.data.noisy import CLEAN_VAL_SPLIT, corrupt_labels, transition_matrix
from kdlight.errors import KDLightError


def inner(assets, **kw):
    d = assets["data"]
    return TextClassificationDataModule(
        train_file=str(d / "train.csv"), val_file=str(d / "validation.csv"), test_file=str(d / "test.csv"), **kw
    )


def noisy(assets, **kw):
    args = dict(
        noise_type="symmetric",
        noise_rate=0.4,
        clean_val_size=16,
        tokenizer=str(assets["tokenizer"]),
        max_length=32,
        batch_size=8,
    )
    args.update(kw)
    return NoisyLabelDataModule(inner(assets), **args)


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.4, 0.6])
def test_symmetric_rate_realised_and_to_other_class(rate):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=1000)
    out = corrupt_labels(labels, 3, "symmetric", rate, seed=1)
    assert abs((out != labels).mean() - rate) < 0.002
    assert out.min() >= 0 and out.max() < 3
    # the transition matrix is near-uniform off the diagonal
    t = np.array(transition_matrix(labels, out, 3))
    assert np.allclose(t.sum(1), 1)
    assert np.allclose(np.diag(t), 1 - rate, atol=0.06)


def test_asymmetric_flips_follow_the_mapping():
    labels = np.repeat(np.arange(3), 200)
    out = corrupt_labels(labels, 3, "asymmetric", 0.4, seed=0, mapping={0: 2})
    assert ((labels == 0) & (out == 2)).sum() == 80  # exactly 40% of class 0, all to class 2
    assert (out[labels != 0] == labels[labels != 0]).all()  # other classes untouched
    default = corrupt_labels(labels, 3, "asymmetric", 0.4, seed=0)
    changed = default != labels
    assert (default[changed] == (labels[changed] + 1) % 3).all() and changed.mean() == pytest.approx(0.4)


def test_instance_noise_prefers_high_scores():
    labels = np.zeros(1000, dtype=int)
    scores = np.r_[np.full(500, 0.01), np.full(500, 1.0)]
    out = corrupt_labels(labels, 2, "instance", 0.2, seed=0, scores=scores)
    flipped = out != labels
    assert flipped.sum() == 200 and flipped[500:].sum() > 5 * flipped[:500].sum()


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5])
def test_bad_rate_is_a_clear_error(assets, rate):
    with pytest.raises(KDLightError, match="noise_rate must be in"):
        noisy(assets, noise_rate=rate)


def test_bad_noise_type_and_instance_without_reference(assets):
    with pytest.raises(KDLightError, match="noise_type must be one of .*; got .pairflip."):
        noisy(assets, noise_type="pairflip")
    with pytest.raises(KDLightError, match="reference_model"):
        noisy(assets, noise_type="instance")


def test_carve_before_noise_test_untouched_and_reproducible(assets):
    dm = noisy(assets)
    dm.setup("fit")
    dm.setup("test")
    train, clean = dm.splits["train"], dm.splits[CLEAN_VAL_SPLIT]
    assert len(clean) == 16 and len(train) == 96 - 16
    assert not set(train["idx"]) & set(clean["idx"])
    original = inner(assets)
    full = original.load_split("train")
    source = dict(zip(full["idx"], full["labels"], strict=True))
    # the clean split keeps the original labels; the noisy split's clean_labels are the originals
    assert all(source[i] == y for i, y in zip(clean["idx"], clean["labels"], strict=True))
    assert all(source[i] == y for i, y in zip(train["idx"], train["clean_labels"], strict=True))
    flipped = np.array(train["labels"]) != np.array(train["clean_labels"])
    assert (flipped == np.array(train["is_flipped"], dtype=bool)).all()
    assert flipped.mean() == pytest.approx(0.4, abs=0.01)
    assert dm.noise_report["realised_rate"] == pytest.approx(flipped.mean())
    assert sorted(dm.noise_report["flipped_idx"]) == sorted(np.array(train["idx"])[flipped].tolist())
    # test labels untouched
    assert dm.splits["test"]["labels"] == original.load_split("test")["labels"]
    # seeded: the same seed gives the same flips, another seed others
    again = noisy(assets)
    assert again.noise_report is None
    again.setup("fit")
    assert again.noise_report["flipped_idx"] == dm.noise_report["flipped_idx"]
    other = noisy(assets, seed=1)
    other.setup("fit")
    assert other.noise_report["flipped_idx"] != dm.noise_report["flipped_idx"]


def test_batches_carry_flags_and_clean_batches_cycle(assets):
    dm = noisy(assets, clean_val_size=0.25, meta_batch_size=5)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert {"labels", "is_flipped", "clean_labels", "idx", "input_ids"} <= set(batch)
    clean = dm.clean_val_batches()
    seen = [next(clean) for _ in range(10)]  # 24 clean examples: the iterator wraps around
    assert all(len(b["labels"]) <= 5 for b in seen)
    assert "is_flipped" not in seen[0]
    assert dm.max_train_idx == max(dm.splits["train"]["idx"])


def test_asymmetric_map_by_label_names_and_instance_noise(assets):
    dm = noisy(assets, noise_type="asymmetric", asymmetric_map={"positive": "negative"}, noise_rate=0.5)
    dm.setup("fit")
    train = dm.splits["train"]
    pos, neg = dm.label_names.index("positive"), dm.label_names.index("negative")
    clean_labels, labels = np.array(train["clean_labels"]), np.array(train["labels"])
    assert (labels[clean_labels == neg] == neg).all()
    assert (labels[clean_labels == pos] == neg).mean() == pytest.approx(0.5, abs=0.05)
    with pytest.raises(KDLightError, match="not a label"):
        noisy(assets, noise_type="asymmetric", asymmetric_map={"happy": "negative"})
    inst = noisy(assets, noise_type="instance", reference_model=str(assets["teacher"]), noise_rate=0.3)
    inst.setup("fit")
    assert inst.noise_report["realised_rate"] == pytest.approx(0.3, abs=0.02)


# ------------------------------------------------ the wrapped datamodule's own arguments (issue 11, defect 11)
def test_wrapper_honours_the_wrapped_modules_own_arguments(assets):
    wrapped = inner(
        assets,
        tokenizer=str(assets["tokenizer"]),
        max_train_examples=40,
        max_length=8,
        batch_size=4,
        eval_batch_size=6,
        shuffle=False,
    )
    dm = NoisyLabelDataModule(wrapped, noise_rate=0.4, clean_val_size=10)
    assert (dm.max_train_examples, dm.max_length, dm.batch_size, dm.eval_batch_size, dm.shuffle) == (40, 8, 4, 6, False)
    assert dm.meta_batch_size == 4
    dm.setup("fit")
    train, clean = dm.splits["train"], dm.splits[CLEAN_VAL_SPLIT]
    assert len(train) + len(clean) == 40 and len(clean) == 10  # exactly the first 40: clean carve + noisy
    assert set(train["idx"]) | set(clean["idx"]) == set(range(40))
    assert dm.noise_report["num_train"] == 30 and len(dm.noise_report["flipped_idx"]) == 12
    assert max(map(len, train["input_ids"])) == 8 and max(map(len, dm.splits["validation"]["input_ids"])) == 8
    first = next(iter(dm.train_dataloader()))
    assert len(first["labels"]) == 4 and first["idx"].tolist() == sorted(first["idx"].tolist())  # not shuffled
    assert len(next(iter(dm.val_dataloader()))["labels"]) == 6


def test_wrapper_arguments_fill_in_for_unset_inner_ones_and_conflicts_are_errors(assets):
    dm = NoisyLabelDataModule(
        inner(assets, max_length=8),
        tokenizer=str(assets["tokenizer"]),
        batch_size=5,
        max_train_examples=30,
        clean_val_size=6,
    )
    assert (dm.max_length, dm.batch_size, dm.eval_batch_size, dm.max_train_examples) == (8, 5, 10, 30)
    dm.setup("fit")
    assert len(dm.splits["train"]) == 24
    same = NoisyLabelDataModule(
        inner(assets, max_train_examples=30), max_train_examples=30, tokenizer=str(assets["tokenizer"])
    )
    assert same.max_train_examples == 30
    with pytest.raises(
        KDLightError,
        match=r"max_train_examples is set twice.*30 on NoisyLabelDataModule and 40 on its "
        r"datamodule.*data.init_args.datamodule.init_args.max_train_examples",
    ):
        NoisyLabelDataModule(inner(assets, max_train_examples=40), max_train_examples=30)
    with pytest.raises(KDLightError, match="batch_size must be a whole number >= 1"):
        NoisyLabelDataModule(inner(assets), batch_size=0)


def test_inner_arguments_are_honoured_through_the_cli(assets, tmp_path, capsys):
    from conftest import expect_user_error, trainer_args
    from kdlight.cli import cli

    d = assets["data"]
    args = [
        "--model=TeacherFineTuning",
        f"--model.model={assets['teacher']}",
        "--data=NoisyLabelDataModule",
        "--data.datamodule=TextClassificationDataModule",
        f"--data.datamodule.train_file={d / 'train.csv'}",
        f"--data.datamodule.val_file={d / 'validation.csv'}",
        "--data.datamodule.max_train_examples=40",
        "--data.datamodule.max_length=16",
        "--data.datamodule.batch_size=4",
        "--data.clean_val_size=10",
        *trainer_args(tmp_path),
    ]
    dm = cli(args, run=False).datamodule
    assert (dm.max_train_examples, dm.max_length, dm.batch_size) == (40, 16, 4)
    dm.setup("fit")
    assert len(dm.splits["train"]) + len(dm.splits[CLEAN_VAL_SPLIT]) == 40
    expect_user_error(
        ["fit", *args, "--data.max_length=32"],
        capsys,
        r"max_length is set twice.*32 on NoisyLabelDataModule and 16 on its datamodule",
    )


@pytest.mark.parametrize("num_labels, rate", [(3, 0.4), (3, 0.2), (10, 0.6), (2, 0.4)])
def test_uniform_noise_flips_rate_times_k_minus_1_over_k(num_labels, rate):
    """The official ALM-KD noise (custom_dataset.py create_noisy): round(rate * n) examples resampled
    over all K classes, so about 1/K of them keep their label."""
    labels = np.random.default_rng(0).integers(0, num_labels, size=60_000)
    out = corrupt_labels(labels, num_labels, "uniform", rate, seed=3)
    expected = rate * (num_labels - 1) / num_labels
    assert abs((out != labels).mean() - expected) < 0.006
    assert out.min() >= 0 and out.max() < num_labels
    t = np.array(transition_matrix(labels, out, num_labels))
    off = t[~np.eye(num_labels, dtype=bool)]
    assert np.allclose(off, rate / num_labels, atol=0.01)  # every wrong class equally likely
    assert np.array_equal(out, corrupt_labels(labels, num_labels, "uniform", rate, seed=3))
    assert not np.array_equal(out, corrupt_labels(labels, num_labels, "uniform", rate, seed=4))


def test_uniform_noise_report_gives_nominal_and_realised_rate(assets, tmp_path):
    from lightning import Trainer

    dm = noisy(assets, noise_type="uniform", noise_rate=0.6)
    trainer = Trainer(accelerator="cpu", logger=False, default_root_dir=str(tmp_path), enable_progress_bar=False)
    dm.trainer = trainer
    dm.setup("fit")
    import json

    report = json.loads((tmp_path / "noise.json").read_text())
    train = dm.splits["train"]
    flipped = np.array(train["labels"]) != np.array(train["clean_labels"])
    assert report["noise_type"] == "uniform" and report["nominal_rate"] == 0.6 == report["noise_rate"]
    assert report["realised_rate"] == pytest.approx(flipped.mean()) and report["realised_rate"] < 0.6
    again = noisy(assets, noise_type="uniform", noise_rate=0.6)
    again.setup("fit")
    assert again.noise_report["flipped_idx"] == report["flipped_idx"]
