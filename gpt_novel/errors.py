"""The one exception type for mistakes a user can fix (bad input, bad option, bad path).

The CLI prints these as a single line and exits with status 2; everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input or options, reported as one line without a traceback."""
