"""TabularGAN (WGAN-GP over feature rows): it keeps the correlations an independent sampler loses, decodes to the
training schema, saves and loads bit-identically, is deterministic per seed, and rejects malformed input."""

import numpy as np
import pandas as pd
import pytest
import torch

from feast_autofeat.errors import AutofeatError
from feast_autofeat.models.base import NotFittedError, SchemaError
from feast_autofeat.models.gan import GANConfig, TabularGAN, fidelity_report, independent_sampler
from feast_autofeat.models.metrics import auc

NUMERIC = [f"c{j}" for j in range(6)]
SEGMENTS = ["high", "low", "mid"]
# Fast settings for 3000 rows on one thread (~5-10 s): Adam without momentum (beta1=0) and 10x the paper's lr
# converge in 80 epochs where the paper's (0.5, 0.9) / 1e-4 needs far more. Standard scaling because the
# rank-gauss path depends on TabularPreprocessor's tie handling, which this file does not test.
CFG = GANConfig(lr=1e-3, betas=[0.0, 0.9], epochs=80, patience=80, scaling="standard", seed=0)
TINY = GANConfig(noise_dim=8, hidden=16, critic_hidden=8, lr=1e-3, epochs=3, patience=3, scaling="standard")


def make_table(n: int, seed: int) -> pd.DataFrame:
    """Users' activity counts driven by one latent factor (so the columns correlate, one of them negatively)
    plus a string segment that also follows the factor."""
    rng = np.random.default_rng(seed)
    factor = rng.normal(size=n)
    base = np.array([0.5, 1.0, 1.5, 0.0, 2.0, 1.0])
    loading = np.array([0.8, 0.6, 0.7, 0.9, 0.5, -0.6])
    rate = np.exp(base + loading * factor[:, None] + 0.3 * rng.normal(size=(n, 6)))
    counts = rng.poisson(rate)
    df = pd.DataFrame({c: counts[:, j] for j, c in enumerate(NUMERIC)})
    df["segment"] = np.array(["low", "mid", "high"], dtype=object)[
        np.digitize(factor + 0.5 * rng.normal(size=n), [-0.6, 0.6])]
    return df


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def real() -> pd.DataFrame:
    return make_table(3000, seed=0)


@pytest.fixture(scope="module")
def gan(real, one_thread) -> TabularGAN:
    return TabularGAN(CFG).fit(real, valid_df=make_table(1000, seed=1))


def test_fit_records_metrics(gan, real):
    m = gan.metrics_
    assert m["rows"] == len(real) and m["validated_on"] == "valid_df"
    assert 1 <= m["best_epoch"] <= m["epochs"] <= CFG.epochs
    assert m["generator_steps"] == m["critic_steps"] // CFG.n_critic > 0
    assert 0 < m["train_seconds"] < 60
    assert np.isfinite(m["valid_moment_gap"]) and np.isfinite(m["valid_wasserstein"])


def test_gan_keeps_correlations_an_independent_sampler_loses(gan, real):
    synthetic = fidelity_report(real, gan.sample(3000, seed=1), target="c0")
    baseline = fidelity_report(real, independent_sampler(real, 3000, seed=1), target="c0")
    assert baseline["correlation_diff"] > 0.3  # the table really is correlated
    # measured over model seeds 0-9: GAN 0.09-0.15 vs independent 0.48
    assert synthetic["correlation_diff"] < 0.5 * baseline["correlation_diff"]
    # marginals stay close too (the independent sampler's are exact by construction)
    assert synthetic["mean_wasserstein"] < 0.35 and synthetic["mean_tvd"] < 0.15
    assert baseline["mean_wasserstein"] < 0.05 and baseline["mean_tvd"] < 0.03
    # train on synthetic, test on real: GAN rows carry the signal, independent rows cannot
    eff, base_eff = synthetic["efficacy"], baseline["efficacy"]
    assert eff["trtr_auc"] > 0.8 and eff["trtr_auc"] == base_eff["trtr_auc"]
    assert eff["tstr_auc"] > 0.65 and eff["tstr_auc"] > base_eff["tstr_auc"]
    assert eff["features"] == NUMERIC[1:] and eff["threshold"] == float(real["c0"].median())


def test_fidelity_report_on_known_inputs(real):
    same = fidelity_report(real, real)
    assert same["correlation_diff"] == 0 and same["mean_tvd"] == 0
    assert all(v.get("wasserstein", 0) == 0 for v in same["columns"].values())
    assert "efficacy" not in same
    rng = np.random.default_rng(0)
    a = pd.DataFrame({"x": rng.normal(size=4000), "y": rng.normal(size=4000), "s": ["a"] * 3000 + ["b"] * 1000})
    # shifting a column by one real std is a standardized W1 of 1; moving 25% of mass between strings is TVD 0.25
    b = a.assign(x=a["x"] + a["x"].std(), s=["a"] * 2000 + ["b"] * 2000)
    report = fidelity_report(a, b.iloc[::2])  # sizes may differ
    assert report["columns"]["x"]["wasserstein"] == pytest.approx(1.0, abs=0.05)
    assert report["columns"]["s"]["tvd"] == pytest.approx(0.25, abs=0.01)
    assert report["columns"]["y"]["kind"] == "numeric" and report["columns"]["s"]["kind"] == "categorical"
    with pytest.raises(SchemaError, match="'s'"):
        fidelity_report(a, b.drop(columns="s"))


