"""``feast-autofeat refresh``: retrain on everything logged so far, check, and cut over in one step.

1. **Features from the log**: behaviour snapshots and users' recent items are recomputed from the whole event
   log (prepared events plus feedback), and the manifest's range moves to the log's last event.
2. **Shadow versions**: the encoders (DAE, GAN, Mult-VAE) are retrained, warm-started from the live versions,
   on events up to ``as_of - holdout``; deployed beside the live ones (not live), backfilled daily, and a
   two-tower is trained on *their* features. ``feast materialize`` writes the new views (and the rebuilt recent
   items) to the online store; the live versions keep serving.
3. **Checks**: online/offline parity of every new view (the vectors Redis serves equal the offline snapshots);
   an evaluation gate on the held-out period (each user's positives after ``as_of - holdout``, ranked from
   features as of their first one): the candidate's Recall@20 must reach ``(1 - tolerance)`` x the live
   version's. A failed check leaves the live versions untouched and says why.
4. **Cut-over**: one write of ``embeddings.json`` makes the two-tower and its encoders live; serving processes
   pick it up within a second and swap versions between requests (``Recommender``). The previous version stays
   deployed: ``feast-autofeat rollback item_two_tower`` goes back in one command.
5. **Embedding health** per view, as JSON and a PNG (``recommend.health``).

Warm start: a new encoder version starts from the live version's weights when the input schema is unchanged
(``init_from``), so refreshes converge in fewer epochs and keep the embedding space from flipping needlessly.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from feast_autofeat.errors import AutofeatError
from feast_autofeat.recommend.data import ENCODERS, Cut, histories, positive_events, query_features, query_frame
from feast_autofeat.recommend.recommender import ITEM_VIEW

GATE_USERS = 20  # fewer held-out users than this: the gate cannot judge, refresh refuses to cut over


@dataclass
class RefreshResult:
    live_before: str
    candidate: str
    versions: dict  # embedding -> new version
    as_of: str
    gate: dict
    parity: dict
    cut_over: bool
    reason: str
    health: str = ""  # the report's path
    seconds: float = 0.0
    steps: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def rebuild_features(repo: str | Path) -> dict:
    """Recompute every table derived from the event log (behaviour and popularity snapshots, users' recent
    items) and the manifest's ranges, so training, backfill and ``feast materialize`` see logged feedback."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from feast_autofeat.datasets import get_spec, load_manifest
    from feast_autofeat.datasets.base import event_log_dir
    from feast_autofeat.features.snapshots import build_snapshots, recent_items_table, snapshot_range, write_snapshots

    data = Path(repo) / "data"
    manifest = load_manifest(data)
    spec = get_spec(manifest.dataset)
    log = pq.read_table(event_log_dir(data))
    tables = build_snapshots(log, pq.read_table(data / "items.parquet"), spec)
    tables["user_recent_items"] = recent_items_table(log, spec)
    write_snapshots(tables, data)
    ts = log["event_timestamp"]
    lo, hi = pc.min(ts).as_py().isoformat(), pc.max(ts).as_py().isoformat()
    snaps = snapshot_range(tables)
    rows = {**manifest.rows, "interactions": log.num_rows, **{k: t.num_rows for k, t in tables.items()}}
    updated = json.loads(manifest.to_json())
    updated.update(rows=rows, time_range=[lo, hi], snapshot_range=list(snaps),
                   materialize_range=[min(manifest.materialize_range[0], lo), snaps[1]])
    tmp = data / ".manifest.json.tmp"
    tmp.write_text(json.dumps(updated, indent=2))
    tmp.replace(data / "manifest.json")
    return {"events": log.num_rows, "last_event": hi}


def holdout_cut(events: pd.DataFrame, cut: datetime, as_of: datetime) -> Cut:
    """History: positives at or before ``cut``; targets: positives in ``(cut, as_of]`` of users with history."""
    ts = events.event_timestamp
    hist = events[ts <= pd.Timestamp(cut)]
    fut = events[(ts > pd.Timestamp(cut)) & (ts <= pd.Timestamp(as_of))]
    fut = fut[fut.user_id.isin(hist.user_id.unique())]
    return Cut(hist[hist.user_id.isin(fut.user_id.unique())].reset_index(drop=True), fut.reset_index(drop=True))


