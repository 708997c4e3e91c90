"""Each run gets its own ``version_N`` folder, also when several start at once in one default_root_dir.

Lightning's loggers pick ``version_N`` by listing the folders that exist and create it only when they
first write, so two runs started together both chose ``version_0``: one folder, the second run's
export replacing the first's. Here the folder is claimed with ``mkdir``, which exactly one process
wins; a run that loses takes the next number.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _next_version(root: Path) -> int:
    numbers = [int(m.group(1)) for p in root.iterdir() if (m := re.fullmatch(r"version_(\d+)", p.name))]
    return max(numbers, default=-1) + 1


def _is_launched_worker() -> bool:
    """A process that DDP's launcher started for rank > 0: rank 0 names the run folder (its loggers are
    the ones that write), so the others must not claim folders of their own."""
    return any(int(os.environ.get(name, "0") or 0) > 0 for name in ("LOCAL_RANK", "NODE_RANK", "RANK"))


def claim_version_folders(trainer) -> dict[Path, int]:
    """Create the next ``version_N`` folder of each local logger that has no version yet and use it;
    returns the folders claimed (root: number)."""
    claimed: dict[Path, int] = {}  # loggers sharing a folder share the version
    if _is_launched_worker():
        return claimed
    for logger in trainer.loggers:
        if not hasattr(logger, "_version") or logger._version is not None:  # fixed, or a resumed run's folder
            continue
        root = getattr(logger, "root_dir", None)
        if not root or "://" in str(root):
            continue
        root = Path(root)
        if root in claimed:
            logger._version = claimed[root]
            continue
        root.mkdir(parents=True, exist_ok=True)
        number = _next_version(root)
        while True:
            try:
                (root / f"version_{number}").mkdir()
                break
            except FileExistsError:
                number += 1
        logger._version = claimed[root] = number
    return claimed


@contextmanager
def as_unclaimed(trainer, claimed: dict[Path, int]) -> Iterator[None]:
    """Inside: the loggers look as Lightning built them (no version), so ``--ckpt_path last`` searches every
    run folder and may point them at the run it resumes. After: a claimed folder that a resume replaced is
    removed (while still empty); the others keep their claim."""
    hidden = []
    for logger in trainer.loggers:
        root = getattr(logger, "root_dir", None)
        if root and claimed.get(Path(root)) == getattr(logger, "_version", None):
            logger._version = None
            hidden.append((logger, Path(root)))
    try:
        yield
    finally:
        for logger, root in hidden:
            if logger._version is None:
                logger._version = claimed[root]
            elif logger._version != claimed[root]:
                try:
                    (root / f"version_{claimed[root]}").rmdir()
                except OSError:  # written to meanwhile, or gone: leave it
                    pass


__all__ = ["as_unclaimed", "claim_version_folders"]
