"""Manifests: what makes a published output directory complete, and how damage is found.

Every output directory of the store ends with a ``manifest.json`` written last (its presence marks
the directory complete). It records the parameters, the inputs' fingerprints, counts, and each
file's size and SHA-256 checksum: :func:`damage` checks the sizes cheaply on every reuse,
:func:`verify_directory` the checksums (``graphpipe verify``). Used by :mod:`storage.outputs`
(the stage-output interface) and :mod:`storage.store`.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import subprocess
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any

from storage.atomic import read_json, write_json
from storage.fingerprint import fingerprint_file

log = logging.getLogger("storage.store")

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


@lru_cache(maxsize=1)
def code_version() -> str:
    """The package version, plus the git commit when run from a checkout."""
    from importlib import metadata

    try:
        version = metadata.version("graphpipe")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{version}+{sha}" if sha else version


def make_manifest(
    kind: str,
    fingerprint: str,
    *,
    params: dict[str, Any],
    inputs: dict[str, Any],
    counts: dict[str, Any],
    files: list[str],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest of an output of ``kind`` keyed ``fingerprint`` (checksums are added by
    :func:`write_manifest`)."""
    return {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "fingerprint": fingerprint,
        "params": params,
        "inputs": inputs,
        "counts": counts,
        "files": sorted(files),
        "code_version": code_version(),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }


def write_manifest(directory: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Write the manifest last: its presence marks the directory complete.

    Adds ``checksums``: each listed regular file's size and content checksum
    (:func:`storage.fingerprint.fingerprint_file`, SHA-256), so that damage done after publishing
    is found: sizes on every read (:func:`damage`), contents by :func:`verify_directory`
    (``graphpipe verify``).
    """
    d = Path(directory)
    checksums = {}
    for name in manifest.get("files", []):
        f = d / name
        if f.is_file():
            checksums[name] = {"size": f.stat().st_size, "sha256": fingerprint_file(f)}
    write_json(d / MANIFEST, {**manifest, "checksums": checksums})


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a published directory (OSError / ValueError when there is none or it is unreadable)."""
    return read_json(Path(directory) / MANIFEST)


def damage(directory: str | os.PathLike) -> str | None:
    """Why ``directory`` is not a complete, undamaged output (``None`` if it is), checking only
    what is cheap: the manifest, that every listed file exists, and each file's size against the
    size recorded at publish time."""
    d = Path(directory)
    if not d.is_dir():
        return "missing"
    if not (d / MANIFEST).is_file():
        return "no manifest.json (incomplete)"
    try:
        manifest = read_manifest(d)
    except (OSError, ValueError) as e:
        return f"unreadable manifest.json ({e})"
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        return f"manifest.json has format version {manifest.get('format_version') if isinstance(manifest, dict) else '?'}, not {FORMAT_VERSION}"
    sums = manifest.get("checksums") or {}
    for name in manifest.get("files", []):
        f = d / name
        if not f.exists():
            return f"{name} is missing"
        want = sums.get(name, {}).get("size")
        if want is not None:
            size = f.stat().st_size
            if size != want:
                return f"{name} has {size} bytes, the manifest says {want}"
    return None


def is_complete(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` is a complete, undamaged output (:func:`damage` finds nothing)."""
    return damage(directory) is None


def verify_directory(directory: str | os.PathLike) -> tuple[str, str]:
    """Full check of a published directory: ``("ok" | "damaged" | "unverified", detail)``.
    Every file's size and checksum against the manifest; ``unverified`` for outputs published
    before checksums were recorded (complete, but their content cannot be checked)."""
    d = Path(directory)
    why = damage(d)
    if why is not None:
        return "damaged", why
    manifest = read_manifest(d)
    sums = manifest.get("checksums")
    if not sums:
        return "unverified", "published without checksums: sizes and contents cannot be checked"
    bad = []
    for name, want in sorted(sums.items()):
        got = fingerprint_file(d / name)
        if got != want.get("sha256"):
            bad.append(f"{name} checksum {got} != {want.get('sha256')}")
    if bad:
        return "damaged", "; ".join(bad)
    return "ok", f"{len(sums)} files"


def reusable(directory: str | os.PathLike, what: str = "output") -> bool:
    """True when ``directory`` is a complete, undamaged output a stage can reuse. If it exists but
    is incomplete or damaged (size check, :func:`damage`), it is treated as missing: logged with
    the reason, moved aside and deleted, so the stage builds and publishes it again."""
    d = Path(directory)
    why = damage(d)
    if why is None:
        return True
    if why != "missing" and d.exists():
        log.warning("%s %s is damaged or incomplete (%s): rebuilding it", what, d, why)
        discard(d)
    return False


def discard(directory: str | os.PathLike) -> None:
    """Remove a published directory: renamed aside first (one atomic step), then deleted."""
    d = Path(directory)
    aside = d.parent / f".{d.name}.damaged-{uuid.uuid4().hex[:12]}"
    try:
        d.rename(aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)
