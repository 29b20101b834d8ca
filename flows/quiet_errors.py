"""No traceback for a user's mistake: a logging filter on Prefect's run loggers.

Prefect logs a failed flow run as "Encountered exception during execution" with the exception's
whole traceback (and sends it to the API as the run's log), which a user reads as a crash. For an
:class:`~tasks.errors.InputError` (bad input or configuration: its message already names the file,
the row or column and what was expected) the filter keeps the log line and drops the traceback;
the run still ends ``Failed`` with the message. Any other exception keeps its full traceback.
"""

from __future__ import annotations

import logging

from tasks.errors import InputError

# where Prefect's engines log run failures (records are filtered where they are created)
PREFECT_LOGGERS = (
    "prefect", "prefect.flow_runs", "prefect.task_runs", "prefect.engine", "prefect.flow_engine", "prefect.task_engine",
)


def is_user_error(exc: BaseException | None) -> bool:
    """An InputError, or an exception caused by one (Prefect re-raises a task's exception in its flow)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, InputError):
            return True
        exc, seen = exc.__cause__, seen + 1
    return False


class DropUserErrorTraceback(logging.Filter):
    """Keeps every record; removes the traceback of records whose exception is a user's mistake."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and is_user_error(record.exc_info[1]):
            record.exc_info = None
            record.exc_text = None
        return True


def install() -> None:
    """Add the filter to Prefect's run loggers (idempotent; works before or after Prefect's logging setup)."""
    for name in PREFECT_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropUserErrorTraceback) for f in logger.filters):
            logger.addFilter(DropUserErrorTraceback())
