"""Tabular GAN fidelity on ML-100K users' point-in-time feature vectors (profile + behaviour snapshots).

Trains the GAN as `feast-autofeat train gan` does (rows = users' features at their interaction times, 10% of
users held out), samples as many synthetic rows as there are held-out rows, and compares both the GAN and an
independent-columns sampler with the held-out real rows: per-column distances, pairwise-correlation
difference, and train-on-synthetic / test-on-real AUC for a hard task: is the user older than the median,
from behaviour.
Saves benchmarks/results/gan_fidelity.json.

    python benchmarks/gan_fidelity.py [--data-dir ../shared/data/ml-100k] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ML100K, ml100k_repo, save  # noqa: E402

from feast_autofeat.models.gan import TabularGAN, fidelity_report, independent_sampler  # noqa: E402
from feast_autofeat.repo import Repo  # noqa: E402
from feast_autofeat.training import split_frame, training_frame  # noqa: E402

SUMMARY = ("correlation_diff", "mean_wasserstein", "mean_tvd")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-dir", type=Path, default=ML100K)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with ml100k_repo(args.data_dir) as repo:
        frame = training_frame(repo, "user_gan_critic", max_rows=args.rows, seed=0)
        fill = Repo(repo).declaration("user_gan_critic").fill
    runs = []
    for seed in args.seeds:
        train, valid = split_frame(frame, "user_id", seed)
        gan = TabularGAN(fill=fill, seed=seed).fit(train, valid)
        real = valid[list(gan.schema_)].fillna(fill)  # the documented imputation, as the GAN saw it
        synthetic = gan.sample(len(real), seed=seed + 100)
        independent = independent_sampler(real, len(real), seed=seed + 100)
        reports = {name: fidelity_report(real, data, target="age")
                   for name, data in (("gan", synthetic), ("independent", independent))}
        runs.append({"seed": seed, "train_seconds": gan.metrics_["train_seconds"], "epochs": gan.metrics_["epochs"],
                     **{name: {k: r[k] for k in (*SUMMARY, "efficacy")} for name, r in reports.items()}})
    mean = {name: {k: float(np.mean([r[name][k] for r in runs])) for k in SUMMARY}
            for name in ("gan", "independent")}
    for name in ("gan", "independent"):
        mean[name]["tstr_auc"] = float(np.mean([r[name]["efficacy"]["tstr_auc"] for r in runs]))
    mean["trtr_auc"] = float(np.mean([r["gan"]["efficacy"]["trtr_auc"] for r in runs]))
    path = save("gan_fidelity", {"rows": len(frame), "runs": runs, "mean_over_seeds": mean})
    print(f"GAN fidelity on ML-100K user features ({len(frame):,} rows), mean over seeds {args.seeds}")
    print(f"  {'sampler':<12}{'corr diff':>12}{'mean W1':>12}{'mean TVD':>12}{'TSTR AUC':>12}")
    for name in ("gan", "independent"):
        m = mean[name]
        print(f"  {name:<12}{m['correlation_diff']:>12.4f}{m['mean_wasserstein']:>12.4f}{m['mean_tvd']:>12.4f}"
              f"{m['tstr_auc']:>12.4f}")
    print(f"  train-on-real AUC {mean['trtr_auc']:.4f}")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
