"""The one exception type for a user's mistake."""


class InputError(ValueError):
    """Bad input or configuration: the message names the file, the row or column, and what was
    expected. The command line prints it without a traceback."""


class ServiceUnavailable(InputError):
    """A server the run needs (the MLflow tracking server) does not answer at the start of a run.
    Reported like a user's mistake (one line, never retried): the fix is to start the server or
    to point the configuration at the right one."""


class UnsafeFileError(InputError):
    """A file from the store or the artifact store that graphpipe refuses to load because loading it
    could run code (for example a checkpoint holding pickled objects rather than tensors)."""
