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
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for pkg in ("feast", "torch", "duckdb", "pyarrow", "pandas", "numpy", "redis", "feast-autofeat"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions}


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> dict:
    """Run ``fn`` warmup + repeats times; seconds of the timed runs with median, p50, p99, min, max."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    ordered = sorted(runs)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"runs_s": runs, "median_s": statistics.median(runs), "p50_s": statistics.median(runs),
            "p99_s": p99, "min_s": ordered[0], "max_s": ordered[-1]}


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
def ml100k_repo(data_dir: Path = ML100K):
    """A temporary copy of feature_repo/, prepared from ML-100K and applied with the real `feast apply`."""
    from feast_autofeat.prepare import prepare
    from feast_autofeat.quickstart import run_feast

    work = Path(tempfile.mkdtemp(prefix="autofeat-bench-"))
    try:
        repo = work / "feature_repo"
        shutil.copytree(ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("data", "store", "models"))
        prepare("movielens-100k", repo, raw_dir=data_dir)
        run_feast(repo, "apply", capture=True)
        yield repo
    finally:
        shutil.rmtree(work, ignore_errors=True)
