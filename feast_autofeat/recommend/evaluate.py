"""One evaluation harness for every recommender: protocols, baselines, two-tower variants, one table.

``feast-autofeat evaluate --repo R [--protocols P,C,T] [--quick] [--out FILE]`` runs it on whatever data the
repo holds, for its ``two_tower`` declaration, in a scratch copy of the repo (``workspace``): the repo's own
``embeddings.json``, registry and online store are never touched.

Protocols (positives only, by the declaration's ``positive`` predicate; full ranking over the whole catalogue,
each user's known items excluded; Recall@K divided by min(K, targets); standard errors over users):

- **P** (primary): per user, the last 20% of positives by time are targets, everything earlier is history.
  Features are as of the user's first target time (point in time). Tuning uses the same cut repeated inside
  the history. Caveat (Sun et al. 2023, "A critical study on data leakage in recommender system offline
  evaluation"): one user's history can lie after another user's targets, so models trained on all histories
  see some "future" of the global timeline; the global split below has no such leak.
- **C** (new users): 10% of users are held out of all training; at request time only their first 5 positives
  (and their profile) are known; everything they did later is a target. On a small dataset one run scores few
  users, so ``pool`` combines runs with different held-out users and seeds into one table.
- **T** (global temporal; ``G`` is accepted too): train on the first 80% of positives by time, test on the rest,
  for users with at least one positive on each side.
- **N** (new items; run by default when the two-tower reads item embeddings, e.g. a text view of the items):
  T's cut; the targets are each test user's positives on the items whose first positive came after the cut
  (no model has seen them), ranked among those items only. Rows: the category-popularity baseline
  (``CategoryPopularity``), the two-tower with every learned group, without each item embedding, and as
  ``train`` ships it (gated; an item embedding is also judged on the same cut repeated inside the training
  events). Item text is not behaviour: the text views are materialized as of now, as serving would hold them.

Models: popularity, EASE, Mult-VAE (when the repo declares a session embedding), and the two-tower as ids only,
ids + history, without learned features, with every learned group (``two-tower learned``), without each one in
turn, and as ``train`` ships it (``two-tower``: learned groups gated on the inner validation, whose report the row
carries), then that same model with its item-item term off (``- item-item term``, when validation turned it on).
Every two-tower row also carries ``paired``: its per-user difference from each baseline on the same users, with
the standard error of those differences (much smaller than either model's own, as the users' difficulty
cancels).

Every protocol retrains the learned embeddings on its own training events only, deploys them as the live
versions (in the workspace), backfills daily snapshots, and builds training sets through the declaration's
query views, so the two-tower reads exactly what serving would have read.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from feast_autofeat.errors import AutofeatError
from feast_autofeat.evaluation import mean_se, summarize
from feast_autofeat.evaluation import per_user as metric_values
from feast_autofeat.feast.offline import TS, USER
from feast_autofeat.models.interactions import Histories
from feast_autofeat.models.metrics import hit_rate_at_k, ndcg_at_k, recall_at_k
from feast_autofeat.models.two_tower import STEERING
from feast_autofeat.recommend.data import Cut, cold_users_cut, histories, new_items_cut, per_user_cut
from feast_autofeat.recommend.train import TrainingSet, new_items_scores, validation

log = logging.getLogger(__name__)

METRICS = (("recall@10", recall_at_k, 10), ("recall@20", recall_at_k, 20), ("ndcg@10", ndcg_at_k, 10),
           ("hitrate@10", hit_rate_at_k, 10))
SHIPPED = "two-tower"  # the configuration ``train`` ships by default (learned groups gated)
WITHOUT_ITEM_ITEM = "  - item-item term"  # the shipped model scored with its item-item weight at 0 (when not 0)
BASELINES = ("popularity", "EASE", "Mult-VAE", "category popularity")
PAIRED = ("ndcg@10", "recall@20")  # the metrics of the targets, compared user by user with each baseline
PROTOCOLS = ("P", "C", "T", "N", "S")
# --quick: few epochs (early stopping usually ends ML-100K's fits within these anyway) and no "learned, ungated" row
QUICK = {"epochs": {"dae": 5, "gan": 5, "multvae": 15, "two_tower": 4}, "protocols": ("P", "C")}


def variants(decl, quick: bool = False) -> dict[str, dict]:
    """The two-tower rows of the table for a declaration: {row: ``TrainingSet.config`` arguments, plus
    ``gate``}."""
    plain = tuple(v.projection.name_to_use() for v in decl.query_views)
    item_views = tuple(v.projection.name_to_use() for v in decl.inputs)
    out = {"two-tower ids": {"groups": (), "item_groups": (), "history": False}}
    if not quick:
        out["two-tower ids + history"] = {"groups": (), "item_groups": (), "history": True}
    out["two-tower features (no learned)"] = {"groups": plain, "item_groups": item_views}
    if decl.learned:
        if not quick:
            out["two-tower learned"] = {}
        for name in decl.learned:
            out[f"  - {name}"] = {"groups": plain + tuple(n for n in decl.query_learned if n != name),
                                  "item_groups": item_views + tuple(n for n in decl.item_vector_sources
                                                                    if n != name)}
    out[SHIPPED] = {"gate": True}
    if not quick and any(d.kind == "embedding" and d.model == "gan" for d in decl.learned.values()):
        out["  + GAN augmentation"] = {"gan_augment": 2}  # synthetic behaviour rows for sparse users
    return out


def new_item_variants(decl) -> dict[str, dict]:
    """Protocol N's two-tower rows: every learned group, without each item embedding, as shipped (gated)."""
    plain = tuple(v.projection.name_to_use() for v in decl.query_views)
    item_views = tuple(v.projection.name_to_use() for v in decl.inputs)
    out = {"two-tower learned": {}}
    for name in decl.item_embeddings:
        out[f"  - {name}"] = {"groups": plain + tuple(decl.query_learned),
                              "item_groups": item_views + tuple(n for n in decl.item_vector_sources if n != name)}
    out[SHIPPED] = {"gate": True}
    return out


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    train_events: pd.DataFrame  # what every model may learn from
    cut: Cut  # test users: known history and targets
    candidates: np.ndarray | None = None  # the items ranked (None: the whole catalogue)


