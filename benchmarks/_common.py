"""Shared by the benchmark scripts: machine facts, timing statistics, saving results as JSON."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
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
