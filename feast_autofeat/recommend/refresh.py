"""``feast-autofeat refresh``: retrain on everything logged so far, check, and cut over in one step.

1. **Features from the log**: users' recent items (the history view's table) are recomputed from the whole event
   log (prepared events plus feedback); in a prepared repo also the behaviour snapshots, and the manifest's
   range moves to the log's last event.
2. **Shadow versions**: the learned embeddings the two-tower declares (e.g. DAE, GAN, Mult-VAE) are retrained,
   warm-started from the live versions, on events up to ``as_of - holdout``; deployed beside the live ones (not
   live), the stored ones backfilled daily, and a two-tower is trained (and gated) on *their* features.
   ``feast materialize`` writes the new views (and the rebuilt history) to the online store; the live versions
   keep serving.
3. **Checks**: online/offline parity of every new view (the vectors Redis serves equal the offline snapshots);
   an evaluation gate on the held-out period (each user's positives after ``as_of - holdout``, ranked from
   features as of their first one): the candidate's Recall@20 must reach ``(1 - tolerance)`` x the live
   version's. A failed check leaves the live versions untouched and says why.
4. **Cut-over**: one write of ``embeddings.json`` makes the two-tower and its encoders live; serving processes
   pick it up within a second and swap versions between requests (``Recommender``). The previous version stays
   deployed: ``feast-autofeat rollback <two-tower name>`` goes back in one command.
5. **Embedding health** per view, as JSON and a PNG (``recommend.health``).

Warm start: a new encoder version starts from the live version's weights when the input schema is unchanged
(``init_from``), so refreshes converge in fewer epochs and keep the embedding space from flipping needlessly.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from feast_autofeat.errors import AutofeatError
from feast_autofeat.feast.offline import TS
from feast_autofeat.recommend.data import Cut, histories, positive_events, query_features, query_frame

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


def prepared_data(decl) -> Path | None:
    """The prepared data directory (``feast-autofeat prepare``) the declaration's repo reads, if it has one."""
    from feast_autofeat.datasets.base import MANIFEST

    return decl.data_dir if (decl.data_dir / MANIFEST).is_file() else None


def rebuild_features(project, decl) -> dict:
    """Recompute what derives from the event log so training, backfill and ``feast materialize`` see logged
    feedback: a prepared repo's snapshots, recent items and manifest (``prepare.rebuild``); elsewhere the
    declared history view's table (``feedback.rebuild_history``)."""
    from feast_autofeat.feast.offline import read_events
    from feast_autofeat.prepare import rebuild
    from feast_autofeat.recommend.feedback import rebuild_history

    data = prepared_data(decl)
    if data is not None:
        return rebuild(data)
    if decl.history is not None:
        rebuild_history(project.store, decl)
    ev = read_events(project.store, decl.interactions)
    return {"events": len(ev), "last_event": pd.Timestamp(ev[TS].max()).isoformat()}


def event_range(store, decl) -> tuple[datetime, datetime]:
    """Midnight of the log's first event's day, and the first midnight after its last event (daily snapshots
    cover that range, as the prepared behaviour snapshots do)."""
    from feast_autofeat.feast.offline import read_events

    ts = read_events(store, decl.interactions)[TS]
    lo = pd.Timestamp(ts.min()).floor("D").to_pydatetime()
    hi = (pd.Timestamp(ts.max()).floor("D") + pd.Timedelta(days=1)).to_pydatetime()
    return lo, hi


def materialize_window(store, decl) -> tuple[str, str]:
    """START and END for ``feast materialize`` covering the repo's data: a prepared repo's manifest window,
    else the log's range."""
    from feast_autofeat.datasets import load_manifest

    data = prepared_data(decl)
    if data is not None:
        return load_manifest(data).materialize_window()
    lo, hi = event_range(store, decl)
    fmt = "%Y-%m-%dT%H:%M:%S"
    return datetime(1970, 1, 2).strftime(fmt), (hi + timedelta(seconds=1)).strftime(fmt)


def holdout_cut(events: pd.DataFrame, cut: datetime, as_of: datetime) -> Cut:
    """History: positives at or before ``cut``; targets: positives in ``(cut, as_of]`` of users with history."""
    ts = events.event_timestamp
    hist = events[ts <= pd.Timestamp(cut)]
    fut = events[(ts > pd.Timestamp(cut)) & (ts <= pd.Timestamp(as_of))]
    fut = fut[fut.user_id.isin(hist.user_id.unique())]
    return Cut(hist[hist.user_id.isin(fut.user_id.unique())].reset_index(drop=True), fut.reset_index(drop=True))


