"""Helpers for a prepared feature repo's definitions: what ``feast-autofeat prepare`` wrote, read from
``data/manifest.json``.

The feature repo (``feature_repo/features.py``) declares its entities, sources and views in plain Feast; these
helpers say which columns the prepared tables have, the ids' types, what counts as a positive event, and the
documented imputation of the behaviour snapshots.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from feast import Field
from feast.types import Bool, Float32, Float64, Int32, Int64, String, UnixTimestamp
from feast.value_type import ValueType

from feast_autofeat.datasets import load_manifest, spec_of
from feast_autofeat.datasets.base import event_log_dir
from feast_autofeat.feast.embeddings import DATA_DIR_ENV
from feast_autofeat.features.snapshots import WINDOWS, item_popularity_fields, user_behaviour_fields

_TYPES = {"Int64": Int64, "Int32": Int32, "Float64": Float64, "Float32": Float32, "String": String,
          "Bool": Bool, "UnixTimestamp": UnixTimestamp}
_VALUE_TYPES = {"int64": ValueType.INT64, "int32": ValueType.INT32, "string": ValueType.STRING}


def fields(pairs) -> list[Field]:
    """``[(name, "Int64"), ...]`` -> ``[Field(name=..., dtype=Int64), ...]``."""
    return [Field(name=name, dtype=_TYPES[dtype]) for name, dtype in pairs]


@dataclass(frozen=True)
class RepoLayout:
    """Paths, schemas and semantics of a prepared feature repo's tables."""

    data_dir: Path
    dataset: str
    user_profile: list[Field]
    item_profile: list[Field]
    user_behaviour: list[Field]
    item_popularity: list[Field]
    user_key_type: ValueType
    item_key_type: ValueType
    positive: str  # SQL predicate over an event (alias ``e``): a positive interaction
    event_types: tuple[str, ...]
    rating: str | None  # the rating column, if the log has one
    rating_range: tuple[float, float] | None
    item_text: list[Field]  # the items table's text columns (titles, descriptions), for a text view; may be empty

    def table(self, name: str) -> str:
        """Absolute path of a prepared table. Absolute because Feast's DuckDB store resolves relative
        paths against the process's working directory, not the repo."""
        return str(self.data_dir / f"{name}.parquet")

    def event_log(self) -> str:
        """Absolute path of the event log's directory (read it with ``file_format=ParquetFormat()``)."""
        return str(event_log_dir(self.data_dir))

    @property
    def behaviour_fill(self) -> dict[str, float]:
        """Documented imputation of the behaviour snapshots: a missing snapshot means no activity in the trailing
        window, so counts are 0 and days-since-last-event is one more than the window; a missing mean rating
        becomes 0."""
        return {f.name: float(max(WINDOWS) + 1) if f.name == "days_since_last_event" else 0.0
                for f in self.user_behaviour}


def repo_layout(repo_file: str | os.PathLike) -> RepoLayout:
    """Layout of the repo holding ``repo_file`` (pass ``__file__``); data in ``<repo>/data`` unless the
    ``AUTOFEAT_DATA_DIR`` environment variable points elsewhere."""
    data_dir = Path(os.environ.get(DATA_DIR_ENV) or Path(repo_file).resolve().parent / "data").resolve()
    manifest = load_manifest(data_dir)
    spec = spec_of(manifest)
    return RepoLayout(
        data_dir=data_dir,
        dataset=manifest.dataset,
        user_profile=fields(spec.user_profile),
        item_profile=fields(spec.item_profile),
        user_behaviour=fields(user_behaviour_fields(spec)),
        item_popularity=fields(item_popularity_fields(spec)),
        user_key_type=_VALUE_TYPES[manifest.user_kind],
        item_key_type=_VALUE_TYPES[manifest.item_kind],
        positive=spec.positive,
        event_types=spec.event_types,
        rating=spec.rating_column,
        rating_range=spec.rating_range,
        item_text=fields(spec.item_text),
    )
