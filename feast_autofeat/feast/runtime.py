"""What runs inside Feast: encoders loaded once per process, and Arrow-batch-in / vectors-out transforms.

The batch engine, a distributed engine's workers and on-demand views' UDFs all call these functions with a
literal (model root, model, version); the model is loaded, hash-verified and cached on first use in each
process, never per call or batch, and never stored in Feast's registry.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from feast_autofeat.errors import AutofeatError
from feast_autofeat.feast.embeddings import model_dim
from feast_autofeat.models.base import SchemaError

FEATURE_MODELS = ("dae", "gan", "two_tower", "text")  # models whose inputs are feature rows (two_tower: item
# rows; text: text columns)
SESSION_MODELS = ("multvae",)  # models whose inputs are item-id histories

_lock = threading.Lock()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise AutofeatError("device 'cuda' requested but torch sees no CUDA device; use device: cpu or auto.")
    return torch.device(device)


@dataclass
class FeatureEncoder:
    """A DAE (bottleneck) or GAN (critic features + score) over the feature rows it was trained on."""

    model: str
    version: str
    dim: int
    feature_refs: list[str]  # "view:feature" as at training time
    as_of: str | None  # end of the training window
    _pre: object
    _forward: torch.nn.Module | object
    device: torch.device

    @property
    def columns(self) -> list[str]:
        """The raw input columns the model reads (columns it dropped at training, e.g. ids, are not needed)."""
        return self._pre.columns

    @property
    def input_views(self) -> list[str]:
        return list(dict.fromkeys(ref.split(":", 1)[0] for ref in self.feature_refs))

    def encode_frame(self, df: pd.DataFrame, batch_size: int | None = None) -> np.ndarray:
        """Feature rows -> float32 vectors (n x dim). Missing columns / NaN without a fill: ``SchemaError``.
        The network runs over ``batch_size`` rows at a time. On CPU the default (1024) keeps a batch's hidden
        activations near the core's cache (for the 512-wide DAE, 1.2x the rows/s of 4096-row batches and 2.5x
        that of 64k); on a GPU, 16384 rows per kernel launch."""
        x = torch.from_numpy(self._pre.transform(df))
        if not len(x):
            return np.zeros((0, self.dim), np.float32)
        batch_size = batch_size or (16384 if self.device.type == "cuda" else 1024)
        with torch.inference_mode():
            out = [self._forward(x[s:s + batch_size].to(self.device)).cpu() for s in range(0, len(x), batch_size)]
        return torch.cat(out).numpy()

    def encode_record(self, record: Mapping) -> np.ndarray:
        """One row given as {column: value} (None = missing) -> a 1 x dim matrix equal to ``encode_frame`` of
        that row, without pandas: the request-time path (a one-row frame costs ~20x more than the network)."""
        x = torch.from_numpy(self._pre.transform_record(record))
        with torch.inference_mode():
            return self._forward(x.to(self.device)).cpu().numpy()


class _CriticFeatures(torch.nn.Module):
    def __init__(self, critic):
        super().__init__()
        self.critic = critic

    def forward(self, x):
        h, score = self.critic.features(x)
        return torch.cat([h, score[:, None]], dim=1)


@dataclass
class CandidateEncoder(FeatureEncoder):
    """A two-tower's candidate tower over item rows (the join key plus the item views' features): catalogue
    items keep their training-time vectors; items the model never saw are encoded from their features."""

    key: str = "item_id"
    vector_refs: dict = field(default_factory=dict)  # {"<item embedding view>:embedding": the model's column}

    @property
    def columns(self) -> list[str]:
        return [self.key] + [r.split(":", 1)[1] for r in self.feature_refs]

    def encode_frame(self, df: pd.DataFrame, batch_size: int = 4096) -> np.ndarray:
        names = {r.split(":", 1)[1]: self.vector_refs.get(r, r.replace(":", "__", 1))
                 for r in self.feature_refs}  # the model's columns
        frame = df.rename(columns={**names, self.key: "item_id"})
        return np.concatenate([self._pre.item_vectors(frame.iloc[s:s + batch_size])
                               for s in range(0, len(frame), batch_size)] or [np.zeros((0, self.dim), np.float32)])

    def encode_record(self, record: Mapping) -> np.ndarray:
        return self.encode_frame(pd.DataFrame({c: [v] for c, v in record.items()}))

    def catalogue(self) -> np.ndarray:
        """The items the model was trained on (what it materializes when it reads no item views)."""
        return self._pre.item_ids_


@dataclass
class TextFeatureEncoder(FeatureEncoder):
    """A text version over the text columns it was declared with: each row's columns joined, then encoded."""

    text: object = None  # models.text.TextEncoder

    @property
    def columns(self) -> list[str]:
        return list(self.text.columns)

    def encode_frame(self, df: pd.DataFrame, batch_size: int | None = None) -> np.ndarray:
        return self.text.encode_frame(df, batch_size)

    def encode_record(self, record: Mapping) -> np.ndarray:
        return self.text.encode_record(record)


