"""``feast-autofeat train NAME`` and ``feast_autofeat.train(store, NAME)``: train a declared embedding (or the
declared two-tower) from the store's own data, and save a hash-verified version.

What a model learns from is exactly what its declaration names:

- tabular encoders (DAE, GAN; ``embedding_view`` / ``request_embedding_view``) train on the declared input
  features of the declared entity, point in time through ``store.get_historical_features``. Training rows are an
  entity dataframe (``entity_df``: the join key and ``event_timestamp``), by default the (key, time) pairs of the
  input views' own source rows at or before ``as_of`` (a seeded sample of at most ``max_rows``);
- Mult-VAE (``session_embedding_view``) trains on the positive events of the declared interaction log, read
  through Feast's offline store up to ``as_of``;
- the two-tower (``two_tower``) trains as ``recommend.train`` describes.

Every version records its feature refs, join key, key type and training window. Validation holds out whole
entities (a seeded hash of the key), so early stopping never sees a training entity.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from feast_autofeat.errors import AutofeatError, DataError
from feast_autofeat.feast.offline import TS, parse_time, positive_mask, read_events, registered_view, source_rows
from feast_autofeat.ids import kind_of_value_type
from feast_autofeat.repo import Repo
from feast_autofeat.splits import holdout_users  # noqa: F401 - re-exported for callers of the old location

MAX_ROWS = 50_000
_TABULAR_TYPES = ("INT32", "INT64", "FLOAT", "DOUBLE", "BOOL", "STRING")


@dataclass
class TrainResult:
    name: str
    model: str
    version: str
    path: Path
    as_of: str
    rows: dict
    metrics: dict
    seconds: float
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"trained {self.name} ({self.model}) -> version {self.version} in {self.seconds:.1f}s",
                 f"  saved to    {self.path}"]
        if self.as_of:
            lines.append(f"  as of       {self.as_of} (no data after it was read)")
        lines += [f"  {k:<11} {v:,}" if isinstance(v, int) else f"  {k:<11} {v}" for k, v in self.rows.items()]
        for k, v in self.metrics.items():
            if isinstance(v, float):
                lines.append(f"  {k:<22} {v:.4f}")
            elif isinstance(v, int | str):
                lines.append(f"  {k:<22} {v}")
        lines += [f"  note: {n}" for n in self.notes]
        lines.append(f"next: feast-autofeat deploy {self.name} --version {self.version}")
        return "\n".join(lines)


def train(store_or_repo, name: str, *, yaml: str | None = None, as_of=None, entity_df=None,
          max_rows: int | None = None, seed: int = 0, root=None, progress: bool = True,
          events: pd.DataFrame | None = None, init_from: str | None = None, **overrides) -> TrainResult:
    """Train the declaration ``name`` of the repo (a path, a ``Repo`` or a ``FeatureStore``) and save a version.

    ``as_of``: use data at or before this time (default: all); ``entity_df``: training rows for tabular encoders
    (a frame or a parquet / CSV path with the join key and ``event_timestamp``); ``max_rows``: sample size of the
    default rows (tabular encoders only); ``root``: the model root (default ``$AUTOFEAT_MODEL_ROOT`` or
    ``<repo>/models``); ``overrides``: hyperparameters over the declaration's ``params``.
    ``events`` (internal, evaluation): the interactions a history model or two-tower learns from, instead of the
    whole log; ``init_from``: a previous version to warm-start from (when its inputs mean the same)."""
    repo = Repo.of(store_or_repo, yaml)
    decl = repo.declaration(name)
    as_of = parse_time(as_of)
    root = Path(root).resolve() if root else decl.root
    if isinstance(entity_df, (str, Path)):
        entity_df = Path(entity_df).resolve()
    with repo.inside():  # relative source paths resolve against the repo, as under Feast's CLI
        return _train(repo, decl, as_of, entity_df, max_rows, seed, root, progress, events, init_from, overrides)


def _train(repo: Repo, decl, as_of, entity_df, max_rows, seed, root, progress, events, init_from, overrides):
    name = decl.name
    if decl.kind == "two_tower":
        for flag, value in (("entity_df", entity_df), ("max_rows", max_rows)):
            if value is not None:
                raise AutofeatError(f"--{flag.replace('_', '-')} does not apply to the two-tower {name} (it trains "
                                    "on the positive events of its interaction log).")
        from feast_autofeat.recommend.train import train_two_tower

        return train_two_tower(repo, decl, as_of=as_of, root=root, seed=seed, progress=progress, events=events,
                               **overrides)
    if decl.follows:
        raise AutofeatError(f"{name} serves the versions of {decl.follows}: train that one "
                            f"(`feast-autofeat train {decl.follows}`).")
    if decl.model == "text":
        given = [f for f, v in (("--entity-df", entity_df), ("--max-rows", max_rows), ("--as-of", as_of),
                                ("--init-from", init_from)) if v is not None] + [f"--{k}" for k in overrides]
        if given:
            raise AutofeatError(f"{', '.join(given)} do(es) not apply to {name}: a text encoder is pretrained, "
                                "training copies it into the model root as a verified version.")
        return _save_text(repo, decl, root)
    if "gan_augment" in overrides:
        raise AutofeatError(f"--gan-augment applies to a two-tower only, not to {name} ({decl.model}).")
    t0 = time.perf_counter()
    params = {**decl.params, **overrides}
    dim = params.pop("dim", None) or getattr(decl, "dim", None)
    if dim:  # the GAN's vector: its critic features plus the score
        params["critic_hidden" if decl.model == "gan" else "dim"] = dim - 1 if decl.model == "gan" else dim
    from feast_autofeat.artifacts import load_version

    init = load_version(root, decl.model, init_from) if init_from else None  # hash-verified like any load
    if decl.kind == "session":
        for flag, value in (("entity_df", entity_df), ("max_rows", max_rows)):
            if value is not None:
                raise AutofeatError(f"--{flag.replace('_', '-')} does not apply to {name}: a history model trains "
                                    "on the positive events of its interaction log.")
        fitted, rows, extra, used = _fit_history(repo, decl, as_of, seed, progress, events, init, params)
    else:
        if decl.kind == "request" and decl.inputs is None:
            raise AutofeatError(f"{name} declares no inputs to train on: add inputs=[...] to its "
                                "request_embedding_view, or deploy a version of a stored embedding over the "
                                "same features.")
        fitted, rows, extra, used = _fit_tabular(repo, decl, as_of, entity_df if entity_df is not None else events,
                                                 max_rows or MAX_ROWS, seed, progress, init, params)
    extra.update({"declaration": name, "training_window": {"as_of": used.isoformat()}, "seed": seed,
                  "feast_project": repo.store.project, "warm_start_from": init_from, "rows": rows})
    art = fitted.save(root, extra=extra)
    return TrainResult(name=name, model=decl.model, version=art.version, path=art.path, as_of=used.isoformat(),
                       rows=rows, metrics=fitted.metrics_, seconds=time.perf_counter() - t0,
                       notes=extra.get("notes", []))


# ---- tabular encoders: inputs as declared, rows point in time
@dataclass
class TabularInputs:
    """A declaration's inputs resolved against the registry: refs, the registered views, the join key."""

    refs: list[str]
    views: list
    key: str
    key_kind: str

    @property
    def columns(self) -> list[str]:
        return [r.split(":", 1)[1] for r in self.refs]


