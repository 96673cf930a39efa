"""The one exception type for problems with what a user gave: config, data, weights, environment.

Commands print a ``UserError`` as one line naming the file, key or step, and exit 1. Any other
exception is a bug in resdepth or below it and keeps its whole traceback.
"""


class UserError(ValueError):
    """What the user gave cannot be used; the message says what is wrong and what to do.

    A ``ValueError`` (a bad value, from the user's point of view), but commands print only this
    type as one line: a ``ValueError`` raised by anything else stays a bug with a traceback."""
