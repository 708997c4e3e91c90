"""Reliability round 3 (issue 26): faults, odd files, concurrent runs and silent results, as one table.

Every case runs ``kdlight`` the way a user does and checks what the user sees: the exit code, exactly
one ``kdlight: error:`` line (and no traceback) on stderr when it fails, and that the checkpoints and
the export of an earlier run are still there, byte for byte. Most cases run in-process on copies of
one tiny trained run; the ones that need a real process (Ctrl-C, two runs at once, a file-size limit
of the operating system) run the installed console script.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import resource
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import BertForSequenceClassification

import kdlight.cli  # noqa: F401  (imported before capsys: Lightning's log handler binds the stderr it finds)
from conftest import KDLIGHT, data_args, sentiment_rows, subprocess_env, trainer_args, write_csv, write_kd_recipe
from kdlight.cli import main

needs_script = pytest.mark.skipif(KDLIGHT is None, reason="the kdlight console script is not installed")


# ----------------------------------------------------------------------------------------- helpers
def run_kdlight(args, capsys) -> tuple[int, str, str]:
    """``kdlight <args>`` in-process: exit code, stdout, stderr."""
    capsys.readouterr()
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_line(err: str) -> str:
    """The one ``kdlight: error:`` line of a failed run's stderr (and no traceback)."""
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("kdlight: error:")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    """Every checkpoint and export file under ``folder`` by its content hash (config.yaml, the command's
    record, is rewritten by each command on purpose)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink() and p.name != "config.yaml"
    }


def assert_intact(before: dict[str, str], folder: Path) -> None:
    after = snapshot(folder)
    changed = [name for name, digest in before.items() if after.get(name) != digest]
    assert not changed, f"earlier files changed or gone: {changed}"


def kd_options(assets, root: Path, **overrides) -> dict[str, object]:
    """A VanillaKD fit of 2 steps on the tiny task into ``root`` (export in ``root/export``), as options;
    an override of None leaves that option out."""
    options = {
        "--model": "VanillaKD",
        "--model.teacher": assets["teacher"],
        "--model.learning_rate": 1e-3,
        "--model.export_dir": root / "export",
    }
    for arg in [*data_args(assets), *trainer_args(root, **{"--trainer.max_steps": 2})]:
        key, value = arg.split("=", 1)
        options[key] = value
    options.update(overrides)
    return {k: v for k, v in options.items() if v is not None}


def kd_args(assets, root: Path, subcommand: str = "fit", **overrides) -> list[str]:
    return [subcommand, *(f"{k}={v}" for k, v in kd_options(assets, root, **overrides).items())]


@pytest.fixture(scope="module")
def trained(assets, tmp_path_factory) -> Path:
    """One finished run of 2 epochs (12 steps): checkpoints/last.ckpt, a best checkpoint and export/."""
    root = tmp_path_factory.mktemp("trained")
    main(kd_args(assets, root, **{"--trainer.max_steps": -1, "--trainer.max_epochs": 2}))
    assert (root / "checkpoints" / "last.ckpt").is_file() and (root / "export" / "config.json").is_file()
    return root


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    """A private copy of the trained run, so a case may try to damage it."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


# ------------------------------------------------------------------ the table: one kdlight command each
class Ctx:
    """What a case's arrange step gets: the tiny assets, its temp folder (``tmp/run`` is the copy of the
    trained run), the copy itself, and pytest's monkeypatch for simulated faults."""

    def __init__(self, assets, tmp: Path, monkeypatch) -> None:
        self.assets, self.tmp, self.run, self.monkeypatch = assets, tmp, tmp / "run", monkeypatch
        self.snapshot_also: Path | None = None  # a run the case made itself, also to be left intact

    def into_run(self, **overrides) -> dict:
        """Options that fit (again) into the earlier run's folder and export."""
        return {"--trainer.default_root_dir": self.run, "--model.export_dir": self.run / "export", **overrides}


def _labels_file(tmp: Path, labels: list[str], name: str = "train.csv") -> Path:
    rows = sentiment_rows(len(labels), seed=5)
    for row, label in zip(rows, labels, strict=True):
        row["label"] = label
    return write_csv(tmp / name, rows)


