"""Two-tower retrieval (Covington et al. 2016; Yi et al. 2019, "Sampling-bias-corrected neural modeling for
large corpus item recommendations").

The query tower maps what is known about a user at request time (profile, behaviour aggregates, learned
embeddings, the session embedding of recent items, optionally a user-id embedding) to a unit vector; the
candidate tower maps an item (profile, learned item vectors, an item-id embedding) to a unit vector. The score
is their cosine over a temperature. The towers are separate modules so item vectors are computed once,
materialized and indexed apart from the query side.

Training: in-batch sampled softmax. Every other positive of the batch is a negative, so popular items are
over-sampled as negatives; the logQ correction subtracts log(sampling probability) from each logit, which
removes that bias from the learned scores. Duplicate items in a batch are masked (an item is not its own
negative). Early stopping on Recall@20 of a validation period, over the full catalogue.

Inputs are frames of raw columns: tabular columns (numbers, categories) go through the same
``TabularPreprocessor`` as the encoders; list columns (embeddings) are stacked and standardized, a missing
vector (no snapshot yet) becoming the training mean.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from feast_autofeat.artifacts import Artifact
from feast_autofeat.errors import AutofeatError
from feast_autofeat.ids import id_array, pack_ids, positions, unpack_ids
from feast_autofeat.models.base import (
    EarlyStopping,
    NotFittedError,
    SchemaError,
    TabularPreprocessor,
    batches,
    load_model,
    net_state,
    save_model,
    seed_everything,
)
from feast_autofeat.models.interactions import Histories
from feast_autofeat.models.metrics import ndcg_at_k, recall_at_k

MAX_CATEGORIES = 256  # string item columns with more distinct values are not categories (ids, titles)
# the index stores the item's centred log popularity times this (and the request its weight divided by it): the
# same score, but a dimension on the scale of the vectors' own, so that IVF's k-means lists do not split on it
POPULARITY_SCALE = 0.1
# the item-item block's item rows have this mean norm (the query side carries the inverse): the same score, on a
# scale that leaves IVF's lists to the tower vectors
ITEM_ITEM_NORM = 0.5
# the weights (``<name>_weight``) chosen on validation after fitting, recorded in the version
STEERING = ("session", "category", "popularity", "cold_popularity", "item_item", "cold_item_item")


@dataclass(frozen=True)
class TwoTowerConfig:
    query_columns: tuple[str, ...] = ()  # tabular query features
    query_vectors: tuple[str, ...] = ()  # list-valued query features (learned embeddings)
    item_columns: tuple[str, ...] = ()
    item_vectors: tuple[str, ...] = ()
    history: str | None = None  # a list column of item ids pooled (mean of learned item embeddings) in the query
    recent: int = 10  # the newest ``recent`` history items pooled again, separately: the session's short-term intent
    # the query vector plus this times the mean candidate vector of the ``recent`` newest history items (then
    # renormalized): "more like what I just did"; chosen on validation after fitting (``choose_steering``)
    session_weight: float = 0.0
    # the least session_weight validation may choose: a product floor so that feedback visibly steers the next
    # recommendation even where offline recall alone would ignore the session (see the README's figures)
    min_session_weight: float = 0.5
    # the score plus this times the cosine between the item's categories and the recent items' mean categories
    # (categories: the item columns holding only 0/1, e.g. genres, and one-hot string columns of at most
    # MAX_CATEGORIES values, e.g. a category or brand): "more of this kind", so a few items of one category
    # raise its share of the next top-K even where the items' neighbours follow co-consumption rather than
    # kind. Served as extra index dimensions (search vectors: [query, weight x session categories] and
    # [candidate, unit item categories]); chosen on validation like session_weight, at least the floor
    category_weight: float = 0.0
    min_category_weight: float = 0.2
    # the score plus this times the item's log training popularity (add-one smoothed): the logQ correction
    # takes popularity out of the learned scores, which suits sampling but not every audience (new users follow
    # the crowd); validation chooses how much to add back (``temperature`` = all of it). Served as one more
    # index dimension: [.., popularity_weight] against [.., log popularity]
    popularity_weight: float = 0.0
    min_popularity_weight: float = 0.0
    # the popularity weight for a user the model has no user-id row for (held out of training, or arrived after
    # it): new users follow the crowd more than known ones do. Chosen on users held out of the tuning fit whose
    # first few positives are known (an inner protocol C cut, ``choose_cold_popularity``); None: the same as
    # popularity_weight
    cold_popularity_weight: float | None = None
    # the score plus this times an item-item score of the user's history: EASE (Steck 2019) fitted on the
    # training positives, B = sum over the newest ``item_item_recent`` history items of their rows, which a
    # linear item-item model gets right where users are sparse and the towers have little to learn from. Served
    # as more index dimensions: B factored to rank ``item_item_rank`` (exact when the covered items are fewer),
    # [.., weight x sum of the history's query factors] against [.., item factors]; covers the
    # ``item_item_max_items`` most popular training items (the rest score 0 on it), so a 1M catalogue costs rank
    # dimensions, not an items x items matrix. The L2 and the weight are chosen on validation
    # (``choose_item_item``; weight 0: off, no dimensions); False: never
    item_item: bool = True
    item_item_weight: float = 0.0
    item_item_l2: float = 0.0
    item_item_rank: int = 128
    item_item_max_items: int = 4096
    # the newest this many history items are summed (0: all): a sum over a long history anchors the ranking, so
    # a few fresh likes would barely move it (what feedback promises); sparse users hold fewer anyway
    item_item_recent: int = 10
    # the item-item weight for a user the model has no user-id row for (like cold_popularity_weight): a new user's
    # handful of items may call for more or less of it than a known user's history. Chosen on the inner protocol
    # C cut (``choose_cold_item_item``); None: the same as item_item_weight
    cold_item_item_weight: float | None = None
    user_ids: bool = True  # a user-id embedding in the query tower (row 0: unknown users)
    item_ids: bool = True
    dim: int = 64  # output vector size of both towers
    hidden: int = 256
    id_dim: int = 64
    dropout: float = 0.3
    id_dropout: float = 0.1  # share of training rows whose user id is hidden, so unknown users get a trained row
    # share of training rows whose item id is hidden (DropoutNet, Volkovs et al. 2017): the unknown-item row is
    # trained, and the candidate tower learns to place an item from its features (profile, text) alone. An item
    # without training positives (new in the catalogue) is then served with that row, not an untrained one of its
    # own. Training sets turn it on where the items have content to be placed by (``recommend.train``)
    item_id_dropout: float = 0.0
    temperature: float = 0.1
    logq: bool = True
    lr: float = 2e-3
    weight_decay: float = 0.01
    batch_size: int = 1024
    epochs: int = 60
    patience: int = 5
    seed: int = 0
    fill: dict = field(default_factory=dict)  # documented imputation of tabular columns (as in the encoders)
    # GAN augmentation (``recommend.augment``, applied by the training set, recorded here): synthetic rows per
    # training row of a user with at most ``augment_max_events`` rows; 0 = off
    gan_augment: int = 0
    augment_max_events: int = 20


class _Tower(nn.Module):
    def __init__(self, width: int, n_ids: int, cfg: TwoTowerConfig, use_ids: bool, n_history: int = 0):
        super().__init__()
        self.ids = nn.Embedding(n_ids + 1, cfg.id_dim) if use_ids else None
        if self.ids is not None:
            nn.init.normal_(self.ids.weight, std=0.1)
        # the bag of history items: mean of their embeddings (row 0 never used: unknown ids are dropped)
        self.history = nn.EmbeddingBag(n_history + 1, cfg.id_dim, mode="mean") if n_history else None
        if self.history is not None:
            nn.init.normal_(self.history.weight, std=0.1)
        # the newest few of them, pooled with embeddings of their own (what the user is into right now)
        self.recent = nn.EmbeddingBag(n_history + 1, cfg.id_dim, mode="mean") if n_history and cfg.recent else None
        if self.recent is not None:
            nn.init.normal_(self.recent.weight, std=0.1)
        in_dim = width + (cfg.id_dim if use_ids else 0) + (cfg.id_dim if n_history else 0) \
            + (cfg.id_dim if self.recent is not None else 0)
        if in_dim == 0:
            raise SchemaError("a tower needs at least one input: feature columns or ids.")
        self.mlp = nn.Sequential(nn.Linear(in_dim, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.hidden, cfg.dim))

    def forward(self, x: torch.Tensor, ids: torch.Tensor, bags: tuple | None = None,
                recent: tuple | None = None) -> torch.Tensor:
        parts = [x] if x.shape[1] else []
        if self.ids is not None:
            parts.append(self.ids(ids))
        if self.history is not None:
            parts.append(self.history(*bags))
        if self.recent is not None:
            parts.append(self.recent(*recent))
        return F.normalize(self.mlp(torch.cat(parts, dim=1)), dim=1)


class _Net(nn.Module):
    def __init__(self, q_width: int, c_width: int, n_users: int, n_items: int, cfg: TwoTowerConfig):
        super().__init__()
        self.query = _Tower(q_width, n_users, cfg, cfg.user_ids, n_items if cfg.history else 0)
        self.candidate = _Tower(c_width, n_items, cfg, cfg.item_ids)


@dataclass
class _Inputs:
    """Raw frame -> dense float32 matrix: tabular columns preprocessed, vector columns standardized."""

    columns: tuple[str, ...]
    vectors: tuple[str, ...]
    fill: dict
    pre_: TabularPreprocessor | None = None
    widths_: list[int] = field(default_factory=list)
    mean_: np.ndarray | None = None
    std_: np.ndarray | None = None

    def fit(self, df: pd.DataFrame) -> _Inputs:
        if self.columns:
            self.pre_ = TabularPreprocessor(fill=dict(self.fill)).fit(df[list(self.columns)])
        raw = self._stack(df, fitting=True)
        ok = ~np.isnan(raw).any(axis=1) if raw.shape[1] else np.ones(len(raw), bool)
        self.mean_ = raw[ok].mean(axis=0) if ok.any() else np.zeros(raw.shape[1], np.float32)
        self.std_ = raw[ok].std(axis=0) + 1e-6 if ok.any() else np.ones(raw.shape[1], np.float32)
        return self

    def _stack(self, df: pd.DataFrame, fitting: bool = False) -> np.ndarray:
        blocks = []
        for j, col in enumerate(self.vectors):
            if col not in df:
                if fitting:
                    raise SchemaError(f"missing vector column {col!r}; the model reads {list(self.vectors)}.")
                values = np.full(len(df), None, dtype=object)  # no vector at all: the training mean
            else:
                values = df[col].to_numpy()
            present = ~pd.isna(values)
            width = len(values[present][0]) if present.any() else (self.widths_[j] if not fitting else 0)
            if fitting:
                self.widths_.append(width)
            elif width != self.widths_[j]:
                raise SchemaError(f"vector column {col!r} has {width} values per row; the model was trained "
                                  f"on {self.widths_[j]}.")
            block = np.full((len(df), self.widths_[j]), np.nan, np.float32)
            if present.any():
                block[present] = np.stack(values[present]).astype(np.float32)
            blocks.append(block)
        return np.concatenate(blocks, axis=1) if blocks else np.zeros((len(df), 0), np.float32)

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        raw = self._stack(df)
        if np.isinf(raw).any():
            raise SchemaError(f"infinite values in vector columns {list(self.vectors)}.")
        vec = np.nan_to_num((raw - self.mean_) / self.std_, nan=0.0)  # missing vector -> the training mean
        if self.pre_ is not None:
            # online reads of one row arrive as Python objects (None for missing): numbers again, or an error
            loose = [c for c in self.pre_.numeric_ if c in df and df[c].dtype == object]
            try:
                df = df.assign(**{c: pd.to_numeric(df[c]) for c in loose}) if loose else df
            except (ValueError, TypeError) as exc:
                raise SchemaError(f"non-numeric values in numeric feature column(s) {loose}: {exc}") from None
        tab = self.pre_.transform(df) if self.pre_ is not None else np.zeros((len(df), 0), np.float32)
        return np.concatenate([tab, vec], axis=1).astype(np.float32)

    def transform_records(self, records: Sequence[Mapping]) -> np.ndarray:
        """Rows as {column: value} -> n x width, equal to ``transform`` of those rows (the serving path)."""
        n = len(records)
        blocks = []
        for j, col in enumerate(self.vectors):
            block = np.full((n, self.widths_[j]), np.nan, np.float32)
            for i, r in enumerate(records):
                v = r.get(col)
                if v is None:
                    continue
                v = np.asarray(v, np.float32)
                if v.shape != (self.widths_[j],):
                    raise SchemaError(f"vector column {col!r} has {v.size} values; the model was trained on "
                                      f"{self.widths_[j]}.")
                block[i] = v
            blocks.append(block)
        raw = np.concatenate(blocks, axis=1) if blocks else np.zeros((n, 0), np.float32)
        if np.isinf(raw).any():
            raise SchemaError(f"infinite values in vector columns {list(self.vectors)}.")
        vec = np.nan_to_num((raw - self.mean_) / self.std_, nan=0.0)
        tab = self.pre_.transform_records(records) if self.pre_ is not None else np.zeros((n, 0), np.float32)
        return np.concatenate([tab, vec], axis=1).astype(np.float32)

    @property
    def width(self) -> int:
        return (self.pre_.width if self.pre_ is not None else 0) + int(sum(self.widths_))

    def state(self) -> dict:
        return {"preprocessor": self.pre_.state() if self.pre_ is not None else None, "widths": self.widths_}

    def tensors(self, prefix: str) -> dict:
        return {f"{prefix}.mean": torch.from_numpy(np.asarray(self.mean_, np.float32)),
                f"{prefix}.std": torch.from_numpy(np.asarray(self.std_, np.float32))}

    @classmethod
    def restore(cls, columns, vectors, fill, state: dict, tensors: dict, prefix: str) -> _Inputs:
        out = cls(tuple(columns), tuple(vectors), dict(fill))
        if state["preprocessor"] is not None:
            out.pre_ = TabularPreprocessor.from_state(state["preprocessor"])
        out.widths_ = list(state["widths"])
        out.mean_, out.std_ = tensors[f"{prefix}.mean"].numpy(), tensors[f"{prefix}.std"].numpy()
        return out


@dataclass
class _Bags:
    """Item-id lists as CSR (item positions + 1; unknown ids dropped), sliced per batch for ``EmbeddingBag``."""

    indptr: np.ndarray
    values: np.ndarray

    def take(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        from feast_autofeat.models.interactions import _ranges

        starts, lens = self.indptr[rows], np.diff(self.indptr)[rows]
        offsets = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
        return torch.from_numpy(self.values[_ranges(starts, lens)]), torch.from_numpy(offsets)

    def head(self, n: int) -> _Bags:
        """The first ``n`` items of each bag (the newest, as history lists are newest first)."""
        from feast_autofeat.models.interactions import _ranges

        lens = np.minimum(np.diff(self.indptr), n)
        return _Bags(np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
                     self.values[_ranges(self.indptr[:-1], lens)])


def _restrict(h: Histories, local: np.ndarray, n: int) -> Histories:
    """``h`` over the items with ``local`` >= 0, renumbered to those places (``n`` of them)."""
    users = np.repeat(np.arange(h.n_users), h.lengths)
    cols = local[h.indices]
    return Histories.from_pairs(users[cols >= 0], cols[cols >= 0], h.n_users, n)


def item_categories(items: pd.DataFrame, columns) -> torch.Tensor:
    """The items' categories as a 0/1 matrix in catalogue order: item columns holding only 0 and 1 (multi-hot
    such as genres) and one-hot string columns of at most ``MAX_CATEGORIES`` distinct values; none (0 columns)
    when that gives fewer than two."""
    blocks = []
    for c in columns:
        if c not in items:
            continue
        col = items[c]
        if pd.api.types.is_bool_dtype(col) or (pd.api.types.is_numeric_dtype(col) and col.notna().all()
                                               and col.isin((0, 1)).all()):
            blocks.append(col.to_numpy(np.uint8)[:, None])
        elif not pd.api.types.is_numeric_dtype(col) and col.nunique() <= MAX_CATEGORIES:
            values = col.astype("string")
            blocks.append(np.stack([(values == v).fillna(False).to_numpy(np.uint8) for v in sorted(values.dropna()
                                                                                               .unique())], 1))
    values = np.concatenate(blocks, 1) if blocks else np.zeros((len(items), 0), np.uint8)
    return torch.from_numpy(np.ascontiguousarray(values if values.shape[1] >= 2 else values[:, :0]))


class TwoTower:
    """``TwoTower(config).fit(train, items, valid=...)``; ``query_vectors(frame)``, ``item_vectors()``.

    ``train``: one row per positive (user, item, time) with ``user_id``, ``item_id`` and the query columns as
    of that time. ``items``: the catalogue, one row per ``item_id`` with the item columns. ``valid``:
    (query frame with one row per validation user, their target items as ``Histories`` over the catalogue's
    positions, their history to exclude).
    """

    name = "two_tower"

    def __init__(self, config: TwoTowerConfig | None = None, **overrides):
        self.config = TwoTowerConfig(**{**asdict(config or TwoTowerConfig()), **overrides})
        self.net_: _Net | None = None
        self.metrics_: dict = {}

    # ---- vocabularies
    def item_rows(self, item_ids) -> np.ndarray:
        """Rows of the item-id embedding: 1.. for catalogue items, 0 for items the model never saw."""
        return positions(self.item_ids_, np.atleast_1d(np.asarray(item_ids))) + 1

    def item_positions(self, item_ids) -> np.ndarray:
        """Catalogue positions of item ids; unknown ids are an error naming them."""
        ids = np.asarray(item_ids)
        pos = positions(self.item_ids_, ids)
        bad = pos < 0
        if bad.any():
            raise SchemaError(f"item ids {ids[bad][:5].tolist()} are not in the model's catalogue of "
                              f"{len(self.item_ids_)} items.")
        return pos

    def user_positions(self, user_ids) -> np.ndarray:
        """Rows of the user-id embedding (when it has one): 1.. for users seen in training, 0 for anyone else."""
        return positions(self.user_ids_, np.atleast_1d(np.asarray(user_ids))) + 1

    def bags(self, frame: pd.DataFrame) -> _Bags | None:
        """The ``history`` column as bags of catalogue positions (+1); ids the catalogue lacks are ignored."""
        col = self.config.history
        if not col:
            return None
        if col not in frame:
            raise SchemaError(f"missing column {col!r} (item ids the user interacted with, most recent first).")
        return self._bags_of(frame[col].to_numpy())

    def _bags_of(self, lists) -> _Bags:
        """Item-id lists (None or NaN: empty) as bags of catalogue positions (+1), unknown ids dropped."""
        lists = [() if v is None or (isinstance(v, float) and np.isnan(v)) else v for v in lists]
        lens = np.fromiter(map(len, lists), np.int64, len(lists))
        flat = np.array([i for v in lists for i in v])
        pos = positions(self.item_ids_, flat) if len(flat) else np.zeros(0, np.int64)
        known = pos >= 0
        keep_lens = np.bincount(np.repeat(np.arange(len(lists)), lens)[known], minlength=len(lists))
        return _Bags(np.concatenate([[0], np.cumsum(keep_lens)]).astype(np.int64), (pos[known] + 1).astype(np.int64))

    def _recent(self, bags: _Bags | None) -> _Bags | None:
        return bags.head(self.config.recent) if bags is not None and self.config.recent else None

    @staticmethod
    def _take(bags: tuple, rows: np.ndarray) -> tuple:
        return tuple(b.take(rows) if b is not None else None for b in bags)

    # ---- training
    def fit(self, train: pd.DataFrame, items: pd.DataFrame,
            valid: tuple[pd.DataFrame, Histories, Histories] | None = None, progress: bool = False) -> TwoTower:
        cfg = self.config
        gen = seed_everything(cfg.seed)
        t0 = time.perf_counter()
        if train.empty:
            raise SchemaError("no training rows.")
        items = items.sort_values("item_id", ignore_index=True)
        if items.item_id.duplicated().any():
            raise SchemaError("the item catalogue lists an item_id twice.")
        self.item_ids_ = id_array(items.item_id.to_numpy(), what="item_id")
        # the users it is trained on, also without an id embedding: who counts as new (cold_popularity_weight)
        self.user_ids_ = np.unique(id_array(train.user_id.to_numpy(), what="user_id"))
        self.query_in_ = _Inputs(cfg.query_columns, cfg.query_vectors, cfg.fill).fit(train)
        self.item_in_ = _Inputs(cfg.item_columns, cfg.item_vectors, cfg.fill).fit(items)
        self.item_x_ = torch.from_numpy(self.item_in_.transform(items))
        self.item_cats_, self._units_ = item_categories(items, cfg.item_columns), None
        self.item_item_q_ = self.item_item_c_ = None  # the item-item term: ``fit_item_item``
        xq = torch.from_numpy(self.query_in_.transform(train))
        uid = torch.from_numpy(self.user_positions(train.user_id))
        ipos = torch.from_numpy(self.item_positions(train.item_id))
        bags = self.bags(train)
        recent = self._recent(bags)
        counts = np.bincount(ipos.numpy(), minlength=len(self.item_ids_)).astype(np.int64)
        self.item_counts_ = torch.from_numpy(counts)
        freq = counts / len(ipos)
        log_q = torch.from_numpy(np.log(np.maximum(freq, 1e-12)).astype(np.float32))
        net = _Net(xq.shape[1], self.item_x_.shape[1], len(self.user_ids_), len(self.item_ids_), cfg)
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        stopper = EarlyStopping(patience=cfg.patience, mode="max")
        item_rows = torch.arange(len(self.item_ids_)) + 1
        bar = tqdm(range(cfg.epochs), desc="two-tower", disable=not progress, leave=False)
        for epoch in bar:
            net.train()
            total = 0.0
            for idx in batches(len(ipos), cfg.batch_size, gen):
                if len(idx) < 2:
                    continue
                users = uid[idx]
                if cfg.user_ids and cfg.id_dropout > 0:
                    users = users * (torch.rand(len(idx), generator=gen) >= cfg.id_dropout)
                it = ipos[idx]
                q = net.query(xq[idx], users, *self._take((bags, recent), idx.numpy()))
                rows = item_rows[it]
                if cfg.item_ids and cfg.item_id_dropout > 0:
                    rows = rows * (torch.rand(len(idx), generator=gen) >= cfg.item_id_dropout)
                c = net.candidate(self.item_x_[it], rows)
                logits = q @ c.T / cfg.temperature
                if cfg.logq:
                    logits = logits - log_q[it][None, :]
                dup = it[None, :] == it[:, None]
                dup.fill_diagonal_(False)
                loss = F.cross_entropy(logits.masked_fill(dup, float("-inf")), torch.arange(len(idx)))
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            self.net_, self._steer_ = net.eval(), None
            if valid is not None:
                score = self._recall20(valid)
                bar.set_postfix(loss=f"{total / len(ipos):.3f}", recall20=f"{score:.4f}")
                if stopper.step(score, epoch, net):
                    break
        if valid is not None:
            stopper.restore_best(net)
        self.net_ = net.eval()
        self._steer_ = None
        self.metrics_ = {"train_seconds": time.perf_counter() - t0, "epochs": epoch + 1,
                         "best_epoch": stopper.best_epoch + 1 if valid is not None else epoch + 1,
                         "valid_recall@20": stopper.best_value if valid is not None else None,
                         "train_rows": len(ipos), "users": len(self.user_ids_), "items": len(self.item_ids_)}
        return self

    # ---- inference
    def _net(self) -> _Net:
        if self.net_ is None:
            raise NotFittedError("TwoTower is not fitted; call fit() or TwoTower.load().")
        return self.net_

    @torch.no_grad()
    def query_vectors(self, frame: pd.DataFrame) -> np.ndarray:
        """Unit query vectors of each row (``user_id`` plus the query columns); unknown users use row 0."""
        users = frame["user_id"].to_numpy() if "user_id" in frame else None
        return self._queries(self.query_in_.transform(frame), users, self.bags(frame))[0].numpy()

    def _queries(self, x: np.ndarray, user_ids, bags: _Bags | None) -> tuple[torch.Tensor, _Bags | None]:
        """(unit query vectors, the recent bags) of rows given as the transformed query columns, their user ids
        (None: all unknown) and their history bags: the one computation behind the frame and record paths."""
        net = self._net()
        n = len(x)
        users = torch.from_numpy(self.user_positions(user_ids) if user_ids is not None else np.zeros(n, np.int64))
        recent = self._recent(bags)
        q = net.query(torch.from_numpy(x), users, *self._take((bags, recent), np.arange(n)))
        steer = self._steer()
        if steer is not None and recent is not None:
            values, offsets = recent.take(np.arange(n))
            q = F.normalize(q + F.embedding_bag(values, steer, offsets, mode="mean"), dim=1)
        return q, recent

    def _steer(self) -> torch.Tensor | None:
        """Row 0: zeros (unknown items), row i: ``session_weight`` times the i-th candidate vector (cached per
        weight; the model is frozen); None when the weight is 0."""
        w = self.config.session_weight
        if not w:
            return None
        cached = getattr(self, "_steer_", None)
        if cached is None or cached[0] != w:
            vecs = torch.from_numpy(self.item_vectors())
            self._steer_ = (w, torch.cat([torch.zeros(1, vecs.shape[1]), w * vecs]))
        return self._steer_[1]

    # ---- category term: search vectors with two extra blocks
    def _category_units(self) -> torch.Tensor | None:
        """Row 0: zeros, row i: the i-th item's categories weighted by their inverse catalogue frequency (a
        rare category says more about an item than a common one), as a unit vector; None when the term is off."""
        if not self.config.category_weight or not self.item_cats_.shape[1]:
            return None
        if getattr(self, "_units_", None) is None:  # once per model (it is frozen), not per request
            cats = self.item_cats_.float()
            idf = torch.log(len(cats) / cats.sum(0).clamp(min=1))
            self._units_ = torch.cat([torch.zeros(1, cats.shape[1]), F.normalize(cats * idf, dim=1)])
        return self._units_

    def _session_categories(self, units: torch.Tensor, recent: tuple) -> torch.Tensor:
        values, offsets = recent
        return F.normalize(F.embedding_bag(values, units, offsets, mode="mean"), dim=1)

    # ---- item-item term: one more block of the search vectors
    def fit_item_item(self, train: Histories, l2: float) -> TwoTower:
        """Fit the item-item term on ``train`` (users x this catalogue's positions): EASE with ``l2`` over the
        ``item_item_max_items`` most frequent items, factored to ``item_item_rank`` (exact below it). Sets
        ``item_item_l2``; the weight stays as configured (``choose_item_item`` picks both)."""
        from feast_autofeat.models.ease import EASE

        cfg = self.config
        if train.n_items != len(self.item_ids_):
            raise SchemaError(f"item-item histories cover {train.n_items} items; the catalogue has "
                              f"{len(self.item_ids_)}.")
        covered, local = self._item_item_cover(train)
        b = torch.from_numpy(EASE(l2).fit(_restrict(train, local, len(covered))).B_).double()
        if len(covered) <= cfg.item_item_rank:  # exact: the history's rows of B against the unit items
            q, c = b, torch.eye(len(covered), dtype=torch.float64)
        else:
            if len(covered) <= 2048:
                u, sv, v = torch.linalg.svd(b, full_matrices=False)
                v = v.T
            else:
                u, sv, v = torch.svd_lowrank(b, q=cfg.item_item_rank + 16, niter=6)
            root = sv[:cfg.item_item_rank].sqrt()
            q, c = u[:, :cfg.item_item_rank] * root, v[:, :cfg.item_item_rank] * root
        norms = c.norm(dim=1)
        scale = ITEM_ITEM_NORM / float(norms[norms > 0].mean()) if bool((norms > 0).any()) else 1.0
        rows = torch.from_numpy(covered + 1)
        self.item_item_q_ = torch.zeros(len(self.item_ids_) + 1, q.shape[1])
        self.item_item_c_ = torch.zeros(len(self.item_ids_) + 1, q.shape[1])
        self.item_item_q_[rows] = (q / scale).float()
        self.item_item_c_[rows] = (c * scale).float()
        self.config = replace(cfg, item_item_l2=float(l2))
        self.metrics_["item_item_items"] = int(len(covered))
        return self

    def _item_item_cover(self, train: Histories) -> tuple[np.ndarray, np.ndarray]:
        """(catalogue positions the term covers: the ``item_item_max_items`` most frequent in ``train``, each
        position's place among them or -1)."""
        counts = train.item_counts()
        covered = np.flatnonzero(counts > 0)
        if len(covered) > self.config.item_item_max_items:
            covered = np.sort(np.argsort(-counts, kind="stable")[:self.config.item_item_max_items])
        local = np.full(len(self.item_ids_), -1, np.int64)
        local[covered] = np.arange(len(covered))
        return covered, local

    def choose_item_item(self, train: Histories, valid: tuple, l2_grid=(10.0, 30.0, 100.0, 300.0, 1000.0),
                         grid=(0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)) -> dict:
        """Set ``item_item_l2`` to the L2 whose EASE alone (the validation users' known items' rows of B) has the
        best validation Recall@20 (ties: the larger), fit the term with it on ``train``, then set
        ``item_item_weight`` (``grid`` in units of the temperature: 1 adds the EASE score itself to the logits) to
        the best NDCG@100 of the whole model (ties: the smaller; 0: off): a metric of the whole top of the ranking,
        where Recall@20 of one or two targets per user flips with a few users. Returns {"l2": {l2: recall@20},
        "weight": {weight: ndcg@100}}."""
        from feast_autofeat.models.ease import EASE

        if not self.config.item_item or not self.config.history:
            return {}
        _, targets, known = valid
        with_targets = targets.lengths > 0
        covered, local = self._item_item_cover(train)
        h, k = _restrict(train, local, len(covered)), _restrict(known, local, len(covered))
        l2s = {}
        for l2 in l2_grid:
            scores = np.zeros((known.n_users, len(self.item_ids_)), np.float32)
            scores[:, covered] = EASE(l2).fit(h).score(k)
            l2s[float(l2)] = float(np.mean(recall_at_k(scores, targets, 20, exclude=known)[with_targets]))
        self.fit_item_item(train, max(l2s, key=lambda v: (l2s[v], v)))
        weights = {}
        vq = valid[0]
        for f in grid:  # NDCG@100: with a handful of targets per user, Recall@20 is too coarse to place a weight
            self.config = replace(self.config, item_item_weight=round(self.config.temperature * f, 6))
            ndcg = ndcg_at_k(self.score(vq), targets, 100, exclude=known)[with_targets]
            weights[self.config.item_item_weight] = float(np.mean(ndcg))
        self.config = replace(self.config, item_item_weight=max(weights, key=lambda w: (weights[w], -w)))
        return {"l2": l2s, "weight": weights}

    def choose_cold_item_item(self, cold_valid: tuple, grid=(0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)) -> dict:
        """Set ``cold_item_item_weight`` (``grid`` in units of the temperature) to the best NDCG@100 (ties: the
        smaller) on ``cold_valid``: (query frame, targets, known items) of users the model has no row for, with the
        term fitted (``choose_item_item``). Returns {weight: ndcg@100}; {} where the term has no fit."""
        if not self.config.item_item or not self.config.history or getattr(self, "item_item_q_", None) is None:
            return {}
        vq, targets, known = cold_valid
        if (self.user_positions(vq["user_id"]) > 0).any():
            raise AutofeatError("the cold-user validation set holds users the model was trained on.")
        with_targets = targets.lengths > 0
        scores = {}
        for w in sorted({round(self.config.temperature * f, 6) for f in grid}):
            self.config = replace(self.config, cold_item_item_weight=float(w))
            scores[float(w)] = float(np.mean(ndcg_at_k(self.score(vq), targets, 100, exclude=known)[with_targets]))
        self.config = replace(self.config, cold_item_item_weight=max(scores, key=lambda w: (scores[w], -w)))
        return scores

    def item_item_weights(self, user_ids) -> np.ndarray:
        """Each query's item-item weight: ``cold_item_item_weight`` (when set) for users without a user-id row,
        ``item_item_weight`` for the rest."""
        cfg = self.config
        users = np.atleast_1d(np.asarray(user_ids))
        if cfg.cold_item_item_weight is None or cfg.cold_item_item_weight == cfg.item_item_weight:
            return np.full(len(users), cfg.item_item_weight, np.float32)
        return np.where(self.user_positions(users) == 0, cfg.cold_item_item_weight,
                        cfg.item_item_weight).astype(np.float32)

    def item_item_dims(self) -> int:
        """How many of the search vectors' last dimensions are the item-item block (0: the term is off); only the
        covered items have it (``build_index``'s ``tail``)."""
        return int(self.item_item_q_.shape[1]) if self._item_item_on() else 0

    def _item_item_on(self) -> bool:
        cfg = self.config
        return bool(cfg.item_item and (cfg.item_item_weight or cfg.cold_item_item_weight) and cfg.history
                    and getattr(self, "item_item_q_", None) is not None)

    def log_popularity(self) -> np.ndarray:
        """Row 0: items the model does not know, row i: the i-th item; log of its add-one smoothed share of the
        training rows, centred on the catalogue's mean (a constant per request: the ranking is the same)."""
        counts = np.concatenate([[0], self.item_counts_.numpy()]).astype(np.float64)
        logs = np.log((counts + 1) / (counts.sum() + len(counts)))
        return (logs - logs[1:].mean()).astype(np.float32)

    def _popularity_on(self) -> bool:
        return bool(self.config.popularity_weight or self.config.cold_popularity_weight)

    def popularity_weights(self, user_ids) -> np.ndarray:
        """Each query's popularity weight: ``cold_popularity_weight`` (when set) for users without a user-id
        row, ``popularity_weight`` for the rest."""
        cfg = self.config
        users = np.atleast_1d(np.asarray(user_ids))
        if cfg.cold_popularity_weight is None or cfg.cold_popularity_weight == cfg.popularity_weight:
            return np.full(len(users), cfg.popularity_weight, np.float32)
        return np.where(self.user_positions(users) == 0, cfg.cold_popularity_weight,
                        cfg.popularity_weight).astype(np.float32)

    def search_item_vectors(self, vectors: np.ndarray, item_ids) -> np.ndarray:
        """What the item index holds for candidate ``vectors`` of ``item_ids``: the vectors, then (category term
        on) the items' unit categories, then (popularity term on) their log popularity; items the model does not
        know get zero categories and the popularity of an item never seen."""
        rows = self.item_rows(item_ids)
        blocks = [np.asarray(vectors, np.float32)]
        units = self._category_units()
        if units is not None:
            blocks.append(units[torch.from_numpy(rows)].numpy())
        if self._popularity_on():
            blocks.append(POPULARITY_SCALE * self.log_popularity()[rows][:, None])
        if self._item_item_on():
            blocks.append(self.item_item_c_[torch.from_numpy(rows)].numpy())
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def search_query_vectors(self, frame: pd.DataFrame) -> np.ndarray:
        """``query_vectors``, then (category term on) ``category_weight`` x the recent items' unit categories
        (zeros without history), then (popularity term on) ``popularity_weight``: its dot product with
        ``search_item_vectors`` is the model's score (times the temperature)."""
        users = frame["user_id"].to_numpy() if "user_id" in frame else None
        return self._search_vectors(self.query_in_.transform(frame), users, self.bags(frame))

    def search_query_vectors_of(self, records: Sequence[Mapping]) -> np.ndarray:
        """``search_query_vectors`` of requests given as {column: value} (``user_id``, the query columns, the
        history list), without pandas: serving's path, for one request or a batch of concurrent ones. Row i
        equals ``search_query_vectors`` of a frame holding the same rows."""
        if not records:
            raise SchemaError("no requests to encode.")
        x = self.query_in_.transform_records(records)
        users = [r.get("user_id", -1) for r in records] if any("user_id" in r for r in records) else None
        col = self.config.history
        bags = self._bags_of([r.get(col) for r in records]) if col else None
        return self._search_vectors(x, users, bags)

    @torch.inference_mode()
    def _search_vectors(self, x: np.ndarray, user_ids, bags: _Bags | None) -> np.ndarray:
        q, recent = self._queries(x, user_ids, bags)
        n = len(x)
        blocks = [q.numpy()]
        units = self._category_units()
        if units is not None:
            cats = (self._session_categories(units, recent.take(np.arange(n))).numpy() if recent is not None
                    else np.zeros((n, units.shape[1]), np.float32))
            blocks.append(self.config.category_weight * cats)
        if self._popularity_on():
            users = user_ids if user_ids is not None else np.full(n, -1)
            blocks.append(self.popularity_weights(users)[:, None] / POPULARITY_SCALE)
        if self._item_item_on():
            if bags is None:
                blocks.append(np.zeros((n, self.item_item_q_.shape[1]), np.float32))
            else:
                recent_n = self.config.item_item_recent
                values, offsets = (bags.head(recent_n) if recent_n > 0 else bags).take(np.arange(n))
                weights = self.item_item_weights(user_ids if user_ids is not None else np.full(n, -1))
                blocks.append(weights[:, None]
                              * F.embedding_bag(values, self.item_item_q_, offsets, mode="sum").numpy())
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def search_query_vector(self, record: Mapping) -> np.ndarray:
        """``search_query_vectors_of`` one request."""
        return self.search_query_vectors_of([record])[0]

    def choose_steering(self, valid: tuple, grid=(0.0, 0.25, 0.5, 1.0, 2.0),
                              category_grid=(0.0, 0.05, 0.1, 0.2, 0.4),
                              popularity_grid=(0.0, 0.25, 0.5, 1.0, 1.5)) -> dict:
        """Set ``session_weight``, then ``category_weight`` (where the items have categories), then
        ``popularity_weight`` (``popularity_grid`` in units of the temperature: 1 adds back what the logQ
        correction took out), each to the weight of at least its floor (``min_*``) with the best validation
        Recall@20 (ties: the smaller); returns {"session": {weight: recall}, "category": .., "popularity": ..}
        over the whole grids (so what a floor costs offline shows)."""
        grids = {}
        t = self.config.temperature
        for name, values in (("session", grid), ("category", category_grid if self.item_cats_.shape[1] else ()),
                             ("popularity", tuple(round(t * f, 6) for f in popularity_grid))):
            if not values:
                continue
            floor = getattr(self.config, f"min_{name}_weight")
            scores = {}
            for w in sorted({floor, *values}):
                self.config = replace(self.config, **{f"{name}_weight": float(w)})
                scores[float(w)] = self._recall20(valid)
            best = max((w for w in scores if w >= floor), key=lambda w: (scores[w], -w)) if scores else 0.0
            self.config = replace(self.config, **{f"{name}_weight": best})
            grids[name] = scores
        return grids

    def choose_cold_popularity(self, cold_valid: tuple, grid=(0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)) -> dict:
        """Set ``cold_popularity_weight`` (``grid`` in units of the temperature) to the best Recall@20 (ties: the
        smaller) on ``cold_valid``: (query frame, targets, known items) of users the model has no row for.
        Returns {weight: recall}."""
        if (self.user_positions(cold_valid[0]["user_id"]) > 0).any():
            raise AutofeatError("the cold-user validation set holds users the model was trained on.")
        scores = {}
        for w in sorted({round(self.config.temperature * f, 6) for f in grid}):
            self.config = replace(self.config, cold_popularity_weight=float(w))
            scores[float(w)] = self._recall20(cold_valid)
        best = max(scores, key=lambda w: (scores[w], -w))
        self.config = replace(self.config, cold_popularity_weight=best)
        return scores

    def _recall20(self, valid: tuple) -> float:
        """Mean Recall@20 on (query frame, targets, known items) over the users with targets."""
        vq, targets, exclude = valid
        return float(np.mean(recall_at_k(self.score(vq), targets, 20, exclude=exclude)[targets.lengths > 0]))

    def id_rows(self, rows: np.ndarray) -> np.ndarray:
        """Item-id embedding rows to serve ``item_rows``: a catalogue item without training positives has no
        trained row of its own, so it gets the unknown-item row 0 (trained by ``item_id_dropout``; versions
        trained without it keep their own rows)."""
        if not self.config.item_id_dropout:
            return rows
        seen = np.concatenate([[False], self.item_counts_.numpy() > 0])
        return np.where(seen[rows], rows, 0)

    def cold_items(self) -> np.ndarray:
        """Catalogue positions of the items without training positives (placed by their features alone)."""
        return np.flatnonzero(self.item_counts_.numpy() == 0)

    @torch.no_grad()
    def item_vectors(self, items: pd.DataFrame | None = None) -> np.ndarray:
        """Unit candidate vectors of the catalogue (default, in ``item_ids_`` order) or of item rows
        (``item_id`` plus item columns): catalogue items keep the features they were trained with; items the
        model never saw are encoded from their columns (a missing learned vector counts as the mean); both,
        without training positives, with the unknown-item id row (``id_rows``)."""
        net = self._net()
        if items is None:
            rows = np.arange(len(self.item_ids_)) + 1
            return net.candidate(self.item_x_, torch.from_numpy(self.id_rows(rows))).numpy()
        rows = self.item_rows(items["item_id"])
        x = torch.zeros((len(items), self.item_x_.shape[1]))
        known = rows > 0
        x[torch.from_numpy(known)] = self.item_x_[torch.from_numpy(rows[known] - 1)]
        if (~known).any():
            x[torch.from_numpy(~known)] = torch.from_numpy(self.item_in_.transform(items[~known]))
        return net.candidate(x, torch.from_numpy(self.id_rows(rows))).numpy()

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        """Scores over the whole catalogue (columns in ``item_ids_`` order) for each query row."""
        items = self.search_item_vectors(self.item_vectors(), self.item_ids_)
        return self.search_query_vectors(frame) @ items.T / self.config.temperature

    # ---- persistence
    def save(self, root, extra: dict | None = None) -> Artifact:
        cfg = asdict(self.config)
        config = {"architecture": cfg, "query_inputs": self.query_in_.state(), "item_inputs": self.item_in_.state(),
                  "n_users": len(self.user_ids_), "n_items": len(self.item_ids_),
                  "input_schema": {"query": list(self.config.query_columns) + list(self.config.query_vectors),
                                   "item": list(self.config.item_columns) + list(self.config.item_vectors)},
                  "metrics": self.metrics_, **(extra or {})}
        tensors = {**pack_ids("user_ids", self.user_ids_), **pack_ids("item_ids", self.item_ids_),
                   "item_x": self.item_x_, "item_categories": self.item_cats_, "item_counts": self.item_counts_,
                   **({"item_item_query": self.item_item_q_, "item_item_items": self.item_item_c_}
                      if self._item_item_on() else {}),
                   **self.query_in_.tensors("query"),
                   **self.item_in_.tensors("item")}
        return save_model(root, self.name, self._net(), config, tensors)

    @classmethod
    def load(cls, root, version: str | None = None) -> TwoTower:
        art = load_model(root, cls.name, version)
        arch = {"recent": 0, **art.config["architecture"]}  # versions saved before ``recent`` existed: none
        for key in ("query_columns", "query_vectors", "item_columns", "item_vectors"):
            arch[key] = tuple(arch[key])
        model = cls(TwoTowerConfig(**arch))
        cfg = model.config
        model.user_ids_, model.item_ids_ = unpack_ids(art.tensors, "user_ids"), unpack_ids(art.tensors, "item_ids")
        model.item_x_ = art.tensors["item_x"]
        none = torch.zeros((len(model.item_ids_), 0), dtype=torch.uint8)  # versions saved before categories
        model.item_cats_ = art.tensors.get("item_categories", none)
        model.item_counts_ = art.tensors.get("item_counts", torch.zeros(len(model.item_ids_), dtype=torch.int64))
        model.item_item_q_ = art.tensors.get("item_item_query")  # versions saved before the term, or with it off
        model.item_item_c_ = art.tensors.get("item_item_items")
        if cfg.item_item and (cfg.item_item_weight or cfg.cold_item_item_weight) and cfg.history \
                and model.item_item_q_ is None:
            raise SchemaError(f"two-tower version {art.version} sets an item-item weight but holds no item-item "
                              "factors; retrain it.")
        model.query_in_ = _Inputs.restore(cfg.query_columns, cfg.query_vectors, cfg.fill,
                                          art.config["query_inputs"], art.tensors, "query")
        model.item_in_ = _Inputs.restore(cfg.item_columns, cfg.item_vectors, cfg.fill,
                                         art.config["item_inputs"], art.tensors, "item")
        net = _Net(model.query_in_.width, model.item_x_.shape[1], art.config["n_users"], art.config["n_items"], cfg)
        net.load_state_dict(net_state(art))
        model.net_ = net.eval()
        model.metrics_, model.version_ = art.config.get("metrics", {}), art.version
        model.saved_config_ = art.config  # what training recorded beside the weights (e.g. its encoder versions)
        return model
