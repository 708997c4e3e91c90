"""Which checkpoint ``--ckpt_path last|best`` means, found the same way in a new process as in the run.

Lightning looks for ``last`` only in the folder of the *current* run, which a new ``kdlight`` process
has just created (``version_N+1``), so on its own a resumed fit restarts from step 0 and
``kdlight test --ckpt_path last`` scores an untrained model. Here ``last`` is the newest run's
``last.ckpt`` under the logger's folder, ``best`` is the best checkpoint recorded in it, and a
resumed fit logs and checkpoints into that same run folder.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from pathlib import Path, PurePath
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_info

from kdlight.checkpoints import MODULE_CLASS_KEY, load_checkpoint
from kdlight.errors import KDLightError
from kdlight.models.students import StudentSpec, TruncatedTeacher

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
    keeps the rows logged before its checkpoint and appends after them (rows of steps it runs again,
    written before a SIGKILL, are dropped rather than duplicated)."""
    metrics = Path(logger.log_dir) / "metrics.csv"
    rows = []
    if metrics.is_file():
        with metrics.open(newline="") as handle:
            reader = csv.DictReader(handle)
            fields = list(reader.fieldnames or [])
            # a checkpoint at global step G holds the batches logged as steps 0 .. G-1 (and their validation)
            rows = [row for row in reader if not row.get("step") or int(float(row["step"])) < up_to_step]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
        writer = logger.experiment  # opening it deletes the old file
    if rows:
        with metrics.open("w", newline="") as handle:
            csv.DictWriter(handle, fieldnames=fields).writeheader()
            csv.DictWriter(handle, fieldnames=fields).writerows(rows)
        writer.metrics_keys = fields


def _best_recorded_in(last: Path) -> Path | None:
    """The best checkpoint ``last`` records, looked up beside it. The record is an absolute path: in a
    copied or moved run folder it names the old place, whose file is another run's (or gone), so only
    its file name is kept (Lightning writes the best and the last checkpoints into one folder)."""
    state = load_checkpoint(last, mmap=True)
    for key, value in state.get("callbacks", {}).items():
        if "Checkpoint" in str(key) and isinstance(value, dict) and value.get("best_model_path"):
            return _beside(last.parent, value["best_model_path"])
    return None


def _beside(folder: Path, recorded: str) -> Path | None:
    """``recorded``'s file name in ``folder``; None for a name that is not a checkpoint file name."""
    name = PurePath(str(recorded)).name
    return folder / name if name.endswith(".ckpt") and name not in (".", "..") else None


# ------------------------------------------------------------------ which recipe wrote a checkpoint
def _class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _written_by(checkpoint: dict[str, Any]) -> str | None:
    """The module class that wrote ``checkpoint``, as recorded (kdlight's own key, else the CLI's ``_class_path``)."""
    recorded = checkpoint.get(MODULE_CLASS_KEY)
    if recorded:
        return str(recorded)
    hparams = checkpoint.get("hyper_parameters")
    return str(hparams["_class_path"]) if isinstance(hparams, dict) and hparams.get("_class_path") else None


def _same_class(recorded: str, cls: type) -> bool:
    if recorded == _class_name(cls):
        return True
    # the CLI's ``_class_path`` may be the public path (kdlight.modules.VanillaKD): the same class by name
    return recorded.rpartition(".")[2] == cls.__name__ and recorded.startswith(cls.__module__.split(".")[0] + ".")


def _same_source(a: Any, b: Any) -> bool:
    """Whether two model sources (a folder, a .ckpt, a hub name) name the same model."""
    if a == b:
        return True
    if not isinstance(a, str) or not isinstance(b, str):
        return False
    return os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))


def _student_config(value: Any) -> Any:
    try:
        return (StudentSpec.from_config(value) or TruncatedTeacher(num_layers=2)).to_config()
    except (KDLightError, TypeError):
        return value


def _other_recipe(checkpoint: dict[str, Any], model) -> str | None:
    """Why ``checkpoint`` was not written by the recipe ``model`` was built from (another module class or
    another teacher), or None when it was (or records too little to tell)."""
    cls = type(model)
    recorded = _written_by(checkpoint)
    if recorded and not _same_class(recorded, cls):
        return f"was written by {recorded.rpartition('.')[2]}, but the config builds {cls.__name__}"
    source_arg = getattr(cls, "default_tokenizer_arg", None)
    hparams = checkpoint.get("hyper_parameters")
    if source_arg and isinstance(hparams, dict) and source_arg in hparams:
        theirs, ours = hparams[source_arg], model.hparams.get(source_arg)
        if not _same_source(theirs, ours):
            return f"was trained with {source_arg} {theirs!r}, but the config names {ours!r}"
    return None


