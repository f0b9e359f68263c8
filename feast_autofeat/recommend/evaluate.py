"""One evaluation harness for every recommender: protocols, baselines, two-tower variants, one table.

Protocols (positives only, e.g. MovieLens ratings >= 4; full ranking over the whole catalogue, each user's
known items excluded; Recall@K divided by min(K, targets); standard errors over users):

- **P** (primary): per user, the last 20% of positives by time are targets, everything earlier is history.
  Features are as of the user's first target time (point in time). Tuning uses the same cut repeated inside
  the history. Caveat (Sun et al. 2023, "A critical study on data leakage in recommender system offline
  evaluation"): one user's history can lie after another user's targets, so models trained on all histories
  see some "future" of the global timeline; the global split below has no such leak.
- **C** (new users): 10% of users are held out of all training; at request time only their first 5 positives
  (and their profile) are known; everything they did later is a target. On a small dataset one run scores few
  users, so ``pool`` combines runs with different held-out users and seeds into one table.
- **G** (global temporal): train on the first 80% of positives by time, test on the rest, for users with at
  least one positive on each side; few MovieLens users qualify (most rate within days of signing up).

Every two-tower row also carries ``paired``: its per-user difference from each baseline on the same users, with
the standard error of those differences (much smaller than either model's own, as the users' difficulty cancels).

Every protocol retrains the encoders (DAE, GAN, Mult-VAE) on its own training events only, deploys them as the
live versions of the repo's embedding views, backfills daily snapshots, and builds training sets through the
``two_tower_query`` feature service, so the two-tower reads exactly what serving would have read.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from feast_autofeat.evaluation import mean_se, summarize
from feast_autofeat.evaluation import per_user as metric_values
from feast_autofeat.models.interactions import Histories
from feast_autofeat.models.metrics import hit_rate_at_k, ndcg_at_k, recall_at_k
from feast_autofeat.recommend.data import ENCODERS, Cut, cold_users_cut, histories, per_user_cut
from feast_autofeat.recommend.train import TrainingSet, validation

log = logging.getLogger(__name__)

METRICS = (("recall@10", recall_at_k, 10), ("recall@20", recall_at_k, 20), ("ndcg@10", ndcg_at_k, 10),
           ("hitrate@10", hit_rate_at_k, 10))

VARIANTS = {
    "two-tower ids": {"groups": (), "item_groups": (), "history": False},
    "two-tower ids + history": {"groups": (), "item_groups": (), "history": True},
    "two-tower features (no learned)": {"groups": ("profile", "behaviour"), "item_groups": ("profile",)},
    "two-tower learned": {},  # every feature group, item profile + Mult-VAE item vectors, history, ids
    "  - DAE": {"groups": ("profile", "behaviour", "gan_critic", "multvae")},
    "  - GAN critic": {"groups": ("profile", "behaviour", "dae", "multvae")},
    "  - Mult-VAE": {"groups": ("profile", "behaviour", "dae", "gan_critic"), "item_groups": ("profile",)},
    "  + GAN augmentation": {"gan_augment": 2},  # synthetic behaviour rows for sparse users (recommend.augment)
}


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    train_events: pd.DataFrame  # what every model may learn from
    cut: Cut  # test users: known history and targets


def protocol_p(events: pd.DataFrame) -> Protocol:
    cut = per_user_cut(events)
    return Protocol("P", "per-user temporal: last 20% of each user's positives are targets", cut.history, cut)


def protocol_c(events: pd.DataFrame, share: float = 0.1, known: int = 5, seed: int = 0) -> Protocol:
    train, cut = cold_users_cut(events, share=share, known=known, seed=seed)
    return Protocol("C", f"new users: {share:.0%} of users held out of training; their first {known} positives "
                    "known at request time, the rest are targets", train, cut)


def protocol_g(events: pd.DataFrame, train_share: float = 0.8) -> Protocol:
    t = events.event_timestamp.sort_values(ignore_index=True).iloc[int(train_share * (len(events) - 1))]
    train, test = events[events.event_timestamp < t], events[events.event_timestamp >= t]
    users = np.intersect1d(train.user_id.unique(), test.user_id.unique())
    cut = Cut(train[train.user_id.isin(users)].reset_index(drop=True),
              test[test.user_id.isin(users)].reset_index(drop=True))
    return Protocol("G", f"global temporal: train on positives before {t}, test after (users with both)",
                    train.reset_index(drop=True), cut)


BASELINES = ("popularity", "EASE", "Mult-VAE")
PAIRED = ("ndcg@10", "recall@20")  # the metrics of the targets, compared user by user with each baseline


def paired(per_user: dict) -> dict:
    """{model: {baseline: {metric: {mean, se}}}}: each two-tower's per-user difference from each baseline on the
    same users. Two models scored on the same users share most of their noise (which users are easy), so the
    difference's standard error is far smaller than either model's own: the comparison a target needs."""
    out = {}
    for name, values in per_user.items():
        if name in BASELINES:
            continue
        out[name] = {b: {m: mean_se(values[m] - per_user[b][m]) for m in PAIRED} for b in BASELINES
                     if b in per_user}
    return out


def pool(results: list[dict]) -> dict:
    """One protocol run several times (e.g. C with different held-out users and seeds) as one table: every
    model's metrics over all runs' test users together, paired differences likewise, and each run's own table
    under ``runs``. Takes ``run_protocol``'s results (with their ``per_user`` vectors)."""
    names = [n for n in results[0]["per_user"] if all(n in r["per_user"] for r in results)]
    per_user = {n: {m: np.concatenate([r["per_user"][n][m] for r in results]) for m in results[0]["per_user"][n]}
                for n in names}
    models = {n: summarize(per_user[n]) for n in names}
    for n, comparisons in paired(per_user).items():
        models[n]["paired"] = comparisons
    return {"protocol": results[0]["protocol"] + f"; {len(results)} runs pooled (each its own held-out users "
            "and seed)", "runs": [{k: v for k, v in r.items() if k != "per_user"} for r in results],
            "train_events": [r["train_events"] for r in results],
            "test_users": sum(r["test_users"] for r in results), "targets": sum(r["targets"] for r in results),
            "seconds": sum(r["seconds"] for r in results), "models": models, "per_user": per_user}


