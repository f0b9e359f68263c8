"""Model versions on disk: safetensors weights + JSON, addressed by content hash. No pickles, ever.

Layout of one version::

    <root>/<model name>/<version>/
        weights.safetensors   tensors only (safetensors cannot hold code)
        model.json            architecture, input schema, preprocessing state, training window, seed, metrics
        checksums.json        sha256 of the two files above

A version may carry other files too (a text encoder's tokenizer and weights, in their own format, kept
verbatim): ``checksums.json`` lists every file of the version, and a file in the directory that it does not list
is refused. ``version`` is the first 16 hex digits of sha256(checksums.json), so it covers every file: any
edit, truncation or swap of one changes it. Loading recomputes every hash and names the file that does not
match.
Versions are written to a staging directory and renamed into place, so a crash never leaves half a version.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from feast_autofeat.errors import AutofeatError

WEIGHTS, CONFIG, CHECKSUMS = "weights.safetensors", "model.json", "checksums.json"
MODEL_ROOT_ENV = "AUTOFEAT_MODEL_ROOT"


class ArtifactError(AutofeatError):
    """A model version is missing, incomplete or does not match its content hash."""


@dataclass(frozen=True)
class Artifact:
    name: str
    version: str
    path: Path
    tensors: dict[str, torch.Tensor]
    config: dict


def model_root(root: str | os.PathLike | None = None, default: str | os.PathLike = "models") -> Path:
    """The model root: ``root`` if given, else ``$AUTOFEAT_MODEL_ROOT``, else ``default``."""
    return Path(root or os.environ.get(MODEL_ROOT_ENV) or default)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical_json(obj: dict) -> bytes:
    return (json.dumps(obj, sort_keys=True, indent=1, allow_nan=False) + "\n").encode()


def _check_relpath(rel: str) -> str:
    """A file name inside a version: relative, no '..', no hidden parts (checksums name only such files)."""
    parts = Path(rel).parts
    if not parts or Path(rel).is_absolute() or any(p in ("", ".", "..") or p.startswith(".") for p in parts) \
            or "\\" in rel:
        raise ArtifactError(f"{rel!r} cannot be a file of a model version (a relative path without '..' or "
                            "hidden parts).")
    return Path(*parts).as_posix()


def save_version(root: str | os.PathLike, name: str, tensors: dict[str, torch.Tensor] | None, config: dict,
                 files: dict[str, bytes] | None = None) -> Artifact:
    """Write a new version of model ``name`` under ``root``; return it. An intact identical version is reused,
    a damaged one rewritten. ``tensors=None``: no ``weights.safetensors``; ``files``: other files of the version,
    {relative path: bytes}, stored verbatim and covered by the checksums like the rest."""
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ArtifactError(f"model name {name!r} must use letters, digits, '-' and '_' only.")
    try:
        config_bytes = _canonical_json(config)
    except ValueError as exc:
        raise ArtifactError(f"model {name}: its JSON holds a NaN or infinite value ({exc}).") from exc
    blobs = {CONFIG: config_bytes}
    if tensors is not None:
        blobs[WEIGHTS] = st_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    for rel, data in (files or {}).items():
        rel = _check_relpath(rel)
        if rel in (WEIGHTS, CONFIG, CHECKSUMS):
            raise ArtifactError(f"{rel} is written by save_version itself; name the extra file otherwise.")
        blobs[rel] = data
    checksums = _canonical_json({k: _sha256(v) for k, v in blobs.items()})
    version = _sha256(checksums)[:16]
    parent = Path(root) / name
    target = parent / version
    if target.exists():
        try:
            return load_version(root, name, version)
        except ArtifactError:  # a damaged copy of the same content: replace it
            shutil.rmtree(target)
    if not target.exists():
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}.staging-", dir=parent))
        try:
            for fname, data in (*blobs.items(), (CHECKSUMS, checksums)):
                (staging / fname).parent.mkdir(parents=True, exist_ok=True)
                with open(staging / fname, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return load_version(root, name, version)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing: the {what} of this model version is gone; retrain or restore "
                            "the whole version directory.") from None


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing: the {path.name} of this model version is gone; retrain or restore "
                            "the whole version directory.") from None
    return h.hexdigest()


def load_version(root: str | os.PathLike, name: str, version: str | None = None) -> Artifact:
    """Load and verify a version (``None``: the newest by modification time). Never unpickles anything."""
    parent = Path(root) / name
    if version is None:
        candidates = [p for p in parent.glob("*") if p.is_dir() and not p.name.startswith(".")] \
            if parent.is_dir() else []
        if not candidates:
            raise ArtifactError(f"no versions of model {name!r} under {Path(root)}: train one with "
                                f"`feast-autofeat train {name}`.")
        version = max(candidates, key=lambda p: p.stat().st_mtime).name
    path = parent / version
    if not path.is_dir():
        raise ArtifactError(f"model version {name}/{version} not found under {Path(root)}.")
    checksums = _read(path / CHECKSUMS, "checksum list")
    if _sha256(checksums)[:16] != version:
        raise ArtifactError(f"{path / CHECKSUMS} does not match version {version}: the version was edited; "
                            "refusing to load it.")
    expected = json.loads(checksums)
    if not isinstance(expected, dict) or CONFIG not in expected:
        raise ArtifactError(f"{path / CHECKSUMS} lists no {CONFIG}; refusing to load this version.")
    listed = {_check_relpath(k) for k in expected}
    extra = sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                   if p.is_file() and p.name != CHECKSUMS and p.relative_to(path).as_posix() not in listed)
    if extra:
        raise ArtifactError(f"{path / extra[0]} is not a file of version {version} (its checksums do not list "
                            "it): something was added to the version; remove it or restore the whole version.")
    blobs = {}
    for fname in expected:
        if fname in (WEIGHTS, CONFIG):
            blobs[fname] = _read(path / fname, "weights" if fname == WEIGHTS else "configuration")
            digest = _sha256(blobs[fname])
        else:  # read by their own loaders after this check: hashed in chunks, not held in memory
            digest = _file_sha256(path / fname)
        if digest != expected[fname]:
            raise ArtifactError(f"{path / fname} does not match its recorded sha256 (edited, truncated or "
                                "replaced); refusing to load this version.")
    tensors = {}
    if WEIGHTS in blobs:
        try:
            tensors = st_load(blobs[WEIGHTS])
        except SafetensorError as exc:  # pragma: no cover - hash verified above, so only a writer bug gets here
            raise ArtifactError(f"{path / WEIGHTS} is not a valid safetensors file ({exc}).") from exc
    return Artifact(name=name, version=version, path=path, tensors=tensors, config=json.loads(blobs[CONFIG]))


def list_versions(root: str | os.PathLike, name: str) -> list[str]:
    """Versions of ``name``, oldest first."""
    parent = Path(root) / name
    if not parent.is_dir():
        return []
    dirs = [p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return [p.name for p in sorted(dirs, key=lambda p: p.stat().st_mtime)]
