"""benchmarks/study.py, the helper every study runs on: runs are recorded as they finish, a re-run resumes,
and a report-only study runs nothing (its runs came from another machine)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/ is not installed

from benchmarks.study import Job, Study, markdown_table, mean_std  # noqa: E402

CALLS: list[int] = []


def square(x: int) -> dict:
    CALLS.append(x)
    return {"x": x, "y": x * x}


def jobs(*xs: int) -> dict[str, Job]:
    return {f"x{x}": Job(square, x=x) for x in xs}


def test_runs_are_recorded_and_a_rerun_resumes(tmp_path):
    CALLS.clear()
    study = Study("demo", results=tmp_path)
    first = study.run(jobs(1, 2))
    assert {k: r["y"] for k, r in first.items()} == {"x1": 1, "x2": 4} and CALLS == [1, 2]
    assert set(json.loads((tmp_path / "demo_runs.json").read_text())) == {"x1", "x2"}
    again = Study("demo", results=tmp_path).run(jobs(1, 2, 3))
    assert CALLS == [1, 2, 3]  # only the new run ran
    assert [again[k]["y"] for k in ("x1", "x2", "x3")] == [1, 4, 9]


def test_report_only_runs_nothing_and_reports_what_is_recorded(tmp_path):
    CALLS.clear()
    Study("demo", results=tmp_path).run(jobs(1))
    CALLS.clear()
    reported = Study("demo", results=tmp_path, report_only=True).run(jobs(1, 2))
    assert CALLS == [] and list(reported) == ["x1"]


def test_a_failed_run_keeps_the_finished_ones(tmp_path):
    def broken() -> dict:
        raise RuntimeError("run failed")

    study = Study("demo", results=tmp_path)
    with pytest.raises(RuntimeError, match="run failed"):
        study.run({**jobs(5), "bad": Job(broken)})
    assert set(study.done()) == {"x5"}


def test_write_puts_the_same_rows_in_json_and_markdown(tmp_path):
    rows = [{"method": "a", "acc": 0.51234}, {"method": "b", "acc": 0.75}]
    Study("demo", results=tmp_path).write(rows, [("method", "method"), ("acc", "accuracy")], title="Demo", notes="n")
    assert json.loads((tmp_path / "demo.json").read_text()) == rows
    text = (tmp_path / "demo.md").read_text()
    assert text.startswith("# Demo") and "| a | 0.5123 |" in text and text.rstrip().endswith("n")
    assert markdown_table(rows, [("acc", "accuracy")]).splitlines()[2] == "| 0.5123 |"
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(2**0.5)) and mean_std([4.0]) == (4.0, 0.0)


def test_forget_drops_a_prefix_so_the_next_run_measures_it_again(tmp_path):
    CALLS.clear()
    study = Study("demo", results=tmp_path)
    study.run({"a/1": Job(square, x=1), "b/2": Job(square, x=2)})
    study.forget("a/")
    assert set(study.done()) == {"b/2"}
    study.run({"a/1": Job(square, x=1), "b/2": Job(square, x=2)})
    assert CALLS == [1, 2, 1]


ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "benchmarks").rglob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_the_benchmarks_a_page_names_exist(page):
    """Every `python -m benchmarks.<study>`, `benchmarks/<file>.py` and results file a page names is in the
    repository (a study removed with its results must take its mentions with it)."""
    text = page.read_text()
    modules = re.findall(r"python3? -m (benchmarks(?:\.\w+)+)", text)
    files = re.findall(r"benchmarks/[\w/]+\.py", text)
    results = re.findall(r"benchmarks/results/(\w+)\.(?:md|json|png|\{)", text)
    missing = [m for m in modules if not (ROOT / (m.replace(".", "/") + ".py")).is_file()]
    missing += [f for f in files if not (ROOT / f).is_file()]
    missing += [r for r in results if not list((ROOT / "benchmarks" / "results").glob(f"{r}.*"))]
    assert not missing, f"{page.relative_to(ROOT)} names {missing}"
