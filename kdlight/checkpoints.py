"""Reading ``.ckpt`` files without running code.

A Lightning checkpoint is a pickle, and unpickling an arbitrary pickle can run arbitrary code. Every
checkpoint kdlight reads (a teacher or student ``.ckpt``, the tokenizer lookup, the noisy-label
reference model, the best weights for export, ``--ckpt_path`` for resume and test) goes through
``torch.load(..., weights_only=True)``: only tensors, containers and plain Python values are rebuilt,
plus the short allow-list below.

What kdlight itself writes is plain: Lightning's own entries (state dicts, loop and callback state,
optimizer and scheduler state dicts), the HF configs as dicts, and hyper-parameters that
:func:`plain_hparam` turns into plain values (a ``StudentSpec`` becomes ``{"class_path", "init_args"}``,
nested specs too, a path becomes a string). The allow-list only covers what checkpoints written by earlier
kdlight versions from Python could hold: the student specs themselves and ``pathlib`` paths. Both are plain
data holders (no ``__setstate__``, no ``__reduce__`` that calls anything but the path constructor),
so rebuilding them runs no code of the checkpoint's choosing. It is registered with torch once, at
import, so Lightning's own loads (``--ckpt_path``) accept exactly what :func:`load_checkpoint` accepts.

This module is a leaf: it imports nothing of kdlight but its errors, so every layer (models, data,
modules) can use it; student specs add themselves to the allow-list where they are defined.
"""

from __future__ import annotations

import io
import os
import pathlib
import pickle
import pickletools
import warnings
import zipfile
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from kdlight.errors import KDLightError, first_line

#: key under which kdlight checkpoints keep each model's HF config, so they load without the hub
HF_CONFIGS_KEY = "kdlight_hf_configs"
#: key naming the module attribute that holds the predictor (``model``, ``student``): its weights' prefix
PREDICTOR_ATTR_KEY = "kdlight_predictor_attr"
#: the same, as checkpoints written before the rename call it
_LEGACY_PREDICTOR_ATTR_KEY = "kdlight_export_prefix"
#: key naming the LightningModule class that wrote a checkpoint (``module.QualName``): which recipe made it
MODULE_CLASS_KEY = "kdlight_module_class"

#: the non-plain objects a kdlight checkpoint may contain (see the module docstring)
SAFE_GLOBALS: list[Any] = [pathlib.PosixPath, pathlib.PurePosixPath]


def allow_in_checkpoints(*classes: type) -> None:
    """Add kdlight's own plain data classes to the allow-list (called where they are defined)."""
    for cls in classes:
        if cls not in SAFE_GLOBALS:
            SAFE_GLOBALS.append(cls)
    torch.serialization.add_safe_globals(list(classes))


torch.serialization.add_safe_globals(list(SAFE_GLOBALS))


def _pickle_globals(path: str) -> list[str]:
    """Every ``module.name`` a pickle file imports, read from its opcodes (nothing is executed).

    A legacy (non-zip) torch file is several pickles in a row; they are read until the first that
    does not parse, which is where the raw tensor bytes begin.
    """
    names: list[str] = []
    with open(path, "rb") as handle:
        while True:
            strings: list[str] = []
            try:
                for opcode, arg, _ in pickletools.genops(handle):
                    if opcode.name in ("GLOBAL", "INST"):
                        names.append(str(arg).replace(" ", "."))
                    elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                        names.append(f"{strings[-2]}.{strings[-1]}")
                    elif isinstance(arg, str):
                        strings.append(arg)
            except (ValueError, EOFError, UnicodeDecodeError):  # not (or no longer) a pickle
                return names
            if not handle.peek(1):  # end of file
                return names


def _unsafe_globals(path: str) -> list[str]:
    """The globals in ``path`` that the weights-only loader does not rebuild (what would run code)."""
    if zipfile.is_zipfile(path):
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except (RuntimeError, ValueError, OSError, pickle.UnpicklingError, zipfile.BadZipFile):  # a damaged archive
            names = []
    else:
        names = _pickle_globals(path)
    try:  # torch's own allow-list (tensors, storages, OrderedDict ...); private, hence the fallback
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = set(_get_allowed_globals())
    except (ImportError, AttributeError, TypeError):
        allowed = set()
    allowed |= {f"{c.__module__}.{c.__qualname__}" for c in SAFE_GLOBALS}
    return list(dict.fromkeys(n for n in names if n not in allowed))


