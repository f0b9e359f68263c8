"""The item index: the project's numpy IVF (``IvfIndex``) against faiss-cpu's ``IndexIVFFlat``, in one run.

Issue: the item index uses a maintained ANN library (faiss-cpu's IVF) unless the hand-written numpy IVF is shown
faster at equal recall@100 in the same run; the brute-force check stays. This script is that check.

Catalogue: synthetic two-tower-like search vectors (``catalogue``): a 64-d unit "tower" vector per item (one of
1,682 prototype items plus noise, as ``recommend_latency.py`` replicates ML-100K's real item vectors to 1M),
then a unit category block (19 genres) and ``POPULARITY_SCALE`` x log popularity, as
``TwoTower.search_item_vectors`` appends them; so not unit length. Queries lie off the item manifold: a mixture
of 2-3 genre directions plus noise (as in tests/unit/test_index.py), then category and popularity weights.
(``recommend_latency.py``'s own generator needs a trained two-tower and Redis, and lives inside its ``main``.)

Indexes, all over the same vectors and the same number of lists (``default_nlist``):

- ``numpy_ivf``: ``IvfIndex``'s lists scanned in numpy (``numpy_scan``: its search before the scan moved to faiss,
  the results file's run) as ``build_index`` builds it (its own k-means on a seeded sample of 64 x nlist
  items, 8 iterations); BLAS threads as numpy's OpenBLAS has them (not limited by the project).
- ``faiss_ivf``: ``IndexIVFFlat(IndexFlatIP, METRIC_INNER_PRODUCT)`` trained on the same sample (8 k-means
  iterations, faiss's own inner-product clustering), ids added with ``add_with_ids``; faiss's OpenMP threads set
  with ``faiss.omp_set_num_threads`` to the machine's cores (what numpy's OpenBLAS uses).
- ``faiss_ivf_1thread``: the same index, ``omp_set_num_threads(1)``.
- ``faiss_ivf_l2_trained``: faiss alone, configured as ``IvfIndex`` works: ``faiss.Kmeans`` (L2, 8 iterations)
  on the same sample, items added to their L2-nearest centroid (``add_preassigned``), lists probed by inner
  product (an ``IndexFlatIP`` quantizer over those centroids). faiss's own IP clustering (``faiss_ivf``) puts an
  item in the list whose centroid has the largest inner product with it, not the nearest one: its lists are not
  neighbourhoods, and a query needs several times the lists for the same recall.
- ``faiss_same_lists``: faiss holding ``IvfIndex``'s centroids and its item-to-list assignment
  (``add_preassigned``): the same lists, so the same recall per nprobe (except where ``IvfIndex`` probes more
  lists than nprobe because those hold fewer than k items: tiny nprobe on small catalogues); isolates the scan.

Ground truth: brute force (``ExactIndex``, the check the issue keeps). For each nprobe of the sweep: recall@100
and batch-of-one latency (one query per call, as a request makes it): p50 / p99 over the queries in each round,
median over the rounds; the indexes interleaved within every round. Then, at equal recall: the smallest nprobe at
which each reaches recall@100 >= 0.95 / 0.98, and faiss's latency over numpy's there.

Exclusions are not measured: ``IvfIndex.search`` takes ``exclude`` lists (a user's seen items), which a faiss
index would take as ``SearchParametersIVF(sel=IDSelectorNot(IDSelectorBatch(...)))``; both searches here run
without them.

    python benchmarks/ann_index.py [--items 1000000] [--queries 300] [--rounds 3] [--out ann_index]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

import faiss
import numpy as np
from faiss.contrib.ivf_tools import add_preassigned
from threadpoolctl import threadpool_info

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CpuMonitor, percentiles_ms, save  # noqa: E402

from feast_autofeat.models.two_tower import POPULARITY_SCALE  # noqa: E402
from feast_autofeat.recommend.index import ExactIndex, IvfIndex, default_nlist, default_nprobe  # noqa: E402

K = 100
TARGETS = (0.95, 0.98)
NPROBES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
DIM, GENRES, PROTOTYPES = 64, 19, 1682  # tower size (TwoTowerConfig.dim), ML-100K's genres and items
CATEGORY_WEIGHT, POPULARITY_WEIGHT = 0.3, 1.0  # query-side weights of the two appended blocks


def catalogue(n: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, item search vectors, query search vectors), float32, seeded; see the module's docstring."""
    rng = np.random.default_rng(seed)
    genres = rng.normal(size=(GENRES, DIM)).astype(np.float32)
    genres /= np.linalg.norm(genres, axis=1, keepdims=True)
    multi_hot = np.zeros((PROTOTYPES, GENRES), np.float32)
    for p in range(PROTOTYPES):
        multi_hot[p, rng.choice(GENRES, rng.integers(1, 4), replace=False)] = 1.0
    protos = multi_hot @ genres / multi_hot.sum(1, keepdims=True)
    protos += rng.normal(0, 0.5 / np.sqrt(DIM), protos.shape).astype(np.float32)
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    units = multi_hot / np.linalg.norm(multi_hot, axis=1, keepdims=True)
    which = np.arange(n) % PROTOTYPES
    vecs = np.empty((n, DIM + GENRES + 1), np.float32)
    step = 200_000  # in chunks: the noise of 1M items at once is a second copy of the catalogue
    for s in range(0, n, step):
        w = which[s:s + step]
        tower = protos[w] + rng.normal(0, 0.35 / np.sqrt(DIM), (len(w), DIM)).astype(np.float32)
        vecs[s:s + step, :DIM] = tower / np.linalg.norm(tower, axis=1, keepdims=True)
        vecs[s:s + step, DIM:DIM + GENRES] = units[w]
    counts = rng.zipf(1.3, n).clip(max=10**6).astype(np.float64)  # long-tailed popularity
    logpop = np.log((counts + 1) / (counts.sum() + n))
    vecs[:, -1] = POPULARITY_SCALE * (logpop - logpop.mean())
    ids = np.arange(n, dtype=np.int64) * 7 + 3  # neither 0-based nor contiguous
    q = np.zeros((n_queries, DIM + GENRES + 1), np.float32)
    for i in range(n_queries):  # a user between tastes: off the item clusters
        mix = rng.choice(GENRES, rng.integers(2, 4), replace=False)
        q[i, :DIM] = rng.dirichlet(np.ones(len(mix))) @ genres[mix]
        recent = multi_hot[rng.choice(PROTOTYPES, 5)].mean(0)
        q[i, DIM:DIM + GENRES] = CATEGORY_WEIGHT * recent / max(np.linalg.norm(recent), 1e-6)
    q[:, :DIM] += rng.normal(0, 0.3 / np.sqrt(DIM), (n_queries, DIM)).astype(np.float32)
    q[:, :DIM] *= rng.uniform(2.0, 8.0, (n_queries, 1)).astype(np.float32)  # tower query norms vary
    q[:, -1] = POPULARITY_WEIGHT
    return ids, vecs, q


