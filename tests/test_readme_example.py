"""The README's "new KD variant" example runs as written, through the CLI."""

import re
import sys
from pathlib import Path

from conftest import data_args, trainer_args
from kdlight.cli import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    match = re.search(r"<!-- example: my_kd.py -->\s*```python\n(.*?)```\s*<!-- /example -->", README.read_text(), re.S)
    assert match, "README lost its example block"
    return match.group(1)


def test_readme_variant_trains(assets, tmp_path, monkeypatch):
    code = readme_example()
    (tmp_path / "my_kd.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_kd", None)
    teacher = assets["teacher"]
    runner = cli(
        [
            "--model=my_kd.LogitMatchingKD",
            f"--model.teacher={teacher}",
            "--model.beta=0.3",
            "--model.learning_rate=1e-3",
            *data_args(assets),
            *trainer_args(tmp_path, **{"--trainer.max_steps": 3}),
        ],
        run=False,
    )
    student_before = [p.detach().clone() for p in runner.model.student.parameters()]
    teacher_before = [p.detach().clone() for p in runner.model.teacher.parameters()]
    runner.trainer.fit(runner.model, datamodule=runner.datamodule)
    metrics = runner.trainer.callback_metrics
    assert {"train/mse", "train/ce", "train/loss"} <= set(metrics)
    assert abs(metrics["train/loss"] - (0.3 * metrics["train/mse"] + 0.7 * metrics["train/ce"])) < 1e-5
    assert any(not (a == b).all() for a, b in zip(student_before, runner.model.student.parameters(), strict=True))
    assert all((a == b).all() for a, b in zip(teacher_before, runner.model.teacher.parameters(), strict=True))  # frozen
