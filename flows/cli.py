"""``graphpipe``: the command line. It only builds a config and starts a flow.

::

    graphpipe run --edges E [--edges E2 ...] --nodes N [--features F] --store DIR
                  [--name NAME] [--config FILE] [--set section.key=value ...]
    graphpipe ingest    (same input flags as run)
    graphpipe partition --store DIR --name NAME [--set ...]
    graphpipe train     --store DIR --name NAME [--set ...]
    graphpipe score     --store DIR --name NAME [--set score.model=3 ...]
    graphpipe tune      (same input flags as run, or none: the current snapshot) [--trials N] [--timeout S]
    graphpipe generate  --out DIR [--nodes N ...]
    graphpipe demo      [--nodes 50000] [--store graphpipe-demo]
    graphpipe verify    --store DIR --name NAME [--repair]

A user's mistake prints one ``error:`` message (file, row or column, what was expected) and exits
with status 2; no traceback. Inputs are checked (formats, columns) before Prefect's embedded server
starts; if that server cannot start within its limit (:mod:`flows.startup`), one ``error:`` line
and status 3.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# library loggers also log outside flow runs (stages called directly)
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "tasks,storage")
# ride out a Prefect API restart: 7 retries, 2 to 128 s apart (Prefect's default 5 gives up after ~1 min)
os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", "7")

from flows import quiet_errors  # noqa: E402
from flows.startup import StartupError  # noqa: E402
from tasks.config import load_config, redact_uri  # noqa: E402
from tasks.errors import InputError  # noqa: E402
from tasks.track.services import check_tracking_server  # noqa: E402


def _add_common(p: argparse.ArgumentParser, *, inputs: bool) -> None:
    if inputs:
        p.add_argument("--edges", action="append", default=None, metavar="PATH",
                       help="edge list: CSV, TSV, whitespace text (# comments), .gz, or Parquet; repeatable; "
                            "a directory (its edge files) or a quoted glob ('edges/*.csv') is expanded at run time")
        p.add_argument("--nodes", metavar="FILE", help="node table (Parquet or CSV): id, label, split/masks, features")
        p.add_argument("--features", metavar="FILE", help="feature matrix .npy (dense) or .npz (scipy sparse)")
    p.add_argument("--store", metavar="DIR|URI",
                   help="graph store: a directory, or s3://bucket/prefix (default: graphpipe-store)")
    p.add_argument("--name", help="graph name in the store (default: graph)")
    p.add_argument("--config", metavar="FILE", help="YAML or TOML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set train.epochs=50; repeatable")
    p.add_argument("--experiment", help="MLflow experiment (default: graphpipe)")
    p.add_argument("--progress", action="store_true", help="log progress of long stages")
    _add_startup_timeout(p)


def _add_startup_timeout(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server-startup-timeout", type=int, metavar="SECONDS",
                   help="how long to wait for the embedded Prefect API server to start (default: "
                        "$GRAPHPIPE_SERVER_STARTUP_TIMEOUT, else Prefect's own setting if you set it, else 600)")


def build_config(args: argparse.Namespace):
    """Config file, then the flags, then ``--set`` overrides (the last word wins)."""
    base: dict[str, Any] = {}
    cfg = load_config(args.config) if args.config else None
    if cfg is not None:
        base = cfg.model_dump(mode="json")
    data = base.setdefault("data", {})
    for flag, key in (("edges", "edges"), ("nodes", "nodes"), ("features", "features"), ("name", "name")):
        value = getattr(args, flag, None)
        if value:
            data[key] = [str(Path(v).resolve()) for v in value] if key == "edges" else (
                str(Path(value).resolve()) if key != "name" else value)
    if args.store:
        from storage.fs import is_uri

        base["store"] = args.store if is_uri(args.store) else str(Path(args.store).resolve())
    if args.experiment:
        base.setdefault("track", {})["experiment"] = args.experiment
    return load_config(None, _with_progress(args), base=base)


def _with_progress(args: argparse.Namespace) -> list[str]:
    """The ``--set`` overrides, then ``--progress`` as the last word: the flag beats the config."""
    return [*args.overrides, "progress=true"] if getattr(args, "progress", False) else list(args.overrides)


def _print_summary(summary: dict[str, Any]) -> None:
    m = summary["metrics"]
    ml = summary["mlflow"]
    print()
    print(f"graph {summary['graph']}:")
    for split in ("train", "val", "test"):
        print(f"  {split:5s} accuracy {m[f'{split}_acc']:.4f}   macro-F1 {m[f'{split}_macro_f1']:.4f}")
    base = summary.get("baseline")
    if base:
        print(f"  features only ({base['model']}{', reused' if base.get('mode') == 'reused' else ''}, no graph): val accuracy {base['val_acc']:.4f}   test accuracy {base['test_acc']:.4f}")
    health = summary.get("health")
    if health and health["status"] != "ok":
        print(f"  WARNING: {health['reason']}")
        for s in health["suggestions"]:
            print(f"    try: {s}")
    print(f"  predictions: {summary['predictions']}")
    if summary.get("scores"):
        _print_scores(summary["scores"])
    print(f"MLflow: run {ml['run_id']} in {redact_uri(ml['tracking_uri'])}")
    if ml.get("model_version"):
        state = "now champion" if ml["champion"] else "champion unchanged"
        print(f"  registered model {ml['model']} version {ml['model_version']} ({state})")
    print(f"  to look at it: {ml['ui']}")


def _print_scores(scores: dict[str, Any]) -> None:
    """The scoring's lines: where the scores are, and the drift since the previous scoring."""
    print(f"  scores ({scores['model']}): {scores['path']}")
    drift = scores["drift"]
    if "drift_changed_share" in drift:
        print(f"  drift since the previous scoring: {100 * drift['drift_changed_share']:.2f}% of "
              f"{int(drift['drift_common_nodes']):,} nodes changed class" + ("  ALERT" if drift["alert"] else ""))
    else:
        print("  drift: first scoring of this graph, nothing to compare with")