def case_case_and_whitespace_labels(c: Ctx) -> dict:
    labels = ["positive", "negative", "Positive", " positive", "negative ", "positive"] * 8
    return {"--data.train_file": _labels_file(c.tmp, labels)}


def two_labels_exported(root: Path, tmp: Path) -> None:
    config = json.loads((root / "export" / "config.json").read_text())
    assert sorted(config["id2label"].values()) == ["negative", "positive"], config["id2label"]


def case_nan_label(c: Ctx) -> dict:
    labels = ["positive", "negative"] * 20
    labels[7] = "NaN"
    return {"--data.train_file": _labels_file(c.tmp, labels)}


def case_one_row_validation(c: Ctx) -> dict:
    return {"--data.val_file": write_csv(c.tmp / "val.csv", sentiment_rows(1, seed=9))}


def case_jsonl_with_scalars(c: Ctx) -> dict:
    path = c.tmp / "train.jsonl"
    lines = [json.dumps(row) for row in sentiment_rows(8, seed=3)]
    lines[3], lines[5] = json.dumps("a good movie"), "5"
    path.write_text("\n".join(lines) + "\n")
    return {"--data.train_file": path}


def case_symlinked_tokenizer(c: Ctx) -> dict:
    teacher = c.tmp / "teacher"
    teacher.mkdir()
    for source in Path(c.assets["teacher"]).iterdir():
        (teacher / source.name).symlink_to(source)
    return {"--model.teacher": teacher}


def _bin_teacher(c: Ctx, legacy: bool) -> Path:
    folder = c.tmp / ("legacy_bin" if legacy else "bin")
    model = BertForSequenceClassification.from_pretrained(c.assets["teacher"])
    model.config.save_pretrained(folder)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save(state, folder / "pytorch_model.bin", _use_new_zipfile_serialization=not legacy)
    for tokenizer_file in Path(c.assets["teacher"]).iterdir():
        if "token" in tokenizer_file.name or tokenizer_file.name == "vocab.txt":
            shutil.copy(tokenizer_file, folder)
    return folder


