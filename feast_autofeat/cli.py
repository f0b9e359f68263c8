"""The ``feast-autofeat`` command line. Feast's own CLI (``feast apply``, ``feast materialize``) stays as is.

Every command works on the declarations of a feature repo (``--repo``, default: the current directory when it
holds a ``feature_store.yaml``, as Feast's own CLI does, else ``feature_repo``; ``-f`` picks another YAML).
Nothing succeeds silently: a flag that does not apply is an error, and a command that did nothing says so.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from feast_autofeat import __version__
from feast_autofeat.errors import AutofeatError
from feast_autofeat.recommend.batching import MAX_BATCH
from feast_autofeat.recommend.security import MAX_BODY_BYTES, MAX_EVENTS


def _repo(args):
    from feast_autofeat.repo import Repo

    return Repo(args.repo, args.feature_store_yaml)


def _cmd_prepare(args: argparse.Namespace) -> int:
    from feast_autofeat.datasets.logfile import parse_columns, parse_split
    from feast_autofeat.datasets.synthetic import SyntheticConfig
    from feast_autofeat.prepare import prepare

    own, config = {}, None
    if args.interactions is not None:  # your own log: --users / --items are files
        for flag in ("days", "events", "popularity_skew"):
            if getattr(args, flag) is not None:
                raise AutofeatError(f"--{flag.replace('_', '-')} applies to --dataset synthetic only.")
        own = dict(interactions=args.interactions, users=args.users, items=args.items,
                   columns=parse_columns(args.columns), split=parse_split(args.split), positive=args.positive)
    else:
        extra = [f for f, v in (("--columns", args.columns), ("--split", args.split), ("--positive", args.positive))
                 if v]
        if extra:
            raise AutofeatError(f"{', '.join(extra)} apply to --interactions (your own log) only.")
        given = {k: getattr(args, k) for k in ("users", "items", "days", "events", "popularity_skew")
                 if getattr(args, k) is not None}
        if args.dataset == "synthetic":  # unset options keep SyntheticConfig's defaults; --users / --items: counts
            for k in ("users", "items"):
                if k in given and not str(given[k]).isdigit():
                    raise AutofeatError(f"--{k} of --dataset synthetic is a number of {k}, got {given[k]!r}.")
                if k in given:
                    given[k] = int(given[k])
            config = SyntheticConfig(**given, seed=args.seed, start=args.start)
        elif given:
            flags = ", ".join("--" + k.replace("_", "-") for k in given)
            raise AutofeatError(f"{flags} apply to --dataset synthetic or --interactions (--users / --items files) "
                                "only.")
    result = prepare(args.dataset, args.repo, raw_dir=args.data_dir, config=config,
                     progress=lambda msg: print(f"  {msg} ...", flush=True), max_per_user=args.max_per_user,
                     subsample_seed=args.subsample_seed, **own)
    m = result.manifest
    print(f"prepared {m.dataset} in {result.seconds:.1f}s -> {result.data_dir}")
    for name, n in m.rows.items():
        print(f"  {name:<16} {n:>12,} rows")
    print(f"  events from {m.time_range[0]} to {m.time_range[1]}")
    print(f"  snapshots from {m.snapshot_range[0]} to {m.snapshot_range[1]}")
    print(f"  ids: users {m.user_kind}, items {m.item_kind}; positive: {(m.spec.positive if m.spec else '')}")
    if m.params.get("duplicates_dropped"):
        print(f"  {m.params['duplicates_dropped']:,} exact duplicate rows dropped")
    start, end = m.materialize_window()
    print(f"next: cd {args.repo} && feast apply && feast materialize {start} {end}")
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from feast_autofeat.quickstart import run_quickstart

    run_quickstart(Path(args.repo), users=args.users, show=args.show)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from feast_autofeat.training import train

    repo = _repo(args)
    decl = repo.declaration(args.name)
    overrides = {k: v for k, v in (("epochs", args.epochs), ("dim", args.dim)) if v is not None}
    if args.gan_augment:
        overrides["gan_augment"] = args.gan_augment
    if args.no_gate:
        if decl.kind != "two_tower":
            raise AutofeatError(f"--no-gate applies to a two-tower only, not to {args.name} ({decl.model}).")
        overrides["gate"] = False
    print(f"training {args.name} ({decl.model}) from {repo.path} as of {args.as_of or 'the last event'} ...",
          flush=True)
    result = train(repo, args.name, as_of=args.as_of, entity_df=args.entity_df, max_rows=args.max_rows,
                   root=args.model_root, seed=args.seed, **overrides)
    print(result.summary())
    return 0


def _engine_hint(repo, decl) -> None:
    """Say so when a stored embedding is deployed where ``feast materialize`` would not compute it."""
    from feast_autofeat.feast.embeddings import ENGINE_YAML, _engine_type

    engine = _engine_type(repo.store.config)
    if decl.stored and not engine.endswith("AutofeatEngine"):
        print(f"warning: {repo.yaml_file.name}'s batch engine is {engine!r}, so `feast materialize` will not "
              f"compute {decl.name}. Add to it:\n{ENGINE_YAML}", file=sys.stderr)


def _finish_deploy(args, repo, deployments, entry, name: str) -> int:
    before = deployments.path.read_bytes() if deployments.path.exists() else None
    deployments.save()
    print(f"{name}: model {entry.model}, live {entry.live}, deployed {', '.join(entry.versions)}")
    if args.no_apply:
        print(f"next: cd {repo.path} && feast apply")
        return 0
    try:
        repo.apply()
    except Exception as exc:  # put embeddings.json back: the registry still matches the old one
        if before is None:
            deployments.path.unlink()
        else:
            deployments.path.write_bytes(before)
        raise AutofeatError(f"`feast apply` failed, so {deployments.path.name} was left unchanged: {exc}") from exc
    decl = repo.declaration(name)
    print(f"applied: feature service {name} now serves {name}__{entry.live}")
    _engine_hint(repo, decl)
    if decl.stored:
        print(f"next: feast materialize START END (or `feast-autofeat backfill {name} --start .. --end ..`)")
    return 0


def trained_versions(decl) -> list[str]:
    """Versions of the declaration's model under its model root that were trained for it (oldest first)."""
    from feast_autofeat.artifacts import list_versions, load_version

    out = []
    for version in list_versions(decl.root, decl.model):
        try:
            config = load_version(decl.root, decl.model, version).config
        except AutofeatError:
            continue
        if config.get("declaration") == decl.name:
            out.append(version)
    return out


