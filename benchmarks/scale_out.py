"""Scale-out evidence: the Ray path next to the local engine, and the local engine's memory as entities grow.

The repo of ``materialize_speed.py`` (N users x 20 numeric features in DuckDB, a 64-d DAE embedding view, a
private redis-server online, ``AutofeatEngine``), materialized with Feast's own ``feast materialize``:

* **Ray vs local** (``--rows``, default 1M entities): a real local Ray cluster (``ray start --head`` plus one
  worker node, 1 CPU each) and the same repo with ``ray_address`` set (an actor pool of 2), against the local
  engine, in interleaved rounds, Redis emptied before each. Both results are checked against the model on 200
  users. On 2 cores this shows the Ray path's overhead (Ray Data moving Arrow blocks between processes, actor
  start-up), not a speed-up: Ray is for clusters with more cores or GPUs than one machine.
* **Memory** (``--memory-rows``, default 1M and 10M entities): peak RSS (VmHWM) of one ``feast materialize``
  process, with the inputs read in key partitions of ``input_chunk_rows`` (default 1M) and, at the largest
  size, read whole for contrast; plus redis-server's own memory (``used_memory``). Bounded means the chunked
  peak at 10M stays near the chunked peak at 1M.

    python benchmarks/scale_out.py [--rows 1000000] [--memory-rows 1000000 10000000] [--quick]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import redis_server, save, timed_rounds  # noqa: E402
from materialize_speed import COLUMNS, DIM, T0, build_repo, quiet  # noqa: E402

from feast_autofeat.feast.engine import AutofeatEngineConfig  # noqa: E402

CHUNK_ROWS = AutofeatEngineConfig().input_chunk_rows  # the engine's default, which the chunked runs use


def yaml_with(repo: Path, name: str, extra: str) -> str:
    """A copy of the repo's feature_store.yaml with ``extra`` lines in its batch_engine block."""
    text = (repo / "feature_store.yaml").read_text()
    assert "  batch_size: 16384\n" in text
    (repo / name).write_text(text.replace("  batch_size: 16384\n", "  batch_size: 16384\n" + extra))
    return name


def check(store, view: str, df, model, pick: np.ndarray) -> float:
    got = store.get_online_features(features=[f"{view}:embedding"],
                                    entity_rows=[{"user_id": int(df.user_id[i])} for i in pick]).to_dict()
    if any(v is None for v in got["embedding"]):
        return float("inf")
    return float(np.abs(np.array(got["embedding"], np.float32) - model.transform(df[COLUMNS].iloc[pick])).max())


# Feast's own CLI entry point (what the `feast` script runs), recording the process's peak RSS (VmHWM) at exit.
# Not os.wait4's ru_maxrss: Linux carries the parent's RSS at fork into the child's maximum, and this parent
# holds the generated data.
FEAST_WITH_PEAK = """import atexit, os, re, sys
def peak():
    with open("/proc/self/status") as f:
        kb = re.search(r"VmHWM:\\s+(\\d+)", f.read()).group(1)
    with open(os.environ["PEAK_FILE"], "w") as f:
        f.write(kb)
atexit.register(peak)
from feast.cli.cli import cli
sys.argv[0] = "feast"
sys.exit(cli())
"""


def feast_materialize_rss(repo: Path, yaml: str, view: str, start: str, end: str) -> dict:
    """`feast -f yaml materialize` in a child process: seconds and its peak RSS."""
    args = ["-f", yaml, "materialize", "--views", view, start, end]
    log, peak = repo / "materialize.log", repo / "peak_kb"  # a log file: nobody reads a pipe meanwhile
    t = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.run([sys.executable, "-c", FEAST_WITH_PEAK, *args], cwd=repo, stdout=out,
                              stderr=subprocess.STDOUT, env={**os.environ, "PEAK_FILE": str(peak)})
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"`feast {' '.join(args)}` failed: {log.read_text(errors='replace')[-2000:]}")
    return {"seconds": seconds, "peak_rss_mb": int(peak.read_text()) / 1024}


