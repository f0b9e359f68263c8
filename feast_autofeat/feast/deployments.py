"""``<repo>/embeddings.json``: which model versions of each declared embedding are deployed, and which is live.

Written by ``feast-autofeat deploy / promote / rollback`` (commit it like a lock file); read by the declarations
when ``feast apply`` imports the repo: every deployed version becomes a view ``<name>__<version>``, the live one
is served under ``<name>`` by a feature service of that name.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from feast_autofeat.errors import AutofeatError

LOCK_FILE = "embeddings.json"


class DeploymentError(AutofeatError):
    """An embedding declaration disagrees with its model, or a deploy / promote / rollback is invalid."""


def view_name(name: str, version: str) -> str:
    """The feature view of one deployed version."""
    return f"{name}__{version}"


@dataclass
class Deployment:
    model: str
    versions: list[str] = field(default_factory=list)
    live: str | None = None
    previous: list[str] = field(default_factory=list)  # earlier live versions, newest last (for rollback)


def _parse(path: Path, raw) -> dict[str, Deployment]:
    """The file's entries, or a ``DeploymentError`` naming the file, the entry and the field."""
    fix = "restore it from version control, or redeploy with `feast-autofeat deploy`"
    if not isinstance(raw, dict):
        raise DeploymentError(f"{path} must hold an object {{embedding name: entry}}, not a "
                              f"{type(raw).__name__}; {fix}.")
    out = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict):
            raise DeploymentError(f"{path}: entry {name!r} must be an object, not a {type(entry).__name__}; {fix}.")
        unknown = set(entry) - {"model", "versions", "live", "previous"}
        if unknown or not isinstance(entry.get("model"), str):
            raise DeploymentError(f"{path}: entry {name!r} " + (f"has unknown field(s) {sorted(unknown)}"
                                  if unknown else "lacks its model (a string)") + f"; {fix}.")
        for key in ("versions", "previous"):
            value = entry.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise DeploymentError(f"{path}: {name}.{key} must be a list of version strings; {fix}.")
        live = entry.get("live")
        if live is None and entry.get("versions"):  # feast apply would delete the feature service <name>
            raise DeploymentError(f"{path}: {name}.live is null while versions {entry['versions']} are deployed; "
                                  f"make one live (`feast-autofeat promote {name} VERSION`) or {fix}.")
        if live is not None and (not isinstance(live, str) or live not in entry.get("versions", [])):
            raise DeploymentError(f"{path}: {name}.live ({live!r}) is not one of its deployed versions; {fix}.")
        out[name] = Deployment(**entry)
    return out


class Deployments:
    """``<repo>/embeddings.json``, validated where it is read, rewritten atomically on every change."""

    def __init__(self, repo: str | os.PathLike):
        self.path = Path(repo) / LOCK_FILE
        raw = {}
        if self.path.exists():
            try:
                raw = json.loads(self.path.read_text())
            except (ValueError, UnicodeDecodeError) as exc:
                raise DeploymentError(f"{self.path} is not valid JSON ({exc}); restore it from version control, "
                                      "or delete it and redeploy with `feast-autofeat deploy`.") from None
        self.entries = _parse(self.path, raw)

    def get(self, name: str) -> Deployment | None:
        return self.entries.get(name)

    def live(self, name: str) -> str | None:
        entry = self.entries.get(name)
        return entry.live if entry else None

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

    def resolve(self, name: str, version: str) -> str:
        """The deployed version of ``name`` that ``version`` (a unique prefix is enough) names."""
        entry = self._entry(name)
        matches = [v for v in entry.versions if v.startswith(version)]
        if len(matches) != 1:
            raise DeploymentError(f"{name} has {'no' if not matches else 'several'} deployed version(s) matching "
                                  f"{version!r}; deployed: {', '.join(entry.versions) or 'none'}. Deploy it first "
                                  "(`feast-autofeat deploy`).")
        return matches[0]

    def promote(self, name: str, version: str) -> Deployment:
        entry = self._entry(name)
        self._set_live(entry, self.resolve(name, version))
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
                                  f"(deployed: {', '.join(self.entries) or 'none'}); deploy it first "
                                  "(`feast-autofeat deploy`).")
        return self.entries[name]
