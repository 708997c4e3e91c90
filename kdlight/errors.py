"""One error type for bad input, so the CLI can print it as one line instead of a traceback."""

from __future__ import annotations

import errno
from typing import Any, get_args


class KDLightError(ValueError):
    """Bad input from the user: the message names the problem and the fix."""

    #: the most recent one raised; jsonargparse re-wraps errors raised while it instantiates classes
    last: KDLightError | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        KDLightError.last = self


class RunInterrupted(Exception):  # noqa: N818  (a stop the user asked for, not an error in the run)
    """Ctrl-C during ``fit``: the state was saved; the message says where and how to continue."""


#: what the file system says when a write fails for a reason outside kdlight (full disk, size limit,
#: read-only mount, permissions, a file where a folder belongs)
WRITE_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("ENOSPC", "EFBIG", "EDQUOT", "EROFS", "EACCES", "EPERM", "EEXIST", "ENOTDIR", "EISDIR")
    if hasattr(errno, name)
)


def file_system_error(err: BaseException) -> KDLightError | None:
    """A file-system failure anywhere in ``err``'s chain, restated as one line naming the path; else None."""
    seen = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in WRITE_ERRNOS:
            where = f" {seen.filename!r}" if seen.filename else ""
            full = seen.errno in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC))
            fix = (
                "free space or write elsewhere" if full else "check the path (a file may stand where a folder belongs)"
            )
            return KDLightError(f"could not write{where}: {seen.strerror or seen}; {fix}")
        seen = seen.__cause__ or seen.__context__
    return None


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


def check_choice(name: str, value: Any, choices: Any) -> None:
    """Raise a KDLightError unless ``value`` is one of the ``typing.Literal`` type ``choices``.

    The CLI rejects a bad choice while parsing (the argument is annotated with the same Literal);
    this is the one runtime check for Python callers, who bypass the parser.
    """
    allowed = get_args(choices)
    if value not in allowed:
        raise KDLightError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def first_line(err: BaseException) -> str:
    """The first line of an error's message (libraries' own errors run to pages), or its type's name."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


__all__ = [
    "WRITE_ERRNOS",
    "KDLightError",
    "RunInterrupted",
    "check_choice",
    "file_system_error",
    "first_line",
    "user_error_in",
]
