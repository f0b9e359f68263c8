"""From a prepared, applied feature repo to a serving recommender, with the same commands a user runs:

1. ``feast-autofeat train dae|gan|multvae`` and ``deploy`` them live (then ``feast apply``);
2. ``feast-autofeat backfill`` daily snapshots of the stored embeddings over the data's range;
3. ``feast-autofeat train two-tower`` (point-in-time training set) and ``deploy item_two_tower``;
4. ``feast materialize`` everything (Feast's CLI), after which ``Recommender(repo)`` serves.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from feast_autofeat.recommend.data import ENCODERS


def apply_quietly(repo: Path, yaml: str | None = None) -> None:
    """``feast apply`` in process; Feast prints the whole registry diff, shown only when it fails."""
    from feast_autofeat.cli import feast_apply

    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            feast_apply(repo, yaml)
    except BaseException:
        print(out.getvalue())
        raise


def build_recommender(repo: str | Path, yaml: str | None = None, epochs: dict | None = None, end: str | None = None,
                      seed: int = 0, progress: bool = False, say: Callable[[str], None] = lambda _m: None) -> dict:
    """Run steps 1-4 on ``repo``; ``epochs`` caps training per model (e.g. ``{"dae": 5}``) for quick runs;
    ``end``: the materialization end (default: the prepared data's end). Returns the versions deployed."""
    from feast import FeatureStore

    from feast_autofeat.datasets import load_manifest
    from feast_autofeat.feast.embeddings import Deployments
    from feast_autofeat.feast.engine import LeakageWarning, backfill
    from feast_autofeat.quickstart import run_feast
    from feast_autofeat.recommend.train import train_two_tower
    from feast_autofeat.training import train

    repo = Path(repo)
    epochs = epochs or {}

    def apply() -> None:
        apply_quietly(repo, yaml)
        say("feast apply")

    t0 = time.perf_counter()
    versions = {}
    for name, model in ENCODERS:
        result = train(model, repo, seed=seed, progress=progress, yaml=yaml,
                       **({"epochs": epochs[model]} if model in epochs else {}))
        versions[name] = result.version
        say(f"trained {model} {result.version} ({result.seconds:.0f}s)")
    dep = Deployments(repo)
    for name, model in ENCODERS:
        dep.deploy(name, model, versions[name], live=True)
    dep.save()
    apply()
    manifest = load_manifest(repo / "data")
    start, stop = manifest.materialize_window()
    lo = datetime.fromisoformat(manifest.time_range[0]).replace(hour=0, minute=0, second=0, microsecond=0)
    hi = datetime.fromisoformat(manifest.snapshot_range[1])
    store = FeatureStore(repo_path=str(repo), fs_yaml_file=repo / yaml if yaml else None)
    with warnings.catch_warnings():
        # the encoders saw all of this data: fine for serving and a demo; evaluation retrains per protocol
        warnings.simplefilter("ignore", LeakageWarning)
        for name, _ in ENCODERS[:2]:
            backfill(store, f"{name}__{versions[name]}", lo, hi, timedelta(days=1), progress=progress)
    say(f"backfilled daily snapshots {lo.date()} .. {hi.date()}")
    tt = train_two_tower(repo, seed=seed, progress=progress, yaml=yaml,
                         **({"epochs": epochs["two_tower"]} if "two_tower" in epochs else {}))
    versions["item_two_tower"] = tt.version
    say(f"trained two-tower {tt.version} on {tt.rows['events']:,} positive events ({tt.seconds:.0f}s)")
    dep = Deployments(repo)
    dep.deploy("item_two_tower", "two_tower", tt.version, live=True)
    dep.save()
    apply()
    run_feast(repo, "materialize", start, end or stop, yaml=yaml, capture=True)
    say(f"feast materialize {start} {end or stop} ({time.perf_counter() - t0:.0f}s in all)")
    return versions
