"""Raw data -> the parquet tables a feature repo reads (see ``base`` for the layout)."""

from feast_autofeat.datasets import movielens, synthetic
from feast_autofeat.datasets.base import DatasetSpec, Manifest, load_manifest
from feast_autofeat.errors import DataError

SPECS: dict[str, DatasetSpec] = {movielens.SPEC.name: movielens.SPEC, synthetic.SPEC.name: synthetic.SPEC}


def get_spec(name: str) -> DatasetSpec:
    """The spec of a built-in dataset by name, or a ``DataError`` listing the known names."""
    try:
        return SPECS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(sorted(SPECS))}, or bring your own "
                        "log (`feast-autofeat prepare --interactions FILE --columns ...`).") from None


def spec_of(manifest: Manifest) -> DatasetSpec:
    """The spec a prepared repo's tables were derived with: the manifest's own, else the built-in one."""
    return manifest.spec if manifest.spec is not None else get_spec(manifest.dataset)


__all__ = ["SPECS", "DatasetSpec", "Manifest", "get_spec", "load_manifest", "spec_of"]
