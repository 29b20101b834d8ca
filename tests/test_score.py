"""Scoring (tasks/score/score.py, storage/scores.py) and the drift report (flows/score.py) on a
small generated graph: the output's schema, the "latest" pointer, drift against the previous
scoring, the MLflow alert tag."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from storage.checkpoints import Checkpoints
from storage.scores import latest, read_scores, set_latest
from storage.store import Store
from tasks.config import ScoreConfig, load_config
from tasks.errors import InputError
from tasks.score.score import drift_since_latest, score_nodes
from tests.helpers import prepared_generated, train


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    """A generated graph prepared in a store and two models trained on it (different seeds and
    lengths, so their predictions differ on some nodes)."""
    root = tmp_path_factory.mktemp("score")
    cfg, prepared = prepared_generated(root, ["train.epochs=6", "train.hidden=16", "partition.num_parts=6",
                                              "train.prefetch=0"],
                                       num_nodes=900, num_classes=4, num_features=16, seed=5)
    a = train(prepared.node_data, cfg)
    cfg_b = load_config(None, ["train.epochs=2", "train.seed=7"], base=cfg.model_dump(mode="json"))
    b = train(prepared.node_data, cfg_b)
    return cfg, prepared, a, b


def _score(cfg, prepared, trained, **score):
    return score_nodes(prepared.node_data, prepared.snapshot, ScoreConfig(**score), Store(cfg.store),
                       weights=trained.checkpoint_dir, model_label=f"test {trained.key}")


def test_scores_schema_one_row_per_node_in_the_users_ids(graph):
    cfg, prepared, a, _ = graph
    ref = _score(cfg, prepared, a, top_k=3, embeddings=True)
    table = read_scores(Store(cfg.store).open(ref.path))
    nodes = pq.read_table(cfg.data.nodes, columns=["node_id"]).column(0)
    assert table.num_rows == ref.num_nodes == len(nodes) == 900
    assert table.column("node_id").to_pylist() == nodes.to_pylist()  # ids as given, in the snapshot's order
    assert table.schema.field("prediction").type == pa.int32()
    assert table.schema.field("confidence").type == pa.float32()
    assert table.schema.field("top_k_classes").type == pa.list_(pa.int32())
    assert table.schema.field("top_k_probs").type == pa.list_(pa.float32())
    classes = np.array(table.column("top_k_classes").to_pylist())
    probs = np.array(table.column("top_k_probs").to_pylist())
    assert classes.shape == probs.shape == (900, 3)
    assert (np.diff(probs, axis=1) <= 0).all()  # most probable first
    assert (probs.sum(axis=1) <= 1 + 1e-5).all() and (probs > 0).all()
    assert (classes[:, 0] == table.column("prediction").to_numpy()).all()
    assert np.allclose(probs[:, 0], table.column("confidence").to_numpy())
    assert all(len(set(row)) == 3 for row in classes)  # three distinct classes
    emb = table.column("embedding")
    assert emb.type == pa.list_(pa.float32(), 16)  # the last layer's input: hidden width
    assert np.isfinite(np.array(emb.to_pylist())).all()
    assert ref.edges > 0


def test_scores_agree_with_the_evaluation_inference_and_are_reused(graph):
    """The champion's weights file (as downloaded from MLflow) and its checkpoint set score alike,
    and match the evaluate stage's predictions; scoring again is a cache hit."""
    from tasks.evaluate.evaluate import evaluate_model
    from storage.evaluation import read_predictions

    cfg, prepared, a, _ = graph
    store = Store(cfg.store)
    ev = evaluate_model(a, prepared.node_data, prepared.snapshot, store, embedding_nodes=50)
    expected = read_predictions(store.open(ev.path), ["node_id", "prediction"])
    by_dir = _score(cfg, prepared, a)
    weights = store.local_object_dir(cfg.data.name, "test_weights") / "model"
    weights.write_bytes(Checkpoints.at(a.checkpoint_dir).model_bytes())
    by_file = score_nodes(prepared.node_data, prepared.snapshot, ScoreConfig(), store, weights=str(weights),
                          model_label="file")
    for ref in (by_dir, by_file):
        got = read_scores(store.open(ref.path), ["node_id", "prediction"])
        assert got.equals(expected)
    assert "embedding" not in read_scores(store.open(by_dir.path)).column_names
    again = _score(cfg, prepared, a)
    assert again.reused and again.path == by_dir.path


