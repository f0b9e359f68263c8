"""A user's Feast repo as feast-autofeat sees it: where it is, its store, and the declarations in its Python files.

The repo's own Python files are the one source of truth for what to learn: ``embedding_view(...)``,
``session_embedding_view(...)``, ``request_embedding_view(...)`` and ``two_tower(...)`` declarations (see
``feast_autofeat.feast.embeddings`` and ``feast_autofeat.feast.interactions``). ``Repo.declarations`` imports the
repo's files the way ``feast apply`` does (Feast's own file list, ``.feastignore`` included, the repo on
``sys.path``) and collects them, so a command reads exactly what ``feast apply`` registered.

Also here: Feast's own CLI and ``feast apply`` run from library code (``run_feast``, ``feast_apply``), so no
library module needs the command-line module.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
import shutil
import subprocess
import sys
import warnings
from functools import cached_property
from pathlib import Path

from feast_autofeat.errors import AutofeatError, RepoError

DEFAULT_REPO = Path("feature_repo")
YAML = "feature_store.yaml"
# third-party warnings a feast-autofeat user can do nothing about (message start, category), silenced in our
# CLI and in the Feast CLI it runs, by message and category only
QUIET_WARNINGS = (("fetch_arrow_table() is deprecated", "DeprecationWarning"),  # ibis inside Feast's DuckDB store
                  ("On demand feature view is an experimental feature", "RuntimeWarning"))  # Feast, every ODFV call


def quiet_warnings() -> None:
    """Silence ``QUIET_WARNINGS`` in this process. Feast's modules put ``simplefilter("once", ...)`` in front of
    the filters when they are imported, so a filter added before them would lose: the display hook is wrapped
    instead, dropping exactly those messages and showing every other warning as before."""
    shown = warnings.showwarning
    if getattr(shown, "_autofeat_quiet", False):
        return

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if not _quiet(str(message), category.__name__):
            shown(message, category, filename, lineno, file, line)

    showwarning._autofeat_quiet = True
    warnings.showwarning = showwarning


def _quiet(message: str, category: str) -> bool:
    return any(message.startswith(m) and category == c for m, c in QUIET_WARNINGS)


def _quiet_stderr(text: str) -> str:
    """A Feast CLI's stderr without the ``QUIET_WARNINGS`` (each is its line and the source line under it)."""
    out, skip = [], False
    for line in text.splitlines(keepends=True):
        if skip and line.startswith("  "):
            skip = False
            continue
        found = re.search(r": (\w+): (.*)$", line)
        skip = bool(found) and _quiet(found.group(2), found.group(1))
        if not skip:
            out.append(line)
    return "".join(out)


def default_repo() -> Path:
    """As Feast's CLI: the current directory when it holds a ``feature_store.yaml``, else ``feature_repo``."""
    return Path.cwd() if (Path.cwd() / YAML).is_file() else DEFAULT_REPO


def yaml_path(repo: Path, yaml: str | os.PathLike | None) -> Path:
    """The store's YAML: ``yaml`` (relative to the repo, or absolute) or ``<repo>/feature_store.yaml``."""
    path = Path(yaml) if yaml else Path(YAML)
    return path if path.is_absolute() else Path(repo) / path


def check_repo(repo: str | os.PathLike, yaml: str | os.PathLike | None = None) -> Path:
    """The repo's directory, or a ``RepoError`` saying how to point at one."""
    repo = Path(repo)
    cfg = yaml_path(repo, yaml)
    if not cfg.is_file():
        where = "the current directory" if repo == Path.cwd() else str(repo)
        raise RepoError(f"{cfg} not found: {where} is not a Feast feature repo. Pass --repo (and -f for another "
                        "YAML), or run the command inside the repo.")
    return repo


def _repo_modules(repo: Path) -> list[str]:
    from feast.repo_operations import get_repo_files

    names = []
    for path in get_repo_files(repo):
        names.append(".".join(path.relative_to(repo.resolve()).with_suffix("").parts))
    return names


@contextlib.contextmanager
def repo_imports(repo: Path):
    """Import the repo's modules as ``feast apply`` does (repo on ``sys.path``, working directory the repo), and
    forget modules of the same names an earlier import (of any repo) left in ``sys.modules``."""
    repo = repo.resolve()
    cwd = os.getcwd()
    sys.path.insert(0, str(repo))
    names = _repo_modules(repo)
    for name in names:
        sys.modules.pop(name, None)
    os.chdir(repo)
    try:
        yield names
    finally:
        os.chdir(cwd)
        with contextlib.suppress(ValueError):
            sys.path.remove(str(repo))


def load_declarations(repo: str | os.PathLike, quiet: bool = True) -> dict:
    """{name: declaration} of every feast-autofeat declaration in the repo's Python files. ``quiet``: no
    "not deployed" warnings (a command about to deploy does not need them)."""
    from feast_autofeat.feast.embeddings import Declaration, NotDeployedWarning

    found: dict = {}
    with repo_imports(Path(repo)) as names, warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore", NotDeployedWarning)
        for name in names:
            try:
                module = importlib.import_module(name)
            except AutofeatError:
                raise
            except Exception as exc:
                raise RepoError(f"importing {name}.py of the feature repo {repo} failed: "
                                f"{type(exc).__name__}: {exc}") from exc
            for obj in list(vars(module).values()):
                if isinstance(obj, Declaration):
                    other = found.get(obj.name)
                    if other is not None and other is not obj:
                        raise RepoError(f"two declarations are named {obj.name!r} in {repo}; embedding names are "
                                        "unique within a repo.")
                    found[obj.name] = obj
    return found


