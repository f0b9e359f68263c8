"""Top-K ranking metrics over full catalogues, vectorized (numpy), one value per user."""

from __future__ import annotations

import numpy as np

from feast_autofeat.models.interactions import Histories


def top_k(scores: np.ndarray, k: int, exclude: Histories | None = None) -> np.ndarray:
    """Indices of the k best items per row, best first; items in ``exclude`` (e.g. the fold-in history)
    never appear."""
    scores = np.array(scores, dtype=np.float32, copy=True)
    if exclude is not None:
        rows = np.repeat(np.arange(exclude.n_users), exclude.lengths)
        scores[rows, exclude.indices] = -np.inf
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def _hits(scores: np.ndarray, targets: Histories, k: int, exclude: Histories | None) -> np.ndarray:
    top = top_k(scores, k, exclude)
    truth = np.zeros(scores.shape, dtype=bool)
    truth[np.repeat(np.arange(targets.n_users), targets.lengths), targets.indices] = True
    return np.take_along_axis(truth, top, axis=1)


def recall_at_k(scores, targets: Histories, k: int, exclude: Histories | None = None) -> np.ndarray:
    """Hits in the top k divided by min(k, number of targets) (Liang et al. 2018)."""
    hits = _hits(scores, targets, k, exclude).sum(axis=1)
    return hits / np.maximum(1, np.minimum(k, targets.lengths))


def ndcg_at_k(scores, targets: Histories, k: int, exclude: Histories | None = None) -> np.ndarray:
    """Binary-relevance NDCG@k; the ideal ranking puts min(k, targets) hits first."""
    hits = _hits(scores, targets, k, exclude)
    discount = 1.0 / np.log2(np.arange(2, hits.shape[1] + 2))
    dcg = (hits * discount).sum(axis=1)
    ideal = np.cumsum(discount)[np.maximum(1, np.minimum(k, targets.lengths)) - 1]
    return dcg / ideal


def hit_rate_at_k(scores, targets: Histories, k: int, exclude: Histories | None = None) -> np.ndarray:
    return _hits(scores, targets, k, exclude).any(axis=1).astype(float)
