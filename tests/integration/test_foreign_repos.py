"""feast-autofeat in feature repos that are not its own, through the real Feast CLI:

- Feast's own template (`feast init`), driven by the guide's blocks exactly as written
  (docs/how-to/own-repo.md): the online vectors equal the model applied to point-in-time inputs computed
  independently (DuckDB), historical features equal the snapshots, backfill writes its snapshots;
- a minimal hand-written repo for each join-key type (Int64, Int32, String) on SQLite and on a real Redis: the
  same checks, and the Redis bytes equal what Feast's own online store writes for the same rows;
- what a user does wrong: an undeployed declaration, a batch engine that would not compute the view, flags that
  do not apply, names the repo does not declare."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from feast import FeatureStore
from snippets import PageRunner, runnable

from feast_autofeat.cli import main as cli
from feast_autofeat.feast.deployments import Deployments
from feast_autofeat.models.dae import DAE
from feast_autofeat.repo import run_feast

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "how-to" / "own-repo.md"
BIN = str(Path(sys.executable).parent)


def asof_inputs(path: Path, key: str, ids, at: datetime, columns: list[str], ttl: timedelta,
                ts: str = "event_timestamp", created: str | None = None) -> pd.DataFrame:
    """Each entity's latest source row at or before ``at`` (ties: the newest ``created``), its features null
    when that row is older than the view's TTL: DuckDB over the parquet, independently of Feast."""
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    con.register("ids", pd.DataFrame({key: list(ids), "_row": np.arange(len(ids))}))
    order = f"s.{ts} DESC" + (f", s.{created} DESC" if created else "")
    at_sql = f"TIMESTAMPTZ '{at.isoformat()}'"
    cols = ", ".join(f"CASE WHEN s.{ts} > {at_sql} - INTERVAL {int(ttl.total_seconds())} SECOND THEN s.{c} END "
                     f"AS {c}" for c in columns)
    return con.sql(f"""
        WITH latest AS (SELECT s.*, row_number() OVER (PARTITION BY s.{key} ORDER BY {order}) AS rn
                        FROM '{path}' s WHERE s.{ts} <= {at_sql})
        SELECT i._row, {cols} FROM ids i LEFT JOIN latest s ON s.{key} = i.{key} AND s.rn = 1
        ORDER BY i._row""").df().drop(columns="_row")


def snapshots(repo: Path, name: str, version: str) -> dict[str, pd.DataFrame]:
    """{snapshot file name: its rows} of one version (the empty seed file left out)."""
    directory = repo / "data" / "embeddings" / name / version
    return {p.name: pd.read_parquet(p) for p in sorted(directory.glob("at=*.parquet")) if p.name != "at=0.parquet"}


