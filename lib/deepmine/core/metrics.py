"""Scores for trained models: clustering against known groups, classification against labels."""
from __future__ import annotations

import numpy as np


def cluster_accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    """The share of rows whose cluster maps to their label under the best one-to-one mapping of
    clusters to labels (Hungarian algorithm on the contingency table)."""
    from scipy.optimize import linear_sum_assignment
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    if len(labels) == 0:
        return 0.0
    _, li = np.unique(labels, return_inverse=True)
    _, ci = np.unique(clusters, return_inverse=True)
    table = np.zeros((ci.max() + 1, li.max() + 1), dtype=np.int64)
    np.add.at(table, (ci, li), 1)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / len(labels))


def clustering_scores(labels, clusters) -> dict[str, float]:
    """cluster_acc (Hungarian-matched), nmi and ari of `clusters` against known `labels`."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    return {"cluster_acc": round(cluster_accuracy(labels, clusters), 6),
            "nmi": round(float(normalized_mutual_info_score(labels, clusters)), 6),
            "ari": round(float(adjusted_rand_score(labels, clusters)), 6)}


def kmeans_baseline(features: np.ndarray, labels, n_clusters: int, seed: int,
                    n_init: int = 10) -> dict[str, float]:
    """Plain K-means on the raw vectors, scored like the deep clustering."""
    from sklearn.cluster import KMeans
    clusters = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed).fit_predict(
        np.asarray(features, dtype=np.float64))
    return clustering_scores(labels, clusters)


def roc_points(score: np.ndarray, positive: np.ndarray, points: int = 50) -> list:
    """The ROC curve of `score` against the 0/1 `positive` at `points` + 1 evenly spaced false
    positive rates, as [fpr, tpr] pairs for the report."""
    from sklearn.metrics import roc_curve
    fpr, tpr, _ = roc_curve(positive, score)
    grid = np.linspace(0.0, 1.0, points + 1)
    return [[round(float(x), 4), round(float(y), 4)] for x, y in zip(grid, np.interp(grid, fpr, tpr))]


def confusion_matrix(labels, predicted, n_classes: int) -> list[list[int]]:
    """Rows: true label, columns: predicted label."""
    table = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(table, (np.asarray(labels), np.asarray(predicted)), 1)
    return table.tolist()
