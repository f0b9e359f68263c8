"""Mult-VAE vs EASE vs popularity on ML-100K, strong generalization (held-out users, 80/20 fold-in).

Ratings >= 4 are positives; 10% of users are validation (EASE's lambda, Mult-VAE's early stopping) and 10%
are test. Prints the table and saves benchmarks/results/strong_generalization.json.

    python benchmarks/strong_generalization.py [--data-dir ../shared/data/ml-100k] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ML100K, save  # noqa: E402

from feast_autofeat.datasets import movielens  # noqa: E402
from feast_autofeat.evaluation import strong_generalization_split, strong_generalization_table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-dir", type=Path, default=ML100K)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one split and model seed each")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ev = movielens.load_raw(args.data_dir)["interactions"].to_pandas()
    pos = ev[ev.rating >= 4]
    runs = []
    for seed in args.seeds:
        split = strong_generalization_split(pos.user_id.to_numpy(), pos.item_id.to_numpy(), seed=seed)
        runs.append({"seed": seed, "split": split.describe(), "models": strong_generalization_table(split, seed)})
    metrics = ("recall@20", "recall@50", "ndcg@100")
    summary = {}
    for model in ("popularity", "ease", "multvae"):
        summary[model] = {m: float(np.mean([r["models"][model][m]["mean"] for r in runs])) for m in metrics}
    summary["multvae_over_ease_recall@20"] = summary["multvae"]["recall@20"] / summary["ease"]["recall@20"]
    summary["multvae_over_popularity_recall@20"] = (summary["multvae"]["recall@20"]
                                                    / summary["popularity"]["recall@20"])
    summary["multvae_train_seconds_median"] = float(np.median([r["models"]["multvae"]["train_seconds"]
                                                               for r in runs]))
    path = save("strong_generalization", {"protocol": __doc__.strip().splitlines()[0], "runs": runs,
                                          "mean_over_seeds": summary})
    print(f"strong generalization on ML-100K, mean over seeds {args.seeds} (test users per seed: "
          f"{runs[0]['split']['test_users']})")
    print(f"  {'model':<12}" + "".join(f"{m:>12}" for m in metrics))
    for model in ("popularity", "ease", "multvae"):
        print(f"  {model:<12}" + "".join(f"{summary[model][m]:>12.4f}" for m in metrics))
    print(f"  Mult-VAE / EASE Recall@20 = {summary['multvae_over_ease_recall@20']:.3f}; "
          f"Mult-VAE / popularity = {summary['multvae_over_popularity_recall@20']:.2f}; "
          f"Mult-VAE training median {summary['multvae_train_seconds_median']:.1f} s")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
