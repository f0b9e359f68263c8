"""Model versions: safetensors + JSON, content-hash ids, refusal of anything missing or edited."""

import json
import struct

import pytest
import torch

from feast_autofeat.artifacts import (
    CHECKSUMS,
    CONFIG,
    WEIGHTS,
    ArtifactError,
    list_versions,
    load_version,
    save_version,
)


@pytest.fixture
def saved(tmp_path):
    tensors = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "ids": torch.tensor([5, 7, 9])}
    return tmp_path, save_version(tmp_path, "toy", tensors, {"model": "toy", "dim": 4})


def test_round_trip_and_content_addressing(saved):
    root, art = saved
    loaded = load_version(root, "toy", art.version)
    assert torch.equal(loaded.tensors["w"], torch.arange(12, dtype=torch.float32).reshape(3, 4))
    assert torch.equal(loaded.tensors["ids"], torch.tensor([5, 7, 9]))
    assert loaded.config == {"model": "toy", "dim": 4}
    # same content -> same version; different content -> another version
    again = save_version(root, "toy", dict(loaded.tensors), {"dim": 4, "model": "toy"})
    assert again.version == art.version
    other = save_version(root, "toy", dict(loaded.tensors), {"model": "toy", "dim": 5})
    assert other.version != art.version and list_versions(root, "toy") == [art.version, other.version]
    assert load_version(root, "toy").version == other.version  # newest by default


def test_weights_are_safetensors_not_pickle(saved):
    _, art = saved
    raw = (art.path / WEIGHTS).read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_len])
    assert set(header) >= {"w", "ids"} and header["w"]["dtype"] == "F32"
    assert not raw.startswith(b"\x80")  # a pickle stream starts with the PROTO opcode


@pytest.mark.parametrize("fname", [WEIGHTS, CONFIG, CHECKSUMS])
def test_edited_file_is_refused_by_name(saved, fname):
    root, art = saved
    path = art.path / fname
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=fname):
        load_version(root, "toy", art.version)


def test_truncated_file_is_refused_and_a_resave_repairs_it(saved):
    root, art = saved
    (art.path / WEIGHTS).write_bytes((art.path / WEIGHTS).read_bytes()[:20])
    with pytest.raises(ArtifactError, match=WEIGHTS):
        load_version(root, "toy", art.version)
    repaired = save_version(root, "toy", dict(art.tensors), art.config)
    assert repaired.version == art.version
    assert torch.equal(load_version(root, "toy", art.version).tensors["w"], art.tensors["w"])


def test_missing_file_is_refused_by_name(saved):
    root, art = saved
    (art.path / CONFIG).unlink()
    with pytest.raises(ArtifactError, match=f"{CONFIG} is missing"):
        load_version(root, "toy", art.version)


def test_bad_requests(tmp_path):
    with pytest.raises(ArtifactError, match="no versions of model 'nope'"):
        load_version(tmp_path, "nope")
    with pytest.raises(ArtifactError, match="NaN"):
        save_version(tmp_path, "toy", {"w": torch.zeros(1)}, {"loss": float("nan")})
    with pytest.raises(ArtifactError, match="model name"):
        save_version(tmp_path, "../evil", {"w": torch.zeros(1)}, {})
    assert list_versions(tmp_path, "toy") == []  # nothing half-written
