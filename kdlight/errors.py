"""One error type for bad input, so the CLI can print it as one line instead of a traceback."""


class KDLightError(ValueError):
    """Bad input from the user: the message names the problem and the fix."""
