"""Embedding views end to end on ML-100K: the real `feast` CLI (apply, materialize, materialize-incremental)
with AutofeatEngine, real SQLite and a real redis-server, read back with `get_online_features` /
`get_historical_features` and compared with the model's own output on inputs computed independently
(DuckDB ASOF joins over the prepared parquet)."""

from __future__ import annotations

import copy
import shutil
import subprocess
import time
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from feast import FeatureStore, FileSource

from feast_autofeat.artifacts import load_version
from feast_autofeat.cli import main as cli
from feast_autofeat.errors import AutofeatError
from feast_autofeat.feast.embeddings import Deployments
from feast_autofeat.feast.engine import (
    AutofeatEngineConfig,
    EmbeddingComputer,
    EmbeddingSpec,
    LeakageWarning,
    backfill,
)
from feast_autofeat.models.dae import DAE
from feast_autofeat.models.multvae import MultVAE
from feast_autofeat.quickstart import feast_executable, run_feast
from feast_autofeat.testing import free_port
from feast_autofeat.training import train
from tests.conftest import copy_repo, make_redis_server

MID = "1998-03-01T00:00:00"
END = "1998-04-23T00:00:00"
UTC = timezone.utc


@pytest.fixture(scope="session")
def emb_template(ml_repo, tmp_path_factory) -> Path:
    """A prepared ML-100K repo with trained DAE (two versions), Mult-VAE; user_dae, session_multvae and
    request_dae deployed (v1 live)."""
    repo = copy_repo(tmp_path_factory.mktemp("emb") / "feature_repo")
    shutil.copytree(ml_repo / "data", repo / "data")
    run_feast(repo, "apply", capture=True)
    v1 = train(repo, "user_dae", epochs=3, progress=False).version
    v2 = train(repo, "user_dae", epochs=2, seed=1, progress=False).version
    mv = train(repo, "session_multvae", epochs=3, progress=False).version
    dep = Deployments(repo)
    dep.deploy("user_dae", "dae", v1)
    dep.deploy("user_dae", "dae", v2)  # deployed beside v1, not live
    dep.deploy("session_multvae", "multvae", mv)
    dep.deploy("request_dae", "dae", v1)
    dep.save()
    shutil.rmtree(repo / "store")
    return repo


def _copy(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest, ignore=shutil.ignore_patterns("store", "__pycache__"))
    return dest


def _versions(repo: Path) -> tuple[str, str, str]:
    dep = Deployments(repo)
    v1, v2 = dep.get("user_dae").versions
    return v1, v2, dep.get("session_multvae").live


def expected_inputs(repo: Path, users: np.ndarray, at) -> pd.DataFrame:
    """User profile + behaviour as of ``at`` (one time or one per user): DuckDB ASOF joins and the snapshot
    TTL (1 day), written independently of Feast."""
    data = repo / "data"
    ts = pd.Series(pd.to_datetime(at, utc=True) if np.ndim(at) else [pd.Timestamp(at, tz="UTC")] * len(users))
    entity = pd.DataFrame({"user_id": np.asarray(users, np.int64), "ts": ts.to_numpy(), "row": np.arange(len(ts))})
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    con.register("entity", entity)
    profile = [c for c in con.sql(f"SELECT * FROM '{data}/users.parquet' LIMIT 0").columns
               if c not in ("user_id", "created_timestamp")]
    behaviour = [c for c in con.sql(f"SELECT * FROM '{data}/user_behaviour.parquet' LIMIT 0").columns
                 if c not in ("user_id", "event_timestamp")]
    select = ["e.user_id", "e.ts"] + [f"p.{c}" for c in profile] + [
        f"CASE WHEN e.ts < b.event_timestamp + INTERVAL 1 DAY THEN b.{c} END AS {c}" for c in behaviour]
    return con.sql(f"""SELECT {", ".join(select)} FROM entity e
        ASOF LEFT JOIN '{data}/users.parquet' p ON e.user_id = p.user_id AND e.ts >= p.created_timestamp
        ASOF LEFT JOIN '{data}/user_behaviour.parquet' b ON e.user_id = b.user_id AND e.ts >= b.event_timestamp
        ORDER BY e.row""").df()  # joins do not keep the entity order