class Payload:
    """Unpickling this creates ``marker``: the stand-in for code a crafted weights file would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def case_bin_teacher_that_would_run_code(c: Ctx) -> dict:
    folder = _bin_teacher(c, legacy=False)
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    torch.save({**state, "extra": Payload(c.tmp / "marker")}, folder / "pytorch_model.bin")
    return {"--model.teacher": folder}


def no_code_ran(root: Path, tmp: Path) -> None:
    assert not (tmp / "marker").exists(), "unpickling the teacher's weights ran code"


def case_negative_split_seed(c: Ctx) -> dict:
    d = c.assets["data"]
    return {
        "--data.train_file": None,
        "--data.val_file": None,
        "--data.test_file": None,
        "--data.data_file": d / "train.csv",
        "--data.split_seed": -1,
    }


def case_root_is_a_file(c: Ctx) -> dict:
    (c.tmp / "root.txt").write_text("notes")
    return {"--trainer.default_root_dir": c.tmp / "root.txt", "--model.export_dir": c.tmp / "export"}


def case_export_dir_symlink(c: Ctx) -> dict:
    (c.tmp / "export_link").symlink_to(c.run / "export", target_is_directory=True)
    return {"--model.export_dir": c.tmp / "export_link"}


def still_a_symlink(root: Path, tmp: Path) -> None:
    assert (tmp / "export_link").is_symlink()


def _fail_with(c: Ctx, target: str, err: int, only_under: Path | None = None) -> None:
    """Make ``target`` (module.attr) raise OSError(err) as a full disk or read-only folder would."""
    module_name, attr = target.rsplit(".", 1)
    import importlib

    owner = importlib.import_module(module_name)
    original = getattr(owner, attr)

    def failing(*args, **kwargs):
        where = args[1] if len(args) > 1 else kwargs.get("dir") or (args[0] if args else "")
        if only_under is None or str(only_under) in str(where) or str(only_under) in str(kwargs.get("dir", "")):
            raise OSError(err, os.strerror(err))
        return original(*args, **kwargs)

    c.monkeypatch.setattr(owner, attr, failing)


def train_in_place(assets, root: Path, steps: int = 3) -> Path:
    """A short run trained in ``root`` itself: a resume there rewrites its own last.ckpt (in a copied run
    Lightning would write last-v1.ckpt beside it, the recorded folder being another)."""
    main(kd_args(assets, root, **{"--trainer.max_steps": steps}))
    return root


def case_full_disk_on_checkpoint(c: Ctx) -> dict:
    run = train_in_place(c.assets, c.tmp / "own")
    c.snapshot_also = run
    _fail_with(c, "torch.save", errno.ENOSPC)
    return {
        "--trainer.default_root_dir": run,
        "--model.export_dir": run / "export",
        "--ckpt_path": "last",
        "--trainer.max_steps": 4,
    }


def case_full_disk_on_export(c: Ctx) -> dict:
    import transformers

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    c.monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", full)
    return c.into_run()


def case_read_only_export_parent(c: Ctx) -> dict:
    _fail_with(c, "tempfile.mkdtemp", errno.EROFS, only_under=c.run)
    return c.into_run(**{"--trainer.default_root_dir": c.tmp / "new"})


def case_truncated_last_for_test(c: Ctx) -> dict:
    last = c.run / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 3])
    return c.into_run(**{"--ckpt_path": "last"})


def case_lower_max_epochs_on_resume(c: Ctx) -> dict:
    return c.into_run(**{"--ckpt_path": "last", "--trainer.max_steps": -1, "--trainer.max_epochs": 1})


def case_predict_into_a_file(c: Ctx) -> dict:
    (c.tmp / "notes.txt").write_text("x")
    return {"--predictions.output_file": c.tmp / "notes.txt" / "predictions.csv", "--model.export_dir": None}


def _noisy(c: Ctx, **overrides) -> dict:
    d = c.assets["data"]
    options = {
        "--data.train_file": None,
        "--data.val_file": None,
        "--data.test_file": None,
        "--data": "NoisyLabelDataModule",
        "--data.datamodule": "TextClassificationDataModule",
        "--data.datamodule.train_file": d / "train.csv",
        "--data.datamodule.val_file": d / "validation.csv",
        "--data.datamodule.test_file": d / "test.csv",
        "--data.clean_val_size": 16,
        "--data.batch_size": 16,
        "--data.max_length": 32,
    }
    options.update(overrides)
    return options


def case_negative_noise_seed(c: Ctx) -> dict:
    return _noisy(c, **{"--data.seed": -2})


def case_alm_table_too_small(c: Ctx) -> dict:
    return _noisy(
        c, **{"--model": "AdaptiveLossMixingKD", "--model.meta": "MetaLearner", "--model.meta.num_examples": 10}
    )


def case_vanilla_checkpoint_to_alm(c: Ctx) -> dict:
    return _noisy(c, **{"--model": "AdaptiveLossMixingKD", "--ckpt_path": c.run / "checkpoints" / "last.ckpt"})


def nothing_trained(root: Path, tmp: Path) -> None:
    """Stopped before the first step: no checkpoint, no export."""
    written = [p for p in root.rglob("*") if p.suffix == ".ckpt" or "export" in p.parts] if root.exists() else []
    assert not written, written


# name: (arrange(ctx) -> option overrides, exit code, regex on the error line (or on one log line when the
# exit code is 0), optional further check(root, tmp) of what was written)
CASES = {
    # ---- silent-wrong results: an announced normalisation, a clear error, or a warning
    "labels-differing-by-case-or-space": (
        case_case_and_whitespace_labels,
        0,
        r"labels .*normalised.*'Positive'",
        two_labels_exported,
    ),
    "nan-label-cell": (case_nan_label, 2, r"'NaN'.*line 9"),
    "one-row-validation": (case_one_row_validation, 0, r"warning: the validation split has only 1 example"),
    "max-steps-0": (lambda c: c.into_run(**{"--trainer.max_steps": 0}), 2, r"max_steps=0 trains nothing"),
    "max-epochs-0": (
        lambda c: c.into_run(**{"--trainer.max_steps": -1, "--trainer.max_epochs": 0}),
        2,
        r"max_epochs=0 trains nothing",
    ),
    "learning-rate-0": (lambda c: {"--model.learning_rate": 0}, 0, r"warning: learning_rate is 0"),
    # ---- disk and file-system faults
    "full-disk-writing-a-checkpoint": (
        case_full_disk_on_checkpoint,
        2,
        r"could not write checkpoint .*last\.ckpt.* unchanged.*No space left",
    ),
    "full-disk-writing-the-export": (case_full_disk_on_export, 2, r"could not write the export .*No space left"),
    "read-only-export-folder": (case_read_only_export_parent, 2, r"export_dir .*export.*Read-only file system"),
    "export-dir-is-a-symlink": (
        case_export_dir_symlink,
        2,
        r"export_dir .*export_link.* symbolic link",
        still_a_symlink,
    ),
    "default-root-dir-is-a-file": (case_root_is_a_file, 2, r"default_root_dir .*root.txt.* is a file"),
    # ---- odd input files
    "jsonl-mixing-objects-and-scalars": (case_jsonl_with_scalars, 2, r"train.jsonl.*line 4 .*not a JSON object"),
    "tokenizer-files-are-symlinks": (case_symlinked_tokenizer, 0, None),
    "bin-teacher-folder": (lambda c: {"--model.teacher": _bin_teacher(c, legacy=False)}, 0, None),
    "legacy-bin-teacher-folder": (lambda c: {"--model.teacher": _bin_teacher(c, legacy=True)}, 0, None),
    "bin-teacher-that-would-run-code": (
        case_bin_teacher_that_would_run_code,
        2,
        r"pytorch_model.bin.*refusing to load",
        no_code_ran,
    ),
    "bin-file-as-teacher": (
        lambda c: {"--model.teacher": _bin_teacher(c, legacy=False) / "pytorch_model.bin"},
        2,
        r"pytorch_model.bin.*give the folder",
    ),
    "bin-file-as-ckpt-path": (
        lambda c: {"--ckpt_path": _bin_teacher(c, legacy=False) / "pytorch_model.bin"},
        2,
        r"pytorch_model.bin.* not a Lightning checkpoint",
    ),
    # ---- configuration
    "checkpoint-monitor-typo": (
        lambda c: {"--checkpoint.monitor": "val/scroe"},
        2,
        r"monitor 'val/scroe'.*val/score.*val/accuracy",
        nothing_trained,
    ),
    "negative-max-epochs": (lambda c: {"--trainer.max_steps": -1, "--trainer.max_epochs": -3}, 2, r"max_epochs.*-3"),
    "negative-split-seed": (case_negative_split_seed, 2, r"split_seed must be .*-1"),
    "negative-noise-seed": (case_negative_noise_seed, 2, r"seed must be .*-2"),
    "alm-lambda-table-smaller-than-training-set": (
        case_alm_table_too_small,
        2,
        r"num_examples=10 .*training",
        nothing_trained,
    ),
    "vanilla-checkpoint-given-to-alm": (case_vanilla_checkpoint_to_alm, 2, r"last.ckpt.*AdaptiveLossMixingKD"),
    "lower-max-epochs-resuming-a-finished-run": (
        case_lower_max_epochs_on_resume,
        2,
        r"already trained 12 steps.*max_epochs=1",
    ),
    "predict-output-folder-cannot-be-created": (
        lambda c: {"--ckpt_path": c.run / "checkpoints" / "last.ckpt", **case_predict_into_a_file(c)},
        2,
        r"notes.txt",
    ),
    "test-truncated-last-ckpt": (case_truncated_last_for_test, 2, r"unreadable checkpoint .*last.ckpt"),
}
SUBCOMMANDS = {"predict-output-folder-cannot-be-created": "predict", "test-truncated-last-ckpt": "test"}


@pytest.mark.parametrize("case", list(CASES))
def test_case(case, assets, run_copy, tmp_path, capsys, caplog, monkeypatch):
    """Each case's fit next to a finished earlier run: right exit code, one line, the earlier run untouched."""
    arrange, expected_code, pattern = CASES[case][:3]
    check = CASES[case][3] if len(CASES[case]) > 3 else None
    root = tmp_path / "new"
    ctx = Ctx(assets, tmp_path, monkeypatch)
    overrides = arrange(ctx)
    args = kd_args(assets, root, SUBCOMMANDS.get(case, "fit"), **overrides)
    root = Path(overrides.get("--trainer.default_root_dir", root))
    before = snapshot(run_copy)
    own_before = snapshot(ctx.snapshot_also) if ctx.snapshot_also else None
    with caplog.at_level(logging.INFO):
        code, out, err = run_kdlight(args, capsys)
    assert code == expected_code, f"exit {code}:\n{err[-3000:]}"
    if expected_code != 0:
        line = error_line(err)
        assert pattern is None or re.search(pattern, line), line
    else:
        assert "Traceback" not in err
        logs = [r.getMessage() for r in caplog.records] + out.splitlines() + err.splitlines()
        if pattern is not None:
            found = [line for line in logs if re.search(pattern, line)]
            assert len(found) == 1, "\n".join(logs[-40:])
    if check is not None:
        check(root, tmp_path)
    assert_intact(before, run_copy)
    if own_before is not None:
        assert_intact(own_before, ctx.snapshot_also)


