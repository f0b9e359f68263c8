"""`feast-autofeat evaluate` on a small synthetic log: the JSON other tools read (its shape, every required row,
paired differences, the gate's report), a PNG, the repo left as it was, and the popularity row equal to an
independent computation of protocol P (pandas, not the harness)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from feast_autofeat.cli import main as cli
from feast_autofeat.errors import AutofeatError
from feast_autofeat.recommend.evaluate import evaluate_repo
from feast_autofeat.repo import run_feast

pytestmark = pytest.mark.integration


def _fingerprint(repo) -> dict:
    """Every file of the repo but the reports, by content."""
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(repo.rglob("*"))
            if p.is_file() and "reports" not in p.parts and "__pycache__" not in p.parts}


def test_evaluate_quick_json_png_and_an_untouched_repo(fresh_repo, tmp_path, capsys):
    repo = fresh_repo
    assert cli(["prepare", "--dataset", "synthetic", "--users", "300", "--items", "120", "--days", "40",
                "--events", "15000", "--repo", str(repo)]) == 0
    run_feast(repo, "apply", capture=True)
    before = _fingerprint(repo)
    out = tmp_path / "eval.json"
    assert cli(["evaluate", "--repo", str(repo), "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "protocol P" in printed and "gate: session_multvae" in printed
    assert _fingerprint(repo) == before  # a scratch copy did the deploying and applying
    result = json.loads(out.read_text())
    # the repo declares the items' text (the synthetic titles), which the two-tower reads: protocols N (new items)
    # and S (search) run by default
    assert set(result["protocols"]) == {"P", "C", "N", "S"} and result["quick"]
    learned = ("user_dae", "user_gan_critic", "session_multvae", "item_search")
    for name in ("P", "C"):
        protocol = result["protocols"][name]
        models = protocol["models"]
        assert {"popularity", "EASE", "Mult-VAE", "two-tower ids", "two-tower features (no learned)",
                "two-tower", *[f"- {n}" for n in learned]} <= set(models), name
        for row in models.values():
            assert 0 <= row["recall@20"] <= 1 and 0 <= row["ndcg@10"] <= 1 and row["users"] == protocol["test_users"]
        gate = models["two-tower"]["gate"]
        assert set(gate) == set(learned)
        for g in gate.values():  # an item embedding may also earn its place on the inner new items
            new = g.get("new_items") or {"mean": 0.0, "se": 0.0}
            assert g["kept"] == (g["gain_recall@20"] > g["z"] * g["se"] or new["mean"] > g["z"] * new["se"])
        pairs = protocol["paired"]["two-tower"]["EASE"]["recall@20"]
        assert pairs["se"] > 0 and abs(pairs["mean"] - (models["two-tower"]["recall@20"] - models["EASE"]["recall@20"])
                                       ) < 1e-9  # a paired mean is the difference of the means, on the same users
    # protocol N: the new items' rows, compared user by user with category popularity and without the text
    new = result["protocols"]["N"]
    assert set(new["models"]) == {"category popularity", "two-tower learned", "- item_search", "two-tower"}
    rows = new["models"]
    diff = new["paired"]["two-tower learned"]["  - item_search"]["ndcg@10"]["mean"]
    assert abs(diff - (rows["two-tower learned"]["ndcg@10"] - rows["- item_search"]["ndcg@10"])) < 1e-9
    # protocol S: P's test users searching by their targets' category (never the text)
    search = result["protocols"]["S"]
    assert set(search["models"]) == {"BM25", "text embedding", "two-tower (no query)", "personalized search"}
    assert search["test_users"] == result["protocols"]["P"]["test_users"]
    items = pd.read_parquet(repo / "data" / "items.parquet")
    # a query is the target's category and (few brands in so small a catalogue) its brand: never a title
    assert 1 <= search["queries"] <= len(items[["category", "brand"]].drop_duplicates()) < items.title.nunique()
    diff = search["paired"]["personalized search"]["BM25"]["ndcg@10"]["mean"]
    assert abs(diff - (search["models"]["personalized search"]["ndcg@10"] - search["models"]["BM25"]["ndcg@10"])) < 1e-9
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # protocol P's popularity row, independently: each user's last 20% of positives (at least 1, users with 5 or
    # more) are targets; items ranked by positives in everyone's history; known items excluded
    ev = pd.read_parquet(repo / "data" / "interactions")
    pos = ev[ev.event_type != "browse"].groupby(["user_id", "item_id"], as_index=False).event_timestamp.min()
    pos = pos.sort_values(["user_id", "event_timestamp", "item_id"], ignore_index=True)
    n = pos.groupby("user_id").item_id.transform("size")
    rank = pos.groupby("user_id").cumcount()
    future = rank >= n - np.where(n >= 5, np.maximum(1, np.round(0.2 * n)), 0)
    history, targets = pos[~future], pos[future]
    counts = history.groupby("item_id").size().reindex(ev.item_id.unique(), fill_value=0)
    low, high = [], []  # items of equal counts may be ranked either way: the recall's bounds over those orders
    for user, t in targets.groupby("user_id"):
        candidates = counts.drop(index=list(set(history.item_id[history.user_id == user])), errors="ignore")
        cut = candidates.sort_values(ascending=False).iloc[19]
        above, tied = candidates[candidates > cut], candidates[candidates == cut]
        sure, maybe = len(set(above.index) & set(t.item_id)), len(set(tied.index) & set(t.item_id))
        free = 20 - len(above)
        low.append((sure + max(0, free - (len(tied) - maybe))) / min(20, len(t)))
        high.append((sure + min(free, maybe)) / min(20, len(t)))
    p = result["protocols"]["P"]["models"]["popularity"]
    assert p["users"] == len(low)
    # protocol N's test users, independently: a positive before the cut (the 80% quantile of positive times) and
    # one after it on an item nobody had a positive on before it
    at = pos.event_timestamp.sort_values(ignore_index=True).iloc[int(0.8 * (len(pos) - 1))]
    first = pos.groupby("item_id").event_timestamp.min()
    after = pos[(pos.event_timestamp >= at) & pos.item_id.isin(first.index[first >= at])]
    assert new["test_users"] == len(set(after.user_id) & set(pos.user_id[pos.event_timestamp < at])) > 0
    assert np.mean(low) - 1e-9 <= p["recall@20"] <= np.mean(high) + 1e-9, (np.mean(low), p["recall@20"], np.mean(high))
    # a row the declaration does not have is named, with the ones it has, before any training
    with pytest.raises(AutofeatError, match=r"unknown row\(s\) \['two-tower nope'\]: .*'two-tower ids'"):
        evaluate_repo(repo, protocols=["P"], quick=True, rows=["two-tower nope"])
    assert _fingerprint(repo) == before