def train_encoders(repo: Path, events: pd.DataFrame, seed: int = 0, progress: bool = False, **overrides) -> dict:
    """Train DAE, GAN and Mult-VAE on ``events`` only, deploy them live, apply, backfill daily snapshots over
    the events' whole range. Returns {embedding name: version}."""
    from feast import FeatureStore

    from feast_autofeat.cli import feast_apply
    from feast_autofeat.feast.embeddings import Deployments
    from feast_autofeat.feast.engine import LeakageWarning, backfill
    from feast_autofeat.training import train

    versions = {}
    for name, model in ENCODERS:
        versions[name] = train(model, repo, events=events, seed=seed, progress=progress,
                               **overrides.get(model, {})).version
    dep = Deployments(repo)
    for name, model in ENCODERS:
        dep.deploy(name, model, versions[name], live=True)
    dep.save()
    feast_apply(repo)
    store = FeatureStore(repo_path=str(repo))
    lo = events.event_timestamp.min().floor("D").to_pydatetime()
    hi = events.event_timestamp.max().ceil("D").to_pydatetime()
    for name, _ in ENCODERS[:2]:
        with warnings.catch_warnings():
            # snapshots inside the training range are the point: P's histories span the whole timeline
            warnings.simplefilter("ignore", LeakageWarning)
            backfill(store, f"{name}__{versions[name]}", lo, hi, progress=progress)
    return versions


