"""Learned embeddings declared as ordinary Feast objects, one feature view per model version.

A feature repo declares an embedding once, e.g.::

    user_dae = embedding_view("user_dae", entity=user, model="dae", inputs=[user_profile, user_behaviour],
                              dim=64, repo=__file__)
    globals().update(user_dae.feast_objects())

Which versions exist is the repo's ``embeddings.json`` (written by ``feast-autofeat deploy / promote /
rollback``; commit it like a lock file). For every deployed version the declaration yields

* a ``FeatureView`` named ``<name>__<version>`` with features ``embedding`` (``Array(Float32)``, with
  ``vector_length``) and ``model_version``, tagged with the model and its version hash, whose source is that
  version's point-in-time snapshots (parquet, one file per snapshot time), and
* for the live version, a ``FeatureService`` named ``<name>`` that projects it as ``<name>``, so serving code
  asks for ``store.get_feature_service("user_dae")`` and a cut-over is one registry change.

Versions never share a view, so no vector of one version is ever served under another's name. The
declaration checks each version against the model's saved JSON when ``feast apply`` imports the repo: a
missing or tampered version, a different dimension or different inputs fail there with a message.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from feast import FeatureService, FeatureView, Field, FileSource, OnDemandFeatureView, RequestSource
from feast.data_format import ParquetFormat
from feast.types import Array, Float32, Float64, Int64, String

from feast_autofeat.artifacts import load_version, model_root
from feast_autofeat.errors import AutofeatError
from feast_autofeat.feast.runtime import model_dim

LOCK_FILE = "embeddings.json"
KIND_TAG, MODEL_TAG, VERSION_TAG, ROOT_TAG, VIEW_TAG = (
    "autofeat.kind", "autofeat.model", "autofeat.version", "autofeat.model_root", "autofeat.view")
SNAPSHOT_PREFIX = "at="
SNAPSHOT_TS_FORMAT = "%Y%m%dT%H%M%S%f"


class DeploymentError(AutofeatError):
    """An embedding declaration disagrees with its model, or a deploy / promote / rollback is invalid."""


# ---- the lock file: which versions of each embedding are deployed, which one is live
@dataclass
class Deployment:
    model: str
    versions: list[str] = field(default_factory=list)
    live: str | None = None
    previous: list[str] = field(default_factory=list)  # earlier live versions, newest last (for rollback)


class Deployments:
    """``<repo>/embeddings.json``, rewritten atomically on every change."""

    def __init__(self, repo: str | os.PathLike):
        self.path = Path(repo) / LOCK_FILE
        raw = json.loads(self.path.read_text()) if self.path.exists() else {}
        try:
            self.entries = {name: Deployment(**entry) for name, entry in raw.items()}
        except TypeError as exc:
            raise DeploymentError(f"{self.path} is malformed ({exc}); restore it from version control.") from None

    def get(self, name: str) -> Deployment | None:
        return self.entries.get(name)

    def save(self) -> None:
        text = json.dumps({k: vars(v) for k, v in sorted(self.entries.items())}, indent=2) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=".embeddings-", dir=self.path.parent)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.path)

    def deploy(self, name: str, model: str, version: str, live: bool = False) -> Deployment:
        entry = self.entries.setdefault(name, Deployment(model=model))
        if entry.model != model:
            raise DeploymentError(f"{name} is an embedding of model {entry.model}, not {model}.")
        if version not in entry.versions:
            entry.versions.append(version)
        if live or entry.live is None:
            self._set_live(entry, version)
        return entry

    def promote(self, name: str, version: str) -> Deployment:
        entry = self._entry(name)
        matches = [v for v in entry.versions if v.startswith(version)]
        if len(matches) != 1:
            raise DeploymentError(f"{name} has {'no' if not matches else 'several'} deployed version(s) matching "
                                  f"{version!r}; deployed: {', '.join(entry.versions) or 'none'}. Deploy it first "
                                  "(`feast-autofeat deploy`).")
        self._set_live(entry, matches[0])
        return entry

    def rollback(self, name: str) -> Deployment:
        entry = self._entry(name)
        candidates = [v for v in entry.previous if v in entry.versions]
        if not candidates:
            raise DeploymentError(f"{name} has no earlier live version to roll back to.")
        target = candidates[-1]
        entry.previous = [v for v in entry.previous if v != target]
        entry.live = target
        return entry

    def _set_live(self, entry: Deployment, version: str) -> None:
        if entry.live and entry.live != version:
            entry.previous = [v for v in entry.previous if v != entry.live] + [entry.live]
        entry.live = version

    def _entry(self, name: str) -> Deployment:
        if name not in self.entries:
            raise DeploymentError(f"no embedding named {name!r} is deployed in {self.path.parent} "
                                  f"(known: {', '.join(self.entries) or 'none'}).")
        return self.entries[name]


def view_name(name: str, version: str) -> str:
    return f"{name}__{version}"


def _repo_dir(repo) -> Path:
    path = Path(repo).resolve()
    return path.parent if path.is_file() or path.suffix == ".py" else path


# ---- offline snapshots: <data>/embeddings/<name>/<version>/at=<time>.parquet
def snapshot_schema(key: str, dim: int) -> pa.Schema:
    return pa.schema([(key, pa.int64()), ("event_timestamp", pa.timestamp("us", tz="UTC")),
                      ("embedding", pa.list_(pa.float32())), ("model_version", pa.string())])


def ensure_snapshot_dir(directory: Path, key: str, dim: int) -> None:
    """Create a version's snapshot directory with an empty seed file, so its source is readable before the
    first snapshot (DuckDB cannot read an empty directory)."""
    seed = directory / f"{SNAPSHOT_PREFIX}0.parquet"
    if seed.exists():
        return
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(snapshot_schema(key, dim).empty_table(), seed)


def write_atomic(table: pa.Table, target: Path) -> None:
    staging = target.parent.parent / ".staging"
    staging.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.stem, suffix=".parquet", dir=staging)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- declarations
@dataclass
class EmbeddingDeclaration:
    """What ``embedding_view`` / ``session_embedding_view`` return: the Feast objects of every deployed version."""

    name: str
    views: dict[str, FeatureView | OnDemandFeatureView]  # version -> view
    live: FeatureService | None

    @property
    def live_view(self):
        """The live version projected under the embedding's own name (for a FeatureService), or None."""
        return self.views[self.live.tags[VERSION_TAG]].with_name(self.name) if self.live is not None else None

    def feast_objects(self) -> dict:
        """Module globals for Feast to discover (``globals().update(decl.feast_objects())``)."""
        objects = {f"_autofeat_{v.name}": v for v in self.views.values()}
        if self.live is not None:
            objects[f"_autofeat_{self.name}_live"] = self.live
        return objects