def _cmd_deploy(args: argparse.Namespace) -> int:
    from feast_autofeat.artifacts import load_version

    repo = _repo(args)
    decl = _own_versions(repo.declaration(args.name), "deploy")
    root = args.model_root.resolve() if args.model_root else decl.root
    version = args.version
    if version in (None, "latest"):
        versions = trained_versions(decl) if not args.model_root else []
        if not versions:
            raise AutofeatError(f"no version of {args.name} is trained under {root}: run `feast-autofeat train "
                                f"{args.name}` first (or pass --version).")
        version = versions[-1]
    art = load_version(root, decl.model, version)  # exists and is intact (content hash)
    decl.check_version(version, art.config)  # fits the declaration: same inputs, dimension, key
    deployments = repo.deployments()
    entry = deployments.deploy(args.name, decl.model, version, live=args.live)
    return _finish_deploy(args, repo, deployments, entry, args.name)


def _own_versions(decl, command: str):
    """``decl``, when it has versions of its own to ``command`` (a query view that follows a text view has not)."""
    if decl.follows:
        raise AutofeatError(f"{decl.name} serves the versions of {decl.follows}: `feast-autofeat {command} "
                            f"{decl.follows}` moves both.")
    return decl


def _cmd_promote(args: argparse.Namespace) -> int:
    repo = _repo(args)
    _own_versions(repo.declaration(args.name), "promote")
    deployments = repo.deployments()
    entry = deployments.promote(args.name, args.version)
    return _finish_deploy(args, repo, deployments, entry, args.name)


