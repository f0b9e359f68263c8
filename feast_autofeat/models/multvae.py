"""Mult-VAE (Liang, Krishnan, Hoffman, Jebara 2018: "Variational Autoencoders for Collaborative Filtering").

A user's interaction history -> a Gaussian posterior over a latent taste vector -> a multinomial over items.
The user embedding is the posterior mean; a new, unseen history folds in with one forward pass (no training),
which is what request-time session embeddings need. Item vectors are the decoder's output-layer rows.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from feast_autofeat.artifacts import Artifact
from feast_autofeat.ids import id_array, kind_of_array, pack_ids, unpack_ids
from feast_autofeat.models.base import (
    EarlyStopping,
    NotFittedError,
    SchemaError,
    batches,
    load_model,
    net_state,
    save_model,
    seed_everything,
    warm_start,
)
from feast_autofeat.models.interactions import Histories
from feast_autofeat.models.metrics import ndcg_at_k


@dataclass(frozen=True)
class MultVAEConfig:
    hidden: int = 600
    dim: int = 200  # latent dimension = embedding size
    dropout: float = 0.5  # input dropout (the "denoising" that makes fold-in robust)
    anneal_cap: float = 0.2  # KL weight ceiling (beta)
    anneal_share: float = 0.8  # share of the step budget over which beta rises linearly to the cap
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 500
    epochs: int = 200
    patience: int = 20
    seed: int = 0


class _Net(nn.Module):
    def __init__(self, n_items: int, cfg: MultVAEConfig):
        super().__init__()
        self.enc = nn.Linear(n_items, cfg.hidden)
        self.mu_logvar = nn.Linear(cfg.hidden, 2 * cfg.dim)
        self.dec = nn.Linear(cfg.dim, cfg.hidden)
        self.out = nn.Linear(cfg.hidden, n_items)
        self.drop = nn.Dropout(cfg.dropout)
        for layer in (self.enc, self.mu_logvar, self.dec, self.out):  # Xavier, as in the paper
            nn.init.xavier_uniform_(layer.weight)
            nn.init.normal_(layer.bias, std=0.001)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.normalize(x, dim=1)
        h = torch.tanh(self.enc(self.drop(h)))
        mu, logvar = self.mu_logvar(h).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.dec(z)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return self.decode(z), mu, logvar


class MultVAE:
    """``MultVAE(dim=200).fit(histories, valid=(fold_in, targets))``; ``transform`` -> user embeddings."""

    name = "multvae"

    def __init__(self, config: MultVAEConfig | None = None, **overrides):
        self.config = MultVAEConfig(**{**asdict(config or MultVAEConfig()), **overrides})
        self.net_: _Net | None = None
        self.item_ids_: np.ndarray | None = None
        self.metrics_: dict = {}

    # ---- training
    def fit(self, train: Histories, item_ids: np.ndarray | None = None,
            valid: tuple[Histories, Histories] | None = None, progress: bool = False) -> MultVAE:
        """Train on ``train``; with ``valid`` = (fold-in histories, held-out targets), stop early on NDCG@100."""
        cfg = self.config
        gen = seed_everything(cfg.seed)
        self.item_ids_ = np.arange(train.n_items) if item_ids is None else id_array(item_ids, what="item ids")
        if len(self.item_ids_) != train.n_items:
            raise SchemaError(f"{len(self.item_ids_)} item ids for a matrix of {train.n_items} items.")
        users = np.flatnonzero(train.lengths > 0)
        net = _Net(train.n_items, cfg)
        init = getattr(self, "init_", None)  # warm start (``warm_from``): the same item vocabulary, in order
        warm = warm_start(net, init, init is not None and np.array_equal(unpack_ids(init.tensors, "item_ids"),
                                                                         self.item_ids_))
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps_per_epoch = -(-len(users) // cfg.batch_size)
        anneal_steps = max(1, int(cfg.anneal_share * cfg.epochs * steps_per_epoch))
        stopper = EarlyStopping(patience=cfg.patience, mode="max")
        step, t0 = 0, time.perf_counter()
        bar = tqdm(range(cfg.epochs), desc="multvae", disable=not progress, leave=False)
        for epoch in bar:
            net.train()
            total = 0.0
            for idx in batches(len(users), cfg.batch_size, gen):
                x = train.rows(users[idx.numpy()])
                logits, mu, logvar = net(x)
                nll = -(F.log_softmax(logits, dim=1) * x).sum(dim=1).mean()
                kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()
                beta = min(cfg.anneal_cap, cfg.anneal_cap * step / anneal_steps)
                loss = nll + beta * kl
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
                total += float(loss.detach()) * len(idx)
            if valid is not None:
                self.net_ = net
                score = float(np.mean(ndcg_at_k(self.score(valid[0]), valid[1], 100, exclude=valid[0])))
                bar.set_postfix(loss=f"{total / len(users):.1f}", ndcg100=f"{score:.4f}")
                if stopper.step(score, epoch, net):
                    break
        stopper.restore_best(net)
        self.net_ = net
        self.metrics_ = {"train_seconds": time.perf_counter() - t0, "epochs": epoch + 1,
                         "best_epoch": stopper.best_epoch + 1, "warm_start": warm,
                         "valid_ndcg@100": stopper.best_value if valid is not None else None}
        return self

    # ---- inference
    def _net(self) -> _Net:
        if self.net_ is None:
            raise NotFittedError("MultVAE is not fitted; call fit() or MultVAE.load().")
        return self.net_

    def _check(self, histories: Histories) -> None:
        if histories.n_items != self._net().out.out_features:
            raise SchemaError(f"histories have {histories.n_items} items; the model was trained on "
                              f"{self._net().out.out_features}.")

    @torch.no_grad()
    def transform(self, histories: Histories, batch_size: int = 4096) -> np.ndarray:
        """Posterior means (user embeddings) of each history, folded in without training."""
        self._check(histories)
        net = self._net()
        out = [net.encode(histories.rows(np.arange(s, min(s + batch_size, histories.n_users))))[0]
               for s in range(0, histories.n_users, batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, self.config.dim), np.float32)

    @torch.no_grad()
    def score(self, histories: Histories, batch_size: int = 4096) -> np.ndarray:
        """Scores over all items for each history (higher = more likely next)."""
        self._check(histories)
        net = self._net()
        out = [net.decode(net.encode(histories.rows(np.arange(s, min(s + batch_size, histories.n_users))))[0])
               for s in range(0, histories.n_users, batch_size)]
        return torch.cat(out).numpy()

    def fold_in(self, item_ids: list[int] | np.ndarray) -> np.ndarray:
        """Embedding of one unseen history given as item ids (unknown ids are ignored)."""
        pos = np.flatnonzero(np.isin(self.item_ids_, id_array(item_ids, kind_of_array(self.item_ids_))))
        h = Histories(np.array([0, len(pos)]), pos.astype(np.int64), len(self.item_ids_))
        return self.transform(h)[0]

    def item_vectors(self) -> np.ndarray:
        return self._net().out.weight.detach().numpy().copy()

    # ---- persistence
    def save(self, root, extra: dict | None = None) -> Artifact:
        config = {"architecture": asdict(self.config), "n_items": len(self.item_ids_),
                  "input_schema": {"histories": f"item ids ({kind_of_array(self.item_ids_)})"},
                  "metrics": self.metrics_, **(extra or {})}
        return save_model(root, self.name, self._net(), config, pack_ids("item_ids", self.item_ids_))

    @classmethod
    def load(cls, root, version: str | None = None) -> MultVAE:
        art = load_model(root, cls.name, version)
        model = cls(MultVAEConfig(**art.config["architecture"]))
        net = _Net(art.config["n_items"], model.config)
        net.load_state_dict(net_state(art))
        net.eval()
        model.net_, model.item_ids_ = net, unpack_ids(art.tensors, "item_ids")
        model.metrics_, model.version_ = art.config.get("metrics", {}), art.version
        return model