def resolve_inputs(store, decl) -> TabularInputs:
    """The declared inputs as registered: every view and feature exists, holds one join key (the declared
    entity's), features of a type the encoders take, and no feature name twice."""
    from feast import FeatureService

    if isinstance(decl.inputs, FeatureService):
        try:
            service = store.get_feature_service(decl.inputs.name)
        except Exception:
            raise AutofeatError(f"{decl.name}: feature service {decl.inputs.name} is not registered: run `feast "
                                "apply` first.") from None
        refs = [f"{p.name}:{f.name}" for p in service.feature_view_projections for f in p.features]
    else:
        refs = list(decl.refs)
    views, columns, unsupported = {}, {}, []
    for ref in refs:
        view_name_, feature = ref.split(":", 1)
        if view_name_ not in views:
            views[view_name_] = registered_view(store, view_name_, f"input view of {decl.name}:")
        fv = views[view_name_]
        fields = {f.name: f for f in fv.features}
        if feature not in fields:
            raise AutofeatError(f"{decl.name}: feature {ref} is not in the registered view {view_name_} (its "
                                f"features: {', '.join(fields)}); fix the declaration or `feast apply`.")
        vt = fields[feature].dtype.to_value_type().name
        if vt not in _TABULAR_TYPES:
            unsupported.append(f"{feature} ({vt})")
        if feature in columns:
            raise AutofeatError(f"{decl.name}: feature {feature!r} comes from views {columns[feature]} and "
                                f"{view_name_}; select it from one of them only.")
        columns[feature] = view_name_
    if unsupported:
        by_view: dict[str, list[str]] = {}
        for ref in refs:
            v, f = ref.split(":", 1)
            if not any(u.startswith(f + " ") for u in unsupported):
                by_view.setdefault(v, []).append(f)
        fix = ", ".join(f"{v}[{f!r}]" for v, f in by_view.items())
        raise AutofeatError(f"{decl.name}: {', '.join(unsupported)} cannot be encoded (numbers, booleans and "
                            f"strings only). Select the features to encode, e.g. inputs=[{fix}].")
    keys = {tuple(c.name for c in fv.entity_columns) for fv in views.values()}
    if len(keys) != 1 or len(next(iter(keys))) != 1:
        raise AutofeatError(f"{decl.name}: the input views are keyed by {sorted(keys)}; an embedding's inputs share "
                            "one single-column join key.")
    key = next(iter(keys))[0]
    declared = getattr(decl, "key", None)
    if declared is not None and declared != key:
        raise AutofeatError(f"{decl.name}: the input views are keyed by {key}, the declared entity by {declared}.")
    column = next(iter(views.values())).entity_columns[0]
    return TabularInputs(refs, list(views.values()), key, kind_of_value_type(column.dtype.to_value_type()))


