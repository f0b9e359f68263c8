"""Search's pure logic: the score fusion, the candidates' two-tower scores, the raw query string's UTF-8 check."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from feast_autofeat.models.base import SchemaError
from feast_autofeat.recommend.search import fuse, standardize, user_scores
from feast_autofeat.recommend.service import check_utf8


def test_standardize_and_fuse():
    x = np.array([1.0, 2.0, 3.0, 6.0])
    z = standardize(x)
    assert z.mean() == pytest.approx(0) and z.std() == pytest.approx(1)
    np.testing.assert_allclose(z, (x - 3.0) / np.sqrt(3.5))
    np.testing.assert_array_equal(standardize(np.full(5, 0.7)), np.zeros(5))  # a constant row: no signal
    text = np.array([0.9, 0.8, 0.7, 0.1])
    user = np.array([-1.0, 0.0, 5.0, 9.0])
    np.testing.assert_allclose(fuse(text, None, 2.0), standardize(text))  # no user: text alone
    np.testing.assert_allclose(fuse(text, user, 0.0), standardize(text))
    np.testing.assert_allclose(fuse(text, user, 0.5), standardize(text) + 0.5 * standardize(user))
    # the weight trades the text order for the user's: weight 0 keeps text's, a large one takes the user's
    assert np.argmax(fuse(text, user, 0.0)) == 0 and np.argmax(fuse(text, user, 100.0)) == 3
    # candidates without a two-tower score sit at the known ones' average (z = 0) and never get NaN
    known = np.array([True, True, False, True])
    got = fuse(text, np.array([-1.0, 0.0, np.nan, 9.0]), 1.0, known)
    z = np.zeros(4)
    z[known] = standardize(np.array([-1.0, 0.0, 9.0]))
    np.testing.assert_allclose(got, standardize(text) + z)
    assert np.isfinite(fuse(text, user, 1.0, np.zeros(4, bool))).all()


@pytest.mark.parametrize("ids", [np.array([3, 7, 11]), np.array(["a", "k", "z"])])
def test_user_scores_of_candidates(ids):
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
    query = np.array([2.0, 3.0], np.float32)
    candidates = np.array([ids[2], ids[0], ids[1]])
    scores, known = user_scores(ids, vectors, candidates, query)
    np.testing.assert_allclose(scores, [5.0, 2.0, 3.0])
    assert known.all()
    new = np.array([99 if ids.dtype.kind == "i" else "new", ids[1]])
    scores, known = user_scores(ids, vectors, new, query)  # a text-only item: no two-tower vector
    assert known.tolist() == [False, True] and scores.tolist() == [0.0, 3.0]


def test_raw_query_must_be_utf8():
    check_utf8(b"q=caf%C3%A9&user_id=1", "q")
    check_utf8(b"user_id=%FF", "q")  # another field's bytes are not q's concern
    check_utf8(b"q=star+trek", "q")
    for raw in (b"q=%FF", b"user_id=1&q=ab%C3", b"q=%ED%A0%80"):  # bad byte, cut sequence, a surrogate
        with pytest.raises(SchemaError, match="^q is not valid UTF-8"):
            check_utf8(raw, "q")


def test_search_table_ranks_each_row_as_defined():
    from feast_autofeat.recommend.search_eval import (
        PERSONALIZED,
        bm25_scores,
        personalized_scores,
        search_table,
        target_rank,
    )

    scores = np.array([0.5, 0.9, 0.1, 0.7])
    assert target_rank(scores, 0, np.array([], np.int64)) == 2  # 0.9 and 0.7 above it
    assert target_rank(scores, 0, np.array([1])) == 1  # a known item does not count
    assert target_rank(np.array([0.5, -np.inf]), 1, np.array([], np.int64)) > 10**6  # never returned
    # personalized: only the best `candidates` by text (known items left out) are ranked, by the fused score
    text, user = np.array([0.9, 0.8, 0.7, 0.1]), np.array([0.0, 1.0, 2.0, 9.0])
    got = personalized_scores(text, user, np.array([0]), 2.0, candidates=2)
    assert np.isneginf(got[[0, 3]]).all()  # 0 is known, 3 is not among the two text candidates
    np.testing.assert_allclose(got[[1, 2]], fuse(text[[1, 2]], user[[1, 2]], 2.0))
    assert got[2] > got[1]  # the user prefers item 2 enough to lift it over item 1's better text

    items = ["star trek generations. sci-fi", "romantic comedy. romance", "space war. sci-fi, war"]
    lexical = bm25_scores(items, ["sci-fi war", "cooking"])
    assert lexical[0, 2] > lexical[0, 0] > 0 and lexical[0, 1] == 0 and not lexical[1].any()

    # two users, three items: user 0 searches "war" for item 2, user 1 "romance" for item 1
    vectors = np.eye(3, dtype=np.float32)
    encode = {"war": [0.2, 0.0, 1.0], "romance": [0.0, 1.0, 0.1]}
    pairs = pd.DataFrame({"user": [0, 1], "target": [2, 1], "query": ["war", "romance"]})
    two_tower = np.array([[3.0, 2.0, 1.0], [0.0, 1.0, 5.0]])
    table = search_table(pairs, vectors, lambda qs: np.array([encode[q] for q in qs], np.float32),
                         lambda qs: bm25_scores(items, qs), two_tower, [np.zeros(0, np.int64)] * 2,
                         weights=(0.5,), candidates=3)
    rows = table["rows"]
    assert rows["text embedding"]["recall@20"]["mean"] == 1.0 and rows["text embedding"]["ndcg@10"]["mean"] == 1.0
    # the two-tower alone ranks user 0's target last (rank 2) and user 1's second (rank 1)
    assert rows["two-tower (no query)"]["ndcg@10"]["mean"] == pytest.approx((1 / np.log2(4) + 1 / np.log2(3)) / 2)
    assert rows[PERSONALIZED]["ndcg@10"]["mean"] == 1.0
    assert rows["two-tower (no query)"]["personalized minus this"]["ndcg@10"]["mean"] == pytest.approx(
        1 - (1 / np.log2(4) + 1 / np.log2(3)) / 2)
    assert table["test_users"] == 2 and table["queries"] == 2


def test_the_cli_default_weight_is_the_librarys():
    from feast_autofeat.cli import build_parser
    from feast_autofeat.recommend.search import SEARCH_WEIGHT

    args = build_parser().parse_args(["serve", "--no-auth"])
    assert args.search_weight == SEARCH_WEIGHT


def test_the_cli_starts_without_torch():
    """Every `feast-autofeat` call imports the CLI first: importing torch there (2 s) cost the test suite about
    25 minutes of subprocesses once."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import sys, feast_autofeat.cli; print('torch' in sys.modules)"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stdout + out.stderr[-2000:]


def test_category_queries_from_categories_never_text():
    import pandas as pd

    from feast_autofeat.recommend.search_eval import category_queries

    items = pd.DataFrame({"item_id": [1, 2, 3, 4], "v__category": ["Running_Shoes", "books", "books", None],
                          "v__genre_film_noir": [1, 0, 0, 0], "v__genre_war": [1, 1, 0, 0],
                          "v__title": ["A", "B", "C", "D"], "v__price": [1.5, 2.0, 3.0, 4.0]})
    q = category_queries(items, ["v__category", "v__genre_film_noir", "v__genre_war", "v__title", "v__price"])
    # a string column shared by items and the set flags (their common prefix dropped); never a title (one value
    # per item) or a number; item 4 has no category: no query
    assert q.to_dict() == {1: "running shoes film noir war", 2: "books war", 3: "books"}