def changed_users(repo: Path, start: str, end: str) -> set[int]:
    """Users with input rows (profile or behaviour snapshot) in [start, end]."""
    out = set()
    for table, ts_col in (("user_behaviour", "event_timestamp"), ("users", "created_timestamp")):
        df = pd.read_parquet(repo / "data" / f"{table}.parquet", columns=["user_id", ts_col])
        ts = df[ts_col]
        out |= set(df.loc[(ts >= pd.Timestamp(start, tz="UTC")) & (ts <= pd.Timestamp(end, tz="UTC")), "user_id"])
    return out


def online(store, view: str, users, features=("embedding", "model_version")) -> dict:
    return store.get_online_features(features=[f"{view}:{f}" for f in features],
                                     entity_rows=[{"user_id": int(u)} for u in users]).to_dict()


@pytest.mark.parametrize("backend", ["sqlite", "redis", "redis_cluster"])
def test_feast_materialize_writes_model_output(backend, emb_template, tmp_path, request, monkeypatch):
    repo = _copy(emb_template, tmp_path / "repo")
    yaml = None
    if backend == "redis":
        monkeypatch.setenv("REDIS_CONNECTION_STRING", request.getfixturevalue("redis_db").url)
        yaml = "feature_store.redis.yaml"
    elif backend == "redis_cluster":  # a real three-node cluster: keys spread over every node's slots
        monkeypatch.setenv("REDIS_CONNECTION_STRING", request.getfixturevalue("redis_cluster_db").nodes)
        yaml = "feature_store.redis_cluster.yaml"
    else:  # and the inputs read in key partitions of at most 300 entities (bounded memory): the same values
        path = repo / "feature_store.yaml"
        assert "  device: cpu\n" in path.read_text()
        path.write_text(path.read_text().replace("  device: cpu\n", "  device: cpu\n  input_chunk_rows: 300\n"))
    v1, _, _ = _versions(repo)
    view = f"user_dae__{v1}"
    run_feast(repo, "apply", yaml=yaml, capture=True)
    start = "1997-09-01T00:00:00"
    run_feast(repo, "materialize", start, MID, yaml=yaml, capture=True)
    run_feast(repo, "materialize-incremental", END, yaml=yaml, capture=True)
    store = FeatureStore(repo_path=str(repo), fs_yaml_file=repo / yaml if yaml else None)

    late = changed_users(repo, MID, END)  # rewritten by the incremental run, as of END
    early = changed_users(repo, start, MID) - late  # last written as of MID
    users = np.array(sorted(early | late))
    assert len(early) > 50 and len(late) > 50
    at = [END if u in late else MID for u in users]
    want = DAE.load(repo / "models", v1).transform(expected_inputs(repo, users, at))
    got = online(store, view, list(users) + [999_999])
    vectors = np.array(got["embedding"][:-1], dtype=np.float32)
    np.testing.assert_allclose(vectors, want, atol=1e-5)
    assert set(got["model_version"][:-1]) == {v1}
    assert got["embedding"][-1] is None and got["model_version"][-1] is None  # unknown entity: null
    # the live feature service serves the same vectors under the embedding's name
    live = store.get_online_features(features=store.get_feature_service("user_dae"),
                                     entity_rows=[{"user_id": int(users[0])}], full_feature_names=True).to_dict()
    np.testing.assert_allclose(live["user_dae__embedding"][0], want[0], atol=1e-5)
    # v2, deployed beside v1, was materialized too: under its own name, with its own version stamp
    assert set(online(store, f"user_dae__{_versions(repo)[1]}", users[:20])["model_version"]) == {
        _versions(repo)[1]}
    # Feast recorded both intervals; snapshots exist at MID and END with the online rows
    intervals = store.get_feature_view(view).materialization_intervals
    assert len(intervals) == 2
    snaps = pd.read_parquet(repo / "data" / "embeddings" / "user_dae" / v1)
    assert sorted(snaps.event_timestamp.dt.strftime("%Y-%m-%d").unique()) == ["1998-03-01", "1998-04-23"]
    assert set(snaps.loc[snaps.event_timestamp == pd.Timestamp(END, tz="UTC"), "user_id"]) == late
    if backend == "redis_cluster":  # the keys really were spread by slot over all three nodes
        import redis

        sizes = [redis.Redis(host="127.0.0.1", port=s.port).dbsize() for s in request.getfixturevalue(
            "redis_cluster").servers]
        assert min(sizes) > 0.2 * sum(sizes), sizes


