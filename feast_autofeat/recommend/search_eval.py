"""Personalized product search, evaluated as in Van Gysel et al. (2016) and Ai et al. (2017): every test
interaction becomes a search whose query is built from the target item's category path or genres (never its own
title), whose answer is that item, and whose user's history is what the store knew before the test period.

Rows, each ranked over the whole catalogue minus the user's known items (ties broken at random, seeded):

- ``BM25``: Okapi BM25 (``bm25s``) over the items' text;
- ``text embedding``: cosine of the query's and the items' text vectors (no user);
- ``two-tower (no query)``: the user's recommendations, the query ignored;
- ``personalized search``: ``recommend.search``'s ranking: the ``candidates`` items nearest by text, ordered by
  ``z(text) + weight * z(two-tower)``; items outside the candidates are never returned.

Metrics per test user (the mean over their test interactions, so heavy users do not dominate), then mean,
standard error and each row's paired difference from personalized search over the same users.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from feast_autofeat.errors import AutofeatError
from feast_autofeat.evaluation import mean_se
from feast_autofeat.recommend.search import CANDIDATES, SEARCH_WEIGHT, fuse

PERSONALIZED = "personalized search"
ROWS = ("BM25", "text embedding", "two-tower (no query)", PERSONALIZED)
K_RECALL, K_NDCG = 20, 10


def bm25_scores(item_texts: list[str], queries: list[str]) -> np.ndarray:
    """(queries x items) BM25 scores (bm25s, English stop words, its default k1 and b)."""
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(item_texts, stopwords="en", show_progress=False), show_progress=False)
    out = np.zeros((len(queries), len(item_texts)), np.float32)
    for i, q in enumerate(queries):
        tokens = bm25s.tokenize([q], stopwords="en", show_progress=False, return_ids=False)[0]
        if tokens:
            out[i] = retriever.get_scores(tokens)
    return out


def target_rank(scores: np.ndarray, target: int, excluded: np.ndarray) -> int:
    """0-based rank of ``target`` among the items not ``excluded`` (-inf scores: never returned -> a large
    rank)."""
    if not np.isfinite(scores[target]):
        return np.iinfo(np.int32).max
    allowed = np.ones(len(scores), bool)
    allowed[excluded] = False
    return int(np.count_nonzero(allowed & (scores > scores[target])))


def personalized_scores(text: np.ndarray, user: np.ndarray, excluded: np.ndarray, weight: float,
                        candidates: int = CANDIDATES) -> np.ndarray:
    """``recommend.search``'s order as scores over the catalogue: the ``candidates`` best by text among the
    items not excluded, fused; every other item -inf."""
    masked = text.astype(np.float64).copy()
    masked[excluded] = -np.inf
    n = min(candidates, int(np.isfinite(masked).sum()))
    top = np.argpartition(-masked, n - 1)[:n]
    out = np.full(len(text), -np.inf)
    out[top] = fuse(text[top], user[top], weight)
    return out


def search_table(pairs: pd.DataFrame, item_text_vectors: np.ndarray, query_vectors: Callable, bm25: Callable,
                 user_scores: np.ndarray, known: list[np.ndarray], weights=(SEARCH_WEIGHT,), seed: int = 0,
                 candidates: int = CANDIDATES) -> dict:
    """The table. ``pairs``: test interactions as ``user`` (row of ``user_scores`` / ``known``), ``target`` (item
    position) and ``query``; ``item_text_vectors``: (items x d), unit rows; ``query_vectors(queries)``: their
    vectors; ``bm25(queries)``: (queries x items) scores; ``user_scores``: (users x items) two-tower scores;
    ``known[u]``: item positions user ``u`` already has. ``weights``: personalized search's two-tower weights to
    report (the first is the headline row)."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    jitter = rng.uniform(0, 1e-6, size=item_text_vectors.shape[0])  # random tie-breaking (BM25 zeros, equal scores)
    queries = sorted(pairs["query"].unique())
    qpos = {q: i for i, q in enumerate(queries)}
    cos = query_vectors(queries) @ item_text_vectors.T
    lexical = bm25(queries)
    names = list(ROWS[:3]) + [PERSONALIZED if i == 0 else f"{PERSONALIZED}, weight {w:g}"
                              for i, w in enumerate(weights)]
    ranks = {n: np.zeros(len(pairs), np.int64) for n in names}
    for j, (u, t, q) in enumerate(zip(pairs.user.to_numpy(), pairs.target.to_numpy(), pairs["query"].to_numpy())):
        excluded, text = known[u], cos[qpos[q]]
        ranks["BM25"][j] = target_rank(lexical[qpos[q]] + jitter, t, excluded)
        ranks["text embedding"][j] = target_rank(text + jitter, t, excluded)
        ranks["two-tower (no query)"][j] = target_rank(user_scores[u] + jitter, t, excluded)
        for name, w in zip(names[3:], weights):
            ranks[name][j] = target_rank(personalized_scores(text + jitter, user_scores[u], excluded, w, candidates),
                                         t, excluded)
    users = pairs.user.to_numpy()
    per_user = {}
    for name, r in ranks.items():
        frame = pd.DataFrame({"user": users, "recall@20": (r < K_RECALL).astype(float),
                              "ndcg@10": np.where(r < K_NDCG, 1.0 / np.log2(np.minimum(r, K_NDCG) + 2.0), 0.0)})
        per_user[name] = frame.groupby("user")[["recall@20", "ndcg@10"]].mean()
    table = {}
    head = per_user[PERSONALIZED]
    for name, values in per_user.items():
        row = {m: mean_se(values[m].to_numpy()) for m in ("recall@20", "ndcg@10")}
        if name != PERSONALIZED:  # personalized search minus this row, over the same users
            row["personalized minus this"] = {m: mean_se((head[m] - values[m]).to_numpy())
                                              for m in ("recall@20", "ndcg@10")}
        table[name] = row
    return {"rows": table, "test_users": int(len(head)), "test_interactions": int(len(pairs)),
            "queries": len(queries), "candidates": candidates, "weights": list(weights),
            "seconds": time.perf_counter() - t0}


