"""`feast-autofeat prepare` on real MovieLens 100K and on synthetic data, through the CLI."""

import json
import shutil
import subprocess
import sys

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
