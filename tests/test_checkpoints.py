"""storage/checkpoints.py: a training run's checkpoint set, read and written by role through the store."""

from __future__ import annotations

import io

import pytest
import torch

from storage.checkpoints import Checkpoints, find_result, graph_of
from storage.store import Store
from tasks.errors import InputError, UnsafeFileError


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_roles_round_trip_through_the_store(tmp_path):
    store = Store(tmp_path / "store")
    ckpt = Checkpoints(store, "g", "k1")
    assert ckpt.last() is None and ckpt.model() is None and ckpt.history() == []
    w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    ckpt.save_last({"epoch": 3, "model": {"w": w}, "complete": False})
    ckpt.save_model({"spec": {"kind": "gcn"}, "state_dict": {"w": w}, "history": [{"epoch": 1, "loss": 0.5}]})
    assert ckpt.last()["epoch"] == 3
    torch.testing.assert_close(ckpt.model()["state_dict"]["w"], w)
    assert ckpt.history() == [{"epoch": 1, "loss": 0.5}]
    ckpt.save_last({"epoch": 4, "model": {"w": w}, "complete": True})  # replaced, not appended
    assert ckpt.last()["epoch"] == 4
    found = Checkpoints.at(ckpt.location)  # a recorded location finds the same set
    assert (found.store.root, found.graph, found.key) == (store.root, "g", "k1")
    assert torch.load(ckpt.model_location(), weights_only=True)["spec"] == {"kind": "gcn"}


def test_a_pickled_object_is_refused_and_never_run(tmp_path, capsys):
    store = Store(tmp_path / "store")
    ckpt = Checkpoints(store, "g", "k1")
    buf = io.BytesIO()
    torch.save({"epoch": 1, "x": _Evil()}, buf)
    store.put_object("g", "checkpoints", "k1", "last.pt", data=buf.getvalue())
    with pytest.raises(UnsafeFileError, match="last.pt: refused to load this checkpoint"):
        ckpt.last()
    assert "pwned" not in capsys.readouterr().out


def test_the_parent_finds_the_hand_off_by_run_id_alone(tmp_path):
    store = Store(tmp_path / "store")
    assert find_result(store, "g", "run1") is None
    Checkpoints(store, "g", "other").save_result("run0", {"key": "other"})
    Checkpoints(store, "g", "k2").save_result("run1", {"key": "k2", "best_epoch": 7})
    assert find_result(store, "g", "run1") == {"key": "k2", "best_epoch": 7}
    assert find_result(store, "g", "run2") is None
    with pytest.raises(ValueError, match="not a valid run id"):
        Checkpoints(store, "g", "k2").save_result("../x", {})


def test_the_lock_stops_a_second_training_of_the_same_set(tmp_path):
    import subprocess
    import sys

    store = Store(tmp_path / "store")
    ckpt = Checkpoints(store, "g", "k")
    with ckpt.lock(timeout=1):
        code = ("import sys; from storage.checkpoints import Checkpoints; from storage.store import Store\n"
                "c = Checkpoints(Store(sys.argv[1]), 'g', 'k')\n"
                "try:\n    c.lock(timeout=0.5).__enter__()\nexcept Exception as e:\n    print(type(e).__name__, e)")
        out = subprocess.run([sys.executable, "-c", code, str(store.root)], capture_output=True, text=True,
                             cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert "is locked by pid" in out.stdout, out.stdout + out.stderr
    assert issubclass(UnsafeFileError, InputError)


def test_graph_of_a_node_data_location():
    assert graph_of("/s/graphs/cora/node_data/abc") == "cora"
    with pytest.raises(ValueError):
        graph_of("/s/graphs/cora/features/abc")