def score_version(store, decl, root, version: str, cut: Cut) -> dict:
    """Recall@20 / NDCG@10 of a two-tower version on a cut, reading its own pinned query features."""
    from feast_autofeat.models.metrics import ndcg_at_k, recall_at_k
    from feast_autofeat.models.two_tower import TwoTower

    model = TwoTower.load(root, version)
    q = query_frame(store, cut.queries(), query_features(store, decl, model.saved_config_.get("encoders") or {}))
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


def refresh(repo, yaml: str | None = None, as_of=None, holdout_days: float = 7.0, tolerance: float = 0.02,
            epochs: dict | None = None, seed: int = 0, cut_over: bool = True, progress: bool = False,
            say: Callable[[str], None] = lambda _m: None, name: str | None = None) -> RefreshResult:
    """Steps 1-5 of the module doc for the repo's two-tower (``name``, or its only one); returns what was done,
    the gate's figures and whether it cut over. ``epochs`` caps training per embedding or model name (e.g.
    ``{"dae": 5, "two_tower": 10}``)."""
    from feast_autofeat.repo import Repo

    project = Repo(repo, yaml)
    with project.inside():
        return _refresh(project, project.two_tower(name), as_of, holdout_days, tolerance, epochs or {}, seed,
                        cut_over, progress, say)


def restore_online(repo, yaml: str | None = None, name: str | None = None,
                   say: Callable[[str], None] = lambda _m: None) -> dict:
    """Rebuild the online store from the offline side, for one that lost its data (a Redis restarted without
    persistence): the log-derived tables are recomputed from the event log (feedback included), then
    ``feast materialize`` over the data's whole window writes every view, the live embedding versions and the
    users' history lists, again. Nothing is trained; the live versions stay. Returns what it did."""
    from feast_autofeat.repo import Repo, run_feast

    project = Repo(repo, yaml)
    with project.inside():
        decl = project.two_tower(name)
        t0 = time.perf_counter()
        rebuilt = rebuild_features(project, decl)
        project.reload()
        decl = project.two_tower(decl.name)
        say(f"rebuilt the log-derived tables from {rebuilt['events']:,} events ({time.perf_counter() - t0:.0f}s)")
        t = time.perf_counter()
        start, end = materialize_window(project.store, decl)
        run_feast(project.path, "materialize", start, end, yaml=project.yaml)
        say(f"feast materialize {start} {end} ({time.perf_counter() - t:.0f}s)")
        return {"events": rebuilt["events"], "last_event": rebuilt["last_event"], "window": [start, end],
                "seconds": round(time.perf_counter() - t0, 1)}


