"""Pure logic of the embedding views: Feast's byte layout, the deployment lock, backfill times, fold-in."""

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import FloatList, Value

from feast_autofeat.cli import parse_every
from feast_autofeat.errors import AutofeatError
from feast_autofeat.feast.embeddings import DeploymentError, Deployments
from feast_autofeat.feast.encoding import FloatVectorCodec, KeyCodec
from feast_autofeat.feast.engine import leakage_overlap, snapshot_times
from feast_autofeat.feast.runtime import SessionEncoder
from feast_autofeat.models.base import SchemaError
from feast_autofeat.models.interactions import Histories
from feast_autofeat.models.multvae import MultVAE

UTC = timezone.utc


def test_key_and_vector_bytes_equal_feasts_own_serialization():
    rng = np.random.default_rng(0)
    cases = {"int64": (np.array([0, 1, -1, 2**62, -(2**63), 943], dtype=np.int64), "int64_val"),
             "int32": (np.array([0, 1, -1, 2**31 - 1, -(2**31), 943], dtype=np.int64), "int32_val"),
             "string": (np.array(["u42", "", "A2SUAM1J3GNN3B", "\u00e9t\u00e9", "u42", "x" * 300]), "string_val")}
    for kind, (ids, attr) in cases.items():
        keys = KeyCodec("user_id", kind).encode(ids)
        assert len(keys) == len(ids)
        for i, row in zip(ids.tolist(), keys):
            proto = EntityKey(join_keys=["user_id"], entity_values=[Value(**{attr: i})])
            assert row == serialize_entity_key(proto, entity_key_serialization_version=3), (kind, i)
    for dim in (1, 31, 64, 200):
        vecs = rng.normal(size=(5, dim)).astype(np.float32)
        codec = FloatVectorCodec(dim)
        out = np.empty((5, codec.width), np.uint8)
        codec.fill(out, vecs)
        for v, row in zip(vecs, out):
            assert row.tobytes() == Value(float_list_val=FloatList(val=v.tolist())).SerializeToString()


def test_deployments_promote_rollback_and_persistence(tmp_path):
    dep = Deployments(tmp_path)
    dep.deploy("user_dae", "dae", "aaaa1111")  # first version becomes live
    dep.deploy("user_dae", "dae", "bbbb2222")  # beside it, not live
    assert dep.get("user_dae").live == "aaaa1111"
    dep.promote("user_dae", "bbbb")  # unique prefix
    dep.save()
    again = Deployments(tmp_path)
    assert again.get("user_dae").live == "bbbb2222" and again.get("user_dae").previous == ["aaaa1111"]
    again.rollback("user_dae")
    assert again.get("user_dae").live == "aaaa1111"
    with pytest.raises(DeploymentError, match="no earlier live version"):
        again.rollback("user_dae")
    with pytest.raises(DeploymentError, match="no deployed version"):
        again.promote("user_dae", "cccc")
    with pytest.raises(DeploymentError, match="not gan"):
        again.deploy("user_dae", "gan", "dddd")
    # a damaged lock file is an error naming the file and the field, never a silent deletion
    for text, match in (('{"x": {"modell": "dae"}}', "entry 'x' has unknown field"), ('{"x": ', "not valid JSON"),
                        ("", "not valid JSON"), ("[]", "must hold an object"),
                        ('{"x": {"model": "dae", "versions": 5}}', "x.versions must be a list"),
                        ('{"x": {"model": "dae", "versions": ["a"], "live": "b"}}', r"x.live \('b'\) is not one"),
                        # feast apply would delete the feature service: an error, never a deletion
                        ('{"x": {"model": "dae", "versions": ["a"], "live": null}}', r"x.live is null while"),
                        ('{"x": {"model": "dae", "versions": [], "live": null}}', None)):
        (tmp_path / "embeddings.json").write_text(text)
        if match is None:  # nothing deployed, nothing live: a valid state (no feature service registered)
            assert Deployments(tmp_path).live("x") is None
            continue
        with pytest.raises(DeploymentError, match=match) as err:
            Deployments(tmp_path)
        assert "embeddings.json" in str(err.value)


