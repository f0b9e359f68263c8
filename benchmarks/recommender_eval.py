"""Recommender quality on ML-100K: popularity, EASE, Mult-VAE and two-tower variants (ids only, hand-crafted
features, learned features, one learned group removed at a time, and GAN augmentation added) under protocols
P, C and G (``feast_autofeat.recommend.evaluate`` documents them). Every protocol retrains the encoders on its own
training events, so no model sees a test target.

Prints the tables; saves benchmarks/results/recommender_eval.json and recommender_eval.png.

    python benchmarks/recommender_eval.py [--protocols P C G] [--seed 0] [--c-runs 3]
                                          [--data-dir ../shared/data/ml-100k]

Protocol C is run ``--c-runs`` times (its own held-out users and seed each) and pooled: one run scores only ~94
new users. Every two-tower row also carries its per-user (paired) difference from each baseline.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ML100K, RESULTS, ml100k_repo, save  # noqa: E402

from feast_autofeat.recommend import evaluate as ev  # noqa: E402
from feast_autofeat.recommend.data import positive_events  # noqa: E402

SHOWN = ("recall@10", "recall@20", "ndcg@10", "hitrate@10")
PROTOCOL_VARIANTS = {
    "P": ev.VARIANTS,
    "C": {k: v for k, v in ev.VARIANTS.items() if k in ("two-tower ids", "two-tower ids + history",
                                                         "two-tower features (no learned)", "two-tower learned",
                                                         "  - Mult-VAE", "  + GAN augmentation")},
    "G": {k: v for k, v in ev.VARIANTS.items() if k in ("two-tower ids", "two-tower ids + history",
                                                         "two-tower learned")},
}


def targets(result: dict) -> dict:
    """The issue's targets, computed from the table (never typed in)."""
    out = {}
    p = result.get("P", {}).get("models")
    if p:
        tt, ids, ease = p["two-tower learned"], p["two-tower ids"], p["EASE"]
        out["P: learned / ids Recall@20 (target >= 1.10)"] = tt["recall@20"]["mean"] / ids["recall@20"]["mean"]
        out["P: learned / EASE Recall@20 (target >= 0.95)"] = tt["recall@20"]["mean"] / ease["recall@20"]["mean"]
        out["P: learned / EASE NDCG@10 (target >= 0.95)"] = tt["ndcg@10"]["mean"] / ease["ndcg@10"]["mean"]
    c = result.get("C", {}).get("models")
    if c:
        best = max((k for k in ("popularity", "EASE", "Mult-VAE")), key=lambda k: c[k]["ndcg@10"]["mean"])
        out[f"C: learned / best baseline ({best}) NDCG@10 (target > 1)"] = (
            c["two-tower learned"]["ndcg@10"]["mean"] / c[best]["ndcg@10"]["mean"])
        diff = c["two-tower learned"]["paired"][best]["ndcg@10"]
        out[f"C: learned - {best} NDCG@10, paired over the same users (mean)"] = diff["mean"]
        out[f"C: learned - {best} NDCG@10, paired over the same users (standard error)"] = diff["se"]
    return out


def chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result)
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 5.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        models = result[name]["models"]
        labels = list(models)
        for j, metric in enumerate(("recall@20", "ndcg@10")):
            means = [models[m][metric]["mean"] for m in labels]
            ses = [models[m][metric]["se"] for m in labels]
            ax.barh([i + 0.4 * j for i in range(len(labels))], means, height=0.4, xerr=ses, label=metric,
                    capsize=2)
        ax.set_yticks([i + 0.2 for i in range(len(labels))], [m.strip() for m in labels], fontsize=8)
        ax.invert_yaxis()
        runs = len(result[name].get("runs", []))
        ax.set_title(f"protocol {name} ({result[name]['test_users']} test users"
                     + (f", {runs} runs pooled" if runs else "") + ")", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("ML-100K: mean over test users, bars = 1 standard error", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocols", nargs="+", default=["P", "C", "G"], choices=["P", "C", "G"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--c-runs", type=int, default=3,
                    help="protocol C runs pooled into its table, each with its own held-out users and seed "
                         "(seed, seed+1, ...): 10%% of MovieLens 100K is only ~94 test users")
    ap.add_argument("--data-dir", type=Path, default=ML100K)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("feast").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    result = {}
    with ml100k_repo(args.data_dir) as repo:
        from feast import FeatureStore

        events = positive_events(FeatureStore(repo_path=str(repo)), repo)
        for name in args.protocols:
            if name == "C":
                runs = [ev.run_protocol(repo, ev.protocol_c(events, seed=s), PROTOCOL_VARIANTS[name], seed=s)
                        for s in range(args.seed, args.seed + args.c_runs)]
                result[name] = ev.pool(runs)
            else:
                make = {"P": ev.protocol_p, "G": ev.protocol_g}[name]
                result[name] = ev.run_protocol(repo, make(events), PROTOCOL_VARIANTS[name], seed=args.seed)
            result[name].pop("per_user")
    checks = targets(result)
    path = save("recommender_eval", {"dataset": "MovieLens 100K, ratings >= 4 as positives", "seed": args.seed,
                                     "protocols": result, "targets": checks,
                                     "seconds": time.perf_counter() - t0})
    chart(result, RESULTS / "recommender_eval.png")
    for name, res in result.items():
        print(f"\nprotocol {name}: {res['protocol']} ({res['test_users']} test users, {res['targets']} targets)")
        print(f"  {'model':<34}" + "".join(f"{m:>16}" for m in SHOWN))
        for model, row in res["models"].items():
            print(f"  {model:<34}" + "".join(f"{row[m]['mean']:>9.4f} ±{row[m]['se']:.4f}" for m in SHOWN))
    print()
    for k, v in checks.items():
        print(f"  {k}: {v:.3f}")
    print(f"saved {path} and {RESULTS / 'recommender_eval.png'} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
