"""What every encoder shares: input validation, tabular preprocessing, seeding, early stopping, batching.

Encoders follow scikit-learn's shape: hyperparameters stored unchanged in ``__init__``, learned state in
attributes ending in ``_``, ``fit`` returns ``self``, ``transform`` is pure and batched, and every encoder
can ``save`` itself as a verified version (``feast_autofeat.artifacts``) and ``load`` it back.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from feast_autofeat.artifacts import Artifact, load_version, save_version
from feast_autofeat.errors import AutofeatError


class SchemaError(AutofeatError):
    """Encode-time input does not match what the model was trained on (columns, dtypes, NaN/inf, width)."""


class NotFittedError(AutofeatError):
    """A model was used before ``fit`` (or ``load``)."""


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch; return a torch generator for data order and noise."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def batches(n: int, batch_size: int, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Index batches over ``n`` rows, shuffled when a generator is given."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


@dataclass
class EarlyStopping:
    """Stop after ``patience`` evaluations without improvement; keep the best state (a copy of tensors)."""

    patience: int = 10
    mode: str = "min"
    best: float = math.inf
    best_epoch: int = -1
    best_state: dict | None = None
    bad: int = 0

    def step(self, value: float, epoch: int, module: torch.nn.Module) -> bool:
        """Record ``value``; return True when training should stop."""
        score = value if self.mode == "min" else -value
        if score < self.best:
            self.best, self.best_epoch, self.bad = score, epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        else:
            self.bad += 1
        return self.bad >= self.patience

    def restore_best(self, module: torch.nn.Module) -> torch.nn.Module:
        """Load the best state seen (if any) into ``module`` and switch it to eval mode."""
        if self.best_state is not None:
            module.load_state_dict(self.best_state)
        return module.eval()

    @property
    def best_value(self) -> float:
        return self.best if self.mode == "min" else -self.best


_QUANTILES = 257
_PROBS = np.linspace(0, 1, _QUANTILES)  # the quantiles' probabilities (read-only, shared)
_PROBS.flags.writeable = False


@dataclass
class TabularPreprocessor:
    """Numeric columns -> rank-gauss (or standard) scaling; string columns -> one-hot over the training
    vocabulary plus an "unseen" slot. State is plain lists, so it lives in the model's JSON.

    Missing values: a column listed in ``fill`` has NaN replaced by its fill value before scaling (the
    documented imputation, e.g. "no activity in 30 days" -> 0 counts); NaN or inf anywhere else is an error
    naming the column. Strings: missing -> the "unseen" slot only for columns in ``fill`` too. String columns
    with more than ``max_categories`` values are left out (listed in ``dropped_``), as are extra input columns.
    """

    scaling: str = "rankgauss"
    fill: dict[str, float] = field(default_factory=dict)
    max_categories: int = 64  # string columns with more distinct values (ids, zip codes) are left out
    numeric_: list[str] = field(default_factory=list)
    categorical_: dict[str, list[str]] = field(default_factory=dict)
    quantiles_: list[list[float]] = field(default_factory=list)
    mean_: list[float] = field(default_factory=list)
    std_: list[float] = field(default_factory=list)
    dtypes_: dict[str, str] = field(default_factory=dict)
    dropped_: list[str] = field(default_factory=list)
    _ties: list | None = field(default=None, init=False, repr=False, compare=False)  # derived from quantiles_
    _index: dict | None = field(default=None, init=False, repr=False, compare=False)  # vocabularies as dicts
    _tie_maps: list | None = field(default=None, init=False, repr=False, compare=False)
    _q: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)  # quantiles_ as an array

    @property
    def columns(self) -> list[str]:
        return self.numeric_ + list(self.categorical_)

    @property
    def width(self) -> int:
        return len(self.numeric_) + sum(len(v) + 1 for v in self.categorical_.values())

    def fit(self, df: pd.DataFrame) -> TabularPreprocessor:
        if self.scaling not in ("rankgauss", "standard"):
            raise AutofeatError(f"scaling must be 'rankgauss' or 'standard', got {self.scaling!r}.")
        if df.empty:
            raise SchemaError("cannot fit preprocessing on an empty table.")
        self.numeric_, self.categorical_, self.dtypes_, self.dropped_ = [], {}, {}, []
        for col in df.columns:
            s = df[col]
            if pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
                self.numeric_.append(col)
                self.dtypes_[col] = "numeric"
            elif pd.api.types.is_object_dtype(s) or pd.api.types.is_string_dtype(s) or isinstance(
                    s.dtype, pd.CategoricalDtype):
                vocab = sorted(map(str, s.dropna().unique()))
                if len(vocab) > self.max_categories:
                    self.dropped_.append(col)  # one-hot over hundreds of values would swamp the rest
                    continue
                self.categorical_[col] = vocab
                self.dtypes_[col] = "categorical"
            else:
                raise SchemaError(f"column {col!r} has dtype {s.dtype}, neither numeric nor string; drop or "
                                  "convert it before training.")
        x = self._numeric(df)
        probs = np.linspace(0, 1, _QUANTILES)
        self.quantiles_ = np.quantile(x, probs, axis=0).T.tolist() if len(self.numeric_) else []
        self._ties = self._tie_maps = self._q = None  # derived from the quantiles: rebuilt on first use
        self.mean_ = x.mean(axis=0).tolist()
        self.std_ = np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0).tolist()
        return self

    def _numeric(self, df: pd.DataFrame) -> np.ndarray:
        missing = [c for c in self.columns if c not in df.columns]
        if missing:
            raise SchemaError(f"input lacks column(s) {missing} that the model was trained on; pass the same "
                              "features as at training time.")
        if not self.numeric_:
            return np.zeros((len(df), 0))
        block = df[self.numeric_]
        non_numeric = [c for c in self.numeric_ if not (pd.api.types.is_numeric_dtype(block[c])
                                                        or pd.api.types.is_bool_dtype(block[c]))]
        if non_numeric:
            raise SchemaError(f"column(s) {non_numeric} must be numeric, as at training time.")
        return self._filled(block.to_numpy(dtype=np.float64, na_value=np.nan))

    def _filled(self, x: np.ndarray) -> np.ndarray:
        """Documented fills for NaN; any NaN or infinity left is an error naming its column."""
        fills = np.array([self.fill.get(c, np.nan) for c in self.numeric_])
        nan = np.isnan(x)
        if nan.any():
            x = np.where(nan, fills[None, :], x)
        bad = ~np.isfinite(x)
        if bad.any():
            cols = [self.numeric_[j] for j in np.flatnonzero(bad.any(axis=0))]
            raise SchemaError(f"NaN or infinite values in column(s) {cols} ({int(bad.sum())} cells); clean them "
                              "or train with a fill value for them (documented imputation).")
        return x

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """Rows of ``df`` -> float32 matrix of ``width`` columns."""
        if not self.dtypes_:
            raise NotFittedError("preprocessing is not fitted; call fit() or load a trained model.")
        parts = [self._scaled(self._numeric(df))]
        for col, vocab in self.categorical_.items():
            s = df[col]
            if s.isna().any() and col not in self.fill:
                raise SchemaError(f"missing values in categorical column {col!r}; fill them or train with a "
                                  "fill for it.")
            codes = pd.Categorical(s.astype("string"), categories=vocab).codes  # -1 = unseen / missing
            onehot = np.zeros((len(df), len(vocab) + 1), dtype=np.float32)
            onehot[np.arange(len(df)), np.where(codes < 0, len(vocab), codes)] = 1.0
            parts.append(onehot)
        return np.concatenate(parts, axis=1)

    def _scaled(self, x: np.ndarray) -> np.ndarray:
        if self.scaling == "rankgauss" and x.shape[1]:
            u = np.clip(self._ranks(x), 1e-3, 1 - 1e-3)
            x = torch.special.ndtri(torch.from_numpy(u)).numpy()
        elif x.shape[1]:
            x = (x - np.asarray(self.mean_)) / np.asarray(self.std_)
        return x.astype(np.float32)

    def transform_record(self, record: Mapping) -> np.ndarray:
        """One row given as {column: value} (None = missing) -> a 1 x ``width`` float32 matrix equal to
        ``transform`` of that row, without pandas: the per-request serving path."""
        return self.transform_records([record])

    def transform_records(self, records: Sequence[Mapping]) -> np.ndarray:
        """Rows given as {column: value} (None = missing) -> an n x ``width`` float32 matrix equal to
        ``transform`` of those rows, without pandas: serving's path for one request or a batch."""
        if not self.dtypes_:
            raise NotFittedError("preprocessing is not fitted; call fit() or load a trained model.")
        missing = sorted({c for r in records for c in self.columns if c not in r})
        if missing:
            raise SchemaError(f"input lacks column(s) {missing} that the model was trained on; pass the same "
                              "features as at training time.")
        values = [[r[c] for c in self.numeric_] for r in records]
        bad = sorted({c for row in values for c, v in zip(self.numeric_, row) if v is not None and (
            isinstance(v, (str, bytes)) or not np.isscalar(v))})
        if bad:
            raise SchemaError(f"column(s) {bad} must be numeric, as at training time.")
        x = np.array([[np.nan if v is None else float(v) for v in row] for row in values], np.float64)
        parts = [self._scaled(self._filled(x.reshape(len(records), len(self.numeric_))))]
        if self._index is None:
            self._index = {col: {v: i for i, v in enumerate(vocab)} for col, vocab in self.categorical_.items()}
        for col, vocab in self.categorical_.items():
            column = [r[col] for r in records]
            if col not in self.fill and any(v is None for v in column):
                raise SchemaError(f"missing values in categorical column {col!r}; fill them or train with a "
                                  "fill for it.")
            index = self._index[col]
            onehot = np.zeros((len(records), len(vocab) + 1), dtype=np.float32)
            onehot[np.arange(len(records)), [len(vocab) if v is None else index.get(str(v), len(vocab))
                                             for v in column]] = 1.0
            parts.append(onehot)
        return np.concatenate(parts, axis=1)

    def _ranks(self, x: np.ndarray) -> np.ndarray:
        """Each value's probability under its column's training quantiles (linear between them). A value equal to
        a tied quantile (e.g. the many zero counts) gets the middle of the tied probabilities: the mean of
        interpolating from below and from above, computed as one interpolation plus a lookup of the ties."""
        probs = _PROBS
        if self._q is None:  # the list-of-lists conversion alone cost ~0.4 ms per request
            self._q = np.asarray(self.quantiles_)
        q = self._q
        if self._ties is None:
            # built whole, then published in one assignment: concurrent first requests must never see a
            # partial table (``_ranks_row`` would cache tie maps built from it, skewing every later request)
            ties = []
            for qj in q:
                values, first, counts = np.unique(qj, return_index=True, return_counts=True)
                tied = counts > 1
                mid = 0.5 * (probs[first[tied]] + probs[first[tied] + counts[tied] - 1])
                ties.append((values[tied], mid))
            self._ties = ties
        if x.shape[0] == 1:
            return self._ranks_row(x[0], q, probs)[None, :]
        u = np.empty_like(x)
        for j in range(x.shape[1]):
            col = x[:, j]
            # np.interp binary-searches each value; in sorted order consecutive searches hit the same branches
            # and cache lines: sorting first, interpolating, and scattering back is 3x faster, same values
            order = np.argsort(col)
            uj = np.empty_like(col)
            uj[order] = np.interp(col[order], q[j], probs)
            values, mid = self._ties[j]
            if len(values):
                k = np.minimum(np.searchsorted(values, col), len(values) - 1)
                hit = values[k] == col
                uj[hit] = mid[k[hit]]
            u[:, j] = uj
        return u

    def _ranks_row(self, x: np.ndarray, q: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """``_ranks`` of one row, vectorized across columns (np.interp's rule: the segment with
        q[j] <= x < q[j+1], the end probabilities outside), then the tied-quantile middles by dict lookup."""
        n = q.shape[1]
        j = (q <= x[:, None]).sum(axis=1) - 1
        jj = np.clip(j, 0, n - 2)
        cols = np.arange(len(x))
        lo, hi = q[cols, jj], q[cols, jj + 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = (probs[jj + 1] - probs[jj]) / (hi - lo)
            u = probs[jj] + slope * (x - lo)
        u = np.where(j < 0, probs[0], np.where(j >= n - 1, probs[-1], u))
        if self._tie_maps is None:
            self._tie_maps = [dict(zip(values.tolist(), mid.tolist())) for values, mid in self._ties]
        for c, ties in enumerate(self._tie_maps):
            if ties and x[c] in ties:
                u[c] = ties[x[c]]
        return u

    def state(self) -> dict:
        return {"scaling": self.scaling, "fill": self.fill, "max_categories": self.max_categories,
                "dropped": self.dropped_, "numeric": self.numeric_,
                "categorical": self.categorical_, "quantiles": self.quantiles_, "mean": self.mean_,
                "std": self.std_, "dtypes": self.dtypes_}

    def layout(self) -> dict:
        """What fixes the meaning of each input position (columns, kinds, category vocabularies), not the
        scaling statistics: two fits with the same layout can share network weights (warm start)."""
        return json.loads(json.dumps({"numeric": self.numeric_, "categorical": self.categorical_,
                                      "dropped": self.dropped_}))

    @classmethod
    def from_state(cls, state: dict) -> TabularPreprocessor:
        return cls(scaling=state["scaling"], fill=dict(state["fill"]), max_categories=state["max_categories"],
                   dropped_=list(state["dropped"]), numeric_=list(state["numeric"]),
                   categorical_={k: list(v) for k, v in state["categorical"].items()},
                   quantiles_=state["quantiles"], mean_=state["mean"], std_=state["std"],
                   dtypes_=dict(state["dtypes"]))


def check_matrix(x: np.ndarray, width: int, what: str) -> np.ndarray:
    """A 2-D finite float32 matrix of ``width`` columns, or a SchemaError saying what is wrong."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != width:
        raise SchemaError(f"{what}: expected a matrix with {width} columns, got shape {x.shape}.")
    if not np.isfinite(x).all():
        raise SchemaError(f"{what}: {int((~np.isfinite(x)).sum())} NaN or infinite values.")
    return x


def save_model(root, name: str, net: torch.nn.Module, config: dict, tensors: dict | None = None) -> Artifact:
    """Save ``net``'s weights (prefixed ``net.``) plus extra tensors and the JSON ``config`` as a version."""
    weights = {f"net.{k}": v for k, v in net.state_dict().items()}
    return save_version(root, name, {**weights, **(tensors or {})}, {"model": name, **config})


def load_model(root, name: str, version: str | None = None) -> Artifact:
    """Load and verify a version of model ``name``; refuse a directory holding another kind of model."""
    art = load_version(root, name, version)
    if art.config.get("model") != name:
        raise SchemaError(f"{art.path} holds a {art.config.get('model')!r} model, not {name!r}.")
    return art


def warm_start(net: nn.Module, init: Artifact | None, same_inputs: bool) -> bool:
    """Start ``net`` from a previous version's weights when its inputs mean the same thing (``same_inputs``)
    and every tensor matches in name and shape; otherwise leave the fresh initialization. Returns whether it
    did (recorded in the new version's metrics)."""
    if init is None or not same_inputs:
        return False
    state, own = net_state(init), net.state_dict()
    if set(state) != set(own) or any(tuple(state[k].shape) != tuple(own[k].shape) for k in own):
        return False
    net.load_state_dict(state)
    return True


def net_state(art: Artifact) -> dict:
    """The ``net.`` tensors of a loaded version, as a state dict."""
    return {k[4:]: v for k, v in art.tensors.items() if k.startswith("net.")}
