"""Materialization rows/s into Redis: AutofeatEngine on a 64-d DAE embedding view vs Feast's local engine.

A self-contained feature repo in a temp dir (DuckDB offline, a private redis-server online, AutofeatEngine as
batch engine): N users with 20 numeric features (view ``user_features``) and the same N users with a
precomputed 64-d float32 vector (plain view ``precomputed_vectors``). A DAE (dim 64) trained on 20k rows is
deployed as embedding view ``user_dae__<version>``; the repo is applied with the real ``feast apply``.

Anchor: ``store.materialize`` of ``precomputed_vectors`` (AutofeatEngine hands plain views to Feast's
LocalComputeEngine, i.e. Feast's own path), with Feast's default dedup and with ``skip_dedup: true``.
Ours: ``store.materialize`` of the embedding view (point-in-time read through DuckDB, encode, Redis write,
offline snapshot), then its stages alone (writer, encode, encode + write). After one warm-up each, all figures
are timed in interleaved rounds (so a change in machine load hits them alike); Redis is FLUSHALLed (untimed)
before every run. Targets: ours >= 10x Feast's rows/s and >= 150k rows/s.

    python benchmarks/materialize_speed.py [--rows 200000] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CpuMonitor, redis_server, save, timed_rounds  # noqa: E402

DIM, FEATURES, TRAIN_ROWS = 64, 20, 20_000
T0 = datetime(2024, 6, 1, tzinfo=timezone.utc)  # every input row's event time
WARMUP_ROWS = 2_000  # the anchor's warm-up slice: these users' precomputed rows are stamped an hour earlier
COLUMNS = [f"f{i:02d}" for i in range(FEATURES)]

YAML = """project: bench
provider: local
registry: {registry}
offline_store:
  type: duckdb
online_store:
  type: redis
  connection_string: {redis}
  skip_dedup: {skip_dedup}
entity_key_serialization_version: 3
batch_engine:
  type: feast_autofeat.feast.engine.AutofeatEngine
  batch_size: 16384
  threads: {threads}
