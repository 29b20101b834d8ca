"""Where a store lives: a local directory, or a URI on a filesystem that pyarrow serves.

``store`` (CLI ``--store``, config, deployment parameter) is either a local path or a URI:
``s3://bucket/prefix`` (S3 and S3-compatible servers: MinIO, Ceph, R2, moto), and what
:func:`pyarrow.fs.FileSystem.from_uri` gives for free (``gs://``, ``abfs://``, ``hdfs://``);
``file://`` URIs are local paths. :func:`parse_store` turns the text into a :class:`Location`
without touching the network; :func:`check_location` then makes one cheap request, so that a URI
the store cannot serve (unknown scheme, a bucket that does not exist, refused credentials, an
endpoint that does not answer) is one clear :class:`StoreLocationError` line before any work starts,
never a local folder named ``s3:``.

S3 credentials and region come from the standard AWS environment and files (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, ``~/.aws/credentials``,
``AWS_REGION`` / ``AWS_DEFAULT_REGION``, instance roles), as pyarrow's AWS SDK resolves them. The
endpoint of an S3-compatible server is read here from ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL`` and passed to pyarrow explicitly (some pyarrow versions ignore the variable,
apache/arrow#49643); its scheme (``http``/``https``) is taken from that URL.

The helpers below are the only byte-level I/O the store does on a remote filesystem: whole small
objects (:func:`read_bytes`, :func:`write_bytes`; an object store replaces an object in one step, so
readers see the old bytes or the new ones), whole-file transfers (:func:`upload_file`,
:func:`download_file`), a directory listing with sizes (:func:`list_sizes`) and removal.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.errors import InputError

if TYPE_CHECKING:
    import pyarrow.fs as pafs

_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_CHUNK = 8 << 20  # bytes per read/write when streaming a file
_fs_cache: dict[tuple, Any] = {}
_fs_guard = threading.Lock()


class StoreLocationError(InputError):
    """The store's location cannot be served: unknown scheme, missing bucket, refused credentials,
    an endpoint that does not answer. One line, reported like a user's mistake (exit status 2)."""


def is_uri(text: str) -> bool:
    """True when ``text`` has the form ``scheme://...``."""
    return bool(_URI.match(text))