class Repo:
    """One feature repo: its path, the YAML in use, its ``FeatureStore`` and its declarations (both loaded on
    first use)."""

    def __init__(self, path: str | os.PathLike | None = None, yaml: str | None = None, store=None):
        self.path = check_repo(Path(path) if path is not None else default_repo(), yaml).resolve()
        self.yaml = yaml
        if store is not None:
            self.__dict__["store"] = store

    @classmethod
    def of(cls, repo_or_store, yaml: str | None = None) -> Repo:
        """A ``Repo`` from a path, a ``Repo`` or a ``FeatureStore`` (whose ``repo_path`` it takes)."""
        if isinstance(repo_or_store, Repo):
            return repo_or_store
        if hasattr(repo_or_store, "get_feature_view") and hasattr(repo_or_store, "repo_path"):
            return cls(repo_or_store.repo_path, yaml, store=repo_or_store)
        return cls(repo_or_store, yaml)

    @property
    def yaml_file(self) -> Path:
        return yaml_path(self.path, self.yaml)

    @cached_property
    def store(self):
        from feast import FeatureStore

        return FeatureStore(repo_path=str(self.path), fs_yaml_file=self.yaml_file if self.yaml else None)

    @cached_property
    def declarations(self) -> dict:
        return load_declarations(self.path)

    def reload(self) -> Repo:
        """Forget the cached store and declarations (after an apply, a deploy)."""
        for attr in ("store", "declarations"):
            self.__dict__.pop(attr, None)
        return self

    def declaration(self, name: str, kinds: tuple[str, ...] | None = None):
        """The declaration named ``name`` (of one of ``kinds``), or an error listing what the repo declares."""
        decl = self.declarations.get(name)
        if decl is None or (kinds and decl.kind not in kinds):
            known = sorted(n for n, d in self.declarations.items() if not kinds or d.kind in kinds)
            what = "embedding or recommender" if not kinds else " or ".join(k.replace("_", "-") for k in kinds)
            raise RepoError(f"{self.path} declares no {what} named {name!r} (declared: {', '.join(known) or 'none'}"
                            "). Declare it in the repo's Python files (see the guide \"Add learned embeddings to "
                            "your own Feast repo\"), then run the command again.")
        return decl

    def two_tower(self, name: str | None = None):
        """The repo's two-tower declaration: ``name``, or the only one."""
        if name:
            return self.declaration(name, ("two_tower",))
        found = [d for d in self.declarations.values() if d.kind == "two_tower"]
        if len(found) != 1:
            raise RepoError(f"{self.path} declares {len(found)} two-tower recommenders "
                            f"({', '.join(d.name for d in found) or 'none'}): "
                            + ("name one." if found else "declare one with feast_autofeat.two_tower(...)."))
        return found[0]

    @property
    def model_root(self) -> Path:
        from feast_autofeat.artifacts import model_root

        return model_root(None, default=self.path / "models").resolve()

    def deployments(self):
        from feast_autofeat.feast.deployments import Deployments

        return Deployments(self.path)

    @contextlib.contextmanager
    def inside(self):
        """Work with the repo as the current directory, as Feast's CLI does: Feast resolves a source's relative
        path (``path="data/stats.parquet"``) against the working directory."""
        cwd = os.getcwd()
        os.chdir(self.path)
        try:
            yield self
        finally:
            os.chdir(cwd)

    def apply(self, quiet: bool = True) -> None:
        """``feast apply`` in this process, as a step of a longer command (``quiet``: Feast's registry diff printed
        only if it fails, and no "not deployed yet" warnings: the command deploys what it needs)."""
        from feast_autofeat.feast.embeddings import NotDeployedWarning

        with warnings.catch_warnings():
            if quiet:
                warnings.simplefilter("ignore", NotDeployedWarning)
            (apply_quietly if quiet else feast_apply)(self.path, self.yaml)
        self.reload()


def feast_apply(repo: str | os.PathLike, yaml: str | None = None) -> None:
    """``feast apply`` in this process (the same code path as Feast's CLI)."""
    from feast.repo_config import load_repo_config
    from feast.repo_operations import apply_total

    repo = Path(repo).resolve()
    with repo_imports(repo):
        apply_total(load_repo_config(repo, yaml_path(repo, yaml)), repo, skip_source_validation=False)


def apply_quietly(repo: str | os.PathLike, yaml: str | None = None) -> None:
    """``feast apply`` in process; Feast prints the whole registry diff, shown only when it fails."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            feast_apply(repo, yaml)
    except BaseException:
        print(out.getvalue())
        raise


def feast_executable() -> str:
    """The ``feast`` CLI of this environment (next to the running interpreter), else the one on PATH."""
    here = Path(sys.executable).parent / "feast"
    found = str(here) if here.exists() else shutil.which("feast")
    if not found:
        raise AutofeatError("the `feast` command was not found; install feast-autofeat (it depends on feast).")
    return found


def run_feast(repo: str | os.PathLike, *args: str, yaml: str | None = None, env: dict | None = None,
              capture: bool = False) -> subprocess.CompletedProcess:
    """Run Feast's own CLI in ``repo``; raise with Feast's output when it fails."""
    cmd = [feast_executable()] + (["-f", str(yaml)] if yaml else []) + list(args)
    proc = subprocess.run(cmd, cwd=repo, env={**os.environ, **(env or {})}, text=True, capture_output=True)
    proc.stderr = _quiet_stderr(proc.stderr)
    if not capture:  # shown as it would be, less the third-party noise (Feast's output is short)
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        detail = f"\n{proc.stdout}\n{proc.stderr}" if capture else ""
        raise AutofeatError(f"`{' '.join(cmd[1:])}` failed in {repo} (exit {proc.returncode}).{detail}")
    return proc
