"""Early, one-line errors for class names that do not exist (``--model VanilaKD``, a typo in a YAML).

jsonargparse reports them as a page of nested "Expected a ..." lines; here the class slots kdlight
defines are checked before the CLI parses, with the closest kdlight class names as the fix.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from pathlib import Path
from typing import Any

import yaml

import kdlight.data
import kdlight.models
import kdlight.modules
from kdlight.errors import KDLightError, first_line

# The config slots whose class_path names a kdlight class, and the base class each must extend.
_SLOTS = {
    "model": ("lightning", "LightningModule"),
    "data": ("lightning", "LightningDataModule"),
    "model.init_args.student": ("kdlight.models.students", "StudentSpec"),
    "data.init_args.task": ("lightning", "LightningDataModule"),
    "data.init_args.corpus": ("kdlight.data.corpus", "OutOfDomainCorpus"),
}


def _base(slot: str) -> type:
    module, name = _SLOTS[slot]
    return getattr(importlib.import_module(module), name)


def _known(slot: str) -> dict[str, type]:
    """kdlight's public classes usable in a slot, by short name."""
    base, found = _base(slot), {}
    for package in (kdlight.modules, kdlight.data, kdlight.models):
        for name in getattr(package, "__all__", []):
            value = getattr(package, name, None)
            if (
                inspect.isclass(value)
                and issubclass(value, base)
                and (value is not base or base.__module__.startswith("kdlight"))
            ):
                found[name] = value
    return found


def check_class_path(slot: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        return
    known = _known(slot)
    if value in known:
        return
    flag = "--" + slot.replace(".init_args", "")
    if "." not in value:
        close = difflib.get_close_matches(value, list(known), n=3, cutoff=0.5) or sorted(known)
        raise KDLightError(f"{flag}: unknown class {value!r}; did you mean {' or '.join(close)}?")
    module_name, _, attr = value.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise KDLightError(
            f"{flag}: cannot import {module_name!r} for {value!r} ({first_line(err)}); run kdlight from the folder "
            f"that holds {module_name.split('.')[0]}.py or add that folder to PYTHONPATH"
        ) from None
    cls = getattr(module, attr, None)
    if not inspect.isclass(cls):
        raise KDLightError(f"{flag}: {module_name!r} has no class {attr!r}")
    if not issubclass(cls, _base(slot)):
        raise KDLightError(
            f"{flag}: {value!r} is not a {_base(slot).__name__}; kdlight's choices: {', '.join(sorted(known))}"
        )


def _from_config(config: Any, slot: str) -> Any:
    node = config
    for key in slot.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    if isinstance(node, dict):
        return node.get("class_path")
    # A plain string is a class name only in the model/data/student slots (data.init_args.task may be "sst2").
    return node if slot in ("model", "data", "model.init_args.student") else None


def check_class_paths(args: list[str]) -> None:
    """Check every kdlight class slot named on the command line or in ``--config`` files."""
    values: list[tuple[str, Any]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        key, has_value, value = arg.partition("=")
        if not has_value and i + 1 < len(args) and arg.startswith("--"):
            value = args[i + 1]
        key = key[2:] if key.startswith("--") else None
        if key == "config" and value and Path(value).is_file():
            try:
                config = yaml.safe_load(Path(value).read_text()) or {}
            except yaml.YAMLError:
                config = {}  # the CLI reports malformed YAML itself
            values += [(slot, _from_config(config, slot)) for slot in _SLOTS]
        elif key is not None:
            slot = key.removesuffix(".class_path")
            slot = {"model.student": "model.init_args.student"}.get(slot, slot)
            if slot in ("model", "data", "model.init_args.student"):
                values.append((slot, value))
        i += 1
    for slot, value in values:
        check_class_path(slot, value)
