"""What every prepared dataset shares: its spec, the manifest, and atomic writes of the data directory.

A prepared data directory (``<repo>/data``) holds parquet tables the feature repo reads:

- ``interactions/``: the event log, a directory of parquet parts (user_id, item_id, event_type, [rating],
  event_timestamp UTC): the prepared events, then one part per batch of feedback (``recommend.feedback``)
- ``users.parquet``: user_id, profile columns, created_timestamp
- ``items.parquet``: item_id, profile columns, created_timestamp
- ``user_behaviour.parquet`` / ``item_popularity.parquet``: daily snapshots (see ``features.snapshots``)
- ``manifest.json``: which dataset this is, its parameters and row counts.

The directory is staged next to its target and swapped in only when complete, so a failed ``prepare``
leaves the previous data (or nothing) behind, never a half-written mix.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from feast_autofeat.errors import RepoError

MANIFEST = "manifest.json"
TABLES = ("interactions", "users", "items")
EVENT_LOG = "interactions"  # a directory: Feast's DuckDB store and pyarrow read every visible *.parquet in it
PREPARED_PART = "part-00000-prepared.parquet"


def event_log_dir(data_dir: str | os.PathLike) -> Path:
    """The event log's directory (parquet parts; hidden files are in-flight writes, never read)."""
    return Path(data_dir) / EVENT_LOG


def table_path(data_dir: str | os.PathLike, name: str) -> Path:
    """Where a prepared table lives: ``<name>.parquet``, or the event log's directory (readable as one table by
    pandas, pyarrow and DuckDB)."""
    return event_log_dir(data_dir) if name == EVENT_LOG else Path(data_dir) / f"{name}.parquet"


@dataclass(frozen=True)
class DatasetSpec:
    """How a dataset's raw tables turn into behaviour features.

    ``signals`` are named SQL predicates over an interaction row (alias ``e``): the "event types" counted in
    behaviour snapshots. ``categories`` are named SQL predicates over an item row (alias ``i``): the
    per-category counts. Profile fields are ``(column, feast type name)`` pairs.
    """

    name: str
    signals: tuple[tuple[str, str], ...]
    categories: tuple[tuple[str, str], ...]
    user_profile: tuple[tuple[str, str], ...]
    item_profile: tuple[tuple[str, str], ...]
    rating_column: str | None = None
    # SQL predicate over an interaction (alias ``e``): what counts as a positive for implicit-feedback models
    positive: str = "true"
    description: str = ""
    event_types: tuple[str, ...] = ()  # the values ``event_type`` may take (feedback is checked against them)
    rating_range: tuple[float, float] | None = None  # inclusive bounds of ``rating_column``
    # string columns of the items table that are text (titles, descriptions): for text views, not profile features
    item_text: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict:
        """The spec as JSON-ready data (a prepared repo's manifest holds it, so a log's own spec survives)."""
        return {"name": self.name, "signals": [list(p) for p in self.signals],
                "categories": [list(p) for p in self.categories],
                "user_profile": [list(p) for p in self.user_profile],
                "item_profile": [list(p) for p in self.item_profile],
                "rating_column": self.rating_column, "positive": self.positive, "description": self.description,
                "event_types": list(self.event_types),
                "rating_range": list(self.rating_range) if self.rating_range is not None else None,
                "item_text": [list(p) for p in self.item_text]}

    @classmethod
    def from_dict(cls, raw: dict) -> DatasetSpec:
        pairs = {k: tuple(tuple(p) for p in raw[k]) for k in ("signals", "categories", "user_profile", "item_profile")}
        return cls(name=raw["name"], **pairs, rating_column=raw.get("rating_column"),
                   positive=raw.get("positive", "true"), description=raw.get("description", ""),
                   event_types=tuple(raw.get("event_types") or ()),
                   rating_range=tuple(raw["rating_range"]) if raw.get("rating_range") else None,
                   item_text=tuple(tuple(p) for p in raw.get("item_text") or ()))


@dataclass(frozen=True)
class Manifest:
    dataset: str
    params: dict
    rows: dict
    time_range: tuple[str, str]
    snapshot_range: tuple[str, str]
    materialize_range: tuple[str, str]  # earliest timestamp of any table .. last snapshot
    version: str
    spec: DatasetSpec | None = None  # how the tables' features were derived (None: a built-in dataset's spec)
    keys: dict | None = None  # {"user": kind, "item": kind}: int64 or string ids

    @property
    def user_kind(self) -> str:
        return (self.keys or {}).get("user", "int64")

    @property
    def item_kind(self) -> str:
        return (self.keys or {}).get("item", "int64")

    def materialize_window(self) -> tuple[str, str]:
        """START and END for ``feast materialize`` that cover every row of the prepared tables."""
        lo, hi = (datetime.fromisoformat(t) for t in self.materialize_range)
        fmt = "%Y-%m-%dT%H:%M:%S"
        return lo.strftime(fmt), (hi + timedelta(seconds=1)).strftime(fmt)

    def to_json(self) -> str:
        return json.dumps(
            {
                "dataset": self.dataset,
                "params": self.params,
                "rows": self.rows,
                "time_range": list(self.time_range),
                "snapshot_range": list(self.snapshot_range),
                "materialize_range": list(self.materialize_range),
                "feast_autofeat_version": self.version,
                "spec": self.spec.to_dict() if self.spec is not None else None,
                "keys": self.keys,
            },
            indent=2,
        )


def load_manifest(data_dir: str | os.PathLike) -> Manifest:
    """Read ``data_dir/manifest.json``; raise a ``RepoError`` that says how to create it when absent."""
    path = Path(data_dir) / MANIFEST
    if not path.exists():
        raise RepoError(
            f"{path} not found: this feature repo has no prepared data yet. Run "
            f"`feast-autofeat prepare --dataset synthetic --repo {Path(data_dir).parent}` "
            "(or --dataset movielens-100k --data-dir DIR, or --interactions FILE --columns ... for your own log) "
            "first."
        )
    try:
        raw = json.loads(path.read_text())
        return Manifest(
            dataset=raw["dataset"],
            params=raw["params"],
            rows=raw["rows"],
            time_range=tuple(raw["time_range"]),
            snapshot_range=tuple(raw["snapshot_range"]),
            materialize_range=tuple(raw["materialize_range"]),
            version=raw["feast_autofeat_version"],
            spec=DatasetSpec.from_dict(raw["spec"]) if raw.get("spec") else None,
            keys=raw.get("keys"),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise RepoError(f"{path} is not a valid manifest ({exc}); re-run `feast-autofeat prepare`.") from exc


@contextmanager
def staged_directory(target: Path) -> Iterator[Path]:
    """Yield an empty directory beside ``target``; on success swap it in for ``target``.

    On any exception the staging directory is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