def test_redis_cluster_node_restart_during_reads(emb_template, tmp_path, redis_cluster_db, monkeypatch):
    """Readers keep calling get_online_features while one of the three nodes stops and restarts: a read
    either fails with a Redis error or returns exactly each requested user's vector, never another user's;
    after the node is back every read succeeds again."""
    import random
    import threading

    import redis

    repo = _copy(emb_template, tmp_path / "repo")
    v1, _, _ = _versions(repo)
    view, yaml = f"user_dae__{v1}", "feature_store.redis_cluster.yaml"
    monkeypatch.setenv("REDIS_CONNECTION_STRING", redis_cluster_db.nodes)
    run_feast(repo, "apply", yaml=yaml, capture=True)
    run_feast(repo, "materialize", "--views", view, "1997-09-01T00:00:00", END, yaml=yaml, capture=True)
    store = FeatureStore(repo_path=str(repo), fs_yaml_file=repo / yaml)
    users = np.array(sorted(changed_users(repo, "1997-09-01", END)))
    want = DAE.load(repo / "models", v1).transform(expected_inputs(repo, users, END))
    truth = {int(u): want[i] for i, u in enumerate(users)}
    stop, log, lock = threading.Event(), {"ok": 0, "errors": [], "wrong": []}, threading.Lock()

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            batch = rng.sample(list(truth), 20)
            try:
                got = online(store, view, batch, features=("embedding",))["embedding"]
            except Exception as exc:  # noqa: BLE001 - kept to check it is a Redis failure, not wrong data
                with lock:
                    log["errors"].append(exc)
                time.sleep(0.05)
                continue
            with lock:
                for u, v in zip(batch, got):
                    if v is None or not np.allclose(v, truth[u], atol=1e-5):
                        log["wrong"].append(u)
                log["ok"] += 1

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    time.sleep(1)
    before = log["ok"]
    redis_cluster_db.restart(1, down_seconds=2.0)
    after = log["ok"]
    time.sleep(2)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert before > 0 and log["ok"] > after, (before, after, log["ok"])  # reads resumed after the restart
    assert not log["wrong"], f"{len(log['wrong'])} wrong vectors, e.g. users {log['wrong'][:5]}"
    redis_errors = (redis.exceptions.RedisError, ConnectionError, OSError)
    assert all(isinstance(e, redis_errors) for e in log["errors"]), {type(e).__name__ for e in log["errors"]}
    got = online(FeatureStore(repo_path=str(repo), fs_yaml_file=repo / yaml), view, users)
    np.testing.assert_allclose(np.array(got["embedding"]), want, atol=1e-5)  # the restarted node kept its data


