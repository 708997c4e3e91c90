"""End to end through the `kdlight` entry point: fit, test, export, resume, print_config, errors."""

from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from conftest import data_args, trainer_args
from kdlight.checkpoints import load_checkpoint
from kdlight.cli import cli, main
from kdlight.models import load_from_checkpoint


def checkpoints(root: Path, name: str) -> list[Path]:
    return sorted(root.rglob(name), key=lambda p: p.stat().st_mtime)


@pytest.fixture(scope="module")
def fine_tuned(assets, tmp_path_factory):
    """A tiny teacher fine-tuned through `kdlight fit` (4 steps) and its export folder."""
    root = tmp_path_factory.mktemp("teacher_run")
    main(
        [
            "fit",
            "--model=TeacherFineTuning",
            f"--model.model={assets['encoder']}",
            "--model.learning_rate=1e-3",
            f"--model.export_dir={root / 'export'}",
            *data_args(assets),
            *trainer_args(root, **{"--trainer.max_steps": 4, "--trainer.val_check_interval": 2}),
        ]
    )
    return root


def test_teacher_fit_exports_a_standalone_model(fine_tuned):
    export = fine_tuned / "export"
    model = AutoModelForSequenceClassification.from_pretrained(export)
    tokenizer = AutoTokenizer.from_pretrained(export)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    with torch.no_grad():
        logits = model(**tokenizer(["a good movie"], return_tensors="pt")).logits
    assert logits.shape == (1, 2)
    best = checkpoints(fine_tuned, "best-*.ckpt")[-1]
    state = load_checkpoint(best)["state_dict"]
    assert torch.equal(state["model.classifier.weight"], model.classifier.weight)  # the best weights were exported


