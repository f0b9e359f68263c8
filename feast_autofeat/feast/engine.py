"""``AutofeatEngine``: Feast's batch engine for embedding views.

``feature_store.yaml``::

    batch_engine:
      type: feast_autofeat.feast.engine.AutofeatEngine
      batch_size: 16384      # rows per pipeline step (encode | online write | snapshot write)
      device: cpu            # cpu | cuda | auto
      threads: 2             # torch intra-op threads (default: torch's choice)
      input_chunk_rows: 1000000  # entities per read of the inputs: bounds memory at any entity count
      ray_address: head:6379 # optional: encode on a Ray cluster's actor pool (``ray_encode.py``)

``feast materialize START END`` on an embedding view (see ``embeddings.py``) computes, for every entity whose
input features have rows in ``[START, END]``, the embedding of its inputs *as of END* (Feast's point-in-time
join, with the input views' TTLs: the same values a training row at END gets), then writes

* the vectors to the online store in Feast's own layout (Redis: ``writer.RedisVectorWriter``), stamped END,
* the same rows as an offline snapshot at END, ``<snapshots>/at=<END>.parquet``, written atomically and merged
  with what an earlier run wrote for END (no run deletes another's rows).

Every other view goes through Feast's local engine unchanged.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from feast.infra.common.materialization_job import MaterializationJobStatus, MaterializationTask
from feast.infra.compute_engines.local.compute import LocalComputeEngine
from feast.infra.compute_engines.local.job import LocalMaterializationJob
from feast.repo_config import FeastConfigBaseModel
from pydantic import ConfigDict, Field, ValidationError

from feast_autofeat.errors import AutofeatError
from feast_autofeat.feast.embeddings import (
    KEY_ARROW,
    KEY_KIND_TAG,
    KIND_TAG,
    MODEL_TAG,
    ROOT_TAG,
    SNAPSHOT_PREFIX,
    SNAPSHOT_TS_FORMAT,
    VERSION_TAG,
    VIEW_TAG,
    ensure_snapshot_dir,
    snapshot_schema,
)
from feast_autofeat.feast.runtime import (
    CandidateEncoder,
    FeatureEncoder,
    batch_vectors,
    encode_batch,
    load_encoder,
    vectors_array,
)
from feast_autofeat.feast.writer import vector_writer
from feast_autofeat.ids import kind_of_value_type

log = logging.getLogger(__name__)


class AutofeatEngineConfig(FeastConfigBaseModel):
    """Options of ``AutofeatEngine`` in ``feature_store.yaml``."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(default="feast_autofeat.feast.engine.AutofeatEngine",
                      description="the engine's class, as Feast imports it")
    model_root: str | None = Field(default=None, description="where model versions lie, overriding the root "
                                   "each view recorded at deploy time")
    batch_size: int = Field(default=16384, ge=1, description="rows per pipeline step (encode, online write, "
                            "snapshot write): small enough that the steps overlap well")
    device: Literal["cpu", "cuda", "auto"] = Field(default="cpu", description="where the encoders run")
    threads: int | None = Field(default=None, ge=1, description="torch intra-op threads (default: torch's "
                                "choice)")
    write_offline: bool = Field(default=True, description="also write the point-in-time snapshot at the "
                                "interval's end (training sets read it)")
    input_chunk_rows: int = Field(default=1_000_000, ge=1, description="entities per read of an embedding's "
                                  "inputs: more are read in that many key partitions (key mod P), one at a "
                                  "time, so a materialization's memory does not grow with the entity count")
    ray_address: str | None = Field(default=None, description="a Ray cluster (\"auto\", \"host:port\") to encode "
                                    "on, in an actor pool (``ray_encode.py``); unset: in this process")
    ray_actors: int = Field(default=2, ge=1, description="actors in the Ray pool; each loads the model once")
    ray_cpus_per_actor: float = Field(default=1.0, gt=0, description="CPUs Ray reserves per actor")
    ray_gpus_per_actor: float = Field(default=0.0, ge=0, description="GPUs per actor (> 0: the actors encode on "
                                      "CUDA)")


def utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def snapshot_file(directory: Path, at: datetime) -> Path:
    return directory / f"{SNAPSHOT_PREFIX}{utc(at).strftime(SNAPSHOT_TS_FORMAT)}.parquet"


@dataclass
class EmbeddingSpec:
    """An embedding view as registered: which model version computes it from which inputs."""

    view: object  # feast FeatureView
    name: str
    model: str
    version: str
    root: str
    key: str
    snapshots: Path
    key_kind: str = "int64"

    @classmethod
    def from_view(cls, fv, registry, project: str, model_root: str | None = None) -> EmbeddingSpec:
        tags = fv.tags
        entity = registry.get_entity(fv.entities[0], project)
        kind = tags.get(KEY_KIND_TAG)
        if kind is None:
            column = next((c for c in fv.entity_columns if c.name == entity.join_key), None)
            kind = kind_of_value_type(column.dtype.to_value_type()) if column is not None else "int64"
        return cls(view=fv, name=tags[VIEW_TAG], model=tags[MODEL_TAG], version=tags[VERSION_TAG],
                   root=model_root or tags[ROOT_TAG], key=entity.join_key, snapshots=Path(fv.batch_source.path),
                   key_kind=kind)

    @property
    def key_type(self) -> pa.DataType:
        return KEY_ARROW[self.key_kind]


STORED_KINDS = ("embedding", "two_tower")  # declaration kinds whose views the engine computes


def is_embedding_view(fv) -> bool:
    return (getattr(fv, "tags", None) or {}).get(KIND_TAG) in STORED_KINDS


def _duckdb_reader(offline):
    """Feast's DuckDB source reader (an Ibis table of a data source) when ``offline`` is Feast's DuckDB offline
    store, else None."""
    try:
        from feast.infra.offline_stores.duckdb import DuckDBOfflineStore, _read_data_source
        from feast.infra.offline_stores.ibis import deduplicate  # noqa: F401 - the partition query needs it
    except ImportError:
        return None
    if offline is DuckDBOfflineStore or isinstance(offline, DuckDBOfflineStore):
        return _read_data_source
    return None


