"""``graphpipe verify``: check every published output of a graph against its manifest.

Each stage output (snapshots, normalized features, partitions, node data, evaluations) records at publish
time each file's size and checksum in its ``manifest.json``. Reads check the sizes (cheap, every
time); this checks every byte. A damaged output is reported with the reason; with ``repair`` it is
also discarded, so the next run rebuilds it (a damaged current snapshot then needs ``graphpipe
ingest`` or ``run`` with the input files).
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from storage.atomic import read_json
from storage.outputs import KINDS as OUTPUT_KINDS
from storage.store import Store, discard, verify_directory

KINDS = tuple(OUTPUT_KINDS.values())  # the folders of the stage outputs


@dataclass(frozen=True)
class Check:
    """The outcome for one output directory."""

    kind: str
    fingerprint: str
    status: str  # ok | damaged | unverified
    detail: str
    current: bool = False


def verify_graph(store: str | os.PathLike, name: str, *, repair: bool = False) -> list[Check]:
    """Check every output of graph ``name`` in ``store``; ``repair`` discards the damaged ones
    (holding the graph's lock; a plain check reads without it: outputs being written are under
    temporary names and not checked). Raises ``FileNotFoundError`` if the graph is not there."""
    s = Store(store)
    if s.remote:
        return _verify_remote(s, name, repair=repair)
    gdir = s.graph_dir(name)
    if not gdir.is_dir():
        raise FileNotFoundError(f"no graph {name!r} in store {s.root} (no directory {gdir})")
    current = ""
    pointer = gdir / "CURRENT.json"
    if pointer.is_file():
        try:
            current = str(read_json(pointer).get("path", ""))
        except (OSError, ValueError):
            current = ""
    out = []
    with s.lock(name) if repair else nullcontext():
        for kind in KINDS:
            kdir = gdir / kind
            if not kdir.is_dir():
                continue
            for d in sorted(p for p in kdir.iterdir() if p.is_dir() and not p.name.startswith(".")):
                status, detail = verify_directory(d)
                if status == "damaged" and repair:
                    discard(d)
                    detail += " (removed: the next run rebuilds it)"
                out.append(Check(kind, d.name, status, detail, current=str(d) == current or Path(current) == d))
    return out


def format_table(checks: list[Check]) -> str:
    """The checks as an aligned text table."""
    rows = [("output", "fingerprint", "status", "detail")] + [
        (c.kind + (" (current)" if c.current else ""), c.fingerprint, c.status, c.detail) for c in checks
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  ------")
    return "\n".join(lines)


def _verify_remote(s: Store, name: str, *, repair: bool) -> list[Check]:
    """:func:`verify_graph` on a remote store: every file of every output streamed from the
    bucket and compared with its manifest (the local cache is not trusted for this)."""
    from storage import fs
    from storage.outputs import KINDS as OUTPUT_KINDS

    folder_kind = {v: k for k, v in OUTPUT_KINDS.items()}
    gpath = s.remote_path("graphs", name)
    folders = [k for k in KINDS if k in fs.subdirs(s.location.fs, gpath)]
    if not folders and s.get_object(name, "CURRENT.json") is None:
        raise FileNotFoundError(f"no graph {name!r} in store {s.uri}")
    current = s.current_snapshot(name)
    out = []
    with s.lock(name) if repair else nullcontext():
        for kind in folders:
            for key in fs.subdirs(s.location.fs, f"{gpath}/{kind}"):
                o = s.output(name, folder_kind[kind], key)
                status, detail = _check_remote(o)
                if status == "damaged" and repair:
                    o.discard()
                    detail += " (removed: the next run rebuilds it)"
                out.append(Check(kind, key, status, detail,
                                 current=current is not None and current.path == o.location))
    return out


def _check_remote(o) -> tuple[str, str]:
    from storage import fs
    from storage.fingerprint import fingerprint_stream

    why = o.damage()
    if why is not None:
        return "damaged", why
    sums = o.manifest().get("checksums")
    if not sums:
        return "unverified", "published without checksums: sizes and contents cannot be checked"
    sizes = fs.list_sizes(o.store.location.fs, o.remote_path) or {}
    bad = []
    for fname, want in sorted(sums.items()):
        with o.store.location.fs.open_input_stream(f"{o.remote_path}/{fname}") as f:
            got = fingerprint_stream(f, sizes.get(fname, 0))
        if got != want.get("sha256"):
            bad.append(f"{fname} checksum {got} != {want.get('sha256')}")
    return ("damaged", "; ".join(bad)) if bad else ("ok", f"{len(sums)} files")
