"""MovieLens 100K (GroupLens) raw files -> the parquet tables the feature repo reads.

The data's terms forbid redistribution: users point ``--data-dir`` at their own download; nothing from it is
ever shipped with this package.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from feast_autofeat.datasets.base import DatasetSpec
from feast_autofeat.errors import DataError

RAW_FILES = ("u.data", "u.user", "u.item")
GENRES = (
    "unknown", "action", "adventure", "animation", "childrens", "comedy", "crime", "documentary", "drama",
    "fantasy", "film_noir", "horror", "musical", "mystery", "romance", "sci_fi", "thriller", "war", "western",
)  # fmt: skip

SPEC = DatasetSpec(
    name="movielens-100k",
    description="GroupLens MovieLens 100K: 100,000 ratings by 943 users of 1,682 movies (1997-1998).",
    # A rating is the only event type; its value splits it into like / neutral / dislike.
    signals=(("like", "e.rating >= 4"), ("neutral", "e.rating = 3"), ("dislike", "e.rating <= 2")),
    categories=tuple((g, f"i.genre_{g} = 1") for g in GENRES),
    user_profile=(("age", "Int64"), ("gender", "String"), ("occupation", "String"), ("zip_code", "String")),
    item_profile=(("title", "String"), ("release_year", "Int64"))
    + tuple((f"genre_{g}", "Int64") for g in GENRES),
    rating_column="rating",
    positive="e.rating >= 4",  # the usual binarization of MovieLens ratings for top-N recommendation
    event_types=("rating",),
    rating_range=(1.0, 5.0),
)

HELP = (
    "download ml-100k.zip from https://grouplens.org/datasets/movielens/100k/, unzip it and pass the folder "
    "holding u.data, u.user and u.item as --data-dir"
)


def _check_files(data_dir: Path) -> None:
    if not data_dir.is_dir():
        raise DataError(f"MovieLens directory {data_dir} does not exist: {HELP}.")
    for name in RAW_FILES:
        if not (data_dir / name).is_file():
            raise DataError(f"{data_dir / name} is missing: {HELP}.")


def _read(path: Path, sep: str, names: list[str], dtypes: dict, encoding: str = "utf-8") -> pd.DataFrame:
    try:
        df = pd.read_csv(path, sep=sep, names=names, header=None, dtype=dtypes, encoding=encoding,
                         keep_default_na=False, na_values={"release_date": [""]}, engine="c")
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path} is not a valid MovieLens file ({exc}); {HELP}.") from exc
    if df.empty:
        raise DataError(f"{path} is empty; {HELP}.")
    return df


def load_raw(data_dir: str | Path) -> dict[str, pa.Table]:
    """Read and validate ``u.data``, ``u.user`` and ``u.item``; return interactions, users and items."""
    data_dir = Path(data_dir)
    _check_files(data_dir)
    ratings = _read(data_dir / "u.data", "\t", ["user_id", "item_id", "rating", "unix_time"],
                    {"user_id": "int64", "item_id": "int64", "rating": "int64", "unix_time": "int64"})
    users = _read(data_dir / "u.user", "|", ["user_id", "age", "gender", "occupation", "zip_code"],
                  {"user_id": "int64", "age": "int64", "gender": "str", "occupation": "str", "zip_code": "str"})
    item_cols = ["item_id", "title", "release_date", "video_release_date", "imdb_url"] + [
        f"genre_{g}" for g in GENRES
    ]
    items = _read(data_dir / "u.item", "|", item_cols,
                  {**{c: "str" for c in item_cols[1:5]}, "item_id": "int64",
                   **{f"genre_{g}": "int64" for g in GENRES}}, encoding="latin-1")

    if not ratings["rating"].between(1, 5).all():
        bad = ratings.loc[~ratings["rating"].between(1, 5)].iloc[0]
        raise DataError(f"{data_dir / 'u.data'}: rating {bad['rating']} outside 1..5 (user {bad['user_id']}).")
    for ids, table, fname in ((ratings["user_id"], users, "u.user"), (ratings["item_id"], items, "u.item")):
        key = "user_id" if fname == "u.user" else "item_id"
        unknown = np.setdiff1d(ids.unique(), table[key].to_numpy())
        if unknown.size:
            raise DataError(f"{data_dir / 'u.data'} refers to {key} {unknown[:5].tolist()} absent from "
                            f"{data_dir / fname}; the files come from different downloads.")

    ts = pd.to_datetime(ratings["unix_time"], unit="s", utc=True)
    interactions = pd.DataFrame({
        "user_id": ratings["user_id"], "item_id": ratings["item_id"], "event_type": "rating",
        "rating": ratings["rating"].astype("float64"), "event_timestamp": ts,
    }).sort_values(["event_timestamp", "user_id", "item_id"], kind="stable", ignore_index=True)

    # The system learns of a user or a movie with its first rating; entities never rated get the data's start.
    t0 = interactions["event_timestamp"].min()
    first_user = interactions.groupby("user_id")["event_timestamp"].min()
    first_item = interactions.groupby("item_id")["event_timestamp"].min()
    users["created_timestamp"] = users["user_id"].map(first_user).fillna(t0)
    year = pd.to_datetime(items["release_date"], format="%d-%b-%Y", errors="coerce").dt.year
    items_out = items[["item_id", "title"]].assign(release_year=year.astype("Int64"))
    for g in GENRES:
        items_out[f"genre_{g}"] = items[f"genre_{g}"]
    items_out["created_timestamp"] = items["item_id"].map(first_item).fillna(t0)
    return {
        "interactions": pa.Table.from_pandas(interactions, preserve_index=False),
        "users": pa.Table.from_pandas(users, preserve_index=False),
        "items": pa.Table.from_pandas(items_out, preserve_index=False),
    }