def test_latest_pointer_moves_and_drift_is_against_the_previous_scoring(graph):
    cfg, prepared, a, b = graph
    store = Store(cfg.store)
    graph_name = cfg.data.name
    ra = _score(cfg, prepared, a, top_k=2)
    rb = _score(cfg, prepared, b, top_k=2)
    assert ra.key != rb.key
    store.delete_object(graph_name, "SCORES_LATEST.json")
    assert latest(store, graph_name) is None
    assert drift_since_latest(ra, store) == (None, None)  # the first scoring has nothing to compare with
    set_latest(store, ra)
    assert latest(store, graph_name) == ra
    drift, previous = drift_since_latest(rb, store)
    assert previous == ra
    pa_ = read_scores(store.open(ra.path), ["prediction"]).column(0).to_numpy()
    pb = read_scores(store.open(rb.path), ["prediction"]).column(0).to_numpy()
    changed = int((pa_ != pb).sum())
    assert changed > 0, "the two models should disagree somewhere"
    assert drift.changed == changed and drift.common_nodes == 900
    assert drift.changed_share == pytest.approx(changed / 900)
    assert drift.new_nodes == drift.removed_nodes == 0 and drift.edges_added == 0
    set_latest(store, rb)
    assert latest(store, graph_name) == rb
    same, _ = drift_since_latest(rb, store)
    assert same.changed == 0 and same.js_divergence == 0.0


def test_a_model_of_another_feature_width_is_a_clear_error(graph, tmp_path):
    import torch

    from tasks.train.model import GNN, ModelSpec, plain_checkpoint

    cfg, prepared, a, _ = graph
    spec = ModelSpec(kind="gcn", in_dim=5, hidden=8, out_dim=4, num_layers=2, dropout=0.0)
    path = tmp_path / "other"
    torch.save(plain_checkpoint({"spec": spec.__dict__, "state_dict": GNN(spec).state_dict()}), path)
    with pytest.raises(InputError, match="expects 5 input features.*has 16"):
        score_nodes(prepared.node_data, prepared.snapshot, ScoreConfig(), Store(cfg.store), weights=str(path),
                    model_label="other")


def test_drift_report_logs_metrics_and_the_alert_tag(graph, prefect_harness, tmp_path):
    from mlflow.tracking import MlflowClient
    from prefect import flow

    from flows.score import report_drift
    from tasks.track.tracking import RunRef

    cfg, prepared, a, b = graph
    store = Store(cfg.store)
    ra, rb = _score(cfg, prepared, a, top_k=1), _score(cfg, prepared, b, top_k=1)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("drift", artifact_location=str(tmp_path / "artifacts"))
    runs = [client.create_run(exp) for _ in range(3)]
    refs = [RunRef(uri, exp, r.info.run_id) for r in runs]

    @flow
    def night(ref, threshold, run):
        return report_drift(ref, ScoreConfig(drift_alert=threshold), store, run)

    set_latest(store, ra)
    out = night(rb, 0.0, refs[0])  # any change exceeds 0: alert
    data = client.get_run(refs[0].run_id).data
    assert out["alert"] is True and data.tags["graphpipe.drift_alert"] == "true"
    assert data.metrics["drift_changed_share"] == pytest.approx(out["drift_changed_share"]) and out["drift_changed"] > 0
    assert latest(store, cfg.data.name) == rb  # the pointer moved after the report
    out = night(ra, 1.0, refs[1])  # against rb now; nothing exceeds 100 %
    data = client.get_run(refs[1].run_id).data
    assert out["alert"] is False and data.tags["graphpipe.drift_alert"] == "false"
    assert data.metrics["drift_changed"] == out["drift_changed"]
    store.delete_object(cfg.data.name, "SCORES_LATEST.json")
    out = night(ra, 0.0, refs[2])  # first scoring: nothing to compare, no alert
    assert out == {"alert": False}
    assert "drift_changed" not in client.get_run(refs[2].run_id).data.metrics


