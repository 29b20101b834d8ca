"""The pipeline's stages in one process without Prefect, for fault tests that kill it.

``python -m tests.fault_driver CONFIG_JSON [--until STAGE]`` runs ingest, normalize, partition,
layout, train and evaluate as the flows do (under the graph's lock in the store), printing
``stage <name> start`` / ``stage <name> done`` lines, and last ``result {json}`` with the
fingerprints. The tests (and nothing else) use it: starting Prefect's server costs each run
seconds to minutes here, and the store's behaviour under a SIGKILL does not depend on it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

STAGES = ("ingest", "normalize", "partition", "layout", "train", "evaluate")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("config")
    p.add_argument("--until", choices=STAGES, default="evaluate")
    args = p.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    from storage.store import Store
    from tasks.config import load_config

    cfg = load_config(None, None, base=json.loads(open(args.config).read()))
    out: dict = {"pid": os.getpid()}

    def step(name, fn):
        print(f"stage {name} start", flush=True)
        value = fn()
        print(f"stage {name} done", flush=True)
        return value

    store = Store(cfg.store)
    with store.lock(cfg.data.name, cfg.lock_timeout_seconds):
        from tasks.ingest.snapshot import ingest_graph  # the later stages' modules (torch) only when needed

        snap = step("ingest", lambda: ingest_graph(cfg.data, cfg.split, store))
        out["snapshot"] = snap.fingerprint
        if args.until != "ingest":
            from tasks.normalize.features import normalize_features
            from tasks.partition.layout import layout_node_data
            from tasks.partition.partition import partition_graph

            feats = step("normalize", lambda: normalize_features(snap, cfg.normalize, store))
            out["features"] = feats.fingerprint
        if args.until not in ("ingest", "normalize"):
            part = step("partition", lambda: partition_graph(snap, cfg.partition, store))
            out["partition"] = part.fingerprint
        if args.until in ("layout", "train", "evaluate"):
            nd = step("layout", lambda: layout_node_data(part, snap, feats, store))
            out["node_data"] = nd.fingerprint
        if args.until in ("train", "evaluate"):
            from storage.store import Store
            from tasks.train.loop import train_cluster_gcn

            trained = step("train", lambda: train_cluster_gcn(nd, cfg.train, Store(cfg.store), num_classes=cfg.data.num_classes,
                                                              lock_timeout=cfg.lock_timeout_seconds))
            out["resumed_from_epoch"] = trained.resumed_from_epoch
            out["epochs_run"] = trained.epochs_run
            out["best_val_acc"] = trained.best_val_acc
            out["checkpoint_dir"] = trained.checkpoint_dir
        if args.until == "evaluate":
            from tasks.evaluate.evaluate import evaluate_model

            ev = step("evaluate", lambda: evaluate_model(trained, nd, snap, store, device=cfg.train.device,
                                                             seed=cfg.train.seed,
                                                             embedding_nodes=cfg.track.embedding_plot_nodes))
            out["test_acc"] = ev.metrics["test_acc"]
    print("result " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    from tasks.errors import InputError

    try:
        sys.exit(main())
    except InputError as e:  # as the command line reports it
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
