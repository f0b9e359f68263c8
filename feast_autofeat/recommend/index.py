"""Item indexes for top-K retrieval by inner product. The two-tower's search vectors are not unit length (category
blocks and a log-popularity dimension are appended to the unit item vector), so the score is the plain dot product.

- ``exact``: brute force (one matrix product); exact, and the fastest on small catalogues.
- ``ivf``: inverted file, flat: k-means lists, exact scoring inside the lists nearest the query. Robust for
  queries that lie off the item manifold (the two-tower's query vectors), where a graph walk stalls in one
  region; the default above ``EXACT_MAX_ITEMS`` items. The training is ours (numpy L2 k-means, seeded), the scan
  is faiss's (faiss-cpu ``IndexIVFFlat`` over exactly our centroids and lists): the same recall per nprobe, and
  on 1M items (84 dims, 2,000 lists, off-manifold queries, batch of one) recall@100 0.965 at nprobe 4 in 0.14 ms
  p50 against 0.40 ms for our numpy scan (0.35x; p99 0.42x), 0.982 at nprobe 8 in 0.16 against 0.47 ms (0.34x;
  p99 0.43x). faiss's own inner-product training needs 24 lists for 0.95 (its lists are not neighbourhoods),
  slower than either. ``python benchmarks/ann_index.py --items 1000000 --queries 500 --rounds 5``
  (benchmarks/results/ann_index.json).
- ``hnsw``: usearch HNSW, for explicit use only: on a synthetic 1M-item catalogue its recall@100 for
  two-tower-like queries measured 0.5-0.8, against >= 0.98 for ``ivf`` at similar latency.
- ``auto``: ``exact`` up to ``EXACT_MAX_ITEMS`` items, ``ivf`` above.

A model whose search vectors end in a block that only some items have (the two-tower's item-item term: its
``item_item_max_items`` most frequent items) is served by ``SplitIndex``: those items, exactly, over every
dimension; the rest of the catalogue by the index above over the dimensions before the block. The block's cost is
bounded by the items that have it, whatever the catalogue's size.
"""

from __future__ import annotations

import numpy as np

from feast_autofeat.errors import AutofeatError
from feast_autofeat.ids import positions

EXACT_MAX_ITEMS = 100_000  # "auto" switches to IVF above this
KINDS = ("auto", "exact", "ivf", "hnsw")


def _rows(index, items) -> np.ndarray:
    """Rows of ``index`` (``ids``, ``_by_id``, ``_sorted_ids``) holding the given item ids (a list, set or array;
    unknown ids ignored), unique and sorted."""
    items = items if isinstance(items, np.ndarray) else np.asarray(list(items))
    if not len(items) or not len(index.ids):
        return np.zeros(0, np.int64)
    pos = positions(index._sorted_ids, items)
    return np.unique(index._by_id[pos[pos >= 0]])


def missing_ids(ids: np.ndarray, shape: tuple) -> np.ndarray:
    """Padding for result slots with no item: -1 for integer ids, "" for strings (their score is -inf)."""
    return np.full(shape, -1 if ids.dtype.kind in "iu" else "", ids.dtype if ids.dtype.kind in "U" else np.int64)