def test_score_flow_scores_the_current_snapshot_without_training(graph, prefect_harness):
    """``graph-score`` (what ``graphpipe score`` runs) reuses the cached data stages and scores with
    ``score.model`` (a checkpoint here; the champion by default), then moves the pointer."""
    from flows.score import graph_score

    cfg, prepared, a, _ = graph
    store = Store(cfg.store)
    store.delete_object(cfg.data.name, "SCORES_LATEST.json")
    out = graph_score(cfg, overrides={"score.model": a.checkpoint_dir, "score.top_k": 4})["scores"]
    assert out["drift"] == {"alert": False}  # first scoring
    table = pq.read_table(out["path"])
    assert table.num_rows == 900 and pc.all(pc.equal(pc.list_value_length(table["top_k_classes"]), 4)).as_py()
    assert latest(store, cfg.data.name).path in out["path"]
    again = graph_score(cfg, overrides={"score.model": a.checkpoint_dir, "score.top_k": 4})["scores"]
    assert again["reused"] and again["drift"]["drift_changed"] == 0


def test_score_config_takes_a_version_number_as_text():
    assert load_config(None, ["score.model=3"]).score.model == "3"
    assert load_config(None, []).score.model is None
    with pytest.raises(InputError):
        load_config(None, ["score.top_k=0"])


def _count_inference_passes(monkeypatch) -> list[str]:
    """Wrap the full-graph inference iterator where evaluation and scoring call it: the returned
    list gets one entry per pass (the calling stage)."""
    import tasks.evaluate.evaluate as evaluate_mod
    import tasks.score.score as score_mod

    passes: list[str] = []
    for mod, name in ((evaluate_mod, "evaluate"), (score_mod, "score")):
        def counted(*args, _orig=mod.iter_full_graph_ranks, _name=name, **kwargs):
            passes.append(_name)
            return _orig(*args, **kwargs)

        monkeypatch.setattr(mod, "iter_full_graph_ranks", counted)
    return passes


@pytest.mark.parametrize("top_k,embeddings", [(2, True), (4, False)])
def test_the_evaluation_pass_writes_the_scores_a_scoring_pass_of_the_same_weights_would(graph, monkeypatch,
                                                                                       top_k, embeddings):
    """With the score section, the evaluate stage publishes the ``scores`` output from its own
    inference: the same key as scoring the champion's weights file (the same bytes), and the
    same table (ids, class, confidence, top-k, embeddings) as a separate scoring pass."""
    from tasks.evaluate.evaluate import evaluate_model, evaluation_key
    from tasks.score.score import load_scoring_model, scores_key

    cfg, prepared, a, _ = graph
    store = Store(cfg.store)
    config = ScoreConfig(top_k=top_k, embeddings=embeddings)
    weights = store.local_object_dir(cfg.data.name, "champion_copy") / "model"  # as downloaded from MLflow
    weights.write_bytes(Checkpoints.at(a.checkpoint_dir).model_bytes())
    key = scores_key(load_scoring_model(str(weights))[1], prepared.node_data, config)
    assert key == scores_key(load_scoring_model(a.checkpoint_dir)[1], prepared.node_data, config)
    store.output(cfg.data.name, "scores", key).discard()
    store.output(cfg.data.name, "evaluation", evaluation_key(a, prepared.node_data, 0, 40)).discard()
    passes = _count_inference_passes(monkeypatch)

    ev = evaluate_model(a, prepared.node_data, prepared.snapshot, store, embedding_nodes=40, scores=config)
    assert not ev.reused and passes == ["evaluate"]
    scored = score_nodes(prepared.node_data, prepared.snapshot, config, store, weights=str(weights), model_label="champion")
    assert scored.reused and scored.key == key and passes == ["evaluate"]  # found, no second pass
    from_evaluation = read_scores(store.open(scored.path))

    store.output(cfg.data.name, "scores", key).discard()
    separate = score_nodes(prepared.node_data, prepared.snapshot, config, store, weights=str(weights),
                           model_label="champion")
    assert not separate.reused and passes == ["evaluate", "score"]
    from_scoring = read_scores(store.open(separate.path))
    assert from_evaluation.column_names == from_scoring.column_names
    assert ("embedding" in from_scoring.column_names) == embeddings
    assert from_evaluation.equals(from_scoring)  # bit for bit, every column
    from storage.evaluation import read_predictions

    predicted = read_predictions(store.open(ev.path), ["node_id", "prediction"])
    assert from_scoring.select(["node_id", "prediction"]).equals(predicted)