def multvae_scores(root, version: str, known: Histories, item_ids: np.ndarray) -> np.ndarray:
    """Mult-VAE fold-in scores over the catalogue (items the model never saw score lowest)."""
    from feast_autofeat.models.multvae import MultVAE

    vae = MultVAE.load(root, version)
    on = np.isin(item_ids, vae.item_ids_)
    # the known items as the model's own item axis
    rows = np.repeat(np.arange(known.n_users), known.lengths)
    ids = item_ids[known.indices]
    keep = np.isin(ids, vae.item_ids_)
    h = Histories.from_pairs(rows[keep], np.searchsorted(vae.item_ids_, ids[keep]), known.n_users,
                             len(vae.item_ids_))
    out = np.full((known.n_users, len(item_ids)), -1e9, np.float32)
    out[:, on] = vae.score(h)[:, np.searchsorted(vae.item_ids_, item_ids[on])]
    return out


def tune_ease(data: TrainingSet, item_ids: np.ndarray, grid=(50.0, 100.0, 200.0, 500.0, 1000.0)):
    """EASE's L2 chosen by Recall@20 on the inner cut, then refit on every training event."""
    from feast_autofeat.models.ease import EASE

    users = np.unique(data.events.user_id)
    inner_train = histories(data.inner.history, users, item_ids)
    vq, targets, known = data.valid
    inner_known = histories(data.inner.history, vq.user_id.to_numpy(), item_ids)
    scored = []
    for l2 in grid:
        s = EASE(l2).fit(inner_train).score(inner_known)
        scored.append((float(np.mean(recall_at_k(s, targets, 20, exclude=known)[targets.lengths > 0])), l2))
    best_score, best = max(scored)
    return EASE(best).fit(histories(data.events, users, item_ids)), {"l2": best, "inner_valid_recall@20": best_score}


def run_protocol(repo: Path, protocol: Protocol, variants: dict = VARIANTS, seed: int = 0,
                 progress: bool = False, encoder_overrides: dict | None = None) -> dict:
    """Every model of the table on one protocol: {model: metrics}, plus the protocol's description."""
    from feast import FeatureStore

    from feast_autofeat.models.ease import Popularity

    t0 = time.perf_counter()
    versions = train_encoders(repo, protocol.train_events, seed, progress, **(encoder_overrides or {}))
    store = FeatureStore(repo_path=str(repo))
    data = TrainingSet.build(store, repo, protocol.train_events)
    item_ids = data.items.item_id.to_numpy()
    qframe, targets, known = validation(store, protocol.cut, item_ids, data.features)
    rows, per_user = {}, {}

    def record(name: str, scores: np.ndarray, started: float, **extra) -> None:
        per_user[name] = metric_values(scores, known, targets, METRICS)
        rows[name] = {**summarize(per_user[name]), "seconds": time.perf_counter() - started, **extra}
        log.info("%s %s: recall@20 %.4f", protocol.name, name, rows[name]["recall@20"]["mean"])

    train_h = histories(data.events, np.unique(data.events.user_id), item_ids)
    t = time.perf_counter()
    record("popularity", Popularity().fit(train_h).score(known), t)
    t = time.perf_counter()
    ease, info = tune_ease(data, item_ids)
    record("EASE", ease.score(known), t, **info)
    t = time.perf_counter()
    record("Mult-VAE", multvae_scores(repo / "models", versions["session_multvae"], known, item_ids), t)
    for name, variant in variants.items():
        t = time.perf_counter()
        model = data.fit(data.config(seed=seed, **variant), progress=progress)
        record(name, model.score(qframe), t, **{k: v for k, v in model.metrics_.items() if k != "train_seconds"})
    for name, comparisons in paired(per_user).items():
        rows[name]["paired"] = comparisons
    return {"protocol": protocol.description, "train_events": len(protocol.train_events),
            "test_users": int((targets.lengths > 0).sum()), "targets": int(targets.lengths.sum()),
            "encoders": versions, "seconds": time.perf_counter() - t0, "models": rows,
            "per_user": per_user}  # {model: {metric: value per test user}}: not JSON; ``pool`` reads it
