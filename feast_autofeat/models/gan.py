"""A tabular WGAN-GP (Gulrajani, Ahmed, Arjovsky, Dumoulin, Courville 2017: "Improved Training of Wasserstein
GANs") over users' behaviour feature vectors.

Rows of a DataFrame (numeric and string columns) are preprocessed by ``TabularPreprocessor`` (rank-gauss numbers,
one-hot strings). A generator maps Gaussian noise to such vectors: numbers come out of a linear layer, each string
column's one-hot block out of a Gumbel-softmax, so it stays a distribution over that column's vocabulary. A
critic scores rows, trained with the gradient penalty that keeps it 1-Lipschitz.

Two uses: ``sample`` gives synthetic rows decoded back to the original columns (shareable test data, augmentation),
and ``transform`` gives "realism features" -- the critic's penultimate activations plus its score -- for rows
that look unlike the population (bots, broken pipelines). ``fidelity_report`` measures how close synthetic rows
are to real ones; ``independent_sampler`` is the baseline that keeps every marginal but no correlation.
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
from feast_autofeat.errors import AutofeatError
from feast_autofeat.models.base import (
    EarlyStopping,
    NotFittedError,
    SchemaError,
    TabularPreprocessor,
    batches,
    check_matrix,
    load_model,
    net_state,
    save_model,
    seed_everything,
    warm_start,
)
from feast_autofeat.models.metrics import auc, logistic_fit, logistic_score


@dataclass(frozen=True)
class GANConfig:
    noise_dim: int = 32
    hidden: int = 128  # generator width (two hidden layers)
    critic_hidden: int = 64  # critic width (two hidden layers) = number of realism features before the score
    gp_weight: float = 10.0  # lambda of the gradient penalty, as in the paper
    n_critic: int = 5  # critic steps per generator step, as in the paper
    # The paper's lr 1e-4 / betas (0.5, 0.9) barely moves in a CPU-sized budget; these converge in tens of epochs
    # on tabular rows (measured on the test fixture and ML-100K user features).
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.0, 0.9])  # Adam betas; a list so the JSON round-trips
    tau: float = 0.2  # Gumbel-softmax temperature for string columns: low = nearly one-hot, like the real rows
    batch_size: int = 256
    epochs: int = 100
    patience: int = 15  # epochs without a better validation fidelity before stopping
    seed: int = 0
    scaling: str = "rankgauss"
    fill: dict[str, float] = field(default_factory=dict)  # documented NaN imputation, see TabularPreprocessor

    def __post_init__(self):
        # normalise containers so a config built in Python equals the one read back from JSON
        object.__setattr__(self, "betas", [float(b) for b in self.betas])
        object.__setattr__(self, "fill", {str(k): float(v) for k, v in self.fill.items()})
        if self.epochs < 1 or self.n_critic < 1 or self.batch_size < 1:
            raise AutofeatError("epochs, n_critic and batch_size must be at least 1.")
        if self.scaling not in ("rankgauss", "standard"):
            raise AutofeatError(f"scaling must be 'rankgauss' or 'standard', got {self.scaling!r}.")


def _blocks(pre: TabularPreprocessor) -> list[tuple[int, int]]:
    """(start, end) of each string column's one-hot block (vocabulary + the trailing "unseen" slot)."""
    out, start = [], len(pre.numeric_)
    for vocab in pre.categorical_.values():
        out.append((start, start + len(vocab) + 1))
        start += len(vocab) + 1
    return out


class _Generator(nn.Module):
    def __init__(self, width: int, n_numeric: int, blocks: list[tuple[int, int]], cfg: GANConfig):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(cfg.noise_dim, cfg.hidden), nn.ReLU(),
                                  nn.Linear(cfg.hidden, cfg.hidden), nn.ReLU(),
                                  nn.Linear(cfg.hidden, width))
        self.n_numeric, self.blocks = n_numeric, blocks

    def forward(self, z: torch.Tensor, tau: float | None = None, gen: torch.Generator | None = None) -> torch.Tensor:
        """``tau`` given: soft Gumbel-softmax one-hots (differentiable, for training). ``tau=None``: hard one-hots
        drawn by Gumbel-max over the vocabulary only -- a sample from the same categorical the soft version
        relaxes (an argmax without noise would always emit each row's mode and collapse rare values). The
        "unseen" slot exists for encoding, never for generated rows."""
        out = self.body(z)
        parts = [out[:, :self.n_numeric]]
        for start, end in self.blocks:
            logits = out[:, start:end]
            # own Gumbel noise (not F.gumbel_softmax) so it comes from the caller's seeded generator;
            # rand is in [0, 1), so only 0 needs guarding against log(0)
            u = torch.rand(logits.shape, generator=gen).clamp_min_(1e-10)
            noisy = logits - torch.log(-torch.log(u))
            if tau is not None:
                parts.append(F.softmax(noisy / tau, dim=1))
            else:
                code = noisy[:, :-1].argmax(dim=1) if end - start > 1 else torch.zeros(len(z), dtype=torch.long)
                parts.append(F.one_hot(code, end - start).to(out.dtype))
        return torch.cat(parts, dim=1)