def score_version(store, repo, root, version: str, cut: Cut) -> dict:
    """Recall@20 / NDCG@10 of a two-tower version on a cut, reading its own pinned query features."""
    from feast_autofeat.models.metrics import ndcg_at_k, recall_at_k
    from feast_autofeat.models.two_tower import TwoTower

    model = TwoTower.load(root, version)
    q = query_frame(store, cut.queries(), query_features(store, repo, model.saved_config_.get("encoders")))
    users = q.user_id.to_numpy()
    targets = histories(cut.future, users, model.item_ids_)
    known = histories(cut.history, users, model.item_ids_)
    scores = model.score(q)
    ok = targets.lengths > 0
    return {"recall@20": float(np.mean(recall_at_k(scores, targets, 20, exclude=known)[ok])),
            "ndcg@10": float(np.mean(ndcg_at_k(scores, targets, 10, exclude=known)[ok])), "users": int(ok.sum()),
            "trained_as_of": (model.saved_config_.get("training_window") or {}).get("as_of")}


def parity(store, views: dict[str, str], sample: int = 200, seed: int = 0) -> dict:
    """For each new embedding view ({view: entity key}): the online vectors of a sample of entities equal the
    latest offline snapshot (max abs difference)."""
    from feast_autofeat.recommend.health import latest_vectors

    out = {}
    rng = np.random.default_rng(seed)
    for view, key in views.items():
        ids, vecs = latest_vectors(store, view, key)
        pick = np.sort(rng.choice(len(ids), min(sample, len(ids)), replace=False))
        ids, want = ids[pick], vecs[pick]
        online = store.get_online_features(features=[f"{view}:embedding"],
                                           entity_rows={key: ids.tolist()}).to_dict()["embedding"]
        missing = sum(v is None for v in online)
        diff = max((float(np.max(np.abs(np.asarray(o, np.float32) - np.asarray(w, np.float32))))
                    for o, w in zip(online, want) if o is not None), default=np.inf)
        out[view] = {"entities": len(ids), "missing_online": int(missing), "max_abs_diff": diff,
                     "ok": bool(missing == 0 and diff <= 1e-5)}
    return out


