"""The documentation runs: every ``bash``, ``python`` and ``yaml`` block of the README and the docs site is executed
(``snippets.py``) in page order, against a scratch copy of the bundled repo, this machine's MovieLens 100K and a
real redis-server, and each page's output is checked for the values it promises. A block that is not run here
says what runs it instead (``skip -- REASON``) or is a shortened copy of a page that runs (``excerpt PAGE``).
The site itself builds with ``mkdocs build --strict``, reference pages generated from the code.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from snippets import RUN, PageRunner, page_blocks, runnable

from tests.conftest import copy_repo

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
BIN = str(Path(sys.executable).parent)

# pages whose blocks another test runs, exactly as written
RUN_ELSEWHERE = {
    "docs/how-to/own-repo.md": "tests/integration/test_foreign_repos.py::test_guide_on_feast_init_template",
}


def rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def literal_lines(out: str) -> list:
    """The Python literals a block printed, one per line (dicts, tuples, lists)."""
    values = []
    for line in out.splitlines():
        try:
            values.append(ast.literal_eval(line.strip()))
        except (ValueError, SyntaxError):
            continue
    return values


# --- what each page promises, checked on its outputs (one string per runnable block, in order) ---------------

def bundled(cwd: Path) -> Path:
    """The bundled repo's copy, from the directory a page ended in (inside it, or above it)."""
    return cwd if (cwd / "feature_store.yaml").exists() else cwd / "feature_repo"


def check_bundled_repo(outputs: list[str], cwd: Path, redis_port: int) -> None:
    repo = bundled(cwd)
    features, shape = literal_lines(outputs[-2])[-1], literal_lines(outputs[-1])[-1]
    assert features["user_id"] == [42, 7]
    # the online values are the latest daily snapshot up to the materialization's end (independent read)
    snaps = pd.read_parquet(repo / "data" / "user_behaviour.parquet")
    snaps = snaps[snaps.event_timestamp <= pd.Timestamp("2025-03-02T00:00:01", tz="UTC")]
    latest = snaps.sort_values("event_timestamp").groupby("user_id").tail(1).set_index("user_id")
    for i, uid in enumerate([42, 7]):
        expected = int(latest.loc[uid, "events_30d"]) if uid in latest.index else None
        assert features["events_30d"][i] == expected, (uid, features, expected)
    assert shape[0] == 10_000 and shape[1] > 3


def check_embeddings(outputs: list[str], cwd: Path, redis_port: int) -> None:
    text = "\n".join(outputs)
    for name, model in (("session_multvae", "multvae"), ("user_dae", "dae"), ("user_gan_critic", "gan")):
        assert f"trained {name} ({model}) -> version" in text, text[-3000:]
    versions = [json.loads(p.read_text()) for p in (bundled(cwd) / "models").rglob("model.json")]
    assert sorted(v["declaration"] for v in versions) == ["session_multvae", "user_dae", "user_gan_critic"]
    # each version records the --as-of it was trained up to
    assert {v["training_window"]["as_of"] for v in versions} == {"1998-03-01T00:00:00+00:00"}, versions


def check_recommender(outputs: list[str], cwd: Path, redis_port: int) -> None:
    # over HTTP with the tokens: a recommendation, the purchase of its first item recorded, then not offered again
    http, recorded, after = [v for v in literal_lines(outputs[-4]) if isinstance(v, dict)]
    assert len(http["items"]) == 5 and http["source"] == "two-tower" and http["model_version"], http
    assert (recorded["events"], recorded["positives"]) == (1, 1) and "part" not in recorded, recorded
    assert len(after["items"]) == 5 and http["items"][0] not in after["items"], (http, after)
    recs = [{"items": [int(i) for i in items.split(",")], "model_version": version, "source": source}
            for items, version, source in re.findall(
                r"Recommendation\(user_id=42, items=\[([^\]]*)\].*?model_version='(\w+)', source='([\w-]+)'",
                outputs[-3])]
    first, session = recs
    assert len(first["items"]) == 10 and len(session["items"]) == 10
    assert first["model_version"] == http["model_version"] == session["model_version"]
    assert first["source"] == session["source"] == "two-tower"
    assert not {7, 9} & set(session["items"]), session  # a session's items are never recommended back
    assert first["items"] != session["items"]  # the session steers the query
    # search: the text view of category and brand finds shoes; the user's taste reorders within the query's items
    text, personal = [v for v in literal_lines(outputs[-1]) if isinstance(v, dict)]
    items = pd.read_parquet(bundled(cwd) / "data" / "items.parquet").drop_duplicates("item_id", keep="last")
    category = dict(zip(items.item_id, items.category))
    assert text["source"] == "text" and text["user_id"] is None and text["text_version"], text
    assert [category[i] for i in text["items"]] == ["shoes"] * 5, text
    assert personal["source"] == "personalized" and personal["model_version"] == first["model_version"], personal
    assert sum(category[i] == "shoes" for i in personal["items"]) >= 3, personal


