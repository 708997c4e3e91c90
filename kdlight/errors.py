"""One error type for bad input, so the CLI can print it as one line instead of a traceback."""

from __future__ import annotations

import typing


class KDLightError(ValueError):
    """Bad input from the user: the message names the problem and the fix."""

    #: the most recent one raised; jsonargparse re-wraps errors raised while it instantiates classes
    last: KDLightError | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        KDLightError.last = self


def user_error_in(err: BaseException) -> KDLightError | None:
    """The KDLightError behind ``err``: itself, one in its cause chain, or one quoted in its message."""
    seen = err
    while seen is not None:
        if isinstance(seen, KDLightError):
            return seen
        seen = seen.__cause__ or seen.__context__
    last = KDLightError.last
    if last is not None and str(last) and str(last) in str(err):
        return last
    return None


def check_choice(name: str, value, choices) -> None:
    """Raise a KDLightError unless ``value`` is one of the values of ``choices`` (a ``typing.Literal`` type).

    jsonargparse already rejects other values from the CLI and YAML; this is the check for Python users.
    """
    allowed = typing.get_args(choices)
    if value not in allowed:
        raise KDLightError(f"{name} must be one of {', '.join(str(c) for c in allowed)}; got {value!r}")
