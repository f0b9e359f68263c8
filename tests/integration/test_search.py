"""Search on ML-100K through the real Feast CLI and Redis: the shared recommender repo (``rec_repo``) copied, a text
view of the films' titles and a query view declared, trained, deployed and materialized (only that view); then
``Recommender.search`` and ``GET /search`` checked against independent computations: the text snapshot's vectors
read from parquet, the query embedded by Feast's on-demand view, the two-tower's scores from ``recommend``."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import requests
from feast import FeatureStore
from test_foreign_repos import snapshots

from feast_autofeat.cli import main as cli
from feast_autofeat.models.base import SchemaError
from feast_autofeat.recommend.search import CANDIDATES, SearchUnavailable
from feast_autofeat.repo import run_feast
from tests.conftest import NOW, REDIS_YAML, serving

pytestmark = pytest.mark.integration
DECLARED = '''
from feast_autofeat import query_embedding_view, text_embedding_view

item_text = text_embedding_view("item_text", entity=item, inputs=[item_profile[["title"]]])
movie_search = query_embedding_view("movie_search", text_view=item_text)
'''
USERS = list(range(1, 21))
QUERIES = ["war", "romance", "horror"]


@pytest.fixture(scope="module")
def searched(rec_repo, rec_redis, tmp_path_factory):
    """(repo copy with a live, materialized text view, text version, Recommender on it, item titles by id)."""
    from datetime import datetime, timezone

    from feast_autofeat.recommend.recommender import Recommender

    repo = tmp_path_factory.mktemp("search") / "feature_repo"
    shutil.copytree(rec_repo[0], repo)
    with open(repo / "features.py", "a") as f:
        f.write(DECLARED)
    args = ["--repo", str(repo), "--feature-store-yaml", REDIS_YAML]
    assert cli(["train", "item_text", *args]) == 0
    assert cli(["deploy", "item_text", *args]) == 0
    version = next(p.name for p in (repo / "models" / "text").iterdir())
    run_feast(repo, "materialize", "-v", f"item_text__{version}", "1997-09-01T00:00:00", NOW, yaml=REDIS_YAML,
              capture=True)
    now = datetime.fromisoformat(NOW).replace(tzinfo=timezone.utc)
    rec = Recommender(repo, yaml=REDIS_YAML, clock=lambda: now)
    store = FeatureStore(repo_path=str(repo), fs_yaml_file=repo / REDIS_YAML)
    return repo, version, rec, store


def independent(repo, version, store, query: str) -> tuple[np.ndarray, np.ndarray]:
    """(item ids, each film's title-vector cosine to the query): the snapshot read from parquet, the query
    embedded by Feast's on-demand view."""
    snap = list(snapshots(repo, "item_text", version).values())[-1].sort_values("item_id")
    q = store.get_online_features(features=store.get_feature_service("movie_search"),
                                  entity_rows=[{"query": query}]).to_dict()["movie_search"][0]
    return snap.item_id.to_numpy(), np.stack(snap.embedding) @ np.asarray(q, np.float32)


def test_search_ranks_by_text_and_personalizes_by_the_two_tower(searched):
    repo, version, rec, store = searched
    titles = store.get_online_features(features=["item_profile:title"],
                                       entity_rows=[{"item_id": i} for i in range(1, 1683)]).to_dict()["title"]

    # text only: the top 5 are the films whose title vectors are nearest the query's, computed independently
    found = rec.search("star trek", k=5)
    ids, cos = independent(repo, version, store, "star trek")
    assert found.source == "text" and found.text_version == version and found.model_version is None
    assert found.items == ids[np.argsort(-cos, kind="stable")[:5]].tolist()
    assert sum("Star Trek" in titles[i - 1] for i in found.items) >= 3, [titles[i - 1] for i in found.items]
    # an unknown user is answered by text alone, exactly as no user
    assert rec.search("star trek", user_id=999_999, k=5).to_dict() == {**found.to_dict(), "user_id": 999_999}

    # personalized: against the user's own recommendation scores and the independent text similarities
    gains_rec, gains_text, lists = [], [], {}
    for query in QUERIES:
        ids, cos = independent(repo, version, store, query)
        by_cos = dict(zip(ids.tolist(), cos.tolist()))
        for user in USERS:
            personal = rec.search(query, user_id=user, k=10, exclude_seen=True)
            text = rec.search(query, user_id=user, k=10, exclude_seen=True, weight=0)
            recs = rec.recommend(user, k=len(rec.index))  # every film the user has not seen, scored
            score = dict(zip(recs.items, recs.scores))
            assert personal.source == "personalized" and personal.model_version == rec.version
            assert text.source == "text" and len(personal.items) == len(text.items) == 10
            assert not set(personal.items) - set(score), "a seen film was returned with exclude_seen"
            # every result is among the query's text candidates (the unseen films nearest by title)
            unseen = [i for i in ids.tolist() if i in score]
            candidates = set(sorted(unseen, key=lambda i: -by_cos[i])[:CANDIDATES])
            assert set(personal.items) <= candidates
            gains_rec.append(np.mean([score[i] for i in personal.items]) - np.mean([score[i] for i in text.items]))
            gains_text.append(np.mean([by_cos[i] for i in personal.items])
                              - np.mean([by_cos[i] for i in recs.items[:10]]))
            lists.setdefault(query, set()).add(tuple(personal.items))
    gains_rec, gains_text = np.array(gains_rec), np.array(gains_text)
    # the user's term lifts the two-tower score over text search, and the query keeps the results on topic
    # compared with the user's plain recommendations: for (nearly) every user and query
    assert (gains_rec > 0).mean() >= 0.9 and gains_rec.mean() > 0, gains_rec
    assert (gains_text > 0).mean() >= 0.9 and gains_text.mean() > 0, gains_text
    assert all(len(v) >= len(USERS) // 2 for v in lists.values()), {q: len(v) for q, v in lists.items()}

    # defined behaviour: bad queries and k name the field, never echo the query
    for bad in ("", "   ", "x" * 1001, b"\xff\xfe", 42):
        with pytest.raises(SchemaError, match=r"\bq\b") as err:
            rec.search(bad, user_id=1)
        assert "xxxxxxxx" not in str(err.value)
    with pytest.raises(SchemaError, match="k must be"):
        rec.search("war", k=0)


def test_search_over_http(searched, rec_redis):
    repo, version, rec, _ = searched
    with serving(repo, rec_redis.url) as url:
        ok = requests.get(f"{url}/search", params={"q": "star trek", "user_id": "1", "k": 5}, timeout=30)
        assert ok.status_code == 200, ok.text
        body = ok.json()
        assert body["source"] == "personalized" and body["text_version"] == version and len(body["items"]) == 5
        same = rec.search("star trek", user_id=1, k=5)  # the same answer as in process (another process: floats
        assert body["items"] == same.items and np.allclose(body["scores"], same.scores, atol=1e-4)  # to 1e-4)
        text = requests.get(f"{url}/search", params={"q": "star trek", "k": 5}, timeout=30).json()
        assert text["source"] == "text" and text["user_id"] is None
        for raw, field in (("q=%FF%FE", "q"), ("q=", "q"), ("q=%20%20", "q"), ("q=" + "x" * 1001, "q"),
                           ("q=war&user_id=abc", "user_id"), ("q=war&k=0", "k"), ("user_id=1", "q")):
            bad = requests.get(f"{url}/search?{raw}", timeout=30)
            assert bad.status_code == 422, (raw, bad.status_code)
            assert field in bad.text and "xxxxxxxx" not in bad.text, bad.text  # ids: echoed only short


def test_search_without_a_text_view_says_what_to_declare(recommender):
    with pytest.raises(SearchUnavailable, match="declares no text_embedding_view"):
        recommender.search("war")


# the bundled two-tower with the text view among its item inputs (declared before it: the same declaration as
# DECLARED's, which the fixture appended, repeats it identically)
WITH_TEXT = """from feast_autofeat import text_embedding_view
item_text = text_embedding_view("item_text", entity=item, inputs=[item_profile[["title"]]])
item_two_tower = two_tower("""


def test_a_film_added_after_training_is_placed_by_its_title(searched, tmp_path):
    """The two-tower declared with the text view among its item inputs: its version reads the text view's
    vectors (training and `feast materialize`), so two films added to the catalogue after training, with the
    same profile and different titles, get different candidate vectors, each what the model computes from its
    profile and its title's materialized vector (read back from the text view's snapshot)."""
    import pandas as pd

    from feast_autofeat.artifacts import load_version
    from feast_autofeat.models.two_tower import TwoTower

    source, text_version, _, _ = searched
    repo = tmp_path / "feature_repo"
    shutil.copytree(source, repo)
    code = (repo / "features.py").read_text()
    code = code.replace("item_two_tower = two_tower(", WITH_TEXT, 1)
    code = code.replace("[session_multvae]\n", "[session_multvae, item_text]\n", 1)
    assert code.count("[session_multvae, item_text]") == 1
    (repo / "features.py").write_text(code)
    args = ["--repo", str(repo), "--feature-store-yaml", REDIS_YAML]
    assert cli(["train", "item_two_tower", "--no-gate", "--epochs", "2", *args]) == 0
    version = max((repo / "models" / "two_tower").iterdir(), key=lambda p: p.stat().st_mtime).name
    config = load_version(repo / "models", "two_tower", version).config
    ref = f"item_text__{text_version}:embedding"
    assert config["item_vector_refs"] == {ref: "item_text__item_vectors"} and ref in config["feature_refs"]
    assert config["encoders"]["item_text"] == text_version
    assert cli(["deploy", "item_two_tower", "--version", version, *args]) == 0

    items = pd.read_parquet(repo / "data" / "items.parquet")
    film = items[items.item_id == 50].iloc[[0, 0]].reset_index(drop=True)  # Star Wars' profile, twice
    ts = [c for c in items.columns if pd.api.types.is_datetime64_any_dtype(items[c])]
    new = film.assign(item_id=[5001, 5002], title=["Star Trek: The Final Voyage (1998)", "Sleepless in Paris (1998)"],
                      **{c: pd.Timestamp("1998-04-22", tz="UTC") for c in ts})
    both = pd.concat([items, new.astype(items.dtypes.to_dict())], ignore_index=True)
    both.to_parquet(repo / "data" / "items.parquet")
    for view in (f"item_text__{text_version}", f"item_two_tower__{version}"):  # the text view first
        run_feast(repo, "materialize", "-v", view, "1998-04-21T00:00:00", NOW, yaml=REDIS_YAML, capture=True)

    store = FeatureStore(repo_path=str(repo), fs_yaml_file=repo / REDIS_YAML)
    online = store.get_online_features(features=[f"item_two_tower__{version}:embedding"],
                                       entity_rows=[{"item_id": i} for i in (5001, 5002)]).to_dict()["embedding"]
    got = np.asarray(online, np.float32)
    text = list(snapshots(repo, "item_text", text_version).values())[-1].set_index("item_id").embedding
    model = TwoTower.load(repo / "models", version)
    frame = new.rename(columns={c: f"item_profile__{c}" for c in new.columns if c != "item_id"})
    frame["item_text__item_vectors"] = [np.asarray(text.loc[i], np.float32) for i in (5001, 5002)]
    np.testing.assert_allclose(got, model.item_vectors(frame), atol=1e-5)
    assert float(got[0] @ got[1]) < 0.999  # same profile, different titles: different places
    # without its title (the training mean instead) a new film would land elsewhere
    blind = model.item_vectors(frame.drop(columns="item_text__item_vectors"))
    assert np.allclose(blind[0], blind[1], atol=1e-6) and not np.allclose(blind[0], got[0], atol=1e-3)
