"""The README's quickstart, end to end through the real CLIs, on a copy of feature_repo/."""

import subprocess
import sys

import pandas as pd
from feast import FeatureStore


def test_quickstart_prints_online_features(fresh_repo):
    proc = subprocess.run(
        [sys.executable, "-m", "feast_autofeat.cli", "quickstart", "--repo", str(fresh_repo), "--users", "300",
         "--show", "3"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for step in ("[1/7]", "[2/7] feast apply", "[3/7] feast materialize", "[4/7]", "[5/7] train encoders",
                 "[6/7] Recommender", "[7/7] search"):
        assert step in out
    # the three most active users are printed with the values the online store holds for them
    ev = pd.read_parquet(fresh_repo / "data" / "interactions")
    top = ev["user_id"].value_counts().index[:3].tolist()
    store = FeatureStore(repo_path=str(fresh_repo))
    online = store.get_online_features(features=["user_behaviour:events_30d"],
                                       entity_rows=[{"user_id": u} for u in top]).to_df()
    assert online["events_30d"].notna().all()
    table = out.split("[4/7]")[1].split("[5/7]")[0]
    for u, n in zip(online["user_id"], online["events_30d"]):
        assert any(line.split()[:1] == [str(u)] and str(int(n)) in line.split() for line in table.splitlines()), \
            f"user {u} with events_30d={n} not printed:\n{table}"
    # and it ends with recommendations: the same three users from the two-tower, an unknown one from popularity
    recs = out.split("[6/7]")[1].split("[7/7]")[0]
    for u in top:
        assert f"user {u} [two-tower" in recs
    assert "user 1000000000 [popularity, 0 known items]" in recs
    # and one search: by text alone, every hit a shoe (the items' own category, read from the prepared table);
    # personalized for the most active user, from the same query's candidates
    items = pd.read_parquet(fresh_repo / "data" / "items.parquet").set_index("item_id")
    lines = out.split("[7/7]")[1].splitlines()
    text = next(line for line in lines if line.strip().startswith("no user [text]: "))
    hits = [int(part.split(" (")[0]) for part in text.split(": ", 1)[1].split(", ")]
    assert len(hits) == 5 and (items.loc[hits, "category"] == "shoes").all(), text
    assert any(line.strip().startswith(f"user {top[0]} [personalized]: ") for line in lines), out[-2000:]
    # each step says its own time and the running total, apart; no third-party warning noise
    for k in range(1, 8):
        assert f"(step {k}: " in out and "s since the start)" in out, out[-2000:]
    assert "in all." in out.splitlines()[-1]
    for noise in ("DeprecationWarning", "experimental feature", "fetch_arrow_table"):
        assert noise not in proc.stdout + proc.stderr, (noise, proc.stderr[-3000:])
