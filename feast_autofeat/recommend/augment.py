"""GAN augmentation: synthetic behaviour for sparse users, added to the two-tower's training rows.

A user with few interactions has noisy behaviour aggregates (a handful of events decide every count and share),
and few training rows to teach the query tower how to read them. For each training row of a *sparse* user (at
most ``max_events`` rows in the training frame), the tabular GAN's generator (the two-tower's learned GAN
embedding) proposes behaviour: ``pool`` samples are drawn once, and the ``copies`` samples nearest to the row's
real feature vector (in the GAN's preprocessed space, all its inputs together) become extra rows. An extra row
keeps everything of the real row (user, item, time, history, profile, session embedding) except the behaviour
columns (the GAN's inputs from views with a TTL: time-varying aggregates; views without one are static
profiles), which come from its sample, and the learned embeddings computed from feature rows (DAE, GAN critic),
which are recomputed by the very encoder versions the training set reads, so every row is one serving could
have seen. A real row
without a behaviour snapshot yet (a user's first day: most sparse users' rows on MovieLens) gets copies with
synthetic behaviour and its vectors: "this user, had they a plausible history".

Switchable (``TwoTowerConfig.gan_augment``: copies per row, 0 = off), so the evaluation measures its effect
(the "+ GAN augmentation" row) instead of assuming it; each fit records what was added in its metrics.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from feast_autofeat.errors import AutofeatError


def _frame_columns(refs: list[str], columns: list[str]) -> dict[str, str]:
    """{model input column: training-frame column} from the model's ``view:feature`` refs."""
    view_of = {}
    for ref in refs:
        view, feature = ref.split(":", 1)
        view_of.setdefault(feature, view)
    missing = [c for c in columns if c not in view_of]
    if missing:
        raise AutofeatError(f"the GAN's input columns {missing} are not among its feature_refs; retrain it with "
                            "`feast-autofeat train gan`.")
    return {c: f"{view_of[c]}__{c}" for c in columns}


def _vector_column(frame: pd.DataFrame, embedding: str) -> str | None:
    cols = [c for c in frame.columns if c.startswith(f"{embedding}__") and not c.endswith("__model_version")]
    if len(cols) > 1:
        raise AutofeatError(f"embedding {embedding} has several columns {cols}; expected one vector column.")
    return cols[0] if cols else None


def nearest(real: np.ndarray, pool: np.ndarray, k: int, chunk: int = 4096) -> np.ndarray:
    """Positions in ``pool`` of the ``k`` rows nearest (Euclidean) to each row of ``real``, nearest first."""
    p = torch.from_numpy(np.ascontiguousarray(pool, np.float32))
    out = [torch.cdist(torch.from_numpy(np.ascontiguousarray(real[s:s + chunk], np.float32)), p)
           .topk(k, dim=1, largest=False).indices for s in range(0, len(real), chunk)]
    return torch.cat(out).numpy() if out else np.zeros((0, k), np.int64)


def augment_rows(frame: pd.DataFrame, decl, encoders: dict, root, copies: int, max_events: int = 20,
                 pool: int = 20_000, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """``frame`` (the two-tower's training rows) plus ``copies`` synthetic rows per row of each sparse user,
    and a report of what was added. ``decl``: the two-tower declaration; ``encoders``: {embedding: version} of
    the training set (a stored GAN embedding among them is required). Rows keep their order; the synthetic ones
    follow."""
    from feast_autofeat.feast.runtime import load_encoder
    from feast_autofeat.models.gan import TabularGAN

    if copies < 1:
        raise AutofeatError(f"gan_augment must be a positive number of copies, got {copies}.")
    tabular = {n: d for n, d in decl.learned.items() if d.kind == "embedding" and encoders.get(n)}
    gans = [n for n, d in tabular.items() if d.model == "gan"]
    if not gans:
        raise AutofeatError(f"GAN augmentation needs a GAN: declare an embedding_view(..., model=\"gan\") among "
                            f"{decl.name}'s query embeddings, train and deploy it, or set gan_augment=0.")
    gan_version = encoders[gans[0]]
    counts = frame.groupby("user_id")["user_id"].transform("size").to_numpy()
    sparse = np.flatnonzero(counts <= max_events)
    report = {"copies": copies, "max_events": max_events, "gan": gans[0], "gan_version": gan_version,
              "sparse_users": int(frame.user_id.iloc[sparse].nunique()), "sparse_rows": len(sparse),
              "rows_added": len(sparse) * copies}
    if not len(sparse):
        return frame, report
    gan = TabularGAN.load(root, gan_version)
    encoder = load_encoder(str(root), "gan", gan_version)
    to_frame = _frame_columns(encoder.feature_refs, encoder.columns)
    absent = [c for c in to_frame.values() if c not in frame.columns]
    if absent:
        raise AutofeatError(f"the training frame lacks the GAN's input column(s) {absent}: add their views to "
                            f"{decl.name}'s query, or set gan_augment=0.")
    real = frame.iloc[sparse][list(to_frame.values())].set_axis(list(to_frame), axis=1)
    samples = gan.sample_matrix(max(pool, copies), seed=seed)
    picks = nearest(gan.preprocessor_.transform(real), samples, copies)  # rows x copies
    synthetic = gan.inverse_transform(samples[picks.reshape(-1)])
    rows = frame.iloc[np.repeat(sparse, copies)].reset_index(drop=True)
    timed = {v.name for v in decl.query_views if v.ttl and v.ttl.total_seconds() > 0}
    behaviour = [c for c in to_frame if to_frame[c].split("__", 1)[0] in timed]
    rows = rows.assign(**{to_frame[c]: synthetic[c].to_numpy() for c in behaviour})
    for embedding, learned in tabular.items():
        column = _vector_column(rows, embedding)
        if column is None:
            continue
        enc = load_encoder(str(root), learned.model, encoders[embedding])
        inputs = _frame_columns(enc.feature_refs, enc.columns)
        vectors = enc.encode_frame(rows[list(inputs.values())].set_axis(list(inputs), axis=1))
        rows[column] = list(vectors)
    report["behaviour_columns"] = len(behaviour)
    return pd.concat([frame, rows], ignore_index=True), report