def test_efficacy_auc_matches_pairwise_definition(real):
    # an exact copy of the real rows: both models see the same data, so TSTR must equal TRTR up to the split
    eff = fidelity_report(real, real, target="c3")["efficacy"]
    assert 0.75 < eff["trtr_auc"] <= 1 and abs(eff["tstr_auc"] - eff["trtr_auc"]) < 0.02
    rng = np.random.default_rng(1)
    y, s = rng.random(300) < 0.4, rng.integers(0, 5, 300).astype(float)  # many ties
    pairs = (s[y][:, None] > s[~y][None, :]).mean() + 0.5 * (s[y][:, None] == s[~y][None, :]).mean()
    assert auc(y, s) == pytest.approx(pairs, abs=1e-12)


def test_independent_sampler_keeps_marginals_not_correlations(real):
    ind = independent_sampler(real, 5000, seed=3)
    assert list(ind.columns) == list(real.columns) and (ind.dtypes == real.dtypes).all() and len(ind) == 5000
    assert ind.equals(independent_sampler(real, 5000, seed=3))
    assert np.corrcoef(real["c0"], real["c3"])[0, 1] > 0.4
    assert abs(np.corrcoef(ind["c0"], ind["c3"])[0, 1]) < 0.05


def test_sample_decodes_to_training_schema(gan, real):
    syn = gan.sample(500, seed=7)
    assert list(syn.columns) == list(real.columns) and len(syn) == 500
    assert (syn.dtypes == real.dtypes).all()  # int64 counts stay int64, strings stay object
    assert set(syn["segment"]) == set(SEGMENTS)  # every training value, nothing else (never the unseen slot)
    pd.testing.assert_frame_equal(syn, gan.sample(500, seed=7))
    assert not syn.equals(gan.sample(500, seed=8))
    assert len(gan.sample(0)) == 0 and list(gan.sample(0).columns) == list(real.columns)
    # decoding the preprocessed real rows gives the real rows back
    back = gan.inverse_transform(gan.preprocessor_.transform(real))
    pd.testing.assert_frame_equal(back, real)


def test_save_load_round_trip_is_bit_identical(gan, real, tmp_path):
    art = gan.save(tmp_path, extra={"note": "unit test"})
    loaded = TabularGAN.load(tmp_path)
    assert loaded.version_ == art.version and art.config["note"] == "unit test"
    assert art.config["input_schema"] == {**{c: "int64" for c in NUMERIC}, "segment": "object"}
    assert loaded.config == gan.config and loaded.metrics_ == gan.metrics_
    assert np.array_equal(loaded.transform(real), gan.transform(real))
    pd.testing.assert_frame_equal(loaded.sample(200, seed=2), gan.sample(200, seed=2))
    assert gan.save(tmp_path, extra={"note": "unit test"}).version == art.version  # same content, same version


def test_same_seed_same_model(real, one_thread):
    a, b = TabularGAN(TINY).fit(real), TabularGAN(TINY).fit(real)
    assert np.array_equal(a.transform(real), b.transform(real))
    assert all(torch.equal(v, b.net_.state_dict()[k]) for k, v in a.net_.state_dict().items())
    assert a.metrics_["validated_on"] == "train"
    c = TabularGAN(TINY, seed=1).fit(real)
    assert not np.array_equal(a.transform(real), c.transform(real))


def test_transform_rejects_malformed_input(gan, real):
    with pytest.raises(SchemaError, match="c3"):
        gan.transform(real.drop(columns="c3"))
    with pytest.raises(SchemaError, match="c2"):
        gan.transform(real.assign(c2=real["c2"].astype(float).where(real.index != 5)))
    with pytest.raises(SchemaError, match="segment"):
        gan.transform(real.assign(segment=real["segment"].where(real.index != 5)))
    with pytest.raises(NotFittedError):
        TabularGAN(TINY).transform(real)
    with pytest.raises(SchemaError, match="columns"):
        gan.inverse_transform(np.zeros((2, 3)))


def test_fill_is_the_documented_imputation(real, one_thread):
    model = TabularGAN(TINY, epochs=1, fill={"c0": 0.0}).fit(real)
    holes = real.assign(c0=real["c0"].astype(float).where(real.index % 7 != 0))
    assert np.array_equal(model.transform(holes), model.transform(holes.fillna({"c0": 0.0})))


def test_realism_features(gan, real):
    feats = gan.transform(real)
    assert feats.shape == (len(real), CFG.critic_hidden + 1) and feats.dtype == np.float32
    assert np.array_equal(feats[:, -1], gan.realism(real))
    assert np.allclose(gan.transform(real, batch_size=100), feats, atol=1e-5)  # batching changes nothing
    # rows whose columns are permuted independently keep every marginal but no correlation; the critic scores
    # them lower on average (held for model seeds 0-9, margin 0.07-0.23)
    rng = np.random.default_rng(0)
    shuffled = pd.DataFrame({c: real[c].to_numpy()[rng.permutation(len(real))] for c in real.columns})
    assert gan.realism(real).mean() > gan.realism(shuffled).mean()


def test_config_validation():
    with pytest.raises(AutofeatError, match="scaling"):
        GANConfig(scaling="minmax")
    with pytest.raises(AutofeatError, match="epochs"):
        TabularGAN(TINY, epochs=0)
    assert GANConfig(betas=(0.5, 0.9), fill={"a": 0}) == GANConfig(betas=[0.5, 0.9], fill={"a": 0.0})