# ------------------------------------------------------------------ cases that need a real process
def write_recipe(folder: Path, assets, **trainer) -> Path:
    """A VanillaKD recipe on the tiny task with the user's defaults (CSV/TensorBoard logger, checkpoints)."""
    return write_kd_recipe(folder, assets, **{"max_epochs": 2, "enable_progress_bar": False, **trainer})


def start(args, cwd: Path, file_size_limit: int | None = None) -> subprocess.Popen:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.Popen(
        [KDLIGHT, *map(str, args)],
        cwd=cwd,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=limit if file_size_limit else None,
    )


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


@needs_script
@pytest.mark.slow
def test_ctrl_c_saves_last_ckpt_and_says_how_to_resume(assets, tmp_path):
    """SIGINT at step 3: last.ckpt at step 3, exit 130, one line naming --ckpt_path last (was: a traceback)."""
    folder = write_recipe(tmp_path, assets)
    callback = ["--trainer.callbacks+=signal_at.SignalAt", "--trainer.callbacks.step=3"]
    code, out, err = finish(start(["fit", "--config", "kd.yaml", *callback], folder))
    assert code == 128 + signal.SIGINT, err[-3000:]
    line = error_line(err)
    assert re.search(r"interrupted .*step 3.*--ckpt_path last", line), line
    last = next(folder.rglob("last.ckpt"))
    assert torch.load(last, weights_only=True)["global_step"] == 3


