"""One line for a config the parser rejects (a mistyped key, a value of the wrong type).

jsonargparse answers these with the usage of every option (70 to 90 lines) and a nested report of each
union member it tried. :class:`KDLightArgumentParser` turns the report into one ``KDLightError`` naming
the option as the user wrote it, what was wrong, and the closest valid key.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from typing import Any

from jsonargparse import ArgumentParser
from lightning.pytorch.cli import LightningArgumentParser

from kdlight.errors import KDLightError

_KEY = re.compile(r'Parser key "([^"]+)"')
_CLASS = re.compile(r"Problem with given class_path '([^']+)'")
_UNKNOWN = re.compile(r"Option '([^']+)' is not accepted")
_EXPECTED = re.compile(r"Expected a (.+?)(?:\. Got value: (.*))?$")
_GIVEN = re.compile(r"^\s*Given value: (.*)$")
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (\S+)")


class KDLightArgumentParser(LightningArgumentParser):
    """The CLI's parser: a rejected command line or config is one line (the CLI prints ``kdlight: error:``)."""

    def error(self, message: str, ex: Exception | None = None) -> Any:
        # parsers jsonargparse builds internally (exit_on_error=False) try alternatives and must raise
        # their own ArgumentError; only the user-facing parser answers with one line
        if not self.exit_on_error:
            return super().error(message, ex)
        raise KDLightError(one_line(message, self))


def _type_name(text: str) -> str:
    text = text.strip()
    match = re.fullmatch(r"<class '(?:[\w.]+\.)?(\w+)'>", text)
    if match:
        return "null" if match.group(1) == "NoneType" else match.group(1)
    match = re.fullmatch(r"typing\.Literal\[(.*)\]", text)
    return f"one of {match.group(1)}" if match else text


def _class(class_path: str) -> type | None:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)  # already imported by the parser
    except (ImportError, AttributeError, ValueError):
        return None


def _init_parameters(class_path: str) -> list[str]:
    """The keyword arguments a class accepts, through ``**kwargs`` passed on to its bases."""
    cls = _class(class_path)
    if cls is None:
        return []
    names: list[str] = []
    for klass in inspect.getmro(cls):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            parameters = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            continue
        names += [p.name for p in parameters if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return list(dict.fromkeys(names))


def _moved_to(class_path: str, name: str) -> str | None:
    """Where a class's init argument ``name`` moved (its ``moved_arguments``, e.g. ALM's flat keys that are
    ``meta.init_args.<key>`` now), or None."""
    return getattr(_class(class_path), "moved_arguments", {}).get(name)


def _option_strings(parser: ArgumentParser) -> list[str]:
    options: list[str] = []
    for action in parser._actions:
        options += [o for o in action.option_strings if o.startswith("--")]
        for subparser in (getattr(action, "_name_parser_map", None) or {}).values():
            options += _option_strings(subparser)
    return list(dict.fromkeys(options))


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.75)
    return f"; did you mean {close[0]}?" if close else ""


def one_line(message: str, parser: ArgumentParser) -> str:
    """jsonargparse's report as one line: the option, what is wrong with it, and the likely fix."""
    lines = message.splitlines()
    unrecognized = _UNRECOGNIZED.search(message)
    if unrecognized:
        option = unrecognized.group(1).split("=")[0]
        hint = _did_you_mean(option, _option_strings(parser))
        return f"unknown option {option}{hint or '; run kdlight <subcommand> --help for the options'}"
    keys, classes = [], []
    for line in lines:
        keys += _KEY.findall(line)
        classes += _CLASS.findall(line)
    # every level repeats the inner report; keep each nesting step once, in order
    path: list[str] = []
    for key in keys:
        if key not in path:
            path.append(key)
    path = [key.split(".")[-1] if i else key for i, key in enumerate(path)]
    unknown = _UNKNOWN.search(message)
    if unknown:
        name = unknown.group(1)
        owner = classes[-1] if classes else ""
        flag = "--" + ".".join(path) if path else "--"
        hint = _did_you_mean(name, _init_parameters(owner)) if owner else ""
        where = f" of {owner.rpartition('.')[2]}" if owner else ""
        key = name.split(".")[0]  # a moved key given as a class (meta_optimizer: {class_path, init_args})
        moved = _moved_to(owner, key) if owner else None
        if moved:
            return f"{flag}.{key} moved: write it as {flag.removeprefix('--')}.{moved}"
        return f"{flag}.{name}: no such argument{where}{hint or ''}"
    flag = "--" + ".".join(path) if path else "the config"
    expected = [m for m in (_EXPECTED.search(line.strip(" -")) for line in lines) if m]
    if expected:
        got = next((m.group(2) for m in expected if m.group(2) is not None), None)
        if got is None:
            given = [m.group(1) for m in (_GIVEN.match(line) for line in lines) if m]
            got = given[-1] if given else "?"
        wanted = " or ".join(dict.fromkeys(_type_name(m.group(1)) for m in expected if "NoneType" not in m.group(1)))
        return f"{flag}: {got!r} is not a valid value (expected {wanted or 'another type'})"
    first = next((line.strip() for line in lines if line.strip()), message)
    return f"{flag}: {first}" if path else first


__all__ = ["KDLightArgumentParser", "one_line"]