def check_own_data(outputs: list[str], cwd: Path, redis_port: int) -> None:
    text = "\n".join(outputs)
    assert "30,000" in text or "30000" in text, text[-3000:]
    repo = bundled(cwd)
    manifest = json.loads((repo / "data" / "manifest.json").read_text())
    assert json.dumps(manifest).count('"string"') >= 2, manifest  # user and item ids kept as strings
    reports = sorted((repo / "reports").glob("*.json"))
    assert reports and list((repo / "reports").glob("*.png")), "evaluate saved no JSON / PNG"
    result = json.loads(reports[-1].read_text())
    assert "P" in json.dumps(result["protocols"] if "protocols" in result else result)


def check_redis(outputs: list[str], cwd: Path, redis_port: int) -> None:
    import redis

    features = literal_lines(outputs[-1])[-1]
    assert features["user_id"] == [7] and isinstance(features["events_30d"][0], int), features
    client = redis.Redis(host="127.0.0.1", port=redis_port)
    try:
        assert client.dbsize() > 100  # every user's hash is in the test's own redis-server
    finally:
        client.close()


def check_refresh(outputs: list[str], cwd: Path, redis_port: int) -> None:
    def live(out: str) -> str:  # `feast-autofeat embeddings` marks the live version with `*`
        return re.findall(r"\*\s+item_two_tower__([0-9a-f]{16})", out)[-1]

    def versions(out: str) -> set[str]:
        return set(re.findall(r"item_two_tower__([0-9a-f]{16})", out))

    quickstart = live(outputs[1])  # `refresh --no-cut-over` leaves the quickstart's version live beside its own
    assert '"cut_over": false' in outputs[1] and len(versions(outputs[1])) == 2, outputs[1][-3000:]
    assert '"cut_over": true' in outputs[2], outputs[2][-3000:]  # --tolerance 1: the second refresh cuts over
    assert len(versions(outputs[2])) == 3 and live(outputs[2]) == quickstart, outputs[2][-3000:]  # rolled back


def check_text(outputs: list[str], cwd: Path, redis_port: int) -> None:
    text = "\n".join(outputs)
    assert "trained item_text (text) -> version" in text and "applied: feature service item_text" in text, text[-3000:]
    titles = literal_lines(outputs[-1])[-1]
    # the query's vector ranks the films by their titles' vectors: the Star Trek films first
    assert len(titles) == 5 and sum("Star Trek" in t for t in titles) >= 3, titles


def check_python_api(outputs: list[str], cwd: Path, redis_port: int) -> None:
    assert outputs == [""]  # the imports the page promises exist, quietly


def check_yaml_only(outputs: list[str], cwd: Path, redis_port: int) -> None:
    assert outputs and all(o == "" for o in outputs)


RUN_HERE = {
    "docs/concepts/bundled-repo.md": check_bundled_repo,
    "docs/concepts/embeddings.md": check_embeddings,
    "docs/concepts/recommender.md": check_recommender,
    "docs/how-to/own-data.md": check_own_data,
    "docs/how-to/redis.md": check_redis,
    "docs/how-to/refresh-rollback.md": check_refresh,
    "docs/how-to/scale-out.md": check_yaml_only,
    "docs/how-to/text.md": check_text,
    "docs/reference/python-api.md": check_python_api,
}


def check_yaml(code: str, cwd: Path) -> None:
    """A YAML block of feature_store.yaml keys: merged into the bundled repo's file and loaded by Feast's own
    config loader, with the batch engine and online store configs built (unknown keys fail there)."""
    from feast.repo_config import load_repo_config

    block = yaml.safe_load(code)
    assert isinstance(block, dict), f"not a mapping of feature_store.yaml keys:\n{code}"
    config = yaml.safe_load((ROOT / "feature_repo" / "feature_store.yaml").read_text())
    config.update(block)
    target = cwd / "snippet_feature_store.yaml"
    target.write_text(yaml.safe_dump(config))
    os.environ.setdefault("REDIS_CONNECTION_STRING", "127.0.0.1:6379")
    loaded = load_repo_config(cwd, target)
    engine, online = loaded.batch_engine, loaded.online_store
    for key, value in block.get("batch_engine", {}).items():
        assert key == "type" or getattr(engine, key) == value, (key, value, engine)
    for key in block.get("online_store", {}):
        assert key in ("type", "connection_string") or getattr(online, key) is not None, (key, online)
    target.unlink()


