"""The one exception type for errors a user can cause.

The CLI turns a `CqdError` into a single line on stderr and exit code 2, with
no traceback; library callers can catch it like any exception. Messages name
the culprit (file, layer, option) and the fix.
"""


class CqdError(Exception):
    """A user-caused error: missing or corrupt file, bad option, unknown layer..."""


class DiskFullError(CqdError):
    """A write ran out of space; the message names the path and the space it needs."""