def _start_prefect(args: argparse.Namespace):
    """Start Prefect's embedded API server in the background (unless ``PREFECT_API_URL`` is set), with
    graphpipe's start-up limit; call ``.wait()`` on the result before the first flow call."""
    from flows.startup import EmbeddedServer

    return EmbeddedServer(getattr(args, "server_startup_timeout", None)).begin()


def _checked_inputs(args: argparse.Namespace, command: str):
    """The config, with the input files checked (formats, columns) before Prefect starts."""
    from tasks.ingest.snapshot import check_inputs

    cfg = build_config(args)
    if not cfg.data.edges:
        raise InputError(f"{command} needs at least one --edges FILE (or data.edges in the config file)")
    check_inputs(cfg.data)
    _checked_store(cfg)
    return cfg


def _checked_store(cfg):
    """The config's store, checked to answer (a remote store's bucket and credentials) before
    Prefect starts: one error line instead of a failed run."""
    from storage.store import Store

    store = Store(cfg.store, cache_dir=cfg.cache_dir, cache_max_gb=cfg.cache_max_gb)
    store.check()
    return store


def _checked_snapshot(args: argparse.Namespace):
    """The config, with the graph's current snapshot checked to exist before Prefect starts."""
    cfg = build_config(args)
    store = _checked_store(cfg)
    if store.current_snapshot(cfg.data.name) is None:
        raise InputError(f"no snapshot of graph {cfg.data.name!r} in store {store.uri}: run `graphpipe ingest` first")
    return cfg


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _checked_inputs(args, "run")
    check_tracking_server(cfg)  # before Prefect starts: a down MLflow server is one line, at once
    server = _start_prefect(args)
    from flows.pipeline import graph_pipeline  # imported while the server starts

    server.wait()
    _print_summary(graph_pipeline(cfg))
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    cfg = _checked_inputs(args, "ingest")
    server = _start_prefect(args)
    from flows.pipeline import ingest_flow

    server.wait()
    out = ingest_flow(cfg)
    print(f"snapshot {out['fingerprint']}: {out['snapshot']}")
    print(json.dumps(_manifest_counts(out["snapshot"]), indent=2))
    return 0