class ExactIndex:
    """Brute force: exact, and on a few thousand items faster than any graph."""

    kind = "exact"

    def __init__(self, ids: np.ndarray, vectors: np.ndarray):
        self.ids = np.asarray(ids)
        self.vectors = np.ascontiguousarray(vectors, np.float32)
        self._by_id = np.argsort(self.ids, kind="stable")  # id -> row, by binary search
        self._sorted_ids = self.ids[self._by_id]

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, queries: np.ndarray, k: int, exclude: list | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores), each (queries x k), best first; ``exclude[i]``: item ids never returned for query i.
        Padded with ``missing_ids`` / -inf where fewer than k items remain."""
        scores = np.asarray(queries, np.float32) @ self.vectors.T
        for row, items in enumerate(exclude or ()):
            scores[row, _rows(self, items)] = -np.inf
        k = min(k, scores.shape[1])
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(part, order, axis=1)
        ids, best = self.ids[top], np.take_along_axis(scores, top, axis=1)
        gone = ~np.isfinite(best)  # fewer than k items left after the exclusions
        if gone.any():
            ids = np.where(gone, missing_ids(self.ids, ids.shape), ids)
        return ids, best


class HnswIndex:
    """usearch HNSW over inner product; results over-fetched by the number of excluded items, then filtered."""

    kind = "hnsw"

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, connectivity: int = 16, expansion_add: int = 128,
                 expansion_search: int = 256, threads: int = 0):
        from usearch.index import Index

        self.ids = np.asarray(ids)
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
        out_ids = missing_ids(self.ids, (len(queries), k))
        out_scores = np.full((len(queries), k), -np.inf, np.float32)
        for row in range(len(queries)):  # per query, not per item: a handful of rows per request
            ids = self.ids[keys[row][keys[row] < len(self.ids)]]
            scores = 1.0 - dist[row][: len(ids)]  # usearch's "ip" distance is 1 - dot
            if exclude:
                keep = ~np.isin(ids, np.asarray(list(exclude[row]), ids.dtype))
                ids, scores = ids[keep], scores[keep]
            out_ids[row, : min(k, len(ids))] = ids[:k]
            out_scores[row, : min(k, len(ids))] = scores[:k]
        return out_ids, out_scores


def default_nlist(n: int) -> int:
    """``round(2 * sqrt(n))`` lists, at least 1, and at most ``n // 64`` so that lists average >= 64 items."""
    return max(1, min(round(2 * np.sqrt(n)), n // IvfIndex.MIN_LIST_MEAN))


def default_nprobe(nlist: int) -> int:
    """About 3% of the lists, so about 3% of the items scanned per query, but at least 8 lists (capped at nlist).
    On 1M items: 2,000 lists of ~500, 60 probed, ~30k items scored."""
    return min(nlist, max(8, int(np.ceil(IvfIndex.PROBE_FRACTION * nlist))))


class IvfIndex:
    """Inverted file, flat: ``nlist`` k-means lists; a query scores exactly every item of the ``nprobe`` lists
    whose centroids have the highest inner product with it, then keeps the best k. Unlike a graph walk it has no
    local minimum to stall in, so it holds its recall for queries off the item manifold. The training and the
    choice of lists are ours (numpy); the scan of those lists is faiss's (``IndexIVFFlat``, inner product, over
    our centroids and lists: faiss ids are our row numbers): about 3x faster than our numpy scan was on 1M items
    (module docstring).

    Defaults: ``default_nlist`` and ``default_nprobe`` (about 3% of the items scanned, at least 8 lists).
    ``nprobe`` is a plain attribute: set it after build to trade latency for recall (``nprobe = nlist`` is exact).
    A query probes more lists than ``nprobe`` only where those hold fewer items than k plus its exclusions.

    Training: L2 k-means (Lloyd, ``iters`` iterations, from random distinct rows) on a seeded sample of
    ``64 * nlist`` items, then every item is assigned to its nearest centroid, in chunks. The centroids are the
    lists' means, so a query's inner product with one is the mean score of that list's items: the order in which
    lists are probed (MIPS). Deterministic for a seed. Rows are stored grouped by list, each list contiguous:
    ``ids[i]`` and ``vectors[i]`` are one item, but not in the order given.

    Memory: faiss keeps its own copy of the vectors in its lists (float32, plus an int64 row number per item), so
    the vectors are held twice (``vectors`` and faiss's lists: 2 x 336 MB for 1M items of 84 dims); faiss's public
    API has no way to scan a caller's array in place.

    Threads: faiss's OpenMP settings are left as they are (``OMP_NUM_THREADS`` / ``faiss.omp_set_num_threads``);
    they only matter to the build (faiss's add). The scan goes through ``search_preassigned`` (the lists are ours
    to choose), which faiss runs on the calling thread, every query of a batch included, as the numpy scan did.
    """

    kind = "ivf"
    MIN_LIST_MEAN = 64  # default nlist keeps lists at least this large on average
    PROBE_FRACTION = 0.03  # default nprobe: this share of the lists
    SAMPLE_PER_LIST = 64  # k-means trains on this many sampled items per list
    CHUNK_FLOATS = 1 << 24  # assignment scores held at once (64 MiB)

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, nlist: int | None = None, nprobe: int | None = None,
                 seed: int = 0, iters: int = 8):
        import faiss
        from faiss.contrib.ivf_tools import add_preassigned

        ids = np.asarray(ids)
        vectors = np.asarray(vectors, np.float32)
        n = len(ids)
        if n == 0 or vectors.ndim != 2 or len(vectors) != n:
            raise AutofeatError(f"IvfIndex needs one vector per id, got {n} ids and vectors of shape "
                                f"{vectors.shape}.")
        nlist = default_nlist(n) if nlist is None else int(nlist)
        if not 1 <= nlist <= n:
            raise AutofeatError(f"nlist must be between 1 and the number of items {n}, got {nlist}.")
        rng = np.random.default_rng(seed)
        sample = vectors[np.sort(rng.choice(n, min(n, self.SAMPLE_PER_LIST * nlist), replace=False))]
        centroids = sample[rng.choice(len(sample), nlist, replace=False)].copy()
        for _ in range(iters):
            assign = self._nearest(sample, centroids)
            counts = np.bincount(assign, minlength=nlist)
            full = np.flatnonzero(counts)  # an emptied list keeps its old centroid
            firsts = (np.cumsum(counts) - counts)[full]
            sums = np.add.reduceat(sample[np.argsort(assign, kind="stable")], firsts, axis=0)
            centroids[full] = sums / counts[full, None].astype(np.float32)
        del sample
        assign = self._nearest(vectors, centroids)
        order = np.argsort(assign, kind="stable")
        self.ids = ids[order]
        self.vectors = np.ascontiguousarray(vectors[order])
        self.centroids = np.ascontiguousarray(centroids)
        self._sizes = np.bincount(assign, minlength=nlist).astype(np.int64)  # items per list
        self.starts = np.concatenate([[0], np.cumsum(self._sizes)]).astype(np.int64)
        self.nlist = nlist
        self.nprobe = default_nprobe(nlist) if nprobe is None else int(nprobe)
        self._by_id = np.argsort(self.ids, kind="stable")  # id -> row, by binary search (no 1M-entry dict)
        self._sorted_ids = self.ids[self._by_id]
        # faiss's scan over the same lists: our centroids (probing is ours anyway), rows in storage order
        d = self.vectors.shape[1]
        quantizer = faiss.IndexFlatIP(d)
        quantizer.add(self.centroids)
        self._faiss = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        self._faiss.is_trained = True
        rows = np.arange(n, dtype=np.int64)  # a local, not a temporary: add_preassigned drops its own reference
        add_preassigned(self._faiss, self.vectors, np.repeat(np.arange(nlist, dtype=np.int64), self._sizes), rows)

    @classmethod
    def _nearest(cls, x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
        """Index of each row's nearest centroid (L2: argmax of x.c - |c|^2 / 2), in chunks of rows."""
        half = 0.5 * np.einsum("ij,ij->i", centroids, centroids)
        step = max(1, cls.CHUNK_FLOATS // len(centroids))
        out = np.empty(len(x), np.int64)
        for s in range(0, len(x), step):  # chunks of thousands of rows, not items one by one
            scores = x[s:s + step] @ centroids.T
            scores -= half
            out[s:s + step] = np.argmax(scores, axis=1)
        return out

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, queries: np.ndarray, k: int, exclude: list | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores), each (queries x k), best first; ``exclude[i]``: item ids never returned for query i.
        Padded with ``missing_ids`` / -inf where fewer than k items remain."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
        k = int(k)
        if k < 1:
            raise AutofeatError(f"k must be at least 1, got {k}.")
        nq = len(queries)
        nprobe = min(max(1, int(self.nprobe)), self.nlist)
        centroid_scores = queries @ self.centroids.T
        if nprobe < self.nlist:  # the nprobe best lists, in no particular order (faiss's heap does not care)
            probes = np.argpartition(-centroid_scores, nprobe - 1, axis=1)[:, :nprobe]
        else:
            probes = np.broadcast_to(np.arange(self.nlist), (nq, self.nlist))
        drops = [_rows(self, exclude[row]) for row in range(nq)] if exclude else None
        need = k + np.array([0] * nq if drops is None else [len(drop) for drop in drops], np.int64)
        short = self._sizes[probes].sum(axis=1) < need  # those lists hold fewer items than k plus the excluded
        if drops is None and not short.any():  # the common case: one faiss call for every query
            return self._scan(queries, centroid_scores, probes, k)
        out_ids = missing_ids(self.ids, (nq, k))
        out_scores = np.full((nq, k), -np.inf, np.float32)
        plain = ~short & (need == k)  # nprobe lists, nothing excluded: one faiss call for them all
        if plain.any():
            out_ids[plain], out_scores[plain] = self._scan(queries[plain], centroid_scores[plain], probes[plain], k)
        for row in np.flatnonzero(~plain).tolist():  # the others one by one
            probe = probes[row]
            if short[row]:  # probe more lists, best first, until they hold k plus the excluded
                ranked = np.argsort(-centroid_scores[row], kind="stable")
                probe = ranked[:max(nprobe, int(np.searchsorted(np.cumsum(self._sizes[ranked]), need[row])) + 1)]
            found = self._scan(queries[row:row + 1], centroid_scores[row:row + 1], probe[None, :], k,
                               () if drops is None else drops[row])
            out_ids[row], out_scores[row] = found[0][0], found[1][0]
        return out_ids, out_scores

    def _scan(self, queries: np.ndarray, centroid_scores: np.ndarray, lists: np.ndarray, k: int,
              drop=()) -> tuple[np.ndarray, np.ndarray]:
        """faiss's scan of the lists ``lists[i]`` for query i (``centroid_scores``: every centroid's score): (ids,
        scores), each (queries x k), best first, ``missing_ids`` / -inf where fewer items remain; ``drop``: rows
        never returned (one query)."""
        import faiss

        n, m = lists.shape
        lists = np.ascontiguousarray(lists, np.int64)
        coarse = np.ascontiguousarray(centroid_scores[np.arange(n)[:, None], lists])
        params = faiss.SearchParametersIVF(nprobe=m)
        if len(drop):
            excluded = faiss.IDSelectorBatch(drop)  # a local: outlives the call, as the Not refers to it
            params.sel = faiss.IDSelectorNot(excluded)
        scores = np.empty((n, k), np.float32)
        labels = np.empty((n, k), np.int64)
        self._faiss.search_preassigned_c(n, faiss.swig_ptr(queries), k, faiss.swig_ptr(lists),
                                         faiss.swig_ptr(coarse), faiss.swig_ptr(scores), faiss.swig_ptr(labels),
                                         False, params)
        found = labels >= 0  # faiss's row numbers; -1 where fewer than k items remain
        if found.all():
            return self.ids[labels], scores
        return (np.where(found, self.ids[np.where(found, labels, 0)], missing_ids(self.ids, labels.shape)),
                np.where(found, scores, -np.inf))


class SplitIndex:
    """Items whose vectors' last ``tail`` dimensions are not all zero (``side``: scored exactly over every
    dimension), and the others (``main``: any index, over the dimensions before the tail, where their vectors
    hold zeros): the same top-K as one index over all of them where ``main`` is exact, at the cost of ``main``
    plus one product over the side items."""

    def __init__(self, main, side: ExactIndex, tail: int):
        self.main, self.side, self.tail = main, side, int(tail)
        self.kind = f"{main.kind} + exact over {len(side):,} item-item items"

    def __len__(self) -> int:
        return len(self.main) + len(self.side)

    def search(self, queries: np.ndarray, k: int, exclude: list | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores), each (queries x k), best first: the best of both parts' top k."""
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        k = int(k)
        if k < 1:
            raise AutofeatError(f"k must be at least 1, got {k}.")
        side_ids, side_scores = self.side.search(queries, min(k, len(self.side)), exclude)
        main_ids, main_scores = self.main.search(queries[:, :-self.tail], min(k, len(self.main)), exclude)
        ids = np.concatenate([side_ids, main_ids], axis=1)
        scores = np.concatenate([side_scores, main_scores], axis=1)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        ids, scores = np.take_along_axis(ids, top, axis=1), np.take_along_axis(scores, top, axis=1)
        if ids.shape[1] < k:  # a catalogue smaller than k
            pad = k - ids.shape[1]
            ids = np.concatenate([ids, missing_ids(ids, (len(ids), pad))], axis=1)
            scores = np.concatenate([scores, np.full((len(ids), pad), -np.inf, np.float32)], axis=1)
        return ids, scores


def build_index(ids: np.ndarray, vectors: np.ndarray, kind: str = "auto", tail: int = 0):
    """``exact``, ``ivf``, ``hnsw`` or ``auto`` (exact up to ``EXACT_MAX_ITEMS`` items, ivf above). ``tail``: the
    vectors' last dimensions are a block only some items have (zeros for the others): a ``SplitIndex`` of those
    items (exact) and the rest (``kind``, without the block)."""
    if len(ids) == 0:
        raise AutofeatError("no item vectors to index: materialize the two-tower's item view first "
                            "(`feast materialize` after `feast-autofeat deploy <two-tower name>`).")
    if kind not in KINDS:
        raise AutofeatError(f"unknown index kind {kind!r}; use one of {', '.join(KINDS)}.")
    ids = np.asarray(ids)
    if tail:
        side = np.any(vectors[:, -tail:] != 0, axis=1)
        if side.any() and not side.all():
            return SplitIndex(build_index(ids[~side], vectors[~side, :-tail], kind),
                              ExactIndex(ids[side], vectors[side]), tail)
    if kind == "auto":
        kind = "exact" if len(ids) <= EXACT_MAX_ITEMS else "ivf"
    if kind == "exact":
        return ExactIndex(ids, vectors)
    if kind == "ivf":
        return IvfIndex(ids, vectors)
    return HnswIndex(ids, vectors)
