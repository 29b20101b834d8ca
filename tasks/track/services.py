"""Reachability of the servers a run needs, checked before any heavy work (standard library only,
so the command line can check before it imports torch, MLflow or Prefect)."""

from __future__ import annotations

import base64
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request

from tasks.errors import ServiceUnavailable


def is_server(uri: str | None) -> bool:
    """Whether ``uri`` names a tracking server (rather than a local store)."""
    return bool(uri) and uri.startswith(("http://", "https://"))


def redact(uri: str) -> str:
    """``uri`` with its credentials replaced by ``***`` (for messages and logs)."""
    from tasks.config import redact_uri

    return redact_uri(uri)


def short_reason(e: BaseException) -> str:
    """A few words for a failed request: ``Connection refused``, ``timed out``, ``HTTP 503``."""
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code}"
    text = str(getattr(e, "reason", None) or e)
    for hint in ("Connection refused", "timed out", "Name or service not known", "Max retries exceeded"):
        if hint in text:
            return "no answer" if hint == "Max retries exceeded" else hint
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def _request(uri: str, path: str) -> urllib.request.Request:
    parts = urllib.parse.urlsplit(uri)
    url = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1], path=parts.path.rstrip("/") + path))
    req = urllib.request.Request(url)
    user, password = parts.username, parts.password
    user = user or os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = password or os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        req.add_header("Authorization", f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}")
    elif user and password:
        token = base64.b64encode(f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    return req


def check_mlflow(uri: str | None, attempts: int = 4, delay: float = 3.0, timeout: float = 5.0) -> None:
    """Fail fast, with one clear line, when the MLflow tracking server ``uri`` does not answer.

    Local stores (``sqlite:///``, files, ``None``) need no server and pass. A server gets
    ``attempts`` tries of its ``/health`` endpoint, ``delay`` seconds apart, each bounded by
    ``timeout`` (9 s for a refused connection, at most 29 s for a hanging one, by default), so a
    server that is just restarting is waited for, and one that is down stops the run at once.
    """
    if not is_server(uri):
        return
    insecure = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true"
    context = ssl._create_unverified_context() if insecure else None
    problem = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(delay)
        try:
            with urllib.request.urlopen(_request(uri, "/health"), timeout=timeout, context=context) as r:
                if r.status == 200:
                    return
                problem = f"/health answered HTTP {r.status}"
        except (OSError, ValueError) as e:  # refused, timed out, HTTP errors, bad URL
            problem = short_reason(e)
    raise ServiceUnavailable(
        f"MLflow tracking server {redact(uri)} is not reachable ({problem}; {attempts} tries in "
        f"{(attempts - 1) * delay:.0f} s): start it, or set track.tracking_uri / MLFLOW_TRACKING_URI to a running one"
    )


def check_tracking_server(config) -> None:
    """:func:`check_mlflow` on the config's tracking URI (``track.tracking_uri``, else
    ``$MLFLOW_TRACKING_URI``; the default local store needs no check)."""
    check_mlflow(config.track.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
