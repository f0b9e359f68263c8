"""DAE quality on ML-100K: reconstruction vs a column-mean baseline, and its embedding vs the raw features on a
downstream task (will a user interact again within 14 days?), both from point-in-time store features.

Weekly cutoffs 1997-10-01..1998-04-01; 30% of users held out (seeded hash); the DAE is fitted on training
users only; the same ridge logistic regression reads either input. Saves benchmarks/results/dae_quality.json.

    python benchmarks/dae_quality.py [--data-dir ../shared/data/ml-100k] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ML100K, ml100k_repo, save  # noqa: E402

from feast_autofeat.evaluation import downstream_auc, next_period_activity  # noqa: E402
from feast_autofeat.models.dae import DAE  # noqa: E402
from feast_autofeat.repo import Repo  # noqa: E402
from feast_autofeat.splits import holdout_users  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-dir", type=Path, default=ML100K)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with ml100k_repo(args.data_dir) as repo:
        project = Repo(repo)
        dae = project.declaration("user_dae")
        df = next_period_activity(project.store, project.two_tower().interactions, dae.refs,
                                  pd.date_range("1997-10-01", "1998-04-01", freq="7D", tz="UTC"))
        fill = dae.fill
    runs = []
    for seed in args.seeds:
        test = holdout_users(df.user_id.to_numpy(), 0.3, seed=seed)
        features = df.drop(columns=["user_id", "event_timestamp", "label"])
        train, held = features[~test], features[test]
        cut = int(0.9 * len(train))
        dae = DAE(dim=64, hidden=256, fill=fill, epochs=20, patience=8, seed=seed).fit(train.iloc[:cut],
                                                                                       train.iloc[cut:])
        y_train, y_test = df.label[~test].to_numpy(), df.label[test].to_numpy()
        pre = dae.preprocessor_
        runs.append({"seed": seed, **dae.reconstruction_report(held),
                     "raw_auc": downstream_auc(pre.transform(train), y_train, pre.transform(held), y_test),
                     "embedding_auc": downstream_auc(dae.transform(train), y_train, dae.transform(held), y_test),
                     "train_seconds": dae.metrics_["train_seconds"], "test_rows": int(test.sum())})
    mean = {k: float(np.mean([r[k] for r in runs])) for k in
            ("reconstruction_mse", "column_mean_mse", "raw_auc", "embedding_auc", "train_seconds")}
    path = save("dae_quality", {"rows": len(df), "positive_share": float(df.label.mean()), "runs": runs,
                                "mean_over_seeds": mean})
    print(f"DAE on ML-100K ({len(df):,} user-cutoff rows, {df.label.mean():.0%} active in the next 14 days), "
          f"mean over seeds {args.seeds}")
    print(f"  held-out reconstruction MSE {mean['reconstruction_mse']:.4f} vs column means "
          f"{mean['column_mean_mse']:.4f} ({mean['reconstruction_mse'] / mean['column_mean_mse']:.1%})")
    print(f"  next-period activity AUC: raw features {mean['raw_auc']:.4f}, DAE embedding {mean['embedding_auc']:.4f}")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