def test_vanilla_kd_fit_then_test(assets, fine_tuned, tmp_path, capsys):
    teacher = fine_tuned / "export"
    main(
        [
            "fit",
            "--model=VanillaKD",
            f"--model.teacher={teacher}",
            "--model.student=TruncatedTeacher",
            "--model.student.num_layers=1",
            "--model.temperature=2.0",
            "--model.learning_rate=1e-3",
            *data_args(assets),
            *trainer_args(tmp_path, **{"--trainer.max_steps": 3}),
        ]
    )
    last = checkpoints(tmp_path, "last.ckpt")[-1]
    checkpoint = load_checkpoint(last)
    assert not any(k.startswith("teacher.") for k in checkpoint["state_dict"])  # the teacher stays out
    assert any(k.startswith("student.") for k in checkpoint["state_dict"])
    assert load_from_checkpoint(str(last)).config.num_hidden_layers == 1
    assert (tmp_path / "export" / "config.json").is_file()  # default export: <log_dir>/export
    capsys.readouterr()
    main(
        [
            "test",
            "--model=VanillaKD",
            f"--model.teacher={teacher}",
            "--model.student=TruncatedTeacher",
            "--model.student.num_layers=1",
            f"--ckpt_path={last}",
            *data_args(assets),
            *trainer_args(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    for key in ("test/accuracy", "test/teacher_accuracy", "test/pct_of_teacher"):
        assert key in out


def test_teacher_checkpoint_works_as_teacher_and_names_its_tokenizer(assets, fine_tuned, tmp_path):
    ckpt = checkpoints(fine_tuned, "best-*.ckpt")[-1]
    runner = cli(
        [
            "--model=VanillaKD",
            f"--model.teacher={ckpt}",
            *data_args(assets),
            *trainer_args(tmp_path, **{"--trainer.fast_dev_run": 1}),
        ],
        run=False,
    )
    # no data.tokenizer given: the data is tokenised with the one the teacher was trained with, which its
    # checkpoint records (the encoder folder TeacherFineTuning started from)
    assert Path(runner.datamodule.tokenizer_name) == assets["encoder"]
    teacher_state = load_checkpoint(ckpt)["state_dict"]
    assert torch.equal(runner.model.teacher.classifier.weight, teacher_state["model.classifier.weight"])
    runner.trainer.fit(runner.model, datamodule=runner.datamodule)
    assert runner.trainer.global_step == 1
    assert torch.equal(runner.model.teacher.classifier.weight, teacher_state["model.classifier.weight"])  # frozen


def test_resume_continues_steps_optimizer_and_schedule(assets, fine_tuned, tmp_path):
    common = ["--model=VanillaKD", f"--model.teacher={fine_tuned / 'export'}", *data_args(assets)]
    main(["fit", *common, *trainer_args(tmp_path, **{"--trainer.max_steps": 3})])
    first = load_checkpoint(checkpoints(tmp_path, "last.ckpt")[-1])
    assert first["global_step"] == 3
    main(["fit", *common, "--ckpt_path=last", *trainer_args(tmp_path, **{"--trainer.max_steps": 6})])
    resumed = load_checkpoint(checkpoints(tmp_path, "last.ckpt")[-1])
    assert resumed["global_step"] == 6
    steps = {int(s["step"]) for s in resumed["optimizer_states"][0]["state"].values()}
    assert steps == {6}  # Adam's moments carried over from the first run, not restarted
    assert resumed["lr_schedulers"][0]["last_epoch"] == 6


def test_print_config_is_reusable(assets, fine_tuned, tmp_path, capsys):
    args = [
        "--model=VanillaKD",
        f"--model.teacher={fine_tuned / 'export'}",
        "--model.alpha=0.7",
        *data_args(assets),
        *trainer_args(tmp_path, **{"--trainer.fast_dev_run": 1}),
    ]
    with pytest.raises(SystemExit):
        main(["fit", *args, "--print_config"])
    printed = capsys.readouterr().out
    config = yaml.safe_load(printed)
    assert config["model"]["init_args"]["alpha"] == 0.7
    assert "num_labels" not in config["model"]["init_args"]  # linked from the data, never typed
    (tmp_path / "printed.yaml").write_text(printed)
    main(["fit", "--config", str(tmp_path / "printed.yaml")])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data=GLUEDataModule", "--data.task=sst5"], "unknown GLUE task 'sst5'"),
        (["--data.label_column=stars"], "column\\(s\\) not found: label_column='stars'"),
        (["--model.teacher={broken}"], "unreadable checkpoint"),
        (["--model.teacher={encoder}"], "no fine-tuned classification head"),
        (["--model.student=PretrainedStudent", "--model.student.name_or_path={other_vocab}"], "vocabulary mismatch"),
    ],
)
def test_bad_input_exits_with_one_clear_line(assets, fine_tuned, tmp_path, capsys, args, message):
    from transformers import BertForSequenceClassification

    from conftest import tiny_config

    (tmp_path / "broken.ckpt").write_bytes(b"garbage")
    BertForSequenceClassification(tiny_config(99)).save_pretrained(tmp_path / "other_vocab")
    paths = {"broken": tmp_path / "broken.ckpt", "encoder": assets["encoder"], "other_vocab": tmp_path / "other_vocab"}
    args = [a.format(**paths) for a in args]
    base = [
        "fit",
        "--model=VanillaKD",
        f"--model.teacher={fine_tuned / 'export'}",
        *data_args(assets),
        *trainer_args(tmp_path, **{"--trainer.fast_dev_run": 1}),
    ]
    if any(a.startswith("--data=") for a in args):
        base = [a for a in base if not a.startswith("--data.")]
    with pytest.raises(SystemExit) as exit_info:
        main([*base, *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("kdlight: error: ") and __import__("re").search(message, err[-1])


def test_predict_writes_labelled_predictions(assets, fine_tuned, tmp_path):
    out = tmp_path / "preds.csv"
    main(
        [
            "predict",
            "--model=TeacherFineTuning",
            f"--model.model={fine_tuned / 'export'}",
            *data_args(assets),
            *trainer_args(tmp_path),
            f"--predictions.output_file={out}",
        ]
    )
    import csv

    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 32 and sorted(int(r["idx"]) for r in rows) == list(range(32))
    assert {r["label"] for r in rows} <= {"negative", "positive"}
    assert all(r["label"] == ["negative", "positive"][int(r["prediction"])] for r in rows)


def test_optimizer_and_scheduler_from_config(assets, fine_tuned, tmp_path):
    from kdlight.cli import cli

    runner = cli(
        [
            "--model=VanillaKD",
            f"--model.teacher={fine_tuned / 'export'}",
            "--model.optimizer=torch.optim.SGD",
            "--model.optimizer.lr=0.1",
            "--model.lr_scheduler=torch.optim.lr_scheduler.StepLR",
            "--model.lr_scheduler.step_size=2",
            *data_args(assets),
            *trainer_args(tmp_path),
        ],
        run=False,
    )
    config = runner.model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["lr"] == 0.1
    assert isinstance(scheduler, torch.optim.lr_scheduler.StepLR) and scheduler.step_size == 2
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert trained == {id(p) for p in runner.model.student.parameters()}  # the teacher is never optimised
