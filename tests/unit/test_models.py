"""Encoders on small seeded data: preprocessing, DAE, Mult-VAE, EASE and the ranking metrics."""

import numpy as np
import pandas as pd
import pytest
import torch

from feast_autofeat.artifacts import load_version
from feast_autofeat.models.base import NotFittedError, SchemaError, TabularPreprocessor
from feast_autofeat.models.dae import DAE
from feast_autofeat.models.ease import EASE, Popularity
from feast_autofeat.models.interactions import Histories
from feast_autofeat.models.metrics import ndcg_at_k, recall_at_k, top_k
from feast_autofeat.models.multvae import MultVAE

torch.set_num_threads(1)


def _table(n=1500, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    return pd.DataFrame({
        "a": rng.poisson(np.exp(1 + z)), "b": rng.poisson(np.exp(0.5 - z)), "c": 3 * z + rng.normal(size=n),
        "d": rng.normal(size=n), "seg": np.where(z > 0.5, "high", np.where(z < -0.5, "low", "mid")),
        "zip": rng.integers(0, 10_000, n).astype(str),  # high cardinality: left out
    })


# ---- preprocessing
def test_rankgauss_is_monotone_and_standard_normal():
    df = _table(4000)
    pre = TabularPreprocessor().fit(df)
    x = pre.transform(df)
    assert pre.dropped_ == ["zip"] and pre.numeric_ == ["a", "b", "c", "d"] and list(pre.categorical_) == ["seg"]
    assert x.shape == (4000, 4 + 4) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 2:4].mean(axis=0), 0, atol=0.05)
    np.testing.assert_allclose(x[:, 2:4].std(axis=0), 1, atol=0.05)
    order = np.argsort(df["c"].to_numpy())
    assert np.all(np.diff(x[order, 2]) >= 0), "rank-gauss must preserve order"
    same = TabularPreprocessor.from_state(pre.state()).transform(df)
    assert np.array_equal(x, same)


def test_preprocessing_errors_and_documented_fill():
    df = _table(500)
    pre = TabularPreprocessor(fill={"a": 0.0}).fit(df)
    with pytest.raises(SchemaError, match=r"\['c'\]"):
        pre.transform(df.drop(columns=["c"]))
    bad = df.copy()
    bad.loc[3, "b"] = np.nan
    with pytest.raises(SchemaError, match="'b'"):
        pre.transform(bad)
    bad.loc[3, "b"] = np.inf
    with pytest.raises(SchemaError, match="'b'"):
        pre.transform(bad)
    filled = df.copy()
    filled.loc[3, "a"] = np.nan
    zero = df.copy()
    zero.loc[3, "a"] = 0
    assert np.array_equal(pre.transform(filled), pre.transform(zero))
    unseen = df.head(2).assign(seg="never-seen")
    assert pre.transform(unseen)[:, -1].tolist() == [1.0, 1.0]  # the "unseen" slot
    with pytest.raises(NotFittedError):
        TabularPreprocessor().transform(df)


# ---- DAE
@pytest.fixture(scope="module")
def dae():
    df = _table(1500)
    return DAE(dim=8, hidden=64, epochs=30, patience=5, batch_size=128, seed=3).fit(df.iloc[:1200], df.iloc[1200:]), df


def test_dae_reconstructs_far_better_than_column_means(dae):
    model, df = dae
    report = model.reconstruction_report(df.iloc[1200:])
    assert report["reconstruction_mse"] < 0.5 * report["column_mean_mse"], report


def test_dae_save_load_is_bit_identical_and_verified(dae, tmp_path):
    model, df = dae
    art = model.save(tmp_path, extra={"training_window": {"as_of": "2025-01-01T00:00:00+00:00"}})
    loaded = DAE.load(tmp_path, art.version)
    assert loaded.version_ == art.version
    assert np.array_equal(model.transform(df), loaded.transform(df))
    assert art.config["input_schema"] == {"a": "numeric", "b": "numeric", "c": "numeric", "d": "numeric",
                                          "seg": "categorical"}


def test_warm_start_only_when_the_inputs_mean_the_same(dae, tmp_path):
    """A refresh starts from the live weights: with lr 0 the new version equals the old one on the same layout;
    a changed category vocabulary (other input positions) starts fresh."""
    model, df = dae
    art = model.save(tmp_path)
    warm = DAE(dim=8, hidden=64, epochs=1, lr=0.0, seed=9)
    warm.init_ = load_version(tmp_path, "dae", art.version)
    warm.fit(df.sample(frac=0.9, random_state=1))  # other rows, other scaling statistics, same layout
    assert warm.metrics_["warm_start"] is True
    assert all(torch.equal(a, b) for a, b in zip(warm.net_.state_dict().values(), model.net_.state_dict().values()))
    cold = DAE(dim=8, hidden=64, epochs=1, lr=0.0, seed=9)
    cold.init_ = warm.init_
    cold.fit(df.assign(seg=df.seg.replace({"mid": "middle"})))
    assert cold.metrics_["warm_start"] is False


