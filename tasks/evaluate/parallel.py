"""Full-graph inference split across local processes (``workers > 1``), with exactly the result of
:func:`tasks.evaluate.inference.iter_full_graph` in one process.

Each layer is computed as in one process, over the same row chunks (the transform of linear models)
and the same row blocks, but rank ``r`` of ``workers`` computes a contiguous share of them into a
shared disk-backed array (a named scratch file in the scratch directory, opened by every rank with
a shared memory map); a barrier separates the steps, so layer ``l+1`` reads all of layer ``l``. The
last layer's logits go to one more shared array, which the calling process hands out block by
block, in row order, as :class:`~tasks.evaluate.inference.OutputBlock`\\ s. Every row is computed by
the same operations on the same inputs as in one process, so the outputs are bitwise equal.

The ranks are spawned daemon processes (CPU only; they ask the kernel to end them if the caller
dies); the first error in a rank stops every rank and is raised in the caller with the rank's own
exception type. The scratch files are removed when the iteration ends, however it ends.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import mmap
import os
import queue as queue_mod
import shutil
import signal
import tempfile
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from storage.arrays import ClusterGraph, CSRRows, Mapping, release_pages
from tasks.evaluate.inference import (BLOCK_NODES, OutputBlock, _chunk_rows, _linear_block, _neighbourhood_block,
                                      _rows, iter_full_graph)
from tasks.train.batching import block_bounds, graph_degrees, row_block
from tasks.train.model import GNN

log = logging.getLogger(__name__)
progress = logging.getLogger("graphpipe.progress")


def open_graph(partition_location: str, node_data_location: str) -> ClusterGraph:
    """The partitioned graph at a node data reference's locations (``node_data.partition.path``,
    ``node_data.path``), memory-mapped; as ``functools.partial(open_graph, ...)`` it is the
    picklable ``reopen`` of :func:`iter_full_graph_ranks`."""
    from storage.store import output_at

    return ClusterGraph.open(output_at(partition_location), output_at(node_data_location))


def share(items: list, rank: int, workers: int) -> list:
    """Rank ``rank``'s contiguous share of ``items`` (shares differ in size by at most one)."""
    n = len(items)
    return items[rank * n // workers : (rank + 1) * n // workers]


def _shared(path: str, rows: int, cols: int | None = None) -> tuple[np.ndarray, Mapping | None]:
    """A float32 ``rows x cols`` array over the shared file ``path``, created (sized) when ``cols``
    is given; else opened, its width read from its size (an empty file: width 0, in memory)."""
    fd = os.open(path, os.O_RDWR | (os.O_CREAT if cols is not None else 0), 0o600)
    try:
        if cols is not None and os.fstat(fd).st_size < rows * cols * 4:
            os.ftruncate(fd, rows * cols * 4)  # every creating rank asks for the same size
        size = os.fstat(fd).st_size
        if size == 0 or rows == 0:  # nothing to map
            return np.zeros((rows, 0 if rows == 0 else size // (4 * rows)), dtype=np.float32), None
        mm = mmap.mmap(fd, size)
    finally:
        os.close(fd)
    return np.ndarray((rows, size // (4 * rows)), dtype=np.float32, buffer=mm), Mapping(mm, 0)


def _transform_share(model: GNN, i: int, h: np.ndarray | CSRRows, h_maps: list, rank: int, workers: int,
                     path: str) -> None:
    """This rank's share of ``layer_transform(i)`` over the same row chunks as one process."""
    n = h.shape[0]
    step = _chunk_rows(h)
    z, z_map = None, None
    for a in share(list(range(0, n, step)), rank, workers):
        b = min(a + step, n)
        y = model.layer_transform(i, _rows(h, a, b)).numpy()
        if z is None:
            z, z_map = _shared(path, n, y.shape[1])
        z[a:b] = y
        release_pages(*h_maps, z_map)


def _blocks_share(model: GNN, i: int, graph: ClusterGraph, bounds: list, deg: Any, h: np.ndarray | CSRRows,
                  h_maps: list, src: np.ndarray | None, src_map: Mapping | None, rank: int, workers: int,
                  path: str) -> None:
    """This rank's share of layer ``i``'s row blocks, written to the shared array at ``path``."""
    cpu = torch.device("cpu")
    out, out_map = None, None
    for a, b in share(bounds, rank, workers):
        block = row_block(graph, a, b, model.spec.adjacency, deg)
        if src is not None:
            y = _linear_block(model, i, block, h, src, src_map, cpu).numpy()
        else:
            y = _neighbourhood_block(model, i, block, h, cpu).numpy()
        if out is None:
            out, out_map = _shared(path, graph.num_nodes, y.shape[1])
        out[a:b] = y
        graph.release()
        release_pages(*h_maps, src_map, out_map)


def _layer_path(prefix: str, i: int, kind: str) -> str:
    return f"{prefix}-{kind}{i}.bin"


def _die_with_parent() -> None:
    """Ask the kernel to end this process when its parent ends (Linux; elsewhere a no-op)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _rank_main(rank: int, workers: int, job: dict[str, Any], barrier: Any, q: Any) -> None:
    """A spawned rank: every layer's share, a barrier after each step; reports done or its error."""
    _die_with_parent()
    try:
        torch.set_num_threads(job["threads"])
        graph = job["reopen"]() if job["reopen"] is not None else job["graph"]
        model: GNN = job["model"]
        model.eval()
        bounds = block_bounds(graph, job["block_nodes"])
        deg = graph_degrees(graph)
        x_maps = [graph.maps.get(k) for k in ("x", "x_indptr", "x_indices", "x_data")]
        h, h_maps = graph.x, x_maps
        with torch.no_grad():
            for i in range(model.num_layers):
                src, src_map = None, None
                if model.propagates_linearly:
                    _transform_share(model, i, h, h_maps, rank, workers, _layer_path(job["prefix"], i, "t"))
                    barrier.wait()
                    src, src_map = _shared(_layer_path(job["prefix"], i, "t"), graph.num_nodes)
                _blocks_share(model, i, graph, bounds, deg, h, h_maps, src, src_map, rank, workers,
                              _layer_path(job["prefix"], i, "h"))
                barrier.wait()
                h, m = _shared(_layer_path(job["prefix"], i, "h"), graph.num_nodes)
                h_maps = [m]
        q.put(("done", rank))
    except threading.BrokenBarrierError:
        q.put(("stopped", rank))  # another rank failed or the caller stopped
    except BaseException as e:  # noqa: BLE001 - every failure goes to the caller
        e.add_note(f"in full-graph inference rank {rank} of {workers}:\n{traceback.format_exc()}")
        try:
            q.put(("error", rank, e))
        except Exception:
            q.put(("error", rank, RuntimeError(f"inference rank {rank}: {type(e).__name__}: {e}")))


def _wait_for_ranks(procs: list, q: Any, barrier: Any) -> None:
    """Until every rank is done; the first rank's error (or a rank that died) stops all and is raised."""
    done: set[int] = set()
    while len(done) < len(procs):
        try:
            msg = q.get(timeout=0.2)
        except queue_mod.Empty:
            dead = [r for r, p in enumerate(procs) if r not in done and not p.is_alive()]
            if dead:
                try:  # a message sent just before it ended
                    msg = q.get(timeout=1.0)
                except queue_mod.Empty:
                    barrier.abort()
                    raise RuntimeError(f"full-graph inference rank {dead[0]} died (exit code "
                                       f"{procs[dead[0]].exitcode})") from None
            else:
                continue
        if msg[0] == "error":
            barrier.abort()
            raise msg[2]
        if msg[0] == "done":
            done.add(msg[1])


def _start_ranks(model: GNN, graph: ClusterGraph, workers: int, block_nodes: int, prefix: str,
                 reopen: Callable[[], ClusterGraph] | None) -> tuple[list, Any, Any]:
    """Spawn the ranks (daemon processes) with the model, the graph (or how to open it) and a barrier."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, q = ctx.Barrier(workers), ctx.Queue()
    portable = None
    if reopen is None:  # an in-memory graph travels by value (its maps cannot)
        portable = ClusterGraph(**{**{f: getattr(graph, f) for f in graph.__dataclass_fields__}, "maps": {}})
    job = {"model": model.cpu(), "graph": portable, "reopen": reopen, "block_nodes": block_nodes,
           "prefix": prefix, "threads": max(1, torch.get_num_threads() // workers)}
    procs = [ctx.Process(target=_rank_main, args=(r, workers, job, barrier, q), daemon=True,
                         name=f"graphpipe-inference-{r}") for r in range(workers)]
    for p in procs:
        p.start()
    return procs, q, barrier


def _stop(procs: list) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(30)


def iter_full_graph_ranks(
    model: GNN,
    graph: ClusterGraph,
    device: torch.device,
    workers: int = 1,
    block_nodes: int = BLOCK_NODES,
    scratch_dir: str | os.PathLike | None = None,
    reopen: Callable[[], ClusterGraph] | None = None,
) -> Iterator[OutputBlock]:
    """:func:`~tasks.evaluate.inference.iter_full_graph` with each layer's row blocks split across
    ``workers`` local processes; yields exactly the same blocks (same order, same values).

    Args:
        model, graph, block_nodes: as in ``iter_full_graph``.
        device: ``workers > 1`` runs on the CPU; on another device the inference runs in this
            process (logged).
        workers: processes; ``1`` is ``iter_full_graph`` itself.
        scratch_dir: where the shared layer arrays are written (named files, removed at the end);
            ``None``: a temporary directory. Keep it off tmpfs for large graphs.
        reopen: a picklable callable opening the same graph in a rank (e.g. ``functools.partial(
            ClusterGraph.open, partition_dir, node_data_dir)``), so memory-mapped data is mapped,
            not copied; ``None`` sends ``graph``'s arrays to each rank by value (small graphs, tests).
    """
    if workers == 1 or device.type != "cpu":
        if workers > 1:
            log.info("full-graph inference: workers=%d runs on the CPU only; using one process on %s",
                        workers, device)
        yield from iter_full_graph(model, graph, device, block_nodes, scratch_dir)
        return
    own_dir = tempfile.mkdtemp(prefix="graphpipe-inference-") if scratch_dir is None else None
    prefix = os.path.join(own_dir or os.fspath(scratch_dir), f".inference-{uuid.uuid4().hex[:12]}")
    procs: list = []
    try:
        procs, q, barrier = _start_ranks(model, graph, workers, block_nodes, prefix, reopen)
        _wait_for_ranks(procs, q, barrier)
        progress.info("full-graph inference: %d layers done in %d processes", model.num_layers, workers)
        _stop(procs)
        yield from _output_blocks(model, graph, block_nodes, prefix)
    finally:
        _stop(procs)
        for path in glob.glob(glob.escape(prefix) + "-*"):
            os.unlink(path)
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)


def _output_blocks(model: GNN, graph: ClusterGraph, block_nodes: int, prefix: str) -> Iterator[OutputBlock]:
    """The last layer's blocks, in row order, from the ranks' shared arrays."""
    n, last = graph.num_nodes, model.num_layers - 1
    logits, logits_map = _shared(_layer_path(prefix, last, "h"), n)
    if last == 0:
        h, h_map = graph.x, None
    else:
        h, h_map = _shared(_layer_path(prefix, last - 1, "h"), n)
    for a, b in block_bounds(graph, block_nodes):
        yield OutputBlock(a, b, logits[a:b], h.rows(a, b).toarray() if isinstance(h, CSRRows) else h[a:b])
        graph.release()
        release_pages(logits_map, h_map)