@dataclass
class SessionEncoder:
    """The Mult-VAE's encoder (posterior mean) in numpy: folding a short history in costs microseconds, with as
    few numpy calls as possible (request-time cost is dominated by per-call overhead and cold caches)."""

    model: str
    version: str
    dim: int
    item_ids: np.ndarray  # the model's item axis: position i is item item_ids[i]
    _w1: np.ndarray  # n_items x hidden (first layer, transposed)
    _b1: np.ndarray
    _w2: np.ndarray  # hidden x dim (posterior mean head)
    _b2: np.ndarray

    def __post_init__(self):
        self._index = dict(zip(self.item_ids.tolist(), range(len(self.item_ids))))

    def positions(self, items) -> list[int]:
        """Sorted model positions of the known ids among ``items`` (unknown ids ignored, duplicates once); ids of
        another type than the model's (a string for integer items, or the reverse) are an error."""
        if isinstance(items, np.ndarray):
            items = items.tolist()
        if self.item_ids.dtype.kind in "iu":
            bad = [i for i in items if isinstance(i, bool) or not isinstance(i, (int, np.integer))]
            kind = "integers"
        else:
            bad = [i for i in items if not isinstance(i, str)]
            kind = "strings"
        if bad:
            raise SchemaError(f"item ids must be {kind}, got {type(bad[0]).__name__} values like "
                              f"{[str(b)[:20] for b in bad[:3]]}.")
        index = self._index
        return sorted({p for p in map(index.get, items) if p is not None})

    def encode(self, histories: list) -> tuple[np.ndarray, np.ndarray]:
        """Histories (lists of item ids; None = empty) -> (vectors n x dim, number of known items in each)."""
        pos = [self.positions(h if h is not None else ()) for h in histories]
        if len(pos) == 1:  # one request: the fewest numpy calls
            p = pos[0]
            first = self._w1[p].sum(axis=0) * np.float32(1.0 / np.sqrt(len(p))) if p else 0.0
            h = np.tanh(first + self._b1)
            return (h @ self._w2 + self._b2)[None, :], np.array([len(p)])
        counts = np.fromiter(map(len, pos), np.int64, len(pos))
        if not len(pos):
            return np.zeros((0, self.dim), np.float32), counts
        flat = [p for row in pos for p in row]
        sums = np.zeros((len(pos), self._w1.shape[1]), np.float32)
        if flat:
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            rows = counts > 0  # reduceat over an empty segment returns a row, not 0: skip those
            sums[rows] = np.add.reduceat(self._w1[flat], starts[rows], axis=0)
        # L2-normalized binary history, as in training; float32 throughout
        scale = np.divide(1.0, np.sqrt(counts), out=np.zeros(len(counts)), where=counts > 0).astype(np.float32)
        h = np.tanh(sums * scale[:, None] + self._b1)
        return h @ self._w2 + self._b2, counts


@lru_cache(maxsize=32)
def load_encoder(root: str, model: str, version: str, device: str = "cpu") -> FeatureEncoder | SessionEncoder:
    """Load, verify (content hash) and cache one model version for this process."""
    with _lock:
        return _load(root, model, version, device)


def _load(root: str, model: str, version: str, device: str):
    dev = resolve_device(device)
    if model == "dae":
        from feast_autofeat.models.dae import DAE

        fitted = DAE.load(root, version)
        forward = fitted.net_.encoder
    elif model == "gan":
        from feast_autofeat.models.gan import TabularGAN

        fitted = TabularGAN.load(root, version)
        forward = _CriticFeatures(fitted.net_.critic)
    elif model == "multvae":
        from feast_autofeat.models.multvae import MultVAE

        fitted = MultVAE.load(root, version)
        net = fitted.net_
        dim = fitted.config.dim
        return SessionEncoder(
            model=model, version=version, dim=dim, item_ids=fitted.item_ids_,
            _w1=net.enc.weight.detach().numpy().T.copy(), _b1=net.enc.bias.detach().numpy().copy(),
            _w2=net.mu_logvar.weight.detach().numpy()[:dim].T.copy(),
            _b2=net.mu_logvar.bias.detach().numpy()[:dim].copy())
    elif model == "text":
        from feast_autofeat.models.text import load_text_encoder

        text, config = load_text_encoder(root, version, device=str(dev))
        return TextFeatureEncoder(model=model, version=version, dim=text.dim,
                                  feature_refs=list(config.get("feature_refs") or []), as_of=None, _pre=None,
                                  _forward=None, device=dev, text=text)
    elif model == "two_tower":
        from feast_autofeat.artifacts import load_version
        from feast_autofeat.models.two_tower import TwoTower

        fitted = TwoTower.load(root, version)
        config = load_version(root, model, version).config
        return CandidateEncoder(model=model, version=version, dim=fitted.config.dim,
                                feature_refs=list(config.get("feature_refs") or []),
                                as_of=(config.get("training_window") or {}).get("as_of"), _pre=fitted,
                                _forward=None, device=dev, key=config.get("join_key") or "item_id",
                                vector_refs=dict(config.get("item_vector_refs") or {}))
    else:
        raise AutofeatError(f"model {model!r} cannot back an embedding; use one of "
                            f"{', '.join(FEATURE_MODELS + SESSION_MODELS)}.")
    from feast_autofeat.artifacts import load_version

    config = load_version(root, model, version).config
    refs = config.get("feature_refs")
    if not refs:
        raise AutofeatError(f"model {model}/{version} records no feature_refs (it was not trained from a feature "
                            "store); retrain it with `feast-autofeat train`.")
    forward.eval().to(dev)
    return FeatureEncoder(model=model, version=version, dim=model_dim(model, config), feature_refs=list(refs),
                          as_of=(config.get("training_window") or {}).get("as_of"), _pre=fitted.preprocessor_,
                          _forward=forward, device=dev)