def protocol_p(events: pd.DataFrame) -> Protocol:
    cut = per_user_cut(events)
    return Protocol("P", "per-user temporal: last 20% of each user's positives are targets", cut.history, cut)


def protocol_c(events: pd.DataFrame, share: float = 0.1, known: int = 5, seed: int = 0) -> Protocol:
    train, cut = cold_users_cut(events, share=share, known=known, seed=seed)
    return Protocol("C", f"new users: {share:.0%} of users held out of training; their first {known} positives "
                    "known at request time, the rest are targets", train, cut)


def protocol_t(events: pd.DataFrame, train_share: float = 0.8) -> Protocol:
    t = events.event_timestamp.sort_values(ignore_index=True).iloc[int(train_share * (len(events) - 1))]
    train, test = events[events.event_timestamp < t], events[events.event_timestamp >= t]
    users = np.intersect1d(train.user_id.unique(), test.user_id.unique())
    cut = Cut(train[train.user_id.isin(users)].reset_index(drop=True),
              test[test.user_id.isin(users)].reset_index(drop=True))
    return Protocol("T", f"global temporal: train on positives before {t}, test after (users with both)",
                    train.reset_index(drop=True), cut)


protocol_g = protocol_t  # the name the earlier tables used


def protocol_n(events: pd.DataFrame, train_share: float = 0.8) -> Protocol:
    new = new_items_cut(events, train_share)
    return Protocol("N", f"new items: train on positives before {new.at}; targets: test users' positives on the "
                    f"{len(new.new_items)} items first seen after it, ranked among those items", new.train, new.cut,
                    new.new_items)


