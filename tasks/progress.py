"""Progress of long stages, as a logging concern.

Stages report progress with :func:`report` on one logger, ``graphpipe.progress``; they never take a
``progress`` switch. Whether and where it shows is decided by whoever runs them, once:

- the command line's ``--progress`` (or the config's ``progress``) sets the logger to INFO, so the
  lines appear in the terminal and in the Prefect run's logs (:func:`enable`);
- inside a Prefect flow run, :class:`flows.progress.PrefectProgressHandler` turns the same records
  into Prefect progress artifacts (a bar per step in the UI), and in a terminal a rich progress bar
  (:class:`flows.progress.TerminalProgressHandler`); both are quiet in CI and without a terminal.

Each record carries ``graphpipe_progress = (step, done, total)`` so handlers need not parse text.
"""

from __future__ import annotations

import logging
import time

LOGGER_NAME = "graphpipe.progress"
log = logging.getLogger(LOGGER_NAME)
log.propagate = False  # off until enable(); see the module docstring


def enable(on: bool = True) -> None:
    """The one switch: show progress lines in the logs (they propagate to the parent loggers, so
    to the terminal and the Prefect run's logs) or not. Handlers attached to this logger itself
    (progress artifacts, the terminal bar) get the records either way."""
    log.propagate = on
    log.setLevel(logging.INFO if (on or log.handlers) else logging.WARNING)


def enabled() -> bool:
    """Whether progress lines are shown in the logs."""
    return log.propagate and log.isEnabledFor(logging.INFO)


def report(step: str, done: float, total: float | None, message: str = "", *args: object) -> None:
    """Report that ``step`` (e.g. ``"ingest rows"``, ``"train epochs"``) has done ``done`` of
    ``total`` units (``total`` ``None`` when unknown, e.g. METIS' elapsed seconds).

    Args:
        step: a short, stable name; handlers keep one bar/artifact per step.
        done: units done so far.
        total: units in all, or ``None``.
        message: a ``%``-format message for the log line (default: ``"<step>: <done>/<total>"``).
        args: its arguments.
    """
    if not log.isEnabledFor(logging.INFO):
        return
    if not message:
        message, args = ("%s: %s/%s", (step, _num(done), _num(total))) if total else ("%s: %s", (step, _num(done)))
    log.info(message, *args, extra={"graphpipe_progress": (step, float(done), None if total is None else float(total))})


class Ticker:
    """Rate-limits :func:`report` for loops: ``tick(done)`` reports at most every ``seconds``
    (always the first and the last step)."""

    def __init__(self, step: str, total: float | None, seconds: float = 10.0):
        self.step, self.total, self.seconds = step, total, seconds
        self._last = float("-inf")

    def tick(self, done: float, message: str = "", *args: object) -> None:
        now = time.monotonic()
        last = self.total is not None and done >= self.total
        if last or now - self._last >= self.seconds:
            self._last = now
            report(self.step, done, self.total, message, *args)


def _num(v: float | None) -> str:
    if v is None:
        return "?"
    return f"{int(v):,}" if float(v).is_integer() else f"{v:.1f}"
