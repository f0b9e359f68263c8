"""User-supplied tables (interaction logs, users and items files, entity dataframes): reading CSV or parquet, and
timestamps given as epoch seconds, milliseconds or microseconds, or ISO 8601 strings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from feast_autofeat.errors import DataError


def predicate_mask(events: pd.DataFrame, predicate: str, what: str = "positive predicate") -> np.ndarray:
    """Which rows of ``events`` satisfy the SQL ``predicate`` (over their columns; the table is ``e``), evaluated by
    DuckDB; an invalid predicate is a ``DataError`` naming ``what`` and the columns it may use."""
    import duckdb

    con = duckdb.connect()
    try:
        con.register("e", events)
        out = con.sql(f"SELECT coalesce(({predicate}), false) AS p FROM e").df()
    except duckdb.Error as exc:
        raise DataError(f"the {what} {predicate!r} is not valid SQL over the log's columns {list(events.columns)} "
                        f"({str(exc).splitlines()[0]}).") from None
    finally:
        con.close()
    return out["p"].to_numpy(bool)


def read_table(path: str | Path, what: str, string_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """A CSV (``.csv``, ``.tsv``, ``.txt``; delimiter sniffed) or parquet file as a frame; ``string_columns`` of a
    CSV are read as text (ids keep leading zeros; integer ids are recognized later)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} {path} does not exist.")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq") or path.is_dir():
            return pd.read_parquet(path)
        if suffix in (".csv", ".tsv", ".txt"):
            sep = "\t" if suffix == ".tsv" else None
            return pd.read_csv(path, sep=sep, engine="python" if sep is None else "c",
                               dtype={c: str for c in string_columns}, keep_default_na=True)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"{what} {path} could not be read ({type(exc).__name__}: {str(exc)[:200]}).") from None
    raise DataError(f"{what} {path}: use a .csv, .tsv or .parquet file (got {suffix or 'no extension'}).")


def parse_timestamps(values: pd.Series, what: str) -> pd.Series:
    """Times as ``datetime64[us, UTC]``: datetimes as they are (naive = UTC); numbers as epoch seconds,
    milliseconds or microseconds (told apart by the median's magnitude); strings as ISO 8601. Values that do not
    parse are a ``DataError`` with their count and the first offending row."""
    s = pd.Series(values).reset_index(drop=True)
    if pd.api.types.is_datetime64_any_dtype(s):
        out = s.dt.tz_localize("UTC") if s.dt.tz is None else s.dt.tz_convert("UTC")
        bad = out.isna().to_numpy()
    elif pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        x = s.to_numpy(np.float64)
        finite = np.isfinite(x)
        median = np.median(np.abs(x[finite])) if finite.any() else 0
        unit = "s" if median < 1e11 else "ms" if median < 1e14 else "us"  # 1e11 s is the year 5138
        out = pd.to_datetime(np.where(finite, x, np.nan), unit=unit, utc=True, errors="coerce")
        out = pd.Series(out)
        bad = out.isna().to_numpy()
    else:
        text = s.astype("string")
        numeric = text.str.fullmatch(r"\s*-?\d+(\.\d+)?\s*").fillna(False).to_numpy(bool)
        if numeric.all() and len(text):
            return parse_timestamps(pd.to_numeric(text), what)
        out = pd.Series(pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601"))
        bad = out.isna().to_numpy()
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataError(f"{what}: {int(bad.sum())} of {len(s)} values are not times (epoch seconds or "
                        f"milliseconds, or ISO 8601 such as 2024-05-01T12:00:00Z); the first is row {first}: "
                        f"{str(s.iloc[first])[:40]!r}.")
    return out.dt.as_unit("us")