def test_backfill_is_point_in_time(emb_template, tmp_path):
    repo = _copy(emb_template, tmp_path / "repo")
    v1, _, _ = _versions(repo)
    run_feast(repo, "apply", capture=True)
    store = FeatureStore(repo_path=str(repo))
    start, end = datetime(1998, 1, 10, tzinfo=UTC), datetime(1998, 1, 20, tzinfo=UTC)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = backfill(store, f"user_dae__{v1}", start, end, timedelta(days=1), progress=False)
    leak = [w for w in caught if issubclass(w.category, LeakageWarning)]
    assert leak and "1998-01-10" in str(leak[0].message) and "1998-01-20" in str(leak[0].message)
    assert summary["snapshots"] == 11 and summary["leakage_snapshots"] == 11

    # training rows at random times inside the range, including exactly on a snapshot time
    rng = np.random.default_rng(0)
    ev = pd.read_parquet(repo / "data" / "interactions")
    rows = ev[(ev.event_timestamp > pd.Timestamp(start)) & (ev.event_timestamp < pd.Timestamp(end))].sample(
        600, random_state=0)[["user_id", "event_timestamp"]].reset_index(drop=True)
    rows.loc[0, "event_timestamp"] = pd.Timestamp("1998-01-15", tz="UTC")
    rows["event_timestamp"] += pd.to_timedelta(rng.integers(0, 3600, len(rows)), unit="s") * (rows.index > 0)
    got = store.get_historical_features(entity_df=rows, features=[f"user_dae__{v1}:embedding",
                                                                    f"user_dae__{v1}:model_version"]).to_df()
    got = got.sort_values(["user_id", "event_timestamp"], ignore_index=True)
    floor = got.event_timestamp.dt.floor("D")  # the latest snapshot at or before each row
    model = DAE.load(repo / "models", v1)
    inputs = expected_inputs(repo, got.user_id.to_numpy(), floor)
    new = inputs.age.isna().to_numpy()  # users who joined after the day's snapshot: no embedding yet
    assert new.sum() >= 10 and (~new).sum() >= 200  # on ML-100K many ratings fall on a user's first day
    assert got.embedding[new].isna().all() and got.model_version[new].isna().all()
    want = model.transform(inputs[~new])
    np.testing.assert_allclose(np.stack(got.embedding[~new].to_numpy()), want, atol=1e-5)
    assert set(got.model_version[~new]) == {v1}
    # and it is not the next snapshot's vector: computed from later data, it differs for active users
    later = model.transform(expected_inputs(repo, got.user_id.to_numpy()[~new], floor[~new] + pd.Timedelta(days=1)))
    assert (np.abs(later - want).max(axis=1) > 1e-4).sum() > 50

    # materialize's one-scan read equals Feast's point-in-time join at one time (TTL edge: 13:00 the next day)
    comp = EmbeddingComputer(EmbeddingSpec.from_view(store.get_feature_view(f"user_dae__{v1}"), store.registry,
                                                     store.project), store.config,
                             store._get_provider().offline_store, store.registry, store.project,
                             AutofeatEngineConfig())
    for at in (datetime(1998, 1, 15, tzinfo=UTC), datetime(1998, 1, 15, 13, tzinfo=UTC)):
        fast = comp.latest_inputs(datetime(1970, 1, 1, tzinfo=UTC), at).to_pandas()
        slow = comp.inputs_as_of(pd.DataFrame({"user_id": fast.user_id, "event_timestamp": at})).to_pandas()
        slow = slow.sort_values("user_id", ignore_index=True)[fast.columns]
        assert len(fast) > 400 and fast.events_7d.isna().sum() > 100  # expired behaviour is null in both
        pd.testing.assert_frame_equal(fast, slow, check_dtype=False)
    # read in key partitions (bounded memory): the partitions are disjoint and together the whole read
    comp.config = AutofeatEngineConfig(input_chunk_rows=200)
    n_parts, entities = comp.input_partitions(at)
    assert entities == len(fast) and n_parts == -(-len(fast) // 200) >= 3, (n_parts, entities, len(fast))
    parts = [comp.latest_inputs(datetime(1970, 1, 1, tzinfo=UTC), at, (p, n_parts)).to_pandas()
             for p in range(n_parts)]
    assert all(set(part.user_id % n_parts) == {p} for p, part in enumerate(parts))
    whole = pd.concat(parts).sort_values("user_id", ignore_index=True)
    pd.testing.assert_frame_equal(whole, fast)
    # the bound on entities that lets materialize skip the exact count: a local parquet file's footer row count;
    # any other path (here a glob of the same file) DuckDB's count of the rows at or before the time. Checked
    # against pyarrow's own reading of the files
    filtered = 0
    for view in comp.inputs:
        src = view.batch_source
        ts = pq.read_table(src.path, columns=[src.timestamp_field]).column(0)
        ts = ts.cast(pa.timestamp("us", tz="UTC")) if ts.type.tz is None else ts
        upto = pc.sum(pc.less_equal(ts, pa.scalar(at, pa.timestamp("us", tz="UTC")))).as_py()
        assert comp._source_rows(view, at) == len(ts)
        globbed = copy.copy(view)
        globbed.batch_source = FileSource(name=f"{src.name}_glob", path=src.path.replace(".parquet", "*.parquet"),
                                          timestamp_field=src.timestamp_field)
        assert comp._source_rows(globbed, at) == upto
        filtered += upto < len(ts)
    assert filtered >= 1  # the time filter is exercised: user_behaviour has snapshots after `at`


def test_versions_side_by_side_promote_rollback(emb_template, tmp_path):
    repo = _copy(emb_template, tmp_path / "repo")
    v1, v2, _ = _versions(repo)
    run_feast(repo, "apply", capture=True)
    run_feast(repo, "materialize", "1997-09-01T00:00:00", END, capture=True)
    users = np.array(sorted(changed_users(repo, "1997-09-01", END)))[:40]
    inputs = expected_inputs(repo, users, END)
    want = {v: DAE.load(repo / "models", v).transform(inputs) for v in (v1, v2)}
    store = FeatureStore(repo_path=str(repo))
    for v in (v1, v2):  # both versions materialized and served side by side, each under its own name
        got = online(store, f"user_dae__{v}", users)
        np.testing.assert_allclose(np.array(got["embedding"]), want[v], atol=1e-5)
        assert set(got["model_version"]) == {v}

    def live():
        s = FeatureStore(repo_path=str(repo))
        out = s.get_online_features(features=s.get_feature_service("user_dae"), full_feature_names=True,
                                    entity_rows=[{"user_id": int(u)} for u in users]).to_dict()
        return out["user_dae__model_version"][0], np.array(out["user_dae__embedding"])

    assert live()[0] == v1
    assert cli(["promote", "user_dae", v2[:8], "--repo", str(repo)]) == 0
    version, vectors = live()
    assert version == v2
    np.testing.assert_allclose(vectors, want[v2], atol=1e-5)
    assert cli(["rollback", "user_dae", "--repo", str(repo)]) == 0
    assert live()[0] == v1
    assert cli(["promote", "user_dae", "ffff", "--repo", str(repo)]) == 2  # not deployed: clear error


def test_on_demand_session_embedding_online_historical_http(emb_template, tmp_path):
    repo = _copy(emb_template, tmp_path / "repo")
    v1, _, mv = _versions(repo)
    run_feast(repo, "apply", capture=True)
    store = FeatureStore(repo_path=str(repo))
    view = f"session_multvae__{mv}"
    model = MultVAE.load(repo / "models", mv)
    histories = [[1, 50, 181, 50], [], [10**9, -3], [7]]
    got = store.get_online_features(features=[f"{view}:session_multvae", f"{view}:session_multvae_known_items"],
                                    entity_rows=[{"recent_items": h} for h in histories]).to_dict()
    for h, vec in zip(histories, got["session_multvae"]):
        np.testing.assert_allclose(vec, model.fold_in(h), atol=1e-5)
    assert got["session_multvae_known_items"] == [3, 0, 0, 1]  # duplicates once, unknown ids ignored
    np.testing.assert_allclose(got["session_multvae"][1], got["session_multvae"][2], atol=1e-7)

    # training sets get the same values for the same inputs (online/offline parity)
    ts = pd.Timestamp(END, tz="UTC")
    entity = pd.DataFrame({"user_id": [1, 2, 3, 4], "event_timestamp": ts, "recent_items": histories})
    hist = store.get_historical_features(entity_df=entity, features=[f"{view}:session_multvae"]).to_df()
    hist = hist.sort_values("user_id")
    np.testing.assert_allclose(np.stack(hist.session_multvae.to_numpy()), np.array(got["session_multvae"]),
                               atol=1e-6)

    with pytest.raises(Exception, match="item ids must be integers"):
        store.get_online_features(features=[f"{view}:session_multvae"],
                                  entity_rows=[{"recent_items": ["a", "b"]}])

    # the DAE on raw request features equals the DAE on the same rows: one request row (online's usual call,
    # encoded without pandas) and several (encoded as a frame)
    dae_view = f"request_dae__{v1}"
    rows = expected_inputs(repo, np.array([13, 14, 15]), END).drop(columns=["user_id", "ts"])
    rows = rows.fillna(load_version(repo / "models", "dae", v1).config["architecture"]["fill"])
    cols = [f.name for f in store.get_on_demand_feature_view(dae_view).source_request_sources[
        f"{dae_view}_request"].schema]
    reqs = [{c: (str(rows[c].iloc[i]) if rows[c].dtype == object else float(rows[c].iloc[i])) for c in cols}
            for i in range(len(rows))]
    want = DAE.load(repo / "models", v1).transform(rows)
    out = store.get_online_features(features=[f"{dae_view}:request_dae"], entity_rows=reqs[:1]).to_dict()
    np.testing.assert_allclose(out["request_dae"][0], want[0], atol=1e-5)
    out = store.get_online_features(features=[f"{dae_view}:request_dae"], entity_rows=reqs).to_dict()
    np.testing.assert_allclose(np.array(out["request_dae"]), want, atol=1e-5)
    numeric = next(c for c in cols if rows[c].dtype != object)
    # (every row's value a string: Feast infers a request field's type from its first value, so a column mixing
    # floats and strings fails in Feast's own conversion before any UDF runs)
    for bad in ([{**reqs[0], numeric: "abc"}], [{**r, numeric: "abc"} for r in reqs[:2]]):  # either path
        with pytest.raises(Exception, match=rf"request_dae: column\(s\) \['{numeric}'\] must be numeric"):
            store.get_online_features(features=[f"{dae_view}:request_dae"], entity_rows=bad)

    # Feast's HTTP feature server, unmodified
    import requests

    port = free_port()
    proc = subprocess.Popen([feast_executable(), "serve", "-h", "127.0.0.1", "-p", str(port)],
                            cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                r = requests.post(f"http://127.0.0.1:{port}/get-online-features", timeout=5, json={
                    "features": [f"{view}:session_multvae"], "entities": {"recent_items": [[1, 50, 181]]}})
                break
            except requests.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, "feast serve did not come up"
                time.sleep(0.5)
        assert r.status_code == 200, r.text
        body = r.json()
        idx = body["metadata"]["feature_names"].index("session_multvae")
        np.testing.assert_allclose(body["results"][idx]["values"][0], model.fold_in([1, 50, 181]), atol=1e-5)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_redis_killed_mid_materialize_then_rerun(emb_template, tmp_path, monkeypatch):
    repo = _copy(emb_template, tmp_path / "repo")
    v1, _, _ = _versions(repo)
    view = f"user_dae__{v1}"
    yaml_path = repo / "feature_store.redis.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("batch_size: 16384", "batch_size: 40"))
    server = make_redis_server(tmp_path / "redis", extra_args=("--appendonly", "yes", "--appendfsync", "always"))
    (tmp_path / "redis").mkdir()
    server.start()
    env = {"REDIS_CONNECTION_STRING": server.url}
    monkeypatch.setenv("REDIS_CONNECTION_STRING", server.url)
    import redis

    client = redis.Redis(host="127.0.0.1", port=server.port)
    try:
        run_feast(repo, "apply", yaml="feature_store.redis.yaml", env=env, capture=True)
        cmd = [feast_executable(), "-f", "feature_store.redis.yaml", "materialize", "--views", view,
               "1997-09-01T00:00:00", END]
        proc = subprocess.Popen(cmd, cwd=repo, env={**__import__("os").environ, **env}, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while client.dbsize() < 100:  # some batches written
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-2000:]
            time.sleep(0.01)
        server.proc.kill()
        out = proc.communicate(timeout=120)[0]
        assert proc.returncode != 0
        assert f"failed while writing view {view}" in out and "rerun" in out, out[-3000:]
        server.start()  # same port, reloads the append-only file: what was written before the kill
        store = FeatureStore(repo_path=str(repo), fs_yaml_file=yaml_path)
        assert store.get_feature_view(view).materialization_intervals == []  # not recorded as done
        assert not list((repo / "data" / "embeddings" / "user_dae" / v1).glob("at=1998*"))  # no partial snapshot
        users = np.array(sorted(changed_users(repo, "1997-09-01", END)))
        want = DAE.load(repo / "models", v1).transform(expected_inputs(repo, users, END))
        got = online(store, view, users)
        written = np.array([e is not None for e in got["embedding"]])
        assert 0 < written.sum() < len(users)
        np.testing.assert_allclose(np.array([got["embedding"][i] for i in np.flatnonzero(written)]),
                                   want[written], atol=1e-5)  # complete vectors of one version, no mixes
        run_feast(repo, "materialize", "--views", view, "1997-09-01T00:00:00", END, yaml="feature_store.redis.yaml",
                  env=env, capture=True)
        got = online(FeatureStore(repo_path=str(repo), fs_yaml_file=yaml_path), view, users)
        np.testing.assert_allclose(np.array(got["embedding"]), want, atol=1e-5)
    finally:
        server.stop()


def test_bad_models_fail_clearly(emb_template, tmp_path):
    repo = _copy(emb_template, tmp_path / "repo")
    v1, _, _ = _versions(repo)
    run_feast(repo, "apply", capture=True)
    # a version with another dimension cannot be deployed under a 64-d declaration; embeddings.json unchanged
    v16 = train(repo, "user_dae", epochs=1, dim=16, progress=False).version
    before = (repo / "embeddings.json").read_text()
    assert cli(["deploy", "user_dae", "--version", v16, "--repo", str(repo)]) == 2
    assert (repo / "embeddings.json").read_text() == before
    # a tampered weights file: materialize fails naming the version; nothing written for it
    weights = repo / "models" / "dae" / v1 / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(Exception, match=v1):
        run_feast(repo, "materialize", "--views", f"user_dae__{v1}", "1997-09-01T00:00:00", END, capture=True)
    assert not list((repo / "data" / "embeddings" / "user_dae" / v1).glob("at=1998*"))
    # and `feast apply` refuses the repo while a deployed version is damaged
    with pytest.raises(Exception, match="does not match its recorded sha256"):
        run_feast(repo, "apply", capture=True)


def test_ray_engine_equals_local_engine(emb_template, tmp_path, caplog):
    """The same view materialized by the engine's Ray path (a real local cluster: a head and a worker node,
    an actor pool of 2) and by its local path: identical online vectors and offline snapshots; each actor
    loaded the model once; selected by feature_store.yaml alone."""
    import logging

    from feast_autofeat.testing import LocalRayCluster

    try:
        cluster = LocalRayCluster(workers=1, cpus=1)
    except AutofeatError as exc:
        pytest.fail(str(exc))
    local, remote = _copy(emb_template, tmp_path / "local"), _copy(emb_template, tmp_path / "ray")
    v1, _, _ = _versions(local)
    view, start = f"user_dae__{v1}", "1997-09-01T00:00:00"
    yaml = remote / "feature_store.yaml"
    yaml.write_text(yaml.read_text().replace("batch_size: 16384", "batch_size: 100").replace(
        "  device: cpu", f"  device: cpu\n  ray_address: {cluster.address}\n  ray_actors: 2"))
    run_feast(local, "apply", capture=True)
    run_feast(local, "materialize", "--views", view, start, END, capture=True)
    cluster.start()
    try:
        run_feast(remote, "apply", capture=True)
        store = FeatureStore(repo_path=str(remote))
        with caplog.at_level(logging.INFO, logger="feast_autofeat.feast.engine"):
            store.materialize(start_date=datetime.fromisoformat(start), end_date=datetime.fromisoformat(END),
                              feature_views=[view])
    finally:
        cluster.stop()
    stats = [r.getMessage() for r in caplog.records if "Ray actors" in r.getMessage()]
    assert len(stats) == 1 and "rows encoded by" in stats[0], stats
    n_actors = int(stats[0].split("encoded by ")[1].split(" Ray")[0])
    assert n_actors == 2 and stats[0].endswith("[1, 1]"), stats[0]  # both actors worked, one model load each
    users = sorted(changed_users(local, start, END))
    want = online(FeatureStore(repo_path=str(local)), view, users)
    got = online(store, view, users)
    assert got["model_version"] == want["model_version"] and set(got["model_version"]) == {v1}
    np.testing.assert_allclose(np.array(got["embedding"]), np.array(want["embedding"]), atol=1e-6)
    snaps = [pd.read_parquet(r / "data" / "embeddings" / "user_dae" / v1).sort_values("user_id", ignore_index=True)
             for r in (local, remote)]
    assert len(snaps[0]) == len(users)
    pd.testing.assert_frame_equal(snaps[1].drop(columns="embedding"), snaps[0].drop(columns="embedding"))
    np.testing.assert_allclose(np.stack(snaps[1].embedding), np.stack(snaps[0].embedding), atol=1e-6)
