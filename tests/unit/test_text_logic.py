"""Pure logic of text views: how a row's text columns become one string, and which queries are refused."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from feast_autofeat.models.text import MAX_QUERY_CHARS, TextError, check_query, compose_texts


def test_compose_joins_non_empty_columns_in_order():
    df = pd.DataFrame({"title": ["Red shoe", " Pan ", None, "", "Lamp"],
                       "description": ["for running", None, "only a description", "  ", np.nan],
                       "category": ["shoes", "kitchen", "garden", None, "home"]})
    got = compose_texts(df, ["title", "description", "category"], ". ")
    assert got == ["Red shoe. for running. shoes", "Pan. kitchen", "only a description. garden", "",
                   "Lamp. home"]
    assert compose_texts(df, ["category", "title"], " | ")[0] == "shoes | Red shoe"  # declared order
    assert compose_texts(df, [], ". ") == [""] * 5


def test_compose_reads_numbers_as_text_when_declared_as_strings():
    df = pd.DataFrame({"code": pd.array(["A1", None], dtype="string"), "n": ["12", "7"]})
    assert compose_texts(df, ["code", "n"], " ") == ["A1 12", "7"]


@pytest.mark.parametrize("bad,message", [
    ("", "query is empty"), ("   \t\n", "query is empty"), (None, "must be a string"), (42, "must be a string"),
    ("x" * (MAX_QUERY_CHARS + 1), f"at most {MAX_QUERY_CHARS}"), (b"\xff\xfe", "not valid UTF-8"),
])
def test_bad_queries_are_refused_by_field_without_echo(bad, message):
    with pytest.raises(TextError, match=message) as err:
        check_query(bad, "query")
    assert str(err.value).startswith("query ")
    if isinstance(bad, str) and bad.strip():
        assert bad[:20] not in str(err.value)


def test_good_queries_pass_unchanged():
    assert check_query("wireless headphones", "q") == "wireless headphones"
    assert check_query("café noir".encode(), "q") == "café noir"
    assert check_query("x" * MAX_QUERY_CHARS, "q") == "x" * MAX_QUERY_CHARS
