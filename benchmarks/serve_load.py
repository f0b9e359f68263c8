"""Serving load over HTTP: ``feast-autofeat serve``'s ``GET /recommend`` against Feast's own feature server.

Both serve ML-100K from the same redis-server, started from the same repo, measured in one run by ``wrk`` (a real
HTTP load tool, one thread, keep-alive connections) at 4 and 16 concurrent connections, each user drawn at
random from the 943 per request:

- ours: ``GET /recommend?user_id=U&k=10`` with a read token (``feast-autofeat serve``, as in production): the
  online read, the session embedding, the query tower, the index search, the exclusions, the JSON answer;
- the anchor: ``feast serve`` (``--no-access-log``), ``POST /get-online-features`` of the same user features
  the recommender reads (its stored query features and the history lists), no model at all.

Each server runs in one process first (``--workers 1``), then both in ``--workers 2`` (one per core). The servers
run in turn, never together, with a warm-up before each measurement; the configurations are interleaved over
``--rounds`` rounds and each figure is the median over rounds. wrk's own CPU shares the same 2 cores.

Target (issue 17): at 16 connections, ours >= 2x Feast's requests/s with p99 <= 50 ms (one process each).

    python benchmarks/serve_load.py [--seconds 20] [--rounds 3] [--quick]

Needs ``wrk`` (Debian: ``apt-get install -y wrk``) and ``redis-server``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CpuMonitor, save, trained_ml100k  # noqa: E402

from feast_autofeat.recommend.recommender import Recommender  # noqa: E402
from feast_autofeat.testing import free_port  # noqa: E402

YAML = "feature_store.redis.yaml"
EPOCHS = {"dae": 3, "gan": 3, "multvae": 5, "two_tower": 3}  # speed does not depend on how well they fit
CONNECTIONS = (4, 16)

# wrk: a random user per request; at the end one JSON line with what wrk measured (latencies in microseconds)
LUA = """
math.randomseed(%(seed)d)
local users = {%(users)s}
local method, prefix, suffix, headers = "%(method)s", "%(prefix)s", "%(suffix)s", {%(headers)s}
request = function()
  local u = users[math.random(#users)]
  if method == "GET" then return wrk.format("GET", prefix .. u .. suffix, headers) end
  return wrk.format("POST", "/get-online-features", headers, prefix .. u .. suffix)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('AUTOFEAT {"requests": %%d, "duration_us": %%d, "connect": %%d, "read": %%d, '
    .. '"write": %%d, "status": %%d, "timeout": %%d, "p50_us": %%d, "p90_us": %%d, "p99_us": %%d, '
    .. '"max_us": %%d, "mean_us": %%f}\\n', summary.requests, summary.duration, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
"""


def wrk_script(path: Path, kind: str, users: list, token: str, refs: list[str], join_key: str) -> Path:
    quoted = ", ".join(json.dumps(str(u)) if isinstance(u, str) else str(u) for u in users)
    if kind == "ours":
        values = dict(method="GET", prefix="/recommend?k=10&user_id=", suffix="",
                      headers=f'["Authorization"] = "Bearer {token}"')
    else:
        body = json.dumps({"features": refs, "full_feature_names": True, "entities": {join_key: ["@"]}})
        # the id goes where "@" is (a JSON number for an integer key)
        prefix, suffix = body.split('"@"' if not isinstance(users[0], str) else "@")
        values = dict(method="POST", prefix=prefix.replace('"', '\\"'), suffix=suffix.replace('"', '\\"'),
                      headers='["Content-Type"] = "application/json"')
    path.write_text(LUA % {"seed": 7, "users": quoted, **values})
    return path


def wait_up(url: str, proc: subprocess.Popen, what: str) -> None:
    deadline = time.time() + 240
    while True:
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"{what} did not start (exit code {proc.poll()})")
        time.sleep(0.5)


class Server:
    """One of the two servers, started on demand and stopped after its measurements."""

    def __init__(self, kind: str, repo: Path, workers: int, token: str, log: Path) -> None:
        self.kind, self.port = kind, free_port()
        env = {**os.environ, "AUTOFEAT_READ_TOKENS": token}
        if kind == "ours":
            cmd = [sys.executable, "-m", "feast_autofeat.cli", "serve", "--repo", str(repo), "-f", YAML,
                   "--port", str(self.port)] + (["--workers", str(workers)] if workers != 1 else [])
            health = f"http://127.0.0.1:{self.port}/healthz"
        else:
            # Feast reads feature_store.yaml: a copy of the Redis config under that name, in a sibling repo dir
            cmd = [str(Path(sys.executable).with_name("feast")), "--feature-store-yaml", str(repo / YAML), "serve",
                   "--port", str(self.port), "--no-access-log", "--workers", str(workers)]
            health = f"http://127.0.0.1:{self.port}/health"
        self.log = log.open("ab")
        self.proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        wait_up(health, self.proc, f"{kind} server")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def run_wrk(port: int, script: Path, connections: int, seconds: float) -> dict:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(script),
                          f"http://127.0.0.1:{port}"], capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("AUTOFEAT "))
    r = json.loads(line.split(" ", 1)[1])
    errors = sum(r[k] for k in ("connect", "read", "write", "status", "timeout"))
    return {"requests": r["requests"], "errors": errors, "rps": r["requests"] / (r["duration_us"] / 1e6),
            "p50_ms": r["p50_us"] / 1e3, "p90_ms": r["p90_us"] / 1e3, "p99_ms": r["p99_us"] / 1e3,
            "max_ms": r["max_us"] / 1e3, "mean_ms": r["mean_us"] / 1e3}


def check_answers(kind: str, port: int, token: str, user, refs: list[str], join_key: str, expected: dict) -> None:
    """One answer of each, checked before the load: a wrong answer served fast is no figure."""
    base = f"http://127.0.0.1:{port}"
    if kind == "ours":
        r = requests.get(f"{base}/recommend", params={"user_id": user, "k": 10},
                         headers={"Authorization": f"Bearer {token}"}, timeout=10)
        r.raise_for_status()
        body = r.json()
        if len(body["items"]) != 10 or body["source"] != "two-tower" or body["items"] != expected["items"]:
            raise RuntimeError(f"/recommend answered {body}, expected {expected['items']}")
    else:
        r = requests.post(f"{base}/get-online-features", timeout=10,
                          json={"features": refs, "full_feature_names": True, "entities": {join_key: [user]}})
        r.raise_for_status()
        got = dict(zip(r.json()["metadata"]["feature_names"], (x["values"][0] for x in r.json()["results"])))
        recent = next(k for k in got if k.endswith("__recent_items"))
        if got[recent] != expected[recent]:
            raise RuntimeError(f"feast serve answered {recent}={got[recent]}, expected {expected[recent]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="wrk's duration per measurement")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds of load before each measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--quick", action="store_true", help="5 s per measurement, 1 round, one process each")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.warmup, args.rounds, args.workers = 5.0, 2.0, 1, [1]
    if shutil.which("wrk") is None:
        sys.exit("serve_load needs wrk, an HTTP load tool: apt-get install -y wrk")
    token = secrets.token_urlsafe(32)
    work = Path(tempfile.mkdtemp(prefix="autofeat-serve-load-"))
    log = work / "servers.log"
    runs: dict[str, list[dict]] = {}
    try:
        with trained_ml100k(YAML, EPOCHS) as (redis, repo):
            rec = Recommender(repo, yaml=YAML)
            refs = rec._bundle.features.stored_refs + rec.history_refs
            users = list(range(1, 944))
            probe = 13
            expected = {**rec._bundle.read(probe), "items": rec.recommend(probe, 10).items}
            join_key = rec.user_key
            del rec
            scripts = {kind: wrk_script(work / f"{kind}.lua", kind, users, token, refs, join_key)
                       for kind in ("feast", "ours")}
            monitor = CpuMonitor(own_pids=(redis.pid,))
            for rnd in range(args.rounds):
                for workers in args.workers:
                    for kind in ("feast", "ours"):
                        server = Server(kind, repo, workers, token, log)
                        try:
                            check_answers(kind, server.port, token, probe, refs, join_key, expected)
                            run_wrk(server.port, scripts[kind], 16, args.warmup)
                            for c in CONNECTIONS:
                                r = run_wrk(server.port, scripts[kind], c, args.seconds)
                                runs.setdefault(f"{kind}_w{workers}_c{c}", []).append(r)
                                print(f"round {rnd + 1}: {kind:5s} workers={workers} connections={c:2d}: "
                                      f"{r['rps']:7.0f} req/s  p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
                                      f"errors {r['errors']}", flush=True)
                        finally:
                            server.stop()
            cpu = monitor.report()
    except Exception:
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        print(f"server output (last lines):\n{tail}", file=sys.stderr)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def med(rows: list[dict]) -> dict:
        keys = ("rps", "p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms")
        return {**{k: statistics.median(r[k] for r in rows) for k in keys},
                "requests": sum(r["requests"] for r in rows), "errors": sum(r["errors"] for r in rows),
                "rounds": [{k: r[k] for k in ("rps", "p99_ms")} for r in rows]}

    figures = {name: med(rows) for name, rows in runs.items()}
    ratios = {}
    for workers in args.workers:
        for c in CONNECTIONS:
            ours, feast = figures[f"ours_w{workers}_c{c}"], figures[f"feast_w{workers}_c{c}"]
            ratios[f"w{workers}_c{c}"] = {"rps_ours_over_feast": ours["rps"] / feast["rps"],
                                          "p99_ms_ours": ours["p99_ms"], "p99_ms_feast": feast["p99_ms"]}
    print("\nmedians over rounds (req/s ratio ours / Feast):")
    for key, r in ratios.items():
        print(f"  {key}: {r['rps_ours_over_feast']:.2f}x; p99 ours {r['p99_ms_ours']:.1f} ms, Feast "
              f"{r['p99_ms_feast']:.1f} ms")
    target = ratios.get("w1_c16")
    result = {"setup": {"dataset": "ML-100K (943 users, 1,682 items)", "online_store": "redis-server, loopback",
                        "load_tool": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split(
                            "\n")[0].strip() or "wrk", "wrk_threads": 1, "seconds": args.seconds,
                        "warmup_seconds": args.warmup, "rounds": args.rounds, "connections": list(CONNECTIONS),
                        "workers": args.workers, "feature_refs": refs,
                        "ours": "GET /recommend?user_id=U&k=10, bearer read token",
                        "feast": "feast serve --no-access-log, POST /get-online-features of the same refs"},
              "figures": figures, "ratios": ratios, "cpu": cpu,
              "targets": None if target is None else {
                  "w1_c16_rps>=2x_feast": target["rps_ours_over_feast"] >= 2,
                  "w1_c16_p99_ms<=50": target["p99_ms_ours"] <= 50,
                  "zero_errors": all(f["errors"] == 0 for f in figures.values())}}
    print(f"saved {save('serve_load_quick' if args.quick else 'serve_load', result)}")


if __name__ == "__main__":
    main()
