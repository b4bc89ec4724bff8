"""The one exception type that vaecli raises for user mistakes and bad input.

The CLI turns a :class:`VaeError` into a one-line message and a non-zero exit code;
anything else escaping is a bug and shows its traceback.
"""


class VaeError(Exception):
    """A user-facing error: bad input, a bad option, a missing file or device."""