@needs_script
@pytest.mark.slow
def test_two_runs_started_together_get_their_own_version_folders(assets, tmp_path):
    """Two fits into one default_root_dir at the same moment: two run folders, two exports (the second run once
    took the first's version_0 and replaced its export)."""
    folder = write_recipe(tmp_path, assets, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    procs = [start(["fit", "--config", "kd.yaml", f"--seed_everything={seed}"], folder) for seed in (0, 1)]
    results = [finish(proc) for proc in procs]
    for code, _, err in results:
        assert code == 0, err[-3000:]
    runs = sorted((folder / "lightning_logs").glob("version_*"))
    assert [run.name for run in runs] == ["version_0", "version_1"], runs
    exports = [json.loads((run / "export" / "config.json").read_text()) for run in runs]
    assert len(exports) == 2
    checkpoints = [torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] for run in runs]
    assert checkpoints == [2, 2]


def test_runs_built_together_claim_distinct_version_folders(assets, tmp_path):
    """The race of two runs started together, made certain: both trainers exist before either has written
    anything. Each must hold its own version_N folder already (Lightning picked version_0 for both)."""
    from kdlight.cli import cli

    args = kd_args(assets, tmp_path, **{"--trainer.logger": None})[1:]
    first, second = cli(args, run=False), cli(args, run=False)
    versions = [first.trainer.logger.version, second.trainer.logger.version]
    assert sorted(versions) == [0, 1], versions
    assert all(Path(runner.trainer.logger.log_dir).is_dir() for runner in (first, second))


@needs_script
@pytest.mark.slow
def test_file_size_limit_while_writing_a_checkpoint_keeps_the_last_good_one(assets, tmp_path):
    """A resumed fit under a file-size limit smaller than a checkpoint (EFBIG, as a full disk): exit 2, one
    line naming the checkpoint, and the previous last.ckpt and export unchanged and loadable."""
    run = train_in_place(assets, tmp_path / "run")
    before = snapshot(run)
    limit = (run / "checkpoints" / "last.ckpt").stat().st_size // 2
    args = kd_args(assets, run, **{"--ckpt_path": "last", "--trainer.max_steps": 4})
    code, out, err = finish(start(args, tmp_path, file_size_limit=limit))
    assert code == 2, err[-3000:]
    line = error_line(err)  # one step, then last.ckpt at the end of training is too large to write
    assert re.search(r"could not write checkpoint .*last\.ckpt.* unchanged.*File too large", line), line
    assert_intact(before, run)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3


