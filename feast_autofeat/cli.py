"""The ``feast-autofeat`` command line. Feast's own CLI (``feast apply``, ``feast materialize``) stays as is."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from feast_autofeat import __version__
from feast_autofeat.errors import AutofeatError


def _cmd_prepare(args: argparse.Namespace) -> int:
    from feast_autofeat.datasets.synthetic import SyntheticConfig
    from feast_autofeat.prepare import prepare

    given = {k: getattr(args, k) for k in ("users", "items", "days", "events") if getattr(args, k) is not None}
    config = None
    if args.dataset == "synthetic":  # unset options keep SyntheticConfig's defaults
        config = SyntheticConfig(**given, seed=args.seed, start=args.start)
    elif given:
        raise AutofeatError("--users/--items/--days/--events apply to --dataset synthetic only.")
    result = prepare(args.dataset, args.repo, raw_dir=args.data_dir, config=config,
                     progress=lambda msg: print(f"  {msg} ...", flush=True))
    m = result.manifest
    print(f"prepared {m.dataset} in {result.seconds:.1f}s -> {result.data_dir}")
    for name, n in m.rows.items():
        print(f"  {name:<16} {n:>12,} rows")
    print(f"  events from {m.time_range[0]} to {m.time_range[1]}")
    print(f"  snapshots from {m.snapshot_range[0]} to {m.snapshot_range[1]}")
    start, end = m.materialize_window()
    print(f"next: cd {args.repo} && feast apply && feast materialize {start} {end}")
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from feast_autofeat.quickstart import run_quickstart

    run_quickstart(Path(args.repo), users=args.users, show=args.show)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from feast_autofeat.training import train

    overrides = {k: v for k, v in (("epochs", args.epochs), ("dim", args.dim)) if v is not None}
    if args.gan_augment:
        if args.model != "two-tower":
            raise AutofeatError("--gan-augment applies to the two-tower only (it adds GAN rows to its training set).")
        overrides["gan_augment"] = args.gan_augment
    print(f"training {args.model} from {args.repo} as of {args.as_of or 'the last event'} ...", flush=True)
    if args.model == "two-tower":
        from feast_autofeat.recommend.train import train_two_tower

        result = train_two_tower(args.repo, as_of=args.as_of, root=args.model_root, seed=args.seed,
                                 yaml=args.feature_store_yaml, **overrides)
    else:
        result = train(args.model, args.repo, as_of=args.as_of, root=args.model_root, seed=args.seed,
                       max_rows=args.max_rows, yaml=args.feature_store_yaml, **overrides)
    print(result.summary())
    return 0


def feast_apply(repo: Path, yaml: str | None = None) -> None:
    """``feast apply`` in this process (the same code path as Feast's CLI)."""
    from feast.repo_config import load_repo_config
    from feast.repo_operations import apply_total

    repo = repo.resolve()
    cwd = os.getcwd()
    sys.path.insert(0, str(repo))  # as Feast's CLI does: the repo's modules import by name
    for path in repo.rglob("*.py"):  # re-read definitions an earlier apply (of any repo) imported by these names
        sys.modules.pop(".".join(path.relative_to(repo).with_suffix("").parts), None)
    try:
        apply_total(load_repo_config(repo, repo / (yaml or "feature_store.yaml")), repo,
                    skip_source_validation=False)
    finally:
        os.chdir(cwd)
        sys.path.remove(str(repo))


def _deployments(args):
    from feast_autofeat.feast.embeddings import Deployments

    return Deployments(args.repo)


def _finish_deploy(args, deployments, entry, name: str) -> int:
    before = deployments.path.read_bytes() if deployments.path.exists() else None
    deployments.save()
    print(f"{name}: model {entry.model}, live {entry.live}, deployed {', '.join(entry.versions)}")
    if args.no_apply:
        print(f"next: cd {args.repo} && feast apply")
        return 0
    try:
        feast_apply(args.repo, args.feature_store_yaml)
    except Exception as exc:  # put embeddings.json back: the registry still matches the old one
        if before is None:
            deployments.path.unlink()
        else:
            deployments.path.write_bytes(before)
        raise AutofeatError(f"`feast apply` failed, so {deployments.path.name} was left unchanged: {exc}") from exc
    print(f"applied: feature service {name} now serves {name}__{entry.live}")
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    from feast_autofeat.artifacts import list_versions, load_version, model_root

    root = model_root(args.model_root, default=args.repo / "models")
    deployments = _deployments(args)
    existing = deployments.get(args.name)
    model = args.model or (existing.model if existing else None)
    if model is None:
        raise AutofeatError(f"{args.name} is not deployed yet: say which model computes it (--model dae|gan|multvae).")
    version = args.version
    if version in (None, "latest"):
        versions = list_versions(root, model)
        if not versions:
            raise AutofeatError(f"no trained versions of {model} under {root}: run `feast-autofeat train {model}`.")
        version = versions[-1]
    load_version(root, model, version)  # exists and is intact
    entry = deployments.deploy(args.name, model, version, live=args.live)
    return _finish_deploy(args, deployments, entry, args.name)


def _cmd_promote(args: argparse.Namespace) -> int:
    deployments = _deployments(args)
    entry = deployments.promote(args.name, args.version)
    return _finish_deploy(args, deployments, entry, args.name)


def _cmd_rollback(args: argparse.Namespace) -> int:
    from feast_autofeat.recommend.recommender import ITEM_VIEW

    if args.name == ITEM_VIEW:  # the recommender: its previous two-tower with the encoders it was trained on
        from feast_autofeat.recommend.refresh import rollback

        rollback(args.repo)
        deployments = _deployments(args)
        return _finish_deploy(args, deployments, deployments.get(ITEM_VIEW), ITEM_VIEW)
    deployments = _deployments(args)
    entry = deployments.rollback(args.name)
    return _finish_deploy(args, deployments, entry, args.name)


def _cmd_refresh(args: argparse.Namespace) -> int:
    import json

    from feast_autofeat.recommend.refresh import refresh

    epochs = {}
    for item in args.epochs or []:
        model, _, n = item.partition("=")
        if not n.isdigit():
            raise AutofeatError(f"--epochs {item!r}: use MODEL=N, e.g. dae=5 or two_tower=10.")
        epochs[model] = int(n)
    result = refresh(args.repo, yaml=args.feature_store_yaml, as_of=args.as_of, holdout_days=args.holdout_days,
                     tolerance=args.tolerance, epochs=epochs, seed=args.seed, cut_over=not args.no_cut_over,
                     progress=True, say=lambda m: print(m, flush=True))
    print(json.dumps({"cut_over": result.cut_over, "reason": result.reason, "versions": result.versions,
                      "gate": result.gate, "health": result.health}, indent=2, default=str))
    return 0 if result.cut_over or args.no_cut_over else 1


def _cmd_embeddings(args: argparse.Namespace) -> int:
    deployments = _deployments(args)
    if not deployments.entries:
        print(f"no embeddings deployed in {args.repo} (see `feast-autofeat deploy --help`)")
    for name, entry in sorted(deployments.entries.items()):
        print(f"{name}  (model {entry.model})")
        for v in entry.versions:
            print(f"  {'*' if v == entry.live else ' '} {name}__{v}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from feast_autofeat.recommend.service import serve

    print(f"serving {args.repo} on http://{args.host}:{args.port} (docs: /docs)", flush=True)
    serve(args.repo, host=args.host, port=args.port, index=args.index, yaml=args.feature_store_yaml)
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
    from feast_autofeat.training import open_store, parse_as_of

    deployments = _deployments(args)
    entry = deployments.get(args.name)
    if entry is None:
        raise AutofeatError(f"no embedding named {args.name!r} is deployed in {args.repo}.")
    version = args.version or entry.live
    matches = [v for v in entry.versions if v.startswith(version or "")]
    if len(matches) != 1:
        raise AutofeatError(f"{args.name}: version {version!r} is not deployed ({', '.join(entry.versions)}).")
    store = open_store(args.repo, args.feature_store_yaml)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LeakageWarning)
        summary = backfill(store, f"{args.name}__{matches[0]}", parse_as_of(args.start, args.repo),
                           parse_as_of(args.end, args.repo), parse_every(args.every))
    for w in caught:
        if issubclass(w.category, LeakageWarning):
            print(f"warning: {w.message}", file=sys.stderr)
    print(f"backfilled {summary['view']}: {summary['snapshots']} snapshots ({summary['first']} .. "
          f"{summary['last']}), {summary['rows']:,} rows -> {summary['directory']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="feast-autofeat",
        description="Learned features as first-class Feast feature views. Use Feast's own CLI for "
        "`feast apply` and `feast materialize`; this tool prepares data, trains and evaluates.",
    )
    parser.add_argument("--version", action="version", version=f"feast-autofeat {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("prepare", help="write the parquet tables a feature repo reads (MovieLens or synthetic)",
                       description="Read raw data (or generate synthetic data) and write <repo>/data: "
                       "interactions, users, items and daily behaviour snapshots, atomically.")
    p.add_argument("--dataset", required=True, choices=["movielens-100k", "synthetic"])
    p.add_argument("--data-dir", type=Path, help="folder with the raw GroupLens files u.data, u.user, u.item")
    p.add_argument("--repo", type=Path, default=Path("feature_repo"), help="feature repo (default: feature_repo)")
    g = p.add_argument_group("synthetic data")
    g.add_argument("--users", type=int, help="number of users (default 2000)")
    g.add_argument("--items", type=int, help="number of items (default 500)")
    g.add_argument("--days", type=int, help="length of the period in days (default 60)")
    g.add_argument("--events", type=int, help="number of events (default 60 per user)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--start", default="2025-01-01", help="first day of the period (UTC)")
    p.set_defaults(func=_cmd_prepare)

    t = sub.add_parser("train", help="train an encoder (dae, multvae, gan) or the two-tower recommender from the "
                       "store's point-in-time data",
                       description="Build a training set through Feast (get_historical_features / the offline "
                       "store) with only data at or before --as-of, train with early stopping on held-out users, "
                       "and save a hash-verified version (safetensors + JSON).")
    t.add_argument("model", choices=["dae", "multvae", "gan", "two-tower"],
                   help="two-tower reads the live encoders' features: deploy and backfill them first")
    t.add_argument("--repo", type=Path, default=Path("feature_repo"))
    t.add_argument("--feature-store-yaml", "-f", help="YAML inside the repo (default feature_store.yaml)")
    t.add_argument("--as-of", help="use data at or before this time (ISO 8601, UTC); default: the last event")
    t.add_argument("--model-root", type=Path, help="where versions are written (default: $AUTOFEAT_MODEL_ROOT "
                   "or <repo>/models)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--max-rows", type=int, default=50_000, help="training rows for tabular models")
    t.add_argument("--epochs", type=int, help="maximum epochs (early stopping may end sooner)")
    t.add_argument("--dim", type=int, help="embedding dimension")
    t.add_argument("--gan-augment", type=int, default=0, metavar="N",
                   help="two-tower: add N GAN-synthesized behaviour rows per training row of each sparse user "
                   "(at most 20 positives); default 0 (off). See the README's evaluation for its measured effect")
    t.set_defaults(func=_cmd_train)

    def deploy_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--repo", type=Path, default=Path("feature_repo"))
        p.add_argument("--feature-store-yaml", "-f", help="YAML inside the repo (default feature_store.yaml)")
        p.add_argument("--no-apply", action="store_true", help="only edit embeddings.json; run `feast apply` later")

    d = sub.add_parser("deploy", help="deploy a trained model version as an embedding view (beside live ones)",
                       description="Add a version to <repo>/embeddings.json and `feast apply`: the repo then "
                       "registers view <name>__<version>. The first version of a name also becomes live.")
    d.add_argument("name", help="embedding name declared in the repo, e.g. user_dae")
    d.add_argument("--model", choices=["dae", "gan", "multvae", "two_tower"], help="model (needed the first time)")
    d.add_argument("--version", help="model version hash (default: the newest trained)")
    d.add_argument("--live", action="store_true", help="also make it the live version")
    d.add_argument("--model-root", type=Path)
    deploy_options(d)
    d.set_defaults(func=_cmd_deploy)

    pr = sub.add_parser("promote", help="make a deployed version live (one registry change; reversible)")
    pr.add_argument("name")
    pr.add_argument("version", help="a deployed version (a unique prefix is enough)")
    deploy_options(pr)
    pr.set_defaults(func=_cmd_promote)

    rb = sub.add_parser("rollback", help="make the previous live version live again")
    rb.add_argument("name")
    deploy_options(rb)
    rb.set_defaults(func=_cmd_rollback)

    rf = sub.add_parser("refresh", help="retrain the encoders and the two-tower on everything logged, check them "
                        "in shadow (parity, evaluation gate) and cut over in one step",
                        description="See feast_autofeat/recommend/refresh.py. Exit 0: cut over; 1: a check "
                        "failed and the live versions are untouched (the reason is printed).")
    rf.add_argument("--as-of", help="train on events up to this time (default: the log's last event)")
    rf.add_argument("--holdout-days", type=float, default=7.0, help="the gate's held-out period (default 7)")
    rf.add_argument("--tolerance", type=float, default=0.02,
                    help="the candidate may be this much worse than live on Recall@20, relatively (default 0.02)")
    rf.add_argument("--epochs", nargs="*", metavar="MODEL=N", help="cap epochs per model, e.g. dae=5 two_tower=10")
    rf.add_argument("--seed", type=int, default=0)
    rf.add_argument("--no-cut-over", action="store_true", help="run every check, leave the live versions")
    rf.add_argument("--repo", type=Path, default=Path("feature_repo"))
    rf.add_argument("--feature-store-yaml", "-f")
    rf.set_defaults(func=_cmd_refresh)

    e = sub.add_parser("embeddings", help="list deployed embedding versions (* = live)")
    e.add_argument("--repo", type=Path, default=Path("feature_repo"))
    e.set_defaults(func=_cmd_embeddings)

    b = sub.add_parser("backfill", help="write point-in-time snapshots of an embedding view for past times",
                       description="For each time START, START+EVERY, ... <= END, encode every entity's inputs "
                       "as of that time and write the snapshot atomically. Warns when the model's training "
                       "window overlaps the range (leakage).")
    b.add_argument("name", help="embedding name, e.g. user_dae")
    b.add_argument("--start", required=True, help="first snapshot time (ISO 8601, UTC)")
    b.add_argument("--end", required=True, help="last snapshot time (inclusive)")
    b.add_argument("--every", default="1d", help="spacing, e.g. 1d, 6h (default 1d)")
    b.add_argument("--version", help="deployed version (default: the live one)")
    b.add_argument("--repo", type=Path, default=Path("feature_repo"))
    b.add_argument("--feature-store-yaml", "-f")
    b.set_defaults(func=_cmd_backfill)

    sv = sub.add_parser("serve", help="serve recommendations over HTTP (GET /recommend, /healthz; docs at /docs)")
    sv.add_argument("--repo", type=Path, default=Path("feature_repo"))
    sv.add_argument("--feature-store-yaml", "-f", help="YAML inside the repo (e.g. feature_store.redis.yaml)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--index", choices=["auto", "exact", "hnsw"], default="auto")
    sv.set_defaults(func=_cmd_serve)

    q = sub.add_parser("quickstart", help="prepare synthetic data, feast apply, feast materialize, "
                       "print online features (SQLite, no server)")
    q.add_argument("--repo", type=Path, default=Path("feature_repo"))
    q.add_argument("--users", type=int, default=2000, help="synthetic users (default 2000)")
    q.add_argument("--show", type=int, default=5, help="users whose online features are printed")
    q.set_defaults(func=_cmd_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
