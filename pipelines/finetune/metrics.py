"""Evaluation metrics of the GLUE tasks: accuracy, F1, Matthews correlation; Pearson and Spearman."""

from __future__ import annotations

import numpy as np

def classification_metrics(predictions: np.ndarray, labels: np.ndarray, num_labels: int) -> dict[str, float]:
    """F1 is the positive class's for two labels and the macro average otherwise."""
    confusion = np.zeros((num_labels, num_labels), dtype=np.float64)
    np.add.at(confusion, (labels, predictions), 1)
    true_positive = np.diag(confusion)
    precision = np.divide(true_positive, confusion.sum(0), out=np.zeros(num_labels), where=confusion.sum(0) > 0)
    recall = np.divide(true_positive, confusion.sum(1), out=np.zeros(num_labels), where=confusion.sum(1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(num_labels), where=precision + recall > 0)
    return {
        "accuracy": float(true_positive.sum() / confusion.sum()),
        "f1": float(f1[1] if num_labels == 2 else f1.mean()),
        "mcc": matthews_correlation(confusion),
    }


def matthews_correlation(confusion: np.ndarray) -> float:
    """The multi-class Matthews correlation (Gorodkin's R_K); equals the usual MCC for two classes."""
    total = confusion.sum()
    correct = np.trace(confusion)
    predicted, actual = confusion.sum(0), confusion.sum(1)
    numerator = correct * total - predicted @ actual
    denominator = np.sqrt(total**2 - predicted @ predicted) * np.sqrt(total**2 - actual @ actual)
    return float(numerator / denominator) if denominator > 0 else 0.0


def regression_metrics(predictions: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    return {
        "pearson": _correlation(predictions, targets),
        "spearman": _correlation(_ranks(predictions), _ranks(targets)),
        "mse": float(np.mean((predictions - targets) ** 2)),
    }


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks with ties given their average rank, as Spearman's coefficient needs."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start: end + 1]] = (start + end) / 2
        start = end + 1
    return ranks
