"""METIS in a child process: ``python -m tasks.metis_process WORKDIR NUM_PARTS SEED``.

pymetis holds the GIL for the whole METIS call (minutes on millions of nodes), so inside the
pipeline's process nothing else could run meanwhile: no progress messages, no reaction to a
cancelled flow run. The partition stage therefore writes the CSR to ``WORKDIR`` (``indptr.npy``,
``indices.npy``), runs this module, logs the elapsed time while it waits, and kills it when the
stage is interrupted. This module imports only numpy and pymetis, and writes ``assignment.npy`` and
``result.json`` (METIS' edge cut) into ``WORKDIR``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pymetis


def main(workdir: str, num_parts: str, seed: str) -> None:
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