def vectors_array(vectors: np.ndarray) -> pa.FixedSizeListArray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])


def encode_batch(batch: pa.RecordBatch | pa.Table, *, root: str, model: str, version: str, key: str,
                 device: str = "cpu") -> pa.RecordBatch:
    """The core transform: a batch of (key, input features...) -> a batch of (key, embedding, model_version).
    Pure and per-batch, with the model cached per process, so any worker (local, Ray) runs the same code; the
    batch engine calls it for every batch."""
    enc = load_encoder(root, model, version, device)
    if not isinstance(enc, FeatureEncoder):
        raise AutofeatError(f"model {model} encodes item histories, not feature rows.")
    vectors = enc.encode_frame(batch.select(enc.columns).to_pandas())
    keys = batch.column(key)
    keys = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys  # a Table's column
    return pa.RecordBatch.from_arrays(
        [keys, vectors_array(vectors), pa.repeat(pa.scalar(version), batch.num_rows)],
        names=[key, "embedding", "model_version"])


def batch_vectors(batch: pa.RecordBatch) -> np.ndarray:
    """The ``embedding`` column of ``encode_batch``'s output as an (n x dim) float32 array (no copy)."""
    col = batch.column("embedding")
    return col.values.to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)


# ---- on-demand views call these from their UDFs (python mode: dict of lists in, dict of lists out)
def session_embeddings(histories: list, *, root: str, model: str, version: str, output: str) -> dict:
    """Fold each request's recent item ids into the Mult-VAE. Unknown ids are ignored; an empty history (or
    one with no known id) gives the model's empty-history vector, with ``<output>_known_items`` = 0."""
    enc = load_encoder(root, model, version)
    if not isinstance(enc, SessionEncoder):
        raise AutofeatError(f"model {model} does not encode item histories.")
    if not isinstance(histories, (list, tuple)):
        raise SchemaError(f"{output}: expected a list of item-id lists, got {type(histories).__name__}.")
    try:
        vecs, known = enc.encode(list(histories))
    except SchemaError as exc:
        raise SchemaError(f"{output}: {exc}") from None
    return {output: vecs.tolist(), f"{output}_known_items": known.tolist()}


def query_embeddings(queries: list, *, root: str, model: str, version: str, output: str, field: str) -> dict:
    """Encode each request's query string with a text version (the one the searched text view is deployed
    with). Empty, blank, over-long or non-string queries: ``SchemaError`` naming ``field``."""
    from feast_autofeat.models.text import TextError, check_query

    enc = load_encoder(root, model, version)
    if not isinstance(enc, TextFeatureEncoder):
        raise AutofeatError(f"model {model} does not encode text.")
    if not isinstance(queries, (list, tuple)):
        raise SchemaError(f"{field}: expected a list of query strings, got {type(queries).__name__}.")
    try:
        texts = [check_query(q, field) for q in queries]
    except TextError as exc:
        raise SchemaError(str(exc)) from None
    return {output: enc.text.encode_texts(texts).tolist()}


def feature_embeddings(inputs: dict, *, root: str, model: str, version: str, output: str) -> dict:
    """Encode request-supplied raw feature rows (the model's own input columns) with a DAE/GAN."""
    enc = load_encoder(root, model, version)
    if not isinstance(enc, FeatureEncoder):
        raise AutofeatError(f"model {model} does not encode feature rows.")
    missing = [c for c in enc.columns if c not in inputs]
    if missing:
        raise SchemaError(f"{output}: request lacks {missing}; send every input column of {model}/{version}.")
    try:
        if len(inputs[enc.columns[0]]) == 1:  # one request row (online): no pandas
            vecs = enc.encode_record({c: inputs[c][0] for c in enc.columns})
        else:
            vecs = enc.encode_frame(pd.DataFrame({c: inputs[c] for c in enc.columns}))
    except SchemaError as exc:
        raise SchemaError(f"{output}: {exc}") from None
    return {output: vecs.tolist()}
