"""A checkpoint never overrides the user's config and never makes kdlight write outside its run (issue 27).

Each test runs the installed ``kdlight`` console script in a subprocess from temporary folders with tiny
models, as a user would (further variants of a case call its entry point in this process: the same code
without ~6 s of start-up each): a checkpoint's hyper-parameters do not pick the export folder, the module class or
the teacher; paths stored in a checkpoint are read in the run folder that holds it; ``last``/``best`` name the
recipe's own run; exports look like any ``save_pretrained`` folder.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import KDLIGHT, kdlight_script, tiny_task_data

pytestmark = [
    pytest.mark.xdist_group("trust"),  # one worker: the module's runs are made once
    pytest.mark.slow,  # each test starts the console script (seconds of imports each)
    pytest.mark.skipif(KDLIGHT is None, reason="the kdlight console script is not installed"),
]
UMASK = 0o022


def kdlight(*args, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return kdlight_script(*args, cwd=cwd, check=check, umask=UMASK)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The run stopped the way bad input should: exit 2, one ``kdlight: error:`` line, no traceback."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("kdlight: error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def recipe(assets, teacher: Path, module: str) -> dict:
    model = (
        {"class_path": "VanillaKD", "init_args": {"teacher": str(teacher), "learning_rate": 1e-3}}
        if module == "VanillaKD"
        else {"class_path": "TeacherFineTuning", "init_args": {"model": str(teacher), "learning_rate": 1e-3}}
    )
    if module == "VanillaKD":
        model["init_args"]["student"] = {"class_path": "TruncatedTeacher", "init_args": {"num_layers": 1}}
    return {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 1,
            "accelerator": "cpu",
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
        "model": model,
        "data": tiny_task_data(assets),
    }


def write_recipes(folder: Path, assets, teacher: Path) -> None:
    (folder / "kd.yaml").write_text(yaml.safe_dump(recipe(assets, teacher, "VanillaKD")))
    (folder / "ft.yaml").write_text(yaml.safe_dump(recipe(assets, teacher, "TeacherFineTuning")))


@pytest.fixture(scope="module")
def runs(assets, tmp_path_factory) -> dict[str, Path]:
    """One folder holding two recipes' runs: VanillaKD (version_0), then TeacherFineTuning (version_1).

    The teacher's config carries an ``auto_map`` to remote code that is not there (as hub models' do)."""
    root = tmp_path_factory.mktemp("trust")
    teacher = root / "teacher"
    shutil.copytree(assets["teacher"], teacher)
    config = json.loads((teacher / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_custom.CustomModel"}
    (teacher / "config.json").write_text(json.dumps(config))
    other_teacher = root / "other_teacher"
    shutil.copytree(assets["teacher"], other_teacher)
    work = root / "work"
    work.mkdir()
    write_recipes(work, assets, teacher)
    kdlight("fit", "--config", "kd.yaml", cwd=work)
    kdlight("fit", "--config", "ft.yaml", cwd=work)
    logs = work / "lightning_logs"
    return {
        "root": root,
        "work": work,
        "teacher": teacher,
        "other_teacher": other_teacher,
        "kd": logs / "version_0",
        "ft": logs / "version_1",
    }


def fresh_folder(runs, tmp_path: Path, assets) -> Path:
    folder = tmp_path / "fresh"
    folder.mkdir()
    write_recipes(folder, assets, runs["teacher"])
    return folder


def printed_checkpoint(proc: subprocess.CompletedProcess, alias: str) -> Path:
    match = re.search(rf"--ckpt_path {alias}: (\S+)", proc.stdout + proc.stderr)
    assert match, (proc.stdout + proc.stderr)[-3000:]
    return Path(match.group(1))


# ------------------------------------------------------------------------------------------- security
def test_checkpoint_hparams_never_choose_the_export_folder(runs, assets, tmp_path, kdlight_here):
    """A checkpoint that loads safely but names ``export_dir`` in its hyper-parameters must not make the
    export replace that folder (outside the run); the config's export folder is used and the difference
    is announced in one line."""
    victim = tmp_path / "someone_elses_model"
    shutil.copytree(assets["teacher"], victim)  # a save_pretrained folder: an export may replace such a folder
    before = {p.name: p.read_bytes() for p in victim.iterdir()}
    crafted = torch.load(runs["kd"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    crafted["hyper_parameters"]["export_dir"] = str(victim)
    torch.save(crafted, tmp_path / "crafted.ckpt")
    work = fresh_folder(runs, tmp_path, assets)
    proc = kdlight_here(
        "fit", "--config", "kd.yaml", "--ckpt_path", tmp_path / "crafted.ckpt", "--trainer.max_epochs=2", cwd=work
    )
    assert {p.name: p.read_bytes() for p in victim.iterdir()} == before, "a folder outside the run was replaced"
    assert (work / "lightning_logs" / "version_0" / "export" / "config.json").is_file()
    out = proc.stdout + proc.stderr
    assert [line for line in out.splitlines() if "export_dir" in line and str(victim) in line], out[-3000:]


# -------------------------------------------------------------------------- module class and teacher
@pytest.mark.parametrize(
    ("subcommand", "config", "checkpoint_of", "written_by", "built"),
    [
        ("test", "kd.yaml", "ft", "TeacherFineTuning", "VanillaKD"),
        ("fit", "ft.yaml", "kd", "VanillaKD", "TeacherFineTuning"),
    ],
)
def test_checkpoint_of_another_module_class_stops(
    runs, assets, tmp_path, subcommand, config, checkpoint_of, written_by, built, kdlight_here
):
    """The recipe's module class is the config's: a checkpoint of another recipe stops in one line
    (it used to replace the class silently: KD scored as teacher fine-tuning and the other way round).
    Both call the entry point in this process (the installed script's one-line errors: the mistyped-key test)."""
    work = fresh_folder(runs, tmp_path, assets)
    checkpoint = runs[checkpoint_of] / "checkpoints" / "last.ckpt"
    proc = kdlight_here(subcommand, "--config", config, "--ckpt_path", checkpoint, cwd=work, check=False)
    line = one_error_line(proc)
    assert f"written by {written_by}" in line and f"config builds {built}" in line, line
    assert not (work / "lightning_logs" / "version_0" / "export").exists()


def test_explicit_teacher_is_never_replaced_by_the_checkpoints(runs, assets, tmp_path, kdlight_here):
    work = fresh_folder(runs, tmp_path, assets)
    checkpoint = runs["kd"] / "checkpoints" / "last.ckpt"
    proc = kdlight_here(
        "test",
        "--config",
        "kd.yaml",
        "--model.init_args.teacher",
        runs["other_teacher"],
        "--ckpt_path",
        checkpoint,
        cwd=work,
        check=False,
    )
    line = one_error_line(proc)
    assert "teacher" in line and str(runs["other_teacher"]) in line and str(runs["teacher"]) in line, line


# --------------------------------------------------------------------------------- last / best
def test_last_and_best_name_the_recipes_own_run(runs, kdlight_here):
    """Two recipes share a folder: ``last``/``best`` of each are its own run's, not the newest run's (one alias
    of each recipe through the installed script, the other in this process)."""
    work = runs["work"]
    cases = [("kd.yaml", "last", kdlight), ("kd.yaml", "best", kdlight_here)]
    cases += [("ft.yaml", "last", kdlight_here), ("ft.yaml", "best", kdlight)]
    for config, alias, run_kdlight in cases:
        run = runs["kd" if config == "kd.yaml" else "ft"]
        proc = run_kdlight("test", "--config", config, "--ckpt_path", alias, cwd=work)
        assert printed_checkpoint(proc, alias).parent == run / "checkpoints", (config, alias)
        assert "test/accuracy" in proc.stdout + proc.stderr
    # a recipe with no run of its own there (another teacher): one line, not another recipe's checkpoint
    proc = kdlight_here(
        "test",
        "--config",
        "kd.yaml",
        "--model.init_args.teacher",
        runs["other_teacher"],
        "--ckpt_path",
        "last",
        cwd=work,
        check=False,
    )
    assert "no run with a last.ckpt of VanillaKD" in one_error_line(proc)


def test_test_without_ckpt_path_says_it_scores_the_untrained_student(runs, assets, tmp_path, kdlight_here):
    work = fresh_folder(runs, tmp_path, assets)
    proc = kdlight_here("test", "--config", "kd.yaml", cwd=work)
    hints = [line for line in (proc.stdout + proc.stderr).splitlines() if "--ckpt_path best" in line]
    assert len(hints) == 1 and "untrained" in hints[0], (proc.stdout + proc.stderr)[-3000:]


# ------------------------------------------------------------------------------------- stored paths
def test_a_copied_run_folder_uses_its_own_files(runs, tmp_path, kdlight_here):
    """``last.ckpt`` records absolute paths; in a copy of the run folder they name the original's files.
    ``best`` and the export of a resumed fit must use the copy's own best checkpoint."""
    copy = tmp_path / "copy"
    shutil.copytree(runs["work"], copy)
    checkpoints = copy / "lightning_logs" / "version_0" / "checkpoints"
    (best,) = checkpoints.glob("best-*.ckpt")
    # make the copy's best checkpoint tell itself apart from the original's
    state = torch.load(best, map_location="cpu", weights_only=True)
    state["state_dict"]["student.classifier.bias"] = state["state_dict"]["student.classifier.bias"] + 1.0
    torch.save(state, best)
    proc = kdlight_here("test", "--config", "kd.yaml", "--ckpt_path", "best", cwd=copy)
    assert printed_checkpoint(proc, "best") == best
    export = copy / "lightning_logs" / "version_0" / "export"
    shutil.rmtree(export)
    original_bias = state["state_dict"]["student.classifier.bias"] - 1.0
    # a finished run has nothing left to train (an error, tests/test_reliability.py), so train one more epoch:
    # the export is then the best of the copy's own checkpoints, never the original folder's best
    proc = kdlight("fit", "--config", "kd.yaml", "--ckpt_path", "last", "--trainer.max_epochs", "2", cwd=copy)
    assert "its checkpoints are looked up in" in proc.stdout + proc.stderr
    exported = load_file(export / "model.safetensors")
    assert not torch.allclose(exported["classifier.bias"], original_bias)


# ------------------------------------------------------------------------------------------ exports
@pytest.mark.parametrize("run", ["kd", "ft"])
def test_exports_are_plain_save_pretrained_folders(runs, run):
    """Readable under the user's umask (not mkdtemp's 0700), no ``auto_map`` to remote code that is not
    there, and the tokenizer's ``model_max_length`` is the length the model was trained with."""
    export = runs[run] / "export"
    assert stat.S_IMODE(export.stat().st_mode) == 0o777 & ~UMASK
    for path in export.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~UMASK, path
    assert "auto_map" not in json.loads((export / "config.json").read_text())
    assert json.loads((export / "tokenizer_config.json").read_text())["model_max_length"] == 32


# -------------------------------------------------------------------------------------------- input
def test_a_teacher_folder_without_its_vocabulary_stops(runs, assets, tmp_path, kdlight_here):
    """Without tokenizer.json the folder still loads, as a tokenizer of its 5 special tokens that reads
    every word as [UNK]; training on that must stop in one line, not train and export."""
    broken = tmp_path / "teacher_without_vocabulary"
    shutil.copytree(runs["teacher"], broken)
    (broken / "tokenizer.json").unlink()
    work = fresh_folder(runs, tmp_path, assets)
    proc = kdlight_here(
        "fit",
        "--config",
        "kd.yaml",
        "--model.init_args.teacher",
        broken,
        "--trainer.fast_dev_run=1",
        cwd=work,
        check=False,
    )
    line = one_error_line(proc)
    assert "tokenizer" in line and "vocabulary" in line, line


def test_a_csv_cell_longer_than_the_csv_modules_limit_is_read(runs, assets, tmp_path):
    """Through the installed script: the one test of ``kdlight validate`` as a user runs it."""
    rows = (assets["data"] / "validation.csv").read_text().splitlines()
    long_text = " ".join(["good movie"] * 70_000)  # 699,999 characters, over csv's 131,072 default
    (tmp_path / "long.csv").write_text("\n".join([rows[0], f'"{long_text}",positive', *rows[1:]]) + "\n")
    work = fresh_folder(runs, tmp_path, assets)
    proc = kdlight("validate", "--config", "kd.yaml", "--data.init_args.val_file", tmp_path / "long.csv", cwd=work)
    assert "val/accuracy" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model.init_args.temprature", "2"], r"--model\.temprature: .*did you mean temperature"),
        (["--model.learning_rat", "1e-3"], r"--model\.learning_rat: .*did you mean learning_rate"),
        (["--model.student.num_layer", "1"], r"--model\.student\.num_layer: .*did you mean num_layers"),
        (["--data.init_args.max_lenght", "16"], r"--data\.max_lenght: .*did you mean max_length"),
        (["--trainer.max_epochz", "2"], r"--trainer\.max_epochz.*did you mean --trainer\.max_epochs"),
        (["--checkpoint.monitr", "val/loss"], r"--checkpoint\.monitr.*did you mean --checkpoint\.monitor"),
        (["--data.batch_size", "many"], r"--data\.batch_size: 'many' .*expected int"),
        (["--model.learning_rate", "fast"], r"--model\.learning_rate: 'fast' .*expected float"),
        (["--trainer.max_epochs", "three"], r"--trainer\.max_epochs: 'three' .*expected int"),
        (["--model.student.num_layers", "x"], r"--model\.student\.num_layers: 'x' .*expected int"),
    ],
)
def test_a_mistyped_key_or_value_is_one_line_with_the_closest_key(runs, assets, tmp_path, args, expected, kdlight_here):
    """Not a 70-90 line usage dump: one line naming the option, what is wrong, and the closest key. The first
    case runs the installed script; the others call its entry point in this process (parsing only, faster)."""
    work = fresh_folder(runs, tmp_path, assets)
    run_kdlight = kdlight if args[0] == "--model.init_args.temprature" else kdlight_here
    proc = run_kdlight("fit", "--config", "kd.yaml", *args, cwd=work, check=False)
    assert re.search(expected, one_error_line(proc))
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
