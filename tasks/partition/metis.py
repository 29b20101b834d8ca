"""METIS in a child process: ``python -m tasks.partition.metis WORKDIR NUM_PARTS SEED``.

pymetis holds the GIL for the whole METIS call (minutes on millions of nodes), so inside the
pipeline's process nothing else could run meanwhile: no progress messages, no reaction to a
cancelled flow run. The partition stage therefore writes the CSR to ``WORKDIR`` (``indptr.npy``,
``indices.npy``), runs this module, logs the elapsed time while it waits, and kills it when the
stage is interrupted. This module imports only numpy and pymetis, and writes ``assignment.npy`` and
``result.json`` (METIS' edge cut) into ``WORKDIR``.

The child dies with its parent: it asks the kernel for SIGKILL when the parent thread that started
it ends (``prctl(PR_SET_PDEATHSIG)``), so a SIGKILL of the pipeline's process alone (the
out-of-memory killer) does not leave METIS running for minutes with gigabytes. The parent's pid
comes in ``GRAPHPIPE_METIS_PARENT``; if the parent is already gone when the child starts, it exits.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pymetis


PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None) -> None:
    """SIGKILL this process when its parent ends (Linux); exit now if the parent already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if parent_pid is not None and os.getppid() != parent_pid:  # the parent died before prctl
        sys.exit(f"parent process {parent_pid} is gone")


def main(workdir: str, num_parts: str, seed: str) -> None:
    parent = os.environ.get("GRAPHPIPE_METIS_PARENT")
    die_with_parent(int(parent) if parent else None)
    d = Path(workdir)
    indptr = np.load(d / "indptr.npy", mmap_mode="r")
    indices = np.load(d / "indices.npy", mmap_mode="r")
    edge_cut, parts = pymetis.part_graph(
        int(num_parts),
        adjacency=pymetis.CSRAdjacency(indptr, indices),
        recursive=False,
        options=pymetis.Options(seed=int(seed)),
    )
    np.save(d / "assignment.npy", np.asarray(parts, dtype=np.int32))
    (d / "result.json").write_text(json.dumps({"edge_cut": int(edge_cut)}))


if __name__ == "__main__":
    main(*sys.argv[1:])
