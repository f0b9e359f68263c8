"""User hold-outs shared by training and evaluation: pure numpy over ids of any key kind.

- ``holdout_users``: a seeded, stateless share of users (a hash of the id), so early stopping never sees a
  training user and the same user falls on the same side in every process.
- ``strong_generalization_split`` (Liang et al. 2018): users split into train / validation / test; held-out
  users' items split at random into a fold-in part given as history and a target part to rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from feast_autofeat.ids import stable_hash
from feast_autofeat.models.interactions import Histories


def holdout_users(user_ids: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Boolean mask: True for users in the validation share, from a seeded hash of the id (stable, no state)."""
    return (stable_hash(user_ids, seed) % np.uint64(10_000)).astype(np.int64) < int(share * 10_000)


@dataclass(frozen=True)
class StrongSplit:
    train: Histories
    valid_in: Histories
    valid_out: Histories
    test_in: Histories
    test_out: Histories
    item_ids: np.ndarray  # item id of each column

    def describe(self) -> dict:
        return {"train_users": self.train.n_users, "valid_users": self.valid_in.n_users,
                "test_users": self.test_in.n_users, "items": len(self.item_ids),
                "train_interactions": int(self.train.lengths.sum())}


def strong_generalization_split(user_ids: np.ndarray, item_ids: np.ndarray, heldout_share: float = 0.1,
                                fold_in: float = 0.8, min_items: int = 5, seed: int = 0) -> StrongSplit:
    """Split positive (user, item) pairs by user; items are those the train users touched. Ids of any kind:
    the split runs on their sorted codes, so integer ids split exactly as they always did."""
    rng = np.random.default_rng(seed)
    _, u = np.unique(np.asarray(user_ids), return_inverse=True)  # users are positions in the histories
    item_vocab, i = np.unique(np.asarray(item_ids), return_inverse=True)
    pairs = np.unique(np.stack([u.astype(np.int64), i.astype(np.int64)], axis=1), axis=0)
    users, counts = np.unique(pairs[:, 0], return_counts=True)
    users = users[counts >= min_items]
    pairs = pairs[np.isin(pairs[:, 0], users)]
    perm = rng.permutation(users)
    n_out = max(1, int(round(heldout_share * len(users))))
    test_u, valid_u, train_u = perm[:n_out], perm[n_out:2 * n_out], perm[2 * n_out:]
    train_pairs = pairs[np.isin(pairs[:, 0], train_u)]
    items = np.unique(train_pairs[:, 1])

    def build(group_users: np.ndarray, rows: np.ndarray) -> Histories:
        upos = np.searchsorted(np.sort(group_users), rows[:, 0])
        return Histories.from_pairs(upos, np.searchsorted(items, rows[:, 1]), len(group_users), len(items))

    def heldout(group: np.ndarray) -> tuple[Histories, Histories]:
        rows = pairs[np.isin(pairs[:, 0], group) & np.isin(pairs[:, 1], items)]
        # per user, a random 20% (at least one) becomes targets
        order = rng.permutation(len(rows))
        rows = rows[order][np.argsort(rows[order][:, 0], kind="stable")]
        _, start, n = np.unique(rows[:, 0], return_index=True, return_counts=True)
        rank = np.arange(len(rows)) - np.repeat(start, n)
        n_target = np.maximum(1, np.round((1 - fold_in) * n)).astype(int)
        is_target = rank < np.repeat(n_target, n)
        return build(group, rows[~is_target]), build(group, rows[is_target])

    valid_in, valid_out = heldout(valid_u)
    test_in, test_out = heldout(test_u)
    return StrongSplit(build(train_u, train_pairs), valid_in, valid_out, test_in, test_out, item_vocab[items])
