"""tasks.evaluate.metrics on tiny cases computed by hand."""

import math

import numpy as np
import pytest

from storage.snapshot import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL
from tasks.evaluate.metrics import accuracy, confusion_matrix, macro_f1, split_metrics

# 5 nodes, 3 classes:            node: 0  1  2  3  4
Y_TRUE = np.array([0, 0, 1, 1, 2])  # true
Y_PRED = np.array([0, 1, 1, 1, 0])  # predicted


def test_confusion_matrix_by_hand():
    # true 0 -> predicted 0 (node 0) and 1 (node 1); true 1 -> 1 twice (nodes 2, 3); true 2 -> 0 (node 4)
    expected = [[1, 1, 0],
                [0, 2, 0],
                [1, 0, 0]]
    np.testing.assert_array_equal(confusion_matrix(Y_TRUE, Y_PRED, 3), expected)
    # a 4th class nobody has: an empty row and column
    assert confusion_matrix(Y_TRUE, Y_PRED, 4).tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]


def test_accuracy_by_hand():
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(3 / 5)  # nodes 0, 2, 3 right
    assert math.isnan(accuracy(np.array([], dtype=int), np.array([], dtype=int)))


def test_macro_f1_by_hand():
    # F1 = 2 tp / (support + predicted):
    #   class 0: tp 1, support 2 (nodes 0, 1), predicted 2 (nodes 0, 4) -> 2/4 = 0.5
    #   class 1: tp 2, support 2, predicted 3 (nodes 1, 2, 3)           -> 4/5 = 0.8
    #   class 2: tp 0, support 1, predicted 0                           -> 0
    # macro = (0.5 + 0.8 + 0) / 3
    assert macro_f1(Y_TRUE, Y_PRED, 3) == pytest.approx(1.3 / 3)
    # a class neither true nor predicted does not count (scikit-learn with labels = present classes)
    assert macro_f1(Y_TRUE, Y_PRED, 5) == pytest.approx(1.3 / 3)
    # all right: 1
    assert macro_f1(Y_TRUE, Y_TRUE, 3) == pytest.approx(1.0)
    # true [0, 0], predicted [0, 1]: class 0: 2*1/(2+1) = 2/3, class 1: 0/(0+1) = 0 -> 1/3
    assert macro_f1(np.array([0, 0]), np.array([0, 1]), 2) == pytest.approx(1 / 3)
    assert math.isnan(macro_f1(np.array([], dtype=int), np.array([], dtype=int), 3))


def test_split_metrics_skip_unlabeled_nodes():
    # train: nodes 0-2, val: 3-4, test: 5-6; node 2 and node 6 unlabeled (-1) never count
    y = np.array([0, 1, -1, 1, 0, 2, -1])
    pred = np.array([0, 0, 1, 1, 1, 2, 0])
    split = np.array([SPLIT_TRAIN] * 3 + [SPLIT_VAL] * 2 + [SPLIT_TEST] * 2)
    m = split_metrics(pred, y, split, 3)
    assert m.acc == pytest.approx({"train": 1 / 2, "val": 1 / 2, "test": 1.0})
    # train: true [0, 1] pred [0, 0]: class 0: 2*1/(1+2) = 2/3, class 1: 0 -> 1/3
    assert m.macro_f1["train"] == pytest.approx(1 / 3)
    assert m.flat()["test_macro_f1"] == pytest.approx(1.0)
    assert set(m.flat()) == {"train_acc", "val_acc", "test_acc", "train_macro_f1", "val_macro_f1", "test_macro_f1"}