def test_an_evaluation_without_the_score_section_writes_no_scores(graph, monkeypatch):
    from tasks.evaluate.evaluate import evaluate_model, evaluation_key
    from tasks.score.score import load_scoring_model, scores_key

    cfg, prepared, _, b = graph
    store = Store(cfg.store)
    key = scores_key(load_scoring_model(b.checkpoint_dir)[1], prepared.node_data, ScoreConfig(top_k=1))
    store.output(cfg.data.name, "scores", key).discard()
    store.output(cfg.data.name, "evaluation", evaluation_key(b, prepared.node_data, 0, 30)).discard()
    evaluate_model(b, prepared.node_data, prepared.snapshot, store, embedding_nodes=30)
    assert not store.output(cfg.data.name, "scores", key).exists()


def test_a_promoted_run_scores_from_its_evaluation_pass_a_kept_champion_scores_itself(prefect_harness, tmp_path,
                                                                                      monkeypatch):
    """The pipeline end to end (Prefect, MLflow, PyG): the night whose model becomes the champion
    runs one full-graph inference (the evaluation's; scoring is a cache hit); a night whose model
    is not promoted scores with the champion, by its own pass."""
    from mlflow.tracking import MlflowClient

    from flows.pipeline import graph_pipeline
    from tasks.synthetic.generate import GeneratorConfig, generate_graph

    gen = generate_graph(GeneratorConfig(num_nodes=600, num_classes=4, num_features=16, seed=11), tmp_path / "input")
    base = {"store": str(tmp_path / "store"),
            "data": {"name": "g", "edges": [str(gen.edges_path)], "nodes": str(gen.nodes_path)}}
    night = ["train.epochs=3", "train.hidden=16", "train.prefetch=0", "partition.num_parts=4",
             "baseline.enabled=false", "track.embedding_plot_nodes=50"]
    passes = _count_inference_passes(monkeypatch)

    first = graph_pipeline(load_config(None, night, base=base))
    assert first["mlflow"]["champion"] and passes == ["evaluate"]
    assert first["scores"]["reused"] and first["mlflow"]["run_id"] in first["scores"]["model"]
    store = Store(str(tmp_path / "store"))
    scored = read_scores(store.open(latest(store, "g").path))
    assert scored.select(["node_id", "prediction"]).equals(pq.read_table(first["predictions"],
                                                                         columns=["node_id", "prediction"]))

    client = MlflowClient(first["mlflow"]["tracking_uri"])  # make the champion unbeatable
    client.set_model_version_tag(first["mlflow"]["model"], first["mlflow"]["model_version"], "graphpipe.val_acc", "2.0")
    passes.clear()
    second = graph_pipeline(load_config(None, night + ["train.seed=9", "score.top_k=2"], base=base))
    assert not second["mlflow"]["champion"]
    assert passes == ["evaluate", "score"]  # the champion is another model: its own pass
    assert not second["scores"]["reused"] and first["mlflow"]["run_id"] in second["scores"]["model"]
    by_champion = read_scores(store.open(latest(store, "g").path), ["node_id", "prediction"])
    assert by_champion.equals(scored.select(["node_id", "prediction"]))


def test_scores_are_keyed_by_the_weights_not_by_the_record_that_holds_them(graph):
    """A warm-started run that kept the champion's weights (nothing beat them) writes a record with
    another history: it scores under the champion's key, so tonight's evaluation pass serves the
    champion's scoring. Other weights get another key."""
    import io

    import torch

    from tasks.score.score import weights_digest

    cfg, prepared, a, b = graph
    record = Checkpoints.at(a.checkpoint_dir).model_bytes()
    saved = torch.load(io.BytesIO(record), weights_only=True)
    kept = {**saved, "history": [{"epoch": 0, "val_acc": 0.5}], "best_epoch": 0}
    buf = io.BytesIO()
    torch.save(kept, buf)
    assert buf.getvalue() != record
    assert weights_digest(buf.getvalue()) == weights_digest(record) == weights_digest(saved)
    assert weights_digest(Checkpoints.at(b.checkpoint_dir).model_bytes()) != weights_digest(record)
    nudged = {**saved, "state_dict": {k: v.clone() for k, v in saved["state_dict"].items()}}
    first = next(iter(nudged["state_dict"]))
    nudged["state_dict"][first].view(-1)[0] += 1e-3
    assert weights_digest(nudged) != weights_digest(saved)
