"""TaskSpec: one description of the task from the datamodule to the module, through the CLI or in one call."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from conftest import data_args, trainer_args
from kdlight.checkpoints import checkpoint_tokenizer, load_checkpoint
from kdlight.cli import cli, main
from kdlight.data import (
    CorpusDataModule,
    GLUEDataModule,
    NoisyLabelDataModule,
    OutOfDomainCorpus,
    TaskSpec,
    TextClassificationDataModule,
    ZeroShotDataModule,
)
from kdlight.errors import KDLightError, check_choice
from kdlight.models import TruncatedTeacher, load_from_checkpoint
from kdlight.modules import TeacherFineTuning, VanillaKD

USAGE_DOC = Path(__file__).resolve().parents[1] / "docs" / "usage.md"  # holds the Python example


def task_data(assets, **kwargs) -> TextClassificationDataModule:
    d = assets["data"]
    return TextClassificationDataModule(
        train_file=str(d / "train.csv"), val_file=str(d / "validation.csv"), test_file=str(d / "test.csv"), **kwargs
    )


def test_spec_defaults_follow_the_label_count_and_bad_specs_are_refused():
    assert TaskSpec() == TaskSpec(2, None, "accuracy", None, "classification")
    assert (TaskSpec(num_labels=1).task_type, TaskSpec(num_labels=1).metric) == ("regression", "pearson_spearman")
    assert (TaskSpec(num_labels=0).task_type, TaskSpec(num_labels=0).metric) == ("unlabelled", "none")
    spec = TaskSpec(num_labels=3, label_names=["a", "b", "c"], metric="f1", tokenizer=Path("tok"))
    assert spec.label_names == ("a", "b", "c") and spec.tokenizer == "tok"
    with pytest.raises(AttributeError):
        spec.num_labels = 4  # frozen
    assert TaskSpec.from_hparams(spec.to_dict()) == spec
    assert spec.to_dict()["label_names"] == ["a", "b", "c"]  # plain data for hyper-parameters
    for bad, message in [
        ({"metric": "bleu"}, "metric must be one of accuracy, matthews, f1, pearson_spearman, none; got 'bleu'"),
        ({"num_labels": 1, "metric": "accuracy"}, "metric 'accuracy' does not score a regression task"),
        ({"task_type": "regression"}, "a regression task has 1 label"),
        ({"label_names": ["a", "b", "c"]}, "name 3 classes, but num_labels=2"),
        ({"task_type": "ranking"}, "task_type must be one of classification, regression, unlabelled"),
    ]:
        with pytest.raises(KDLightError, match=re.escape(message)):
            TaskSpec(**bad)
    with pytest.raises(KDLightError, match="unknown field"):
        TaskSpec.from_hparams({"num_labels": 2, "labels": ["a", "b"]})


def test_check_choice_names_the_choices():
    from typing import Literal

    check_choice("mode", "b", Literal["a", "b"])
    with pytest.raises(KDLightError, match=re.escape("mode must be one of a, b; got 'c'")):
        check_choice("mode", "c", Literal["a", "b"])


def test_every_datamodule_describes_its_task(assets, tmp_path):
    tokenizer = str(assets["tokenizer"])
    plain = task_data(assets, tokenizer=tokenizer)
    assert plain.task == TaskSpec(num_labels=2, label_names=["negative", "positive"], tokenizer=tokenizer)
    assert GLUEDataModule(task="stsb").task == TaskSpec(num_labels=1, metric="pearson_spearman")
    assert GLUEDataModule(task="mrpc").task.metric == "f1"
    # wrappers describe the wrapped task with their own tokenizer, and leave the wrapped datamodule as it was
    inner = task_data(assets)
    noisy = NoisyLabelDataModule(inner, clean_val_size=16, tokenizer=tokenizer, max_length=32)
    assert noisy.task == plain.task and inner.tokenizer_name is None
    corpus_file = tmp_path / "wiki.txt"
    corpus_file.write_text("A first sentence of plain text here. And a second one follows it.\n")
    corpus = OutOfDomainCorpus(source=str(corpus_file))
    evaluation = TextClassificationDataModule(
        val_file=str(assets["data"] / "validation.csv"), label_names=["negative", "positive"]
    )
    zero_shot = ZeroShotDataModule(task=evaluation, corpus=corpus, tokenizer=tokenizer, max_length=32, batch_size=4)
    assert zero_shot.task == plain.task and zero_shot.inner is evaluation
    assert evaluation.tokenizer_name is None and corpus.tokenizer_name is None and corpus.max_length == 128
    shaped = zero_shot.corpus
    assert (shaped.tokenizer_name, shaped.max_length, shaped.batch_size) == (tokenizer, 32, 4)
    unlabelled = CorpusDataModule(source=str(corpus_file), tokenizer=tokenizer).task
    assert (unlabelled.task_type, unlabelled.num_labels, unlabelled.tokenizer) == ("unlabelled", 0, tokenizer)


def test_one_argument_from_python_and_plain_hyper_parameters(assets):
    dm = task_data(assets, tokenizer=str(assets["teacher"]), max_length=32)
    model = VanillaKD(teacher=str(assets["teacher"]), student=TruncatedTeacher(1), task=dm.task)
    assert model.task == dm.task
    assert model.hparams["task"] == dm.task.to_dict()
    assert not {"num_labels", "metric", "label_names", "tokenizer"} & set(model.hparams)
    rebuilt = VanillaKD(**dict(model.hparams))  # what load_from_checkpoint does
    assert rebuilt.task == dm.task
    with pytest.raises(TypeError, match="unexpected keyword argument 'num_label'"):
        VanillaKD(teacher=str(assets["teacher"]), num_label=2)


def test_checkpoints_written_before_task_spec_still_load(assets, tmp_path, capsys):
    """Old checkpoints keep num_labels/metric/label_names/tokenizer as separate hyper-parameters and
    name the predictor ``kdlight_export_prefix``: Python and the CLI still read them."""
    teacher = str(assets["teacher"])
    common = [
        "--model=VanillaKD",
        f"--model.teacher={teacher}",
        "--model.student=TruncatedTeacher",
        "--model.student.num_layers=1",
        *data_args(assets),
    ]
    main(["fit", *common, *trainer_args(tmp_path / "new", **{"--trainer.max_steps": 2})])
    new = max((tmp_path / "new").rglob("last.ckpt"))
    checkpoint = torch.load(new, weights_only=True)
    task = checkpoint["hyper_parameters"].pop("task")
    assert task == {
        "num_labels": 2,
        "label_names": ["negative", "positive"],
        "metric": "accuracy",
        "tokenizer": teacher,
        "task_type": "classification",
    }
    checkpoint["hyper_parameters"].update({k: task[k] for k in ("num_labels", "metric", "label_names", "tokenizer")})
    checkpoint["kdlight_export_prefix"] = checkpoint.pop("kdlight_predictor_attr")
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)

    assert checkpoint_tokenizer(old) == teacher
    assert load_from_checkpoint(str(old)).config.num_hidden_layers == 1  # the student, by the old key
    model = VanillaKD.load_from_checkpoint(old, weights_only=True)
    assert model.task == TaskSpec(label_names=["negative", "positive"], tokenizer=teacher)
    capsys.readouterr()
    main(["test", *common, f"--ckpt_path={old}", *trainer_args(tmp_path / "test")])
    assert "test/pct_of_teacher" in capsys.readouterr().out
    assert load_checkpoint(new)["kdlight_predictor_attr"] == "student"


def test_cli_links_the_task_and_fills_the_tokenizer_from_the_model(assets, tmp_path, capsys):
    runner = cli(
        ["--model=VanillaKD", f"--model.teacher={assets['teacher']}", *data_args(assets), *trainer_args(tmp_path)],
        run=False,
    )
    assert runner.datamodule.tokenizer_name == str(assets["teacher"])  # the teacher's, filled before building
    assert runner.model.task == runner.datamodule.task
    runner = cli(
        [
            "--model=TeacherFineTuning",
            f"--model.model={assets['encoder']}",
            *data_args(assets),
            *trainer_args(tmp_path),
        ],
        run=False,
    )
    assert isinstance(runner.model, TeacherFineTuning) and runner.model.task.tokenizer == str(assets["encoder"])
    with pytest.raises(SystemExit):
        main(
            [
                "fit",
                "--model=VanillaKD",
                f"--model.teacher={assets['teacher']}",
                *data_args(assets),
                *trainer_args(tmp_path),
                "--print_config",
            ]
        )
    config = yaml.safe_load(capsys.readouterr().out)
    assert "task" not in config["model"]["init_args"]  # linked, never typed


def test_a_typo_in_a_choice_is_refused_by_the_parser(assets, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                "--model=VanillaKD",
                f"--model.teacher={assets['teacher']}",
                *data_args(assets),
                "--data.task_type=ranking",
                *trainer_args(tmp_path),
            ]
        )
    assert exit_info.value.code == 2
    assert "classification" in capsys.readouterr().err


def test_readme_python_example_runs(assets, tmp_path, monkeypatch):
    example = r"<!-- example: python -->\s*```python\n(.*?)```\s*<!-- /example -->"
    match = re.search(example, USAGE_DOC.read_text(), re.S)
    assert match, "docs/usage.md lost its Python example"
    code = match.group(1)
    d = assets["data"]
    for old, new in [
        ('"train.csv"', repr(str(d / "train.csv"))),
        ('"dev.csv"', repr(str(d / "validation.csv"))),
        ('tokenizer="runs/teacher/export"', f"tokenizer={str(assets['teacher'])!r}, max_length=32"),
        ('teacher="runs/teacher/export"', f"teacher={str(assets['teacher'])!r}"),
        (
            "Trainer(max_epochs=3)",
            "Trainer(max_steps=2, limit_val_batches=1, logger=False, "
            "enable_checkpointing=False, enable_progress_bar=False)",
        ),
    ]:
        assert old in code, old
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "docs/usage.md", "exec"), namespace)  # noqa: S102  (the docs' own example)
    assert namespace["model"].task == namespace["data"].task
    assert namespace["model"].trainer.global_step == 2
