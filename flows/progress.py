"""Where the stages' progress shows: Prefect progress artifacts, and a bar in a terminal.

Stages report on the ``graphpipe.progress`` logger (:mod:`tasks.progress`); :func:`install`
attaches, once per process:

- :class:`PrefectProgressHandler`: inside a flow or task run, one Prefect progress artifact per
  step (``ingest rows``, ``partition METIS``, ``train epochs``, ...), updated at most every
  ``min_interval`` seconds and when a step completes: the bar in the run's Artifacts tab;
- :class:`TerminalProgressHandler`: a rich progress bar on stderr, only when stderr is a terminal
  and ``CI`` is not set (quiet in CI and in logs written to files).

The log lines themselves appear only when progress is switched on (``--progress``, config
``progress``: :func:`tasks.progress.enable`).
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import sys
import threading
import time
from typing import Any

from tasks import progress as progress_mod

log = logging.getLogger(__name__)


def _progress_of(record: logging.LogRecord) -> tuple[str, float, float | None] | None:
    value = getattr(record, "graphpipe_progress", None)
    return value if isinstance(value, tuple) and len(value) == 3 else None


def _percent(done: float, total: float | None) -> float | None:
    if not total:
        return None
    return max(0.0, min(100.0, 100.0 * done / total))


def artifact_key(step: str) -> str:
    """A Prefect artifact key for ``step`` (lowercase letters, digits and dashes only)."""
    return ("progress-" + re.sub(r"[^a-z0-9-]+", "-", step.lower())).strip("-")[:100]


class PrefectProgressHandler(logging.Handler):
    """One Prefect progress artifact per (run, step), updated as records arrive.

    The artifacts are sent by one background thread, never by the stage that logs: a Prefect API
    that is slow or down (its client retries for minutes) must not hold up training. Updates of a
    step that arrive while one is being sent are coalesced: only the latest is sent. Each update is
    sent in a copy of the logging thread's context, so Prefect attaches it to that thread's task
    or flow run. :meth:`flush` waits (a bounded time) until what was logged has been sent.
    """

    def __init__(self, min_interval: float = 2.0):
        super().__init__(level=logging.INFO)
        self.min_interval = min_interval
        self._ids: dict[tuple[str, str], Any] = {}
        self._last: dict[tuple[str, str], float] = {}
        self._pending: dict[tuple[str, str], tuple[contextvars.Context, str, float, str]] = {}
        self._cond = threading.Condition()
        self._sending = False
        self._sender: threading.Thread | None = None

    @staticmethod
    def _run_id() -> str | None:
        from prefect.context import FlowRunContext, TaskRunContext

        task_ctx = TaskRunContext.get()
        if task_ctx is not None:
            return str(task_ctx.task_run.id)
        flow_ctx = FlowRunContext.get()
        return str(flow_ctx.flow_run.id) if flow_ctx is not None and flow_ctx.flow_run else None

    def emit(self, record: logging.LogRecord) -> None:
        found = _progress_of(record)
        if found is None:
            return
        step, done, total = found
        percent = _percent(done, total)
        if percent is None:
            return  # no total (elapsed time only): nothing a bar can show
        try:
            run = self._run_id()
            if run is None:
                return
            key = (run, step)
            now = time.monotonic()
            with self._cond:
                if key in self._ids and percent < 100 and now - self._last.get(key, 0.0) < self.min_interval:
                    return
                self._last[key] = now
                self._pending[key] = (contextvars.copy_context(), step, percent, record.getMessage())
                self._start_sender()
                self._cond.notify_all()
        except Exception as e:  # progress must never break a stage
            log.debug("progress artifact for %s not queued: %s", step, e)

    def _start_sender(self) -> None:
        if self._sender is None or not self._sender.is_alive():
            self._sender = threading.Thread(target=self._send_forever, name="graphpipe-progress-artifacts", daemon=True)
            self._sender.start()

    def _send_forever(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                key = next(iter(self._pending))
                ctx, step, percent, message = self._pending.pop(key)
                self._sending = True
            try:
                ctx.run(self._update, key, step, percent, message)
            except Exception as e:  # the API down past its retries: this update is lost, later ones are sent
                log.debug("progress artifact for %s not updated: %s", step, e)
            finally:
                with self._cond:
                    self._sending = False
                    self._cond.notify_all()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait up to ``timeout`` seconds until every update logged so far has been sent (or given
        up); True when nothing is left."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._sending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _update(self, key: tuple[str, str], step: str, percent: float, message: str) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        if key not in self._ids:
            self._ids[key] = create_progress_artifact(progress=percent, key=artifact_key(step), description=message)
        else:
            update_progress_artifact(self._ids[key], progress=percent, description=message)


def flush(timeout: float = 10.0) -> bool:
    """Send what the installed :class:`PrefectProgressHandler` still holds (at most ``timeout``
    seconds); True when nothing is left. Logging's shutdown at exit flushes it too."""
    return all(h.flush(timeout) for h in progress_mod.log.handlers if isinstance(h, PrefectProgressHandler))


class TerminalProgressHandler(logging.Handler):
    """A rich progress bar per step on stderr (terminals only)."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self._progress = None
        self._tasks: dict[str, Any] = {}
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        found = _progress_of(record)
        if found is None:
            return
        step, done, total = found
        try:
            with self._lock:
                self._show(step, done, total)
        except Exception:  # a terminal nicety: never an error
            pass

    def _show(self, step: str, done: float, total: float | None) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        if self._progress is None:
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,.0f}/{task.total}"),
                                      TimeElapsedColumn(), transient=True, redirect_stdout=False, redirect_stderr=False)
            self._progress.start()
        if step not in self._tasks:
            self._tasks[step] = self._progress.add_task(step, total=total)
        self._progress.update(self._tasks[step], completed=done, total=total)
        if total is not None and done >= total:
            self._progress.remove_task(self._tasks.pop(step))
        if not self._tasks:
            self._progress.stop()
            self._progress = None


def wants_terminal_bar(stream: Any = None) -> bool:
    """True when a progress bar is wanted: stderr is a terminal and ``CI`` is not set."""
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)()) and not os.environ.get("CI")


_installed = threading.Lock()


def install(show_lines: bool | None = None) -> None:
    """Attach the handlers to ``graphpipe.progress`` (once per process) and set the switch.

    Args:
        show_lines: show progress lines in the logs (``--progress``); ``None`` leaves it as is.
    """
    logger = progress_mod.log
    with _installed:
        kinds = {type(h) for h in logger.handlers}
        if PrefectProgressHandler not in kinds:
            logger.addHandler(PrefectProgressHandler())
        if TerminalProgressHandler not in kinds and wants_terminal_bar():
            logger.addHandler(TerminalProgressHandler())
    progress_mod.enable(progress_mod.enabled() if show_lines is None else show_lines)
