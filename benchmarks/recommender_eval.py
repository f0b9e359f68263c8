"""Recommender quality on ML-100K: `feast-autofeat evaluate` on the bundled repo prepared from ML-100K, full mode:
popularity, EASE, Mult-VAE and the two-tower as ids only, ids + history, without learned features, with every
learned group, without each one in turn, as shipped (learned groups gated on the inner validation) and with GAN
augmentation, under protocols P, C and T (``feast_autofeat.recommend.evaluate`` documents them). Every protocol
retrains the encoders on its own training events, so no model sees a test target.

Prints the tables; saves benchmarks/results/recommender_eval.json and recommender_eval.png (``--quick``:
evaluate_quick_ml100k.json and .png, the figures of `feast-autofeat evaluate --quick`).

    python benchmarks/recommender_eval.py [--protocols P C T] [--seed 0] [--c-runs 3] [--quick]
                                          [--data-dir ../shared/data/ml-100k]

Protocol C is run ``--c-runs`` times (its own held-out users and seed each) and pooled: one run scores only ~100
new users. Every two-tower row also carries its per-user (paired) difference from each baseline.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ML100K, RESULTS, ml100k_repo, save  # noqa: E402

from feast_autofeat.recommend.evaluate import SHIPPED, evaluate_repo, table_text  # noqa: E402


def targets(result: dict) -> dict:
    """The issues' targets, computed from the table (never typed in)."""
    out = {}
    p = result.get("P", {}).get("models")
    if p:
        for row in ("two-tower learned", SHIPPED):
            if row in p:
                out[f"P: {row} / ids Recall@20"] = p[row]["recall@20"] / p["two-tower ids"]["recall@20"]
                out[f"P: {row} / EASE Recall@20"] = p[row]["recall@20"] / p["EASE"]["recall@20"]
                out[f"P: {row} / EASE NDCG@10"] = p[row]["ndcg@10"] / p["EASE"]["ndcg@10"]
    c = result.get("C")
    if c:
        models = c["models"]
        best = max(("popularity", "EASE", "Mult-VAE"), key=lambda k: models[k]["ndcg@10"])
        out[f"C: {SHIPPED} / best baseline ({best}) NDCG@10"] = models[SHIPPED]["ndcg@10"] / models[best]["ndcg@10"]
        diff = c["paired"][SHIPPED][best]["ndcg@10"]
        out[f"C: {SHIPPED} - {best} NDCG@10, paired over the same users (mean)"] = diff["mean"]
        out[f"C: {SHIPPED} - {best} NDCG@10, paired over the same users (standard error)"] = diff["se"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocols", nargs="+", default=["P", "C", "T"], choices=["P", "C", "T"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--c-runs", type=int, default=None,
                    help="protocol C runs pooled into its table, each with its own held-out users and seed "
                         "(seed, seed+1, ...): 10%% of MovieLens 100K is only ~94 test users. Default 3 (--quick: 1, "
                         "as `feast-autofeat evaluate --quick`)")
    ap.add_argument("--quick", action="store_true", help="`evaluate --quick`: few epochs, one shared tuning")
    ap.add_argument("--data-dir", type=Path, default=ML100K)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", nargs="+", metavar="ROW", help="only these two-tower rows beside the baselines, "
                    "e.g. 'two-tower ids' two-tower (saved as recommender_eval_rows.json)")
    args = ap.parse_args()
    args.c_runs = args.c_runs or (1 if args.quick else 3)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("feast").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    name = "evaluate_quick_ml100k" if args.quick else "recommender_eval" + ("_rows" if args.rows else "")
    with ml100k_repo(args.data_dir) as repo:
        result = evaluate_repo(repo, protocols=args.protocols, quick=args.quick, seed=args.seed,
                               c_runs=args.c_runs, out=repo / "reports" / "evaluation.json", rows=args.rows,
                               say=lambda m: print(m, flush=True))
        shutil.copy(result["png"], RESULTS / f"{name}.png")
    protocols = result["protocols"]
    checks = targets(protocols)
    path = save(name, {"dataset": "MovieLens 100K, ratings >= 4 as positives", "seed": args.seed,
                       "quick": args.quick, "command": "python benchmarks/recommender_eval.py"
                       + (" --quick" if args.quick else "")
                       + (" --rows " + " ".join(shlex.quote(r) for r in args.rows) if args.rows else ""),
                       "rows": args.rows, "protocols": protocols, "targets": checks,
                       "seconds": time.perf_counter() - t0})
    print(table_text(protocols))
    print()
    for k, v in checks.items():
        print(f"  {k}: {v:.3f}")
    print(f"saved {path} and {RESULTS / f'{name}.png'} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