def paired(per_user: dict, references=()) -> dict:
    """{model: {baseline: {metric: {mean, se}}}}: each two-tower's per-user difference from each baseline (and
    each of ``references``, other rows) on the same users. Two models scored on the same users share most of
    their noise (which users are easy), so the difference's standard error is far smaller than either model's
    own: the comparison a target needs."""
    out = {}
    for name, values in per_user.items():
        if name in BASELINES:
            continue
        out[name] = {b: {m: mean_se(values[m] - per_user[b][m]) for m in PAIRED}
                     for b in (*BASELINES, *references) if b in per_user and b != name}
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


def train_encoders(project, decl, events: pd.DataFrame, seed: int = 0, progress: bool = False,
                   epochs: dict | None = None, every: str = "1D", steps: dict | None = None) -> dict:
    """Train the declaration's learned embeddings on ``events`` only (tabular ones on the users' features at
    those moments, history ones on those positives), deploy them live, apply, backfill the stored ones daily over
    the events' range. Returns {embedding name: version}."""
    from feast_autofeat.feast.deployments import view_name
    from feast_autofeat.feast.engine import LeakageWarning, backfill
    from feast_autofeat.training import train

    epochs = epochs if epochs is not None else {}
    steps = steps if steps is not None else {}
    rows = events[[USER, TS]].rename(columns={USER: decl.interactions.user_key})
    versions = {}
    for name, learned in decl.learned.items():
        t = time.perf_counter()
        cap = epochs.get(name, epochs.get(learned.model))
        kwargs = {"epochs": cap} if cap is not None else {}
        data = {"events": events} if learned.kind == "session" else {"entity_df": rows}
        if learned.model == "text":  # pretrained: training copies it (no data, no epochs)
            kwargs, data = {}, {}
        versions[name] = train(project, name, seed=seed, progress=progress, **data, **kwargs).version
        steps[f"train {name}"] = round(time.perf_counter() - t, 1)
    dep = project.deployments()
    for name, learned in decl.learned.items():
        dep.deploy(name, learned.model, versions[name], live=True)
    dep.save()
    project.apply()
    lo = events[TS].min().floor("D").to_pydatetime()
    hi = events[TS].max().ceil("D").to_pydatetime()
    now = datetime.now(timezone.utc).replace(microsecond=0)
    for name, learned in decl.learned.items():
        if learned.stored:
            t = time.perf_counter()
            # item text is not behaviour, and serving embeds a new item's text as soon as it exists: one
            # snapshot of every item's text as of now, not one a day
            start, stop = (now, now) if learned.model == "text" else (lo, hi)
            with warnings.catch_warnings():
                # snapshots inside the training range are the point: P's histories span the whole timeline
                warnings.simplefilter("ignore", LeakageWarning)
                backfill(project.store, view_name(name, versions[name]), start, stop,
                         pd.Timedelta(every).to_pytimedelta(), progress=progress)
            steps[f"backfill {name}"] = round(time.perf_counter() - t, 1)
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


