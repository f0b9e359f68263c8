"""Raw data -> the parquet tables a feature repo reads (see ``base`` for the layout)."""

from feast_autofeat.datasets import movielens, synthetic
from feast_autofeat.datasets.base import DatasetSpec, Manifest, load_manifest
from feast_autofeat.errors import DataError

SPECS: dict[str, DatasetSpec] = {movielens.SPEC.name: movielens.SPEC, synthetic.SPEC.name: synthetic.SPEC}


def get_spec(name: str) -> DatasetSpec:
    """The spec of a dataset by name, or a ``DataError`` listing the known names."""
    try:
        return SPECS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(sorted(SPECS))}.") from None


__all__ = ["SPECS", "DatasetSpec", "Manifest", "get_spec", "load_manifest"]
