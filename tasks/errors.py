"""The one exception type for a user's mistake."""


class InputError(ValueError):
    """Bad input or configuration: the message names the file, the row or column, and what was
    expected. The command line prints it without a traceback."""