def run_protocol(project, decl, protocol: Protocol, rows: dict | None = None, seed: int = 0,
                 progress: bool = False, epochs: dict | None = None, quick: bool = False, search=None) -> dict:
    """Every model of the table on one protocol: {model: metrics}, plus the protocol's description. ``rows``:
    the two-tower variants (default ``variants(decl)``); ``epochs``: caps per embedding or model name;
    ``quick``: only the shipped row is tuned (epochs, steering weights on the inner validation, gate); the other
    two-tower rows are fitted once with its choices, so they differ from it only in their inputs. ``search``:
    (a text view of the items, its version unless the two-tower reads it): the search table
    (``search_eval.repo_search_table``) on the same test users with the shipped two-tower, under ``search``."""
    from feast_autofeat.models.ease import CategoryPopularity, Popularity
    from feast_autofeat.models.two_tower import item_categories

    t0 = time.perf_counter()
    rows = variants(decl) if rows is None else rows
    epochs = epochs or {}
    steps = {}
    versions = train_encoders(project, decl, protocol.train_events, seed, progress, epochs, steps=steps)
    decl = project.two_tower(decl.name)
    store = project.store
    t = time.perf_counter()
    data = TrainingSet.build(store, decl, protocol.train_events, encoders=versions)
    item_ids = data.items.item_id.to_numpy()
    qframe, targets, known = validation(store, protocol.cut, item_ids, data.features)
    steps["training set (point in time)"] = round(time.perf_counter() - t, 1)
    table, per_user = {}, {}
    new = protocol.candidates

    def record(name: str, scores: np.ndarray, started: float, **fit) -> None:
        """One row: the metrics over the test users, the seconds it took, what the fit reported (``fit``)."""
        if new is not None:
            scores = new_items_scores(scores, item_ids, new)
        per_user[name] = metric_values(scores, known, targets, METRICS)
        table[name] = {**summarize(per_user[name]), "seconds": time.perf_counter() - started,
                       **({"fit": fit} if fit else {})}
        log.info("%s %s: recall@20 %.4f", protocol.name, name, table[name]["recall@20"]["mean"])

    train_h = histories(data.events, np.unique(data.events.user_id), item_ids)
    t = time.perf_counter()
    if new is not None:  # popularity, EASE and Mult-VAE know nothing of items without positives
        cats = item_categories(data.items, data.config().item_columns).numpy()
        record("category popularity", CategoryPopularity(cats).fit(train_h).score(known), t,
               categories=int(cats.shape[1]))
    else:
        record("popularity", Popularity().fit(train_h).score(known), t)
        t = time.perf_counter()
        ease, info = tune_ease(data, item_ids)
        record("EASE", ease.score(known), t, **info)
    sessions = [n for n, d in decl.learned.items() if d.kind == "session"] if new is None else []
    if sessions:
        t = time.perf_counter()
        record("Mult-VAE", multvae_scores(decl.root, versions[sessions[0]], known, item_ids), t)
    cap = epochs.get(decl.name, epochs.get("two_tower"))
    shared = None  # quick: the shipped row's tuning (epochs, steering weights), shared by the other rows
    for name in sorted(rows, key=lambda n: (not (quick and n == SHIPPED))):  # quick: the shipped row first
        t = time.perf_counter()
        variant = dict(rows[name])
        gate = variant.pop("gate", False)
        config = data.config(seed=seed, **variant, **({"epochs": cap} if cap is not None else {}))
        if shared is not None:
            model = data.fit(replace(config, **shared), tune=False, progress=progress)
        else:
            model = data.fit(config, gate=gate, progress=progress)
        if quick and name == SHIPPED:
            shared = {"epochs": model.metrics_["tuned_epochs"], "item_item_l2": model.config.item_item_l2,
                      **{f"{k}_weight": getattr(model.config, f"{k}_weight") for k in STEERING}}
        scores = model.score(qframe)
        record(name, scores, t, **{k: v for k, v in model.metrics_.items() if k != "train_seconds"})
        if name == SHIPPED and search is not None:
            from feast_autofeat.recommend.search_eval import repo_search_table

            t = time.perf_counter()
            text, text_version = search
            found = repo_search_table(store, text, versions.get(text.name, text_version),
                                      decl.interactions.item_key, data.items,
                                      model.config.item_columns or data.config().item_columns, scores, targets,
                                      known, seed=seed)
            steps["search table"] = round(time.perf_counter() - t, 1)
        if name == SHIPPED and model.item_item_dims() and new is None:  # the same model, item-item term off
            t, on = time.perf_counter(), model.config
            model.config = replace(on, item_item_weight=0.0, cold_item_item_weight=None)
            record(WITHOUT_ITEM_ITEM, model.score(qframe), t, item_item_weight=on.item_item_weight,
                   cold_item_item_weight=on.cold_item_item_weight)
            model.config = on
    derived = {SHIPPED: WITHOUT_ITEM_ITEM}
    # baselines, then the rows in their declared order, each followed by what was derived from it
    order = (*[n for n in table if n in BASELINES],
             *[x for n in rows for x in (n, derived.get(n)) if x in table])
    table, per_user = {n: table[n] for n in order}, {n: per_user[n] for n in order}
    references = [n for n in table if n.startswith("  - ")] if new is not None else []
    for name, comparisons in paired(per_user, references).items():
        table[name]["paired"] = comparisons
    return {"protocol": protocol.description, "train_events": len(protocol.train_events),
            "test_users": int((targets.lengths > 0).sum()), "targets": int(targets.lengths.sum()),
            "encoders": versions, "seconds": time.perf_counter() - t0, "steps_seconds": steps, "models": table,
            **({"search": found} if search is not None else {}),
            "per_user": per_user}  # {model: {metric: value per test user}}: not JSON; ``pool`` reads it