"""

DEFINITIONS = '''from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Float32, Float64

from feast_autofeat.feast.embeddings import embedding_view

DATA = Path(__file__).resolve().parent / "data"
COLUMNS = {columns!r}
user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
user_features = FeatureView(
    name="user_features", entities=[user], ttl=timedelta(0), schema=[Field(name=c, dtype=Float64) for c in COLUMNS],
    source=FileSource(name="user_features_source", path=str(DATA / "user_features.parquet"),
                      timestamp_field="event_timestamp"))
precomputed_vectors = FeatureView(
    name="precomputed_vectors", entities=[user], ttl=timedelta(0),
    schema=[Field(name="vector", dtype=Array(Float32), vector_length={dim})],
    source=FileSource(name="precomputed_source", path=str(DATA / "precomputed.parquet"),
                      timestamp_field="event_timestamp"))
decl = embedding_view("user_dae", entity=user, model="dae", inputs=[user_features], dim={dim}, repo=__file__)
globals().update(decl.feast_objects())
'''


def make_data(n: int, seed: int = 0, vectors: bool = True) -> tuple[pd.DataFrame, np.ndarray | None]:
    """Seeded features (half of them linear mixes of a few latent factors, so they correlate) and vectors."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, 4))
    mixed = latent @ rng.standard_normal((4, FEATURES // 2)) + 0.3 * rng.standard_normal((n, FEATURES // 2))
    free = np.column_stack([rng.exponential(2.0, n), rng.uniform(0, 100, n)] +
                           [rng.standard_normal(n) for _ in range(FEATURES - FEATURES // 2 - 2)])
    df = pd.DataFrame(np.hstack([mixed, free]), columns=COLUMNS)
    df.insert(0, "user_id", np.arange(1, n + 1, dtype=np.int64))
    df.insert(1, "event_timestamp", pd.Timestamp(T0))
    return df, rng.standard_normal((n, DIM)).astype(np.float32) if vectors else None


def build_repo(repo: Path, redis_url: str, n: int, dae_epochs: int = 3, threads: int = 1,
               precomputed: bool = True) -> tuple[pd.DataFrame, np.ndarray | None, object, str]:
    """The repo of the module's docstring (``precomputed=False``: without the anchor's vectors, an empty file)."""
    from feast_autofeat.feast.embeddings import Deployments
    from feast_autofeat.models.dae import DAE
    from feast_autofeat.repo import run_feast

    (repo / "data").mkdir(parents=True)
    df, vectors = make_data(n, vectors=precomputed)
    df.to_parquet(repo / "data" / "user_features.parquet", index=False)
    m = n if precomputed else 0
    ts = np.full(m, pd.Timestamp(T0).to_datetime64().astype("datetime64[us]"))
    ts[:WARMUP_ROWS] -= np.timedelta64(1, "h")
    flat = vectors.reshape(-1) if precomputed else np.zeros(0, np.float32)
    pq.write_table(pa.table({
        "user_id": df.user_id.to_numpy()[:m], "event_timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(flat), DIM).cast(
            pa.list_(pa.float32()))}), repo / "data" / "precomputed.parquet")
    t = time.perf_counter()
    model = DAE(dim=DIM, epochs=dae_epochs, seed=0).fit(df[COLUMNS].iloc[:TRAIN_ROWS])
    art = model.save(repo / "models", extra={"feature_refs": [f"user_features:{c}" for c in COLUMNS],
                                             "training_window": {"as_of": T0.isoformat()}})
    deployments = Deployments(repo)
    deployments.deploy("user_dae", "dae", art.version, live=True)
    deployments.save()
    (repo / "definitions.py").write_text(DEFINITIONS.format(columns=COLUMNS, dim=DIM))
    for skip in (False, True):
        name = "feature_store.skip_dedup.yaml" if skip else "feature_store.yaml"
        (repo / name).write_text(YAML.format(registry=repo / "registry.db", redis=redis_url,
                                             skip_dedup=str(skip).lower(), threads=threads))
    run_feast(repo, "apply", capture=True)
    print(f"repo ready: {n:,} users, DAE {art.version} trained in {time.perf_counter() - t:.1f} s + apply")
    return df, vectors, model, art.version


def quiet(fn):
    """Feast prints banners and progress bars; keep them out of the table (and of the timing noise)."""
    def run():
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return fn()
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds (each runs every figure once)")
    ap.add_argument("--dae-epochs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="20k rows, 2 rounds")
    ap.add_argument("--threads", type=int, default=1, help="torch threads while encoding (engine option `threads`;"
                    " 1 leaves the other core to redis-server)")
    args = ap.parse_args()
    if args.quick:
        args.rows, args.repeats = 20_000, 2
    n = args.rows
    import redis
    from feast import FeatureStore

    from feast_autofeat.feast.engine import AutofeatEngineConfig, EmbeddingComputer, EmbeddingSpec, encode_and_write
    from feast_autofeat.feast.writer import RedisVectorWriter

    t_start, load_start = time.perf_counter(), os.getloadavg()
    with redis_server() as server, tempfile.TemporaryDirectory(prefix="autofeat-matbench-") as tmp:
        repo = Path(tmp) / "repo"
        url = server.url
        df, vectors, model, version = build_repo(repo, url, n, args.dae_epochs, args.threads)
        view = f"user_dae__{version}"
        host, port = url.split(":")
        client = redis.Redis(host=host, port=int(port))
        flush = client.flushall
        store = FeatureStore(repo_path=str(repo))
        start, end = T0 - timedelta(days=1), T0 + timedelta(minutes=1)

        def materialize(s: FeatureStore, views: list[str], lo=start, hi=end):
            return quiet(lambda: s.materialize(lo, hi, feature_views=views))

        # warm-ups (untimed), each followed by its correctness check
        pick = np.random.default_rng(1).choice(n, 100, replace=False)
        anchors = {label: FeatureStore(repo_path=str(repo), fs_yaml_file=repo / yaml) for label, yaml in
                   (("feast_local", "feature_store.yaml"), ("feast_local_skip_dedup", "feature_store.skip_dedup.yaml"))}
        early, anchor_diff = pick % WARMUP_ROWS, 0.0
        for s in anchors.values():  # Feast's path is slow: warm it up on the early slice (users 1..WARMUP_ROWS)
            flush()
            materialize(s, ["precomputed_vectors"], start, T0 - timedelta(minutes=30))()
            got = s.get_online_features(features=["precomputed_vectors:vector"],
                                        entity_rows=[{"user_id": int(df.user_id[i])} for i in early]).to_dict()
            anchor_diff = max(anchor_diff, float(np.abs(np.array(got["vector"], np.float32) - vectors[early]).max()))
        flush()
        materialize(store, [view])()
        got = store.get_online_features(features=[f"{view}:embedding"],
                                        entity_rows=[{"user_id": int(df.user_id[i])} for i in pick]).to_dict()
        expected = model.transform(df[COLUMNS].iloc[pick])
        emb_diff = float(np.abs(np.array(got["embedding"], np.float32) - expected).max())
        snapshots = sorted((repo / "data" / "embeddings" / "user_dae" / version).glob("at=2*.parquet"))
        snapshot_rows = pq.read_metadata(snapshots[-1]).num_rows if snapshots else 0
        if not (emb_diff < 1e-5 and anchor_diff == 0.0 and snapshot_rows == n):
            raise SystemExit(f"CORRECTNESS FAILED: embedding max|diff| {emb_diff}, anchor max|diff| {anchor_diff}, "
                             f"snapshot rows {snapshot_rows} of {n}")
        comp = EmbeddingComputer(EmbeddingSpec.from_view(store.get_feature_view(view), store.registry, store.project),
                                 store.config, store._get_provider().offline_store, store.registry, store.project,
                                 AutofeatEngineConfig(threads=args.threads))
        encoder, inputs = comp.encoder, comp.latest_inputs(start, end)  # the engine's own read
        writer = RedisVectorWriter(store.config, view, "user_id", DIM)
        ids, frame = df.user_id.to_numpy(), df[COLUMNS]
        flush()
        encode_and_write(comp, inputs, writer, end, 16384)
        print("warm-ups and correctness checks passed; timing", flush=True)

        # interleaved rounds: a) Feast's local engine, b) ours through Feast, c) ours by stage. "cold": Redis
        # empty, every row creates its entity hash; "warm": the hashes exist (as when the entity's other views
        # are online: Feast keeps all views of an entity in one hash), so a row adds fields to it
        other = RedisVectorWriter(store.config, "user_profile", "user_id", DIM)

        def prefill():
            flush()
            other.write(ids, vectors, "profile", end)

        fns = {
            **{label: materialize(s, ["precomputed_vectors"]) for label, s in anchors.items()},
            "autofeat_materialize": materialize(store, [view]),
            "read_inputs": lambda: comp.latest_inputs(start, end),
            "writer_only": lambda: writer.write(ids, vectors, version, end),
            "encode_only": lambda: encoder.encode_frame(frame),
            # the engine's pipelined loop (encode batch k+1 while batch k is written), without the read
            "encode_and_write": lambda: encode_and_write(comp, inputs, writer, end, 16384),
        }
        warm = {"feast_local_warm": fns["feast_local"], "autofeat_materialize_warm": fns["autofeat_materialize"],
                "writer_only_warm": fns["writer_only"], "encode_and_write_warm": fns["encode_and_write"]}
        cpu = CpuMonitor(own_pids=(server.pid,))
        runs = timed_rounds({**fns, **warm}, args.repeats,
                            setup={**{k: flush for k in fns}, **{k: prefill for k in warm}})
        contention = cpu.report()
        writer.close()
        client.close()

    figures = {}
    for label, r in runs.items():
        rate = n / r["median_s"]
        figures[label] = {"rows_per_s": rate, "rows_per_s_p50": rate, "rows_per_s_worst": n / r["p99_s"], **r}
        for anchor in ("feast_local", "feast_local_skip_dedup", "feast_local_warm"):  # ratio of medians, and
            # median of per-round ratios
            figures[label][f"vs_{anchor}"] = rate / (n / runs[anchor]["median_s"])
            figures[label][f"vs_{anchor}_per_round"] = float(np.median(
                np.array(runs[anchor]["runs_s"]) / np.array(r["runs_s"])))
    print(f"\nmaterialize {n:,} rows x {DIM}-d into Redis (median of runs; ratio vs Feast's local engine)")
    print(f"{'figure':<26}{'rows/s':>10}{'p50 s':>8}{'p99 s':>8}{'x Feast':>9}{'(per round)':>12}"
          f"{'x skip_dedup':>13}{'x Feast warm':>13}")
    for label, f in figures.items():
        print(f"{label:<26}{f['rows_per_s']:>10,.0f}{f['p50_s']:>8.2f}{f['p99_s']:>8.2f}{f['vs_feast_local']:>9.1f}"
              f"{f['vs_feast_local_per_round']:>12.1f}{f['vs_feast_local_skip_dedup']:>13.1f}"
              f"{f['vs_feast_local_warm']:>13.1f}")
    targets = {}
    pairs = [(label, "feast_local") for label in ("autofeat_materialize", "encode_and_write")]
    pairs += [(label, "feast_local_warm") for label in ("autofeat_materialize_warm", "encode_and_write_warm")]
    for label, anchor in pairs:
        targets[f"{label}_vs_{anchor}>=10x"] = figures[label][f"vs_{anchor}"] >= 10
        targets[f"{label}_rows_per_s>=150k"] = figures[label]["rows_per_s"] >= 150_000
    print("targets: " + ", ".join(f"{k} {'MET' if v else 'MISSED'}" for k, v in targets.items()))
    import torch

    params = {"rows": n, "dim": DIM, "features": FEATURES, "train_rows": TRAIN_ROWS, "dae_epochs": args.dae_epochs,
              "batch_size": 16384, "rounds": args.repeats,
              "anchor_warmup_rows": WARMUP_ROWS, "torch_threads": torch.get_num_threads(), "quick": args.quick,
              "load_average_at_start": load_start, "model_version": version,
              "redis": "private redis-server on loopback; cold runs after FLUSHALL, warm runs after FLUSHALL + writing "
                       "every entity's hash with another view's field",
              "timing": "interleaved rounds after one warm-up each (Feast's on its first users only)"}
    checks = {"embedding_max_abs_diff_100_users": emb_diff, "anchor_max_abs_diff_100_users": anchor_diff,
              "snapshot_rows": snapshot_rows}
    if contention["others_share_of_machine"] > 0.05:
        print(f"WARNING: other processes used {contention['others_share_of_machine']:.0%} of the machine's CPU "
              "while timing; timings are pessimistic")
    path = save("materialize_speed" + ("_quick" if args.quick else ""),
                {"parameters": params, "anchor": "feast_local", "figures": figures, "checks": checks,
                 "targets_met": targets,
                 "other_processes": contention, "script_seconds": time.perf_counter() - t_start})
    print(f"saved {path} ({time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
