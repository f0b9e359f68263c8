"""``feast-autofeat prepare``: raw data (MovieLens, synthetic, or your own log) -> every parquet table a prepared
feature repo reads, written atomically; ``rebuild`` recomputes the derived tables from the grown event log."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from feast_autofeat import __version__
from feast_autofeat.datasets import get_spec, load_manifest, movielens, spec_of, synthetic
from feast_autofeat.datasets.base import (
    EVENT_LOG,
    MANIFEST,
    PREPARED_PART,
    Manifest,
    event_log_dir,
    staged_directory,
    write_parquet_atomic,
)
from feast_autofeat.errors import DataError
from feast_autofeat.features.snapshots import derived_tables, snapshot_range

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


def _kind(table: pa.Table, column: str) -> str:
    return "string" if pa.types.is_string(table.schema.field(column).type) or pa.types.is_large_string(
        table.schema.field(column).type) else "int64"


def prepare(
    dataset: str | None,
    repo: str | Path,
    raw_dir: str | Path | None = None,
    config: synthetic.SyntheticConfig | None = None,
    progress: Callable[[str], None] | None = None,
    *,
    interactions: str | Path | None = None,
    users: str | Path | None = None,
    items: str | Path | None = None,
    columns: dict[str, str] | None = None,
    split: dict[str, str] | None = None,
    positive: str | None = None,
    max_per_user: int | None = None,
    subsample_seed: int = 0,
) -> PrepareResult:
    """Write ``<repo>/data``: interactions, users, items, behaviour snapshots, users' recent items and
    ``manifest.json``, from a built-in ``dataset`` (``movielens-100k`` from ``raw_dir``, ``synthetic`` from
    ``config``) or from your own log (``interactions`` with its ``columns`` mapping, optional ``users`` /
    ``items`` files, ``split`` and ``positive``; see ``datasets.logfile``). ``max_per_user``: keep at most that
    many distinct items per user, drawn at random (``subsample_seed``) with all their events and times
    (``subsample``): a sparse log from a dense one.

    The directory is replaced whole or not at all: on any error the previous data is untouched.
    """
    say = progress or (lambda _msg: None)
    own = {"users": users, "items": items, "columns": columns, "split": split, "positive": positive}
    if interactions is not None:
        if dataset is not None:
            raise DataError("give either --dataset or --interactions, not both.")
        if raw_dir is not None or config is not None:
            raise DataError("--data-dir and the synthetic options do not apply to --interactions.")
        if not columns:
            raise DataError("--interactions needs --columns user_id=COL,item_id=COL,event_timestamp=COL[,...].")
    else:
        given = [f"--{k}" for k, v in own.items() if v]
        if given:
            raise DataError(f"{', '.join(given)} apply to --interactions (your own log) only.")
        if dataset is None:
            raise DataError("say what to prepare: --dataset movielens-100k|synthetic, or --interactions FILE.")
        get_spec(dataset)  # a known name, or the list of them
        if dataset != movielens.SPEC.name and raw_dir is not None:
            raise DataError(f"--data-dir applies to --dataset {movielens.SPEC.name} only (the {dataset} data is "
                            "generated).")
        if dataset != synthetic.SPEC.name and config is not None:
            raise DataError(f"the synthetic options apply to --dataset {synthetic.SPEC.name} only.")
    if max_per_user is not None and max_per_user < 1:
        raise DataError(f"--max-per-user must be at least 1, got {max_per_user}.")
    t0 = time.perf_counter()
    if interactions is not None:
        from feast_autofeat.datasets import logfile

        say(f"reading {Path(interactions).name}")
        tables, spec, params = logfile.load_log(interactions, columns, users, items, split, positive)
    elif dataset == movielens.SPEC.name:
        spec = movielens.SPEC
        if raw_dir is None:
            raise DataError(f"--data-dir is required for {dataset}: {movielens.HELP}.")
        say(f"reading {raw_dir}")
        tables = movielens.load_raw(raw_dir)
        params: dict = {"source": str(Path(raw_dir).resolve())}
    else:
        spec = synthetic.SPEC
        config = config or synthetic.SyntheticConfig()
        say(f"generating {config.n_events:,} events for {config.users:,} users and {config.items:,} items")
        with tqdm(total=config.n_events, unit="ev", unit_scale=True, disable=progress is None) as bar:
            tables = synthetic.generate(config, progress=bar.update)
        params = config.params()
    tables = {name: _normalize_timestamps(t) for name, t in tables.items()}
    if max_per_user is not None:
        before = tables[EVENT_LOG].num_rows
        tables[EVENT_LOG] = subsample(tables[EVENT_LOG], max_per_user, subsample_seed)
        params = {**params, "max_per_user": max_per_user, "subsample_seed": subsample_seed}
        say(f"kept {tables[EVENT_LOG].num_rows:,} of {before:,} events (at most {max_per_user} items per user)")

    say("computing behaviour snapshots in DuckDB")
    snaps = derived_tables(tables[EVENT_LOG], tables["items"], spec)
    manifest = _manifest(spec, params, tables, snaps)
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


def subsample(log: pa.Table, max_items: int, seed: int = 0) -> pa.Table:
    """The events of at most ``max_items`` distinct items per user, drawn uniformly at random (seeded), every
    event of a kept (user, item) pair kept at its own time: each user's timeline thinned, not truncated, so
    the sparse log spans the same period as the dense one."""
    import numpy as np

    users = log["user_id"].combine_chunks()
    items = log["item_id"].combine_chunks()
    u_codes = pc.dictionary_encode(users).indices.to_numpy(zero_copy_only=False).astype(np.int64)
    i_codes = pc.dictionary_encode(items).indices.to_numpy(zero_copy_only=False).astype(np.int64)
    pair = u_codes * (int(i_codes.max(initial=0)) + 1) + i_codes
    pairs, inverse = np.unique(pair, return_inverse=True)
    pair_user = pairs // (int(i_codes.max(initial=0)) + 1)
    order = np.lexsort((np.random.default_rng(seed).random(len(pairs)), pair_user))
    starts = np.searchsorted(pair_user[order], pair_user[order], side="left")
    keep_pair = np.zeros(len(pairs), bool)
    keep_pair[order] = np.arange(len(pairs)) - starts < max_items
    return log.filter(pa.array(keep_pair[inverse]))


def _manifest(spec, params: dict, tables: dict, snaps: dict, rows: dict | None = None) -> Manifest:
    log = tables[EVENT_LOG]
    ts = log["event_timestamp"]
    first = min(pc.min(t[c]).as_py() for t in tables.values() for c in t.column_names if c.endswith("timestamp")
                and len(t))
    return Manifest(
        dataset=spec.name,
        params=params,
        rows=rows or {name: t.num_rows for name, t in {**tables, **snaps}.items()},
        time_range=(pc.min(ts).as_py().isoformat(), pc.max(ts).as_py().isoformat()),
        snapshot_range=snapshot_range(snaps),
        materialize_range=(first.isoformat(), snapshot_range(snaps)[1]),
        version=__version__,
        spec=spec,
        keys={"user": _kind(log, "user_id"), "item": _kind(log, "item_id")},
    )


def rebuild(data_dir: str | Path) -> dict:
    """Recompute every table a prepared repo derives from its event log (behaviour and popularity snapshots,
    users' recent items) and the manifest's ranges, so training, backfill and ``feast materialize`` see logged
    feedback. Returns the events counted and the last one's time."""
    import pyarrow.parquet as pq

    data = Path(data_dir)
    manifest = load_manifest(data)
    spec = spec_of(manifest)
    log = pq.read_table(event_log_dir(data))
    items = pq.read_table(data / "items.parquet")
    snaps = derived_tables(log, items, spec)
    for name, table in snaps.items():
        write_parquet_atomic(table, data / f"{name}.parquet")
    users = pq.read_table(data / "users.parquet")
    updated = _manifest(spec, manifest.params, {EVENT_LOG: log, "users": users, "items": items}, snaps,
                        rows={**manifest.rows, EVENT_LOG: log.num_rows, **{k: t.num_rows for k, t in snaps.items()}})
    updated = replace(updated, materialize_range=(min(manifest.materialize_range[0], updated.materialize_range[0]),
                                                  updated.materialize_range[1]), keys=manifest.keys)
    tmp = data / f".{MANIFEST}.tmp"
    tmp.write_text(updated.to_json())
    tmp.replace(data / MANIFEST)
    return {"events": log.num_rows, "last_event": updated.time_range[1]}