def _live_service(name: str, views: dict, live: str | None, description: str) -> FeatureService | None:
    if live is None or live not in views:
        return None
    return FeatureService(name=name, features=[views[live].with_name(name)],
                          description=f"Live version of {name} ({live}). {description}".strip(),
                          tags={VIEW_TAG: name, VERSION_TAG: live})


def _check_refs(name: str, version: str, refs: list[str], inputs: list[FeatureView]) -> None:
    declared = {f"{v.name}:{f.name}" for v in inputs for f in v.features}
    missing = [r for r in refs if r not in declared]
    extra_views = {v.name for v in inputs} - {r.split(":", 1)[0] for r in refs}
    if missing or extra_views:
        raise DeploymentError(
            f"embedding view {name}: model version {version} was trained on {len(refs)} features from "
            f"{sorted({r.split(':', 1)[0] for r in refs})}, but the declaration's inputs "
            f"{[v.name for v in inputs]} " + (f"lack {missing[:5]}{' ...' if len(missing) > 5 else ''}"
                                              if missing else f"add views {sorted(extra_views)}")
            + ". Declare the inputs the model was trained on, or deploy a version trained on these.")


def embedding_view(name: str, *, entity, model: str, inputs: list[FeatureView], dim: int, repo,
                   data_dir: str | os.PathLike | None = None, root: str | os.PathLike | None = None,
                   ttl: timedelta = timedelta(0), description: str = "", tags: dict | None = None,
                   ) -> EmbeddingDeclaration:
    """A materialized embedding of ``entity`` computed by ``model`` from the features of ``inputs``.

    ``repo``: the feature repo (pass ``__file__``); ``data_dir``: where snapshots live (default
    ``<repo>/data``); ``root``: the model root (default ``$AUTOFEAT_MODEL_ROOT`` or ``<repo>/models``);
    ``ttl``: how old a snapshot a training row may use (0: no limit).
    """
    repo_dir = _repo_dir(repo)
    root = model_root(root, default=repo_dir / "models").resolve()
    data_dir = Path(data_dir or os.environ.get("AUTOFEAT_DATA_DIR") or repo_dir / "data").resolve()
    entry = Deployments(repo_dir).get(name)
    if entry is not None and entry.model != model:
        raise DeploymentError(f"embedding view {name} is declared with model {model}, but {LOCK_FILE} deploys "
                              f"model {entry.model}; fix one of them.")
    views = {}
    key = entity.join_key
    for version in entry.versions if entry else []:
        config = load_version(root, model, version).config  # verifies the content hash
        out_dim = model_dim(model, config)
        if out_dim != dim:
            raise DeploymentError(f"embedding view {name}: model {model}/{version} outputs {out_dim}-d vectors, "
                                  f"the declaration says dim={dim}. Declare dim={out_dim} or deploy a version "
                                  f"with {dim} dimensions.")
        _check_refs(name, version, config.get("feature_refs") or [], inputs)
        directory = data_dir / "embeddings" / name / version
        ensure_snapshot_dir(directory, key, dim)
        views[version] = FeatureView(
            name=view_name(name, version), entities=[entity], ttl=ttl, online=True,
            schema=[Field(name="embedding", dtype=Array(Float32), vector_length=dim),
                    Field(name="model_version", dtype=String)],
            source=FileSource(name=f"{view_name(name, version)}_snapshots", path=str(directory),
                              file_format=ParquetFormat(), timestamp_field="event_timestamp"),
            description=f"{model} embedding of {entity.name}, model version {version}. {description}".strip(),
            tags={**(tags or {}), KIND_TAG: "embedding", VIEW_TAG: name, MODEL_TAG: model, VERSION_TAG: version,
                  ROOT_TAG: str(root), "autofeat.dim": str(dim),
                  "autofeat.inputs": ",".join(v.name for v in inputs)},
        )
    return EmbeddingDeclaration(name, views, _live_service(name, views, entry.live if entry else None,
                                                           description))


