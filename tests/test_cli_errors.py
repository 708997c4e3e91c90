"""Bad input at the command level: class names, checkpoints to evaluate, the export folder."""

from __future__ import annotations

import pytest
import yaml

import kdlight.cli  # noqa: F401  (imported before capsys, so Lightning's log handler keeps the real stream)
from conftest import data_args, expect_user_error, trainer_args


def recipe(tmp_path, assets, **model_args) -> str:
    config = {"model": {"class_path": "VanillaKD", "init_args": {"teacher": str(assets["teacher"]), **model_args}}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


CASES = {
    "model-typo": (["fit", "--model=VanilaKD"], r"--model: unknown class 'VanilaKD'; did you mean VanillaKD"),
    "data-typo": (
        ["fit", "--data=TextClassificationDataModul"],
        r"--data: unknown class .*did you mean TextClassificationDataModule",
    ),
    "student-typo": (
        ["fit", "--model.student=FrshStudent"],
        r"--model.student: unknown class 'FrshStudent'; did you mean FreshStudent",
    ),
    "variant-module-missing": (
        ["fit", "--model=my_missing_kd.MyKD"],
        r"cannot import 'my_missing_kd'.*run kdlight from the folder that holds my_missing_kd.py",
    ),
    "variant-wrong-base": (["fit", "--model=kdlight.data.GLUEDataModule"], r"is not a LightningModule"),
    "variant-no-such-class": (
        ["fit", "--model=kdlight.modules.NoSuchKD"],
        r"'kdlight.modules' has no class 'NoSuchKD'",
    ),
    "config-class-typo": (["fit", "--config={recipe_typo}"], r"unknown class 'VanillaKDD'; did you mean VanillaKD"),
    "test-missing-ckpt": (["test", "--ckpt_path={tmp}/nowhere.ckpt"], r"checkpoint not found: .*nowhere.ckpt"),
    "test-last-without-run": (["test", "--ckpt_path=last"], r"--ckpt_path last: no run with a last.ckpt"),
    "test-best-without-run": (["test", "--ckpt_path=best"], r"--ckpt_path best: no run with a last.ckpt"),
    "export-dir-not-an-export": (["fit", "--model.export_dir={tmp}/notes"], r"export_dir .*notes.* not a model export"),
    "export-dir-is-a-file": (["fit", "--model.export_dir={tmp}/file.txt"], r"export_dir .*file.txt.* is a file"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_command_input_is_one_clear_line(assets, tmp_path, capsys, case):
    args, match = CASES[case]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("not a model")
    (tmp_path / "file.txt").write_text("x")
    typo = tmp_path / "typo"
    typo.mkdir()
    recipe_typo = recipe(typo, assets)
    (typo / "recipe.yaml").write_text((typo / "recipe.yaml").read_text().replace("VanillaKD", "VanillaKDD"))
    args = [a.format(tmp=tmp_path, recipe_typo=recipe_typo) for a in args]
    subcommand, rest = args[0], args[1:]
    base = [] if any(a.startswith("--config") for a in rest) else [f"--model.teacher={assets['teacher']}"]
    if not any(a.startswith(("--model=", "--config")) for a in rest):
        base = ["--model=VanillaKD", *base]
    data = [] if any(a.startswith("--data=") for a in rest) else data_args(assets)
    expect_user_error(
        [subcommand, *base, *rest, *data, *trainer_args(tmp_path, **{"--trainer.max_steps": 1})],
        capsys,
        match,
        export_dir=tmp_path / "export",
    )
    assert (tmp_path / "notes" / "mine.txt").is_file(), "a user's folder was replaced"


def test_export_replaces_an_earlier_export_as_a_whole(assets, tmp_path):
    """A classification export followed by a regression export into the same folder leaves no
    classification files behind (label_names.json), and no staging folder."""
    import json

    from transformers import AutoModelForSequenceClassification

    from kdlight.data import TaskSpec
    from kdlight.modules import TeacherFineTuning

    target = tmp_path / "export"
    tokenizer = str(assets["tokenizer"])
    classifier = TeacherFineTuning(
        model=str(assets["encoder"]), task=TaskSpec(label_names=["neg", "pos"], tokenizer=tokenizer)
    )
    classifier.export(target)
    assert json.loads((target / "label_names.json").read_text()) == ["neg", "pos"]
    regressor = TeacherFineTuning(model=str(assets["encoder"]), task=TaskSpec(num_labels=1, tokenizer=tokenizer))
    regressor.export(target)
    assert not (target / "label_names.json").exists()
    assert AutoModelForSequenceClassification.from_pretrained(target).config.num_labels == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no staging or previous copy left