# ---- the protocol inside ``feast-autofeat evaluate`` (any repo whose recommender's items have a text view)
MAX_QUERY_VALUES = 64  # a string item column with more distinct values is not a category path (brands, titles)


def category_queries(items: pd.DataFrame, columns) -> pd.Series:
    """Each item's query, from its categories alone (never its text): the values of its string columns of at
    most ``MAX_QUERY_VALUES`` distinct values and at most one per two items (a category, a department; not a
    title) and the names of its 0/1 columns that are set (genres: ``genre_film_noir`` -> "film noir", the prefix
    the flags share dropped), lower case, by ``item_id``; items without any: no query."""
    words = pd.Series([""] * len(items), index=items["item_id"].to_numpy(), dtype=object)
    flags = [c for c in columns if c in items and pd.api.types.is_numeric_dtype(items[c])
             and items[c].notna().all() and items[c].isin((0, 1)).all()]
    names = [c.split("__", 1)[-1] for c in flags]
    prefix = names[0].split("_", 1)[0] + "_" if names and all(n.startswith(names[0].split("_", 1)[0] + "_")
                                                                for n in names) else ""
    labels = [n.removeprefix(prefix).replace("_", " ") for n in names]
    for c in columns:
        col = items[c] if c in items else None
        if (col is not None and not pd.api.types.is_numeric_dtype(col)
                and col.nunique() <= min(MAX_QUERY_VALUES, len(items) // 2)):  # shared by items: not a title
            words = words + col.fillna("").astype(str).str.replace("_", " ").to_numpy() + " "
    for c, label in zip(flags, labels):
        words = words + np.where(items[c].to_numpy() == 1, label + " ", "")
    words = words.str.strip().str.lower().str.replace(r"\s+", " ", regex=True)
    return words[words != ""]


def search_pairs(targets, known, item_ids: np.ndarray, queries: pd.Series) -> tuple[pd.DataFrame, list]:
    """(``search_table``'s ``pairs``: one row per test target with a query, ``known``'s item positions per
    user): ``targets`` / ``known`` are Histories over ``item_ids``, ``queries`` each item's query by id."""
    pairs = pd.DataFrame({"user": np.repeat(np.arange(targets.n_users), targets.lengths), "target": targets.indices})
    pairs["query"] = queries.reindex(item_ids[pairs.target]).to_numpy()
    known_rows = [known.indices[known.indptr[u]:known.indptr[u + 1]] for u in range(known.n_users)]
    return pairs.dropna(subset=["query"]).reset_index(drop=True), known_rows


def repo_search_table(store, text_decl, version: str, item_key: str, items: pd.DataFrame, item_columns,
                      user_scores: np.ndarray, targets, known, seed: int = 0) -> dict:
    """The search table on an evaluation's test users: ``items`` the catalogue (``item_id`` plus the
    two-tower's item columns, which the queries come from), ``user_scores`` the shipped two-tower's scores over
    it, ``targets`` / ``known`` its protocol's Histories. The items' text: the text view's input columns, and its
    materialized vectors at ``version`` (the queries embedded by that version)."""
    from feast_autofeat.feast.deployments import view_name
    from feast_autofeat.feast.offline import latest_rows, registered_view
    from feast_autofeat.feast.runtime import load_encoder
    from feast_autofeat.ids import positions
    from feast_autofeat.models.text import compose_texts
    from feast_autofeat.recommend.health import latest_vectors

    item_ids = items["item_id"].to_numpy()
    ids, vectors = latest_vectors(store, view_name(text_decl.name, version), item_key)
    text_vectors = np.zeros((len(item_ids), vectors.shape[1]), np.float32)
    pos = positions(ids, item_ids)
    text_vectors[pos >= 0] = vectors[pos[pos >= 0]]
    frame = pd.DataFrame({item_key: item_ids})
    by_view: dict[str, list[str]] = {}
    for ref in text_decl.refs:
        view, feature = ref.split(":", 1)
        by_view.setdefault(view, []).append(feature)
    for view, features in by_view.items():
        rows = latest_rows(store, registered_view(store, view, f"text input of {text_decl.name}:"), item_key, features)
        frame = frame.merge(rows, on=item_key, how="left")
    texts = compose_texts(frame, [r.split(":", 1)[1] for r in text_decl.refs], text_decl.separator)
    pairs, known_rows = search_pairs(targets, known, item_ids, category_queries(items, item_columns))
    if pairs.empty:
        raise AutofeatError(f"search evaluation: no test item has a category to build its query from (string item "
                            f"columns of at most {MAX_QUERY_VALUES} values, or 0/1 columns such as genres); declare "
                            "one in the recommender's item views.")
    encoder = load_encoder(str(text_decl.root), "text", version).text
    table = search_table(pairs, text_vectors, encoder.encode_texts, lambda q: bm25_scores(texts, q), user_scores,
                         known_rows, seed=seed)
    return {**table, "query": "the target's categories (its string item columns shared by items, at most "
            f"{MAX_QUERY_VALUES} values; its set 0/1 columns)", "text_view": text_decl.name, "text_version": version}
