"""Starting the embedded ("ephemeral") Prefect API server on a busy machine.

Without ``PREFECT_API_URL`` every flow call starts a temporary Prefect API server in a child
process and waits for ``/api/health``. Prefect 3.8.8 waits ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``
(default 20 s): on a 2-core machine at load 3-7 the server needed 15-58 s, so the run failed
with Prefect's own traceback. graphpipe waits longer, and says clearly what to set when even that
is not enough.

The limit, first found wins:

1. the command line's ``--server-startup-timeout SECONDS``;
2. ``GRAPHPIPE_SERVER_STARTUP_TIMEOUT`` (seconds);
3. Prefect's own ``server.ephemeral.startup_timeout_seconds``, when the user set it (environment
   variable, Prefect profile, ``prefect.toml`` or ``pyproject.toml``, ``.env``);
4. 600 s.

This module imports nothing heavy itself; Prefect is imported only when a limit is applied or the
server started.
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "GRAPHPIPE_SERVER_STARTUP_TIMEOUT"
PREFECT_ENV_VAR = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
DEFAULT_SECONDS = 600
PORT_RETRIES = 3

_applied: "StartupLimit | None" = None


class StartupError(RuntimeError):
    """The embedded Prefect API server did not start; the message says what to set."""


@dataclass(frozen=True)
class StartupLimit:
    """How long to wait for the embedded server, and which setting said so."""

    seconds: int
    source: str


def _positive_int(text: str, where: str) -> int:
    try:
        value = int(float(text))
    except (ValueError, OverflowError):
        value = 0
    if value <= 0:
        from tasks.errors import InputError

        raise InputError(f"{where}: expected a number of seconds above 0, got {text!r}")
    return value


def startup_limit(cli_seconds: int | None = None) -> StartupLimit:
    """The start-up limit for the embedded Prefect server (see the module's docstring for the order)."""
    if cli_seconds is not None:
        return StartupLimit(_positive_int(str(cli_seconds), "--server-startup-timeout"), "--server-startup-timeout")
    if os.environ.get(ENV_VAR, "").strip():
        return StartupLimit(_positive_int(os.environ[ENV_VAR], ENV_VAR), ENV_VAR)
    from prefect.settings import get_current_settings

    ephemeral = get_current_settings().server.ephemeral
    if "startup_timeout_seconds" in ephemeral.model_fields_set:  # env, profile, prefect.toml, .env
        return StartupLimit(int(ephemeral.startup_timeout_seconds), PREFECT_ENV_VAR)
    return StartupLimit(DEFAULT_SECONDS, "graphpipe's default")


def apply_startup_limit(limit: StartupLimit | None = None) -> StartupLimit:
    """Make ``limit`` (default :func:`startup_limit`) Prefect's ephemeral start-up timeout in this
    process, so that flows called from Python wait that long too."""
    global _applied
    from prefect.settings import get_current_settings

    if limit is None and _applied is not None:  # e.g. the command line's flag, applied first
        return _applied
    limit = limit or startup_limit()
    _applied = limit
    ephemeral = get_current_settings().server.ephemeral
    if ephemeral.startup_timeout_seconds != limit.seconds:
        # the process's settings object (Prefect reads it at each start); not frozen in Prefect 3
        ephemeral.startup_timeout_seconds = limit.seconds
    return limit


def needs_embedded_server() -> bool:
    """True when flow calls would start Prefect's temporary server (no ``PREFECT_API_URL``)."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    return not settings.api.url and bool(settings.server.ephemeral.enabled)


class EmbeddedServer:
    """Prefect's embedded API server, started in the background and waited for later.

    ``begin()`` starts the server process and returns at once, so the server (a child process
    importing Prefect's server: several seconds of CPU) starts while this process imports the flows.
    ``wait()`` returns when ``/api/health`` answers, then points this process's Prefect settings at
    it, so every flow call uses it; it raises :class:`StartupError` when the limit passes or the
    server exits. The command is Prefect's own (``SubprocessASGIServer._run_uvicorn_command`` in
    ``prefect/server/api/server.py``: uvicorn, ``create_app`` factory, 127.0.0.1, UI off, the same
    settings); starting it here rather than through ``SubprocessASGIServer`` keeps this process from
    importing Prefect's whole server (FastAPI, SQLAlchemy: several seconds) just to launch it. The
    server is stopped at exit, and on Linux also when this process is killed (``PR_SET_PDEATHSIG``).
    """

    def __init__(self, cli_seconds: int | None = None):
        self.cli_seconds = cli_seconds
        self.limit: StartupLimit | None = None
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self.log: tempfile._TemporaryFileWrapper | None = None  # the server's output
        self._started = time.monotonic()
        self._failed = False

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def begin(self) -> EmbeddedServer:
        """Start the server process unless ``PREFECT_API_URL`` points at a server.

        Before Prefect is imported here, only the environment is known: the server is started
        then, and stopped again in :meth:`wait` if Prefect's profile names an API URL.
        """
        if os.environ.get("PREFECT_API_URL", "").strip():
            return self
        if "prefect" in sys.modules and not needs_embedded_server():
            return self
        self._started = time.monotonic()
        self._spawn()
        atexit.register(self.stop)
        return self

    def _spawn(self) -> None:
        self.port = _free_port()
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        if "prefect" in sys.modules:  # settings changed in this process reach the server too, as in Prefect
            from prefect.settings import get_current_settings

            env.update(get_current_settings().to_environment_variables(exclude_unset=True))
        if self.log is None:
            self.log = tempfile.NamedTemporaryFile(prefix="graphpipe-prefect-server-", suffix=".log", delete=False)
        self.log.seek(0)
        self.log.truncate()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", _prefect_parent(), "--factory",
             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
             "--log-level", "error", "--lifespan", "on"],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )

    def wait(self) -> None:
        """Block until the server answers, then use it; :class:`StartupError` with what to set if it does not."""
        self.limit = apply_startup_limit(startup_limit(self.cli_seconds))
        if self.process is None:
            return
        if not needs_embedded_server():  # the profile names a server: not needed after all
            self.stop()
            return
        deadline = self._started + self.limit.seconds
        respawns = 0
        while True:
            code = self.process.poll()
            if code == 3 and respawns < PORT_RETRIES and "address already in use" in self._output().lower():
                respawns += 1  # the port was taken between choosing and binding it
                self._spawn()
                continue
            if code is not None:
                self._failed = True
                raise StartupError(
                    f"the embedded Prefect API server exited with status {code} while starting: {self._reason()} "
                    f"(its log: {self.log.name}); check PREFECT_HOME ({_prefect_home()}) and its database, or set "
                    "PREFECT_API_URL to a running Prefect server (`prefect server start`)"
                )
            if _healthy(self.api_url):
                break
            if time.monotonic() > deadline:
                self._failed = True
                self.stop()
                raise StartupError(
                    f"the embedded Prefect API server did not answer within {self.limit.seconds} s "
                    f"(limit from {self.limit.source}); the machine may be overloaded: set a longer limit with "
                    f"{ENV_VAR}=SECONDS or --server-startup-timeout SECONDS, or set PREFECT_API_URL to a "
                    f"running Prefect server (`prefect server start`); the server's log: {self.log.name}"
                )
            time.sleep(0.2)
        from prefect.settings import get_current_settings

        get_current_settings().api.url = self.api_url  # this process's flow calls use it

    def _output(self) -> str:
        if self.log is None:
            return ""
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def _reason(self) -> str:
        """The server's error in one line: its last exception line, else its last line."""
        lines = [line.strip() for line in self._output().splitlines() if line.strip()]
        errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception)\b.*:", line)]
        return (errors or lines or ["no output"])[-1][:300]

    def stop(self, *, keep_log: bool = False) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s) and remove its log unless it failed."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.log is not None and not keep_log and not self._failed:
            self.log.close()
            Path(self.log.name).unlink(missing_ok=True)


def _prefect_parent() -> str:
    """The folder holding the ``prefect`` package (uvicorn's ``--app-dir``), without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("prefect")
    return str(Path(next(iter(spec.submodule_search_locations))).parent)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=5) as response:
            return response.status == 200
    except (OSError, ValueError):  # refused, reset, timed out: not up yet
        return False


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (even by SIGKILL)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _prefect_home() -> str:
    from prefect.settings import get_current_settings

    return str(get_current_settings().home)