def cmd_partition(args: argparse.Namespace) -> int:
    cfg = _checked_snapshot(args)
    server = _start_prefect(args)
    from flows.pipeline import partition_flow

    server.wait()
    out = partition_flow(cfg)
    print(f"partition: {out['partition']}")
    print(json.dumps(_manifest_counts(out["partition"]), indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _checked_snapshot(args)
    check_tracking_server(cfg)
    server = _start_prefect(args)
    from flows.pipeline import train_flow

    server.wait()
    _print_summary(train_flow(cfg))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """Score the current snapshot with the champion (or ``score.model``); report the drift."""
    cfg = _checked_snapshot(args)
    check_tracking_server(cfg)
    server = _start_prefect(args)
    from flows.score import graph_score

    server.wait()
    print(f"graph {cfg.data.name}:")
    _print_scores(graph_score(cfg)["scores"])
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """Search hyper-parameters on the graph (ingesting it first when --edges is given)."""
    if args.trials is not None:
        args.overrides.append(f"tune.trials={args.trials}")
    if args.timeout is not None:
        args.overrides.append(f"tune.timeout={args.timeout}")
    # with input files (flags or config) the tune ingests them first, else it uses the current snapshot
    cfg = _checked_inputs(args, "tune") if build_config(args).data.edges else _checked_snapshot(args)
    check_tracking_server(cfg)
    server = _start_prefect(args)
    from flows.tune import graph_tune  # imported while the server starts

    server.wait()
    out = graph_tune(cfg)
    best, default = out["best"], out["default"]
    print()
    print(f"graph {out['graph']}: {out['trials']} in {out['seconds']:.0f} s")
    print(f"  best    (trial {best['trial']}): val accuracy {best['val_acc']:.4f}   test accuracy {best['test_acc']:.4f}")
    if default["val_acc"] is not None:
        print(f"  default (trial 0): val accuracy {default['val_acc']:.4f}   test accuracy {default['test_acc']:.4f}")
    for key, value in best["params"].items():
        print(f"    {key} = {value:.4g}" if isinstance(value, float) else f"    {key} = {value}")
    print(f"  best config: {out['tuned_config']}")
    print("  use it: --set tune.use_tuned=true (or --config that file); the study resumes with the same command")
    ml = out["mlflow"]
    print(f"MLflow: parent run {ml['run_id']} in {ml['tracking_uri']} ({len(ml['child_runs'])} trial runs under it)")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from tasks.synthetic.generate import config_from_args, generate_graph

    out = generate_graph(config_from_args(args), args.out, progress=args.progress)
    print(out)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Generate a community graph and run every stage on it with the default config."""
    from tasks.synthetic.generate import GeneratorConfig, generate_graph

    from storage.fs import is_uri

    if is_uri(args.store):
        raise InputError(f"demo --store {args.store}: the demo generates its input files in the store's folder, so it "
                         f"needs a local directory; use `graphpipe run --store {args.store}` with your own files")
    server = _start_prefect(args)
    from flows.pipeline import graph_pipeline

    root = Path(args.store).resolve()
    t0 = time.perf_counter()
    gen = generate_graph(GeneratorConfig(num_nodes=args.nodes, seed=args.seed), root / "input")
    print(f"generated {gen.num_nodes} nodes, {gen.num_edges} edges in {time.perf_counter() - t0:.1f} s -> {root / 'input'}")
    cfg = load_config(
        args.config,
        _with_progress(args),
        base={"store": str(root),
              "data": {"name": "demo", "edges": [str(gen.edges_path)], "nodes": str(gen.nodes_path)}},
    )
    server.wait()
    _print_summary(graph_pipeline(cfg))
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Check every output of a graph against its manifest's sizes and checksums; exit 1 on damage."""
    from storage.verify import format_table, verify_graph

    try:
        checks = verify_graph(args.store, args.name, repair=args.repair)
    except FileNotFoundError as e:
        raise InputError(str(e)) from None
    print(format_table(checks))
    damaged = [c for c in checks if c.status == "damaged"]
    print(f"{len(checks)} outputs checked: {len(checks) - len(damaged)} sound, {len(damaged)} damaged")
    return 1 if damaged else 0


def _add_verify(sub: Any) -> None:
    vp = sub.add_parser("verify", help="check a graph's stored outputs against their manifests (sizes, checksums)")
    vp.add_argument("--store", metavar="DIR", default="graphpipe-store", help="graph store directory")
    vp.add_argument("--name", default="graph", help="graph name in the store")
    vp.add_argument("--repair", action="store_true", help="discard damaged outputs so that the next run rebuilds them")
    vp.set_defaults(fn=cmd_verify)


def _manifest_counts(path: str) -> dict[str, Any]:
    from storage.store import read_manifest

    return read_manifest(path).get("counts", {})


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="graphpipe", description="Cluster-GCN training pipeline on Prefect and MLflow")
    sub = p.add_subparsers(dest="command", required=True)
    for name, fn, inputs, help_ in (
        ("run", cmd_run, True, "the whole pipeline: ingest, normalize, partition, train, evaluate, track"),
        ("ingest", cmd_ingest, True, "ingest edge lists and a node table into a snapshot"),
        ("partition", cmd_partition, False, "normalize and partition the current snapshot"),
        ("train", cmd_train, False, "train, evaluate and track on the current snapshot"),
        ("score", cmd_score, False, "score the current snapshot with the champion; drift since the last scoring"),
    ):
        sp = sub.add_parser(name, help=help_)
        _add_common(sp, inputs=inputs)
        sp.set_defaults(fn=fn)
    tp = sub.add_parser("tune", help="search hyper-parameters (Optuna; trials as MLflow child runs), save the best config")
    _add_common(tp, inputs=True)
    tp.add_argument("--trials", type=int, help="trials in the study in all (default: tune.trials, 20); a rerun resumes")
    tp.add_argument("--timeout", type=float, metavar="SECONDS", help="stop starting trials after this long")
    tp.set_defaults(fn=cmd_tune)
    from tasks.synthetic.generate import add_generate_arguments

    gp = sub.add_parser("generate", help="write a synthetic community graph as edge list + node table")
    add_generate_arguments(gp)
    gp.set_defaults(fn=cmd_generate)
    dp = sub.add_parser("demo", help="generate a graph and run the whole pipeline on it")
    dp.add_argument("--nodes", type=int, default=50_000)
    dp.add_argument("--seed", type=int, default=0)
    dp.add_argument("--store", default="graphpipe-demo")
    dp.add_argument("--config", metavar="FILE")
    dp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    dp.add_argument("--progress", action="store_true")
    _add_startup_timeout(dp)
    dp.set_defaults(fn=cmd_demo)
    _add_verify(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if argv is None and args.command in ("run", "ingest", "partition", "train", "score", "demo"):
        from flows.reaper import reap_children_on_exit

        reap_children_on_exit()  # no process this command starts outlives it, even after a SIGKILL
    quiet_errors.install()  # a user's mistake: Prefect logs it without a traceback
    try:
        return args.fn(args)
    except InputError as e:
        print(f"\nerror: {e}", file=sys.stderr, flush=True)
        return 2
    except StartupError as e:
        print(f"\nerror: {e}", file=sys.stderr, flush=True)
        return 3
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