def test_guide_on_feast_init_template(tmp_path):
    """The guide's commands, exactly as written, in Feast's own template; then its promises checked."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
    env.pop("AUTOFEAT_MODEL_ROOT", None)
    blocks = runnable(GUIDE)  # every block test_docs.py does not run (it checks that this page is run here)
    assert [b.lang for b in blocks].count("bash") >= 5 and any("feast init" in b.code for b in blocks)
    runner = PageRunner(tmp_path, env)
    try:
        outputs = [runner.run(block) for block in blocks]
    finally:
        runner.stop()
    repo = tmp_path / "my_project" / "feature_repo"
    text = "\n".join(outputs)
    # the first `feast apply` (declared, nothing deployed yet) says so and names the commands
    first_apply = next(o for b, o in zip(blocks, outputs) if "feast apply" in b.code)
    assert "driver_dae (dae) has no deployed version" in first_apply
    assert "feast-autofeat train driver_dae" in first_apply and "feast-autofeat deploy driver_dae" in first_apply
    assert "trained driver_dae (dae) -> version" in text and "applied: feature service driver_dae" in text
    entry = Deployments(repo).get("driver_dae")
    assert len(entry.versions) == 2 and entry.live == entry.versions[0]  # a second version beside the live one
    v1 = entry.live
    # the materialized snapshot: one vector per driver, as of the materialization's end
    snaps = snapshots(repo, "driver_dae", v1)
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    days = [today - timedelta(days=d) for d in (3, 2, 1)]
    backfilled = [f"at={d:%Y%m%dT%H%M%S}000000.parquet" for d in days]
    assert set(backfilled) <= set(snaps) and all(len(snaps[f]) == 5 for f in backfilled)
    end_file = max(set(snaps) - set(backfilled))
    end = datetime.strptime(end_file[3:-8], "%Y%m%dT%H%M%S%f").replace(tzinfo=timezone.utc)
    snap = snaps[end_file].sort_values("driver_id", ignore_index=True)
    drivers = snap.driver_id.tolist()
    assert drivers == [1001, 1002, 1003, 1004, 1005] and set(snap.model_version) == {v1}
    # = the model applied to each driver's inputs as of that end (the view's 1-day TTL), computed with DuckDB
    features = ["conv_rate", "acc_rate", "avg_daily_trips"]
    inputs = asof_inputs(repo / "data" / "driver_stats.parquet", "driver_id", drivers, end, features,
                         timedelta(days=1), created="created")
    want = DAE.load(repo / "models", v1).transform(inputs)
    np.testing.assert_allclose(np.stack(snap.embedding), want, atol=1e-5)
    store = FeatureStore(repo_path=str(repo))
    online = store.get_online_features(features=store.get_feature_service("driver_dae"),
                                       entity_rows=[{"driver_id": d} for d in drivers + [999]]).to_dict()
    np.testing.assert_allclose(np.array(online["embedding"][:5]), want, atol=1e-5)
    assert online["embedding"][5] is None  # an unknown driver: null, as for any Feast view
    hist = store.get_historical_features(entity_df=pd.DataFrame({"driver_id": drivers, "event_timestamp": end}),
                                         features=[f"driver_dae__{v1}:embedding"]).to_df()
    hist = hist.sort_values("driver_id", ignore_index=True)
    np.testing.assert_allclose(np.stack(hist.embedding), np.stack(snap.embedding), atol=1e-7)
    # a backfilled snapshot is the model on that day's inputs
    day = days[1]
    old = snaps[backfilled[1]].sort_values("driver_id", ignore_index=True)
    np.testing.assert_allclose(np.stack(old.embedding), DAE.load(repo / "models", v1).transform(asof_inputs(
        repo / "data" / "driver_stats.parquet", "driver_id", drivers, day, features, timedelta(days=1),
        created="created")), atol=1e-5)


# ---- one small repo per key type
KEYS = {"int64": ("INT64", lambda i: 1000 + i), "int32": ("INT32", lambda i: 7 + i),
        "string": ("STRING", lambda i: f"acc-{i:03d}")}
T0 = datetime(2025, 3, 1, tzinfo=timezone.utc)
END = T0 + timedelta(days=3, hours=12)


def small_repo(root: Path, kind: str, online: str, engine: bool = True) -> Path:
    """A repo of 200 accounts with daily stats (numbers and a category), an embedding declared over them."""
    repo = root / f"repo-{kind}-{online}"
    (repo / "data").mkdir(parents=True)
    value_type, make = KEYS[kind]
    rng = np.random.default_rng(0)
    n, days = 200, 4
    ids = [make(i) for i in range(n)]
    frame = pd.DataFrame({
        "account_id": np.repeat(ids, days), "ts": [T0 + timedelta(days=d) for _ in range(n) for d in range(days)],
        "spend": rng.gamma(2.0, 10.0, n * days), "visits": rng.poisson(3, n * days),
        "tier": rng.choice(["free", "pro", "team"], n * days)})
    frame = frame.iloc[rng.permutation(len(frame))[: len(frame) - 60]]  # some account-days have no row
    if kind == "int32":
        frame["account_id"] = frame.account_id.astype(np.int32)
    frame.to_parquet(repo / "data" / "stats.parquet", index=False)
    store = ("online_store:\n  type: sqlite\n  path: data/online.db\n" if online == "sqlite" else
             "online_store:\n  type: redis\n  connection_string: ${REDIS_CONNECTION_STRING}\n")
    (repo / "feature_store.yaml").write_text(
        "project: keys\nprovider: local\nregistry: data/registry.db\noffline_store:\n  type: duckdb\n" + store
        + "entity_key_serialization_version: 3\n"
        + ("batch_engine:\n  type: feast_autofeat.feast.engine.AutofeatEngine\n" if engine else "")
        # string keys: the inputs read in key partitions too (hash of the key mod P): the same vectors
        + ("  input_chunk_rows: 60\n" if engine and kind == "string" else ""))
    (repo / "definitions.py").write_text(f'''from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64, String

from feast_autofeat import embedding_view

account = Entity(name="account", join_keys=["account_id"], value_type=ValueType.{value_type})
stats = FileSource(name="stats", path="data/stats.parquet", timestamp_field="ts")
account_stats = FeatureView(name="account_stats", entities=[account], ttl=timedelta(days=2), source=stats,
                            schema=[Field(name="spend", dtype=Float64), Field(name="visits", dtype=Int64),
                                    Field(name="tier", dtype=String)])
account_dae = embedding_view("account_dae", entity=account, model="dae", inputs=[account_stats], dim=6)
''')
    return repo


@pytest.mark.parametrize("online", ["sqlite", "redis"])
@pytest.mark.parametrize("kind", ["int64", "int32", "string"])
def test_key_types_train_materialize_read(kind, online, tmp_path, request, monkeypatch, capsys):
    import feast_autofeat

    if online == "redis":
        monkeypatch.setenv("REDIS_CONNECTION_STRING", request.getfixturevalue("redis_db").url)
    repo = small_repo(tmp_path, kind, online)
    out = run_feast(repo, "apply", capture=True)
    assert "account_dae (dae) has no deployed version" in out.stderr
    # train through the Python API, on a FeatureStore; deploy through the CLI run inside the repo (no --repo)
    store = FeatureStore(repo_path=str(repo))
    result = feast_autofeat.train(store, "account_dae", epochs=2, progress=False)
    config = json.loads((result.path / "model.json").read_text())
    assert (config["join_key"], config["key_kind"]) == ("account_id", kind)
    assert config["feature_refs"] == ["account_stats:spend", "account_stats:visits", "account_stats:tier"]
    monkeypatch.chdir(repo)
    assert cli(["deploy", "account_dae"]) == 0, capsys.readouterr().err
    version = result.version
    run_feast(repo, "materialize", T0.strftime("%Y-%m-%dT%H:%M:%S"), END.strftime("%Y-%m-%dT%H:%M:%S"),
              capture=True)
    snap = snapshots(repo, "account_dae", version)
    rows = next(iter(snap.values())).sort_values("account_id", ignore_index=True)
    ids = rows.account_id.tolist()
    assert len(ids) == 200 and isinstance(ids[0], str if kind == "string" else (int, np.integer))
    inputs = asof_inputs(repo / "data" / "stats.parquet", "account_id", ids, END, ["spend", "visits", "tier"],
                         timedelta(days=2), ts="ts")
    assert inputs.spend.isna().sum() > 0  # some accounts' latest row is older than the TTL: null inputs
    want = DAE.load(repo / "models", version).transform(inputs)
    np.testing.assert_allclose(np.stack(rows.embedding), want, atol=1e-5)
    store = FeatureStore(repo_path=str(repo))
    unknown = "nobody" if kind == "string" else 99_999
    got = store.get_online_features(features=[f"account_dae__{version}:embedding"],
                                    entity_rows=[{"account_id": i} for i in ids + [unknown]]).to_dict()
    np.testing.assert_allclose(np.array(got["embedding"][:-1]), want, atol=1e-5)
    assert got["embedding"][-1] is None
    hist = store.get_historical_features(entity_df=pd.DataFrame({"account_id": ids[:50], "event_timestamp": END}),
                                         features=[f"account_dae__{version}:embedding"]).to_df()
    hist = hist.sort_values("account_id", ignore_index=True)
    np.testing.assert_allclose(np.stack(hist.embedding), want[:50], atol=1e-7)
    if online == "redis":
        assert_redis_bytes_equal_feasts(store, f"account_dae__{version}", ids[:3], kind)
    if kind == "string":  # the engine read those inputs in key partitions (a hash of the string key mod P)
        from feast_autofeat.feast.engine import AutofeatEngineConfig, EmbeddingComputer, EmbeddingSpec

        comp = EmbeddingComputer(EmbeddingSpec.from_view(store.get_feature_view(f"account_dae__{version}"),
                                                         store.registry, store.project),
                                 store.config, store._get_provider().offline_store, store.registry, store.project,
                                 AutofeatEngineConfig(input_chunk_rows=60))
        n_parts, entities = comp.input_partitions(END)
        assert (n_parts, entities) == (4, 200)
        parts = [set(comp.latest_inputs(T0, END, (p, n_parts)).column("account_id").to_pylist())
                 for p in range(n_parts)]
        assert sum(map(len, parts)) == 200 and set().union(*parts) == set(ids) and min(map(len, parts)) > 20


def assert_redis_bytes_equal_feasts(store, view: str, ids: list, kind: str) -> None:
    """Our writer's hash for an entity equals, key and fields, what Feast's own Redis store writes for the
    same values and timestamp."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import FloatList, Value
    from google.protobuf.timestamp_pb2 import Timestamp

    online = store._get_provider().online_store
    fv = store.get_feature_view(view)
    client = online._get_client(store.config.online_store)
    attr = {"int64": "int64_val", "int32": "int32_val", "string": "string_val"}[kind]
    for entity in ids:
        ek = EntityKey(join_keys=["account_id"], entity_values=[Value(**{attr: entity})])
        key = online._generate_redis_keys_for_entities(store.config, [ek])[0]  # Feast's own key for it
        # the view's fields in the entity's hash (which also holds the input view's): vector, version, _ts:<view>
        fields = online._generate_hset_keys_for_features(fv, ["embedding", "model_version"])[1] + [
            f"_ts:{view}".encode()]
        ours = client.hmget(key, fields)
        assert all(v is not None for v in ours), (entity, ours)
        read = store.get_online_features(features=[f"{view}:embedding", f"{view}:model_version"],
                                         entity_rows=[{"account_id": entity}]).to_dict()
        ts = Timestamp()
        ts.ParseFromString(ours[-1])
        client.hdel(key, *fields)
        row = {"embedding": Value(float_list_val=FloatList(val=read["embedding"][0])),
               "model_version": Value(string_val=read["model_version"][0])}
        online.online_write_batch(store.config, fv, [(ek, row, ts.ToDatetime(tzinfo=timezone.utc), None)], None)
        assert client.hmget(key, fields) == ours, entity


