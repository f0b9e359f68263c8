"""Encoding on a Ray cluster: the batch engine's core transform (``runtime.encode_batch``) in a Ray Data actor
pool, selected in ``feature_store.yaml`` alone::

    batch_engine:
      type: feast_autofeat.feast.engine.AutofeatEngine
      ray_address: head-node:6379   # or "auto"; unset = encode in this process
      ray_actors: 4                 # actors in the pool, each loads the model once
      ray_cpus_per_actor: 1
      ray_gpus_per_actor: 0         # > 0 on a cluster with GPUs: the actors encode on CUDA

The driver (the process running ``feast materialize``) reads the inputs as of the interval's end through the
offline store, as the local path does, hands them to Ray Data as Arrow, and streams the encoded batches back:
each is written online (the same writers) and to the same atomic offline snapshot, so the results are the local
engine's, computed elsewhere. Workers need ``feast_autofeat`` and the model root (a shared path) importable and
readable, as any Ray job needs its code and data.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pyarrow as pa

from feast_autofeat.errors import AutofeatError
from feast_autofeat.feast.runtime import batch_vectors, encode_batch, load_encoder

log = logging.getLogger(__name__)
PID_COLUMN, LOADS_COLUMN = "_autofeat_actor_pid", "_autofeat_model_loads"


class RayEncoder:
    """A Ray Data actor: loads (and verifies) the model version once, when it starts, then encodes batches.
    Each output batch carries the actor's pid and its model-load count, which the driver checks and drops."""

    def __init__(self, root: str, model: str, version: str, key: str, device: str, threads: int):
        import torch

        torch.set_num_threads(max(1, threads))
        self.kwargs = {"root": root, "model": model, "version": version, "key": key, "device": device}
        load_encoder(root, model, version, device)  # once per actor; a bad model fails the pool at start

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = encode_batch(batch, **self.kwargs)
        n = out.num_rows
        return pa.Table.from_batches([out]).append_column(PID_COLUMN, pa.array(np.full(n, os.getpid()), pa.int64())) \
            .append_column(LOADS_COLUMN, pa.array(np.full(n, load_encoder.cache_info().misses), pa.int64()))


def ray_batches(inputs: pa.Table, *, address: str, root: str, model: str, version: str, key: str,
                batch_size: int, actors: int, cpus_per_actor: float, gpus_per_actor: float, stats: dict):
    """Yield (keys, vectors) of ``inputs`` encoded by a pool of ``actors`` Ray actors (any order); ``stats``
    receives the actors' pids and model loads seen."""
    try:
        import ray
    except ImportError as exc:
        raise AutofeatError("batch_engine.ray_address is set but Ray is not installed: pip install "
                            "'feast-autofeat[ray]' (ray[data]).") from exc
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING,
                     include_dashboard=False)
        except Exception as exc:  # ConnectionError and Ray's own errors
            raise AutofeatError(f"cannot reach the Ray cluster at {address} ({exc}); start it (`ray start "
                                "--head`) or fix batch_engine.ray_address.") from exc
    try:
        device = "cuda" if gpus_per_actor > 0 else "cpu"
        # Feast's own progress bar counts the rows (the engine updates it per batch): keep Ray Data's quiet
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        # start every actor of the pool before the first block goes out: otherwise the first actor up can take
        # every block of a small input while the others still load torch (a cluster that cannot place the pool
        # fails after this long instead of waiting forever)
        context.wait_for_min_actors_s = 600
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        # one block per batch, so that every actor of the pool gets work (one table = one block = one actor)
        blocks = [inputs.slice(start, batch_size) for start in range(0, inputs.num_rows, batch_size)]
        ds = ray.data.from_arrow(blocks or [inputs]).map_batches(
            RayEncoder, fn_constructor_kwargs={"root": root, "model": model, "version": version, "key": key,
                                               "device": device, "threads": int(max(1, cpus_per_actor))},
            batch_size=batch_size, batch_format="pyarrow", concurrency=actors, num_cpus=cpus_per_actor,
            num_gpus=gpus_per_actor or None)
        pids, loads = set(), {}
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            pid, load = batch.column(PID_COLUMN).to_numpy(), batch.column(LOADS_COLUMN).to_numpy()
            for p in np.unique(pid).tolist():  # one or a few actors per batch
                pids.add(p)
                loads[p] = max(loads.get(p, 0), int(load[pid == p].max()))
            rb = batch.select([key, "embedding"]).combine_chunks().to_batches()[0]
            yield rb.column(key).to_numpy(), batch_vectors(rb)
        stats.update({"actors": len(pids), "model_loads": dict(loads)})
    finally:
        if started_here:
            ray.shutdown()
