"""Each run gets its own ``version_N`` folder, also when several start at once in one default_root_dir.

Lightning's loggers pick ``version_N`` by listing the folders that exist and create it only when they
first write, so two runs started together both chose ``version_0``: one folder, the second run's
export replacing the first's. Here the folder is claimed with ``mkdir``, which exactly one process
wins; a run that loses takes the next number.
"""

from __future__ import annotations

import os
import re
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


def release_unused_versions(trainer, claimed: dict[Path, int]) -> None:
    """Remove claimed folders no logger uses any more (a resumed fit logs into the run it continues);
    only while still empty."""
    in_use = {
        (Path(root), getattr(logger, "_version", None))
        for logger in trainer.loggers
        if (root := getattr(logger, "root_dir", None))
    }
    for root, number in claimed.items():
        if (root, number) not in in_use:
            try:
                (root / f"version_{number}").rmdir()
            except OSError:  # written to meanwhile, or gone: leave it
                pass


__all__ = ["claim_version_folders", "release_unused_versions"]