def _refresh(project, decl, as_of, holdout_days: float, tolerance: float, epochs: dict, seed: int,
             cut_over: bool, progress: bool, say) -> RefreshResult:
    from feast_autofeat.feast.deployments import view_name
    from feast_autofeat.feast.engine import LeakageWarning, backfill
    from feast_autofeat.feast.offline import parse_time
    from feast_autofeat.recommend.health import health_report
    from feast_autofeat.repo import run_feast
    from feast_autofeat.training import train

    t0 = time.perf_counter()
    yaml = project.yaml
    root = decl.root
    dep = project.deployments()
    live = dep.live(decl.name)
    if live is None:
        raise AutofeatError(f"no live {decl.name} in {project.path}: build one first (`feast-autofeat train "
                            f"{decl.name}`, `deploy`, `feast materialize`).")
    steps = {}

    def step(label: str, t: float) -> None:
        steps[label] = round(time.perf_counter() - t, 1)
        say(f"{label} ({steps[label]:.0f}s)")

    def cap(n: str, model: str) -> dict:
        value = epochs.get(n, epochs.get(model))
        return {"epochs": value} if value is not None else {}

    t = time.perf_counter()
    rebuilt = rebuild_features(project, decl)
    project.reload()
    decl = project.two_tower(decl.name)
    as_of = parse_time(as_of) or datetime.fromisoformat(rebuilt["last_event"]).astimezone(timezone.utc)
    cut = as_of - timedelta(days=holdout_days)
    step(f"rebuilt features from {rebuilt['events']:,} logged events (last {rebuilt['last_event']})", t)

    t = time.perf_counter()
    new = {}
    for n, learned in decl.learned.items():
        if learned.model == "text":  # pretrained, not retrained: the live version stays (trained once if none)
            new[n] = dep.live(n) or train(project, n).version
        else:
            new[n] = train(project, n, as_of=cut, seed=seed, progress=progress, init_from=dep.live(n),
                           **cap(n, learned.model)).version
        dep.deploy(n, learned.model, new[n])
    dep.save()
    project.apply()
    decl = project.two_tower(decl.name)
    step(f"trained encoders on events up to {cut:%Y-%m-%d %H:%M} (warm start): "
         + ", ".join(f"{n} {v}" for n, v in new.items()), t)

    t = time.perf_counter()
    store = project.store
    lo, hi = event_range(store, decl)
    stored = [n for n, d in decl.learned.items() if d.stored]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LeakageWarning)  # serving snapshots: the model may have seen the past
        for n in stored:  # a text view: one snapshot, at the end (text is not behaviour)
            start = hi if decl.learned[n].model == "text" else lo
            backfill(store, view_name(n, new[n]), start, hi, timedelta(days=1), progress=progress)
    step(f"backfilled the new encoders daily {lo.date()} .. {hi.date()}", t)

    t = time.perf_counter()
    tt = train(project, decl.name, as_of=cut, seed=seed, progress=progress, encoders=new,
               **cap(decl.name, "two_tower"))
    new[decl.name] = tt.version
    dep = project.deployments()
    dep.deploy(decl.name, "two_tower", tt.version)
    dep.save()
    project.apply()
    decl = project.two_tower(decl.name)
    step(f"trained two-tower {tt.version} on the new encoders' features", t)

    t = time.perf_counter()
    start, stop = materialize_window(project.store, decl)
    end = max(datetime.fromisoformat(stop), as_of.replace(tzinfo=None) + timedelta(seconds=1))
    shadow = {view_name(n, new[n]): decl.learned[n].key for n in stored}
    shadow[view_name(decl.name, tt.version)] = decl.key
    views = [*shadow, *([decl.history_name] if decl.history_name else [])]
    run_feast(project.path, "materialize", start, end.strftime("%Y-%m-%dT%H:%M:%S"),
              *[a for v in views for a in ("--views", v)], yaml=yaml, capture=True)
    step(f"materialized the shadow views {', '.join(shadow)}", t)

    t = time.perf_counter()
    project.reload()
    store = project.store
    par = parity(store, shadow)
    events = positive_events(store, decl)
    holdout = holdout_cut(events, cut, as_of)
    gate = {"period": [cut.isoformat(), as_of.isoformat()], "tolerance": tolerance,
            "users": int(holdout.future.user_id.nunique())}
    if gate["users"] >= GATE_USERS:
        gate["live"] = score_version(store, decl, root, live, holdout)
        gate["candidate"] = score_version(store, decl, root, tt.version, holdout)
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
        dep = project.deployments()
        for n, version in new.items():
            dep.promote(n, version)
        dep.save()  # the one step: serving processes swap to the new two-tower within a second
        project.apply()
        reason = f"cut over: {decl.name} {live} -> {tt.version}"
    say(reason)
    report = health_report(store, project.path, new, previous=_previous_versions(decl, root, live),
                           declarations=project.declarations)
    return RefreshResult(live, tt.version, new, as_of.isoformat(), gate, par, done, reason, str(report),
                         time.perf_counter() - t0, steps)


def _previous_versions(decl, root, live: str) -> dict:
    """The previous versions, per embedding: the live two-tower and the encoders it was trained with."""
    from feast_autofeat.artifacts import load_version

    encoders = load_version(root, "two_tower", live).config.get("encoders") or {}
    return {**encoders, decl.name: live}


def rollback(repo, name: str | None = None) -> dict:
    """Make the previous two-tower live again, with the encoder versions it was trained with (one write of
    ``embeddings.json``); returns {embedding: live version}."""
    from feast_autofeat.artifacts import load_version
    from feast_autofeat.repo import Repo

    project = Repo.of(repo)
    decl = project.two_tower(name)
    dep = project.deployments()
    entry = dep.rollback(decl.name)
    encoders = load_version(decl.root, "two_tower", entry.live).config.get("encoders") or {}
    for n, version in encoders.items():
        if version and dep.get(n) and dep.get(n).live != version:
            dep.promote(n, version)
    dep.save()
    return {n: e.live for n, e in dep.entries.items()}
