"""No process a ``graphpipe`` command starts outlives it, even when it is SIGKILLed alone.

When the out-of-memory killer (or ``kill -9 PID``) ends the command's main process, its children
are not told: Prefect's embedded API server (a ``uvicorn`` subprocess that Prefect starts, and stops
only from an ``atexit`` hook) and anything else would keep running. The METIS child asks the kernel
itself to die with its parent (``PR_SET_PDEATHSIG``, :mod:`tasks.partition.metis`); for the rest,
:func:`reap_children_on_exit` starts a tiny watchdog process when the command starts:

- the command puts a random token in its environment (``GRAPHPIPE_RUN_TOKEN``), which every process
  it starts from then on inherits (Prefect's server, METIS, data-loader workers, their children);
- the watchdog (plain Python, no imports beyond the standard library, in its own session so that a
  Ctrl-C or a SIGKILL of the command's process group does not reach it) blocks reading a pipe whose
  only writer is the command; the kernel closes that pipe when the command ends, however it ends;
- on end of file it finds the processes whose initial environment holds the token
  (``/proc/<pid>/environ``), sends them SIGTERM, and SIGKILL to those still there 3 s later.

Nothing is polled while the command runs, and starting the watchdog costs one ``fork``/``exec`` in
the background (a few milliseconds of the command's time). A process graphpipe starts on purpose to
outlive the command must drop ``GRAPHPIPE_RUN_TOKEN`` from its environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

TOKEN_VAR = "GRAPHPIPE_RUN_TOKEN"
GRACE_SECONDS = 3.0

_WATCHDOG = r"""
import os, signal, sys, time
token, parent, grace = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
try:
    while sys.stdin.buffer.read(65536):
        pass
except OSError:
    pass
needle = ("GRAPHPIPE_RUN_TOKEN=" + token).encode()
me = os.getpid()
def marked():
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in (me, parent):
            continue
        try:
            with open("/proc/" + name + "/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(name))
        except OSError:
            pass
    return found
def send(pids, sig):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
left = marked()
send(left, signal.SIGTERM)
deadline = time.monotonic() + grace
while left and time.monotonic() < deadline:
    time.sleep(0.1)
    left = marked()
send(left, signal.SIGKILL)
"""

_watchdog: subprocess.Popen | None = None


def reap_children_on_exit() -> str | None:
    """Start the watchdog for this process (once); returns the run token, or ``None`` where
    ``/proc`` is not available (not Linux), in which case nothing is started."""
    global _watchdog
    if _watchdog is not None:
        return os.environ.get(TOKEN_VAR)
    if not os.path.isdir("/proc/self"):
        return None
    token = uuid.uuid4().hex
    os.environ[TOKEN_VAR] = token  # inherited by every process started from now on
    env = {k: v for k, v in os.environ.items() if k != TOKEN_VAR}  # the watchdog must not match itself
    _watchdog = subprocess.Popen(
        [sys.executable, "-S", "-c", _WATCHDOG, token, str(os.getpid()), str(GRACE_SECONDS)],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=env, start_new_session=True, close_fds=True,
    )
    return token