def _cmd_rollback(args: argparse.Namespace) -> int:
    repo = _repo(args)
    decl = _own_versions(repo.declaration(args.name), "rollback")
    if decl.kind == "two_tower":  # the recommender: its previous version with the encoders it was trained on
        from feast_autofeat.recommend.refresh import rollback

        rollback(repo, args.name)
        deployments = repo.deployments()
        return _finish_deploy(args, repo, deployments, deployments.get(args.name), args.name)
    deployments = repo.deployments()
    entry = deployments.rollback(args.name)
    return _finish_deploy(args, repo, deployments, entry, args.name)


def _cmd_refresh(args: argparse.Namespace) -> int:
    import json

    from feast_autofeat.recommend.refresh import refresh, restore_online

    if args.online_only:
        given = [flag for flag, on in (("--as-of", args.as_of), ("--epochs", args.epochs),
                                       ("--no-cut-over", args.no_cut_over)) if on]
        if given:
            raise AutofeatError(f"{', '.join(given)} do(es) not apply to --online-only (it trains nothing).")
        result = restore_online(args.repo, yaml=args.feature_store_yaml, name=args.name,
                                say=lambda m: print(m, flush=True))
        print(json.dumps(result, indent=2))
        return 0
    epochs = {}
    for item in args.epochs or []:
        model, _, n = item.partition("=")
        if not n.isdigit():
            raise AutofeatError(f"--epochs {item!r}: use NAME=N, e.g. dae=5 or two_tower=10.")
        epochs[model] = int(n)
    result = refresh(args.repo, yaml=args.feature_store_yaml, as_of=args.as_of, holdout_days=args.holdout_days,
                     tolerance=args.tolerance, epochs=epochs, seed=args.seed, cut_over=not args.no_cut_over,
                     progress=True, say=lambda m: print(m, flush=True), name=args.name)
    print(json.dumps({"cut_over": result.cut_over, "reason": result.reason, "versions": result.versions,
                      "gate": result.gate, "health": result.health}, indent=2, default=str))
    return 0 if result.cut_over or args.no_cut_over else 1