def load_entity_df(value, key: str) -> pd.DataFrame:
    """An entity dataframe (a frame, or a parquet / CSV path) with ``key`` and ``event_timestamp``, times in UTC."""
    from feast_autofeat.tables import parse_timestamps, read_table

    df = value if isinstance(value, pd.DataFrame) else read_table(value, "--entity-df", (key,))
    missing = [c for c in (key, TS) if c not in df.columns]
    if missing:
        raise DataError(f"the entity dataframe lacks column(s) {missing}: it needs the join key {key} and "
                        f"{TS}, one row per training example (it has {list(df.columns)[:10]}).")
    df = df[[key, TS]].reset_index(drop=True)
    if df[key].isna().any():
        raise DataError(f"the entity dataframe has {int(df[key].isna().sum())} rows without a {key}.")
    df[TS] = parse_timestamps(df[TS], f"the entity dataframe's {TS}")
    return df


def _cast_keys(df: pd.DataFrame, key: str, kind: str) -> pd.DataFrame:
    from feast_autofeat.ids import IdError, id_array

    try:
        ids = id_array(df[key].to_numpy(), kind, what=key)
    except IdError as exc:
        if kind != "string" and df[key].dtype == object:  # CSV text: integers written as digits
            ids = id_array(pd.to_numeric(df[key], errors="raise").to_numpy(), kind, what=key)
        else:
            raise DataError(f"the entity dataframe's {key}: {exc}") from None
    return df.assign(**{key: ids})