def _search_view(project, decl) -> tuple:
    """(the items' text view, its version): trained, deployed and materialized once in the workspace when the
    two-tower does not read it (no protocol retrains it: a text encoder is pretrained)."""
    from feast_autofeat.feast.deployments import view_name
    from feast_autofeat.feast.engine import backfill
    from feast_autofeat.recommend.search import item_text_view
    from feast_autofeat.training import train

    text = item_text_view(project, decl)
    if text.name in decl.learned:
        return text, None
    version = train(project, text.name).version
    dep = project.deployments()
    dep.deploy(text.name, "text", version, live=True)
    dep.save()
    project.apply()
    now = datetime.now(timezone.utc).replace(microsecond=0)
    backfill(project.store, view_name(text.name, version), now, now, progress=False)
    return text, version


def search_result(found: dict, protocol: str) -> dict:
    """``repo_search_table``'s table in ``flat``'s shape: rows as models, personalized search's paired
    differences under ``paired``."""
    from feast_autofeat.recommend.search_eval import PERSONALIZED

    models, diffs = {}, {}
    for name, row in found["rows"].items():
        models[name] = {"users": found["test_users"]}
        for m in ("recall@20", "ndcg@10"):
            models[name][m], models[name][f"{m}_se"] = row[m]["mean"], row[m]["se"]
        if "personalized minus this" in row:
            diffs[name] = row["personalized minus this"]
    return {"protocol": f"search ({protocol}'s test users and shipped two-tower; query: {found['query']}; text: "
            f"{found['text_view']} {found['text_version']})", "test_users": found["test_users"],
            "targets": found["test_interactions"], "queries": found["queries"], "models": models,
            "paired": {PERSONALIZED: diffs}}


# ---- the command: a scratch copy of the repo, the protocols, one JSON and one PNG
SKIP = {"models", "store", "reports", "embeddings.json", ".git", ".venv", "__pycache__"}


def workspace(repo: Path, yaml: str | None = None) -> Path:
    """A scratch copy of a feature repo for experiments that deploy and apply: its Python files copied, its
    YAML with the registry and online store moved into the copy (SQLite), every other entry linked (data read in
    place; a ``data`` directory is linked entry by entry, so snapshots of the copy's versions stay in the copy),
    an empty ``embeddings.json`` and its own model root."""
    import yaml as pyyaml

    from feast_autofeat.repo import yaml_path

    repo = Path(repo).resolve()
    dest = Path(tempfile.mkdtemp(prefix="autofeat-workspace-"))
    source = yaml_path(repo, yaml)
    config = pyyaml.safe_load(source.read_text()) or {}
    config["registry"] = {"registry_type": "file", "path": str(dest / "store" / "registry.db")}
    config["online_store"] = {"type": "sqlite", "path": str(dest / "store" / "online_store.db")}
    (dest / "store").mkdir()
    (dest / "feature_store.yaml").write_text(pyyaml.safe_dump(config, sort_keys=False))
    for entry in repo.iterdir():
        if entry.name in SKIP or entry == source or entry.name.startswith("feature_store"):
            continue
        target = dest / entry.name
        if entry.suffix == ".py":
            shutil.copy2(entry, target)
        elif entry.is_dir() and any(entry.rglob("*.py")):  # a package of definitions
            shutil.copytree(entry, target, ignore=shutil.ignore_patterns("__pycache__"))
        elif entry.is_dir() and entry.name == "data":
            target.mkdir()
            for item in entry.iterdir():
                if item.name not in ("embeddings", ".staging"):
                    os.symlink(item, target / item.name)
        else:
            os.symlink(entry, target)
    return dest


