"""``feast-autofeat quickstart``: synthetic data -> ``feast apply`` -> ``feast materialize`` -> online features
-> learned encoders and the two-tower recommender -> recommendations for a few users.

Runs Feast's real CLI in the feature repo, exactly as a user would, then reads the online store through
``FeatureStore.get_online_features``. Embedded only: DuckDB offline, SQLite online, no server.
"""

from __future__ import annotations

import time
from pathlib import Path

from feast_autofeat.datasets.synthetic import SyntheticConfig
from feast_autofeat.errors import RepoError
from feast_autofeat.prepare import prepare
from feast_autofeat.repo import feast_executable, run_feast  # noqa: F401 - Feast's CLI, as a user runs it

# a demo, not a benchmark: a few epochs each (early stopping would take a few minutes more on 2 cores)
QUICK_EPOCHS = {"dae": 5, "gan": 5, "multvae": 20, "two_tower": 5}
STEPS = 7
SEARCH = "running shoes"  # a query for the synthetic catalogue (its shoes include running shoes)


def run_quickstart(repo: Path, users: int = 2000, show: int = 5) -> None:
    t0 = time.perf_counter()
    if not (repo / "feature_store.yaml").exists():
        raise RepoError(f"{repo}/feature_store.yaml not found: run the quickstart from the feast-autofeat "
                        "checkout (it uses its feature_repo/), or pass --repo to a copy of it.")
    step, started = 0, t0

    def finished() -> None:  # each step's own time, then the running total: never one read as the other
        now = time.perf_counter()
        print(f"  (step {step}: {now - started:.0f}s; {now - t0:.0f}s since the start)", flush=True)

    def banner(text: str) -> None:
        nonlocal step, started
        if step:
            finished()
        step += 1
        started = time.perf_counter()
        print(f"\n[{step}/{STEPS}] {text}", flush=True)

    banner(f"feast-autofeat prepare --dataset synthetic --users {users} --repo {repo}")
    result = prepare("synthetic", repo, config=SyntheticConfig(users=users, items=max(100, users // 4)))
    m = result.manifest
    print("  " + ", ".join(f"{k}: {v:,}" for k, v in m.rows.items()))

    banner("feast apply  (it says which declared embeddings have no version yet: steps 5 and 7 train them)")
    run_feast(repo, "apply")

    start, end = m.materialize_window()
    banner(f"feast materialize {start} {end}")
    run_feast(repo, "materialize", start, end)

    banner("store.get_online_features(...) for the most active users")
    import pandas as pd
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(repo))
    events = pd.read_parquet(result.data_dir / "interactions", columns=["user_id"])
    top = events["user_id"].value_counts().index[:show].tolist()
    feats = ["user_profile:age", "user_profile:country", "user_behaviour:events_30d",
             "user_behaviour:purchase_30d", "user_behaviour:distinct_items_30d",
             "user_behaviour:days_since_last_event"]
    online = store.get_online_features(features=feats, entity_rows=[{"user_id": u} for u in top]).to_df()
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(online.round(2).to_string(index=False))
    banner("train encoders (DAE, GAN, Mult-VAE, item text) and the two-tower, deploy, backfill, feast materialize")
    from feast_autofeat.recommend.pipeline import build_recommender

    versions = build_recommender(repo, epochs=QUICK_EPOCHS, say=lambda m: print(f"  {m}", flush=True))
    # the request-time DAE view serves the stored DAE's model on raw request features: the same version
    from feast_autofeat.repo import Repo

    project = Repo(repo)
    dep = project.deployments()
    dep.deploy("request_dae", "dae", versions["user_dae"], live=True)
    dep.save()
    project.apply()
    print(f"  deployed request_dae {versions['user_dae']} (the DAE on raw request features), feast apply")

    banner("Recommender(repo).recommend(user_id, k=5) from the online store")
    from feast_autofeat.recommend.recommender import Recommender

    rec = Recommender(repo)
    items = pd.read_parquet(result.data_dir / "items.parquet").set_index("item_id")
    label = [c for c in ("title", "category") if c in items.columns]
    for user in top[:3] + [10**9]:
        r = rec.recommend(user, k=5)
        print(f"  user {user} [{r.source}, {r.history_items} known items]: {_shown(r.items, items, label)}")
    banner(f"search: the items' text view (live since step 5, else trained now), Recommender.search({SEARCH!r})")
    search(repo, project, start, end, top[0], items, label)
    finished()
    print(f"\ndone in {time.perf_counter() - t0:.0f}s in all. Feature repo: {repo}; try "
          f"`feast-autofeat serve --repo {repo} --no-auth` (this machine only; then http://127.0.0.1:8000/docs), "
          f"`cd {repo} && feast feature-views list`, or see the README.")


def search(repo: Path, project, start: str, end: str, user, items, label: list[str]) -> None:
    """Train (copy the encoder), deploy and materialize the repo's text view of the items unless step 5 did (the
    two-tower reads it), then search as nobody and as ``user``; says what to install or declare when the repo or
    the environment has no text."""
    from feast_autofeat.feast.deployments import view_name
    from feast_autofeat.models.text import EXTRA, installed
    from feast_autofeat.recommend.recommender import Recommender
    from feast_autofeat.recommend.search import item_text_view
    from feast_autofeat.repo import run_feast
    from feast_autofeat.training import train

    view = item_text_view(project.reload(), project.two_tower())
    if view is None:
        print("  skipped: the repo declares no text_embedding_view of the items (the prepared data has no item "
              "text columns)")
        return
    if not installed():
        print(f"  skipped: text views need the text extra: `{EXTRA}`, then run the quickstart again")
        return
    name = view.name
    dep = project.deployments()
    version = dep.live(name)
    if version:  # the two-tower reads the items' text: step 5 trained, deployed and materialized it
        print(f"  {name} {version} is live (step 5: the two-tower's candidate tower reads it)")
    else:
        version = train(project, name).version
        dep.deploy(name, "text", version, live=True)
        dep.save()
        project.apply()
        run_feast(repo, "materialize", "-v", view_name(name, version), start, end)
        print(f"  trained, deployed and materialized {name} {version}")
    print("  (all-MiniLM-L6-v2; queries through onnxruntime when installed)")
    rec = Recommender(repo)
    for who in (None, user):
        r = rec.search(SEARCH, user_id=who, k=5)
        print(f"  {'no user' if who is None else f'user {who}'} [{r.source}]: {_shown(r.items, items, label)}")


def _shown(ids, items, label: list[str]) -> str:
    """``id (title/category), ...`` for printing a list of items."""
    return ", ".join(f"{i} ({'/'.join(str(items.loc[i, c]) for c in label)})" if i in items.index else str(i)
                     for i in ids)
