"""The user's real path: the installed ``kdlight`` console script in a subprocess, run from a fresh working
directory with the defaults a user gets (CSV logger, progress bar, checkpointing).

In-process ``cli([...])`` tests with the logger off are faster but take other paths (sys.path, run
folders, signal handling); these are the proof that the README's commands do what it says. Each of fit,
validate, test and predict runs through the installed script at least once, here or in
test_checkpoint_trust.py; further calls of the same kind (a second alias, an error case, a fit that only
prepares a run folder) use ``kdlight_here``: the script's entry point in this process, with the user's
defaults, without ~6 s of start-up.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from conftest import KDLIGHT, write_kd_recipe
from conftest import kdlight_script as kdlight
from kdlight.models import load_from_checkpoint

REPO = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,  # each test starts the console script (seconds of imports each)
    pytest.mark.skipif(KDLIGHT is None, reason="the kdlight console script is not installed (pip install -e .)"),
]


def write_recipe(folder: Path, assets) -> Path:
    """A VanillaKD recipe on the tiny task (3 epochs of 6 batches, dropout on) in a fresh working directory."""
    return write_kd_recipe(folder, assets, max_epochs=3)


@pytest.fixture
def workdir(assets, tmp_path) -> Path:
    return write_recipe(tmp_path, assets)


@pytest.fixture(scope="module")
def uninterrupted(assets, tmp_path_factory) -> tuple[dict[str, torch.Tensor], list[tuple]]:
    """The student and the metrics.csv rows after the recipe ran to the end without interruption."""
    folder = write_recipe(tmp_path_factory.mktemp("uninterrupted"), assets)
    kdlight("fit", "--config", "kd.yaml", cwd=folder)
    return student_state(run_folder(folder) / "checkpoints" / "last.ckpt"), metrics_rows(run_folder(folder))


def metrics_rows(run: Path) -> list[tuple]:
    """metrics.csv as a sorted list of rows, each its non-empty (column, value) pairs."""
    text = (run / "metrics.csv").read_text().splitlines()
    header = text[0].split(",")
    return sorted(tuple(sorted((k, v) for k, v in zip(header, line.split(","), strict=True) if v)) for line in text[1:])


def run_folder(workdir: Path, version: int = 0) -> Path:
    return workdir / "lightning_logs" / f"version_{version}"


def student_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return {k: v for k, v in state["state_dict"].items() if k.startswith("student.")}


@pytest.mark.xdist_group("resume")  # both cases on one worker: the uninterrupted run is made once
@pytest.mark.parametrize(("signal_name", "exit_code", "resumed_from_step"), [("SIGKILL", -9, 6), ("SIGTERM", 143, 8)])
def test_stopped_fit_resumes_where_it_stopped(workdir, uninterrupted, signal_name, exit_code, resumed_from_step):
    """Stopped at step 8 of 18: SIGKILL loses the steps after the epoch-end last.ckpt (step 6), SIGTERM saves
    last.ckpt at step 8 first (mid-epoch). Either way `--ckpt_path last` continues in the same run folder and
    ends with exactly the weights of an uninterrupted run (same batches, same dropout masks) and its metrics.csv
    rows, each once (no row of a step run twice, none of the step the stop interrupted lost)."""
    stopped = kdlight(
        "fit",
        "--config",
        "kd.yaml",
        "--trainer.callbacks+=signal_at.SignalAt",
        "--trainer.callbacks.step=8",
        f"--trainer.callbacks.sig={signal_name}",
        cwd=workdir,
        check=False,
    )
    assert stopped.returncode == exit_code, stopped.stderr[-2000:]
    last = run_folder(workdir) / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == resumed_from_step
    resumed = kdlight("fit", "--config", "kd.yaml", "--ckpt_path", "last", cwd=workdir)
    assert "Restored all states" in resumed.stdout + resumed.stderr
    assert not run_folder(workdir, 1).exists(), "the resumed run must continue its folder, not start version_1"
    final = torch.load(last, weights_only=True)
    assert final["global_step"] == 18
    expected, expected_rows = uninterrupted
    assert expected.keys() == student_state(last).keys()
    for name, value in student_state(last).items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0, msg=name)
    assert metrics_rows(run_folder(workdir)) == expected_rows


def test_fit_keeps_best_and_evaluation_uses_the_checkpoint_it_names(assets, workdir, kdlight_here):
    """fit keeps best-*.ckpt; predict and test with ``last``/``best`` use the file they name (predict last through
    the installed script; fit, predict best and test best call its entry point in this process)."""
    kdlight_here("fit", "--config", "kd.yaml", "--trainer.max_epochs=2", cwd=workdir)
    folder = run_folder(workdir) / "checkpoints"
    best = sorted(folder.glob("best-*.ckpt"))
    assert best and (folder / "last.ckpt").is_file(), "validation at epoch end must keep a best-*.ckpt"
    recorded = torch.load(folder / "last.ckpt", weights_only=True)["callbacks"]
    best_path = next(v["best_model_path"] for k, v in recorded.items() if "Checkpoint" in k)
    texts = [line.rsplit(",", 1)[0].strip('"') for line in (assets["data"] / "test.csv").read_text().splitlines()[1:]]
    tokenizer = AutoTokenizer.from_pretrained(assets["teacher"])
    for alias, expected_file, run_kdlight in (
        ("last", folder / "last.ckpt", kdlight),
        ("best", Path(best_path), kdlight_here),
    ):
        proc = run_kdlight(
            "predict",
            "--config",
            "kd.yaml",
            "--ckpt_path",
            alias,
            "--predictions.output_file",
            f"{alias}.csv",
            cwd=workdir,
        )
        out = proc.stdout + proc.stderr
        assert Path(re.search(rf"--ckpt_path {alias}: (\S+)", out).group(1)) == expected_file
        rows = (workdir / f"{alias}.csv").read_text().splitlines()[1:]
        assert [int(row.split(",")[0]) for row in rows] == list(range(len(texts)))
        predicted = torch.tensor([[float(v) for v in row.split(",")[3].split()] for row in rows])
        model = load_from_checkpoint(str(expected_file))
        with torch.no_grad():
            logits = model(**tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")).logits
        torch.testing.assert_close(predicted, logits, rtol=0, atol=1e-4)
    proc = kdlight_here("test", "--config", "kd.yaml", "--ckpt_path", "best", cwd=workdir)
    out = proc.stdout + proc.stderr
    assert f"--ckpt_path best: {best_path}" in out and "test/accuracy" in out


def test_test_without_a_trained_run_is_an_error_not_an_untrained_score(workdir, kdlight_here):
    proc = kdlight_here("test", "--config", "kd.yaml", "--ckpt_path", "last", cwd=workdir, check=False)
    assert proc.returncode == 2
    assert re.search(r"kdlight: error: --ckpt_path last: no run with a last.ckpt", proc.stderr)
    assert "Traceback" not in proc.stderr
    proc = kdlight_here("test", "--config", "kd.yaml", "--ckpt_path", "nowhere.ckpt", cwd=workdir, check=False)
    assert proc.returncode == 2 and "checkpoint not found: 'nowhere.ckpt'" in proc.stderr


def test_readme_variant_command_runs_verbatim(assets, workdir):
    """README: write my_kd.py, then `kdlight fit --config configs/quickstart/kd.yaml --model my_kd.LogitMatchingKD
    --model.beta 0.3` from that folder (with tiny stand-ins for the quickstart's teacher, data, trainer, student)."""
    readme = (REPO / "README.md").read_text()
    code = re.search(r"<!-- example: my_kd.py -->\s*```python\n(.*?)```", readme, re.DOTALL).group(1)
    command = re.search(
        r"^kdlight fit --config configs/quickstart/kd.yaml --model my_kd\.\S+.*$", readme, re.MULTILINE
    ).group(0)
    (workdir / "my_kd.py").write_text(code)
    data = assets["data"]
    tiny = [
        "--model.teacher",
        assets["teacher"],
        "--data",
        "TextClassificationDataModule",
        "--data.train_file",
        data / "train.csv",
        "--data.val_file",
        data / "validation.csv",
        "--data.max_length",
        "32",
        "--data.batch_size",
        "16",
        "--trainer.max_epochs",
        "1",
        "--trainer.default_root_dir",
        workdir / "runs",
        "--model.cache_teacher_logits",
        "false",
        # the quickstart's compact student (rank-128 embeddings, the RT vocabulary) does not fit the tiny teacher
        "--model.student",
        "TruncatedTeacher",
        "--model.student.num_layers",
        "1",
    ]
    args = command.split()[1:]
    args[args.index("--config") + 1] = str(REPO / "configs/quickstart/kd.yaml")
    proc = kdlight(*args, *tiny, cwd=workdir)
    hparams = yaml.safe_load(next((workdir / "runs").rglob("hparams.yaml")).read_text())
    assert hparams["beta"] == 0.3
    assert (workdir / "runs" / "lightning_logs" / "version_0" / "export" / "config.json").is_file(), proc.stdout[-2000:]


def test_predict_on_an_unlabelled_file_writes_one_row_per_input_in_order(assets, tmp_path, kdlight_here):
    """README: `kdlight predict --model TeacherFineTuning --model.model <export> --data TextClassificationDataModule
    --data.predict_file new.csv` with a file that has no label column (the entry point in this process: predict
    through the installed script: test_fit_keeps_best_and_evaluation_uses_the_checkpoint_it_names)."""
    texts = ["a good movie", "the plot was awful", "very boring film", "superb and moving", "it is fine"]
    (tmp_path / "new.csv").write_text("text\n" + "\n".join(texts) + "\n")
    kdlight_here(
        "predict",
        "--model",
        "TeacherFineTuning",
        "--model.model",
        assets["teacher"],
        "--data",
        "TextClassificationDataModule",
        "--data.predict_file",
        "new.csv",
        "--data.max_length",
        "32",
        "--data.label_names",
        "[negative, positive]",
        cwd=tmp_path,
    )
    rows = (run_folder(tmp_path) / "predictions.csv").read_text().splitlines()
    assert rows[0] == "idx,prediction,label,logits"
    assert [int(row.split(",")[0]) for row in rows[1:]] == list(range(len(texts)))
    model = AutoModelForSequenceClassification.from_pretrained(assets["teacher"])
    tokenizer = AutoTokenizer.from_pretrained(assets["teacher"])
    with torch.no_grad():
        expected = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    predicted = torch.tensor([[float(v) for v in row.split(",")[3].split()] for row in rows[1:]])
    torch.testing.assert_close(predicted, expected, rtol=0, atol=1e-4)
    assert [row.split(",")[2] for row in rows[1:]] == [
        ["negative", "positive"][i] for i in expected.argmax(-1).tolist()
    ]
