"""Refresh -> shadow -> gate -> cut-over -> rollback on ML-100K in a real redis-server, under load: no request
fails, every response is computed from exactly one two-tower version (the one it names, checked against a
recommender pinned to that version), a failed gate leaves the live versions alone, and the health report
exists. Runs after the feedback tests on the same repo, so the refresh also trains on their logged events."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import numpy as np
import pytest

from feast_autofeat.artifacts import load_version
from feast_autofeat.feast.embeddings import Deployments
from feast_autofeat.recommend.recommender import Recommender
from feast_autofeat.recommend.refresh import refresh, rollback
from tests.conftest import NOW, REDIS_YAML

pytestmark = pytest.mark.integration
EPOCHS = {"dae": 2, "gan": 2, "multvae": 3, "two_tower": 3}
ITEM_VIEW = "item_two_tower"  # the bundled repo's two-tower


class Load:
    """Threads requesting recommendations for random users until stopped; keeps every response and error."""

    def __init__(self, recommender: Recommender, threads: int = 3):
        self.rec, self.stop_, self.responses, self.errors = recommender, threading.Event(), [], []
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not self.stop_.is_set():
            user = int(rng.integers(1, 944))
            try:
                self.responses.append(self.rec.recommend(user, k=10))
            except Exception as exc:  # noqa: BLE001 - every failure is a test failure, kept to report
                self.errors.append(repr(exc))
            time.sleep(0.005)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_.set()
        for t in self.threads:
            t.join(timeout=30)


def _wait_for(rec: Recommender, version: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while rec.version != version:
        assert time.time() < deadline, f"still serving {rec.version}, expected {version}"
        rec.recommend(1, k=5)  # requests drive the live-version check
        time.sleep(0.2)


def test_failed_gate_leaves_live_untouched(rec_repo):
    repo, live = rec_repo
    before = (repo / "embeddings.json").read_text()
    proc = subprocess.run([sys.executable, "-m", "feast_autofeat.cli", "refresh", "--repo", str(repo), "-f",
                           REDIS_YAML, "--tolerance", "-1", "--epochs", *[f"{k}={v}" for k, v in EPOCHS.items()]],
                          capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "gate failed: candidate Recall@20" in proc.stdout
    after = json.loads((repo / "embeddings.json").read_text())
    assert {n: e["live"] for n, e in after.items()} == {n: e["live"] for n, e in json.loads(before).items()}
    assert Deployments(repo).get(ITEM_VIEW).live == live and len(Deployments(repo).get(ITEM_VIEW).versions) == 2


def test_refresh_cut_over_and_rollback_under_load(rec_repo):
    repo, old = rec_repo
    now = datetime.fromisoformat(NOW).replace(tzinfo=timezone.utc)
    rec = Recommender(repo, yaml=REDIS_YAML, clock=lambda: now, check_every=0.2)
    probe = (1, 2, 3, 50, 405)
    pinned_before = Recommender(repo, version=old, yaml=REDIS_YAML, clock=lambda: now)
    before = {u: pinned_before.recommend(u, k=10).items for u in probe}
    with Load(rec) as load:
        result = refresh(repo, yaml=REDIS_YAML, epochs=EPOCHS, tolerance=0.5)
        assert result.cut_over, result.reason
        new = result.candidate
        assert result.live_before == old and new != old
        assert all(p["ok"] and p["max_abs_diff"] <= 1e-5 for p in result.parity.values()), result.parity
        assert result.gate["users"] >= 20 and set(result.gate) >= {"live", "candidate", "passed"}
        _wait_for(rec, new)
        served_new = len(load.responses)
        time.sleep(1)
        rollback(repo)
        _wait_for(rec, old)
        back_at = len(load.responses)
        time.sleep(1)
    assert not load.errors, load.errors[:3]
    versions = [r.model_version for r in load.responses]
    assert set(versions) == {old, new}
    assert versions[served_new:].count(new) >= 1 and versions[-1] == old
    # every response equals what a recommender pinned to the version it names returns
    pinned = {v: Recommender(repo, version=v, yaml=REDIS_YAML, clock=lambda: now) for v in (old, new)}
    # the shadow work changed nothing the live version serves
    assert {u: pinned[old].recommend(u, k=10).items for u in probe} == before
    # (old responses before the cut-over against the old version as it was then, after the rollback as it is now)
    step = max(1, len(load.responses) // 60)
    for i, r in list(enumerate(load.responses))[::step]:
        if r.model_version == old and served_new <= i < back_at:
            continue  # the swap's edges: the moment each side switched is not recorded per response
        ref = pinned_before if (r.model_version == old and i < served_new) else pinned[r.model_version]
        assert r.items == ref.recommend(r.user_id, k=10).items, (r.model_version, r.user_id, i)
    # the two versions really differ (else "one version per response" would prove nothing)
    assert any(pinned[old].recommend(u, k=10).items != pinned[new].recommend(u, k=10).items for u in (1, 2, 3))
    # rollback restored the encoders the old two-tower was trained with
    dep = Deployments(repo)
    trained_with = load_version(repo / "models", "two_tower", old).config["encoders"]
    assert {n: dep.get(n).live for n in trained_with} == trained_with
    # embedding health: JSON and PNG, figures in range
    report = json.loads(open(result.health).read())
    item = report["views"][ITEM_VIEW]
    assert item["null_share_served"] == 0.0 and 0.0 <= item["neighbour_overlap@10"] <= 1.0
    assert item["previous"].endswith(old) and item["entities"] == 1682
    assert report["views"]["user_dae"]["norm"]["p50"] > 0
    assert open(result.health.replace(".json", ".png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