def redact(text: str) -> str:
    """``text`` with the credentials of any URI in it replaced by ``***`` (for messages)."""
    return re.sub(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s?#]+@", r"\1***@", text)


@dataclass(frozen=True)
class Location:
    """A store's root.

    Attributes:
        uri: ``scheme://bucket/prefix`` without a trailing slash, or the absolute local path.
        fs: the pyarrow filesystem serving it; ``None`` for a local directory.
        base: the root's path inside ``fs`` (``bucket/prefix``); the local path for a local store.
    """

    uri: str
    fs: Any
    base: str

    @property
    def remote(self) -> bool:
        """True when the store is not a local directory."""
        return self.fs is not None

    @property
    def scheme(self) -> str:
        """``s3``, ``gs``, ... (empty for a local directory)."""
        m = _URI.match(self.uri)
        return m.group(1).lower() if m else ""

    def path(self, *parts: str) -> str:
        """The filesystem path of ``parts`` below the root (``bucket/prefix/graphs/g/...``)."""
        return "/".join([self.base.rstrip("/"), *parts])

    def uri_of(self, fs_path: str) -> str:
        """The URI of filesystem path ``fs_path`` (one of :meth:`path`'s results)."""
        rel = fs_path[len(self.base):].lstrip("/") if fs_path.startswith(self.base) else fs_path
        return f"{self.uri}/{rel}" if rel else self.uri

    def fs_path_of(self, uri: str) -> str | None:
        """The filesystem path of ``uri`` when it lies below the root, else ``None``."""
        if uri == self.uri:
            return self.base
        if not uri.startswith(self.uri + "/"):
            return None
        return self.path(uri[len(self.uri) + 1:])


def s3_endpoint() -> str | None:
    """The S3-compatible endpoint URL from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _s3_filesystem() -> pafs.S3FileSystem:
    import pyarrow.fs as pafs

    endpoint = s3_endpoint()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    key = ("s3", endpoint, region, os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_PROFILE"))
    with _fs_guard:
        fs = _fs_cache.get(key)
        if fs is None:
            kw: dict[str, Any] = {"connect_timeout": 10, "request_timeout": 60}
            if endpoint:
                u = urllib.parse.urlparse(endpoint)
                if u.scheme not in ("http", "https") or not u.netloc:
                    raise StoreLocationError(
                        f"AWS_ENDPOINT_URL={endpoint!r} is not an http(s)://host[:port] URL")
                kw["endpoint_override"] = u.netloc + u.path.rstrip("/")
                kw["scheme"] = u.scheme
            kw["region"] = region or "us-east-1"
            fs = _fs_cache[key] = pafs.S3FileSystem(**kw)
    return fs


def parse_store(text: str | os.PathLike) -> Location:
    """The :class:`Location` of store ``text`` (a local path or a URI); no network access.

    Raises :class:`StoreLocationError` for a URI no filesystem here serves (unknown scheme, no
    bucket named) with a one-line reason.
    """
    raw = os.fspath(text)
    m = _URI.match(raw)
    if not m:
        p = Path(raw).expanduser().resolve()
        return Location(str(p), None, str(p))
    scheme = m.group(1).lower()
    if scheme == "file":
        p = Path(urllib.parse.unquote(urllib.parse.urlparse(raw).path)).expanduser().resolve()
        return Location(str(p), None, str(p))
    shown = redact(raw)
    if "?" in raw or "#" in raw:
        raise StoreLocationError(f"store {shown}: query strings and fragments are not supported; give "
                                 f"scheme://bucket/prefix (set the endpoint with AWS_ENDPOINT_URL)")
    u = urllib.parse.urlparse(raw)
    if "@" in u.netloc:
        raise StoreLocationError(f"store {shown}: credentials in the URI are not accepted (they would end up "
                                 f"in logs and run parameters); set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE")
    bucket = u.netloc
    prefix = "/".join(p for p in u.path.split("/") if p)
    if not bucket:
        raise StoreLocationError(f"store {shown}: no bucket named; expected {scheme}://BUCKET/PREFIX")
    if any(p in (".", "..") for p in prefix.split("/")):
        raise StoreLocationError(f"store {shown}: '.' and '..' are not allowed in the prefix")
    uri = f"{scheme}://{bucket}" + (f"/{prefix}" if prefix else "")
    base = f"{bucket}/{prefix}" if prefix else bucket
    if scheme in ("s3", "s3a"):
        return Location(uri, _s3_filesystem(), base)
    import pyarrow as pa
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(raw)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as e:
        raise StoreLocationError(
            f"store {shown}: this filesystem is not supported here ({str(e).splitlines()[0]}); "
            f"use a local directory or s3://bucket/prefix") from None
    except OSError as e:
        raise StoreLocationError(f"store {shown}: cannot open it ({str(e).splitlines()[0]})") from None
    return Location(uri, fs, path.rstrip("/"))


def check_location(loc: Location) -> None:
    """One cheap request to the store's filesystem: that the bucket exists and answers with these
    credentials. Raises :class:`StoreLocationError` (one line saying what to fix) otherwise; does
    nothing for a local directory."""
    if not loc.remote:
        return
    bucket = loc.base.split("/", 1)[0]
    import pyarrow.fs as pafs

    where = f" at {s3_endpoint()}" if loc.scheme in ("s3", "s3a") and s3_endpoint() else ""
    try:
        info = loc.fs.get_file_info(bucket)
    except OSError as e:
        raise StoreLocationError(f"store {redact(loc.uri)}: cannot reach bucket {bucket!r}{where} "
                                 f"({_short(e)}){_credential_hint(loc, e)}") from None
    if info.type == pafs.FileType.NotFound:
        raise StoreLocationError(f"store {redact(loc.uri)}: bucket {bucket!r} does not exist{where}; "
                                 f"create it first (graphpipe does not create buckets)")


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def _credential_hint(loc: Location, e: BaseException) -> str:
    text = str(e).lower()
    if loc.scheme not in ("s3", "s3a"):
        return ""
    if any(w in text for w in ("access denied", "accessdenied", "forbidden", "credential", "signature",
                               "invalidaccesskeyid", "403")):
        return ("; check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or "
                "~/.aws/credentials)")
    if any(w in text for w in ("connect", "resolve", "timeout", "timed out", "curl")):
        return "; check AWS_ENDPOINT_URL (for MinIO and other S3-compatible servers) and the network"
    return ""


# -- byte-level helpers on a pyarrow filesystem -------------------------------------------------
def read_bytes(fs: Any, path: str) -> bytes | None:
    """The whole object at ``path``, or ``None`` when there is none."""
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        return None


def write_bytes(fs: Any, path: str, data: bytes) -> None:
    """Write (or replace) the object at ``path`` in one request: readers see old or new bytes."""
    with fs.open_output_stream(path) as f:
        f.write(data)


def upload_file(fs: Any, local: str | os.PathLike, path: str) -> None:
    """Copy local file ``local`` to ``path`` on ``fs`` (streamed; multipart for large files)."""
    with open(local, "rb") as src, fs.open_output_stream(path) as dst:
        shutil.copyfileobj(src, dst, _CHUNK)


def download_file(fs: Any, path: str, local: str | os.PathLike) -> None:
    """Copy ``path`` on ``fs`` to local file ``local`` (streamed)."""
    with fs.open_input_stream(path) as src, open(local, "wb") as dst:
        while True:
            chunk = src.read(_CHUNK)
            if not chunk:
                break
            dst.write(chunk)


def list_sizes(fs: Any, directory: str, recursive: bool = False) -> dict[str, int] | None:
    """``{name relative to directory: size}`` of the files below ``directory`` (one listing
    request), or ``None`` when the directory does not exist."""
    import pyarrow.fs as pafs

    try:
        infos = fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True, recursive=recursive))
    except FileNotFoundError:
        return None
    if not infos and fs.get_file_info(directory).type == pafs.FileType.NotFound:
        return None
    n = len(directory.rstrip("/")) + 1
    return {i.path[n:]: i.size for i in infos if i.type == pafs.FileType.File}


def subdirs(fs: Any, directory: str) -> list[str]:
    """Names of the directories directly below ``directory`` (empty when it does not exist)."""
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def delete_dir(fs: Any, directory: str) -> None:
    """Remove ``directory`` and everything below it (nothing when it does not exist)."""
    try:
        fs.delete_dir(directory)
    except FileNotFoundError:
        pass


def delete_file(fs: Any, path: str) -> None:
    """Remove the object at ``path`` (nothing when it does not exist)."""
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass
