"""Helpers for a feature repo's definitions: schemas of the prepared tables as Feast ``Field`` lists.

The feature repo (``feature_repo/features.py``) declares its entities, sources and views in plain Feast;
these helpers only say which columns the prepared dataset has, read from ``data/manifest.json``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from feast import Field
from feast.types import Bool, Float32, Float64, Int32, Int64, String, UnixTimestamp

from feast_autofeat.datasets import get_spec, load_manifest
from feast_autofeat.datasets.base import event_log_dir
from feast_autofeat.features.snapshots import item_popularity_fields, user_behaviour_fields

_TYPES = {"Int64": Int64, "Int32": Int32, "Float64": Float64, "Float32": Float32, "String": String,
          "Bool": Bool, "UnixTimestamp": UnixTimestamp}
DATA_DIR_ENV = "AUTOFEAT_DATA_DIR"


def fields(pairs) -> list[Field]:
    """``[(name, "Int64"), ...]`` -> ``[Field(name=..., dtype=Int64), ...]``."""
    return [Field(name=name, dtype=_TYPES[dtype]) for name, dtype in pairs]


@dataclass(frozen=True)
class RepoLayout:
    """Paths and schemas of a prepared feature repo's tables."""

    data_dir: Path
    dataset: str
    user_profile: list[Field]
    item_profile: list[Field]
    user_behaviour: list[Field]
    item_popularity: list[Field]

    def table(self, name: str) -> str:
        """Absolute path of a prepared table. Absolute because Feast's DuckDB store resolves relative
        paths against the process's working directory, not the repo."""
        return str(self.data_dir / f"{name}.parquet")

    def event_log(self) -> str:
        """Absolute path of the event log's directory (read it with ``file_format=ParquetFormat()``)."""
        return str(event_log_dir(self.data_dir))


def repo_layout(repo_file: str | os.PathLike) -> RepoLayout:
    """Layout of the repo holding ``repo_file`` (pass ``__file__``); data in ``<repo>/data`` unless the
    ``AUTOFEAT_DATA_DIR`` environment variable points elsewhere."""
    data_dir = Path(os.environ.get(DATA_DIR_ENV) or Path(repo_file).resolve().parent / "data").resolve()
    manifest = load_manifest(data_dir)
    spec = get_spec(manifest.dataset)
    return RepoLayout(
        data_dir=data_dir,
        dataset=manifest.dataset,
        user_profile=fields(spec.user_profile),
        item_profile=fields(spec.item_profile),
        user_behaviour=fields(user_behaviour_fields(spec)),
        item_popularity=fields(item_popularity_fields(spec)),
    )
