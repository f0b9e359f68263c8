"""Generates the reference pages when the site is built (mkdocs-gen-files), so they cannot drift from the code:

- ``reference/cli.md`` from the ``feast-autofeat`` argument parser itself;
- ``reference/configuration.md`` from the batch engine's pydantic config, the models' config dataclasses (their
  fields, defaults and the comments beside them) and ``embeddings.json``'s fields;
- the benchmark and evaluation plots, copied from ``benchmarks/results`` into ``img/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import typing
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[1]


def cli_page() -> str:
    from feast_autofeat.cli import build_parser

    parser = build_parser()
    parser.prog = "feast-autofeat"
    out = ["# CLI reference", "",
           "Generated from the command's own argument parser (`feast_autofeat/cli.py`) when this site is built.", "",
           "```text", parser.format_help().rstrip(), "```", ""]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        out += [f"## `feast-autofeat {name}`", "", "```text", command.format_help().rstrip(), "```", ""]
    return "\n".join(out)


def _type(annotation) -> str:
    text = getattr(annotation, "__name__", None) if not typing.get_args(annotation) else None
    return text or str(annotation).replace("typing.", "")


def _comments(cls) -> dict[str, str]:
    """The ``# comment`` beside (or on the lines just above) each field of a dataclass, from its source."""
    out, pending = {}, []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped[1:].strip())
            continue
        m = re.match(r"(\w+)\s*:\s*[^=]+(?:=.*?)?(?:#\s*(.*))?$", stripped)
        if m and not stripped.startswith(("def ", "class ", "return", "@")):
            text = " ".join(pending + ([m.group(2)] if m.group(2) else []))
            if text:
                out[m.group(1)] = text
        pending = []
    return out


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def configuration_page() -> str:
    from feast_autofeat.feast.deployments import Deployment
    from feast_autofeat.feast.engine import AutofeatEngineConfig
    from feast_autofeat.models.dae import DAEConfig
    from feast_autofeat.models.gan import GANConfig
    from feast_autofeat.models.multvae import MultVAEConfig
    from feast_autofeat.models.two_tower import TwoTowerConfig

    out = ["# Configuration reference", "",
           "Generated from the configuration models themselves when this site is built.", "",
           "## `batch_engine` in `feature_store.yaml`", "",
           "```yaml", "batch_engine:", "  type: feast_autofeat.feast.engine.AutofeatEngine", "  batch_size: 16384",
           "```", "",
           "Unknown keys are an error naming them (`AutofeatEngineConfig`).", "",
           "| key | type | default | what |", "|---|---|---|---|"]
    for name, field in AutofeatEngineConfig.model_fields.items():
        out.append(f"| `{name}` | `{_cell(_type(field.annotation))}` | `{field.default!r}` | "
                   f"{_cell(field.description or '')} |")
    out += ["", "## Model hyperparameters", "",
            "A declaration's `params={...}` (and `feast-autofeat train --epochs/--dim`) override these defaults; "
            "every trained version records the values it used in its `model.json`.", ""]
    for title, cls in (("`dae` (`embedding_view`, `request_embedding_view`)", DAEConfig),
                       ("`gan` (`embedding_view`, `request_embedding_view`)", GANConfig),
                       ("`multvae` (`session_embedding_view`)", MultVAEConfig),
                       ("`two_tower` (`two_tower`)", TwoTowerConfig)):
        notes = _comments(cls)
        out += [f"### {title}", "", "| parameter | default | what |", "|---|---|---|"]
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else "")
            out.append(f"| `{f.name}` | `{_cell(repr(default))}` | {_cell(notes.get(f.name, ''))} |")
        out.append("")
    out += ["## `embeddings.json`", "",
            "Written by `deploy`, `promote` and `rollback`; one entry per declared name. It is checked wherever it "
            "is read: an unknown field, a wrong type or a live version that is not deployed is an error naming "
            "the file and the field.", "", "| field | type | what |", "|---|---|---|"]
    meaning = {"model": "the model the declaration names (`dae`, `gan`, `multvae`, `two_tower`)",
               "versions": "deployed versions, oldest first: each is a view `<name>__<version>`",
               "live": "the version the feature service `<name>` serves (null only while no version is deployed)",
               "previous": "earlier live versions, newest last: what `rollback` returns to"}
    for f in dataclasses.fields(Deployment):
        out.append(f"| `{f.name}` | `{_cell(_type(f.type))}` | {meaning.get(f.name, '')} |")
    out += ["", "## Environment", "", "| variable | what |", "|---|---|",
            "| `AUTOFEAT_MODEL_ROOT` | where model versions are written and read (default `<repo>/models`) |",
            "| `AUTOFEAT_DATA_DIR` | the bundled repo's prepared data and embedding snapshots (default "
            "`<repo>/data`) |",
            "| `AUTOFEAT_ML100K_DIR` | the tests' MovieLens 100K folder (default `../shared/data/ml-100k`) |", ""]
    return "\n".join(out)


with mkdocs_gen_files.open("reference/cli.md", "w") as f:
    f.write(cli_page())
with mkdocs_gen_files.open("reference/configuration.md", "w") as f:
    f.write(configuration_page())
for png in sorted((ROOT / "benchmarks" / "results").glob("*.png")):
    with mkdocs_gen_files.open(f"img/{png.name}", "wb") as f:
        f.write(png.read_bytes())
