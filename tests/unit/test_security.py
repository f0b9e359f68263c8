"""Tokens and their scopes, and where they come from (pure logic; the served checks are in
tests/integration/test_serve_security.py)."""

import json

import pytest

from feast_autofeat.errors import AutofeatError
from feast_autofeat.recommend.security import READ_ENV, WRITE_ENV, Tokens, load_tokens

R, W = "read-token-aaaaaaaaaaaa", "write-token-bbbbbbbbbbb"


def test_scopes_write_implies_read():
    tokens = Tokens.from_lists([R], [W], "test")
    assert tokens.allows(R, write=False) and not tokens.allows(R, write=True)
    assert tokens.allows(W, write=False) and tokens.allows(W, write=True)
    assert not tokens.allows(R + "x", write=False) and not tokens.allows("", write=False)
    assert R.encode() not in repr(tokens).encode()  # only digests are kept


def test_sources_and_their_errors(tmp_path, monkeypatch):
    monkeypatch.delenv(READ_ENV, raising=False)
    monkeypatch.delenv(WRITE_ENV, raising=False)
    with pytest.raises(AutofeatError, match=f"{READ_ENV}.*--no-auth"):
        load_tokens(None, no_auth=False)
    assert load_tokens(None, no_auth=True) is None
    monkeypatch.setenv(READ_ENV, f" {R} ,")
    assert load_tokens(None, no_auth=False).allows(R, write=False)
    with pytest.raises(AutofeatError, match="--no-auth was given together with tokens"):
        load_tokens(None, no_auth=True)
    path = tmp_path / "tokens.json"
    for content, message in ((b"{", "not valid JSON"), (b"[]", "must hold an object"),
                             (json.dumps({"read": R}).encode(), "read must be a list of strings"),
                             (json.dumps({"read": [R], "admin": []}).encode(), r"unknown field\(s\) \['admin'\]"),
                             (json.dumps({"write": ["short"]}).encode(), "write token #1 is shorter than 16"),
                             (json.dumps({"read": []}).encode(), "holds no token")):
        path.write_bytes(content)
        with pytest.raises(AutofeatError, match=message) as err:
            Tokens.from_file(path)
        assert str(tmp_path) not in str(err.value)  # the file by name, never its directory
    path.write_text(json.dumps({"read": [R], "write": [W]}))
    assert load_tokens(path, no_auth=False).allows(W, write=True)


def test_idempotency_keys_name_a_log_part():
    from feast_autofeat.recommend.feedback import FeedbackError, idempotency_name

    key = "3f2c1a9e-7b1d-4c6a-9a51-0d5f8e2b7c44"
    assert idempotency_name(key) == idempotency_name(key) != idempotency_name(key + "x")
    assert len(idempotency_name(key)) == 32 and key not in idempotency_name(key)
    for bad in ("", "a b", "x" * 129, "../etc", None):
        with pytest.raises(FeedbackError, match="Idempotency-Key must be") as err:
            idempotency_name(bad)
        assert not bad or bad not in str(err.value)