# ------------------------------------------------------------------------- tests that could not fail
def test_pct_of_teacher_is_100_for_a_student_that_is_the_teacher(assets, tmp_path, capsys):
    """A TruncatedTeacher that keeps all 4 of the teacher's layers is the teacher: its test score is the
    teacher's, so test/pct_of_teacher is exactly 100 (the value, not only the key)."""
    from kdlight.cli import cli

    args = kd_args(assets, tmp_path, "test", **{"--model.student": "TruncatedTeacher", "--model.student.num_layers": 4})
    runner = cli(args[1:], run=False)
    metrics = runner.trainer.test(runner.model, datamodule=runner.datamodule, verbose=False)[0]
    assert metrics["test/teacher_score"] == pytest.approx(metrics["test/score"])
    assert 0.0 < metrics["test/score"] < 1.0  # a tiny random teacher: a real, non-trivial score
    assert metrics["test/pct_of_teacher"] == pytest.approx(100.0)


def test_pct_of_teacher_is_the_ratio_of_the_two_scores(assets, tmp_path):
    """A 1-layer student of the random 4-layer teacher scores differently; the logged value is 100 x the ratio
    of the logged scores, computed here from the test file by hand."""
    from kdlight.cli import cli

    args = kd_args(assets, tmp_path, "test", **{"--model.student": "TruncatedTeacher", "--model.student.num_layers": 1})
    runner = cli(args[1:], run=False)
    metrics = runner.trainer.test(runner.model, datamodule=runner.datamodule, verbose=False)[0]
    datamodule, model = runner.datamodule, runner.model.eval()
    correct = {"student": 0, "teacher": 0}
    total = 0
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
            for name, net in (("student", model.student), ("teacher", model.teacher)):
                correct[name] += int((net(**inputs).logits.argmax(-1) == batch["labels"]).sum())
            total += len(batch["labels"])
    expected = 100.0 * correct["student"] / correct["teacher"]
    assert metrics["test/pct_of_teacher"] == pytest.approx(expected, rel=1e-5)


def test_quickstart_table_shows_the_numbers_in_results_json(tmp_path):
    """The printed table is made from the same summary as results.json: every number in it reads back."""
    from kdlight.quickstart import format_table, summarise

    teacher = {"metrics": {"test/score": 0.8125}, "params": 22_713_986, "seconds": 61.2, "steps": 500}
    student = {"metrics": {"test/score": 0.7650}, "params": 4_567_890, "seconds": 20.7, "steps": 400}
    teacher["samples_per_s"], student["samples_per_s"] = 310.0, 1240.0
    teacher["export"], student["export"] = "t/export", "s/export"
    summary = summarise(teacher, student, total_seconds=90.4)
    (tmp_path / "results.json").write_text(json.dumps(summary))
    written = json.loads((tmp_path / "results.json").read_text())
    rows = {
        line.split("|")[0].strip(): [c.strip() for c in line.split("|")[1:]]
        for line in format_table(summary).splitlines()
        if "|" in line
    }
    assert rows["test accuracy"] == [f"{written['teacher_score']:.4f}", f"{written['student_score']:.4f}"]
    assert rows["% of teacher"][1] == f"{100 * written['student_score'] / written['teacher_score']:.1f}"
    assert rows["% of teacher"][1] == "94.2"  # 0.7650 / 0.8125, worked out by hand
    assert rows["parameters"] == [f"{written['teacher_params'] / 1e6:.2f}M", f"{written['student_params'] / 1e6:.2f}M"]
    assert rows["compression"][1] == f"{written['teacher_params'] / written['student_params']:.2f}x"
    assert rows["training steps"] == [str(written["teacher_steps"]), str(written["student_steps"])]
    speed = rows["inference (CPU, batch 32)"]
    assert (
        speed[0].startswith(f"{written['teacher_samples_per_s']:.0f} ") and f"({written['speedup']:.1f}x)" in speed[1]
    )
    assert written["speedup"] == pytest.approx(4.0)