def test_every_block_is_run_or_accounted_for():
    """No page can hold a block nobody runs: each bash / python / yaml block runs in a page test here, or in the
    test named in RUN_ELSEWHERE, or says why not (skip), or is an excerpt whose every line is in a page that runs."""
    with_runnable = set()
    problems = []
    for page in PAGES:
        for block in page_blocks(page):
            if block.lang not in (*RUN, "text", ""):
                problems.append(f"{rel(page)}:{block.line}: fence `{block.lang}`: use bash, python or yaml "
                                "(run) or text (prose)")
                continue
            if block.lang not in RUN:
                continue
            if block.marker in ("", "background"):
                with_runnable.add(rel(page))
            elif block.marker == "skip":
                if not block.arg.startswith("--") or len(block.arg) < 10:
                    problems.append(f"{rel(page)}:{block.line}: a skip says why: <!-- snippet: skip -- REASON -->")
            elif block.marker == "excerpt":
                target = ROOT / block.arg
                if rel(target) not in set(RUN_HERE) | set(RUN_ELSEWHERE):
                    problems.append(f"{rel(page)}:{block.line}: excerpt of {block.arg}, which no test runs")
                    continue
                source = target.read_text()
                for line in block.code.splitlines():
                    line = re.sub(r"\s+#.*$", "", line).rstrip()
                    if line and line not in source:
                        problems.append(f"{rel(page)}:{block.line}: `{line.strip()}` is not in {block.arg}")
            else:
                problems.append(f"{rel(page)}:{block.line}: unknown snippet marker `{block.marker}`")
    assert not problems, "\n".join(problems)
    assert with_runnable == set(RUN_HERE) | set(RUN_ELSEWHERE), (
        f"pages with runnable blocks {sorted(with_runnable)} != pages run {sorted(set(RUN_HERE) | set(RUN_ELSEWHERE))}")


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("page", sorted(RUN_HERE))
def test_page_runs_as_written(page, tmp_path, ml100k_dir, redis_db, monkeypatch):
    copy_repo(tmp_path / "feature_repo")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
    for var in ("AUTOFEAT_MODEL_ROOT", "AUTOFEAT_DATA_DIR", "REDIS_CONNECTION_STRING"):
        env.pop(var, None)
    monkeypatch.setenv("REDIS_CONNECTION_STRING", f"127.0.0.1:{redis_db.port}")
    runner = PageRunner(tmp_path, env, check_yaml=check_yaml, substitutions={
        "path/to/ml-100k": str(ml100k_dir), "localhost:6379": f"127.0.0.1:{redis_db.port}"})
    blocks = runnable(ROOT / page)
    try:
        outputs = [runner.run(block) for block in blocks]
    finally:
        runner.stop()
    RUN_HERE[page](outputs, runner.cwd, redis_db.port)


def test_site_builds_strictly(tmp_path):
    """``mkdocs build --strict``: every link and every API reference resolves; the generated reference pages hold
    every CLI subcommand and every batch-engine key."""
    from feast_autofeat.cli import build_parser
    from feast_autofeat.feast.engine import AutofeatEngineConfig

    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    proc = subprocess.run([f"{BIN}/mkdocs", "build", "--strict", "-d", str(tmp_path / "site")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in sub.choices:
        assert f"feast-autofeat {name}" in cli, name
    config = (tmp_path / "site" / "reference" / "configuration" / "index.html").read_text()
    for key in AutofeatEngineConfig.model_fields:
        assert key in config, key
    import html

    from feast_autofeat import embedding_view, train

    page = (tmp_path / "site" / "reference" / "python-api" / "index.html").read_text()
    api = " ".join(html.unescape(re.sub(r"<[^>]+>", "", page)).split())
    for func in (embedding_view, train):  # rendered from the docstrings
        first = " ".join(func.__doc__.replace("``", "").split()[:12])
        assert first in api, first