def test_dae_is_deterministic_under_a_seed():
    df = _table(600)
    a = DAE(dim=4, hidden=32, epochs=3, seed=5).fit(df).transform(df)
    b = DAE(dim=4, hidden=32, epochs=3, seed=5).fit(df).transform(df)
    c = DAE(dim=4, hidden=32, epochs=3, seed=6).fit(df).transform(df)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_dae_bad_input(dae):
    model, df = dae
    with pytest.raises(SchemaError, match="'d'"):
        model.transform(df.drop(columns=["d"]))
    with pytest.raises(SchemaError, match="columns"):
        model.encode_matrix(np.zeros((3, 5), np.float32))
    with pytest.raises(SchemaError, match="NaN"):
        model.encode_matrix(np.full((3, model.preprocessor_.width), np.nan, np.float32))
    with pytest.raises(NotFittedError):
        DAE().transform(df)


# ---- Mult-VAE
def _histories(n_users=400, n_items=60, seed=0) -> Histories:
    """Two taste groups, each liking its own half of the catalogue."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 2, n_users)
    users, items = [], []
    for g in (0, 1):
        members = np.flatnonzero(group == g)
        pick = rng.random((len(members), n_items // 2)) < 0.3
        u, i = np.nonzero(pick)
        users.append(members[u])
        items.append(i + g * (n_items // 2))
    return Histories.from_pairs(np.concatenate(users), np.concatenate(items), n_users, n_items)


@pytest.fixture(scope="module")
def vae():
    h = _histories()
    return MultVAE(hidden=32, dim=8, epochs=40, batch_size=100, seed=1).fit(h, item_ids=np.arange(100, 160)), h


def test_multvae_learns_the_groups_and_folds_in_new_histories(vae):
    model, h = vae
    first_half = model.fold_in([100, 101, 102, 103, 104])  # item ids of group 0
    second_half = model.fold_in([150, 151, 152, 153, 154])
    scores = model._net().decode(torch.from_numpy(np.stack([first_half, second_half]))).detach().numpy()
    assert scores[0, :30].mean() > scores[0, 30:].mean() and scores[1, 30:].mean() > scores[1, :30].mean()
    # fold-in of a history equals transform of the same history; unknown ids are ignored
    row = h.subset(np.array([7]))
    ids = 100 + row.indices
    assert np.array_equal(model.fold_in(ids), model.transform(row)[0])
    assert np.array_equal(model.fold_in(list(ids) + [99_999]), model.fold_in(ids))
    assert model.item_vectors().shape == (60, 32)


def test_multvae_round_trip_and_determinism(vae, tmp_path):
    model, h = vae
    art = model.save(tmp_path)
    loaded = MultVAE.load(tmp_path, art.version)
    assert np.array_equal(model.transform(h), loaded.transform(h))
    assert np.array_equal(loaded.item_ids_, np.arange(100, 160))
    again = MultVAE(hidden=32, dim=8, epochs=40, batch_size=100, seed=1).fit(h, item_ids=np.arange(100, 160))
    assert np.array_equal(again.transform(h), model.transform(h))
    with pytest.raises(SchemaError, match="60"):
        model.transform(Histories(np.array([0, 1]), np.array([0]), 61))


# ---- EASE, popularity, metrics
def test_ease_matches_the_closed_form():
    h = _histories(n_users=80, n_items=12, seed=2)
    x = h.rows(np.arange(h.n_users)).numpy().astype(np.float64)
    p = np.linalg.inv(x.T @ x + 7.0 * np.eye(12))
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0)
    model = EASE(l2=7.0).fit(h)
    np.testing.assert_allclose(model.B_, b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(model.score(h), x @ b, rtol=1e-4, atol=1e-5)
    assert np.array_equal(Popularity().fit(h).score(h.subset(np.array([0])))[0], x.sum(axis=0))


def test_metrics_by_hand():
    scores = np.array([[0.9, 0.8, 0.7, 0.1], [0.1, 0.2, 0.3, 0.4]])
    targets = Histories(np.array([0, 2, 3]), np.array([1, 3, 0]), 4)
    history = Histories(np.array([0, 1, 1]), np.array([0]), 4)  # user 0 already has item 0
    assert top_k(scores, 2, exclude=history).tolist() == [[1, 2], [3, 2]]
    np.testing.assert_allclose(recall_at_k(scores, targets, 2, exclude=history), [0.5, 0.0])
    # user 0: ranking [1, 2, 3]; target 1 at rank 1 and 3 at rank 3; ideal = 1 + 1/log2(3)
    ndcg = ndcg_at_k(scores, targets, 3, exclude=history)
    np.testing.assert_allclose(ndcg[0], (1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3)))
    assert ndcg[1] == 0.0


def test_rankgauss_ranks_equal_the_two_sided_interpolation():
    """The one-interpolation rank (with a lookup of tied quantiles) equals the definition: the mean of
    interpolating from below and from above, on columns full of ties (counts) and without."""
    import numpy as np
    import pandas as pd

    from feast_autofeat.models.base import _QUANTILES, TabularPreprocessor

    rng = np.random.default_rng(0)
    train = pd.DataFrame({"counts": rng.poisson(0.3, 5000).astype(float), "cont": rng.normal(size=5000),
                          "steps": rng.integers(0, 4, 5000).astype(float)})
    pre = TabularPreprocessor().fit(train)
    x = np.column_stack([np.concatenate([train[c].to_numpy()[:500], rng.normal(size=50) * 3,
                                         np.array(pre.quantiles_[j])]) for j, c in enumerate(train.columns)])
    probs = np.linspace(0, 1, _QUANTILES)
    q = np.asarray(pre.quantiles_)
    want = np.column_stack([0.5 * (np.interp(x[:, j], q[j], probs) + np.interp(-x[:, j], -q[j][::-1], probs[::-1]))
                            for j in range(x.shape[1])])
    np.testing.assert_allclose(pre._ranks(x), want, rtol=0, atol=1e-12)
    assert len(pre._ties[0][0]) >= 1  # the count column really has tied quantiles


def test_serving_row_path_equals_frame_path():
    """transform_record (one row as a dict, no pandas) equals transform of that row, missing values included."""
    from feast_autofeat.models.base import TabularPreprocessor

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"count": rng.poisson(0.7, 500).astype(float), "x": rng.normal(size=500),
                       "kind": rng.choice(["a", "b", "c"], 500)})
    pre = TabularPreprocessor(fill={"count": 0.0, "kind": 0.0}).fit(df)
    probe = pd.DataFrame({"count": [0.0, 3.0, np.nan, 99.0, -1.0], "x": [0.1, -5.0, 2.0, 0.0, 10.0],
                          "kind": ["a", "z", None, "c", "b"]})
    want = pre.transform(probe)
    for i, row in enumerate(probe.to_dict(orient="records")):
        row = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
        np.testing.assert_allclose(pre.transform_record(row), want[i:i + 1], atol=1e-6)
    rows = [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
            for r in probe.to_dict(orient="records")]
    np.testing.assert_allclose(pre.transform_records(rows), want, atol=1e-6)  # a batch of requests: the same rows
    with pytest.raises(SchemaError, match="must be numeric"):
        pre.transform_record({"count": "3", "x": 0.0, "kind": "a"})
    with pytest.raises(SchemaError, match="NaN or infinite"):
        pre.transform_record({"count": 1.0, "x": None, "kind": "a"})


def test_first_requests_in_parallel_see_complete_lookup_tables():
    """The serving path builds its lookup tables (tied quantiles, vocabularies) on first use; requests racing on
    a freshly loaded model must all get the single-threaded answer, and so must every request after them (a
    half-built table, once cached, would skew that model's every response)."""
    import sys
    import threading

    from feast_autofeat.models.base import TabularPreprocessor

    rng = np.random.default_rng(1)
    cols = {f"c{j}": rng.poisson(0.3, 2000).astype(float) for j in range(40)}  # many tied zero quantiles
    df = pd.DataFrame({**cols, "kind": rng.choice(["a", "b", "c"], 2000)})
    state = TabularPreprocessor().fit(df).state()
    record = {**{c: 0.0 for c in cols}, "kind": "b"}
    want = TabularPreprocessor.from_state(state).transform_record(record)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, to expose a race if there is one
    try:
        for _ in range(30):
            pre = TabularPreprocessor.from_state(state)
            start, out = threading.Barrier(4), []

            def call(pre=pre, start=start, out=out):
                start.wait()
                out.append(pre.transform_record(record))

            threads = [threading.Thread(target=call) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            out.append(pre.transform_record(record))
            for got in out:
                np.testing.assert_array_equal(got, want)
    finally:
        sys.setswitchinterval(old)