def ray_vs_local(n: int, rounds: int, tmp: Path) -> dict:
    import redis
    from feast import FeatureStore

    from feast_autofeat.testing import LocalRayCluster

    with redis_server() as server:
        repo = tmp / f"ray_{n}"
        df, _, model, version = build_repo(repo, server.url, n, precomputed=False)
        view = f"user_dae__{version}"
        ray_yaml = None
        cluster = LocalRayCluster(workers=1, cpus=1)
        t = time.perf_counter()
        cluster.start()
        cluster_start_s = time.perf_counter() - t
        try:
            ray_yaml = yaml_with(repo, "feature_store.ray.yaml",
                                 f"  ray_address: {cluster.address}\n  ray_actors: 2\n")
            stores = {"local": FeatureStore(repo_path=str(repo)),
                      "ray": FeatureStore(repo_path=str(repo), fs_yaml_file=repo / ray_yaml)}
            host, port = server.url.split(":")
            flush = redis.Redis(host=host, port=int(port)).flushall
            start, end = T0 - timedelta(days=1), T0 + timedelta(minutes=1)
            fns = {label: quiet(lambda s=s: s.materialize(start, end, feature_views=[view]))
                   for label, s in stores.items()}
            pick = np.random.default_rng(2).choice(n, 200, replace=False)
            diffs = {}
            for label, fn in fns.items():  # warm-up + correctness, each on an empty Redis
                flush()
                fn()
                diffs[label] = check(stores[label], view, df, model, pick)
            if max(diffs.values()) > 1e-5:
                raise SystemExit(f"CORRECTNESS FAILED: max|diff| vs the model {diffs}")
            print(f"ray vs local at {n:,}: warm-ups passed (cluster started in {cluster_start_s:.0f} s); timing",
                  flush=True)
            runs = timed_rounds(fns, rounds, setup=flush)
        finally:
            cluster.stop()
    figures = {label: {"rows_per_s": n / r["median_s"], **r} for label, r in runs.items()}
    figures["ray"]["vs_local"] = figures["ray"]["rows_per_s"] / figures["local"]["rows_per_s"]
    return {"rows": n, "figures": figures, "max_abs_diff_vs_model_200_users": diffs,
            "ray_cluster": {"nodes": 2, "cpus_per_node": 1, "actors": 2, "start_s": cluster_start_s}}


def memory(sizes: list[int], tmp: Path) -> dict:
    import redis

    out = []
    for n in sizes:
        with redis_server() as server:
            repo = tmp / f"mem_{n}"
            df, _, model, version = build_repo(repo, server.url, n, precomputed=False)
            view = f"user_dae__{version}"
            del df
            host, port = server.url.split(":")
            client = redis.Redis(host=host, port=int(port))
            start, end = (T0 - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S"), \
                (T0 + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S")
            modes = {"chunked": "feature_store.yaml"}
            if n == max(sizes) and n > 1_000_000:  # read whole, for contrast: what chunking avoids
                modes["whole"] = yaml_with(repo, "feature_store.whole.yaml", f"  input_chunk_rows: {n * 10}\n")
            for mode, yaml in modes.items():
                client.flushall()
                r = feast_materialize_rss(repo, yaml, view, start, end)
                keys = client.dbsize() - client.exists(b"autofeat:watermark:bench:" + view.encode())
                if keys != n:
                    raise SystemExit(f"CORRECTNESS FAILED: {keys} entity keys in Redis after materializing {n} "
                                     "users")
                row = {"rows": n, "mode": mode, **r, "rows_per_s": n / r["seconds"],
                       "redis_used_memory_mb": client.info("memory")["used_memory"] / 2**20,
                       "input_partitions": -(-n // CHUNK_ROWS) if mode == "chunked" else 1}
                print(f"memory: {n:>11,} entities, inputs {mode:<8} {r['seconds']:7.1f} s  "
                      f"{row['rows_per_s']:>9,.0f} rows/s  peak RSS {r['peak_rss_mb']:7.0f} MB  "
                      f"(redis-server {row['redis_used_memory_mb']:.0f} MB)", flush=True)
                out.append(row)
            client.close()
    return {"runs": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="entities for Ray vs local")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--memory-rows", type=int, nargs="*", default=[1_000_000, 10_000_000])
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--quick", action="store_true", help="50k rows for Ray, 200k and 2M for memory, 1 round")
    args = ap.parse_args()
    if args.quick:
        args.rows, args.rounds, args.memory_rows = 50_000, 1, [200_000, 2_000_000]
    t_start = time.perf_counter()
    result: dict = {}
    with tempfile.TemporaryDirectory(prefix="autofeat-scale-") as tmp:
        if args.memory_rows:
            result["memory"] = memory(sorted(args.memory_rows), Path(tmp))
        if not args.skip_ray:
            result["ray_vs_local"] = ray_vs_local(args.rows, args.rounds, Path(tmp))
            f = result["ray_vs_local"]["figures"]
            print(f"\n{args.rows:,} entities, feast materialize, median of {args.rounds}: local "
                  f"{f['local']['rows_per_s']:,.0f} rows/s, Ray (2 actors on a 2-node local cluster) "
                  f"{f['ray']['rows_per_s']:,.0f} rows/s = {f['ray']['vs_local']:.2f}x local")
    result["parameters"] = {"dim": DIM, "features": len(COLUMNS), "batch_size": 16384, "quick": args.quick,
                            "input_chunk_rows": CHUNK_ROWS}
    path = save("scale_out" + ("_quick" if args.quick else ""),
                {**result, "script_seconds": time.perf_counter() - t_start})
    print(f"saved {path} ({time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
