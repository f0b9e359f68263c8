"""A user x item interaction matrix in CSR form (numpy), with an item-id vocabulary.

Histories are what Mult-VAE, EASE and popularity read. Rows are densified per batch only, so a large
catalogue never needs a dense users x items matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from feast_autofeat.models.base import SchemaError


@dataclass(frozen=True)
class Histories:
    indptr: np.ndarray  # int64, n_users + 1
    indices: np.ndarray  # int64 item positions
    n_items: int

    @property
    def n_users(self) -> int:
        return len(self.indptr) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    @classmethod
    def from_pairs(cls, user_pos: np.ndarray, item_pos: np.ndarray, n_users: int, n_items: int) -> Histories:
        """Deduplicated (user, item) positions -> CSR."""
        if len(user_pos) and (item_pos.min() < 0 or item_pos.max() >= n_items):
            raise SchemaError(f"item positions must lie in [0, {n_items}).")
        key = np.unique(user_pos.astype(np.int64) * n_items + item_pos.astype(np.int64))
        users, items = key // n_items, key % n_items
        indptr = np.zeros(n_users + 1, dtype=np.int64)
        np.add.at(indptr, users + 1, 1)
        return cls(np.cumsum(indptr), items, n_items)

    def rows(self, rows: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Dense float32 binary matrix of the given rows."""
        rows = np.asarray(rows)
        out = torch.zeros((len(rows), self.n_items), dtype=torch.float32)
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        lens = ends - starts
        if lens.sum():
            r = np.repeat(np.arange(len(rows)), lens)
            cols = self.indices[_ranges(starts, lens)]
            out[torch.from_numpy(r), torch.from_numpy(cols)] = 1.0
        return out

    def subset(self, rows: np.ndarray) -> Histories:
        rows = np.asarray(rows)
        starts, lens = self.indptr[rows], self.lengths[rows]
        indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        return Histories(indptr, self.indices[_ranges(starts, lens)], self.n_items)

    def item_counts(self) -> np.ndarray:
        return np.bincount(self.indices, minlength=self.n_items)


def _ranges(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + l) for each (s, l), vectorized."""
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(np.cumsum(lens) - lens, lens)
    return np.repeat(starts, lens) + (np.arange(total) - offsets)
