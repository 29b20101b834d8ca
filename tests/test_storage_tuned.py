"""storage.tuned: the tuned directory's files are storage's, tasks reach them by function."""

import yaml

from storage.store import Store
from storage.tuned import open_tuned, read_tuned_config, read_tuned_scores, tuned_files, write_tuned


def test_write_then_read_the_tuned_config_and_scores(tmp_path):
    store = Store(tmp_path)
    assert read_tuned_config(store, "g") is None and read_tuned_scores(store, "g") is None
    assert not store.tuned_dir("g").exists()  # asking creates nothing
    files = write_tuned(store, "g", {"train": {"lr": 0.01, "hidden": 128}, "normalize": {"method": "row"}},
                        {"val_acc": 0.9, "trial": 3}, header="# best of 5\n")
    assert files == tuned_files(store, "g")
    assert {files.config.parent, files.scores.parent, files.study.parent} == {store.tuned_dir("g")}
    assert files.config.read_text().startswith("# best of 5\n")
    assert list(yaml.safe_load(files.config.read_text())) == ["train", "normalize"]  # order kept
    assert read_tuned_config(store, "g") == {"train": {"lr": 0.01, "hidden": 128}, "normalize": {"method": "row"}}
    assert read_tuned_scores(store, "g") == {"val_acc": 0.9, "trial": 3}
    # a second tune replaces both; no temporary file is left behind
    write_tuned(store, "g", {"train": {"lr": 0.02}}, {"val_acc": 0.95})
    assert read_tuned_config(store, "g") == {"train": {"lr": 0.02}}
    assert read_tuned_scores(store, "g")["val_acc"] == 0.95
    assert sorted(p.name for p in store.tuned_dir("g").iterdir()) == sorted([files.config.name, files.scores.name])
    assert read_tuned_config(store, "other") is None


def test_open_tuned_makes_the_directory_for_the_study(tmp_path):
    files = open_tuned(Store(tmp_path), "g")
    assert files.study.parent.is_dir() and not files.study.exists()
    assert files.study_url == f"sqlite:///{files.study}"
