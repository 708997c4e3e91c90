"""The one helper every study in benchmarks/ runs on: resumable runs, worker processes, result files.

    study = Study("compact", workers=2)
    records = study.run({"4x/b/seed0": Job(train_one, size="4x", method="b", seed=0), ...})
    study.write(rows, "student=size; method; accuracy_mean=test acc", title="...", intro="...", plot=draw)

Every finished run is appended to ``benchmarks/results/<name>_runs.json`` at once (an atomic replace) under its
key, and a re-run skips what is there: a study spans sessions, an interrupted one loses only the runs in flight
(delete a key to redo a run). ``workers > 1`` runs jobs in spawned processes with one torch thread each.
``write`` puts the same rows in ``<name>.json`` and ``<name>.md`` and draws ``<name>.png``; machine- or
sitting-specific prose goes in ``notes``, not in the code. ``report_only`` runs nothing and reports the runs file
(e.g. runs made on a GPU machine); ``load``/``dump`` read and extend a runs file in an older format.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


class Job:
    """One run: ``function(**kwargs)`` returns a JSON-able record; ``function`` is module-level (workers import it)."""

    def __init__(self, function: Callable[..., dict], **kwargs: Any) -> None:
        self.function, self.kwargs = function, kwargs


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _timed(function: Callable[..., dict], kwargs: dict) -> dict:
    start = time.perf_counter()
    record = function(**kwargs)
    record.setdefault("seconds", time.perf_counter() - start)
    return record


class Study:
    """``load``/``dump``: the runs file's JSON to ``{key: record}`` and back (default: the file is that dict)."""

    def __init__(
        self,
        name: str,
        workers: int = 1,
        results: Path = RESULTS,
        *,
        load: Callable[[Any], dict[str, dict]] | None = None,
        dump: Callable[[dict[str, dict]], Any] | None = None,
        report_only: bool = False,
    ) -> None:
        self.name, self.workers, self.results = name, workers, Path(results)
        self.report_only = report_only  # run nothing: report the runs recorded (e.g. on another machine)
        self.runs_path = self.results / f"{name}_runs.json"
        self.load, self.dump = load or (lambda raw: raw), dump or (lambda runs: runs)

    # ------------------------------------------------------------------------------ runs
    def done(self) -> dict[str, dict]:
        return self.load(json.loads(self.runs_path.read_text())) if self.runs_path.is_file() else {}

    def save(self, key: str, record: dict) -> None:
        self._write({**self.done(), key: record})

    def forget(self, prefix: str) -> None:
        """Drop the recorded runs whose key starts with ``prefix``, so that the next ``run`` does them again."""
        runs = self.done()
        if any(key.startswith(prefix) for key in runs):
            self._write({key: r for key, r in runs.items() if not key.startswith(prefix)})

    def _write(self, runs: dict[str, dict]) -> None:
        self.results.mkdir(parents=True, exist_ok=True)
        tmp = self.runs_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.dump(runs), indent=1, sort_keys=True))
        tmp.replace(self.runs_path)

    def run(self, jobs: dict[str, Job]) -> dict[str, dict]:
        """Run the jobs not yet recorded; return the records of all of ``jobs`` (done earlier or now)."""
        done = self.done()
        todo = {key: job for key, job in jobs.items() if key not in done}
        if self.report_only:
            if todo:
                self.log(f"report only: {len(todo)} of {len(jobs)} runs not recorded, left out")
            return {key: done[key] for key in jobs if key in done}
        if done.keys() & jobs.keys():
            self.log(f"{len(jobs) - len(todo)} of {len(jobs)} runs already done ({self.runs_path.name})")
        if self.workers <= 1:
            for i, (key, job) in enumerate(todo.items(), 1):
                self.log(f"run {i}/{len(todo)}: {key}")
                self.save(key, _timed(job.function, job.kwargs))
        elif todo:
            threads = max(1, (os.cpu_count() or 1) // self.workers)
            with ProcessPoolExecutor(
                self.workers, mp_context=get_context("spawn"), initializer=_worker_init, initargs=(threads,)
            ) as pool:
                pending = {pool.submit(_timed, job.function, job.kwargs): key for key, job in todo.items()}
                while pending:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        key = pending.pop(future)
                        self.save(key, future.result())  # a failed run raises here; finished ones are kept
                        self.log(f"finished {key} ({len(pending)} left)")
        done = self.done()
        return {key: done[key] for key in jobs}

    def once(self, function: Callable[..., dict], **kwargs: Any) -> dict:
        """One measurement, recorded under a key made of its arguments (``rounds5_steps4``) and reused from there."""
        key = "_".join(f"{name}{value}" for name, value in kwargs.items())
        return self.run({key: Job(function, **kwargs)})[key]

    def log(self, message: str) -> None:
        print(f"[{self.name}] {message}", file=sys.stderr, flush=True)

    # --------------------------------------------------------------------------- results
    def write(
        self,
        rows: list[dict],
        columns: str | list[tuple[str, str]],
        *,
        title: str,
        intro: str = "",
        notes: str = "",
        plot: Callable[[Path], None] | None = None,
        table_rows: list[dict] | None = None,
    ) -> None:
        """``<name>.json`` (the rows), ``<name>.md`` (title, intro, table of ``table_rows`` if given else of ``rows``,
        notes) and ``<name>.png`` (``plot(path)``, if given); ``columns`` as for :func:`markdown_table`."""
        self.results.mkdir(parents=True, exist_ok=True)
        (self.results / f"{self.name}.json").write_text(json.dumps(rows, indent=2))
        table = markdown_table(rows if table_rows is None else table_rows, columns)
        parts = [f"# {title}", intro.strip(), table.strip(), notes.strip()]
        (self.results / f"{self.name}.md").write_text("\n\n".join(p for p in parts if p) + "\n")
        if plot is not None:
            plot(self.results / f"{self.name}.png")
        self.log(f"wrote {self.results / self.name}.md/.json" + ("/.png" if plot else ""))


def markdown_table(rows: list[dict], columns: str | list[tuple[str, str]]) -> str:
    """A markdown table of ``rows``: columns ``[(key, header)]`` or ``"key=header; key; ..."``; floats to 4 digits."""
    if isinstance(columns, str):
        columns = [
            (key.strip(), (header or key).strip()) for key, _, header in (c.partition("=") for c in columns.split(";"))
        ]

    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "" if value is None else str(value)

    head = "| " + " | ".join(h for _, h in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(cell(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body]) + "\n"


FLAGS = {  # the command-line flags studies share: name -> (argparse keywords, help)
    "report-only": ({"action": "store_true"}, "run nothing; write results from the runs file"),
    "quick": ({"action": "store_true"}, "a few steps per run (plumbing check; own result files)"),
    "workers": ({"type": int}, "runs at a time (worker processes, one torch thread each)"),
    "label": ({"default": ""}, "a suffix for the result files and run folders, e.g. gpu for a GPU run"),
    "seeds": ({"type": int, "nargs": "+", "default": [0, 1, 2]}, "the seeds to run (a re-run with more adds them)"),
}


def study_parser(doc: str, *flags: str, workers: int = 1) -> argparse.ArgumentParser:
    """A study's command line with the shared ``flags`` (of :data:`FLAGS`) it takes."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag in flags:
        keywords, text = FLAGS[flag]
        parser.add_argument(f"--{flag}", **keywords, **({"default": workers} if flag == "workers" else {}), help=text)
    return parser


def study_name(base: str, args: argparse.Namespace) -> str:
    """``base``, then ``_quick`` for a ``--quick`` run and ``_<label>`` for a ``--label``: the result files' name."""
    suffixes = ["quick" if getattr(args, "quick", False) else "", getattr(args, "label", "")]
    return "_".join([base, *(suffix for suffix in suffixes if suffix)])


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def over_seeds(runs: list[dict], teacher_params: int, teacher_score: float) -> dict:
    """A compression table's shared columns from a row's runs (one a seed): size, accuracy over seeds, % of teacher."""
    mean, std = mean_std([r["test/score"] for r in runs])
    size = {"params": runs[0]["params"], "compression": teacher_params / runs[0]["params"]}
    accuracy = {"accuracy_mean": mean, "accuracy_std": std, "seeds": len(runs)}
    return {**size, **accuracy, "pct_of_teacher": 100 * mean / teacher_score}


def target(claim: str, met: bool, detail: str) -> str:
    """One line of a study's "Targets" section: ``- claim: **met** (detail).``"""
    return f"- {claim}: **{'met' if met else 'missed'}** ({detail})."