def training_rows(store, inputs: TabularInputs, as_of: datetime | None, entity_df, max_rows: int,
                  seed: int) -> tuple[pd.DataFrame, datetime]:
    """The entity rows to train on (at most ``max_rows``, seeded) and the training window's end: the newest row
    used (or ``as_of``)."""
    key = inputs.key
    if entity_df is not None:
        rows = _cast_keys(load_entity_df(entity_df, key), key, inputs.key_kind)
    else:
        rows = source_rows(store, inputs.views, key, as_of)
    if as_of is not None:
        rows = rows[rows[TS] <= pd.Timestamp(as_of)]
    if rows.empty:
        raise DataError("no training rows" + (f" at or before {as_of.isoformat()}" if as_of else "")
                        + ": pick a later --as-of, or pass --entity-df with rows of the input views' entities.")
    rows = rows.sort_values([TS, key], kind="stable", ignore_index=True)
    if len(rows) > max_rows:
        rows = rows.sample(max_rows, random_state=seed).sort_values([TS, key], kind="stable", ignore_index=True)
    end = as_of or pd.Timestamp(rows[TS].max()).to_pydatetime()
    return rows, end


def feature_frame(store, inputs: TabularInputs, rows: pd.DataFrame) -> pd.DataFrame:
    """The input features of each row, point in time (``get_historical_features``), in the rows' order."""
    entity = rows[[inputs.key, TS]].assign(_row=np.arange(len(rows)))
    frame = store.get_historical_features(entity_df=entity, features=inputs.refs).to_df()
    # the offline join does not preserve row order; training must not depend on it (determinism by seed)
    return frame.sort_values("_row", ignore_index=True).drop(columns="_row")


def fill_values(frame: pd.DataFrame, columns: list[str], declared: dict) -> tuple[dict, list[str]]:
    """Imputation for the encoders' missing inputs: the declared ``fill`` (by feature name or ``view:feature``),
    else the training median of a number; a missing category is its own value. Returns the fill and notes."""
    by_name = {k.split(":", 1)[-1]: float(v) for k, v in declared.items()}
    unknown = sorted(set(by_name) - set(columns))
    if unknown:
        raise AutofeatError(f"fill names feature(s) {unknown} that are not inputs ({', '.join(columns)}).")
    fill, medians = {}, []
    for c in columns:
        s = frame[c]
        if c in by_name:
            fill[c] = by_name[c]
        elif pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
            med = s.astype(np.float64).median()
            fill[c] = float(med) if np.isfinite(med) else 0.0
            if s.isna().any():
                medians.append(c)
        else:
            fill[c] = 0.0  # categories: a missing value is the "unseen" slot
    notes = [f"missing values of {', '.join(medians[:8])}{' ...' if len(medians) > 8 else ''} filled with "
             "their training medians"] if medians else []
    return fill, notes


