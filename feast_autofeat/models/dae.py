"""Denoising autoencoder over a user's (or item's) tabular feature vector, in the manner of the Porto Seguro
1st-place solution (M. Jahrer, 2017): rank-gauss inputs, *swap noise* (a share of cells replaced by the same
column of another row, so corrupted rows stay on the data's marginals), reconstruct the clean row.

The embedding is the bottleneck's activations (``dim``). Preprocessing (quantiles, vocabularies, fill values)
lives in the model's saved JSON, so the same raw features give the same embedding anywhere.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from feast_autofeat.artifacts import Artifact
from feast_autofeat.models.base import (
    EarlyStopping,
    NotFittedError,
    TabularPreprocessor,
    batches,
    check_matrix,
    load_model,
    net_state,
    save_model,
    seed_everything,
    warm_start,
)


@dataclass
class DAEConfig:
    dim: int = 64  # embedding size (bottleneck)
    hidden: int = 512
    swap_noise: float = 0.15  # share of cells swapped with another row's value of the same column
    scaling: str = "rankgauss"
    fill: dict[str, float] = field(default_factory=dict)  # documented NaN imputation per column
    lr: float = 1e-3
    weight_decay: float = 1e-5
    batch_size: int = 256
    epochs: int = 200
    patience: int = 15
    seed: int = 0


class _Net(nn.Module):
    def __init__(self, width: int, cfg: DAEConfig):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(width, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.dim))
        self.decoder = nn.Sequential(nn.ReLU(), nn.Linear(cfg.dim, cfg.hidden), nn.ReLU(),
                                     nn.Linear(cfg.hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def swap_noise(x: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """Replace each cell, with probability ``share``, by the same column of a random row of the batch."""
    n, d = x.shape
    donor = torch.randint(0, n, (n, d), generator=generator)
    swapped = x.gather(0, donor)
    return torch.where(torch.rand((n, d), generator=generator) < share, swapped, x)


class DAE:
    """``DAE(dim=64).fit(train_df, valid_df).transform(df)`` -> (rows, dim) float32 embeddings."""

    name = "dae"

    def __init__(self, config: DAEConfig | None = None, **overrides):
        self.config = DAEConfig(**{**asdict(config or DAEConfig()), **overrides})
        self.net_: _Net | None = None
        self.preprocessor_: TabularPreprocessor | None = None
        self.metrics_: dict = {}

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame | None = None, progress: bool = False) -> DAE:
        """Fit preprocessing and the network on ``train``; stop early on ``valid`` reconstruction error."""
        cfg = self.config
        gen = seed_everything(cfg.seed)
        self.preprocessor_ = TabularPreprocessor(scaling=cfg.scaling, fill=dict(cfg.fill)).fit(train)
        x = torch.from_numpy(self.preprocessor_.transform(train))
        xv = torch.from_numpy(self.preprocessor_.transform(valid)) if valid is not None else None
        net = _Net(x.shape[1], cfg)
        init = getattr(self, "init_", None)  # warm start (``warm_from``): same input layout, same weights' meaning
        warm = warm_start(net, init, init is not None and TabularPreprocessor.from_state(
            init.config["preprocessing"]).layout() == self.preprocessor_.layout())
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        stopper = EarlyStopping(patience=cfg.patience, mode="min")
        t0 = time.perf_counter()
        bar = tqdm(range(cfg.epochs), desc="dae", disable=not progress, leave=False)
        for epoch in bar:
            net.train()
            total = 0.0
            for idx in batches(len(x), cfg.batch_size, gen):
                clean = x[idx]
                loss = F.mse_loss(net(swap_noise(clean, cfg.swap_noise, gen)), clean)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            monitor = self._mse(net, xv) if xv is not None else total / len(x)
            bar.set_postfix(train=f"{total / len(x):.4f}", valid=f"{monitor:.4f}")
            if stopper.step(monitor, epoch, net):
                break
        stopper.restore_best(net)
        self.net_ = net
        self.metrics_ = {"train_seconds": time.perf_counter() - t0, "epochs": epoch + 1,
                         "best_epoch": stopper.best_epoch + 1, "monitor_mse": stopper.best_value,
                         "input_width": int(x.shape[1]), "train_rows": int(len(x)), "warm_start": warm}
        if xv is not None:
            self.metrics_.update(self.reconstruction_report(valid))
        return self

    @staticmethod
    @torch.no_grad()
    def _mse(net: _Net, x: torch.Tensor) -> float:
        net.eval()
        return float(F.mse_loss(net(x), x))

    def _ready(self) -> tuple[_Net, TabularPreprocessor]:
        if self.net_ is None or self.preprocessor_ is None:
            raise NotFittedError("DAE is not fitted; call fit() or DAE.load().")
        return self.net_, self.preprocessor_

    @torch.no_grad()
    def encode_matrix(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Embeddings of already-preprocessed rows (the hot path: no pandas)."""
        net, pre = self._ready()
        x = torch.from_numpy(check_matrix(x, pre.width, "DAE input"))
        return torch.cat([net.encoder(x[s:s + batch_size]) for s in range(0, len(x), batch_size)]).numpy() \
            if len(x) else np.zeros((0, self.config.dim), np.float32)

    def transform(self, df: pd.DataFrame, batch_size: int = 4096) -> np.ndarray:
        """Raw feature rows -> embeddings. Missing columns, NaN without a fill, inf: ``SchemaError``."""
        _, pre = self._ready()
        return self.encode_matrix(pre.transform(df), batch_size)

    @torch.no_grad()
    def reconstruction_report(self, df: pd.DataFrame) -> dict:
        """Reconstruction MSE of clean rows vs predicting each column's mean (preprocessed space). The mean is
        taken over ``df`` itself, an oracle baseline slightly stronger than the training mean."""
        net, pre = self._ready()
        x = torch.from_numpy(pre.transform(df))
        mse = float(F.mse_loss(net(x), x))
        baseline = float(F.mse_loss(x.mean(dim=0).expand_as(x), x))
        return {"reconstruction_mse": mse, "column_mean_mse": baseline}

    # ---- persistence
    def save(self, root, extra: dict | None = None) -> Artifact:
        net, pre = self._ready()
        config = {"architecture": asdict(self.config), "preprocessing": pre.state(),
                  "input_schema": {c: pre.dtypes_[c] for c in pre.columns}, "metrics": self.metrics_,
                  **(extra or {})}
        return save_model(root, self.name, net, config)

    @classmethod
    def load(cls, root, version: str | None = None) -> DAE:
        art = load_model(root, cls.name, version)
        model = cls(DAEConfig(**art.config["architecture"]))
        model.preprocessor_ = TabularPreprocessor.from_state(art.config["preprocessing"])
        net = _Net(model.preprocessor_.width, model.config)
        net.load_state_dict(net_state(art))
        net.eval()
        model.net_, model.metrics_, model.version_ = net, art.config.get("metrics", {}), art.version
        return model
