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
    print(f"training {args.model} from {args.repo} as of {args.as_of or 'the last event'} ...", flush=True)
    result = train(args.model, args.repo, as_of=args.as_of, root=args.model_root, seed=args.seed,
                   max_rows=args.max_rows, yaml=args.feature_store_yaml, **overrides)
    print(result.summary())
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

    t = sub.add_parser("train", help="train an encoder (dae, multvae, gan) from the store's point-in-time data",
                       description="Build a training set through Feast (get_historical_features / the offline "
                       "store) with only data at or before --as-of, train with early stopping on held-out users, "
                       "and save a hash-verified version (safetensors + JSON).")
    t.add_argument("model", choices=["dae", "multvae", "gan"])
    t.add_argument("--repo", type=Path, default=Path("feature_repo"))
    t.add_argument("--feature-store-yaml", "-f", help="YAML inside the repo (default feature_store.yaml)")
    t.add_argument("--as-of", help="use data at or before this time (ISO 8601, UTC); default: the last event")
    t.add_argument("--model-root", type=Path, help="where versions are written (default: $AUTOFEAT_MODEL_ROOT "
                   "or <repo>/models)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--max-rows", type=int, default=50_000, help="training rows for tabular models")
    t.add_argument("--epochs", type=int, help="maximum epochs (early stopping may end sooner)")
    t.add_argument("--dim", type=int, help="embedding dimension")
    t.set_defaults(func=_cmd_train)

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
