"""Shared pieces of the studies in benchmarks/: the fine-tuned offline teacher, runs, result files."""

from __future__ import annotations

import json
import time
from pathlib import Path

from kdlight.assets import cache_dir

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
RESULTS = REPO / "benchmarks" / "results"


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
    runner = run_cli([
        "--config", str(CONFIGS / "quickstart" / "teacher.yaml"),
        f"--trainer.default_root_dir={out}", f"--model.init_args.export_dir={out / 'export'}",
        "--trainer.enable_progress_bar=false", *(extra_args or []),
    ])
    runner.trainer.fit(runner.model, datamodule=runner.datamodule)
    print(f"[benchmarks] teacher {name} trained in {time.perf_counter() - start:.0f}s -> {out / 'export'}")
    return out / "export"


def write_results(name: str, rows: list[dict], markdown: str, plot) -> None:
    """Write benchmarks/results/<name>.md, <name>.json and <name>.png (``plot(path)`` draws the PNG)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(rows, indent=2))
    (RESULTS / f"{name}.md").write_text(markdown)
    plot(RESULTS / f"{name}.png")
    print(f"[benchmarks] wrote {RESULTS / name}.md/.json/.png")


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A markdown table of ``rows`` with (key, header) columns; floats to 4 significant places."""
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "" if value is None else str(value)

    head = "| " + " | ".join(h for _, h in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(cell(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body]) + "\n"
