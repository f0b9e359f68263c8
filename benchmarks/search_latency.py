"""Search latency beside recommendation, on ML-100K in a private Redis: ``Recommender.search`` (a 1-3 word query,
personalized and text only) against ``Recommender.recommend`` in process, interleaved in the same rounds; then
``GET /search`` against ``GET /recommend`` over HTTP (``feast-autofeat serve``, one process, bearer token, one
request at a time from one client: the latency a request sees, not throughput).

Small models (latency does not depend on how well they fit); the text view embeds the films' titles with the
default all-MiniLM-L6-v2. Saves benchmarks/results/search_latency.json.

    python benchmarks/search_latency.py [--rounds 1000] [--http-requests 500]
"""

from __future__ import annotations

import argparse
import gc
import secrets
import sys
import time
from pathlib import Path

import numpy as np
import requests
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CpuMonitor, percentiles_ms, save, served, timed_rounds, trained_ml100k  # noqa: E402

from feast_autofeat.cli import main as cli  # noqa: E402
from feast_autofeat.recommend.recommender import Recommender  # noqa: E402
from feast_autofeat.repo import run_feast  # noqa: E402

YAML = "feature_store.redis.yaml"
EPOCHS = {"dae": 3, "gan": 3, "multvae": 5, "two_tower": 3}
QUERIES = ["star wars", "romantic comedy", "horror", "crime thriller", "animated children's film", "war",
           "science fiction", "musical", "film noir detective", "documentary"]
DECLARED = '''
from feast_autofeat import query_embedding_view, text_embedding_view

item_text = text_embedding_view("item_text", entity=item, inputs=[item_profile[["title"]]])
movie_search = query_embedding_view("movie_search", text_view=item_text)
'''


def http_latency(repo: Path, users: np.ndarray, n: int) -> dict:
    token = secrets.token_urlsafe(32)
    headers = {"Authorization": f"Bearer {token}"}
    with served(repo, YAML, token) as url:
        session = requests.Session()
        calls = {
            "recommend": lambda i: session.get(f"{url}/recommend", params={"user_id": int(users[i]), "k": 10},
                                               headers=headers, timeout=10),
            "search_personalized": lambda i: session.get(f"{url}/search", params={
                "q": QUERIES[i % len(QUERIES)], "user_id": int(users[i]), "k": 10}, headers=headers, timeout=10),
            "search_text_only": lambda i: session.get(f"{url}/search", params={"q": QUERIES[i % len(QUERIES)],
                                                                               "k": 10}, headers=headers, timeout=10),
        }
        for i in range(30):  # warm-up
            for call in calls.values():
                assert call(i).status_code == 200
        runs = {name: [] for name in calls}
        for i in range(n):  # interleaved: load changes hit every path alike
            for name, call in calls.items():
                t = time.perf_counter()
                r = call(i)
                runs[name].append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
        return {name: percentiles_ms(r) for name, r in runs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=1000)
    ap.add_argument("--http-requests", type=int, default=500)
    args = ap.parse_args()
    torch.set_num_threads(1)  # as `serve` runs: one request at a time per process
    with trained_ml100k(YAML, EPOCHS) as (redis, repo):
        with open(repo / "features.py", "a") as f:
            f.write(DECLARED)
        flags = ["--repo", str(repo), "--feature-store-yaml", YAML]
        assert cli(["train", "item_text", *flags]) == 0 and cli(["deploy", "item_text", *flags]) == 0
        version = next(p.name for p in (repo / "models" / "text").iterdir())
        run_feast(repo, "materialize", "-v", f"item_text__{version}", "1997-09-01T00:00:00",
                  "1998-04-23T00:00:00", yaml=YAML, capture=True)
        rec = Recommender(repo, yaml=YAML)
        rng = np.random.default_rng(0)
        users = rng.choice(np.arange(1, 944), max(args.rounds, args.http_requests) + 100)
        it = iter(range(10**9))

        def user() -> int:
            return int(users[next(it) % len(users)])

        fns = {
            "recommend": lambda: rec.recommend(user(), k=10),
            "search_personalized": lambda: rec.search(QUERIES[next(it) % len(QUERIES)], user_id=user(), k=10),
            "search_text_only": lambda: rec.search(QUERIES[next(it) % len(QUERIES)], k=10),
            "query_encoder_alone": lambda: rec._text.encoder.encode_texts([QUERIES[next(it) % len(QUERIES)]]),
        }
        for _ in range(50):
            for fn in fns.values():
                fn()
        gc.collect()
        gc.freeze()  # as `serve` does once its models are loaded
        monitor = CpuMonitor(own_pids=(redis.pid,))
        in_process = {k: percentiles_ms(v["runs_s"]) for k, v in timed_rounds(fns, args.rounds).items()}
        cpu = monitor.report()
        http = http_latency(repo, users, args.http_requests)
    result = {"items": len(rec.index), "text_version": version, "rounds": args.rounds,
              "query_backend": rec._text.encoder.query_backend,
              "in_process": in_process, "http": http, "cpu": cpu,
              "ratios": {"in_process_search_over_recommend_p99": in_process["search_personalized"]["p99_ms"]
                         / in_process["recommend"]["p99_ms"],
                         "http_search_over_recommend_p99": http["search_personalized"]["p99_ms"]
                         / http["recommend"]["p99_ms"]}}
    for where in ("in_process", "http"):
        for name, s in result[where].items():
            print(f"{where:<11}{name:<22} p50 {s['p50_ms']:7.2f} ms   p99 {s['p99_ms']:7.2f} ms")
    print(f"saved {save('search_latency', result)}")


if __name__ == "__main__":
    main()