def training_sample(vectors: np.ndarray, nlist: int, seed: int = 0) -> np.ndarray:
    """The rows ``IvfIndex`` trains its k-means on (the same seeded draw as its constructor)."""
    rng = np.random.default_rng(seed)
    n = len(vectors)
    return vectors[np.sort(rng.choice(n, min(n, IvfIndex.SAMPLE_PER_LIST * nlist), replace=False))]


def faiss_ivf(ids: np.ndarray, vectors: np.ndarray, nlist: int, sample: np.ndarray, iters: int = 8):
    quantizer = faiss.IndexFlatIP(vectors.shape[1])
    index = faiss.IndexIVFFlat(quantizer, vectors.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter, index.cp.seed = iters, 0
    index.train(sample)
    index.add_with_ids(vectors, ids)
    return index


def faiss_ivf_l2_trained(ids: np.ndarray, vectors: np.ndarray, nlist: int, sample: np.ndarray, iters: int = 8):
    d = vectors.shape[1]
    km = faiss.Kmeans(d, nlist, niter=iters, seed=0)
    km.train(sample)
    nearest = faiss.IndexFlatL2(d)
    nearest.add(km.centroids)
    assign = nearest.search(vectors, 1)[1][:, 0].astype(np.int64)
    quantizer = faiss.IndexFlatIP(d)
    quantizer.add(km.centroids)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.is_trained = True
    add_preassigned(index, vectors, assign, ids=ids)
    return index


def faiss_same_lists(ivf: IvfIndex):
    """faiss over ``ivf``'s centroids and lists: every item in the list ``ivf`` stores it in."""
    d = ivf.vectors.shape[1]
    quantizer = faiss.IndexFlatIP(d)
    quantizer.add(ivf.centroids)
    index = faiss.IndexIVFFlat(quantizer, d, ivf.nlist, faiss.METRIC_INNER_PRODUCT)
    index.is_trained = True
    assign = np.repeat(np.arange(ivf.nlist, dtype=np.int64), np.diff(ivf.starts))
    add_preassigned(index, ivf.vectors, assign, ids=np.ascontiguousarray(ivf.ids, np.int64))
    return index


def faiss_list_sizes(index) -> np.ndarray:
    return np.array([index.invlists.list_size(i) for i in range(index.nlist)], np.int64)


def numpy_scan(ivf: IvfIndex, queries: np.ndarray, k: int, nprobe: int) -> np.ndarray:
    """``IvfIndex.search``'s scan as it was in numpy before it moved to faiss (no exclusions): the ``nprobe`` lists
    with the best centroid scores, each scored by one product, the best k kept; ids (queries x k)."""
    out = np.zeros((len(queries), k), ivf.ids.dtype)
    centroid_scores = queries @ ivf.centroids.T
    sizes = np.diff(ivf.starts)
    for row, q in enumerate(queries):  # per query, as a request makes it
        ranked = np.argsort(-centroid_scores[row], kind="stable")
        m = max(nprobe, int(np.searchsorted(np.cumsum(sizes[ranked]), k)) + 1)
        probe = np.sort(ranked[:m])
        first, last = ivf.starts[probe], ivf.starts[probe + 1]
        offset = np.concatenate([[0], np.cumsum(last - first)])
        scores = np.empty(offset[-1], np.float32)
        for a, b, o in zip(first.tolist(), last.tolist(), offset[:-1].tolist()):
            np.dot(ivf.vectors[a:b], q, out=scores[o:o + b - a])
        kk = min(k, len(scores))
        top = np.argpartition(-scores, kk - 1)[:kk] if kk < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]
        slot = np.searchsorted(offset, top, side="right") - 1
        out[row, :len(top)] = ivf.ids[first[slot] + top - offset[slot]]
    return out