class EmbeddingComputer:
    """Inputs as of a time -> vectors, in batches: shared by ``feast materialize`` and ``backfill``."""

    def __init__(self, spec: EmbeddingSpec, repo_config, offline_store, registry, project: str,
                 config: AutofeatEngineConfig):
        self.spec, self.repo_config, self.offline, self.registry = spec, repo_config, offline_store, registry
        self.project, self.config = project, config
        if config.threads:
            torch.set_num_threads(config.threads)
        self.encoder = load_encoder(spec.root, spec.model, spec.version, config.device)
        if not isinstance(self.encoder, FeatureEncoder):
            raise AutofeatError(f"embedding view {spec.view.name}: model {spec.model} encodes item histories; "
                                "use it through session_embedding_view.")
        try:
            self.inputs = [registry.get_feature_view(v, project) for v in self.encoder.input_views]
        except Exception as exc:
            raise AutofeatError(f"embedding view {spec.view.name}: an input view of {spec.model}/{spec.version} "
                                f"({', '.join(self.encoder.input_views)}) is not registered ({exc}); "
                                "`feast apply` the repo that defines them.") from None

    def first_seen(self, end: datetime) -> pd.DataFrame:
        """Each entity's first input row time (up to ``end``), for backfills."""
        if not self.inputs and isinstance(self.encoder, CandidateEncoder):  # no item views: the whole catalogue
            return pd.DataFrame({self.spec.key: self.encoder.catalogue(),
                                 "first_seen": pd.Timestamp("1970-01-01", tz="UTC")})
        frames = []
        for view in self.inputs:
            src = view.batch_source
            t = self.offline.pull_all_from_table_or_query(
                config=self.repo_config, data_source=src, join_key_columns=[self.spec.key], feature_name_columns=[],
                timestamp_field=src.timestamp_field, start_date=datetime(1970, 1, 1, tzinfo=timezone.utc),
                end_date=end).to_df()
            frames.append(t.rename(columns={src.timestamp_field: "first_seen"})[[self.spec.key, "first_seen"]])
        df = pd.concat(frames, ignore_index=True)
        return df.groupby(self.spec.key, as_index=False)["first_seen"].min()

    def _latest_jobs(self, end: datetime) -> list[tuple[object, list[str]]]:
        """Per input view: Feast's ``pull_latest_from_table_or_query`` job up to ``end`` and the columns read."""
        key, refs, jobs = self.spec.key, set(self.encoder.feature_refs), []
        for view in self.inputs:
            src = view.batch_source
            cols = [f.name for f in view.features if f"{view.name}:{f.name}" in refs]
            jobs.append((self.offline.pull_latest_from_table_or_query(
                config=self.repo_config, data_source=src, join_key_columns=[key], feature_name_columns=cols,
                timestamp_field=src.timestamp_field, created_timestamp_column=src.created_timestamp_column or None,
                start_date=datetime(1970, 1, 1, tzinfo=timezone.utc), end_date=end), cols))
        return jobs

    def input_partitions(self, end: datetime) -> tuple[int, int]:
        """(key partitions, entities) for reading the inputs as of ``end`` in chunks of at most about
        ``input_chunk_rows`` entities: one count per input view (the largest is the estimate). When every
        view's source rows fit one chunk, the entities figure is that row count, a bound. Offline stores whose
        jobs are not Ibis expressions (DuckDB's are) are read whole: (1, 0)."""
        jobs = self._latest_jobs(end)
        if any(not hasattr(getattr(job, "table", None), "count") for job, _ in jobs):
            return 1, 0
        # a source has no more entities than rows up to ``end``: when that bound fits one chunk (the usual
        # case), skip the exact count, which costs a latest-row pass over the source
        bound = [self._source_rows(view, end) for view in self.inputs]
        if None not in bound and max(bound, default=0) <= self.config.input_chunk_rows:
            return 1, max(bound, default=0)
        entities = max((int(job.table.count().to_pyarrow().as_py()) for job, _ in jobs), default=0)
        return max(1, -(-entities // self.config.input_chunk_rows)), entities

    def _source_rows(self, view, end: datetime) -> int | None:
        """A bound on ``view``'s entities up to ``end``: a local parquet source's row count (from the file
        footers), else its rows at or before ``end`` counted by DuckDB (DuckDB offline store; elsewhere None)."""
        read = _duckdb_reader(self.offline)
        if read is None:
            return None
        src = view.batch_source
        path = getattr(src, "path", None) or ""
        if path.endswith(".parquet") and "://" not in path and Path(path).is_file():
            return pq.ParquetFile(path).metadata.num_rows
        table = read(src, str(self.repo_config.repo_path))
        ts = table[src.timestamp_field].cast("timestamp")
        return int(table.filter(ts <= utc(end).replace(tzinfo=None)).count().to_pyarrow().as_py())

    def _partition_query(self, job, view, cols: list[str], end: datetime, p: int, n_parts: int):
        """The Ibis query of ``job`` (Feast's latest rows up to ``end``) for the keys with key mod n_parts = p
        (made non-negative for negative keys). On DuckDB it is rebuilt from Feast's own pieces (its source reader
        and ``deduplicate``) with the key filter *before* the latest-row window: DuckDB does not push the filter
        through the window, which would then rank every entity's rows for every partition (memory growing with
        the entity count). Elsewhere the filter goes on top of Feast's query."""
        key = self.spec.key

        def mine(t):
            value = t[key].hash() if self.spec.key_kind == "string" else t[key]
            return ((value % n_parts) + n_parts) % n_parts == p

        read = _duckdb_reader(self.offline)
        if read is None:  # another offline store or Feast layout: correct, without the memory bound
            return job.table.filter(mine(job.table))
        from feast.infra.offline_stores.ibis import deduplicate

        src = view.batch_source
        ts, created = src.timestamp_field, src.created_timestamp_column or None
        table = read(src, str(self.repo_config.repo_path))
        table = table.select(*([key] + cols + [ts] + ([created] if created else [])))
        low, high = datetime(1970, 1, 1), utc(end).replace(tzinfo=None)  # Feast's pull_latest bounds, naive UTC
        table = table.filter(mine(table), table[ts].cast("timestamp") >= low, table[ts].cast("timestamp") <= high)
        return deduplicate(table=table, group_by_cols=[key], event_timestamp_col=ts, created_timestamp_col=created)

    def latest_inputs(self, start: datetime, end: datetime, part: tuple[int, int] = (0, 1)) -> pa.Table:
        """Every entity with an input row in [start, end], with its inputs as of ``end``: per input view the
        latest row at or before ``end`` (Feast's ``pull_latest_from_table_or_query``: ties broken by the
        created timestamp), features nulled where that row is older than the view's TTL. For one time this is
        exactly Feast's point-in-time join (tested against it), at one scan per view instead of a join per
        entity row. ``part=(p, P)``: only the entities whose key mod P is p (the filter runs in the offline
        store's query, so only that partition reaches this process)."""

        key = self.spec.key
        p, n_parts = part
        end_scalar = pa.scalar(end, pa.timestamp("us", tz="UTC"))
        tables, changed = [], []
        for (job, cols), view in zip(self._latest_jobs(end), self.inputs):
            src = view.batch_source
            if n_parts == 1:
                t = job.to_arrow()
            else:  # Ibis (input_partitions checked)
                t = self._partition_query(job, view, cols, end, p, n_parts).to_pyarrow()
            ts = t.column(src.timestamp_field)
            ts = ts.cast(pa.timestamp("us", tz="UTC")) if ts.type.tz is None else ts.cast(pa.timestamp("us", "UTC"))
            changed.append(pc.filter(t.column(key), pc.greater_equal(ts, pa.scalar(start, end_scalar.type))))
            if view.ttl and view.ttl > timedelta(0):
                expired = pc.less(ts, pa.scalar(end - view.ttl, end_scalar.type))
                t = pa.table({key: t.column(key), **{c: pc.if_else(expired, pa.nulls(len(t), t.column(c).type),
                                                                     t.column(c)) for c in cols}})
            tables.append(t.select([key] + cols))
        # (the chunks themselves: pa.chunked_array of ChunkedArrays would convert them value by value)
        kt = self.spec.key_type
        if not self.inputs and isinstance(self.encoder, CandidateEncoder):  # no item views: the model's catalogue
            changed = [pa.chunked_array([pa.array(self.encoder.catalogue(), kt)])]
        ids = pc.unique(pa.chunked_array([c for ch in changed for c in ch.cast(kt).chunks], kt))
        ids = ids.take(pc.sort_indices(ids))
        columns = {key: ids}
        for t in tables:  # one row per key in each (the latest): a hash lookup per id instead of a join
            rows = pc.index_in(ids, value_set=t.column(key).combine_chunks().cast(kt))
            for c in t.column_names[1:]:
                if c in columns:
                    raise AutofeatError(f"{self.spec.view.name}: input column {c!r} comes from two input views; "
                                        "rename one of the features.")
                columns[c] = t.column(c).take(rows)  # null where the view has no row for the id
        return pa.table(columns).combine_chunks()

    def inputs_as_of(self, entity_df: pd.DataFrame) -> pa.Table:
        """Point-in-time input features for (key, event_timestamp) rows, through Feast's offline store."""
        if not self.inputs:
            return pa.Table.from_pandas(entity_df, preserve_index=False)
        job = self.offline.get_historical_features(
            config=self.repo_config, feature_views=self.inputs, feature_refs=self.encoder.feature_refs,
            entity_df=entity_df, registry=self.registry, project=self.project, full_feature_names=False)
        return job.to_arrow().combine_chunks()

    def encode(self, table: pa.Table) -> np.ndarray:
        """Vectors of the rows of ``table`` through the core transform ``runtime.encode_batch``."""
        out = encode_batch(table, root=self.spec.root, model=self.spec.model, version=self.spec.version,
                           key=self.spec.key, device=self.config.device)
        return batch_vectors(out)

    def snapshot_table(self, ids: np.ndarray, at: np.ndarray | datetime, vectors: np.ndarray) -> pa.Table:
        n = len(ids)
        ts = pa.array(np.full(n, np.datetime64(utc(at).replace(tzinfo=None), "us")) if isinstance(at, datetime)
                      else np.asarray(at, "datetime64[us]"), pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC"))
        emb = vectors_array(vectors).cast(pa.list_(pa.float32()))
        return pa.Table.from_arrays([pa.array(ids, self.spec.key_type), ts, emb,
                                     pa.array([self.spec.version] * n)],
                                    schema=snapshot_schema(self.spec.key, self.spec.key_kind))


def encode_and_write(comp: EmbeddingComputer, inputs: pa.Table, writer, at: datetime, batch_size: int,
                     snapshot: _SnapshotWriter | None = None, bar=None) -> int:
    """Encode ``inputs`` in batches; write each batch online in one thread and to the snapshot in another, so
    encoding batch k+1 overlaps writing batch k (all three release the GIL for most of their work). Returns
    the rows written online."""
    written, online, offline = 0, [], []
    with ThreadPoolExecutor(max_workers=1) as online_pool, ThreadPoolExecutor(max_workers=1) as offline_pool:
        for keys, vectors in encoded_batches(comp, inputs, batch_size):
            online.append(online_pool.submit(writer.write, keys, vectors, comp.spec.version, at))
            if snapshot is not None:
                offline.append(offline_pool.submit(snapshot.write, comp.snapshot_table(keys, at, vectors)))
            while len(online) > 1:  # at most one batch queued behind the one being written: bounded memory
                written += online.pop(0).result()
            while len(offline) > 1:
                offline.pop(0).result()
            if bar is not None:
                bar.update(len(keys))
        for future in online:
            written += future.result()
        for future in offline:
            future.result()
    return written


def encoded_batches(comp: EmbeddingComputer, inputs: pa.Table, batch_size: int):
    """(keys, vectors) per batch: in this process, or (``ray_address`` set) from a Ray actor pool."""
    cfg = comp.config
    if cfg.ray_address:
        from feast_autofeat.feast.ray_encode import ray_batches

        stats: dict = {}
        yield from ray_batches(inputs, address=cfg.ray_address, root=comp.spec.root, model=comp.spec.model,
                               version=comp.spec.version, key=comp.spec.key, batch_size=batch_size,
                               actors=cfg.ray_actors, cpus_per_actor=cfg.ray_cpus_per_actor,
                               gpus_per_actor=cfg.ray_gpus_per_actor, stats=stats)
        log.info("%s: %d rows encoded by %d Ray actors, model loads per actor %s", comp.spec.view.name,
                 inputs.num_rows, stats.get("actors", 0), sorted(stats.get("model_loads", {}).values()))
        comp.ray_stats = stats
        return
    for start in range(0, inputs.num_rows, batch_size):
        table = inputs.slice(start, batch_size)
        yield table.column(comp.spec.key).to_numpy(), comp.encode(table)


class AutofeatEngine(LocalComputeEngine):
    """Feast batch engine: embedding views encoded in batches (model loaded once per process), other views
    through Feast's local engine."""

    def __init__(self, *, repo_config, offline_store, online_store, **options):
        try:
            self.config = AutofeatEngineConfig(**options)
        except ValidationError as exc:
            raise AutofeatError(f"batch_engine options in feature_store.yaml are invalid: {exc}") from None
        super().__init__(repo_config=repo_config, offline_store=offline_store, online_store=online_store)

    def _materialize_one(self, registry, task: MaterializationTask, **kwargs):
        if not is_embedding_view(task.feature_view):
            return super()._materialize_one(registry, task, **kwargs)
        job_id = f"{task.feature_view.name}-{task.start_time}-{task.end_time}"
        try:
            rows = self.materialize_embedding(registry, task)
            log.debug("%s: %d rows", task.feature_view.name, rows)
            return LocalMaterializationJob(job_id=job_id, status=MaterializationJobStatus.SUCCEEDED)
        except Exception as exc:  # Feast re-raises it and leaves the interval unrecorded
            return LocalMaterializationJob(job_id=job_id, status=MaterializationJobStatus.ERROR, error=exc)

    def materialize_embedding(self, registry, task: MaterializationTask) -> int:
        fv = task.feature_view
        spec = EmbeddingSpec.from_view(fv, registry, task.project, self.config.model_root)
        comp = EmbeddingComputer(spec, self.repo_config, self.offline_store, registry, task.project, self.config)
        end = utc(task.end_time)
        n_parts, entities = comp.input_partitions(end)
        inputs = comp.latest_inputs(utc(task.start_time), end, (0, n_parts))
        bar = task.tqdm_builder(entities if n_parts > 1 else inputs.num_rows) if task.tqdm_builder else None
        writer = vector_writer(self.repo_config, self.online_store, fv, spec.key, comp.encoder.dim, spec.key_kind)
        snapshot = None
        if self.config.write_offline:
            ensure_snapshot_dir(spec.snapshots, spec.key, spec.key_kind)
            snapshot = _SnapshotWriter(snapshot_file(spec.snapshots, end), snapshot_schema(spec.key, spec.key_kind))
        try:
            written = encode_and_write(comp, inputs, writer, end, self.config.batch_size, snapshot, bar)
            for p in range(1, n_parts):  # the next partition is read only after the previous one is written
                inputs = None  # let the previous partition go before the next is read
                inputs = comp.latest_inputs(utc(task.start_time), end, (p, n_parts))
                written += encode_and_write(comp, inputs, writer, end, self.config.batch_size, snapshot, bar)
            if n_parts > 1:
                log.info("%s: %d rows from %d input partitions", fv.name, written, n_parts)
            if snapshot is not None:
                snapshot.commit()
        finally:
            if snapshot is not None:
                snapshot.abort()
            writer.close()
            if bar is not None:
                bar.close()
        return written

    def update(self, project, views_to_delete, views_to_keep, entities_to_delete, entities_to_keep):
        pass

    def teardown_infra(self, project, fvs, entities):
        pass


class _SnapshotWriter:
    """Streams batches to a staging file of its own; ``commit`` merges it with the snapshot already at that time
    and renames the result into place, under a lock per snapshot file. Rows of entities this run did not write
    stay; this run's rows replace that time's older rows for the same entities. So no run (a narrower or nested
    window, a repeat, a backfill at the same time, two at once) deletes another's rows, and readers never see a
    partial file."""

    def __init__(self, target: Path, schema: pa.Schema):
        self.target, self.key = target, schema.names[0]
        staging = target.parent.parent / ".staging"
        staging.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f"{target.parent.name}-{target.stem}-", suffix=".parquet", dir=staging)
        os.close(fd)
        self.staging = Path(name)
        self.lock = staging / f"{target.parent.name}-{target.stem}.lock"
        # float vectors do not dictionary-encode: trying costs time for nothing
        self.writer = pq.ParquetWriter(self.staging, schema, use_dictionary=["model_version"])

    def write(self, table: pa.Table) -> None:
        self.writer.write_table(table)

    def commit(self) -> None:
        self.writer.close()
        self.writer = None
        with open(self.lock, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one merge at a time per snapshot file
            if self.target.exists():
                self._merge()
            self.staging.replace(self.target)

    def _merge(self) -> None:
        new = pq.read_table(self.staging)
        old = pq.read_table(self.target).cast(new.schema)
        kept = old.filter(pc.invert(pc.is_in(old.column(self.key), value_set=new.column(self.key))))
        if kept.num_rows:
            merged = pa.concat_tables([new, kept]).sort_by(self.key)
            pq.write_table(merged, self.staging, use_dictionary=["model_version"])

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self.staging.unlink(missing_ok=True)


# ---- backfill: historical snapshots, each from inputs at or before its time
def snapshot_times(start: datetime, end: datetime, every: timedelta) -> list[datetime]:
    if every <= timedelta(0):
        raise AutofeatError(f"--every must be positive, got {every}.")
    if end < start:
        raise AutofeatError(f"--end {end.isoformat()} is before --start {start.isoformat()}.")
    times, t = [], utc(start)
    while t <= utc(end):
        times.append(t)
        t += every
    return times


def leakage_overlap(as_of: str | None, times: list[datetime]) -> list[datetime]:
    """Snapshot times that fall inside the model's training window (the model saw data after them)."""
    if not as_of:
        return []
    trained_until = utc(datetime.fromisoformat(as_of))
    return [t for t in times if t < trained_until]


def backfill(store, view: str, start: datetime, end: datetime, every: timedelta = timedelta(days=1),
             config: AutofeatEngineConfig | None = None, progress: bool = True) -> dict:
    """Write point-in-time snapshots of embedding view ``view`` (a registered ``<name>__<version>``) at
    ``start, start+every, ... <= end``: each from every entity's inputs as of that time. Returns a summary."""
    from tqdm.auto import tqdm

    config = config or _engine_config(store)
    fv = store.get_feature_view(view)
    if not is_embedding_view(fv):
        raise AutofeatError(f"{view} is not an embedding view (no {KIND_TAG} tag); list them with "
                            "`feast-autofeat embeddings`.")
    registry, project = store.registry, store.project
    offline = store._get_provider().offline_store
    spec = EmbeddingSpec.from_view(fv, registry, project, config.model_root)
    comp = EmbeddingComputer(spec, store.config, offline, registry, project, config)
    times = snapshot_times(start, end, every)
    leaked = leakage_overlap(comp.encoder.as_of, times)
    if leaked:
        warnings.warn(
            f"{view}: model {spec.model}/{spec.version} was trained on data up to {comp.encoder.as_of}; "
            f"{len(leaked)} of the {len(times)} snapshots ({leaked[0].date()} .. {leaked[-1].date()}) fall inside "
            "that window, so training sets that use them see a model fitted on later data (leakage). Evaluate "
            "only after the training window, or backfill with a model trained up to --start.",
            LeakageWarning, stacklevel=2)
    seen = comp.first_seen(utc(end))
    ensure_snapshot_dir(spec.snapshots, spec.key, spec.key_kind)
    rows = 0
    bar = tqdm(total=len(times), desc=f"backfill {spec.name}", unit="snapshot", disable=not progress)
    # many snapshot times per point-in-time join (one Feast query for up to ~batch_size * 8 entity rows), then
    # one file per time: the join's fixed cost is paid a few times, not once per snapshot
    first = np.sort(seen["first_seen"].to_numpy("datetime64[us]"))
    counts = np.searchsorted(first, np.array([t.replace(tzinfo=None) for t in times], "datetime64[us]"), "right")
    budget, group = config.batch_size * 8, []
    for i, at in enumerate(times):
        group.append(at)
        if i + 1 < len(times) and sum(counts[i + 1 - len(group):i + 2]) <= budget:
            continue
        rows += _backfill_group(comp, seen, group)
        bar.update(len(group))
        group = []
    bar.close()
    return {"view": view, "model": spec.model, "version": spec.version, "snapshots": len(times), "rows": rows,
            "first": times[0].isoformat() if times else None, "last": times[-1].isoformat() if times else None,
            "leakage_snapshots": len(leaked), "directory": str(spec.snapshots)}


def _backfill_group(comp: EmbeddingComputer, seen: pd.DataFrame, times: list[datetime]) -> int:
    """Snapshots at ``times``: one point-in-time join over every (entity seen by then, time) pair, one encode,
    then each time's rows renamed into place as its own file."""
    key = comp.spec.key
    parts = [pd.DataFrame({key: seen.loc[seen["first_seen"] <= pd.Timestamp(at), key].to_numpy(),
                           "event_timestamp": pd.Timestamp(at)}) for at in times]
    entity_df = pd.concat(parts, ignore_index=True)
    if entity_df.empty:
        none = np.zeros(0, "<U1" if comp.spec.key_kind == "string" else np.int64)
        tables = {at: comp.snapshot_table(none, at, np.zeros((0, comp.encoder.dim), np.float32)) for at in times}
    else:
        table = comp.inputs_as_of(entity_df)
        table = table.take(pc.sort_indices(table, [("event_timestamp", "ascending"), (key, "ascending")]))
        vectors = comp.encode(table)
        stamps = table.column("event_timestamp").to_numpy()
        ids = table.column(key).to_numpy()
        tables = {}
        for at in times:
            t = np.datetime64(utc(at).replace(tzinfo=None), "us")
            lo, hi = np.searchsorted(stamps, t, "left"), np.searchsorted(stamps, t, "right")
            tables[at] = comp.snapshot_table(ids[lo:hi], at, vectors[lo:hi])
    for at, t in tables.items():
        writer = _SnapshotWriter(snapshot_file(comp.spec.snapshots, at), t.schema)
        try:
            writer.write(t)
            writer.commit()
        finally:
            writer.abort()
    return len(entity_df)


class LeakageWarning(UserWarning):
    """Backfilled snapshots overlap the model's training window."""


def _engine_config(store) -> AutofeatEngineConfig:
    raw = store.config.batch_engine_config
    if isinstance(raw, dict) and str(raw.get("type", "")).endswith("AutofeatEngine"):
        return AutofeatEngineConfig(**raw)
    return AutofeatEngineConfig()
