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

    config = None
    if args.dataset == "synthetic":
        config = SyntheticConfig(users=args.users, items=args.items, days=args.days, events=args.events,
                                 seed=args.seed, start=args.start)
    elif any(v is not None for v in (args.users, args.items, args.days, args.events)):
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
    # Synthetic defaults live in SyntheticConfig; argparse passes None for "not given".
    if getattr(args, "dataset", None) == "synthetic":
        from feast_autofeat.datasets.synthetic import SyntheticConfig

        defaults = SyntheticConfig()
        for name in ("users", "items", "days"):
            if getattr(args, name) is None:
                setattr(args, name, getattr(defaults, name))
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
