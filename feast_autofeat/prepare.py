"""``feast-autofeat prepare``: raw data -> every parquet table a feature repo reads, written atomically."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from feast_autofeat import __version__
from feast_autofeat.datasets import get_spec, movielens, synthetic
from feast_autofeat.datasets.base import (
    EVENT_LOG,
    MANIFEST,
    PREPARED_PART,
    Manifest,
    staged_directory,
    write_parquet_atomic,
)
from feast_autofeat.errors import DataError
from feast_autofeat.features.snapshots import build_snapshots, recent_items_table, snapshot_range

UTC_US = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class PrepareResult:
    data_dir: Path
    manifest: Manifest
    seconds: float


def _normalize_timestamps(table: pa.Table) -> pa.Table:
    """Every timestamp column as microseconds in UTC, the form Feast and DuckDB agree on."""
    for i, f in enumerate(table.schema):
        if pa.types.is_timestamp(f.type) and f.type != UTC_US:
            table = table.set_column(i, f.name, pc.cast(table.column(i), UTC_US))
    return table.replace_schema_metadata(None)


def data_dir_of(repo: str | Path) -> Path:
    return Path(repo) / "data"


def prepare(
    dataset: str,
    repo: str | Path,
    raw_dir: str | Path | None = None,
    config: synthetic.SyntheticConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> PrepareResult:
    """Write ``<repo>/data``: interactions, users, items, behaviour snapshots and ``manifest.json``.

    The directory is replaced whole or not at all.
    """
    say = progress or (lambda _msg: None)
    spec = get_spec(dataset)
    t0 = time.perf_counter()
    if dataset == movielens.SPEC.name:
        if raw_dir is None:
            raise DataError(f"--data-dir is required for {dataset}: {movielens.HELP}.")
        say(f"reading {raw_dir}")
        tables = movielens.load_raw(raw_dir)
        params: dict = {"source": str(Path(raw_dir).resolve())}
    else:
        config = config or synthetic.SyntheticConfig()
        say(f"generating {config.n_events:,} events for {config.users:,} users and {config.items:,} items")
        with tqdm(total=config.n_events, unit="ev", unit_scale=True, disable=progress is None) as bar:
            tables = synthetic.generate(config, progress=bar.update)
        params = config.params()
    tables = {name: _normalize_timestamps(t) for name, t in tables.items()}

    say("computing behaviour snapshots in DuckDB")
    snaps = build_snapshots(tables["interactions"], tables["items"], spec)
    snaps["user_recent_items"] = recent_items_table(tables["interactions"], spec)
    ts = tables["interactions"]["event_timestamp"]
    first = min(pc.min(t[c]).as_py() for t in tables.values() for c in t.column_names if c.endswith("timestamp"))
    manifest = Manifest(
        dataset=spec.name,
        params=params,
        rows={name: t.num_rows for name, t in {**tables, **snaps}.items()},
        time_range=(pc.min(ts).as_py().isoformat(), pc.max(ts).as_py().isoformat()),
        snapshot_range=snapshot_range(snaps),
        materialize_range=(first.isoformat(), snapshot_range(snaps)[1]),
        version=__version__,
    )
    target = data_dir_of(repo)
    with staged_directory(target) as staging:
        for name, table in {**tables, **snaps}.items():
            if name == EVENT_LOG:  # a directory of parts: feedback appends parts beside the prepared one
                (staging / name).mkdir()
                write_parquet_atomic(table, staging / name / PREPARED_PART)
            else:
                write_parquet_atomic(table, staging / f"{name}.parquet")
        (staging / MANIFEST).write_text(manifest.to_json())
    return PrepareResult(data_dir=target, manifest=manifest, seconds=time.perf_counter() - t0)