def split_frame(df: pd.DataFrame, key: str, seed: int, share: float = 0.1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training and validation features: whole entities held out by a seeded hash of the key."""
    valid = holdout_users(df[key].to_numpy(), share, seed)
    features = df.drop(columns=[key, TS])
    return features[~valid].reset_index(drop=True), features[valid].reset_index(drop=True)


def training_frame(store_or_repo, name: str, *, yaml: str | None = None, as_of=None, entity_df=None,
                   max_rows: int = MAX_ROWS, seed: int = 0) -> pd.DataFrame:
    """The frame ``train`` fits a tabular embedding on: the join key, ``event_timestamp`` and the declared input
    features of each training row, point in time."""
    repo = Repo.of(store_or_repo, yaml)
    decl = repo.declaration(name, ("embedding", "request"))
    with repo.inside():
        inputs = resolve_inputs(repo.store, decl)
        rows, _ = training_rows(repo.store, inputs, parse_time(as_of), entity_df, max_rows, seed)
        return feature_frame(repo.store, inputs, rows)


def _fit_tabular(repo: Repo, decl, as_of, entity_df, max_rows: int, seed: int, progress: bool, init, params):
    store = repo.store
    inputs = resolve_inputs(store, decl)
    rows, used = training_rows(store, inputs, as_of, entity_df, max_rows, seed)
    frame = feature_frame(store, inputs, rows)
    train_df, valid_df = split_frame(frame, inputs.key, seed)
    if valid_df.empty or train_df.empty:
        raise DataError(f"the {len(frame):,} training rows hold too few entities ({frame[inputs.key].nunique()}) for "
                        "a 10% validation hold-out; train on more rows.")
    fill, notes = fill_values(frame, inputs.columns, decl.fill)
    if decl.model == "dae":
        from feast_autofeat.models.dae import DAE

        fitted = DAE(seed=seed, fill=fill, **params)
    else:
        from feast_autofeat.models.gan import TabularGAN

        fitted = TabularGAN(seed=seed, fill=fill, **params)
    fitted.init_ = init
    fitted.fit(train_df, valid_df, progress=progress)
    rows_info = {"train_rows": len(train_df), "valid_rows": len(valid_df), "features": train_df.shape[1]}
    extra = {"feature_refs": inputs.refs, "join_key": inputs.key, "key_kind": inputs.key_kind, "notes": notes}
    return fitted, rows_info, extra, used


# ---- text: a pretrained encoder saved as a version, with the declared text columns
def _save_text(repo: Repo, decl, root: Path) -> TrainResult:
    from feast_autofeat.models.text import default_encoder_dir, save_text_version

    t0 = time.perf_counter()
    if decl.encoder:
        directory = Path(decl.encoder)
        directory = directory if directory.is_absolute() else decl.repo_dir / directory
    else:
        directory = default_encoder_dir()
    config = {"declaration": decl.name, "feast_project": repo.store.project, "feature_refs": [],
              "text": {"columns": [], "separator": decl.separator}}
    if decl.kind == "embedding":
        inputs = resolve_inputs(repo.store, decl)
        types = {f"{v.name}:{f.name}": f.dtype.to_value_type().name for v in inputs.views for f in v.features}
        other = [r for r in inputs.refs if types.get(r) != "STRING"]
        if other:
            raise AutofeatError(f"{decl.name}: {', '.join(other[:5])} are not strings; a text view reads string "
                                "features only. Select them, e.g. inputs=[view[['title', 'description']]].")
        config.update(feature_refs=inputs.refs, join_key=inputs.key, key_kind=inputs.key_kind,
                      text={"columns": inputs.columns, "separator": decl.separator})
    art = save_text_version(root, directory, config)
    arch = art.config["architecture"]
    return TrainResult(name=decl.name, model=decl.model, version=art.version, path=art.path, as_of="",
                       rows={"text columns": len(config["text"]["columns"]), "files": arch["files"]},
                       metrics={"dim": arch["dim"], "encoder": arch["base_model"]}, seconds=time.perf_counter() - t0,
                       notes=["pretrained: nothing was read from the store"])


# ---- history models: the declared interaction log's positives
def _fit_history(repo: Repo, decl, as_of, seed: int, progress: bool, events, init, params):
    from feast_autofeat.models.multvae import MultVAE
    from feast_autofeat.splits import strong_generalization_split

    inter = decl.interactions
    if events is None:
        ev = read_events(repo.store, inter, as_of)
        pos = ev[positive_mask(ev, inter.positive)]
    else:
        ev = pos = events
    if pos.empty:
        raise DataError(f"{decl.name}: no positive interactions in {inter.name}"
                        + (f" at or before {as_of.isoformat()}" if as_of else "") + f" (positive: {inter.positive}).")
    used = as_of or (pd.Timestamp(ev[TS].max()).to_pydatetime() if TS in ev else datetime.now(timezone.utc))
    split = strong_generalization_split(pos["user_id"].to_numpy(), pos["item_id"].to_numpy(), heldout_share=0.1,
                                        seed=seed)
    if split.valid_in.n_users == 0 or not len(split.item_ids):
        raise DataError(f"{decl.name}: too few users with at least 5 positives to train and validate a Mult-VAE.")
    fitted = MultVAE(seed=seed, **params)
    fitted.init_ = init
    fitted.fit(split.train, split.item_ids, valid=(split.valid_in, split.valid_out), progress=progress)
    rows = {"events": len(ev), "positives": len(pos), **split.describe()}
    return fitted, rows, {"interaction_log": inter.describe(), "item_kind": inter.item_kind()}, used
