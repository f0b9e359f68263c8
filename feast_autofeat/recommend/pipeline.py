"""From a prepared, applied feature repo to a serving recommender, with the same steps a user runs:

1. ``feast-autofeat train NAME`` for each learned embedding the two-tower declares, and ``deploy`` them live
   (then ``feast apply``);
2. ``feast-autofeat backfill`` daily snapshots of the stored ones over the log's range (a text view: one, at
   its end);
3. ``feast-autofeat train <two-tower>`` (point-in-time training set, learned groups gated) and ``deploy`` it;
4. ``feast materialize`` everything (Feast's CLI), after which ``Recommender(repo)`` serves.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path


def build_recommender(repo: str | Path, yaml: str | None = None, epochs: dict | None = None, end: str | None = None,
                      seed: int = 0, progress: bool = False, say: Callable[[str], None] = lambda _m: None,
                      name: str | None = None, gate: bool = True) -> dict:
    """Run steps 1-4 on ``repo`` for its two-tower (``name``, or its only one); ``epochs`` caps training per
    embedding or model name (e.g. ``{"dae": 5, "two_tower": 3}``) for quick runs; ``end``: the materialization
    end (default: the data's end); ``gate``: drop learned groups that do not earn their place. Returns the
    versions deployed, {name: version}."""
    from feast_autofeat.repo import Repo

    project = Repo(repo, yaml)
    with project.inside():
        return _build(project, project.two_tower(name), epochs or {}, end, seed, progress, say, gate)


def _build(project, decl, epochs: dict, end, seed: int, progress: bool, say, gate: bool) -> dict:
    from feast_autofeat.feast.deployments import view_name
    from feast_autofeat.feast.engine import LeakageWarning, backfill
    from feast_autofeat.models.text import EXTRA, installed
    from feast_autofeat.recommend.refresh import event_range, materialize_window
    from feast_autofeat.repo import run_feast
    from feast_autofeat.training import train

    def cap(n: str, model: str) -> dict:
        value = epochs.get(n, epochs.get(model))
        return {"epochs": value} if value is not None else {}

    t0 = time.perf_counter()
    versions = {}
    # without the text extra a text view is left undeployed, and the two-tower trains without it (not read)
    skipped = [] if installed() else [n for n, d in decl.learned.items() if d.model == "text"]
    if skipped:
        say(f"skipped {', '.join(skipped)}: text views need `{EXTRA}`")
    for n, learned in decl.learned.items():
        if n in skipped:
            continue
        result = train(project, n, seed=seed, progress=progress, **cap(n, learned.model))
        versions[n] = result.version
        say(f"trained {n} ({learned.model}) {result.version} ({result.seconds:.0f}s)")
    dep = project.deployments()
    for n, learned in decl.learned.items():
        if n in versions:
            dep.deploy(n, learned.model, versions[n], live=True)
    dep.save()
    project.apply()
    say("feast apply")
    decl = project.two_tower(decl.name)
    lo, hi = event_range(project.store, decl)
    with warnings.catch_warnings():
        # the encoders saw all of this data: fine for serving and a demo; evaluation retrains per protocol
        warnings.simplefilter("ignore", LeakageWarning)
        for n, learned in decl.learned.items():
            if learned.stored and n in versions:
                start = hi if learned.model == "text" else lo  # text is not behaviour: one snapshot
                backfill(project.store, view_name(n, versions[n]), start, hi, timedelta(days=1), progress=progress)
    say(f"backfilled daily snapshots {lo.date()} .. {hi.date()}")
    tt = train(project, decl.name, seed=seed, progress=progress, gate=gate, **cap(decl.name, "two_tower"))
    versions[decl.name] = tt.version
    kept = ", ".join(tt.notes) if tt.notes else "no learned group to gate"
    say(f"trained two-tower {tt.version} on {tt.rows['events']:,} positive events ({tt.seconds:.0f}s; {kept})")
    dep = project.deployments()
    dep.deploy(decl.name, "two_tower", tt.version, live=True)
    dep.save()
    project.apply()
    start, stop = materialize_window(project.store, project.two_tower(decl.name))
    run_feast(project.path, "materialize", start, end or stop, yaml=project.yaml, capture=True)
    say(f"feast materialize {start} {end or stop} ({time.perf_counter() - t0:.0f}s in all)")
    return versions