def refresh(repo: str | Path, yaml: str | None = None, as_of=None, holdout_days: float = 7.0,
            tolerance: float = 0.02, epochs: dict | None = None, seed: int = 0, cut_over: bool = True,
            progress: bool = False, say: Callable[[str], None] = lambda _m: None) -> RefreshResult:
    """Steps 1-5 of the module doc; returns what was done, the gate's figures and whether it cut over."""
    from feast_autofeat.artifacts import model_root
    from feast_autofeat.datasets import load_manifest
    from feast_autofeat.feast.embeddings import Deployments, view_name
    from feast_autofeat.feast.engine import LeakageWarning, backfill
    from feast_autofeat.quickstart import run_feast
    from feast_autofeat.recommend.feedback import RECENT_VIEW
    from feast_autofeat.recommend.health import health_report
    from feast_autofeat.recommend.pipeline import apply_quietly
    from feast_autofeat.recommend.train import train_two_tower
    from feast_autofeat.training import open_store, parse_as_of, train

    t0 = time.perf_counter()
    repo = Path(repo)
    epochs = epochs or {}
    root = model_root(None, default=repo / "models")
    dep = Deployments(repo)
    live = dep.get(ITEM_VIEW).live if dep.get(ITEM_VIEW) else None
    if live is None:
        raise AutofeatError(f"no live {ITEM_VIEW} in {repo}: build one first (`feast-autofeat train two-tower`, "
                            "`deploy`, `feast materialize`).")
    steps = {}

    def apply() -> None:
        apply_quietly(repo, yaml)

    def step(name: str, t: float) -> None:
        steps[name] = round(time.perf_counter() - t, 1)
        say(f"{name} ({steps[name]:.0f}s)")

    t = time.perf_counter()
    rebuilt = rebuild_features(repo)
    as_of = parse_as_of(as_of, repo)  # default: the log's last event
    cut = as_of - timedelta(days=holdout_days)
    step(f"rebuilt features from {rebuilt['events']:,} logged events (last {rebuilt['last_event']})", t)

    t = time.perf_counter()
    new = {}
    for name, model in ENCODERS:
        previous = dep.get(name).live if dep.get(name) else None
        result = train(model, repo, as_of=cut, seed=seed, progress=progress, yaml=yaml, init_from=previous,
                       **({"epochs": epochs[model]} if model in epochs else {}))
        new[name] = result.version
        dep.deploy(name, model, result.version)
    dep.save()
    apply()
    step(f"trained encoders on events up to {cut:%Y-%m-%d %H:%M} (warm start): "
         + ", ".join(f"{n} {v}" for n, v in new.items()), t)

    t = time.perf_counter()
    store = open_store(repo, yaml)
    manifest = load_manifest(repo / "data")
    lo = datetime.fromisoformat(manifest.time_range[0]).replace(hour=0, minute=0, second=0, microsecond=0)
    hi = datetime.fromisoformat(manifest.snapshot_range[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LeakageWarning)  # serving snapshots: the model may have seen the past
        for name, _ in ENCODERS[:2]:
            backfill(store, view_name(name, new[name]), lo, hi, timedelta(days=1), progress=progress)
    step(f"backfilled the new encoders daily {lo.date()} .. {hi.date()}", t)

    t = time.perf_counter()
    tt = train_two_tower(repo, as_of=cut, seed=seed, progress=progress, yaml=yaml, encoders=new,
                         **({"epochs": epochs["two_tower"]} if "two_tower" in epochs else {}))
    new[ITEM_VIEW] = tt.version
    dep = Deployments(repo)
    dep.deploy(ITEM_VIEW, "two_tower", tt.version)
    dep.save()
    apply()
    step(f"trained two-tower {tt.version} on the new encoders' features", t)

    t = time.perf_counter()
    start, stop = manifest.materialize_window()
    end = max(datetime.fromisoformat(stop), as_of.replace(tzinfo=None) + timedelta(seconds=1))
    shadow = [view_name(n, v) for n, v in new.items() if n != "session_multvae"]
    args = [a for v in [*shadow, RECENT_VIEW] for a in ("--views", v)]
    run_feast(repo, "materialize", start, end.strftime("%Y-%m-%dT%H:%M:%S"), *args, yaml=yaml, capture=True)
    step(f"materialized the shadow views {', '.join(shadow)}", t)

    t = time.perf_counter()
    store = open_store(repo, yaml)
    par = parity(store, {v: "item_id" if v.startswith(ITEM_VIEW) else "user_id" for v in shadow})
    events = positive_events(store, repo)
    holdout = holdout_cut(events, cut, as_of)
    gate = {"period": [cut.isoformat(), as_of.isoformat()], "tolerance": tolerance,
            "users": int(holdout.future.user_id.nunique())}
    if gate["users"] >= GATE_USERS:
        gate["live"] = score_version(store, repo, root, live, holdout)
        gate["candidate"] = score_version(store, repo, root, tt.version, holdout)
        trained = gate["live"]["trained_as_of"]
        gate["live_saw_holdout"] = bool(trained and datetime.fromisoformat(trained) > cut)
        gate["passed"] = gate["candidate"]["recall@20"] >= (1 - tolerance) * gate["live"]["recall@20"]
    else:
        gate["passed"] = False
    step("checked parity and the evaluation gate", t)

    if not all(p["ok"] for p in par.values()):
        reason = "online/offline parity failed: " + ", ".join(v for v, p in par.items() if not p["ok"])
    elif gate["users"] < GATE_USERS:
        reason = (f"only {gate['users']} users have positives in the held-out {holdout_days:g} days "
                  f"(the gate needs {GATE_USERS}): wait for more feedback or pass a longer --holdout-days")
    elif not gate["passed"]:
        reason = (f"gate failed: candidate Recall@20 {gate['candidate']['recall@20']:.4f} < (1 - {tolerance}) x "
                  f"live {gate['live']['recall@20']:.4f}")
    elif not cut_over:
        reason = "checks passed; not cut over (--no-cut-over): `feast-autofeat promote` when ready"
    else:
        reason = ""
    done = not reason
    if done:
        dep = Deployments(repo)
        for name, version in new.items():
            dep.promote(name, version)
        dep.save()  # the one step: serving processes swap to the new two-tower within a second
        apply()
        reason = f"cut over: {ITEM_VIEW} {live} -> {tt.version}"
    say(reason)
    report = health_report(store, repo, new, previous=_previous_versions(root, live))
    return RefreshResult(live, tt.version, new, as_of.isoformat(), gate, par, done, reason, str(report),
                         time.perf_counter() - t0, steps)


def _previous_versions(root, live: str) -> dict:
    """The previous versions, per embedding: the live two-tower and the encoders it was trained with."""
    from feast_autofeat.artifacts import load_version

    encoders = load_version(root, "two_tower", live).config.get("encoders") or {}
    return {**encoders, ITEM_VIEW: live}


def rollback(repo: str | Path) -> dict:
    """Make the previous two-tower live again, with the encoder versions it was trained with (one write of
    ``embeddings.json``); returns {embedding: live version}."""
    from feast_autofeat.artifacts import load_version, model_root
    from feast_autofeat.feast.embeddings import Deployments

    dep = Deployments(repo)
    entry = dep.rollback(ITEM_VIEW)
    encoders = load_version(model_root(None, default=Path(repo) / "models"), "two_tower",
                            entry.live).config.get("encoders") or {}
    for name, version in encoders.items():
        if version and dep.get(name) and dep.get(name).live != version:
            dep.promote(name, version)
    dep.save()
    return {name: e.live for name, e in dep.entries.items()}