def check_checkpoint_fits(checkpoint: dict[str, Any], shown: str, model) -> None:
    """The config always wins over a checkpoint's hyper-parameters (they are never laid over it). What
    cannot be changed under a checkpoint (the module class, the teacher, the student's shape, the label
    count) stops here with one line; other differences are announced in one line."""
    reason = _other_recipe(checkpoint, model)
    if reason:
        raise KDLightError(
            f"--ckpt_path {shown} {reason}; a checkpoint never overrides the config: use the recipe (and "
            "model arguments) that trained it, or a checkpoint of this recipe"
        )
    theirs = checkpoint.get("hyper_parameters")
    if not isinstance(theirs, dict):
        return
    ours = dict(model.hparams)
    if "student" in theirs and _student_config(theirs["student"]) != _student_config(ours.get("student")):
        raise KDLightError(
            f"--ckpt_path {shown} holds a student built as {_student_config(theirs['student'])}, but the config "
            f"builds {_student_config(ours.get('student'))}; give the same --model.init_args.student"
        )
    their_task, our_task = theirs.get("task"), ours.get("task")
    if isinstance(their_task, dict) and isinstance(our_task, dict):
        if their_task.get("num_labels") != our_task.get("num_labels"):
            raise KDLightError(
                f"--ckpt_path {shown} predicts {their_task.get('num_labels')} labels, but the data has "
                f"{our_task.get('num_labels')}; use the data it was trained on"
            )
    if theirs.get("export_dir") != ours.get("export_dir") and "export_dir" in theirs:
        rank_zero_info(
            f"[kdlight] --ckpt_path {shown} was trained with export_dir {theirs['export_dir']!r}; the config's "
            f"{ours.get('export_dir') or '<log_dir>/export'} is used"
        )
    skip = {"_class_path", "_instantiator", "task", "student", "export_dir"}
    differing = sorted(k for k in theirs.keys() & ours.keys() if k not in skip and theirs[k] != ours[k])
    if differing:
        rank_zero_info(f"[kdlight] the config's values, not --ckpt_path {shown}'s, are used: {', '.join(differing)}")


def untrained_hint(model, subcommand: str) -> None:
    """One line when ``validate``/``test``/``predict`` would score a student as built, before training."""
    if subcommand in ("validate", "test", "predict") and getattr(model, "predictor_attr", None) == "student":
        rank_zero_info(
            f"[kdlight] {subcommand} without --ckpt_path uses the student as the config builds it, untrained; "
            "add --ckpt_path best (or last, or a .ckpt file) for a trained run"
        )


def resolve_ckpt_path(trainer, subcommand: str, ckpt_path: str, model=None) -> str | None:
    """The checkpoint file ``ckpt_path`` names, checked against the recipe ``model`` was built from.

    ``last``/``best`` are found in the newest run *of this recipe* (same module class and teacher) under
    the logger's folder, and ``best`` is looked up in that run's own folder. For a fit from ``last``/``best``
    the logger is pointed at that run's folder, so the resumed run continues its logs and checkpoints."""
    if ckpt_path in _LIGHTNING_ALIASES:
        return ckpt_path
    if ckpt_path not in ("last", "best"):
        path = Path(ckpt_path).expanduser()
        if not path.is_file():
            raise KDLightError(
                f"checkpoint not found: {ckpt_path!r}; give an existing "
                ".ckpt file, or 'last' / 'best' for the newest run's "
                "latest / best checkpoint under the same trainer.default_root_dir"
            )
        if model is not None:
            check_checkpoint_fits(load_checkpoint(path, mmap=True), ckpt_path, model)
        return str(path)
    folders = _run_folders(trainer)
    where = (
        folders[0][0].parent.parent if folders and folders[0][1] is not None else (folders[0][0] if folders else "?")
    )
    found, others = None, []
    for folder, version in folders:
        if not (folder / "last.ckpt").is_file():
            continue
        checkpoint = load_checkpoint(folder / "last.ckpt", mmap=True)
        reason = _other_recipe(checkpoint, model) if model is not None else None
        if reason is None:
            found = (folder, version, checkpoint)
            break
        others.append(f"{folder.parent.name if version is not None else folder}: {reason.split(',')[0]}")
    if found is None:
        mine = f" of {type(model).__name__}" if model is not None else ""
        theirs = f" (other recipes' runs: {'; '.join(others[:3])})" if others else ""
        if subcommand == "fit" and ckpt_path == "last":
            rank_zero_info(f"[kdlight] no last.ckpt{mine} under {where}{theirs}: starting a new run")
            return None
        raise KDLightError(
            f"--ckpt_path {ckpt_path}: no run with a last.ckpt{mine} under "
            f"{where}{theirs}; train first with `kdlight fit` and the same "
            "trainer.default_root_dir, or pass the .ckpt file itself"
        )
    folder, version, checkpoint = found
    path = folder / "last.ckpt"
    if ckpt_path == "best":
        best = _best_recorded_in(path)
        if best is None or not best.is_file():
            raise KDLightError(
                f"--ckpt_path best: {path} records no best checkpoint "
                f"that exists beside it ({best or 'none'}); the run may not "
                "have validated yet: use --ckpt_path last or pass a .ckpt file"
            )
        path = best
        checkpoint = load_checkpoint(path, mmap=True)
    if model is not None:
        check_checkpoint_fits(checkpoint, ckpt_path, model)
    if subcommand == "fit" and version is not None and trainer.logger is not None:
        trainer.logger._version = version  # keep logging and checkpointing into the run being resumed
        if isinstance(trainer.logger, CSVLogger) and trainer.is_global_zero:
            _keep_csv_metrics(trainer.logger, up_to_step=int(checkpoint.get("global_step", 0)))
    rank_zero_info(f"[kdlight] --ckpt_path {ckpt_path}: {path}")
    return str(path)


__all__ = ["check_checkpoint_fits", "resolve_ckpt_path", "untrained_hint"]
