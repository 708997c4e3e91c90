"""Which checkpoint ``--ckpt_path last|best`` means, found the same way in a new process as in the run.

Lightning looks for ``last`` only in the folder of the *current* run, which a new ``kdlight`` process
has just created (``version_N+1``), so on its own a resumed fit restarts from step 0 and
``kdlight test --ckpt_path last`` scores an untrained model. Here ``last`` is the newest run's
``last.ckpt`` under the logger's folder, ``best`` is the best checkpoint recorded in it, and a
resumed fit logs and checkpoints into that same run folder.
"""

from __future__ import annotations

import csv
import re
import warnings
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_info

from kdlight.checkpoints import load_checkpoint
from kdlight.errors import KDLightError

#: ckpt_path values Lightning resolves itself (cluster and registry checkpoints)
_LIGHTNING_ALIASES = ("hpc", "registry")


def _run_folders(trainer) -> list[tuple[Path, int | str | None]]:
    """Candidate checkpoint folders, newest run first, with the logger version each belongs to."""
    callback = trainer.checkpoint_callback
    if callback is not None and callback.dirpath:
        return [(Path(callback.dirpath), None)]
    logger = trainer.logger
    if logger is None:
        return [(Path(trainer.default_root_dir) / "checkpoints", None)]
    root = Path(
        getattr(logger, "root_dir", None) or Path(logger.save_dir or trainer.default_root_dir) / (logger.name or "")
    )
    fixed = getattr(logger, "_version", None)  # not `.version`: that property picks a new folder
    if fixed is not None:
        return [(root / (fixed if isinstance(fixed, str) else f"version_{fixed}") / "checkpoints", None)]
    versions = []
    for folder in root.glob("version_*"):
        match = re.fullmatch(r"version_(\d+)", folder.name)
        if match:
            versions.append((int(match.group(1)), folder))
    return [(folder / "checkpoints", number) for number, folder in sorted(versions, reverse=True)]


def _keep_csv_metrics(logger: CSVLogger, up_to_step: int) -> None:
    """Lightning's CSV writer deletes an existing metrics.csv when it opens a run folder; a resumed run
    keeps the rows logged up to its checkpoint and appends after them."""
    metrics = Path(logger.log_dir) / "metrics.csv"
    rows = []
    if metrics.is_file():
        with metrics.open(newline="") as handle:
            reader = csv.DictReader(handle)
            fields = list(reader.fieldnames or [])
            rows = [row for row in reader if not row.get("step") or int(float(row["step"])) <= up_to_step]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
        writer = logger.experiment  # opening it deletes the old file
    if rows:
        with metrics.open("w", newline="") as handle:
            csv.DictWriter(handle, fieldnames=fields).writeheader()
            csv.DictWriter(handle, fieldnames=fields).writerows(rows)
        writer.metrics_keys = fields


def _best_recorded_in(last: Path) -> str | None:
    state = load_checkpoint(last)
    for key, value in state.get("callbacks", {}).items():
        if "Checkpoint" in str(key) and isinstance(value, dict) and value.get("best_model_path"):
            return value["best_model_path"]
    return None


def resolve_ckpt_path(trainer, subcommand: str, ckpt_path: str) -> str | None:
    """The checkpoint file ``ckpt_path`` names; for a fit from ``last``/``best`` also point the logger at
    that run's folder, so the resumed run continues its logs and checkpoints."""
    if ckpt_path in _LIGHTNING_ALIASES:
        return ckpt_path
    if ckpt_path not in ("last", "best"):
        if not Path(ckpt_path).expanduser().is_file():
            raise KDLightError(
                f"checkpoint not found: {ckpt_path!r}; give an existing "
                ".ckpt file, or 'last' / 'best' for the newest run's "
                "latest / best checkpoint under the same trainer.default_root_dir"
            )
        return str(Path(ckpt_path).expanduser())
    folders = _run_folders(trainer)
    found = next(((folder, version) for folder, version in folders if (folder / "last.ckpt").is_file()), None)
    where = (
        folders[0][0].parent.parent if folders and folders[0][1] is not None else (folders[0][0] if folders else "?")
    )
    if found is None:
        if subcommand == "fit" and ckpt_path == "last":
            rank_zero_info(f"[kdlight] no last.ckpt under {where}: starting a new run")
            return None
        raise KDLightError(
            f"--ckpt_path {ckpt_path}: no run with a last.ckpt under "
            f"{where}; train first with `kdlight fit` and the same "
            "trainer.default_root_dir, or pass the .ckpt file itself"
        )
    folder, version = found
    path = folder / "last.ckpt"
    if ckpt_path == "best":
        best = _best_recorded_in(path)
        if not best or not Path(best).is_file():
            raise KDLightError(
                f"--ckpt_path best: {path} records no best checkpoint "
                f"that still exists ({best or 'none'}); the run may not "
                "have validated yet: use --ckpt_path last or pass a .ckpt file"
            )
        path = Path(best)
    if subcommand == "fit" and version is not None and trainer.logger is not None:
        trainer.logger._version = version  # keep logging and checkpointing into the run being resumed
        if isinstance(trainer.logger, CSVLogger) and trainer.is_global_zero:
            _keep_csv_metrics(trainer.logger, up_to_step=int(load_checkpoint(path).get("global_step", 0)))
    rank_zero_info(f"[kdlight] --ckpt_path {ckpt_path}: {path}")
    return str(path)


__all__ = ["resolve_ckpt_path"]