def flat(result: dict) -> dict:
    """A protocol's result in the shape other tools read: {"models": {name: {"recall@20": x, "ndcg@10": y,
    "users": n, ...}}, "paired": {model: {baseline: {metric: {mean, se}}}}, ...}."""
    models, pairs = {}, {}
    for name, row in result["models"].items():
        out = {"users": row.get("users"), "seconds": row.get("seconds")}
        for metric, value in row.items():
            if isinstance(value, dict) and "mean" in value:
                out[metric], out[f"{metric}_se"] = value["mean"], value["se"]
        if "gate" in row.get("fit", {}):
            out["gate"] = row["fit"]["gate"]
        models[name.strip()] = out
        if "paired" in row:
            pairs[name.strip()] = row["paired"]
    keep = {k: v for k, v in result.items() if k not in ("models", "per_user", "runs")}
    gates = [r["models"][SHIPPED]["fit"]["gate"] for r in result.get("runs", [])
             if "gate" in r["models"].get(SHIPPED, {}).get("fit", {})]
    return {**keep, "models": models, "paired": pairs, **({"gates_per_run": gates} if gates else {})}


def chart(result: dict, path: Path, title: str) -> None:
    """Recall@20 and NDCG@10 of every model per protocol, bars = 1 standard error (a PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result)
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 5.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        models = result[name]["models"]
        labels = list(models)
        for j, metric in enumerate(("recall@20", "ndcg@10")):
            means = [models[m][metric] for m in labels]
            ses = [models[m][f"{metric}_se"] for m in labels]
            ax.barh([i + 0.4 * j for i in range(len(labels))], means, height=0.4, xerr=ses, label=metric, capsize=2)
        ax.set_yticks([i + 0.2 for i in range(len(labels))], labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"protocol {name} ({result[name]['test_users']} test users)", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{title}: mean over test users, bars = 1 standard error", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table_text(result: dict, shown=("recall@20", "ndcg@10", "hitrate@10")) -> str:
    lines = []
    for name, res in result.items():
        lines.append(f"protocol {name}: {res['protocol']} ({res['test_users']} test users, {res['targets']} "
                     "targets)")
        # the paired column: vs EASE (P, C, T), vs category popularity (N), personalized search minus the row (S)
        search = name == "S"
        ref = "EASE" if "EASE" in res["models"] else "category popularity"
        title = "personalized minus (recall@20)" if search else f"vs {ref} (recall@20)"
        lines.append(f"  {'model':<34}" + "".join(f"{m:>18}" for m in shown) + f"{title:>32}")
        for model, row in res["models"].items():
            pairs = next(iter(res["paired"].values()), {}).get(model) if search else \
                (res["paired"].get(model) or {}).get(ref)
            diff = (pairs or {}).get("recall@20")
            lines.append(f"  {model:<34}" + "".join(f"{row[m]:>10.4f} ±{row[m + '_se']:.4f}" if m in row
                                                    else f"{'':>18}" for m in shown)
                         + (f"{diff['mean']:>+23.4f} ±{diff['se']:.4f}" if diff else ""))
        gate = res["models"].get(SHIPPED, {}).get("gate")
        for group, g in (gate or {}).items():
            lines.append(f"  gate: {group} {'kept' if g['kept'] else 'dropped'}: {g['reason']}")
    return "\n".join(lines)


def evaluate_repo(repo, yaml: str | None = None, protocols=None, quick: bool = False, seed: int = 0,
                  c_runs: int = 1, out: str | Path | None = None, name: str | None = None,
                  progress: bool = False, say=lambda _m: None, rows=None) -> dict:
    """``feast-autofeat evaluate``: the protocols on the repo's data for its two-tower, in a scratch copy. Saves
    the JSON (``out``, default ``<repo>/reports/evaluation-<time>.json``) and a PNG beside it; returns the
    result with ``json`` and ``png`` paths. ``rows``: only these two-tower rows (``variants``' names; default
    all), beside the baselines. ``protocols``: default P, C, T (``--quick``: P, C), N where the two-tower reads
    item embeddings, S where the repo declares a text view of its items."""
    from feast_autofeat.recommend.data import positive_events
    from feast_autofeat.recommend.search import item_text_view
    from feast_autofeat.repo import Repo

    source = Repo(repo, yaml)
    decl = source.two_tower(name)
    text = item_text_view(source, decl)
    if protocols is None:
        protocols = (*(QUICK["protocols"] if quick else ("P", "C", "T")), *(("N",) if decl.item_embeddings else ()),
                     *(("S",) if text is not None else ()))
    protocols = [{"G": "T"}.get(p.upper(), p.upper()) for p in protocols]
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad:
        raise AutofeatError(f"unknown protocol(s) {bad}: use {', '.join(PROTOCOLS)}.")
    if "S" in protocols and text is None:
        raise AutofeatError(f"protocol S (search) needs a text_embedding_view of {decl.interactions.item_key}, the "
                            f"items of {decl.name}; declare one (see docs/how-to/text.md).")
    t0 = time.perf_counter()
    scratch = workspace(source.path, yaml)
    cwd = os.getcwd()
    try:
        os.chdir(scratch)  # relative source paths resolve against the (copied) repo, as under Feast's CLI
        project = Repo(scratch)
        project.apply()
        decl = project.two_tower(decl.name)
        events = positive_events(project.store, decl)
        epochs = QUICK["epochs"] if quick else {}
        every = variants(decl, quick=quick)
        unknown = sorted(set(rows or ()) - set(every))
        if unknown:
            raise AutofeatError(f"unknown row(s) {unknown}: {decl.name}'s are {list(every)}.")
        rows = {k: v for k, v in every.items() if rows is None or k in rows}
        result = {}
        search = _search_view(project, decl) if "S" in protocols else None
        if "S" in protocols and "P" not in protocols:  # P's split with the shipped two-tower only
            protocols = [*(p for p in protocols if p != "S"), "P"]
            rows, only_search = {SHIPPED: every[SHIPPED]}, True
        else:
            protocols, only_search = [p for p in protocols if p != "S"], False
        for p in protocols:
            say(f"protocol {p} ...")
            if p == "C":
                runs = [run_protocol(project, decl, protocol_c(events, seed=s), rows, seed=s, progress=progress,
                                     epochs=epochs, quick=quick) for s in range(seed, seed + max(1, c_runs))]
                res = pool(runs) if len(runs) > 1 else runs[0]
            elif p == "N":
                res = run_protocol(project, decl, protocol_n(events), new_item_variants(decl), seed=seed,
                                   progress=progress, epochs=epochs, quick=quick)
            else:
                res = run_protocol(project, decl, (protocol_p if p == "P" else protocol_t)(events), rows,
                                   seed=seed, progress=progress, epochs=epochs, quick=quick,
                                   search=search if p == "P" else None)
            if "search" in res:
                result["S"] = search_result(res.pop("search"), "P")
                say(f"protocol S: {result['S']['test_users']} test users searching")
            if not (p == "P" and only_search):
                result[p] = flat(res)
                say(f"protocol {p}: {result[p]['test_users']} test users ({res['seconds']:.0f}s)")
    finally:
        os.chdir(cwd)
        shutil.rmtree(scratch, ignore_errors=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    path = Path(out) if out else source.path / "reports" / f"evaluation-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {"repo": source.path.name, "two_tower": decl.name, "when": stamp, "quick": quick, "seed": seed,
              "protocols": result, "seconds": time.perf_counter() - t0}
    import json

    path.write_text(json.dumps(report, indent=2, default=_json))
    chart(result, path.with_suffix(".png"), f"{source.path.name} ({decl.name})")
    return {**report, "json": str(path), "png": str(path.with_suffix(".png"))}


def _json(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
