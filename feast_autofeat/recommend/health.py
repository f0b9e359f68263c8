"""Embedding health per version, as JSON and a PNG (``reports/health-<time>.json|png`` in the repo):

- **norms**: percentiles and a histogram of vector norms (a collapse or a blow-up shows at once);
- **centroid shift** from the previous version: cosine distance between the two mean vectors and the shift's
  length relative to the previous mean (retrained spaces are not aligned, so read it with the next figure);
- **neighbour overlap@10** between versions: for a sample of entities, the share of their 10 nearest
  neighbours (cosine) that both versions agree on: 1 = the same structure, ~10/n = unrelated;
- **null share served**: of the entities the declaration's input views know (a sample), the share the online
  store answers with no vector.

Vectors come from each version's latest offline snapshots (what was materialized); the null share from the
online store itself (``get_online_features``).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def latest_vectors(store, view: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(entity ids sorted, their latest vectors) from an embedding view's offline snapshots (what was
    materialized), through Feast's offline store."""
    fv = store.get_feature_view(view)
    src = fv.batch_source
    df = store._get_provider().offline_store.pull_latest_from_table_or_query(
        config=store.config, data_source=src, join_key_columns=[key], feature_name_columns=["embedding"],
        timestamp_field=src.timestamp_field, created_timestamp_column=None,
        start_date=datetime(1970, 1, 1, tzinfo=timezone.utc), end_date=datetime.now(timezone.utc)).to_df()
    df = df.sort_values(key)
    if df.empty:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    ids = df[key].to_numpy()
    return (ids.astype(str) if ids.dtype == object else ids.astype(np.int64)), \
        np.stack(df.embedding.to_numpy()).astype(np.float32)


def _histogram(values: np.ndarray, bins: int = 30) -> list:
    """[counts, edges]; a constant column (unit vectors: every norm 1) gets a narrow range around it."""
    v = values.astype(np.float64)
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < 1e-6:
        lo, hi = lo - 0.01, hi + 0.01
    return [h.tolist() for h in np.histogram(v, bins=bins, range=(lo, hi))]


def _knn(x: np.ndarray, k: int) -> np.ndarray:
    u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sim = u @ u.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def neighbour_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean share of each row's ``k`` nearest neighbours (cosine) that ``a`` and ``b`` (same rows) agree on."""
    na, nb = _knn(a, k), _knn(b, k)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(na, nb)]))


def entity_ids(store, decl) -> np.ndarray:
    """The entities a stored embedding covers: every key of its input views' sources (a two-tower with no item
    views: the items of its materialized view)."""
    from feast_autofeat.feast.offline import source_rows

    views = [store.get_feature_view(v.name) for v in decl.inputs]
    if not views:
        return np.zeros(0, np.int64)
    return np.unique(source_rows(store, views, decl.key)[decl.key].to_numpy())


def compare(store, decl, version: str, previous: str | None, sample: int = 2000, seed: int = 0) -> dict:
    from feast_autofeat.feast.deployments import view_name

    key, name = decl.key, decl.name
    ids, vecs = latest_vectors(store, view_name(name, version), key)
    norms = np.linalg.norm(vecs, axis=1)
    out = {"view": view_name(name, version), "entities": len(ids),
           "norm": {f"p{q}": float(np.percentile(norms, q)) for q in (1, 5, 50, 95, 99)},
           "norm_histogram": _histogram(norms)}
    known = entity_ids(store, decl)
    known = known if len(known) else ids
    rng = np.random.default_rng(seed)
    probe = np.sort(rng.choice(known, min(sample, len(known)), replace=False))
    online = store.get_online_features(features=[f"{view_name(name, version)}:embedding"],
                                       entity_rows={key: probe.tolist()}).to_dict()["embedding"]
    out["null_share_served"] = float(np.mean([v is None for v in online]))
    if previous and previous != version:
        pids, pvecs = latest_vectors(store, view_name(name, previous), key)
        common, ia, ib = np.intersect1d(ids, pids, return_indices=True)
        a, b = vecs[ia], pvecs[ib]
        ca, cb = a.mean(0), b.mean(0)
        out["previous"] = view_name(name, previous)
        out["previous_norm"] = {f"p{q}": float(np.percentile(np.linalg.norm(b, axis=1), q)) for q in (5, 50, 95)}
        out["previous_norm_histogram"] = _histogram(np.linalg.norm(pvecs, axis=1))
        if a.shape[1] == b.shape[1]:
            out["centroid_cosine_distance"] = float(1 - ca @ cb / max(np.linalg.norm(ca) * np.linalg.norm(cb), 1e-12))
            out["centroid_shift_relative"] = float(np.linalg.norm(ca - cb) / max(np.linalg.norm(cb), 1e-12))
        pick = np.sort(rng.choice(len(common), min(sample, len(common)), replace=False))
        out["neighbour_overlap@10"] = neighbour_overlap(a[pick], b[pick]) if len(pick) > 10 else None
        out["neighbour_overlap@10_random_baseline"] = 10 / max(len(pick) - 1, 1)
    return out


def health_report(store, repo, versions: dict, previous: dict | None = None, declarations: dict | None = None
                  ) -> Path:
    """JSON + PNG for the stored embedding views among ``versions`` ({embedding: version}; ``declarations``:
    {name: declaration}, default: the repo's); returns the JSON's path."""
    if declarations is None:
        from feast_autofeat.repo import load_declarations

        declarations = load_declarations(repo)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    previous = previous or {}
    views = {n: compare(store, declarations[n], v, previous.get(n)) for n, v in versions.items()
             if n in declarations and declarations[n].stored}
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    out = Path(repo) / "reports"
    out.mkdir(exist_ok=True)
    path = out / f"health-{stamp}.json"
    path.write_text(json.dumps({"created": stamp, "views": views}, indent=2))
    fig, axes = plt.subplots(1, len(views), figsize=(5 * len(views), 3.6), squeeze=False)
    for ax, (name, h) in zip(axes[0], views.items()):
        counts, edges = h["norm_histogram"]
        ax.stairs(counts, edges, label=h["view"].split("__")[-1] + " (new)", fill=True, alpha=0.5)
        if "previous_norm_histogram" in h:
            pc, pe = h["previous_norm_histogram"]
            ax.stairs(pc, pe, label=h["previous"].split("__")[-1] + " (previous)")
        overlap = h.get("neighbour_overlap@10")
        ax.set_title(f"{name}\nnull served {h['null_share_served']:.1%}"
                     + (f", nbr overlap@10 {overlap:.2f}" if overlap is not None else ""), fontsize=9)
        ax.set_xlabel("vector norm")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=110)
    plt.close(fig)
    return path
