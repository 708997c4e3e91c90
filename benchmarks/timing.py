"""What the two timing studies (``throughput``, ``overhead``) share: one measured run per fresh process,
cProfile summaries by library, and the state of the code and the machine a measurement ran on."""

from __future__ import annotations

import os
import platform
import pstats
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import REPO

Categories = list[tuple[str, Callable[[str, str], bool]]]


def run_module(module: str, args: list[str], timeout: float, env: dict[str, str] | None = None):
    """``python -m module *args`` in a fresh process at the repository root, this checkout first on the path.
    Returns the ``CompletedProcess`` (output captured); the caller judges failure."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def stderr_tail(proc: subprocess.CompletedProcess, lines: int) -> str:
    return "\n".join((proc.stderr or "").strip().splitlines()[-lines:])


def own_time(path: Path, categories: Categories) -> tuple[dict[str, float], dict]:
    """Seconds of own time per category of a cProfile dump (a function counts in the first category whose
    ``match(file, function_name)`` is true) and the raw table ``{(file, line, name): (cc, ncalls, tottime,
    cumtime, callers)}``."""
    stats = pstats.Stats(str(path)).stats
    seconds = {name: 0.0 for name, _ in categories}
    for (file, _, name), (_, _, tottime, _, _) in stats.items():
        for category, match in categories:
            if match(file, name):
                seconds[category] += tottime
                break
    return seconds, stats


def git_state() -> str:
    """The commit measured, and whether kdlight/ had uncommitted changes."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()

    try:
        return git("rev-parse", "--short", "HEAD") + (
            " + uncommitted changes in kdlight/" if git("status", "--porcelain", "--", "kdlight") else ""
        )
    except OSError:
        return "unknown"


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"
