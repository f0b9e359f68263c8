"""Item indexes for top-K retrieval by inner product (the two-tower's vectors are unit length, so this is
cosine): exact search (one matrix product) for small catalogues, HNSW (usearch) for large ones."""

from __future__ import annotations

import numpy as np

from feast_autofeat.errors import AutofeatError

EXACT_MAX_ITEMS = 100_000  # "auto" switches to HNSW above this


class ExactIndex:
    """Brute force: exact, and on a few thousand items faster than any graph."""

    kind = "exact"

    def __init__(self, ids: np.ndarray, vectors: np.ndarray):
        self.ids = np.asarray(ids, np.int64)
        self.vectors = np.ascontiguousarray(vectors, np.float32)
        self._pos = {int(i): p for p, i in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, queries: np.ndarray, k: int, exclude: list | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores), each (queries x k), best first; ``exclude[i]``: item ids never returned for query i."""
        scores = np.asarray(queries, np.float32) @ self.vectors.T
        for row, items in enumerate(exclude or ()):
            pos = [self._pos[i] for i in items if i in self._pos]
            scores[row, pos] = -np.inf
        k = min(k, scores.shape[1])
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(part, order, axis=1)
        return self.ids[top], np.take_along_axis(scores, top, axis=1)


class HnswIndex:
    """usearch HNSW over inner product; results over-fetched by the number of excluded items, then filtered."""

    kind = "hnsw"

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, connectivity: int = 16, expansion_add: int = 128,
                 expansion_search: int = 256, threads: int = 0):
        from usearch.index import Index

        self.ids = np.asarray(ids, np.int64)
        vectors = np.ascontiguousarray(vectors, np.float32)
        self.index = Index(ndim=vectors.shape[1], metric="ip", dtype="f32", connectivity=connectivity,
                           expansion_add=expansion_add, expansion_search=expansion_search)
        self.index.add(np.arange(len(self.ids), dtype=np.uint64), vectors, threads=threads)

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, queries: np.ndarray, k: int, exclude: list | None = None) -> tuple[np.ndarray, np.ndarray]:
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        extra = max((len(e) for e in exclude), default=0) if exclude else 0
        want = min(k + extra, len(self.ids))
        found = self.index.search(queries, want)
        keys = np.atleast_2d(found.keys).astype(np.int64)
        dist = np.atleast_2d(found.distances)
        out_ids = np.full((len(queries), k), -1, np.int64)
        out_scores = np.full((len(queries), k), -np.inf, np.float32)
        for row in range(len(queries)):  # per query, not per item: a handful of rows per request
            ids = self.ids[keys[row][keys[row] < len(self.ids)]]
            scores = 1.0 - dist[row][: len(ids)]  # usearch's "ip" distance is 1 - dot
            if exclude:
                keep = ~np.isin(ids, np.fromiter(exclude[row], np.int64, len(exclude[row])))
                ids, scores = ids[keep], scores[keep]
            out_ids[row, : min(k, len(ids))] = ids[:k]
            out_scores[row, : min(k, len(ids))] = scores[:k]
        return out_ids, out_scores


def build_index(ids: np.ndarray, vectors: np.ndarray, kind: str = "auto"):
    """``exact``, ``hnsw`` or ``auto`` (exact up to ``EXACT_MAX_ITEMS`` items)."""
    if len(ids) == 0:
        raise AutofeatError("no item vectors to index: materialize the item embedding view first "
                            "(`feast materialize` after `feast-autofeat deploy item_two_tower ...`).")
    if kind == "auto":
        kind = "exact" if len(ids) <= EXACT_MAX_ITEMS else "hnsw"
    if kind == "exact":
        return ExactIndex(ids, vectors)
    if kind == "hnsw":
        return HnswIndex(ids, vectors)
    raise AutofeatError(f"unknown index kind {kind!r}; use auto, exact or hnsw.")
