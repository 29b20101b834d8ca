"""Content fingerprints: cache keys that change whenever the content does."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

_CHUNK = 8 << 20
DIGEST_CHARS = 16


def fingerprint_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes and size (hardware-accelerated: ~2x BLAKE2b's speed here)."""
    p = Path(path)
    with open(p, "rb") as f:
        return fingerprint_stream(f, p.stat().st_size)


def fingerprint_stream(f: Any, size: int) -> str:
    """:func:`fingerprint_file` of a readable binary stream of ``size`` bytes (e.g. an object
    read from a bucket), without a local copy."""
    h = hashlib.sha256()
    h.update(str(size).encode())
    while chunk := f.read(_CHUNK):
        h.update(chunk)
    return h.hexdigest()[:DIGEST_CHARS]


def fingerprint_value(*parts: Any) -> str:
    """Fingerprint of JSON-serialisable values (dict keys sorted) and numpy arrays."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        if isinstance(part, np.ndarray):
            arr = np.ascontiguousarray(part)
            h.update(f"ndarray:{arr.dtype.str}:{arr.shape}".encode())
            h.update(memoryview(arr).cast("B"))
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()[:DIGEST_CHARS]
