"""Shared by the benchmark scripts: machine facts, timing statistics, saving results as JSON."""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    cpu, cpu_id = platform.processor(), {}
    try:  # the first core's name, family/model (VMs all say "AMD EPYC": the family tells a Zen 2 from a Zen 5)
        for line in Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines():
            name, _, value = (part.strip() for part in line.partition(":"))
            if name == "model name":
                cpu = value
            elif name in ("cpu family", "model", "cpu MHz"):
                cpu_id[{"cpu family": "cpu_family", "model": "cpu_model", "cpu MHz": "cpu_mhz"}[name]] = value
    except OSError:
        pass
    versions = {}
    for pkg in ("feast", "torch", "duckdb", "pyarrow", "pandas", "numpy", "redis", "feast-autofeat"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"cores": os.cpu_count(), "cpu": cpu, **cpu_id, "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions,
            "load_average": os.getloadavg()}  # 1/5/15 min: other work on the machine skews timings


def _stats(runs: list[float]) -> dict:
    ordered = sorted(runs)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"runs_s": runs, "median_s": statistics.median(runs), "p50_s": statistics.median(runs),
            "p99_s": p99, "min_s": ordered[0], "max_s": ordered[-1]}


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1, setup: Callable[[], object] | None = None,
          ) -> dict:
    """Run ``fn`` warmup + repeats times; seconds of the timed runs with median, p50, p99, min, max.
    ``setup`` (untimed) runs before every call, e.g. to empty the online store."""
    for _ in range(warmup):
        if setup is not None:
            setup()
        fn()
    runs = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return _stats(runs)


def timed_rounds(fns: dict[str, Callable[[], object]], repeats: int,
                 setup: Callable[[], object] | dict[str, Callable[[], object]] | None = None) -> dict[str, dict]:
    """Time several functions in interleaved rounds (every round runs each once, in order), so a change in the
    machine's load mid-benchmark hits every figure alike. ``setup`` (untimed) runs before each call: one
    function for all, or one per label. Per label: ``timed``'s statistics. No warm-up."""
    runs: dict[str, list[float]] = {label: [] for label in fns}
    for _ in range(repeats):
        for label, fn in fns.items():
            prepare = setup.get(label) if isinstance(setup, dict) else setup
            if prepare is not None:
                prepare()
            t = time.perf_counter()
            fn()
            runs[label].append(time.perf_counter() - t)
    return {label: _stats(r) for label, r in runs.items()}


def save(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "machine": machine(), **result}
    path.write_text(json.dumps(payload, indent=2))
    return path


ROOT = Path(__file__).resolve().parents[1]
ML100K = ROOT.parent / "shared" / "data" / "ml-100k"


@contextmanager
def prepared_repo(dataset: str, **options):
    """A temporary copy of feature_repo/, prepared with ``prepare(dataset, **options)`` and applied with the real
    `feast apply`."""
    from feast_autofeat.prepare import prepare
    from feast_autofeat.repo import run_feast

    work = Path(tempfile.mkdtemp(prefix="autofeat-bench-"))
    try:
        repo = work / "feature_repo"
        ignore = shutil.ignore_patterns("data", "store", "models", "embeddings.json", "__pycache__")
        shutil.copytree(ROOT / "feature_repo", repo, ignore=ignore)
        prepare(dataset, repo, **options)
        run_feast(repo, "apply", capture=True)
        yield repo
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ml100k_repo(data_dir: Path = ML100K):
    """``prepared_repo`` of ML-100K."""
    return prepared_repo("movielens-100k", raw_dir=data_dir)


@contextmanager
def trained_ml100k(yaml: str, epochs: dict):
    """ML-100K in a scratch repo (``ml100k_repo``) whose ``yaml`` points at a private Redis, small models trained
    and materialized there: yields (redis, repo)."""
    from feast_autofeat.recommend.pipeline import build_recommender
    from feast_autofeat.repo import run_feast

    with redis_server() as redis, ml100k_repo() as repo:
        os.environ["REDIS_CONNECTION_STRING"] = redis.url
        run_feast(repo, "apply", yaml=yaml, capture=True)
        print("training small models and materializing into Redis ...", flush=True)
        build_recommender(repo, yaml=yaml, epochs=epochs)
        yield redis, repo


def percentiles_ms(seconds: list[float]) -> dict:
    """p50 / p99 / mean of per-call latencies, in milliseconds."""
    ordered = sorted(seconds)
    p50 = statistics.median(ordered) * 1e3
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] * 1e3
    return {"n": len(ordered), "p50_ms": p50, "median_ms": p50, "p99_ms": p99,
            "mean_ms": statistics.fmean(ordered) * 1e3, "min_ms": ordered[0] * 1e3}


@contextmanager
def served(repo: Path, yaml: str, token: str):
    """`feast-autofeat serve` on ``repo`` in a subprocess, as in production (``token`` is its read token):
    yields its base URL once ``/healthz`` answers; stopped on exit."""
    import subprocess
    import sys

    import requests

    from feast_autofeat.testing import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "feast_autofeat.cli", "serve", "--repo", str(repo), "-f", yaml,
                             "--port", str(port)], env={**os.environ, "AUTOFEAT_READ_TOKENS": token},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                requests.get(f"{url}/healthz", timeout=2).raise_for_status()
                break
            except requests.RequestException:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("feast-autofeat serve did not start") from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextmanager
def redis_server():
    """A private redis-server on a free loopback port (no persistence), with ``url`` (host:port) and ``pid``."""
    from feast_autofeat.testing import redis_server as private_redis

    with private_redis() as server:
        yield server


class CpuMonitor:
    """CPU time other processes used while a benchmark ran: on a shared machine they skew the timings.
    ``own_pids``: processes of the benchmark's own that it has not waited for (e.g. its redis-server)."""

    def __init__(self, own_pids: tuple[int, ...] = ()) -> None:
        self.own_pids = own_pids
        self.start = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        hz = os.sysconf("SC_CLK_TCK")
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        busy = (sum(ticks) - ticks[3] - ticks[4]) / hz  # all but idle and iowait
        t = os.times()  # this process and its waited-for children (feast CLI runs)
        own = t.user + t.system + t.children_user + t.children_system
        for pid in self.own_pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                own += (int(fields[11]) + int(fields[12])) / hz  # utime, stime
            except (OSError, IndexError, ValueError):
                pass
        return time.monotonic(), busy, own

    def report(self) -> dict:
        (w0, b0, o0), (w1, b1, o1) = self.start, self._sample()
        wall, others = w1 - w0, max(0.0, (b1 - b0) - (o1 - o0))
        return {"wall_s": wall, "machine_busy_cpu_s": b1 - b0, "own_cpu_s": o1 - o0, "others_cpu_s": others,
                "others_share_of_machine": others / (wall * (os.cpu_count() or 1))}