def _cmd_embeddings(args: argparse.Namespace) -> int:
    repo = _repo(args)
    deployments = repo.deployments()
    declared = repo.declarations
    if not declared:
        print(f"{repo.path} declares no embeddings (see the guide \"Add learned embeddings to your own Feast repo\")")
    for name, decl in sorted(declared.items()):
        owner = decl.follows or name
        entry = deployments.get(owner)
        print(f"{name}  ({decl.kind}, model {decl.model})" + (f"  follows {owner}" if decl.follows else "")
              + ("" if entry else f"  not deployed: `feast-autofeat train {owner}` then `feast-autofeat deploy "
                 f"{owner}`"))
        for v in entry.versions if entry else []:
            print(f"  {'*' if v == entry.live else ' '} {name}__{v}")
    stale = sorted(set(deployments.entries) - set(declared))
    for name in stale:
        print(f"{name}  deployed in {deployments.path.name} but no longer declared (its views are not registered)")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from feast_autofeat.recommend.security import load_tokens
    from feast_autofeat.recommend.service import serve

    for flag, value in (("--max-body-bytes", args.max_body_bytes), ("--max-events", args.max_events),
                        ("--store-timeout", args.store_timeout), ("--workers", args.workers),
                        ("--max-batch", args.max_batch)):
        if value <= 0:
            raise AutofeatError(f"{flag} must be positive, got {value}.")
    if not 0 <= args.search_weight < float("inf"):
        raise AutofeatError(f"--search-weight must be a finite number >= 0, got {args.search_weight}.")
    tokens = load_tokens(args.tokens_file, args.no_auth)  # before the repo: a missing token fails at once
    repo = _repo(args)
    os.chdir(repo.path)  # as `feast serve`: relative source paths resolve against the repo
    auth = "no authentication (--no-auth)" if tokens is None else "bearer tokens"
    print(f"serving {repo.path} on http://{args.host}:{args.port} (docs: /docs; {auth})", flush=True)
    serve(repo.path, host=args.host, port=args.port, index=args.index, yaml=args.feature_store_yaml, name=args.name,
          tokens=tokens, max_body_bytes=args.max_body_bytes, max_events=args.max_events,
          store_timeout=args.store_timeout, workers=args.workers, max_batch=args.max_batch,
          search_view=args.search_view, search_weight=args.search_weight)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from feast_autofeat.recommend.evaluate import evaluate_repo, table_text

    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()] if args.protocols else None
    shown = ", ".join(protocols) if protocols else "the default protocols"
    print(f"evaluating {args.repo} ({shown}{', quick' if args.quick else ''}) in a scratch copy of the repo ...",
          flush=True)
    result = evaluate_repo(args.repo, args.feature_store_yaml, protocols=protocols, quick=args.quick,
                           seed=args.seed, c_runs=args.c_runs, out=args.out, name=args.name,
                           say=lambda m: print(f"  {m}", flush=True))
    print(table_text(result["protocols"]))
    print(f"saved {result['json']} and {result['png']} ({result['seconds']:.0f}s)")
    return 0


def parse_every(text: str):
    from datetime import timedelta

    units = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
    try:
        return timedelta(**{units[text[-1]]: float(text[:-1])})
    except (KeyError, ValueError, IndexError):
        raise AutofeatError(f"--every {text!r}: use a number and a unit d/h/m/s, e.g. 1d or 6h.") from None