_SESSION_UDF = '''def {fn}(inputs):
    from feast_autofeat.feast.runtime import session_embeddings
    return session_embeddings(inputs[{field!r}], root={root!r}, model={model!r}, version={version!r},
                              output={output!r})
'''

_FEATURES_UDF = '''def {fn}(inputs):
    from feast_autofeat.feast.runtime import feature_embeddings
    return feature_embeddings(inputs, root={root!r}, model={model!r}, version={version!r}, output={output!r})
'''


def _udf(template: str, **literals):
    """Build the UDF from source text holding the model version as a literal: Feast stores the text and execs it
    when it loads the registry, so the function needs no module globals and the registry holds no weights."""
    source = template.format(**literals)
    namespace: dict = {}
    exec(source, namespace)  # noqa: S102 - our own template, literals are repr()'d
    return namespace[literals["fn"]], source


def session_embedding_view(name: str, *, model: str = "multvae", repo, field: str = "recent_items",
                           root: str | os.PathLike | None = None, description: str = "") -> EmbeddingDeclaration:
    """An on-demand view that folds a request's recent item ids (``field``: list of Int64) into a Mult-VAE.

    Outputs ``<name>`` (the vector) and ``<name>_known_items`` (how many of the ids the model knows; 0 means
    the vector is the model's empty-history vector). Non-integer ids are an error.
    """
    repo_dir = _repo_dir(repo)
    root = model_root(root, default=repo_dir / "models").resolve()
    entry = Deployments(repo_dir).get(name)
    views = {}
    for version in entry.versions if entry else []:
        dim = model_dim(model, load_version(root, model, version).config)
        udf, source = _udf(_SESSION_UDF, fn=f"{name}_{version}", field=field, root=str(root), model=model,
                           version=version, output=name)
        request = RequestSource(name=f"{view_name(name, version)}_request", schema=[Field(name=field,
                                                                                           dtype=Array(Int64))])
        views[version] = OnDemandFeatureView(
            name=view_name(name, version), sources=[request], mode="python", udf=udf, udf_string=source,
            schema=[Field(name=name, dtype=Array(Float32), vector_length=dim),
                    Field(name=f"{name}_known_items", dtype=Int64)],
            description=f"Session embedding from {model}/{version}. {description}".strip(),
            tags={KIND_TAG: "session", VIEW_TAG: name, MODEL_TAG: model, VERSION_TAG: version, ROOT_TAG: str(root)})
    return EmbeddingDeclaration(name, views, _live_service(name, views, entry.live if entry else None,
                                                           description))


def request_embedding_view(name: str, *, model: str = "dae", repo, root: str | os.PathLike | None = None,
                           description: str = "") -> EmbeddingDeclaration:
    """An on-demand view that encodes raw feature values sent with the request (the model's input columns:
    numbers as Float64, categories as String) with a DAE or GAN critic. Output: ``<name>``."""
    repo_dir = _repo_dir(repo)
    root = model_root(root, default=repo_dir / "models").resolve()
    entry = Deployments(repo_dir).get(name)
    views = {}
    for version in entry.versions if entry else []:
        config = load_version(root, model, version).config
        dtypes = config.get("input_schema") or {}
        schema = [Field(name=c, dtype=String if t == "categorical" else Float64) for c, t in dtypes.items()]
        udf, source = _udf(_FEATURES_UDF, fn=f"{name}_{version}", root=str(root), model=model, version=version,
                           output=name)
        request = RequestSource(name=f"{view_name(name, version)}_request", schema=schema)
        views[version] = OnDemandFeatureView(
            name=view_name(name, version), sources=[request], mode="python", udf=udf, udf_string=source,
            schema=[Field(name=name, dtype=Array(Float32), vector_length=model_dim(model, config))],
            description=f"Request-time {model} embedding, version {version}. {description}".strip(),
            tags={KIND_TAG: "request", VIEW_TAG: name, MODEL_TAG: model, VERSION_TAG: version, ROOT_TAG: str(root)})
    return EmbeddingDeclaration(name, views, _live_service(name, views, entry.live if entry else None,
                                                           description))
