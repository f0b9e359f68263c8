"""Training wall time of each encoder on ML-100K, and encode throughput, on this CPU.

Trains dae, multvae and gan through `feast_autofeat.training.train` (the `feast-autofeat train` path: training
sets from the feature store, early stopping, saving a verified version) on a temporary feature repo prepared
from ML-100K, then measures the 64-d DAE's encode throughput at batch 4096 with --threads threads, both on
preprocessed matrices (the materialization hot path) and from raw feature frames (with preprocessing).
Targets: DAE encodes >= 200k rows/s; Mult-VAE trains on ML-100K in <= 30 s.

    python benchmarks/model_training.py [--data-dir ../shared/data/ml-100k] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ML100K, ml100k_repo, save, timed  # noqa: E402

from feast_autofeat.models.dae import DAE  # noqa: E402
from feast_autofeat.training import train, training_frame  # noqa: E402

MODELS = {"multvae": "session_multvae", "dae": "user_dae", "gan": "user_gan_critic"}  # the bundled repo's names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-dir", type=Path, default=ML100K)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--encode-rows", type=int, default=200_000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with ml100k_repo(args.data_dir) as repo:
        training = {}
        for model, name in MODELS.items():
            t = time.perf_counter()
            result = train(repo, name, root=repo / "models", progress=False)
            training[model] = {"total_seconds": time.perf_counter() - t,
                               "fit_seconds": result.metrics["train_seconds"], "epochs": result.metrics["epochs"],
                               "version": result.version, "rows": result.rows}
            print(f"  {model:<8} fit {result.metrics['train_seconds']:6.1f} s  end-to-end "
                  f"{training[model]['total_seconds']:6.1f} s  ({result.metrics['epochs']} epochs)", flush=True)

        dae = DAE.load(repo / "models", training["dae"]["version"])
        frame = training_frame(repo, "user_dae", max_rows=20_000, seed=1)
        features = frame.drop(columns=["user_id", "event_timestamp"])
        reps = -(-args.encode_rows // len(features))
        big = features.iloc[np.tile(np.arange(len(features)), reps)[: args.encode_rows]].reset_index(drop=True)
        matrix = dae.preprocessor_.transform(big)
        enc = timed(lambda: dae.encode_matrix(matrix, batch_size=4096), repeats=5)
        full = timed(lambda: dae.transform(big, batch_size=4096), repeats=3)
        encode = {"rows": len(big), "dim": dae.config.dim, "batch_size": 4096, "threads": args.threads,
                  "matrix_rows_per_s": len(big) / enc["median_s"], "matrix": enc,
                  "with_preprocessing_rows_per_s": len(big) / full["median_s"], "with_preprocessing": full}
    targets = {"dae_encode_rows_per_s>=200k": encode["matrix_rows_per_s"] >= 200_000,
               "multvae_train_s<=30": training["multvae"]["fit_seconds"] <= 30}
    path = save("model_training", {"training": training, "encode": encode, "targets_met": targets})
    print(f"  DAE encode (64-d, batch 4096, {args.threads} threads): {encode['matrix_rows_per_s']:,.0f} rows/s "
          f"on preprocessed rows, {encode['with_preprocessing_rows_per_s']:,.0f} rows/s from raw features")
    print(f"  targets: {targets}")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
