"""Tests of tftune.metrics against values computed by hand."""

import json

import pytest

from tftune.metrics import classification_metrics

LABELS = ["negative", "neutral", "positive"]
# Confusion matrix, rows = true class, columns = predicted class:
#               neg neu pos
#   negative  [  2,  1,  1 ]
#   neutral   [  1,  1,  0 ]
#   positive  [  0,  1,  3 ]
TRUE = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
PREDICTED = [0, 0, 1, 2, 1, 0, 2, 2, 2, 1]


@pytest.fixture
def metrics():
    return classification_metrics(TRUE, PREDICTED, LABELS)


def test_accuracy_and_count(metrics):
    assert metrics["accuracy"] == pytest.approx(6 / 10)
    assert metrics["examples"] == 10


def test_confusion_matrix_rows_are_true_classes(metrics):
    assert metrics["confusion_matrix"] == [[2, 1, 1], [1, 1, 0], [0, 1, 3]]


def test_per_class_precision_recall_f1_support(metrics):
    expected = {
        # precision = hits / column sum, recall = hits / row sum
        "negative": (2 / 3, 2 / 4, 4 / 7, 4),
        "neutral": (1 / 3, 1 / 2, 2 / 5, 2),
        "positive": (3 / 4, 3 / 4, 3 / 4, 4),
    }
    assert list(metrics["per_class"]) == LABELS
    for label, (precision, recall, f1, support) in expected.items():
        scores = metrics["per_class"][label]
        assert scores["precision"] == pytest.approx(precision)
        assert scores["recall"] == pytest.approx(recall)
        assert scores["f1"] == pytest.approx(f1)
        assert scores["support"] == support


def test_macro_f1_is_the_unweighted_mean_of_class_f1(metrics):
    assert metrics["macro_f1"] == pytest.approx((4 / 7 + 2 / 5 + 3 / 4) / 3)


def test_orientation_with_one_sided_errors():
    # Everything true "a" is predicted "b": the count sits in row a, column b.
    metrics = classification_metrics([0, 0, 0], [1, 1, 1], ["a", "b"])
    assert metrics["confusion_matrix"] == [[0, 3], [0, 0]]
    assert metrics["per_class"]["a"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 3}
    # "b" is predicted three times, never right, and never true: zero, not NaN.
    assert metrics["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert metrics["accuracy"] == 0.0 and metrics["macro_f1"] == 0.0


def test_perfect_predictions():
    metrics = classification_metrics([1, 0, 2, 1], [1, 0, 2, 1], LABELS)
    assert metrics["accuracy"] == metrics["macro_f1"] == 1.0
    assert metrics["confusion_matrix"] == [[1, 0, 0], [0, 2, 0], [0, 0, 1]]


def test_result_is_plain_json(metrics):
    assert json.loads(json.dumps(metrics)) == metrics
    assert type(metrics["per_class"]["negative"]["support"]) is int
