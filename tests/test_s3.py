"""The store on object storage, against a real S3-compatible server (moto) on 127.0.0.1.

Storage level first (publish, read back, damage, reuse, a killed upload, the local cache with its
verification and LRU eviction, URIs that cannot be served), then the whole pipeline on Cora with
``--store s3://bucket/prefix`` (slow).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pyarrow as pa
import pytest

from storage import fs as sfs
from storage.cache import Cache
from storage.fs import StoreLocationError, parse_store
from storage.store import SnapshotRef, Store


@pytest.fixture
def store(s3_env, tmp_path):
    return Store(f"s3://{s3_env}/stores/one", cache_dir=tmp_path / "cache")


def _bucket_files(store: Store, under: str = "") -> dict[str, int]:
    return sfs.list_sizes(store.location.fs, store.remote_path(*([under] if under else [])), recursive=True) or {}


def _publish(store: Store, key: str = "k1", n: int = 1000, graph: str = "g", kind: str = "features"):
    out = store.output(graph, kind, key)
    x = np.arange(n, dtype=np.float32).reshape(-1, 4)
    with store.publish(out, params={"n": n}, inputs={}) as w:
        w.array("x", x)
        w.json("stats", {"n": n})
        w.table("t", pa.table({"a": list(range(5))}))
        w.counts["rows"] = n // 4
    return out, x


# -- where the store lives ------------------------------------------------------------------------
def test_local_paths_and_file_uris_stay_local(tmp_path):
    assert Store(tmp_path / "s").root == (tmp_path / "s").resolve()
    loc = parse_store((tmp_path / "s").as_uri())
    assert not loc.remote and loc.base == str((tmp_path / "s").resolve())


@pytest.mark.parametrize("uri, expect", [
    ("foo://bucket/x", "not supported"),
    ("s3://", "no bucket"),
    ("s3:///prefix", "no bucket"),
    ("s3://bucket/a/../b", "'..'"),
    ("s3://bucket/x?endpoint_override=evil", "query strings"),
    ("s3://KEY:SECRET@bucket/x", "credentials in the URI are not accepted"),
])
def test_unservable_uris_are_one_line_errors(uri, expect, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreLocationError) as e:
        Store(uri)
    assert expect in str(e.value) and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []  # never a local folder named "s3:" or "foo:"


def test_missing_bucket_is_found_before_work(s3_env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Store(f"s3://{s3_env}/p").check()  # the bucket exists: fine
    with pytest.raises(StoreLocationError, match="bucket 'no-such-bucket-x' does not exist at http://127.0.0.1"):
        Store("s3://no-such-bucket-x/p").check()
    assert not (tmp_path / "s3:").exists()


def test_unreachable_endpoint_is_one_line(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on port 9
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    with pytest.raises(StoreLocationError) as e:
        Store("s3://bucket/p").check()
    assert "cannot reach bucket 'bucket' at http://127.0.0.1:9" in str(e.value)
    assert "\n" not in str(e.value)


# -- publish and read back --------------------------------------------------------------------------
def test_publish_uploads_everything_and_reads_back(store, tmp_path):
    out, x = _publish(store)
    assert out.location == f"{store.uri}/graphs/g/features/k1"
    files = _bucket_files(store, "graphs")
    assert set(files) == {f"g/features/k1/{f}" for f in ("x.npy", "stats.json", "t.parquet", "manifest.json")}
    assert out.exists() and out.reusable()
    assert out.manifest()["counts"] == {"rows": 250}
    assert out.has("x") and out.has("stats", "json") and not out.has("y")
    # publishing adopted the staged files as the cache entry: reading needs no download
    other = Store(store.uri, cache_dir=tmp_path / "cache")
    assert other.open(out.location) == other.output("g", "features", "k1")
    np.testing.assert_array_equal(other.open(out.location).array("x"), x)
    assert str(out.local_dir()).startswith(str(tmp_path / "cache"))
    # nothing was written on the local disk outside the cache
    assert not any(p.name == "s3:" for p in tmp_path.rglob("*"))


def test_second_worker_fills_its_own_cache_from_the_bucket(store, tmp_path):
    out, x = _publish(store)
    worker2 = Store(store.uri, cache_dir=tmp_path / "cache2")
    o2 = worker2.output("g", "features", "k1")
    d = o2.local_dir()
    assert str(d).startswith(str(tmp_path / "cache2"))
    np.testing.assert_array_equal(o2.array("x"), x)
    assert o2.json("stats") == {"n": 1000}
    assert o2.table("t").column("a").to_pylist() == [0, 1, 2, 3, 4]
    # a later run (a new process: forget what this one handed out) reuses the filled entry
    Cache.get(tmp_path / "cache2").forget(o2.location)
    calls = []
    real = sfs.download_file
    try:
        sfs.download_file = lambda *a: calls.append(a) or real(*a)
        assert o2.local_dir() == d
    finally:
        sfs.download_file = real
    assert calls == []


def test_damage_in_the_bucket_is_found_and_rebuilt(store, caplog):
    out, _ = _publish(store)
    sfs.write_bytes(store.location.fs, f"{out.remote_path}/x.npy", b"short")
    assert "x.npy has 5 bytes, the manifest says" in out.damage()
    assert not out.reusable()
    assert out.damage() == "missing"  # discarded: the stage rebuilds it
    _publish(store)
    assert out.exists()


def test_existing_complete_output_is_kept_unless_replaced(store):
    out, _ = _publish(store)
    first = out.manifest()["created_at"], out.manifest()["checksums"]
    _publish(store, n=1000)
    assert (out.manifest()["created_at"], out.manifest()["checksums"]) == first
    with store.publish(out, params={}, inputs={}, replace=True) as w:
        w.array("x", np.zeros(3))
    assert out.manifest()["files"] == ["x.npy"]
    assert set(_bucket_files(store, "graphs")) == {"g/features/k1/x.npy", "g/features/k1/manifest.json"}
    np.testing.assert_array_equal(out.array("x"), np.zeros(3))  # the replaced copy, not the cached old one


def test_upload_killed_midway_is_never_trusted_and_current_stays(store, monkeypatch):
    old, _ = _publish(store, key="old", kind="snapshot")
    store.set_current(SnapshotRef(path=old.location, name="g", fingerprint="old"))
    real = sfs.upload_file
    uploaded = []

    def dying_upload(fs, local, path):
        if len(uploaded) == 2:
            raise ConnectionError("killed mid-upload")
        uploaded.append(path)
        real(fs, local, path)

    monkeypatch.setattr(sfs, "upload_file", dying_upload)
    new = store.output("g", "snapshot", "new")
    with pytest.raises(ConnectionError):
        with store.publish(new, params={}, inputs={}) as w:
            w.array("x", np.ones(10))
            w.array("y", np.ones(10))
            w.json("z", {})
        pytest.fail("not reached")  # the with block re-raises
    monkeypatch.setattr(sfs, "upload_file", real)
    assert len(_bucket_files(store, "graphs/g/snapshots/new")) == 2  # two data files, no manifest
    assert new.damage() == "no manifest.json (incomplete)"
    assert store.current_snapshot("g").fingerprint == "old"
    assert not new.reusable()  # the leftovers are removed; a later run publishes it whole
    assert _bucket_files(store, "graphs/g/snapshots/new") == {}
    assert not list((store.cache.root / "staging").iterdir())  # the local staging copy is gone


def test_current_pointer_and_history_live_in_the_bucket(store, tmp_path):
    a, _ = _publish(store, key="a", kind="snapshot")
    b, _ = _publish(store, key="b", kind="snapshot")
    store.set_current(SnapshotRef(path=a.location, name="g", fingerprint="a"))
    store.set_current(SnapshotRef(path=b.location, name="g", fingerprint="b"))
    other = Store(store.uri, cache_dir=tmp_path / "elsewhere")
    assert other.current_snapshot("g") == SnapshotRef(path=b.location, name="g", fingerprint="b")
    assert [h["fingerprint"] for h in other.history("g")] == ["a", "b"]
    assert json.loads(sfs.read_bytes(store.location.fs, store.remote_path("graphs", "g", "CURRENT.json")))["fingerprint"] == "b"
    b.discard()  # the current snapshot damaged: no current snapshot, not a broken one
    assert other.current_snapshot("g") is None


def test_objects_go_straight_to_the_bucket(store):
    assert store.get_object("g", "checkpoints", "k", "last.pt") is None
    store.put_object("g", "checkpoints", "k", "last.pt", data=b"abc")
    assert store.get_object("g", "checkpoints", "k", "last.pt") == b"abc"
    assert store.object_location("g", "checkpoints", "k", "last.pt") == f"{store.uri}/graphs/g/checkpoints/k/last.pt"
    assert "graphs/g/checkpoints/k/last.pt" in _bucket_files(store, "")
    store.delete_object("g", "checkpoints", "k", "last.pt")
    assert store.get_object("g", "checkpoints", "k", "last.pt") is None
    with pytest.raises(RuntimeError, match="remote store"):
        store.checkpoint_dir("g", "k")  # no silent local path for a remote store


def test_verify_checks_every_byte_in_the_bucket(store, capsys):
    from flows.cli import main
    from storage.verify import verify_graph

    good, _ = _publish(store, key="good")
    bad, _ = _publish(store, key="bad")
    raw = sfs.read_bytes(store.location.fs, f"{bad.remote_path}/x.npy")
    sfs.write_bytes(store.location.fs, f"{bad.remote_path}/x.npy", raw[:-1] + bytes([raw[-1] ^ 1]))  # same size
    checks = {c.fingerprint: c for c in verify_graph(store.uri, "g")}
    assert checks["good"].status == "ok" and checks["bad"].status == "damaged"
    assert "x.npy checksum" in checks["bad"].detail
    assert main(["verify", "--store", store.uri, "--name", "g", "--repair"]) == 1
    assert "removed: the next run rebuilds it" in capsys.readouterr().out
    assert bad.damage() == "missing" and good.exists()


def test_checkpoints_resume_on_another_machine_from_the_bucket(store, tmp_path):
    import torch

    from storage.checkpoints import Checkpoints, find_result

    ckpt = Checkpoints(store, "g", "k1")
    w = torch.arange(6, dtype=torch.float32)
    ckpt.save_last({"epoch": 3, "model": {"w": w}})
    ckpt.save_model({"spec": {"kind": "gcn"}, "state_dict": {"w": w}, "history": [{"epoch": 1}]})
    ckpt.save_result("run1", {"key": "k1"})
    assert ckpt.location == f"{store.uri}/graphs/g/checkpoints/k1"
    # another machine: only the URI in common (its own cache and work directory)
    there = Checkpoints.at(ckpt.location)
    assert there.store.uri == store.uri and (there.graph, there.key) == ("g", "k1")
    there = Checkpoints(Store(store.uri, cache_dir=tmp_path / "gpu-node"), "g", "k1")
    assert there.last()["epoch"] == 3
    torch.testing.assert_close(there.model()["state_dict"]["w"], w)
    assert find_result(there.store, "g", "run1") == {"key": "k1"}
    assert str(there.local_dir()).startswith(str(tmp_path / "gpu-node"))  # scratch is local


# -- the local cache --------------------------------------------------------------------------------
def test_cache_refetches_a_damaged_entry(store, tmp_path):
    out, x = _publish(store)
    worker = Store(store.uri, cache_dir=tmp_path / "c2")
    o = worker.output("g", "features", "k1")
    d = o.local_dir()
    worker.cache.forget(o.location)
    (d / "x.npy").write_bytes((d / "x.npy").read_bytes()[:-4] + b"\0\0\0\0")  # same size, new content
    d2 = o.local_dir()
    assert d2 == d
    np.testing.assert_array_equal(o.array("x"), x)


def test_cache_fill_verifies_checksums_against_the_manifest(store, tmp_path):
    out, _ = _publish(store)
    # same size, different bytes in the bucket: the size check passes, the checksum does not
    raw = sfs.read_bytes(store.location.fs, f"{out.remote_path}/x.npy")
    sfs.write_bytes(store.location.fs, f"{out.remote_path}/x.npy", raw[:-1] + bytes([raw[-1] ^ 1]))
    assert out.damage() is None
    worker = Store(store.uri, cache_dir=tmp_path / "c3")
    from storage.cache import CacheVerifyError

    with pytest.raises(CacheVerifyError, match="damaged in the store: x.npy fetched twice"):
        worker.output("g", "features", "k1").array("x")
    assert not (tmp_path / "c3" / "outputs" / "features").exists()  # nothing half-filled kept
    assert not list((tmp_path / "c3" / "staging").iterdir())
    # one bad transfer, then a good one: the refetch succeeds
    sfs.write_bytes(store.location.fs, f"{out.remote_path}/x.npy", raw)
    real, seen = sfs.download_file, []

    def flaky(fs, path, local):
        real(fs, path, local)
        if path.endswith("x.npy") and not seen:
            seen.append(path)
            with open(local, "r+b") as f:
                f.write(b"\0")

    sfs.download_file = flaky
    try:
        assert worker.output("g", "features", "k1").array("x").shape == (250, 4)
    finally:
        sfs.download_file = real
    assert seen


def test_cache_evicts_least_recently_used_but_never_entries_in_use(s3_env, tmp_path):
    writer = Store(f"s3://{s3_env}/lru", cache_dir=tmp_path / "w")
    outs = [_publish(writer, key=f"k{i}", n=40_000)[0] for i in range(4)]  # ~160 kB each
    size = sum(os.path.getsize(p) for p in outs[0].local_dir().iterdir() if p.is_file())

    reader_cache = tmp_path / "r"
    reader = Store(writer.uri, cache_dir=reader_cache, cache_max_gb=2.5 * size / 1e9)
    d0 = reader.output("g", "features", "k0").local_dir()
    d1 = reader.output("g", "features", "k1").local_dir()
    # a new process: nothing is in use any more
    cache = reader.cache
    for e in list(cache._held):
        cache._release(e)
    cache._memo.clear()
    assert reader.output("g", "features", "k1").local_dir() == d1  # k1 in use again (held)
    os.utime(d1 / ".filled", (1, 1))  # k1 the least recently used, but in use
    os.utime(d0 / ".filled", (2, 2))  # k0 next, not in use
    reader.output("g", "features", "k2").local_dir()
    assert not d0.exists() and d1.exists()  # the least recently used entry not in use went
    # everything is in use now (held by this process): over the bound, nothing is evicted
    d3 = reader.output("g", "features", "k3").local_dir()
    assert d1.exists() and d3.exists()
    assert len(cache.entries()) == 3


# -- the CLI ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("store, expect", [
    ("s3://gp-no-such-bucket/prefix", "bucket 'gp-no-such-bucket' does not exist at http://127.0.0.1"),
    ("ftp2://host/prefix", "not supported"),
])
def test_cli_refuses_a_store_it_cannot_serve_before_work(store, expect, s3_env, tmp_path, monkeypatch, capsys):
    from flows.cli import main

    from tests.conftest import dataset

    monkeypatch.chdir(tmp_path)
    cora = dataset("cora")
    rc = main(["ingest", "--edges", str(cora / "edges.csv"), "--nodes", str(cora / "nodes.parquet"),
               "--store", store, "--name", "cora"])
    err = capsys.readouterr().err
    assert rc == 2 and expect in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1
    assert list(tmp_path.iterdir()) == []  # no ./s3: folder, nothing written


# -- the graph lock across machines -------------------------------------------------------------------
def test_remote_lock_is_a_lease_in_the_bucket(store, tmp_path, monkeypatch):
    import storage.lease as lease
    from storage.locks import LockBusy

    monkeypatch.setattr(lease, "SETTLE_SECONDS", 0.05)
    monkeypatch.setattr(lease, "POLL_SECONDS", 0.05)
    with store.lock("g", timeout=1):
        with store.lock("g", timeout=1):  # re-entrant
            doc = json.loads(store.get_object("g", lease.LEASE))
            assert doc["pid"] == os.getpid() and doc["expires"] > time.time() + 60
        assert store.get_object("g", lease.LEASE) is not None
    assert store.get_object("g", lease.LEASE) is None  # released
    # "another machine": a lease written by someone else blocks until it expires
    other = json.dumps({"holder": "elsewhere:1:x", "host": "elsewhere", "pid": 1, "expires": time.time() + 60})
    store.put_object("g", lease.LEASE, data=other.encode())
    with pytest.raises(LockBusy, match="locked by pid 1 on elsewhere"):
        with store.lock("g", timeout=0.2):
            pass
    expired = json.dumps({"holder": "elsewhere:1:x", "host": "elsewhere", "pid": 1, "expires": 1})
    store.put_object("g", lease.LEASE, data=expired.encode())
    with store.lock("g", timeout=1):  # an expired lease (its holder died) is taken over
        assert json.loads(store.get_object("g", lease.LEASE))["pid"] == os.getpid()


# -- MLflow artifacts in the bucket (deployments/stack.py --artifacts-destination) -------------------
@pytest.mark.slow
def test_mlflow_server_keeps_artifacts_in_the_bucket(s3_env, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    from deployments.stack import LocalStack, free_port

    stack = LocalStack(tmp_path / "stack", prefect_port=0, mlflow_port=free_port(),
                       artifacts_destination=f"s3://{s3_env}/mlflow")
    try:
        stack.start_servers(("mlflow",))
        client = MlflowClient(tracking_uri=stack.mlflow_uri)
        exp = client.create_experiment("s3-artifacts")
        run = client.create_run(exp)
        (tmp_path / "report.txt").write_text("in the bucket")
        client.log_artifact(run.info.run_id, str(tmp_path / "report.txt"))  # proxied by the server
        local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="report.txt",
                                                    tracking_uri=stack.mlflow_uri, dst_path=str(tmp_path / "dl"))
        assert open(local).read() == "in the bucket"
    finally:
        stack.stop()
    store = Store(f"s3://{s3_env}/mlflow")
    files = sfs.list_sizes(store.location.fs, store.location.base, recursive=True)
    assert any(name.endswith("/artifacts/report.txt") for name in files), files


# -- the whole pipeline on the bucket ---------------------------------------------------------------
@pytest.mark.slow
def test_cora_pipeline_on_s3_reuses_from_the_bucket(prefect_harness, s3_env, tmp_path, monkeypatch):
    import storage.outputs as outputs_mod
    from flows.pipeline import graph_pipeline
    from tasks.config import DataConfig, PipelineConfig, TrackConfig
    from tests.conftest import dataset

    monkeypatch.chdir(tmp_path)
    cora = dataset("cora")
    uri = f"s3://{s3_env}/stores/nightly"

    def config(cache: str) -> PipelineConfig:
        return PipelineConfig(store=uri, cache_dir=str(tmp_path / cache),
                              data=DataConfig(name="cora", edges=[str(cora / "edges.csv")],
                                              nodes=str(cora / "nodes.parquet")),
                              track=TrackConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))

    published: list[str] = []
    real_publish = outputs_mod.publish

    def counting_publish(output, **kw):
        published.append(output.kind)
        return real_publish(output, **kw)

    monkeypatch.setattr(outputs_mod, "publish", counting_publish)

    first = graph_pipeline(config("cache-a"))
    assert first["metrics"]["test_acc"] >= 0.79, first["metrics"]
    assert {"snapshot", "features", "partition", "node_data", "evaluation"} <= set(published)
    assert first["snapshot"].startswith(uri + "/graphs/cora/snapshots/")
    assert first["predictions"].startswith(uri + "/graphs/cora/evaluation/")
    files = sfs.list_sizes(Store(uri).location.fs, f"{s3_env}/stores/nightly/graphs/cora", recursive=True)
    folders = {name.split("/")[0] for name in files}
    assert {"snapshots", "features", "partitions", "node_data", "evaluation", "checkpoints",
            "CURRENT.json", "history.jsonl"} <= folders, folders
    assert first["predictions"].split("/graphs/cora/")[1] in files
    assert not (tmp_path / "s3:").exists()

    # a second run with the same cache: every stage output is reused from the bucket
    published.clear()
    second = graph_pipeline(config("cache-a"))
    assert not {"snapshot", "features", "partition", "node_data"} & set(published), published
    assert second["snapshot"] == first["snapshot"] and second["partition"] == first["partition"]

    # another worker (a fresh cache directory): fills its cache from the bucket instead of recomputing
    published.clear()
    third = graph_pipeline(config("cache-b"))
    assert not {"snapshot", "features", "partition", "node_data"} & set(published), published
    assert third["partition"] == first["partition"]
    filled = {p.parent.parent.name for p in (tmp_path / "cache-b" / "outputs").glob("*/*/.filled")}
    assert {"features", "partition", "node_data"} <= filled, filled
    assert third["metrics"]["test_acc"] >= 0.79


# -- the deployment with workers that share only the bucket ---------------------------------------
@pytest.mark.slow
def test_deployment_workers_share_only_the_bucket(s3_env, tmp_path):
    """The nightly deployment end to end (Prefect and MLflow servers, a `cpu` and a `gpu` process
    worker in separate directories with separate caches); the store is the bucket, the only thing
    the two workers share besides the Prefect and MLflow APIs."""
    from deployments.stack import LocalStack, free_port
    from tests.conftest import dataset

    stack = LocalStack(tmp_path / "stack", free_port(), free_port())
    uri = f"s3://{s3_env}/nightly"
    d = dataset("cora")
    try:
        stack.start_servers()
        stack.create_pools()
        stack.deploy()
        stack.start_workers()
        config = {"store": uri, "data": {"name": "cora", "edges": [str(d / "edges.csv")], "nodes": str(d / "nodes.parquet")},
                  "track": {"experiment": "e2e-s3"}}
        flow_run_id = stack.run_deployment("graph-pipeline/nightly", config=config, overrides={"train.epochs": 10})
        run = stack.wait_flow_run(flow_run_id, 1200)
    finally:
        stack.stop()
    assert run["state_type"] == "COMPLETED", run["state"]
    store = Store(uri)
    files = sfs.list_sizes(store.location.fs, store.remote_path("graphs", "cora"), recursive=True)
    assert any(f.startswith("checkpoints/") and f.endswith("/model.pt") for f in files)  # written by the gpu worker
    assert any(f.startswith("evaluation/") and f.endswith("/manifest.json") for f in files)  # by the cpu worker
    # each worker read what it needed from the bucket into its own cache
    for pool in ("cpu", "gpu"):
        cache = stack.root / f"worker-{pool}" / "cache" / "outputs"
        kinds = {p.parent.parent.name for p in cache.glob("*/*/.filled")}
        assert {"partition", "node_data"} <= kinds, (pool, kinds)
