"""No materialization deletes another's rows: any set of `feast materialize`, `materialize-incremental` and
`backfill` runs, in any order and with any windows, leaves each snapshot time holding every entity it ever held,
at the newest value written for that time; the online store keeps every entity too. Through the real Feast CLI,
on SQLite and on a real Redis."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from feast import FeatureStore
from test_foreign_repos import END, T0, asof_inputs, small_repo, snapshots

import feast_autofeat
from feast_autofeat.cli import main as cli
from feast_autofeat.feast.embeddings import snapshot_schema
from feast_autofeat.feast.engine import _SnapshotWriter, snapshot_file
from feast_autofeat.models.dae import DAE
from feast_autofeat.repo import run_feast

pytestmark = pytest.mark.integration
FMT = "%Y-%m-%dT%H:%M:%S"


def expected(repo, version, ids, at) -> np.ndarray:
    inputs = asof_inputs(repo / "data" / "stats.parquet", "account_id", ids, at, ["spend", "visits", "tier"],
                         timedelta(days=2), ts="ts")
    return DAE.load(repo / "models", version).transform(inputs)


@pytest.mark.parametrize("online", ["sqlite", "redis"])
def test_windows_in_any_order_keep_every_entity(online, tmp_path, request, monkeypatch, capsys):
    if online == "redis":
        monkeypatch.setenv("REDIS_CONNECTION_STRING", request.getfixturevalue("redis_db").url)
    repo = small_repo(tmp_path, "int64", online)
    run_feast(repo, "apply", capture=True)
    version = feast_autofeat.train(FeatureStore(repo_path=str(repo)), "account_dae", epochs=2, progress=False).version
    monkeypatch.chdir(repo)
    assert cli(["deploy", "account_dae"]) == 0, capsys.readouterr().err
    at = f"at={END:%Y%m%dT%H%M%S}000000.parquet"

    def snap() -> pd.DataFrame:
        return snapshots(repo, "account_dae", version)[at].sort_values("account_id", ignore_index=True)

    # the full window, then a narrower one ending at the same time (fewer entities have rows in it), then the
    # same window again, then a nested one: each leaves the snapshot at END with all 200 accounts
    run_feast(repo, "materialize", T0.strftime(FMT), END.strftime(FMT), capture=True)
    full = snap()
    assert len(full) == 200
    narrow_start = END - timedelta(hours=14)  # only the rows of the last day (T0 + 3 days) fall inside
    stats = pd.read_parquet(repo / "data" / "stats.parquet")
    in_narrow = set(stats.loc[stats.ts >= narrow_start, "account_id"])
    assert 50 < len(in_narrow) < 200
    for start in (narrow_start, narrow_start, T0 + timedelta(days=1)):
        run_feast(repo, "materialize", start.strftime(FMT), END.strftime(FMT), capture=True)
        now = snap()
        assert now.account_id.tolist() == full.account_id.tolist()  # nobody deleted, nobody twice
        np.testing.assert_allclose(np.stack(now.embedding), expected(repo, version, now.account_id.tolist(), END),
                                   atol=1e-5)
    # materialize-incremental and backfill at the same END: still every account, still the values as of END
    assert cli(["backfill", "account_dae", "--start", END.strftime(FMT), "--end", END.strftime(FMT)]) == 0
    run_feast(repo, "materialize-incremental", END.strftime(FMT), capture=True)
    now = snap()
    assert len(now) == 200 and now.account_id.is_unique
    np.testing.assert_allclose(np.stack(now.embedding), expected(repo, version, now.account_id.tolist(), END),
                               atol=1e-5)
    # online: every account still has its vector as of END
    store = FeatureStore(repo_path=str(repo))
    ids = full.account_id.tolist()
    got = store.get_online_features(features=[f"account_dae__{version}:embedding"],
                                    entity_rows=[{"account_id": i} for i in ids]).to_dict()
    np.testing.assert_allclose(np.array(got["embedding"]), expected(repo, version, ids, END), atol=1e-5)
    assert json.loads((repo / "embeddings.json").read_text())["account_dae"]["live"] == version


def test_snapshot_merge_keeps_old_rows_and_takes_new_values(tmp_path):
    """The writer's merge itself: rows of entities the new run did not write stay; the new run's rows replace the
    old ones for the same entity; a failed run leaves the old file as it was."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = snapshot_file(tmp_path / "v1", END)
    target.parent.mkdir()
    schema = snapshot_schema("account_id")

    def table(ids, value):
        return pa.table({"account_id": pa.array(ids, pa.int64()), "event_timestamp": pa.array([END] * len(ids),
                         pa.timestamp("us", tz="UTC")), "embedding": [[float(value)] * 2 for _ in ids],
                         "model_version": ["v1"] * len(ids)}, schema=schema)

    for ids, value in (([1, 2, 3], 1.0), ([3, 4], 2.0)):
        writer = _SnapshotWriter(target, schema)
        writer.write(table(ids, value))
        writer.commit()
        writer.abort()
    got = pq.read_table(target).to_pandas().sort_values("account_id")
    assert got.account_id.tolist() == [1, 2, 3, 4]
    assert [v[0] for v in got.embedding] == [1.0, 1.0, 2.0, 2.0]
    writer = _SnapshotWriter(target, schema)  # a run that fails before its commit changes nothing
    writer.write(table([1], 9.0))
    writer.abort()
    assert pq.read_table(target).to_pandas().sort_values("account_id").equals(got)
    assert not list((tmp_path / ".staging").glob("*.parquet"))