class _Critic(nn.Module):
    # no batch norm: the gradient penalty is per row, and batch statistics would couple rows (paper, sec. 4)
    def __init__(self, width: int, cfg: GANConfig):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(width, cfg.critic_hidden), nn.LeakyReLU(0.2),
                                  nn.Linear(cfg.critic_hidden, cfg.critic_hidden), nn.LeakyReLU(0.2))
        self.head = nn.Linear(cfg.critic_hidden, 1)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return h, self.head(h).squeeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[1]


class _GAN(nn.Module):
    """Both halves in one module, so early stopping snapshots (and ``save`` writes) a matching pair."""

    def __init__(self, pre: TabularPreprocessor, cfg: GANConfig):
        super().__init__()
        self.generator = _Generator(pre.width, len(pre.numeric_), _blocks(pre), cfg)
        self.critic = _Critic(pre.width, cfg)


def _gradient_penalty(critic: _Critic, real: torch.Tensor, fake: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(||grad critic(x_hat)|| - 1)^2 at random points between real and fake rows (the paper's Algorithm 1)."""
    eps = torch.rand(len(real), 1, generator=gen)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return ((grad.norm(2, dim=1) - 1) ** 2).mean()


def _corr(x: torch.Tensor) -> torch.Tensor:
    x = x - x.mean(0)
    std = x.pow(2).mean(0).sqrt()
    return (x.T @ x / len(x)) / (std[:, None] * std[None, :] + 1e-8)  # constant columns -> 0, not NaN


def _moment_gap(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Validation signal in preprocessed space: mean |gap| of column means, stds and pairwise correlations.

    Chosen over the critic's Wasserstein estimate because the critic changes every step, so its estimates from
    different epochs are not on one scale; these moments are, and they are what ``fidelity_report`` checks.
    """
    iu = torch.triu_indices(real.shape[1], real.shape[1], 1)
    corr_gap = (_corr(real) - _corr(fake))[iu[0], iu[1]].abs().mean() if iu.shape[1] else torch.tensor(0.0)
    return float((real.mean(0) - fake.mean(0)).abs().mean() + (real.std(0) - fake.std(0)).abs().mean() + corr_gap)


class TabularGAN:
    """``TabularGAN(epochs=200).fit(df)``; ``sample(n)`` -> synthetic rows, ``transform(df)`` -> realism features."""

    name = "gan"

    def __init__(self, config: GANConfig | None = None, **overrides):
        self.config = GANConfig(**{**asdict(config or GANConfig()), **overrides})
        self.net_: _GAN | None = None
        self.preprocessor_: TabularPreprocessor | None = None
        self.schema_: dict[str, str] = {}  # column -> pandas dtype, in the training frame's column order
        self.metrics_: dict = {}

    # ---- training
    def fit(self, df: pd.DataFrame, valid_df: pd.DataFrame | None = None, progress: bool = False) -> TabularGAN:
        """Train on the rows of ``df``. Early stopping watches the moment gap between generated rows and
        ``valid_df`` (or, without it, the training rows) and keeps the best generator/critic pair."""
        cfg, t0 = self.config, time.perf_counter()
        gen = seed_everything(cfg.seed)
        pre = TabularPreprocessor(scaling=cfg.scaling, fill=dict(cfg.fill)).fit(df)
        x = torch.from_numpy(pre.transform(df))
        ref = torch.from_numpy(pre.transform(valid_df)) if valid_df is not None else x
        net = _GAN(pre, cfg)
        init = getattr(self, "init_", None)  # warm start (``warm_from``): same input layout, same weights' meaning
        warm = warm_start(net, init, init is not None and TabularPreprocessor.from_state(
            init.config["preprocessing"]).layout() == pre.layout())
        opt_g = torch.optim.Adam(net.generator.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
        opt_d = torch.optim.Adam(net.critic.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
        stopper = EarlyStopping(patience=cfg.patience, mode="min")
        step = 0
        bar = tqdm(range(cfg.epochs), desc="gan", disable=not progress, leave=False)
        for epoch in bar:
            net.train()
            for idx in batches(len(x), cfg.batch_size, gen):
                real = x[idx]
                with torch.no_grad():
                    fake = net.generator(torch.randn(len(idx), cfg.noise_dim, generator=gen), cfg.tau, gen)
                gp = _gradient_penalty(net.critic, real, fake, gen)
                d_loss = net.critic(fake).mean() - net.critic(real).mean() + cfg.gp_weight * gp
                opt_d.zero_grad()
                d_loss.backward()
                opt_d.step()
                step += 1
                if step % cfg.n_critic == 0:
                    fake = net.generator(torch.randn(cfg.batch_size, cfg.noise_dim, generator=gen), cfg.tau, gen)
                    g_loss = -net.critic(fake).mean()
                    opt_g.zero_grad()
                    g_loss.backward()
                    opt_g.step()
            gap = self._validate(net, ref)
            bar.set_postfix(d_loss=f"{float(d_loss.detach()):.3f}", gap=f"{gap:.4f}")
            if stopper.step(gap, epoch, net):
                break
        stopper.restore_best(net)
        self.net_, self.preprocessor_ = net, pre
        self.schema_ = {c: str(df[c].dtype) for c in df.columns if c in pre.dtypes_}
        with torch.no_grad():
            eval_gen = self._eval_generator()
            fake = net.generator(torch.randn(len(ref), cfg.noise_dim, generator=eval_gen), gen=eval_gen)
            w = float(net.critic(ref).mean() - net.critic(fake).mean())
        self.metrics_ = {"train_seconds": time.perf_counter() - t0, "epochs": epoch + 1, "warm_start": warm,
                         "best_epoch": stopper.best_epoch + 1, "critic_steps": step,
                         "generator_steps": step // cfg.n_critic, "rows": len(x),
                         "valid_moment_gap": stopper.best_value, "valid_wasserstein": w,
                         "validated_on": "valid_df" if valid_df is not None else "train"}
        return self

    def _eval_generator(self) -> torch.Generator:
        # separate from the training stream: validating never changes what training sees
        return torch.Generator().manual_seed(self.config.seed + 1)

    @torch.no_grad()
    def _validate(self, net: _GAN, ref: torch.Tensor) -> float:
        net.eval()
        # the same noise every epoch, so epochs differ only by the weights
        eval_gen = self._eval_generator()
        fake = net.generator(torch.randn(len(ref), self.config.noise_dim, generator=eval_gen), gen=eval_gen)
        return _moment_gap(ref, fake)

    # ---- inference
    def _net(self) -> _GAN:
        if self.net_ is None or self.preprocessor_ is None:
            raise NotFittedError("TabularGAN is not fitted; call fit() or TabularGAN.load().")
        return self.net_

    @torch.no_grad()
    def transform(self, df: pd.DataFrame, batch_size: int = 4096) -> np.ndarray:
        """Realism features: the critic's penultimate activations, then its score as the last column (float32)."""
        net = self._net()
        x = torch.from_numpy(self.preprocessor_.transform(df))  # raises SchemaError on missing columns / NaN
        out = [torch.cat([h, s[:, None]], dim=1) for h, s in
               (net.critic.features(x[i:i + batch_size]) for i in range(0, len(x), batch_size))]
        return torch.cat(out).numpy() if out else np.zeros((0, self.config.critic_hidden + 1), np.float32)

    def realism(self, df: pd.DataFrame, batch_size: int = 4096) -> np.ndarray:
        """The critic's score per row: higher = more like the training population."""
        return self.transform(df, batch_size)[:, -1]

    def sample(self, n: int, seed: int | None = None, batch_size: int = 4096) -> pd.DataFrame:
        """``n`` synthetic rows with the training frame's columns and dtypes (``seed=None``: fresh randomness)."""
        return self.inverse_transform(self.sample_matrix(n, seed, batch_size))

    @torch.no_grad()
    def sample_matrix(self, n: int, seed: int | None = None, batch_size: int = 4096) -> np.ndarray:
        """``n`` synthetic rows in the preprocessed space (``transform``'s input space, before decoding)."""
        net = self._net()
        gen = torch.Generator()
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(seed)
        parts = [net.generator(torch.randn(min(batch_size, n - i), self.config.noise_dim, generator=gen), gen=gen)
                 for i in range(0, n, batch_size)]
        return torch.cat(parts).numpy() if parts else np.zeros((0, self.preprocessor_.width), np.float32)

    def inverse_transform(self, matrix: np.ndarray) -> pd.DataFrame:
        """Preprocessed rows -> a DataFrame of the original columns (the inverse of the preprocessing, up to
        quantile-grid interpolation; string blocks decode to their most likely vocabulary entry)."""
        self._net()
        pre = self.preprocessor_
        x = check_matrix(matrix, pre.width, "inverse_transform").astype(np.float64)
        k = len(pre.numeric_)
        num = x[:, :k]
        if pre.scaling == "rankgauss" and k:
            u = torch.special.ndtr(torch.from_numpy(num)).numpy()  # back to the probability scale
            q = np.asarray(pre.quantiles_)
            probs = np.linspace(0, 1, q.shape[1])  # the grid the quantiles were taken on
            num = np.column_stack([np.interp(u[:, j], probs, q[j]) for j in range(k)])
        elif k:
            num = num * np.asarray(pre.std_) + np.asarray(pre.mean_)
        cols = {}
        for j, col in enumerate(pre.numeric_):
            v = num[:, j]
            if pd.api.types.is_bool_dtype(self.schema_[col]):
                v = v > 0.5
            elif pd.api.types.is_integer_dtype(self.schema_[col]):
                v = np.rint(v)
            cols[col] = pd.Series(v).astype(self.schema_[col])
        for (start, end), (col, vocab) in zip(_blocks(pre), pre.categorical_.items()):
            values = np.asarray(vocab + [None], dtype=object)  # None only for an empty vocabulary
            code = x[:, start:end - 1].argmax(axis=1) if vocab else np.zeros(len(x), dtype=np.int64)
            cols[col] = pd.Series(values[code], dtype=object).astype(self.schema_[col])
        return pd.DataFrame({c: cols[c] for c in self.schema_})

    # ---- persistence
    def save(self, root, extra: dict | None = None) -> Artifact:
        config = {"architecture": asdict(self.config), "preprocessing": self.preprocessor_.state(),
                  "input_schema": self.schema_, "metrics": self.metrics_, **(extra or {})}
        return save_model(root, self.name, self._net(), config)

    @classmethod
    def load(cls, root, version: str | None = None) -> TabularGAN:
        art = load_model(root, cls.name, version)
        model = cls(GANConfig(**art.config["architecture"]))
        pre = TabularPreprocessor.from_state(art.config["preprocessing"])
        net = _GAN(pre, model.config)
        net.load_state_dict(net_state(art))
        net.eval()
        model.net_, model.preprocessor_, model.schema_ = net, pre, dict(art.config["input_schema"])
        model.metrics_, model.version_ = art.config.get("metrics", {}), art.version
        return model


# ---- evaluation of synthetic data


def _is_numeric(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)


def _wasserstein_1d(a: np.ndarray, b: np.ndarray) -> float:
    """Exact W1 between two empirical distributions: the integral of |F_a - F_b| over the merged sorted values
    (equal to the integral of |F_a^-1 - F_b^-1|, i.e. between the sorted quantiles), so sizes may differ."""
    a, b = np.sort(a), np.sort(b)
    grid = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(a, grid[:-1], side="right") / len(a)
    cdf_b = np.searchsorted(b, grid[:-1], side="right") / len(b)
    return float(np.sum(np.abs(cdf_a - cdf_b) * np.diff(grid)))


def _efficacy(real: pd.DataFrame, synthetic: pd.DataFrame, target: str, numeric: list[str]) -> dict:
    """Train-on-synthetic / test-on-real vs train-on-real / test-on-real, both tested on the same held-out half
    of the real rows (fixed split), for "is ``target`` above its real median" from the other numeric columns."""
    if target not in numeric:
        raise SchemaError(f"target {target!r} must be a numeric column of the real table.")
    features = [c for c in numeric if c != target]
    if not features:
        raise SchemaError(f"no numeric columns besides {target!r} to predict it from.")
    threshold = float(np.nanmedian(real[target].to_numpy(np.float64)))
    order = np.random.default_rng(0).permutation(len(real))
    train, test = real.iloc[order[:len(real) // 2]], real.iloc[order[len(real) // 2:]]
    mu = train[features].to_numpy(np.float64).mean(axis=0)
    sd = train[features].to_numpy(np.float64).std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)

    def xy(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        return ((df[features].to_numpy(np.float64) - mu) / sd,
                (df[target].to_numpy(np.float64) > threshold).astype(np.float64))

    x_test, y_test = xy(test)
    aucs = {}
    for key, source in (("tstr_auc", synthetic), ("trtr_auc", train)):
        xs, ys = xy(source)
        w = logistic_fit(xs, ys)
        aucs[key] = auc(y_test, logistic_score(w, x_test))
    return {"target": target, "threshold": threshold, "features": features, **aucs,
            "auc_gap": aucs["trtr_auc"] - aucs["tstr_auc"]}


def fidelity_report(real: pd.DataFrame, synthetic: pd.DataFrame, target: str | None = None) -> dict:
    """How close ``synthetic`` rows are to ``real`` ones (lower distances = closer).

    - ``columns``: per column, ``wasserstein`` (numeric: 1-D W1 on values divided by the real column's std) or
      ``tvd`` (strings: total variation distance between the category frequencies); NaN cells are ignored.
    - ``correlation_diff``: mean |difference| of the pairwise Pearson correlations over numeric columns -- the
      structure an independent sampler loses.
    - ``efficacy`` (with ``target``): AUC on real rows of a logistic regression trained on synthetic rows, next to
      the same model trained on real rows.
    """
    missing = [c for c in real.columns if c not in synthetic.columns]
    if missing:
        raise SchemaError(f"synthetic rows lack column(s) {missing} of the real table.")
    numeric = [c for c in real.columns if _is_numeric(real[c])]
    columns: dict[str, dict] = {}
    for c in real.columns:
        a, b = real[c].dropna(), synthetic[c].dropna()
        if len(a) == 0 or len(b) == 0:
            raise SchemaError(f"column {c!r} has no values in the real or the synthetic rows.")
        if c in numeric:
            if not _is_numeric(synthetic[c]):
                raise SchemaError(f"column {c!r} is numeric in the real rows but {synthetic[c].dtype} in the "
                                  "synthetic ones.")
            a, b = a.to_numpy(np.float64), b.to_numpy(np.float64)
            scale = a.std() if a.std() > 0 else 1.0
            columns[c] = {"kind": "numeric", "wasserstein": _wasserstein_1d(a / scale, b / scale)}
        else:
            p = a.astype(str).value_counts(normalize=True)
            q = b.astype(str).value_counts(normalize=True)
            columns[c] = {"kind": "categorical", "tvd": float(0.5 * p.sub(q, fill_value=0).abs().sum())}
    w = [v["wasserstein"] for v in columns.values() if v["kind"] == "numeric"]
    tvd = [v["tvd"] for v in columns.values() if v["kind"] == "categorical"]
    report = {"columns": columns, "mean_wasserstein": float(np.mean(w)) if w else None,
              "mean_tvd": float(np.mean(tvd)) if tvd else None, "correlation_diff": None}
    if len(numeric) >= 2:
        # constant columns have no correlation: count them as 0 on both sides rather than poisoning the mean
        cr = np.nan_to_num(real[numeric].astype(np.float64).corr().to_numpy())
        cs = np.nan_to_num(synthetic[numeric].astype(np.float64).corr().to_numpy())
        iu = np.triu_indices(len(numeric), 1)
        report["correlation_diff"] = float(np.abs(cr - cs)[iu].mean())
    if target is not None:
        report["efficacy"] = _efficacy(real, synthetic, target, numeric)
    return report


def independent_sampler(real: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` rows, each column drawn independently (with replacement) from its own marginal: exact marginals,
    no dependence between columns. The baseline a generative model must beat on correlations."""
    if len(real) == 0:
        raise SchemaError("cannot sample from an empty table.")
    rng = np.random.default_rng(seed)
    return pd.DataFrame({c: real[c].iloc[rng.integers(0, len(real), n)].reset_index(drop=True)
                         for c in real.columns})

