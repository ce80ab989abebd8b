"""model.checkpoint.check: a checkpoint directory checked from config.json, the index and the safetensors headers
alone, every damage named by file (and tensor, and shapes).

The headers are parsed here by hand from the format (8-byte little-endian length, JSON of name -> dtype, shape,
data_offsets), independently of the code under test, to work out what each message must say.
"""

from __future__ import annotations

import json
import re
import struct

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

import model
from model.checkpoint import INDEX_NAME, check
from model.tiny import tiny_model


@pytest.fixture
def written(tmp_path):
    """The tiny twin saved in shards of at most 100 kB (several tensors share some shards)."""
    return model.save(tiny_model(seed=0), tmp_path / "ckpt", max_shard_bytes=100_000)


def weight_map(directory) -> dict[str, str]:
    return json.loads((directory / INDEX_NAME).read_text())["weight_map"]


def header_of(data: bytes) -> tuple[int, dict]:
    (length,) = struct.unpack("<Q", data[:8])
    return length, json.loads(data[8:8 + length])


def test_a_sound_checkpoint_is_checked_from_its_headers_alone(written):
    original = tiny_model(seed=0)
    checked = check(written)
    assert checked.config == original.config
    state = original.network.state_dict()
    assert checked.headers == {key: (tuple(value.shape), "F32", weight_map(written)[key]) for key, value in state.items()}
    assert checked.files == {key: written / name for key, name in weight_map(written).items()}
    # No tensor byte is read: zeroing every shard's data (headers kept) changes nothing for `check`
    for shard in sorted(set(weight_map(written).values())):
        data = (written / shard).read_bytes()
        length, _ = header_of(data)
        (written / shard).write_bytes(data[:8 + length] + bytes(len(data) - 8 - length))
    assert check(written) == checked
    assert all(float(p.detach().abs().sum()) == 0 for p in model.load(written).network.parameters())  # loading reads them


@pytest.mark.parametrize("cut", ["empty", "in_header", "in_data"])
def test_a_truncated_shard_is_named_with_what_lies_past_its_end(written, cut):
    shard = written / sorted(set(weight_map(written).values()))[1]
    data = shard.read_bytes()
    length, header = header_of(data)
    keep = {"empty": 0, "in_header": 8 + length // 2, "in_data": len(data) - 1}[cut]
    shard.write_bytes(data[:keep])
    if cut == "empty":
        message = f"{shard} is truncated: 0 bytes, shorter than the 8-byte header length of a safetensors file"
    elif cut == "in_header":
        message = f"{shard} is truncated: its header needs bytes 8..{8 + length}, the file has {keep}"
    else:
        last = max((entry["data_offsets"][1], name) for name, entry in header.items() if name != "__metadata__")[1]
        begin, end = header[last]["data_offsets"]
        message = (f"{shard} is truncated: tensor {last} needs data bytes {begin}..{end}, the file holds "
                   f"{keep - 8 - length} after its header")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check(written)


def test_a_header_that_is_not_safetensors_is_named(written):
    shard = written / sorted(set(weight_map(written).values()))[0]
    data = shard.read_bytes()
    for header, words in [(b"\xff{not json", "its header is not a JSON object (.*)"),
                          (b"[1, 2]", r"its header is not a JSON object \(a JSON list\)")]:
        shard.write_bytes(struct.pack("<Q", len(header)) + header + data)
        with pytest.raises(ValueError, match=f"^{re.escape(str(shard))} is not a safetensors file: {words}"):
            check(written)
    header = json.dumps({"model.transformer.wte.weight": {"dtype": "F32"}}).encode()
    shard.write_bytes(struct.pack("<Q", len(header)) + header + data)
    with pytest.raises(ValueError, match=re.escape(f"{shard}: the header entry of model.transformer.wte.weight is "
                                                   "not {dtype, shape, data_offsets}: {'dtype': 'F32'}")):
        check(written)


def test_a_shard_missing_a_tensor_is_named_with_the_tensor(written):
    shards = weight_map(written)
    crowded = max(set(shards.values()), key=list(shards.values()).count)  # a shard holding several tensors
    with safe_open(str(written / crowded), framework="pt") as handle:
        kept = {key: handle.get_tensor(key) for key in handle.keys()}
    dropped = sorted(kept)[-1]
    del kept[dropped]
    save_file(kept, str(written / crowded))
    message = f"{INDEX_NAME} puts weight {dropped} in {crowded}, but {written / crowded} does not contain it"
    with pytest.raises(KeyError, match=re.escape(message)):
        check(written)


def test_a_config_whose_hidden_size_disagrees_with_the_weights_names_tensor_file_and_shapes(written):
    raw = json.loads((written / "config.json").read_text())
    assert raw["d_model"] == 64
    (written / "config.json").write_text(json.dumps({**raw, "d_model": 32}))
    wte_file = weight_map(written)["model.transformer.wte.weight"]
    message = (f"{written}: weight model.transformer.wte.weight in {wte_file} has shape [600, 64], expected [600, 32] "
               "from the config")
    with pytest.raises(ValueError, match=re.escape(message)):
        check(written)


def test_a_config_or_index_that_does_not_parse_is_named(written):
    config = written / "config.json"
    config.write_text('{"model_type": "llada",')
    with pytest.raises(ValueError, match=f"^{re.escape(str(config))} is not valid JSON: Expecting"):
        check(written)
    config.write_text("[]")
    with pytest.raises(ValueError, match=f"^{re.escape(str(config))} holds a JSON list; expected an object$"):
        check(written)
    model.save(tiny_model(seed=0), written, max_shard_bytes=100_000)
    (written / INDEX_NAME).write_text("{")
    with pytest.raises(ValueError, match=f"^{re.escape(str(written / INDEX_NAME))} is not valid JSON"):
        check(written)


def test_a_single_file_checkpoint_is_listed_from_its_header(tmp_path):
    original = tiny_model(seed=0)
    path = model.save(original, tmp_path / "single", max_shard_bytes=None)
    checked = check(path)
    assert set(checked.files.values()) == {path / "model.safetensors"}
    assert {key: shape for key, (shape, _, _) in checked.headers.items()} == {
        key: tuple(value.shape) for key, value in original.network.state_dict().items()}
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[:100])
    with pytest.raises(ValueError, match=re.escape(f"{path / 'model.safetensors'} is truncated: its header needs")):
        check(path)
    with pytest.raises(ValueError, match="is truncated"):  # model.load runs the same check before reading a tensor
        model.load(path)
