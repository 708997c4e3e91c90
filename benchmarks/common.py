"""What several studies in benchmarks/ use: the repository's paths, the CLI, the fine-tuned offline teacher.

Runs, workers and result files are ``benchmarks/study.py``'s."""

from __future__ import annotations

import time
from pathlib import Path

from kdlight.assets import cache_dir

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def run_cli(args: list[str]):
    """Build a kdlight CLI run without running it (returns the LightningCLI with trainer/model/data)."""
    from kdlight.cli import cli

    return cli(args, run=False)


def fine_tuned_rt_teacher(extra_args: list[str] | None = None, name: str = "minilm_rt") -> Path:
    """The quickstart teacher (all-MiniLM-L6-v2 fine-tuned on Rotten Tomatoes), trained once and cached.

    Returns the ``save_pretrained`` folder. Delete ``<cache>/teachers/<name>`` to retrain.
    """
    out = cache_dir() / "teachers" / name
    if (out / "export" / "config.json").is_file():
        return out / "export"
    start = time.perf_counter()
    runner = run_cli(
        [
            "--config",
            str(CONFIGS / "quickstart" / "teacher.yaml"),
            f"--trainer.default_root_dir={out}",
            f"--model.init_args.export_dir={out / 'export'}",
            "--trainer.enable_progress_bar=false",
            *(extra_args or []),
        ]
    )
    runner.trainer.fit(runner.model, datamodule=runner.datamodule)
    print(f"[benchmarks] teacher {name} trained in {time.perf_counter() - start:.0f}s -> {out / 'export'}")
    return out / "export"