def load_checkpoint(path: str | os.PathLike, *, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint on the CPU with ``weights_only=True``; refuse anything else with one line.

    ``mmap`` maps tensor storage instead of reading it (zip-format files only): unpickling is still
    complete, so it checks a file cheaply before Lightning reads it for real.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        hint = "it is a folder; give the .ckpt file inside it" if os.path.isdir(path) else "check the path"
        raise KDLightError(f"checkpoint not found: {path!r}; {hint} (relative paths start from {os.getcwd()})")
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol warning would only precede our own error
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError:
        unsafe = _unsafe_globals(path)
        if unsafe:
            raise KDLightError(
                f"checkpoint {path!r} contains objects kdlight does not "
                f"write ({', '.join(unsafe[:5])}); it may run code, "
                "refusing to load; use a .ckpt written by kdlight, or re-save just its tensors (torch.save of the "
                "state_dict) where you trust the file"
            ) from None
        raise KDLightError(
            f"unreadable checkpoint {path!r}: not a torch checkpoint; pass a Lightning .ckpt written by kdlight"
        ) from None
    except Exception as err:  # noqa: BLE001  (a damaged file fails in many ways; each is the same user error)
        raise KDLightError(
            f"unreadable checkpoint {path!r}: {first_line(err)}; pass a Lightning .ckpt written by kdlight"
        ) from None
    if not isinstance(checkpoint, dict):
        raise KDLightError(
            f"{path!r} is not a kdlight checkpoint (it holds a {type(checkpoint).__name__}); "
            "pass a .ckpt written by kdlight"
        )
    return checkpoint


def load_lightning_checkpoint(path: str | os.PathLike, *, mmap: bool = False) -> dict[str, Any]:
    """:func:`load_checkpoint`, and the file must be a Lightning checkpoint (a ``--ckpt_path``), not bare weights."""
    checkpoint = load_checkpoint(path, mmap=mmap)
    if "state_dict" not in checkpoint:
        raise KDLightError(
            f"{os.fspath(path)!r} is not a Lightning checkpoint (it holds no state_dict; a pytorch_model.bin holds "
            "only weights): give a .ckpt written by kdlight fit, or pass the model folder as the teacher or student"
        )
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but a checkpoint is written beside its place and renamed into it.

    Lightning opens the target itself for writing, so a full disk or a file-size limit half-way leaves
    a truncated ``last.ckpt`` where the previous good one was. Here the previous file stays whole until
    the new one is complete, and a failed write is one line naming the file.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's own writer
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = pathlib.Path(path)
        partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            buffer = io.BytesIO()  # serialised first: torch's own file writer reports a full disk as a RuntimeError
            torch.save(checkpoint, buffer)
            with open(partial, "wb") as handle:
                handle.write(buffer.getbuffer())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, path)
        except OSError as err:
            partial.unlink(missing_ok=True)
            kept = " (the previous one there is unchanged)" if path.is_file() else ""
            raise KDLightError(
                f"could not write checkpoint {str(path)!r}{kept}: {err.strerror or err}; free space or set "
                "trainer.default_root_dir to a writable place with room, then resume with --ckpt_path last"
            ) from None


def use_atomic_checkpoints(trainer) -> None:
    """Give the trainer :class:`AtomicCheckpointIO` unless it was configured with a writer of its own."""
    strategy = trainer.strategy
    if type(getattr(strategy, "checkpoint_io", None)) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()


def predictor_attr(checkpoint: dict[str, Any]) -> str:
    """The attribute (and state-dict prefix) of the predictor in a kdlight checkpoint: ``model`` or ``student``."""
    return checkpoint.get(PREDICTOR_ATTR_KEY) or checkpoint.get(_LEGACY_PREDICTOR_ATTR_KEY) or "model"


def checkpoint_tokenizer(path: str | os.PathLike) -> str | None:
    """The tokenizer a kdlight checkpoint was trained with (its task's, or the separate ``tokenizer``
    hyper-parameter of checkpoints written before TaskSpec)."""
    checkpoint = load_checkpoint(path, mmap=True)
    if HF_CONFIGS_KEY not in checkpoint:
        raise KDLightError(
            f"{os.fspath(path)!r} is not a kdlight checkpoint (no {HF_CONFIGS_KEY}); pass a .ckpt written by kdlight "
            "or a save_pretrained folder"
        )
    hparams = checkpoint.get("hyper_parameters") or {}
    if not isinstance(hparams, dict):
        return None
    task = hparams.get("task")
    tokenizer = task.get("tokenizer") if isinstance(task, dict) else hparams.get("tokenizer")
    return str(tokenizer) if tokenizer else None


def plain_hparam(value: Any) -> Any:
    """A hyper-parameter as plain data, so the checkpoint it goes into loads with ``weights_only=True``.

    An object that knows its plain form (a ``to_config()`` method returning ``{"class_path", "init_args"}``,
    as kdlight's student specs do) is replaced by it, recursively, so a spec holding a spec stays plain;
    paths become strings; dicts, lists and tuples are walked.
    """
    to_config = getattr(value, "to_config", None)
    if callable(to_config) and not isinstance(value, type):
        return plain_hparam(to_config())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {k: plain_hparam(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain_hparam(v) for v in value)
    return value


__all__ = [
    "HF_CONFIGS_KEY",
    "MODULE_CLASS_KEY",
    "AtomicCheckpointIO",
    "load_lightning_checkpoint",
    "use_atomic_checkpoints",
    "PREDICTOR_ATTR_KEY",
    "SAFE_GLOBALS",
    "allow_in_checkpoints",
    "checkpoint_tokenizer",
    "load_checkpoint",
    "plain_hparam",
    "predictor_attr",
]
