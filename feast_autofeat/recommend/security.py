"""Who may call ``feast-autofeat serve`` and what it accepts: static bearer tokens with a read and a write scope,
a bound on request bodies, and error bodies that never echo the request.

Tokens come from ``--tokens-file FILE`` (JSON ``{"read": [...], "write": [...]}``) or the environment
(``AUTOFEAT_READ_TOKENS``, ``AUTOFEAT_WRITE_TOKENS``: comma-separated). A write token also reads. Only their
SHA-256 digests are kept in memory, compared in constant time. Scopes: ``GET /recommend``, ``/docs`` and
``/openapi.json`` need read; ``POST /feedback`` needs write; ``/healthz`` is open (load balancers probe it; it
says ok or degraded, the live model versions, the catalogue size, the store's round trip and batch counts:
no ids, no paths). Serving without tokens takes an explicit ``--no-auth``, and says so in the log at start.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from feast_autofeat.errors import AutofeatError

log = logging.getLogger(__name__)

READ_ENV, WRITE_ENV = "AUTOFEAT_READ_TOKENS", "AUTOFEAT_WRITE_TOKENS"
MIN_TOKEN_CHARS = 16
MAX_BODY_BYTES = 1 << 20  # 1 MiB: about 8,000 feedback events
MAX_EVENTS = 1000  # per POST /feedback
WRITE_PATHS = frozenset({"/feedback"})
OPEN_PATHS = frozenset({"/healthz"})


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class Tokens:
    read: tuple[bytes, ...]  # digests; write tokens are in both
    write: tuple[bytes, ...]

    @classmethod
    def from_lists(cls, read: list[str], write: list[str], where: str) -> Tokens:
        for scope, tokens in (("read", read), ("write", write)):
            short = [i for i, t in enumerate(tokens) if len(t) < MIN_TOKEN_CHARS]
            if short:
                raise AutofeatError(f"{where}: {scope} token #{short[0] + 1} is shorter than {MIN_TOKEN_CHARS} "
                                    "characters; make one with `python -c \"import secrets; "
                                    "print(secrets.token_urlsafe(32))\"`.")
        if not read and not write:
            raise AutofeatError(f"{where} holds no token: give at least one read or write token.")
        write_d = tuple(_digest(t) for t in write)
        return cls(tuple(_digest(t) for t in read) + write_d, write_d)

    @classmethod
    def from_file(cls, path: Path) -> Tokens:
        """A JSON file ``{"read": [...], "write": [...]}``, checked: the file and the field are named on error."""
        name = Path(path).name
        try:
            raw = json.loads(Path(path).read_text())
        except OSError as exc:
            raise AutofeatError(f"--tokens-file {name}: cannot read it ({exc.strerror}).") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AutofeatError(f"--tokens-file {name} is not valid JSON ({exc}); write "
                                '{"read": ["..."], "write": ["..."]}.') from None
        if not isinstance(raw, dict):
            raise AutofeatError(f'--tokens-file {name} must hold an object {{"read": [...], "write": [...]}}.')
        unknown = set(raw) - {"read", "write"}
        if unknown:
            raise AutofeatError(f"--tokens-file {name}: unknown field(s) {sorted(unknown)}; the fields are read "
                                "and write.")
        for scope in ("read", "write"):
            value = raw.get(scope, [])
            if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
                raise AutofeatError(f"--tokens-file {name}: {scope} must be a list of strings.")
        if os.name == "posix" and Path(path).stat().st_mode & 0o004:
            log.warning("--tokens-file %s is readable by every user of this machine: chmod 600 it", name)
        return cls.from_lists(raw.get("read", []), raw.get("write", []), f"--tokens-file {name}")

    @classmethod
    def from_env(cls, env=os.environ) -> Tokens | None:
        read = [t.strip() for t in env.get(READ_ENV, "").split(",") if t.strip()]
        write = [t.strip() for t in env.get(WRITE_ENV, "").split(",") if t.strip()]
        if not read and not write:
            return None
        return cls.from_lists(read, write, f"{READ_ENV} / {WRITE_ENV}")

    def allows(self, token: str, write: bool) -> bool:
        digest = _digest(token)
        found = False
        for known in self.write if write else self.read:  # every digest compared: no early exit to time
            found |= hmac.compare_digest(digest, known)
        return found


def load_tokens(tokens_file: Path | None, no_auth: bool) -> Tokens | None:
    """The tokens ``serve`` checks, or None with ``--no-auth``; no tokens and no ``--no-auth`` is an error."""
    if no_auth:
        if tokens_file or os.environ.get(READ_ENV) or os.environ.get(WRITE_ENV):
            raise AutofeatError("--no-auth was given together with tokens: choose one.")
        return None
    tokens = Tokens.from_file(tokens_file) if tokens_file else Tokens.from_env()
    if tokens is None:
        raise AutofeatError(f"serve needs tokens: set {READ_ENV} and {WRITE_ENV} (comma-separated) or pass "
                            "--tokens-file FILE (JSON {\"read\": [...], \"write\": [...]}); --no-auth serves "
                            "without authentication (a trusted network only).")
    return tokens


async def _reply(send, status: int, detail: str, headers: tuple = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware in front of the app: the body bound (413, before anything parses it), then the token
    check (401 without a valid token, 403 with a read token on a write path)."""

    def __init__(self, app, tokens: Tokens | None, max_body_bytes: int = MAX_BODY_BYTES):
        self.app, self.tokens, self.max_body = app, tokens, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        path = scope["path"]
        if self.tokens is not None and path not in OPEN_PATHS:
            auth = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, token = auth.partition(" ")
            challenge = ((b"www-authenticate", b"Bearer"),)
            token = token.strip()
            if scheme.lower() != "bearer" or not token or not self.tokens.allows(token, write=False):
                return await _reply(send, 401, "a valid bearer token is required (Authorization: Bearer ...)",
                                    challenge)
            if path in WRITE_PATHS and not self.tokens.allows(token, write=True):
                return await _reply(send, 403, "this token may read, not write: use a write token")
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_body:
                return await _reply(send, 413, f"the body is over the limit of {self.max_body} bytes")
            return await self.app(scope, receive, send)
        if scope["method"] in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        # a body without a length (chunked): read up to the bound, then hand it on whole
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                return await _reply(send, 413, f"the body is over the limit of {self.max_body} bytes")
            more = message.get("more_body", False)
        body, given = b"".join(chunks), False

        async def replay():
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)
