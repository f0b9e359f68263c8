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


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties sharing their average rank."""
    y = np.asarray(y, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = ((ends - counts + 1 + ends) / 2)[inverse]  # 1-based average rank of each tie group
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def logistic_fit(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, iters: int = 30) -> np.ndarray:
    """Ridge logistic regression by Newton's method (with an intercept); the ridge keeps weights finite when a
    synthetic sample happens to be separable or single-class."""
    xb = np.column_stack([np.ones(len(x)), x])
    w = np.zeros(xb.shape[1])
    reg = l2 * len(x) * np.eye(xb.shape[1])
    reg[0, 0] = 0.0  # do not shrink the intercept
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(xb @ w, -30, 30)))
        grad = xb.T @ (p - y) + reg @ w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + reg + 1e-9 * np.eye(len(w))
        w -= np.linalg.solve(hess, grad)
    return w


def logistic_score(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Log-odds of a model from ``logistic_fit``."""
    return w[0] + x @ w[1:]
