"""IvfIndex against brute force (ExactIndex) on a seeded clustered catalogue of non-unit vectors, and the choice
``build_index`` makes."""

import numpy as np
import pytest

from feast_autofeat.errors import AutofeatError
from feast_autofeat.recommend import index as index_mod
from feast_autofeat.recommend.index import ExactIndex, IvfIndex, build_index, default_nlist, default_nprobe

N, D, CLUSTERS = 30_000, 32, 50


@pytest.fixture(scope="module")
def catalogue():
    """Unit cluster centres, items = centre + noise, scaled by 0.5-1.5 (not unit length, like the two-tower's
    search vectors); ids are neither 0-based nor contiguous."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(CLUSTERS, D)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vecs = centres[rng.integers(0, CLUSTERS, N)] + rng.normal(0, 0.6 / np.sqrt(D), (N, D)).astype(np.float32)
    vecs *= rng.uniform(0.5, 1.5, (N, 1)).astype(np.float32)
    ids = np.arange(N, dtype=np.int64) * 7 + 3
    # item-like queries: an item plus a little noise; off-manifold: a mixture of 2-3 cluster centres plus noise,
    # as the two-tower's query vectors (a user between tastes) lie off the item clusters
    item_q = vecs[rng.choice(N, 100)] + rng.normal(0, 0.1 / np.sqrt(D), (100, D)).astype(np.float32)
    mix_q = np.stack([rng.dirichlet(np.ones(3)) @ centres[rng.choice(CLUSTERS, 3, replace=False)]
                      for _ in range(100)]).astype(np.float32)
    mix_q += rng.normal(0, 0.3 / np.sqrt(D), mix_q.shape).astype(np.float32)
    return ids, vecs.astype(np.float32), {"item": item_q, "mixture": mix_q}


@pytest.fixture(scope="module")
def ivf(catalogue):
    ids, vecs, _ = catalogue
    return IvfIndex(ids, vecs)


@pytest.fixture(scope="module")
def exact(catalogue):
    ids, vecs, _ = catalogue
    return ExactIndex(ids, vecs)


def recall(got: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(t)) / truth.shape[1] for a, t in zip(got, truth)]))


def test_defaults_and_layout(catalogue, ivf):
    assert default_nlist(1_000_000) == 2000 and default_nprobe(2000) == 60  # 60 lists of ~500: 3% scanned
    assert default_nlist(20_000) == 283 and default_nprobe(283) == 9
    assert default_nlist(1_000) == 15  # capped: lists average >= 64 items
    assert default_nlist(10) == 1 and default_nprobe(1) == 1
    assert default_nprobe(100) == 8  # at least 8 lists
    ids, vecs, _ = catalogue
    assert ivf.kind == "ivf" and len(ivf) == N
    assert ivf.nlist == default_nlist(N) == 346 and ivf.nprobe == default_nprobe(ivf.nlist) == 11
    assert ivf.starts[0] == 0 and ivf.starts[-1] == N and np.all(np.diff(ivf.starts) >= 0)
    # rows are grouped by list, but ids[i] and vectors[i] are still one item
    assert sorted(ivf.ids.tolist()) == ids.tolist()
    np.testing.assert_array_equal(ivf.vectors, vecs[(ivf.ids - 3) // 7])
    # every item sits in the list of its nearest centroid (L2)
    rows = np.random.default_rng(3).choice(N, 500, replace=False)
    d = ((ivf.vectors[rows, None, :] - ivf.centroids[None, :, :]) ** 2).sum(-1)
    lists = np.searchsorted(ivf.starts, rows, side="right") - 1
    np.testing.assert_allclose(d[np.arange(len(rows)), lists], d.min(1), rtol=1e-4, atol=1e-5)


def test_probing_every_list_equals_brute_force(catalogue, ivf, exact):
    """Every list probed: brute force's top 100, up to the order of float32 near-ties (the two sum the dot
    products in different orders), including a tie of the 100th with the 101st, which brute force's top 100 does
    not show."""
    ids, vecs, queries = catalogue
    ivf.nprobe = ivf.nlist
    try:
        for q in queries.values():
            want_ids, want_scores = exact.search(q, 100)
            got_ids, got_scores = ivf.search(q, 100)
            np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5, atol=1e-5)
            # each returned score is that item's own score, and the ids differ only where scores tie
            np.testing.assert_allclose(got_scores, np.einsum("qkd,qd->qk", vecs[(got_ids - 3) // 7], q),
                                       rtol=1e-5, atol=1e-5)
            differ = got_ids != want_ids
            assert differ.mean() < 0.01, differ.mean()
            gaps = np.abs(np.diff(want_scores, axis=1))
            near_tie = np.zeros_like(differ)
            near_tie[:, 1:] |= gaps < 1e-5
            near_tie[:, :-1] |= gaps < 1e-5
            near_tie[:, -1] |= np.abs(got_scores[:, -1] - want_scores[:, -1]) < 1e-5
            assert not (differ & ~near_tie).any()
    finally:
        ivf.nprobe = default_nprobe(ivf.nlist)


@pytest.mark.parametrize("kind", ["item", "mixture"])
def test_recall_at_default_nprobe(catalogue, ivf, exact, kind):
    ids, vecs, queries = catalogue
    q = queries[kind]
    want, _ = exact.search(q, 100)
    got, scores = ivf.search(q, 100)
    assert recall(got, want) >= 0.95
    # scanning fewer lists loses recall: the test can tell a working index from a lucky one
    ivf.nprobe = 1
    try:
        assert recall(ivf.search(q, 100)[0], want) < recall(got, want)
    finally:
        ivf.nprobe = default_nprobe(ivf.nlist)
    # scores are the plain inner products of the returned items, best first
    rows = (got - 3) // 7
    np.testing.assert_allclose(scores, np.einsum("qkd,qd->qk", vecs[rows], q), rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)
    assert all(len(set(r)) == 100 for r in got.tolist())


def test_exclusions(catalogue, ivf, exact):
    _, _, queries = catalogue
    q = queries["mixture"][:4]
    base, _ = ivf.search(q, 50)
    top1 = {int(base[0, 0])}
    many = set(base[1, ::2].tolist())  # every other of the best 50
    rng = np.random.default_rng(1)
    scattered = set(rng.choice(ivf.ids, 5000, replace=False).tolist()) | {-5, 10**12}  # unknown ids are ignored
    exclude = [top1, many, scattered, []]
    got, scores = ivf.search(q, 50, exclude)
    assert got[0].tolist() == base[0, 1:].tolist() + [got[0, -1]]  # top-1 gone, the rest shift up
    assert got[0, -1] not in base[0]
    for row, excluded in enumerate(exclude):
        assert not set(got[row].tolist()) & set(excluded)
        assert np.all(got[row] >= 0) and np.all(np.isfinite(scores[row]))
    np.testing.assert_array_equal(got[3], base[3])
    # with every list probed, exclusions give exactly brute force's answer with the same exclusions
    ivf.nprobe = ivf.nlist
    try:
        want, _ = exact.search(q, 50, exclude)
        np.testing.assert_array_equal(ivf.search(q, 50, exclude)[0], want)
    finally:
        ivf.nprobe = default_nprobe(ivf.nlist)


def test_pads_when_fewer_than_k_remain_and_probes_more_when_needed():
    rng = np.random.default_rng(2)
    vecs = rng.normal(size=(2000, 8)).astype(np.float32)
    ids = np.arange(2000, dtype=np.int64) + 100
    small = IvfIndex(ids, vecs, nlist=40, nprobe=1)
    q = rng.normal(size=(2, 8)).astype(np.float32)
    # k far above one list's ~50 items: more lists are probed, k valid and distinct ids come back
    got, scores = small.search(q, 300)
    assert np.all(got >= 0) and all(len(set(r)) == 300 for r in got.tolist()) and np.all(np.isfinite(scores))
    # everything but 30 items excluded: those 30, best first, then -1 / -inf
    keep = set(ids[rng.choice(2000, 30, replace=False)].tolist())
    excluded = set(ids.tolist()) - keep
    got, scores = small.search(q, 50, [excluded, excluded])
    for row in range(2):
        assert set(got[row, :30].tolist()) == keep
        assert np.all(got[row, 30:] == -1) and np.all(scores[row, 30:] == -np.inf)
        assert np.all(np.diff(scores[row, :30]) <= 0)
    got, scores = small.search(q[0], 2500)  # one query vector, k above the catalogue
    assert got.shape == (1, 2500) and sorted(got[0, :2000].tolist()) == ids.tolist() and np.all(got[0, 2000:] == -1)
    with pytest.raises(AutofeatError, match="nlist"):
        IvfIndex(ids[:10], vecs[:10], nlist=11)


def _numpy_scan(ivf: IvfIndex, q: np.ndarray, k: int, excluded: set = frozenset()):
    """The reference for ``IvfIndex.search``, from its centroids, lists and vectors alone, in plain numpy: the
    lists ranked by their centroid's inner product with ``q``, the first nprobe probed (more while those hold fewer
    items than k plus the excluded), every item in them scored, the excluded dropped, the best k (padded).
    Returns (ids, scores, lists probed)."""
    sizes = np.diff(ivf.starts)
    ranked = np.argsort(-(ivf.centroids @ q), kind="stable")
    need = k + sum(i in excluded for i in ivf.ids.tolist())
    m = min(max(1, ivf.nprobe), ivf.nlist)
    while m < ivf.nlist and sizes[ranked[:m]].sum() < need:
        m += 1
    rows = np.concatenate([np.arange(ivf.starts[c], ivf.starts[c + 1]) for c in ranked[:m]])
    rows = np.array([r for r in rows.tolist() if ivf.ids[r].item() not in excluded], np.int64)
    scores = ivf.vectors[rows] @ q
    order = np.argsort(-scores, kind="stable")[:k + 1]
    assert np.all(np.diff(scores[order]) < 0)  # no ties, up to the (k+1)th: one right answer
    order = order[:k]
    pad = k - len(order)
    return (np.concatenate([ivf.ids[rows[order]], index_mod.missing_ids(ivf.ids, (pad,))]),
            np.concatenate([scores[order], np.full(pad, -np.inf, np.float32)]), m)


@pytest.mark.parametrize("string_ids", [False, True])
def test_search_equals_a_numpy_scan_of_the_probed_lists(string_ids):
    """faiss's scan returns, row for row (ids and scores), what a numpy scan of the same probed lists returns:
    without exclusions, with exclusions in and out of the probed lists, with more lists probed than nprobe, and
    padded. Integer-valued vectors and queries, so every inner product is exact in float32 whatever the order of
    summation (|score| < 2^24)."""
    rng = np.random.default_rng(4)
    n, d, k = 2000, 16, 30
    vecs = rng.integers(-1000, 1001, (n, d)).astype(np.float32)
    ids = np.array([f"item-{i}" for i in range(n)]) if string_ids else np.arange(n, dtype=np.int64) * 3 + 1
    ivf = IvfIndex(ids, vecs, nlist=40, nprobe=3)
    q = rng.integers(-1000, 1001, (6, d)).astype(np.float32)
    unknown = {"no-such-item"} if string_ids else {-5, 10**12}
    top = [_numpy_scan(ivf, x, k)[0] for x in q]
    keep = set(rng.choice(ids, 10, replace=False).tolist())
    exclude = [set(), set(top[1][::2].tolist()) | unknown,  # every other of its best, and unknown ids
               set(rng.choice(ids, 400, replace=False).tolist()),  # 400 anywhere: more lists probed
               set(ids.tolist()) - keep,  # all but 10: every list probed, then padding
               set(), {top[5][0]}]
    got_ids, got_scores = ivf.search(q, k)
    for row, x in enumerate(q):
        want_ids, want_scores, m = _numpy_scan(ivf, x, k)
        np.testing.assert_array_equal(got_ids[row], want_ids)
        np.testing.assert_array_equal(got_scores[row], want_scores)
    got_ids, got_scores = ivf.search(q, k, exclude)
    probed = []
    for row, x in enumerate(q):
        want_ids, want_scores, m = _numpy_scan(ivf, x, k, exclude[row])
        np.testing.assert_array_equal(got_ids[row], want_ids)
        np.testing.assert_array_equal(got_scores[row], want_scores)
        probed.append(m)
    assert probed[0] == probed[4] == 3 and probed[2] > 3 and probed[3] == ivf.nlist
    assert set(got_ids[3, :10].tolist()) == keep and np.all(got_scores[3, 10:] == -np.inf)
    assert np.all(got_ids[3, 10:] == ("" if string_ids else -1))


def test_deterministic_under_seed(catalogue):
    ids, vecs, queries = catalogue
    sub_ids, sub = ids[:8000], vecs[:8000]
    a, b, c = IvfIndex(sub_ids, sub, seed=7), IvfIndex(sub_ids, sub, seed=7), IvfIndex(sub_ids, sub, seed=8)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    np.testing.assert_array_equal(a.ids, b.ids)
    got_a, scores_a = a.search(queries["mixture"], 100)
    got_b, scores_b = b.search(queries["mixture"], 100)
    np.testing.assert_array_equal(got_a, got_b)
    np.testing.assert_array_equal(scores_a, scores_b)
    assert not np.array_equal(a.centroids, c.centroids)  # the seed does matter


def test_build_index_kinds(monkeypatch, catalogue):
    ids, vecs, _ = catalogue
    ids, vecs = ids[:3000], vecs[:3000]
    assert build_index(ids, vecs).kind == "exact"
    monkeypatch.setattr(index_mod, "EXACT_MAX_ITEMS", 2999)
    index = build_index(ids, vecs)
    assert index.kind == "ivf" and len(index) == 3000 and index.vectors.shape == (3000, D)
    monkeypatch.setattr(index_mod, "EXACT_MAX_ITEMS", 3000)
    assert build_index(ids, vecs, "auto").kind == "exact"
    assert build_index(ids, vecs, "ivf").kind == "ivf"
    assert build_index(ids, vecs, "hnsw").kind == "hnsw"
    with pytest.raises(AutofeatError, match="auto, exact, ivf, hnsw"):
        build_index(ids, vecs, "annoy")
    with pytest.raises(AutofeatError, match="materialize"):
        build_index(np.zeros(0, np.int64), np.zeros((0, 4), np.float32), "ivf")


def _with_tail(catalogue, covered: int = 700, tail: int = 12):
    """The catalogue's first 8,000 items plus a tail block (the item-item term's) that only the first ``covered``
    hold (zeros for the rest), and queries with a tail of their own."""
    ids, vecs, queries = catalogue
    rng = np.random.default_rng(5)
    block = np.zeros((8000, tail), np.float32)
    block[:covered] = rng.normal(0, 0.5, (covered, tail))
    q = np.concatenate([queries["mixture"][:20], rng.normal(0, 1.0, (20, tail)).astype(np.float32)], axis=1)
    return ids[:8000], np.concatenate([vecs[:8000], block], axis=1), q


@pytest.mark.parametrize("kind", ["exact", "ivf"])
def test_split_index_equals_one_index_over_every_dimension(catalogue, kind):
    """The item-item block's items scored exactly, the rest over the dimensions before it: brute force's top K
    over all dimensions (ivf probing every list), exclusions included, ids and scores."""
    ids, vecs, q = _with_tail(catalogue)
    split = build_index(ids, vecs, kind, tail=12)
    assert len(split) == 8000 and len(split.side) == 700 and len(split.main) == 7300
    assert split.kind == f"{kind} + exact over 700 item-item items"
    assert split.main.vectors.shape[1] == D  # the block is not searched for the items without it
    if kind == "ivf":
        split.main.nprobe = split.main.nlist
    exact = ExactIndex(ids, vecs)
    want_ids, want_scores = exact.search(q, 100)
    got_ids, got_scores = split.search(q, 100)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5, atol=1e-5)
    # the block decides: some of the top 100 are side items that would not be there without it
    assert np.isin(got_ids, ids[:700]).any() and not np.isin(got_ids, ids[:700]).all()
    exclude = [set(want_ids[i, ::3].tolist()) for i in range(len(q))]
    np.testing.assert_array_equal(split.search(q, 100, exclude)[0], exact.search(q, 100, exclude)[0])


def test_split_index_pads_and_keeps_string_ids(catalogue):
    ids, vecs, q = _with_tail(catalogue, covered=3)
    names = np.array([f"item-{i}" for i in range(20)])
    split = build_index(names, vecs[:20], "exact", tail=12)  # 3 side items, 17 main items of longer names
    got, scores = split.search(q[:2], 25)
    assert got.shape == (2, 25) and sorted(got[0, :20].tolist()) == sorted(names.tolist())
    assert np.all(got[:, 20:] == "") and np.all(scores[:, 20:] == -np.inf)
    np.testing.assert_array_equal(got[:, :20], ExactIndex(names, vecs[:20]).search(q[:2], 20)[0])
    # every item or no item holds the block: one plain index over every dimension
    assert build_index(ids[:3], vecs[:3], "exact", tail=12).kind == "exact"
    assert build_index(ids[5000:], vecs[5000:], "exact", tail=12).vectors.shape[1] == D + 12