def test_snapshot_times_and_leakage_window():
    start = datetime(2024, 1, 1, tzinfo=UTC)
    times = snapshot_times(start, start + timedelta(days=3), timedelta(days=1))
    assert [t.day for t in times] == [1, 2, 3, 4]
    assert leakage_overlap("2024-01-03T00:00:00+00:00", times) == times[:2]  # trained on data up to Jan 3
    assert leakage_overlap(None, times) == []
    with pytest.raises(AutofeatError, match="before --start"):
        snapshot_times(start, start - timedelta(days=1), timedelta(days=1))
    assert parse_every("6h") == timedelta(hours=6)
    with pytest.raises(AutofeatError, match="unit"):
        parse_every("1w")


def test_session_encoder_matches_multvae_fold_in():
    rng = np.random.default_rng(1)
    n_users, n_items = 200, 60
    rows = [np.unique(rng.integers(0, n_items, rng.integers(2, 12))) for _ in range(n_users)]
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    item_ids = np.arange(n_items) * 10 + 7  # external ids are not positions
    model = MultVAE(hidden=32, dim=8, epochs=2, seed=0).fit(Histories(indptr, np.concatenate(rows), n_items),
                                                            item_ids=item_ids)
    net = model.net_
    enc = SessionEncoder(model="multvae", version="v", dim=8, item_ids=model.item_ids_,
                         _w1=net.enc.weight.detach().numpy().T.copy(), _b1=net.enc.bias.detach().numpy(),
                         _w2=net.mu_logvar.weight.detach().numpy()[:8].T.copy(),
                         _b2=net.mu_logvar.bias.detach().numpy()[:8])
    histories = [[17, 27, 597], [], [5, 99999, -3], [17, 17, 37], np.array([597, 27]), None]
    vecs, known = enc.encode(histories)
    for h, v in zip(histories, vecs):
        np.testing.assert_allclose(v, model.fold_in([] if h is None else h), atol=1e-5)
    assert known.tolist() == [3, 0, 0, 2, 2, 0]
    one, _ = enc.encode([[17, 27, 597]])  # a single request gives the same vector as inside a batch
    np.testing.assert_allclose(one[0], vecs[0], atol=1e-6)
    for bad in (["a"], [1.0], [True], np.array([1.5])):
        with pytest.raises(SchemaError, match="must be integers"):
            enc.encode([bad])


def test_cluster_key_slots_equal_redis_py():
    """The vectorized CRC16 slot of every key equals redis-py's key_slot, hash tags included."""
    from redis.crc import key_slot

    from feast_autofeat.feast.writer import key_slots

    rng = np.random.default_rng(0)
    keys = rng.integers(0, 256, (3000, 29)).astype(np.uint8)
    keys[:300, 5] = ord("{")  # tagged keys: with and without a closing brace after
    keys[:150, 12] = ord("}")
    keys[150:160, 6] = ord("}")  # "{}": an empty tag hashes the whole key
    got = key_slots(keys)
    assert got.tolist() == [key_slot(k.tobytes()) for k in keys]
    assert len(np.unique(got)) > 2500  # spread over the slots


def test_declarations_refuse_other_entities_and_say_when_nothing_is_deployed(tmp_path):
    """Declaring is checked when `feast apply` imports the repo: inputs keyed by another entity (or by several)
    are refused; a declaration with nothing deployed registers no view, warns with the commands, and is added to
    the declaring module (where `feast apply` and feast-autofeat's commands find it)."""
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64

    from feast_autofeat import embedding_view
    from feast_autofeat.feast.embeddings import NotDeployedWarning

    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
    item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64)
    src = FileSource(name="src", path=str(tmp_path / "x.parquet"), timestamp_field="ts")

    def view(name, entities):
        return FeatureView(name=name, entities=entities, schema=[Field(name="x", dtype=Float64)], source=src,
                           ttl=timedelta(0))

    for inputs, model, match in (([view("pairs", [user, item])], "dae", r"keyed by \['user', 'item'\]"),
                                 ([view("items", [item])], "dae", "not by entity user alone"),
                                 ([view("stats", [user])], "multvae", "model 'multvae' cannot back")):
        with pytest.raises(DeploymentError, match=match):
            embedding_view("e", entity=user, model=model, inputs=inputs, repo=tmp_path)
    stats = view("stats", [user])
    with pytest.warns(NotDeployedWarning, match=r"e \(dae\) has no deployed version.*feast-autofeat train e"):
        decl = embedding_view("e", entity=user, model="dae", inputs=[stats[["x"]]], repo=tmp_path)
    assert decl.views == {} and decl.live is None and decl.refs == ["stats:x"] and decl.key == "user_id"
    assert globals()["_autofeat_decl_e"] is decl
