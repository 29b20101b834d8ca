"""METIS in a child process: :func:`run_metis` in the stage, ``python -m tasks.partition.metis`` in the child.

pymetis holds the GIL for the whole METIS call (minutes on millions of nodes), so inside the
pipeline's process nothing else could run meanwhile: no progress messages, no reaction to a
cancelled flow run. The partition stage therefore saves the CSR into a scratch directory, and
:func:`run_metis` starts this module as ``python -m tasks.partition.metis INDPTR INDICES
ASSIGNMENT NUM_PARTS SEED`` (the paths of the two input arrays and of the assignment to write),
logs the elapsed time while it waits, and kills the child when the stage is interrupted. The child
imports only numpy and pymetis, writes the assignment (int32 per node) to ``ASSIGNMENT`` and prints
METIS' edge cut as the last line of its standard output.

The child dies with its parent: it asks the kernel for SIGKILL when the parent thread that started
it ends (``prctl(PR_SET_PDEATHSIG)``), so a SIGKILL of the pipeline's process alone (the
out-of-memory killer) does not leave METIS running for minutes with gigabytes. The parent's pid
comes in ``GRAPHPIPE_METIS_PARENT``; if the parent is already gone when the child starts, it exits.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
PROGRESS = logging.getLogger("graphpipe.progress")

PR_SET_PDEATHSIG = 1
METIS_HEARTBEAT_SECONDS = 30.0


def run_metis(indptr: Path, indices: Path, assignment: Path, num_nodes: int, nnz: int, num_parts: int,
              seed: int) -> tuple[np.ndarray, int]:
    """METIS k-way assignment (int32 per node) and METIS' own edge cut, computed in a child process.

    Args:
        indptr, indices: ``.npy`` files of the symmetric CSR adjacency (int64 indices avoid a copy).
        assignment: where the child writes the assignment (read back and returned).
        num_nodes, nnz: the graph's size, for messages and the result's check.
        num_parts: the number of clusters (at least 2).
        seed: METIS' random seed.

    Logs progress (start, elapsed time every :data:`METIS_HEARTBEAT_SECONDS`, end) at INFO on
    ``graphpipe.progress``. Raises RuntimeError when METIS fails or returns an invalid assignment,
    OSError(ENOSPC) when the child's writes hit a full disk; an interrupted caller kills the child.
    """
    PROGRESS.info("METIS running: %d parts, %d nodes, %d adjacency entries", num_parts, num_nodes, nnz)
    start = time.perf_counter()
    stdout, stderr, code = _wait_for_child(
        [str(indptr), str(indices), str(assignment), str(num_parts), str(seed)], num_parts, num_nodes, start)
    what = f"on {num_nodes} nodes, {num_parts} parts"
    if code != 0:
        tail = stderr.decode(errors="replace").strip()[-2000:]
        why = f"killed by signal {-code} (out of memory?)" if code < 0 else f"exit status {code}"
        if "No space left on device" in tail:  # the child's own writes hit a full disk
            raise OSError(errno.ENOSPC, f"No space left on device (METIS writing {assignment})")
        raise RuntimeError(f"METIS failed ({why}) {what}: {tail or 'no message'}")
    lines = stdout.decode(errors="replace").split()
    if not assignment.exists() or not lines or not lines[-1].isdigit():
        raise RuntimeError(f"METIS ended without a result {what}")
    parts = np.load(assignment)
    edge_cut = int(lines[-1])
    PROGRESS.info("METIS done in %.1f s: edge cut %d", time.perf_counter() - start, edge_cut)
    if len(parts) != num_nodes or (num_nodes and (parts.min() < 0 or parts.max() >= num_parts)):
        raise RuntimeError(f"METIS returned an invalid assignment for {num_nodes} nodes and {num_parts} parts")
    return parts, edge_cut


def _wait_for_child(args: list[str], num_parts: int, num_nodes: int, start: float) -> tuple[bytes, bytes, int]:
    """Run this module with ``args``; log the elapsed time while it runs; kill it if interrupted.
    Returns ``(stdout, stderr, returncode)``."""
    package_root = str(Path(__file__).resolve().parent.parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
           "GRAPHPIPE_METIS_PARENT": str(os.getpid())}  # the child dies with this process
    proc = subprocess.Popen([sys.executable, "-m", "tasks.partition.metis", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=package_root)
    try:
        while True:
            try:
                stdout, stderr = proc.communicate(timeout=METIS_HEARTBEAT_SECONDS)
                return stdout, stderr, proc.returncode
            except subprocess.TimeoutExpired:
                PROGRESS.info("METIS running: %.0f s elapsed (%d parts, %d nodes)", time.perf_counter() - start,
                              num_parts, num_nodes)
    finally:
        if proc.poll() is None:  # interrupted or cancelled: do not leave METIS running
            proc.kill()
            proc.wait()


def die_with_parent(parent_pid: int | None) -> None:
    """SIGKILL this process when its parent ends (Linux); exit now if the parent already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if parent_pid is not None and os.getppid() != parent_pid:  # the parent died before prctl
        sys.exit(f"parent process {parent_pid} is gone")


def main(indptr: str, indices: str, assignment: str, num_parts: str, seed: str) -> None:
    """The child: METIS on the CSR in ``indptr``/``indices``; the assignment to ``assignment``,
    the edge cut printed on standard output."""
    import pymetis

    parent = os.environ.get("GRAPHPIPE_METIS_PARENT")
    die_with_parent(int(parent) if parent else None)
    edge_cut, parts = pymetis.part_graph(
        int(num_parts),
        adjacency=pymetis.CSRAdjacency(np.load(indptr, mmap_mode="r"), np.load(indices, mmap_mode="r")),
        recursive=False,
        options=pymetis.Options(seed=int(seed)),
    )
    np.save(assignment, np.asarray(parts, dtype=np.int32))
    print(int(edge_cut), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
