"""Recommender quality on sparse logs: `feast-autofeat evaluate` on two logs with a handful of interactions per
user, the shipped two-tower against popularity, EASE, Mult-VAE and the tower variants, paired:

- **sparse ML-100K**: MovieLens 100K thinned to at most ``--max-per-user`` (default 10) distinct items per user,
  drawn at random with their own times (`prepare --max-per-user`);
- **sparse synthetic**: the generator with few events per user over a larger, head-heavy catalogue
  (`prepare --dataset synthetic --users 3000 --items 2000 --events 33000 --popularity-skew 2.5`).

Targets (issue 20): under P the shipped recommender >= 1.0x EASE on Recall@20 and NDCG@10; under C, above the
best baseline on NDCG@10. Protocol C is pooled over ``--c-runs`` runs (few users have more than 5 positives).

    python benchmarks/sparse_eval.py [--quick] [--c-runs 3] [--max-per-user 10] [--logs ml100k synthetic]

Saves benchmarks/results/sparse_eval.json (``--quick``: sparse_eval_quick.json) and a PNG per log.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ML100K, RESULTS, prepared_repo, save  # noqa: E402
from recommender_eval import targets  # noqa: E402

from feast_autofeat.datasets.synthetic import SyntheticConfig  # noqa: E402
from feast_autofeat.recommend.evaluate import evaluate_repo, table_text  # noqa: E402

SPARSE_SYNTHETIC = SyntheticConfig(users=3000, items=2000, events=33_000, popularity_skew=2.5)


def ease_ratios(result: dict) -> dict:
    """Under P: the shipped row over EASE on Recall@20 and NDCG@10, with the paired differences."""
    out = {}
    p = result.get("P")
    if p:
        shipped, ease = p["models"]["two-tower"], p["models"]["EASE"]
        for m in ("recall@20", "ndcg@10"):
            out[f"P: two-tower / EASE {m}"] = shipped[m] / ease[m]
            diff = p["paired"]["two-tower"]["EASE"][m]
            out[f"P: two-tower - EASE {m}, paired (mean)"] = diff["mean"]
            out[f"P: two-tower - EASE {m}, paired (standard error)"] = diff["se"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--logs", nargs="+", default=["ml100k", "synthetic"], choices=["ml100k", "synthetic"])
    ap.add_argument("--protocols", nargs="+", default=["P", "C"], choices=["P", "C", "T"])
    ap.add_argument("--c-runs", type=int, default=3)
    ap.add_argument("--max-per-user", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="`evaluate --quick`: few epochs, one shared tuning")
    ap.add_argument("--data-dir", type=Path, default=ML100K)
    args = ap.parse_args()
    torch.set_num_threads(2)
    logging.getLogger("feast").setLevel(logging.WARNING)
    name = "sparse_eval_quick" if args.quick else "sparse_eval"
    logs = {"ml100k": ("movielens-100k", {"raw_dir": args.data_dir, "max_per_user": args.max_per_user},
                       f"MovieLens 100K, at most {args.max_per_user} items per user, ratings >= 4 positive"),
            "synthetic": ("synthetic", {"config": SPARSE_SYNTHETIC}, f"synthetic {SPARSE_SYNTHETIC.params()}")}
    out, t0 = {}, time.perf_counter()
    for log in args.logs:
        dataset, options, description = logs[log]
        t = time.perf_counter()
        with prepared_repo(dataset, **options) as repo:
            result = evaluate_repo(repo, protocols=args.protocols, quick=args.quick, seed=args.seed,
                                   c_runs=args.c_runs, out=repo / "reports" / "evaluation.json",
                                   say=lambda m, log=log: print(f"{log}: {m}", flush=True))
            shutil.copy(result["png"], RESULTS / f"{name}_{log}.png")
        protocols = result["protocols"]
        out[log] = {"dataset": description, "protocols": protocols,
                    "targets": {**ease_ratios(protocols), **targets({"C": protocols["C"]} if "C" in protocols
                                                                    else {})},
                    "seconds": time.perf_counter() - t}
        print(f"\n{description}\n{table_text(protocols)}")
        for k, v in out[log]["targets"].items():
            print(f"  {k}: {v:.4f}")
    path = save(name, {"command": "python benchmarks/sparse_eval.py" + (" --quick" if args.quick else ""),
                       "quick": args.quick, "seed": args.seed, "c_runs": args.c_runs, "logs": out,
                       "seconds": time.perf_counter() - t0})
    print(f"saved {path} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