def _cmd_backfill(args: argparse.Namespace) -> int:
    import warnings

    from feast_autofeat.feast.engine import LeakageWarning, backfill
    from feast_autofeat.feast.offline import parse_time

    repo = _repo(args)
    decl = repo.declaration(args.name)
    if not decl.stored:
        raise AutofeatError(f"{args.name} is computed on demand ({decl.kind}); only stored embeddings have "
                            "snapshots to backfill.")
    deployments = repo.deployments()
    entry = deployments.get(args.name)
    if entry is None:
        raise AutofeatError(f"{args.name} has no deployed version in {repo.path}: `feast-autofeat deploy "
                            f"{args.name}` first.")
    version = deployments.resolve(args.name, args.version or entry.live)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LeakageWarning)
        summary = backfill(repo.store, f"{args.name}__{version}", parse_time(args.start, "--start"),
                           parse_time(args.end, "--end"), parse_every(args.every))
    for w in caught:
        if issubclass(w.category, LeakageWarning):
            print(f"warning: {w.message}", file=sys.stderr)
    print(f"backfilled {summary['view']}: {summary['snapshots']} snapshots ({summary['first']} .. "
          f"{summary['last']}), {summary['rows']:,} rows -> {summary['directory']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from feast_autofeat.repo import default_repo

    parser = argparse.ArgumentParser(
        prog="feast-autofeat",
        description="Learned features as first-class Feast feature views. Use Feast's own CLI for "
        "`feast apply` and `feast materialize`; this tool prepares data, trains, deploys and evaluates the "
        "embeddings your repo declares.",
    )
    parser.add_argument("--version", action="version", version=f"feast-autofeat {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    repo_help = "feature repo (default: the current directory if it holds feature_store.yaml, else feature_repo)"

    def repo_options(p: argparse.ArgumentParser, yaml: bool = True) -> None:
        p.add_argument("--repo", type=Path, default=None, help=repo_help)
        if yaml:
            p.add_argument("--feature-store-yaml", "-f", help="YAML inside the repo (default feature_store.yaml)")

    p = sub.add_parser("prepare", help="write the parquet tables a prepared feature repo reads (MovieLens, synthetic "
                       "or your own interaction log)",
                       description="Read raw data (or generate synthetic data) and write <repo>/data: "
                       "interactions, users, items, daily behaviour snapshots and users' recent items, "
                       "atomically (on any error the previous data is untouched).")
    p.add_argument("--dataset", choices=["movielens-100k", "synthetic"], help="a built-in dataset")
    p.add_argument("--data-dir", type=Path, help="movielens-100k: folder with the raw GroupLens files u.data, "
                   "u.user, u.item")
    repo_options(p, yaml=False)
    o = p.add_argument_group("your own log (instead of --dataset)")
    o.add_argument("--interactions", type=Path, help="the interaction log, CSV or parquet")
    o.add_argument("--users", help="with --interactions: a users file (profile columns; its ids in a column named "
                   "as the log's user column). With --dataset synthetic: the number of users (default 2000)")
    o.add_argument("--items", help="with --interactions: an items file (profile columns, categories). With "
                   "--dataset synthetic: the number of items (default 500)")
    o.add_argument("--columns", help="user_id=COL,item_id=COL,event_timestamp=COL[,rating=COL][,event_type=COL]")
    o.add_argument("--split", action="append", metavar="COL=SEP", help="an items column of delimiter-separated "
                   "values to split into categories, e.g. 'genres=|' (repeatable)")
    o.add_argument("--positive", metavar="EXPR", help="SQL predicate of a positive event, e.g. 'rating >= 4' "
                   "(default: the top quarter of the rating scale, else every event)")
    s = p.add_argument_group("sparser data (any source)")
    s.add_argument("--max-per-user", type=int, metavar="N", help="keep at most N distinct items per user, drawn at "
                   "random with all their events and times: a sparse log from a dense one")
    s.add_argument("--subsample-seed", type=int, default=0, help="the draw of --max-per-user")
    g = p.add_argument_group("synthetic data")
    g.add_argument("--days", type=int, help="length of the period in days (default 60)")
    g.add_argument("--events", type=int, help="number of events (default 60 per user)")
    g.add_argument("--popularity-skew", type=float, help="spread of the items' log popularity (default 1.5; "
                   "sparse, head-heavy catalogues: 2.5)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--start", default="2025-01-01", help="first day of the period (UTC)")
    p.set_defaults(func=_cmd_prepare)

    t = sub.add_parser("train", help="train a declared embedding or two-tower from the store's point-in-time data",
                       description="Train the model the repo declares under NAME on exactly its declared inputs "
                       "(get_historical_features, point in time, data at or before --as-of), with early stopping "
                       "on held-out entities, and save a hash-verified version (safetensors + JSON) that records "
                       "its feature refs, join key and key type.")
    t.add_argument("name", help="a name the repo declares (embedding_view, session_embedding_view, "
                   "request_embedding_view or two_tower)")
    repo_options(t)
    t.add_argument("--as-of", help="use data at or before this time (ISO 8601, UTC); default: all")
    t.add_argument("--entity-df", type=Path, help="tabular embeddings: training rows (parquet or CSV with the join "
                   "key and event_timestamp); default: the input views' own source rows")
    t.add_argument("--max-rows", type=int, help="tabular embeddings: sample size of the default rows (50,000)")
    t.add_argument("--model-root", type=Path, help="where versions are written (default: the declaration's root, "
                   "$AUTOFEAT_MODEL_ROOT or <repo>/models)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epochs", type=int, help="maximum epochs (early stopping may end sooner)")
    t.add_argument("--dim", type=int, help="embedding dimension (default: the declaration's)")
    t.add_argument("--gan-augment", type=int, default=0, metavar="N",
                   help="two-tower: add N GAN-synthesized behaviour rows per training row of each sparse user "
                   "(at most 20 positives); default 0 (off)")
    t.add_argument("--no-gate", action="store_true", help="two-tower: keep every learned embedding, even those that "
                   "do not improve the inner validation")
    t.set_defaults(func=_cmd_train)

    def deploy_options(p: argparse.ArgumentParser) -> None:
        repo_options(p)
        p.add_argument("--no-apply", action="store_true", help="only edit embeddings.json; run `feast apply` later")

    d = sub.add_parser("deploy", help="deploy a trained version of a declared embedding (beside live ones)",
                       description="Add a version to <repo>/embeddings.json and `feast apply`: the repo then "
                       "registers view <name>__<version>. The first version of a name also becomes live.")
    d.add_argument("name", help="a name the repo declares, e.g. user_dae")
    d.add_argument("--version", help="model version hash (default: the newest trained for this name)")
    d.add_argument("--live", action="store_true", help="also make it the live version")
    d.add_argument("--model-root", type=Path, help="where the version lies (default: the declaration's root)")
    deploy_options(d)
    d.set_defaults(func=_cmd_deploy)

    pr = sub.add_parser("promote", help="make a deployed version live (one registry change; reversible)")
    pr.add_argument("name")
    pr.add_argument("version", help="a deployed version (a unique prefix is enough)")
    deploy_options(pr)
    pr.set_defaults(func=_cmd_promote)

    rb = sub.add_parser("rollback", help="make the previous live version live again (a two-tower: with the encoder "
                        "versions it was trained with)")
    rb.add_argument("name")
    deploy_options(rb)
    rb.set_defaults(func=_cmd_rollback)

    rf = sub.add_parser("refresh", help="retrain the two-tower's embeddings and the two-tower on everything logged, "
                        "check them in shadow (parity, evaluation gate) and cut over in one step",
                        description="See feast_autofeat/recommend/refresh.py. Exit 0: cut over; 1: a check "
                        "failed and the live versions are untouched (the reason is printed).")
    rf.add_argument("--name", help="the two-tower (default: the repo's only one)")
    rf.add_argument("--as-of", help="train on events up to this time (default: the log's last event)")
    rf.add_argument("--holdout-days", type=float, default=7.0, help="the gate's held-out period (default 7)")
    rf.add_argument("--tolerance", type=float, default=0.02,
                    help="the candidate may be this much worse than live on Recall@20, relatively (default 0.02)")
    rf.add_argument("--epochs", nargs="*", metavar="NAME=N", help="cap epochs per model or embedding, e.g. dae=5 "
                    "two_tower=10")
    rf.add_argument("--seed", type=int, default=0)
    rf.add_argument("--no-cut-over", action="store_true", help="run every check, leave the live versions")
    rf.add_argument("--online-only", action="store_true", help="train nothing: rebuild the online store from the "
                    "log and the offline store (after a Redis lost its data)")
    repo_options(rf)
    rf.set_defaults(func=_cmd_refresh)

    e = sub.add_parser("embeddings", help="list declared embeddings and their deployed versions (* = live)")
    repo_options(e)
    e.set_defaults(func=_cmd_embeddings)

    b = sub.add_parser("backfill", help="write point-in-time snapshots of a stored embedding for past times",
                       description="For each time START, START+EVERY, ... <= END, encode every entity's inputs "
                       "as of that time and write the snapshot atomically. Warns when the model's training "
                       "window overlaps the range (leakage).")
    b.add_argument("name", help="a stored embedding the repo declares, e.g. user_dae")
    b.add_argument("--start", required=True, help="first snapshot time (ISO 8601, UTC)")
    b.add_argument("--end", required=True, help="last snapshot time (inclusive)")
    b.add_argument("--every", default="1d", help="spacing, e.g. 1d, 6h (default 1d)")
    b.add_argument("--version", help="deployed version (default: the live one)")
    repo_options(b)
    b.set_defaults(func=_cmd_backfill)

    ev = sub.add_parser("evaluate", help="evaluate the repo's two-tower against baselines on its own data (protocols "
                        "P, C, T, N, S), in a scratch copy of the repo",
                        description="Popularity, EASE, Mult-VAE, the two-tower as ids only, without learned "
                        "features, as shipped (learned groups gated) and without each learned embedding; one "
                        "table with paired differences, a JSON and a PNG. The repo itself is not changed.")
    ev.add_argument("--protocols", help="comma-separated, of P (per-user temporal), C (new users), T (global "
                    "temporal), N (new items), S (search); default P,C,T (--quick: P,C), N where the two-tower reads "
                    "item embeddings (a text view of the items), S where the repo declares a text view of its items")
    ev.add_argument("--quick", action="store_true", help="fewer epochs and rows: minutes, not tens of minutes")
    ev.add_argument("--out", type=Path, help="the JSON (default <repo>/reports/evaluation-<time>.json); the PNG "
                    "lies beside it")
    ev.add_argument("--name", help="the two-tower (default: the repo's only one)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--c-runs", type=int, default=1, help="protocol C runs pooled, each its own held-out users")
    repo_options(ev)
    ev.set_defaults(func=_cmd_evaluate)

    sv = sub.add_parser("serve", help="serve recommendations and search over HTTP (GET /recommend, /search, "
                        "/healthz; docs at /docs)")
    repo_options(sv)
    sv.add_argument("--name", help="the two-tower (default: the repo's only one)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--index", choices=["auto", "exact", "ivf", "hnsw"], default="auto")
    sv.add_argument("--tokens-file", type=Path, help='JSON {"read": [...], "write": [...]} of bearer tokens '
                    "(default: $AUTOFEAT_READ_TOKENS / $AUTOFEAT_WRITE_TOKENS, comma-separated)")
    sv.add_argument("--no-auth", action="store_true", help="serve without authentication (a trusted network "
                    "only; logged as a warning)")
    sv.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES,
                    help=f"larger request bodies get 413 (default {MAX_BODY_BYTES})")
    sv.add_argument("--max-events", type=int, default=MAX_EVENTS,
                    help=f"more events in one POST /feedback get 422 (default {MAX_EVENTS})")
    sv.add_argument("--store-timeout", type=float, default=0.5, help="seconds a Redis call may take before the "
                    "request gets 503 (default 0.5; a socket_timeout in the connection string wins)")
    sv.add_argument("--workers", type=int, default=1, help="server processes sharing the port, each with its own "
                    "models (default 1; one per core serves the most)")
    sv.add_argument("--max-batch", type=int, default=MAX_BATCH, help="concurrent /recommend requests answered "
                    f"together (default {MAX_BATCH}; 1: one at a time)")
    sv.add_argument("--search-view", help="the text view of the items that GET /search queries (default: the "
                    "repo's only one; none: no search)")
    sv.add_argument("--search-weight", type=float, default=1.0, help="the user's two-tower term against the "
                    "text term in /search, both standardized (default 1, recommend.search.SEARCH_WEIGHT; 0: text "
                    "only)")
    sv.set_defaults(func=_cmd_serve)

    q = sub.add_parser("quickstart", help="prepare synthetic data, feast apply, feast materialize, train and "
                       "serve a recommender (SQLite, no server)")
    q.add_argument("--repo", type=Path, default=Path("feature_repo"), help="the bundled repo (default feature_repo)")
    q.add_argument("--users", type=int, default=2000, help="synthetic users (default 2000)")
    q.add_argument("--show", type=int, default=5, help="users whose online features are printed")
    q.set_defaults(func=_cmd_quickstart)
    parser.set_defaults(_default_repo=default_repo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from feast_autofeat.repo import quiet_warnings

    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_warnings()
    if getattr(args, "repo", "") is None:
        args.repo = args._default_repo()
    try:
        return args.func(args)
    except AutofeatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
