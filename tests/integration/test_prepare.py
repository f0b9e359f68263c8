"""`feast-autofeat prepare` on real MovieLens 100K and on synthetic data, through the CLI."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from feast_autofeat.cli import main
from feast_autofeat.datasets.base import table_path
from feast_autofeat.datasets.movielens import GENRES


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "feast_autofeat.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for cmd in ("prepare", "quickstart"):
        assert cmd in out


def test_movielens_tables(ml_repo, ml100k_dir):
    data = ml_repo / "data"
    ev = pd.read_parquet(data / "interactions")
    users = pd.read_parquet(data / "users.parquet")
    items = pd.read_parquet(data / "items.parquet")
    assert (len(ev), len(users), len(items)) == (100_000, 943, 1_682)
    assert list(ev.columns) == ["user_id", "item_id", "event_type", "rating", "event_timestamp"]
    assert str(ev["event_timestamp"].dt.tz) == "UTC"
    raw = pd.read_csv(ml100k_dir / "u.data", sep="\t", names=["user_id", "item_id", "raw_rating", "unix"])
    merged = ev.merge(raw, on=["user_id", "item_id"])
    assert len(merged) == 100_000
    assert (merged["rating"] == merged["raw_rating"]).all()
    unix = (merged["event_timestamp"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    assert (unix == merged["unix"]).all()
    # a user is created with their first rating
    first = ev.groupby("user_id")["event_timestamp"].min()
    assert (users.set_index("user_id")["created_timestamp"] == first).all()
    toy = items.set_index("item_id").loc[1]
    assert (toy["title"], toy["release_year"]) == ("Toy Story (1995)", 1995)
    assert toy[[f"genre_{g}" for g in GENRES]].astype(int).tolist() == [0, 0, 0, 1, 1, 1] + [0] * 13
    assert pd.isna(items.set_index("item_id").loc[267, "release_year"])  # "unknown" movie has no date
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["dataset"] == "movielens-100k" and manifest["rows"]["interactions"] == 100_000


def _raw_copy(src, dst, drop=None):
    dst.mkdir()
    for name in ("u.data", "u.user", "u.item"):
        if name != drop:
            shutil.copy(src / name, dst / name)
    return dst


def _existing_repo(tmp_path):
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "manifest.json").write_text('{"previous": true}')
    return repo


@pytest.mark.parametrize("missing", ["u.data", "u.user", "u.item"])
def test_missing_file_fails_and_leaves_nothing_behind(tmp_path, ml100k_dir, capsys, missing):
    raw = _raw_copy(ml100k_dir, tmp_path / "raw", drop=missing)
    repo = _existing_repo(tmp_path)
    rc = main(["prepare", "--dataset", "movielens-100k", "--data-dir", str(raw), "--repo", str(repo)])
    assert rc != 0
    err = capsys.readouterr().err
    assert str(raw / missing) in err and "is missing" in err
    # the previous data is untouched and no staging directory is left over
    assert (repo / "data" / "manifest.json").read_text() == '{"previous": true}'
    assert sorted(p.name for p in repo.iterdir()) == ["data"]


def test_corrupt_file_is_named(tmp_path, ml100k_dir, capsys):
    raw = _raw_copy(ml100k_dir, tmp_path / "raw")
    with open(raw / "u.data", "a") as f:
        f.write("12\tnot-a-number\t3\t881250949\n")
    repo = _existing_repo(tmp_path)
    rc = main(["prepare", "--dataset", "movielens-100k", "--data-dir", str(raw), "--repo", str(repo)])
    assert rc != 0
    assert "u.data" in capsys.readouterr().err
    assert sorted(p.name for p in repo.iterdir()) == ["data"]


def test_synthetic_cli_is_deterministic(tmp_path, capsys):
    args = ["prepare", "--dataset", "synthetic", "--users", "200", "--items", "80", "--days", "20",
            "--events", "5000", "--seed", "11"]
    assert main(args + ["--repo", str(tmp_path / "a")]) == 0
    assert main(args + ["--repo", str(tmp_path / "b")]) == 0
    assert "interactions" in capsys.readouterr().out
    for name in ("interactions", "users", "items", "user_behaviour", "item_popularity", "user_recent_items"):
        a = pd.read_parquet(table_path(tmp_path / "a" / "data", name))  # the event log: a directory of parts
        b = pd.read_parquet(table_path(tmp_path / "b" / "data", name))
        pd.testing.assert_frame_equal(a, b)
    manifest = json.loads((tmp_path / "a" / "data" / "manifest.json").read_text())
    assert manifest["rows"]["interactions"] == 5000 and manifest["params"]["seed"] == 11


# ---- your own log: `prepare --interactions FILE --columns ...`
def _log_from_ml(ml100k_dir, n: int = 6000) -> pd.DataFrame:
    raw = pd.read_csv(ml100k_dir / "u.data", sep="\t", names=["user", "item", "rating", "unix"]).head(n)
    return pd.DataFrame({"customer": "u" + raw.user.astype(str), "product": "i" + raw.item.astype(str),
                         "stars": raw.rating, "unix": raw.unix})


def test_own_log_with_string_ids_iso_times_profiles_and_split(tmp_path, ml100k_dir, capsys):
    log = _log_from_ml(ml100k_dir)
    log["when"] = pd.to_datetime(log.unix, unit="s", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    dupes = log.head(3)
    pd.concat([log, dupes]).drop(columns="unix").to_csv(tmp_path / "events.csv", index=False)
    names = ["item", "title", "date", "video", "url"] + [f"g{i}" for i in range(19)]
    raw_items = pd.read_csv(ml100k_dir / "u.item", sep="|", names=names, encoding="latin-1")
    genres = raw_items[[f"g{i}" for i in range(19)]].to_numpy()
    items = pd.DataFrame({"product": "i" + raw_items["item"].astype(str), "title": raw_items.title,
                          "genres": ["|".join(GENRES[j] for j in np.flatnonzero(row)) for row in genres]})
    items.to_csv(tmp_path / "items.csv", index=False)
    raw_users = pd.read_csv(ml100k_dir / "u.user", sep="|", names=["user", "age", "gender", "job", "zip"])
    pd.DataFrame({"customer": "u" + raw_users.user.astype(str), "age": raw_users.age,
                  "gender": raw_users.gender}).to_parquet(tmp_path / "users.parquet")
    repo = tmp_path / "repo"
    rc = main(["prepare", "--repo", str(repo), "--interactions", str(tmp_path / "events.csv"),
               "--users", str(tmp_path / "users.parquet"), "--items", str(tmp_path / "items.csv"),
               "--columns", "user_id=customer,item_id=product,event_timestamp=when,rating=stars",
               "--split", "genres=|"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "3 exact duplicate rows dropped" in out and "ids: users string, items string" in out
    data = repo / "data"
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["keys"] == {"user": "string", "item": "string"} and manifest["params"]["duplicates_dropped"] == 3
    assert manifest["spec"]["positive"] == "rating >= 4"  # the top quarter of the 1-5 scale
    ev = pd.read_parquet(data / "interactions")
    assert len(ev) == len(log) and set(ev.user_id) == set(log.customer) and ev.user_id.map(type).eq(str).all()
    got = ev.merge(log, left_on=["user_id", "item_id"], right_on=["customer", "product"])
    unix = (got.event_timestamp - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    assert (unix == got.unix).all() and (got.rating == got.stars).all()
    # items: every logged item, genres as 0/1 categories; users: the profile columns, every logged user
    prepared_items = pd.read_parquet(data / "items.parquet").set_index("item_id")
    assert set(log["product"]) <= set(prepared_items.index)
    toy = prepared_items.loc["i1"]
    assert (toy.genres_animation, toy.genres_comedy, toy.genres_drama) == (1, 1, 0)
    assert "genres_comedy" in [c for c, _ in manifest["spec"]["categories"]]
    users = pd.read_parquet(data / "users.parquet").set_index("user_id")
    assert users.loc["u196", "age"] == 49 and users.loc["u196", "gender"] == "M"
    assert ("age", "Int64") in map(tuple, manifest["spec"]["user_profile"])
    behaviour = pd.read_parquet(data / "user_behaviour.parquet")
    assert "cat_genres_comedy_30d" in behaviour.columns and behaviour.user_id.map(type).eq(str).all()
    # the recent items: each user's positives newest first, computed independently with pandas
    recent = pd.read_parquet(data / "user_recent_items.parquet").set_index("user_id")
    pos = log[log.stars >= 4].sort_values(["unix", "product"], ascending=False)
    for user in ("u196", "u186", "u22"):
        want = pos[pos.customer == user]["product"].drop_duplicates().tolist()
        assert list(recent.loc[user, "recent_items"]) == want, user


def test_own_log_with_integer_ids_epoch_millis_and_no_profiles(tmp_path, ml100k_dir):
    raw = pd.read_csv(ml100k_dir / "u.data", sep="\t", names=["user", "item", "rating", "unix"]).head(3000)
    pd.DataFrame({"who": raw.user, "what": raw.item, "ms": raw.unix * 1000,
                  "kind": np.where(raw.rating >= 4, "like", "view")}).to_parquet(tmp_path / "log.parquet")
    repo = tmp_path / "repo"
    assert main(["prepare", "--repo", str(repo), "--interactions", str(tmp_path / "log.parquet"),
                 "--columns", "user_id=who,item_id=what,event_timestamp=ms,event_type=kind",
                 "--positive", "event_type = 'like'"]) == 0
    data = repo / "data"
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["keys"] == {"user": "int64", "item": "int64"}
    assert manifest["spec"]["user_profile"] == [] and manifest["spec"]["item_profile"] == []
    assert manifest["params"]["positive_share"] == pytest.approx((raw.rating >= 4).mean())
    ev = pd.read_parquet(data / "interactions")
    assert str(ev.user_id.dtype) == "int64" and sorted(ev.event_type.unique()) == ["like", "view"]
    unix = (ev.event_timestamp - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    assert sorted(unix) == sorted(raw.unix)
    assert list(pd.read_parquet(data / "users.parquet").columns) == ["user_id", "created_timestamp"]
    assert {"type_like_7d", "type_view_30d"} <= set(pd.read_parquet(data / "user_behaviour.parquet").columns)


@pytest.mark.parametrize("case, match", [
    ("missing column", r"has no column\(s\) \['stars'\] \(its columns: customer, product, when"),
    ("bad times", r"2 of 6 values are not times .* the first is row 3: 'soon'"),
    ("empty", r"is empty: there is nothing to learn from"),
    ("one user", r"has 1 user\(s\) and 3 item\(s\): a recommender needs at least two of each"),
    ("bad positive", r"the --positive 'ratingg >= 4' is not valid SQL over the log's columns"),
    ("no positive", r"--positive 'rating > 9' accepts none of the 6 events"),
    ("bad role", r"--columns role 'user' is not one of"),
    ("missing id", r"events.csv column customer: 1 rows have no id; the first is row 2"),
])
def test_own_log_bad_input_is_named_and_changes_nothing(tmp_path, capsys, case, match):
    log = pd.DataFrame({"customer": ["a", "b", "c", "a", "b", "c"], "product": ["x", "y", "z", "y", "z", "x"],
                        "stars": [5, 4, 1, 2, 5, 3], "when": [f"2024-05-0{d}T12:00:00Z" for d in range(1, 7)]})
    columns, positive = "user_id=customer,item_id=product,event_timestamp=when,rating=stars", None
    if case == "missing column":
        log = log.drop(columns="stars")
    elif case == "bad times":
        log.loc[3, "when"], log.loc[5, "when"] = "soon", "2024-13-45"
    elif case == "empty":
        log = log.head(0)
    elif case == "one user":
        log = log.assign(customer="a").head(3)
    elif case == "bad positive":
        positive = "ratingg >= 4"
    elif case == "no positive":
        positive = "rating > 9"
    elif case == "bad role":
        columns = columns.replace("user_id=", "user=")
    elif case == "missing id":
        log.loc[2, "customer"] = None
    log.to_csv(tmp_path / "events.csv", index=False)
    repo = _existing_repo(tmp_path)
    args = ["prepare", "--repo", str(repo), "--interactions", str(tmp_path / "events.csv"), "--columns", columns]
    assert main(args + (["--positive", positive] if positive else [])) == 2
    assert re.search(match, capsys.readouterr().err), case
    assert (repo / "data" / "manifest.json").read_text() == '{"previous": true}'  # the previous data untouched
    assert sorted(p.name for p in repo.iterdir()) == ["data"]


@pytest.mark.parametrize("args, match", [
    (["--dataset", "synthetic", "--data-dir", "x"], "--data-dir applies to --dataset movielens-100k only"),
    (["--dataset", "synthetic", "--columns", "user_id=a"], "--columns apply to --interactions"),
    (["--interactions", "log.csv"], "--columns must map user_id, item_id, event_timestamp"),
    (["--dataset", "synthetic", "--interactions", "log.csv", "--columns", "user_id=a,item_id=b,event_timestamp=c"],
     "either --dataset or --interactions"),
    ([], "say what to prepare"),
    (["--dataset", "movielens-100k", "--users", "5"], "--users apply to --dataset synthetic"),
    (["--dataset", "movielens-100k", "--popularity-skew", "2"], "--popularity-skew apply to --dataset synthetic"),
    (["--dataset", "synthetic", "--max-per-user", "0"], "--max-per-user must be at least 1, got 0"),
])
def test_prepare_flags_that_do_not_apply_are_errors(tmp_path, capsys, args, match):
    assert main(["prepare", "--repo", str(tmp_path / "repo")] + args) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()


def test_prepare_max_per_user_thins_any_source_and_records_it(tmp_path, capsys):
    """The CLI's --max-per-user on a generated log: at most N items per user in the written interactions, the
    draw recorded in the manifest, the derived tables computed from the thinned log."""
    import pyarrow.parquet as pq

    repo = tmp_path / "repo"
    assert main(["prepare", "--repo", str(repo), "--dataset", "synthetic", "--users", "80", "--items", "200",
                 "--events", "6000", "--popularity-skew", "2.5", "--max-per-user", "4",
                 "--subsample-seed", "3"]) == 0
    assert "at most 4 items per user" in capsys.readouterr().out
    log = pq.read_table(repo / "data" / "interactions").to_pandas()
    assert log.groupby("user_id").item_id.nunique().max() == 4
    manifest = json.loads((repo / "data" / "manifest.json").read_text())
    assert manifest["params"]["max_per_user"] == 4 and manifest["params"]["subsample_seed"] == 3
    assert manifest["params"]["popularity_skew"] == 2.5
    assert manifest["rows"]["interactions"] == len(log)
    recent = pq.read_table(repo / "data" / "user_recent_items.parquet").to_pandas()
    assert recent.user_id.nunique() == log.user_id.nunique()