def test_undeployed_engine_and_name_errors(tmp_path, monkeypatch, capsys):
    """A repo whose YAML keeps Feast's local engine: `feast apply` and `deploy` say the stored embedding would
    not be computed and print the YAML to add; names the repo does not declare and flags that do not apply
    are errors that say so."""
    import feast_autofeat

    repo = small_repo(tmp_path, "int64", "sqlite", engine=False)
    run_feast(repo, "apply", capture=True)
    version = feast_autofeat.train(FeatureStore(repo_path=str(repo)), "account_dae", epochs=1,
                                   progress=False).version
    assert cli(["deploy", "account_dae", "--repo", str(repo)]) == 0
    err = capsys.readouterr().err
    assert "batch engine is 'local'" in err and "type: feast_autofeat.feast.engine.AutofeatEngine" in err
    out = run_feast(repo, "apply", capture=True)
    assert "EngineWarning" in out.stderr and "feast_autofeat.feast.engine.AutofeatEngine" in out.stderr
    for args, match in (
        (["deploy", "account_dea"], "declares no embedding or recommender named 'account_dea' (declared: "
                                    "account_dae)"),
        (["train", "account_dae", "--gan-augment", "2"], "--gan-augment applies to a two-tower only"),
        (["train", "account_dae", "--no-gate"], "--no-gate applies to a two-tower only"),
        (["backfill", "nothing", "--start", "2025-03-01", "--end", "2025-03-02"], "declares no"),
        (["promote", "account_dae", "ffff"], "no deployed version(s) matching 'ffff'"),
        (["train", "account_dae", "--as-of", "yesterday-ish"], "--as-of 'yesterday-ish' is not a time"),
        (["train", "account_dae", "--as-of", "2000-01-01"], "no training rows at or before 2000-01-01"),
    ):
        assert cli([*args, "--repo", str(repo)]) == 2, args
        assert match in capsys.readouterr().err, args
    assert Deployments(repo).get("account_dae").versions == [version]  # nothing changed by the errors
    # with no --repo and no feature_store.yaml here, the default is ./feature_repo, which does not exist
    monkeypatch.chdir(tmp_path)
    assert cli(["embeddings"]) == 2 and "feature_repo/feature_store.yaml not found" in capsys.readouterr().err
    monkeypatch.chdir(repo)  # inside the repo, as Feast's CLI: the current directory
    assert cli(["embeddings"]) == 0 and f"* account_dae__{version}" in capsys.readouterr().out
