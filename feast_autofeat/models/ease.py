"""EASE (Steck 2019, "Embarrassingly Shallow Autoencoders"): a closed-form item-item model, the baseline
learned models must catch. B = -P / diag(P) with P = (X^T X + lambda I)^-1 and diag(B) = 0."""

from __future__ import annotations

import numpy as np
import torch

from feast_autofeat.models.base import NotFittedError
from feast_autofeat.models.interactions import Histories


class EASE:
    name = "ease"

    def __init__(self, l2: float = 500.0):
        self.l2 = l2
        self.B_: np.ndarray | None = None

    def fit(self, train: Histories) -> EASE:
        gram = self.l2 * torch.eye(train.n_items, dtype=torch.float64)
        for s in range(0, train.n_users, 4096):  # X^T X in row blocks: never a dense users x items matrix
            x = train.rows(np.arange(s, min(s + 4096, train.n_users))).to(torch.float64)
            gram += x.T @ x
        p = torch.linalg.inv(gram)
        b = -p / torch.diag(p)
        b.fill_diagonal_(0.0)
        self.B_ = b.to(torch.float32).numpy()
        return self

    def score(self, histories: Histories, batch_size: int = 4096) -> np.ndarray:
        if self.B_ is None:
            raise NotFittedError("EASE is not fitted; call fit().")
        return np.vstack([histories.rows(np.arange(s, min(s + batch_size, histories.n_users))).numpy() @ self.B_
                          for s in range(0, histories.n_users, batch_size)])


class Popularity:
    """Scores every item by its number of training interactions, the same for everyone."""

    name = "popularity"

    def fit(self, train: Histories) -> Popularity:
        self.counts_ = train.item_counts().astype(np.float32)
        return self

    def score(self, histories: Histories) -> np.ndarray:
        return np.broadcast_to(self.counts_, (histories.n_users, len(self.counts_))).copy()


class CategoryPopularity:
    """The new-items baseline: an item nobody has interacted with yet scores by how much of the user's history
    lies in its categories, smoothed towards everyone's: s(u, c) = (n_uc + alpha p_c) / (n_u + alpha), with
    n_uc the user's positives in category c, n_u their positives and p_c category c's share of all training
    positives; an item's score is the mean of s(u, c) over its categories (an item without categories: 0).
    ``categories``: items x categories, 0/1 (genres, a category, a brand)."""

    name = "category popularity"

    def __init__(self, categories: np.ndarray, alpha: float = 5.0):
        self.cats = np.asarray(categories, np.float32)
        self.alpha = alpha

    def fit(self, train: Histories) -> CategoryPopularity:
        per_cat = train.item_counts().astype(np.float64) @ self.cats
        self.share_ = (per_cat / per_cat.sum() if per_cat.sum() > 0 else per_cat).astype(np.float32)
        return self

    def score(self, histories: Histories, batch_size: int = 4096) -> np.ndarray:
        width = np.maximum(self.cats.sum(axis=1), 1.0)
        out = []
        for s in range(0, histories.n_users, batch_size):
            x = histories.rows(np.arange(s, min(s + batch_size, histories.n_users))).numpy()
            user_cats = x @ self.cats  # n_uc (an item in two categories counts in both)
            n = x.sum(axis=1, keepdims=True)
            mix = (user_cats + self.alpha * self.share_) / (n + self.alpha)
            out.append((mix @ self.cats.T) / width)
        return np.vstack(out).astype(np.float32)