def recall(got: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a.tolist()) & set(t.tolist())) / truth.shape[1] for a, t in zip(got, truth)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="ann_index", help="results/<out>.json")
    args = ap.parse_args()
    monitor = CpuMonitor()
    cores = faiss.omp_get_max_threads()  # the machine's cores, as OpenBLAS sees them too

    t0 = time.perf_counter()
    ids, vecs, queries = catalogue(args.items, args.queries)
    print(f"catalogue: {len(ids):,} items x {vecs.shape[1]} dims, {len(queries)} queries "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)

    t0 = time.perf_counter()
    exact = ExactIndex(ids, vecs)
    truth = np.concatenate([exact.search(queries[s:s + 50], K)[0] for s in range(0, len(queries), 50)])
    exact_s = time.perf_counter() - t0
    exact_lat = [time.perf_counter()]  # brute force per query, on a few queries (the check the issue keeps)
    for q in queries[:20]:
        exact.search(q[None, :], K)
        exact_lat.append(time.perf_counter())
    exact_ms = percentiles_ms(list(np.diff(exact_lat)))
    del exact
    print(f"brute force: {exact_s:.1f} s for the ground truth; p50 {exact_ms['p50_ms']:.1f} ms per query",
          flush=True)

    nlist = default_nlist(len(ids))
    builds = {}
    t0 = time.perf_counter()
    ours = IvfIndex(ids, vecs, nlist=nlist)
    builds["numpy_ivf"] = time.perf_counter() - t0
    sample = training_sample(vecs, nlist)
    faiss.omp_set_num_threads(cores)
    t0 = time.perf_counter()
    theirs = faiss_ivf(ids, vecs, nlist, sample)
    builds["faiss_ivf"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs_l2 = faiss_ivf_l2_trained(ids, vecs, nlist, sample)
    builds["faiss_ivf_l2_trained"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    same = faiss_same_lists(ours)
    builds["faiss_same_lists_add_only"] = time.perf_counter() - t0
    del vecs, sample
    print("build s: " + ", ".join(f"{k} {v:.1f}" for k, v in builds.items()), flush=True)

    def numpy_search(q, p):
        return numpy_scan(ours, q, K, p)

    def faiss_search(index, threads):
        def search(q, p):
            faiss.omp_set_num_threads(threads)
            index.nprobe = p
            return index.search(q, K)[1]
        return search

    variants = {"numpy_ivf": numpy_search, "faiss_ivf": faiss_search(theirs, cores),
                "faiss_ivf_1thread": faiss_search(theirs, 1), "faiss_ivf_l2_trained": faiss_search(theirs_l2, cores),
                "faiss_same_lists": faiss_search(same, cores)}
    sizes = {"numpy_ivf": np.diff(ours.starts), "faiss_ivf": faiss_list_sizes(theirs),
             "faiss_ivf_l2_trained": faiss_list_sizes(theirs_l2)}
    lists = {v: {"imbalance_factor": float(nlist * np.sum(z.astype(np.float64) ** 2) / np.sum(z) ** 2),
                 "largest": int(z.max()), "empty": int(np.sum(z == 0))} for v, z in sizes.items()}
    print("lists (imbalance factor, largest): " + ", ".join(
        f"{v} {x['imbalance_factor']:.2f} {x['largest']:,}" for v, x in lists.items()), flush=True)
    nprobes = [p for p in NPROBES if p <= nlist]
    sweep = {v: {} for v in variants}
    for v, fn in variants.items():  # recall (all queries at once: the same results as one by one)
        for p in nprobes:
            fn(queries[:1], p)  # sets nprobe and threads
            got = np.concatenate([fn(queries[s:s + 50], p) for s in range(0, len(queries), 50)])
            sweep[v][p] = {"nprobe": p, "recall@100": recall(got, truth), "rounds": []}
    t_sweep = time.perf_counter()
    for r in range(args.rounds):  # interleaved: every round times every index at every nprobe
        for p in nprobes:
            for v, fn in variants.items():
                fn(queries[:1], p)  # warm-up, and nprobe / threads set outside the timed calls
                lat = []
                for q in queries:
                    q1 = q[None, :]
                    t = time.perf_counter()
                    fn(q1, p)
                    lat.append(time.perf_counter() - t)
                sweep[v][p]["rounds"].append(percentiles_ms(lat))
        print(f"round {r + 1}/{args.rounds} done ({time.perf_counter() - t_sweep:.0f} s)", flush=True)
    for v in sweep:
        for row in sweep[v].values():
            row["p50_ms"] = statistics.median(x["p50_ms"] for x in row["rounds"])
            row["p99_ms"] = statistics.median(x["p99_ms"] for x in row["rounds"])
            row["mean_ms"] = statistics.median(x["mean_ms"] for x in row["rounds"])

    print(f"\n{len(ids):,} items, nlist {nlist}, {len(queries)} queries x {args.rounds} rounds, k={K}, "
          f"batch of one; ms = median over rounds")
    print("nprobe | " + " | ".join(f"{v:>26}" for v in variants))
    print("       | " + " | ".join(f"{'recall   p50    p99':>26}" for _ in variants))
    for p in nprobes:
        print(f"{p:>6} | " + " | ".join(
            f"{sweep[v][p]['recall@100']:>10.3f} {sweep[v][p]['p50_ms']:6.2f} {sweep[v][p]['p99_ms']:6.2f}"
            for v in variants))

    equal = {}
    for target in TARGETS:
        points = {}
        for v in variants:
            hit = next((sweep[v][p] for p in nprobes if sweep[v][p]["recall@100"] >= target), None)
            points[v] = None if hit is None else {k: hit[k] for k in ("nprobe", "recall@100", "p50_ms", "p99_ms")}
        base = points["numpy_ivf"]
        for v in variants:
            if v != "numpy_ivf" and base and points[v]:
                points[v]["p50_over_numpy"] = points[v]["p50_ms"] / base["p50_ms"]
                points[v]["p99_over_numpy"] = points[v]["p99_ms"] / base["p99_ms"]
        equal[f"recall@100>={target}"] = points
        print(f"\nrecall@100 >= {target}: smallest nprobe reaching it")
        for v, pt in points.items():
            if pt is None:
                print(f"  {v:>18}: not reached up to nprobe {nprobes[-1]}")
                continue
            ratio = (f"; faiss/numpy p50 {pt['p50_over_numpy']:.2f}x p99 {pt['p99_over_numpy']:.2f}x"
                     if "p50_over_numpy" in pt else "")
            print(f"  {v:>18}: nprobe {pt['nprobe']:>3} recall {pt['recall@100']:.3f} p50 {pt['p50_ms']:.2f} ms "
                  f"p99 {pt['p99_ms']:.2f} ms{ratio}")

    verdict = {}
    for target, points in equal.items():
        base = points["numpy_ivf"]
        for v in ("faiss_ivf", "faiss_ivf_l2_trained"):
            other = points[v]
            if base and other:
                faster = base["p99_ms"] < other["p99_ms"] and base["p50_ms"] < other["p50_ms"]
                verdict[f"{target} numpy_ivf vs {v}"] = "numpy_ivf faster" if faster else f"{v} faster or equal"
            else:
                verdict[f"{target} numpy_ivf vs {v}"] = "not comparable (target not reached)"
    print("\nverdict (p50 and p99 at the smallest nprobe reaching the recall):")
    for key, said in verdict.items():
        print(f"  {key}: {said}")

    try:
        faiss_version = metadata.version("faiss-cpu")
    except metadata.PackageNotFoundError:
        faiss_version = faiss.__version__
    result = {
        "items": len(ids), "dims": queries.shape[1], "queries": len(queries), "rounds": args.rounds, "k": K,
        "nlist": nlist, "default_nprobe": default_nprobe(nlist),
        "catalogue": "synthetic two-tower-like (see catalogue() in benchmarks/ann_index.py); queries off the "
                     "item manifold",
        "exclusions": "not measured: both searched without exclude lists",
        "threads": {"faiss_omp": cores, "faiss_ivf_1thread_omp": 1,
                    "numpy_blas": [{k: i.get(k) for k in ("internal_api", "num_threads", "version")}
                                   for i in threadpool_info()]},
        "faiss_cpu": faiss_version,
        "build_seconds": builds, "lists": lists, "brute_force": {"ground_truth_s": exact_s, "per_query": exact_ms},
        "sweep": {v: list(rows.values()) for v, rows in sweep.items()},
        "equal_recall": equal, "verdict": verdict, "cpu": monitor.report()}
    print(f"saved {save(args.out, result)}")


if __name__ == "__main__":
    main()
