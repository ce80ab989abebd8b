"""model/magvit.py: MAGVIT-v2 loading (every weight file name an upstream saver writes, safetensors and .bin),
encode / decode against a
functional re-implementation, the LFQ bit order, the full-size layout on the meta device, every error.

The published layout (key names, shapes) and the forward math are written here from
docs/models.md §4 with torch.nn.functional calls that read the state dict, independently of
model/magvit_net.py: attention is taming's bmm formulation (not SDPA), the upsample is
repeat_interleave (not F.interpolate), and the bit tables are built with Python integer loops.
"""

from __future__ import annotations

import json
import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import model
from model.magvit import (
    MagvitConfig,
    MagvitTokenizer,
    config_from_json,
    load_image_tokenizer,
    random_image_tokenizer,
    save_image_tokenizer,
)

torch.set_num_threads(1)

# Tiny but complete: 13 bits (the published quantiser), 3 levels (x4), per-level block counts and
# decoder widths that all differ, so a level read in the wrong order fails the shape check or the values.
TINY = {"ch": 8, "in_channels": 3, "out_channels": 3, "z_channels": 13,
        "encoder_ch_mult": [1, 2, 2], "encoder_num_res_blocks": [1, 2, 1],
        "decoder_ch_mult": [1, 2, 3], "decoder_num_res_blocks": [2, 1, 1], "num_groups": 4, "eps": 1e-6}
FULL = {"ch": 128, "in_channels": 3, "out_channels": 3, "z_channels": 13,
        "encoder_ch_mult": [1, 2, 2, 4, 4], "encoder_num_res_blocks": [4, 3, 4, 3, 4],
        "decoder_ch_mult": [1, 1, 2, 2, 4], "decoder_num_res_blocks": [4, 4, 3, 4, 3], "num_groups": 32, "eps": 1e-6}


def hand_vector(code: int, bits: int) -> list[float]:
    """Bit c of `code` is (code >> (bits-1-c)) & 1 (channel 0 the most significant), mapped to +-1."""
    return [1.0 if (code >> (bits - 1 - c)) & 1 else -1.0 for c in range(bits)]


def hand_code(vector: list[float]) -> int:
    return sum(2 ** (len(vector) - 1 - c) for c, value in enumerate(vector) if value > 0)


def published_shapes(f: dict) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the published MAGVIT-v2 layout (models.md §4) for config fields `f`."""
    shapes: dict[str, tuple[int, ...]] = {}
    ch, z = f["ch"], f["z_channels"]

    def conv(name, cin, cout, k):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (cout, cin, k, k), (cout,)

    def norm(name, c):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (c,), (c,)

    def res(p, cin, cout):
        norm(p + "norm1", cin), conv(p + "conv1", cin, cout, 3), norm(p + "norm2", cout), conv(p + "conv2", cout, cout, 3)
        if cin != cout:
            conv(p + "nin_shortcut", cin, cout, 1)

    def mid(p, c):
        res(p + "block_1.", c, c)
        norm(p + "attn_1.norm", c)
        for name in ("q", "k", "v", "proj_out"):
            conv(p + "attn_1." + name, c, c, 1)
        res(p + "block_2.", c, c)

    mults, levels = f["encoder_ch_mult"], len(f["encoder_ch_mult"])
    conv("encoder.conv_in", f["in_channels"], ch, 3)
    width = ch
    for level in range(levels):
        for b in range(f["encoder_num_res_blocks"][level]):
            res(f"encoder.down.{level}.block.{b}.", width, ch * mults[level])
            width = ch * mults[level]
        if level < levels - 1:
            conv(f"encoder.down.{level}.downsample.conv", width, width, 3)
    mid("encoder.mid.", width)
    norm("encoder.norm_out", width), conv("encoder.conv_out", width, z, 3), conv("encoder.quant_conv", z, z, 1)
    mults = f["decoder_ch_mult"]
    width = ch * mults[-1]
    conv("decoder.post_quant_conv", z, z, 1), conv("decoder.conv_in", z, width, 3)
    mid("decoder.mid.", width)
    for level in reversed(range(levels)):
        for b in range(f["decoder_num_res_blocks"][level]):
            res(f"decoder.up.{level}.block.{b}.", width, ch * mults[level])
            width = ch * mults[level]
        if level > 0:
            conv(f"decoder.up.{level}.upsample.conv", width, width, 3)
    norm("decoder.norm_out", width), conv("decoder.conv_out", width, f["out_channels"], 3)
    shapes["quantize.embedding"], shapes["quantize.power_vals"] = (2**z, z), (z,)
    return shapes


def random_state(f: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights N(0, 1/sqrt(fan_in)), biases N(0, 0.1), norms 1 + N(0, 0.2) / N(0, 0.2); exact bit tables."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in published_shapes(f).items():
        if key == "quantize.embedding":
            state[key] = torch.tensor([hand_vector(k, shape[1]) for k in range(shape[0])])
        elif key == "quantize.power_vals":
            state[key] = torch.tensor([2 ** (shape[0] - 1 - c) for c in range(shape[0])])
        elif len(shape) == 4:
            state[key] = torch.randn(shape, generator=generator) / math.prod(shape[1:]) ** 0.5
        elif "norm" in key and key.endswith(".weight"):
            state[key] = 1.0 + 0.2 * torch.randn(shape, generator=generator)
        else:
            state[key] = (0.2 if "norm" in key else 0.1) * torch.randn(shape, generator=generator)
    return state


def write_tokenizer(directory, fields: dict | None, state: dict, *, name: str = "model.safetensors"):
    """config.json (unless None) and the weights in file `name`: safetensors or, for a .bin, torch.save's pickle,
    with the "format": "pt" metadata the transformers / diffusers / Show-o savers put into a safetensors file."""
    directory.mkdir(parents=True, exist_ok=True)
    if fields is not None:
        (directory / "config.json").write_text(json.dumps(fields))
    if name.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, str(directory / name), metadata={"format": "pt"})
    else:
        torch.save(state, directory / name)
    return directory


# ----------------------------------------------------------------------- functional reference (spec §4)


def ref_norm(sd, p, x, f):
    return F.group_norm(x, f["num_groups"], sd[p + ".weight"], sd[p + ".bias"], f["eps"])


def ref_conv(sd, p, x, padding=0, stride=1):
    return F.conv2d(x, sd[p + ".weight"], sd[p + ".bias"], stride=stride, padding=padding)


def ref_res(sd, p, x, f):
    h = ref_conv(sd, p + "conv1", F.silu(ref_norm(sd, p + "norm1", x, f)), padding=1)
    h = ref_conv(sd, p + "conv2", F.silu(ref_norm(sd, p + "norm2", h, f)), padding=1)
    return (ref_conv(sd, p + "nin_shortcut", x) if p + "nin_shortcut.weight" in sd else x) + h


def ref_attn(sd, p, x, f):  # taming's AttnBlock
    b, c, hh, ww = x.shape
    h = ref_norm(sd, p + "norm", x, f)
    q, k, v = (ref_conv(sd, p + n, h).reshape(b, c, hh * ww) for n in ("q", "k", "v"))
    weights = torch.softmax(torch.bmm(q.permute(0, 2, 1), k) * c**-0.5, dim=2)  # [b, query, key]
    out = torch.bmm(v, weights.permute(0, 2, 1)).reshape(b, c, hh, ww)
    return x + ref_conv(sd, p + "proj_out", out)


def ref_mid(sd, p, x, f):
    return ref_res(sd, p + "block_2.", ref_attn(sd, p + "attn_1.", ref_res(sd, p + "block_1.", x, f), f), f)


def ref_encode(sd, f, pixels):
    """Latents [B, z, h, w] and codes [B, h*w] by the hand formula."""
    levels = len(f["encoder_ch_mult"])
    h = ref_conv(sd, "encoder.conv_in", pixels, padding=1)
    for level in range(levels):
        for b in range(f["encoder_num_res_blocks"][level]):
            h = ref_res(sd, f"encoder.down.{level}.block.{b}.", h, f)
        if level < levels - 1:
            h = ref_conv(sd, f"encoder.down.{level}.downsample.conv", F.pad(h, (0, 1, 0, 1)), stride=2)
    h = ref_mid(sd, "encoder.mid.", h, f)
    h = ref_conv(sd, "encoder.conv_out", F.silu(ref_norm(sd, "encoder.norm_out", h, f)), padding=1)
    z = ref_conv(sd, "encoder.quant_conv", h)
    codes = [[hand_code(z[i, :, r, c].tolist()) for r in range(z.shape[2]) for c in range(z.shape[3])]
             for i in range(z.shape[0])]
    return z, torch.tensor(codes)


def ref_decode(sd, f, codes, side):
    vectors = torch.tensor([[hand_vector(int(k), f["z_channels"]) for k in row] for row in codes])  # [B, N, z]
    h = vectors.reshape(len(codes), side, side, -1).permute(0, 3, 1, 2)
    h = ref_conv(sd, "decoder.conv_in", ref_conv(sd, "decoder.post_quant_conv", h), padding=1)
    h = ref_mid(sd, "decoder.mid.", h, f)
    for level in reversed(range(len(f["decoder_ch_mult"]))):
        for b in range(f["decoder_num_res_blocks"][level]):
            h = ref_res(sd, f"decoder.up.{level}.block.{b}.", h, f)
        if level > 0:
            h = ref_conv(sd, f"decoder.up.{level}.upsample.conv",
                         h.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3), padding=1)
    return ref_conv(sd, "decoder.conv_out", F.silu(ref_norm(sd, "decoder.norm_out", h, f)), padding=1)


@pytest.fixture(scope="module")
def tiny_state():
    return random_state(TINY)


# ----------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_load_encode_decode_match_the_reference(tmp_path, tiny_state, name):
    path = write_tokenizer(tmp_path / "tok", TINY, tiny_state, name=name)
    tokenizer = model.load_image_tokenizer(path)
    assert isinstance(tokenizer, MagvitTokenizer) and not tokenizer.training
    assert (tokenizer.num_codes, tokenizer.downsample) == (8192, 4)
    loaded = tokenizer.state_dict()
    assert set(loaded) == set(tiny_state)
    assert all(torch.equal(loaded[k].float(), tiny_state[k].float()) for k in tiny_state)

    pixels = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    codes = tokenizer.encode(pixels)
    assert codes.shape == (2, 16) and codes.dtype == torch.long
    z, expected_codes = ref_encode(tiny_state, TINY, pixels)
    assert z.abs().min() > 1e-4  # no sign too close to call between the two computations
    assert torch.equal(codes, expected_codes)
    assert len(set(codes.flatten().tolist())) > 4  # the test exercises many bit patterns

    known = torch.tensor([[0, 1, 4096, 8191, 5, 5120, 1234, 7000, 42, 8190, 2, 3, 4095, 4097, 100, 6000]] * 2)
    known[1] = known[1].flip(0)
    decoded = tokenizer.decode(known)
    assert decoded.shape == (2, 3, 16, 16)
    torch.testing.assert_close(decoded, ref_decode(tiny_state, TINY, known.tolist(), 4), atol=1e-5, rtol=1e-4)
    assert decoded.abs().max() > 1.0 or decoded.min() < -0.5  # not squashed by a tanh / clamp


@pytest.mark.parametrize("name", ["pytorch_model.safetensors", "pytorch_model.bin", "diffusion_pytorch_model.safetensors",
                                  "diffusion_pytorch_model.bin"])
def test_upstream_save_pretrained_layouts(tmp_path, tiny_state, name):
    """The directories upstream savers write: the ModelMixin vendored with Show-o / MMaDA's MAGVITv2 writes
    pytorch_model.safetensors (pytorch_model.bin without safe serialisation) and a config.json with
    `_class_name` and `_version`; diffusers' ModelMixin diffusion_pytorch_model.* and `_diffusers_version`."""
    bookkeeping = {"_class_name": "MAGVITv2", "_version": "0.0.1"} if name.startswith("pytorch_model") else {
        "_class_name": "MAGVITv2", "_diffusers_version": "0.30.0"}
    path = write_tokenizer(tmp_path / "magvitv2", {**bookkeeping, **TINY}, tiny_state, name=name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every field those savers write is known
        loaded = load_image_tokenizer(path).state_dict()
    assert set(loaded) == set(tiny_state) and all(torch.equal(loaded[k], tiny_state[k].float()) for k in tiny_state)


def test_which_weight_file_is_read(tmp_path, tiny_state):
    """A safetensors file is read before a .bin of other weights; two files of one format are refused by name."""
    other = random_state(TINY, seed=1)
    path = write_tokenizer(tmp_path / "both", TINY, tiny_state, name="pytorch_model.safetensors")
    torch.save(other, path / "pytorch_model.bin")
    loaded = load_image_tokenizer(path).state_dict()
    assert torch.equal(loaded["decoder.conv_out.weight"], tiny_state["decoder.conv_out.weight"])
    assert not torch.equal(loaded["decoder.conv_out.weight"], other["decoder.conv_out.weight"])
    save_file({k: v.contiguous() for k, v in other.items()}, str(path / "model.safetensors"))
    with pytest.raises(ValueError, match=re.escape(f"{path} holds 2 tokenizer weight files, ['model.safetensors', "
                                                   "'pytorch_model.safetensors']; keep the one")):
        load_image_tokenizer(path)
    pickles = write_tokenizer(tmp_path / "pickles", TINY, tiny_state, name="pytorch_model.bin")
    torch.save(other, pickles / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match=re.escape("['pytorch_model.bin', 'diffusion_pytorch_model.bin']")):
        load_image_tokenizer(pickles)


def test_lfq_bit_order_for_all_13_bit_codes(tiny_state, tmp_path):
    tokenizer = load_image_tokenizer(write_tokenizer(tmp_path / "tok", TINY, tiny_state))
    codes = torch.arange(8192)
    vectors = tokenizer.codes_to_vectors(codes)  # [8192, 13]
    assert torch.equal(vectors, tiny_state["quantize.embedding"])  # the hand-built table
    assert torch.equal(tokenizer.vectors_to_codes(vectors), codes)
    assert torch.equal(tokenizer.codes_to_bits(codes), (vectors > 0).long())
    assert vectors[0].tolist() == [-1.0] * 13
    assert vectors[1].tolist() == [-1.0] * 12 + [1.0]  # code 1: only the last channel set
    assert vectors[4096].tolist() == [1.0] + [-1.0] * 12  # 2^12: channel 0 is the most significant bit
    assert vectors[5].tolist() == [-1.0] * 10 + [1.0, -1.0, 1.0]  # 0b101
    assert vectors[5120].tolist() == [1.0, -1.0, 1.0] + [-1.0] * 10  # 0b1010000000000
    assert vectors[8191].tolist() == [1.0] * 13
    # a zero latent is bit 0 (z > 0 is the only +1); magnitudes do not matter
    assert tokenizer.vectors_to_codes(torch.tensor([[0.0] * 12 + [0.3], [-2.0] + [5.0] * 12])).tolist() == [1, 4095]
    assert torch.equal(tokenizer.quantize.embedding, tiny_state["quantize.embedding"])
    assert tokenizer.quantize.power_vals.tolist() == [4096, 2048, 1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1]


def test_full_size_layout_on_meta():
    """The published architecture: every key and shape, ~95M parameters, 512 px -> 32x32 = 1024 codes."""
    with torch.device("meta"):
        tokenizer = MagvitTokenizer(MagvitConfig())
    shapes = {k: tuple(v.shape) for k, v in tokenizer.state_dict().items()}
    assert shapes == published_shapes(FULL)
    assert tokenizer.config == config_from_json(FULL)
    parameters = sum(math.prod(s) for k, s in published_shapes(FULL).items() if not k.startswith("quantize."))
    assert sum(p.numel() for p in tokenizer.parameters()) == parameters
    assert 80e6 < parameters < 120e6  # conv weights 128..512 wide, ~35 res blocks per side
    assert shapes["encoder.conv_out.weight"] == (13, 512, 3, 3) and shapes["decoder.conv_out.weight"] == (3, 128, 3, 3)
    latents = tokenizer.encoder(torch.empty(1, 3, 512, 512, device="meta"))
    assert latents.shape == (1, 13, 32, 32)  # 1024 codes
    assert tokenizer.decoder(torch.empty(1, 13, 32, 32, device="meta")).shape == (1, 3, 512, 512)
    assert (tokenizer.num_codes, tokenizer.downsample) == (8192, 16)


def test_save_load_round_trip_and_random_twins(tmp_path):
    config = MagvitConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in TINY.items()})
    state_before = torch.random.get_rng_state()
    first = random_image_tokenizer(config, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state_before)  # the global RNG is untouched
    again, other = random_image_tokenizer(config, seed=3), random_image_tokenizer(config, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    assert not torch.equal(first.decoder.conv_out.weight, other.decoder.conv_out.weight)
    path = save_image_tokenizer(first, tmp_path / "saved")
    raw = json.loads((path / "config.json").read_text())
    assert raw == {"model_type": "magvitv2", **TINY}
    loaded = load_image_tokenizer(path)
    assert all(torch.equal(first.state_dict()[k], v) for k, v in loaded.state_dict().items())
    codes = torch.randint(0, 8192, (1, 16), generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded.decode(codes), first.decode(codes))
    half = load_image_tokenizer(path, dtype="bf16")
    assert half.decoder.conv_out.weight.dtype == torch.bfloat16 and half.decode(codes).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        load_image_tokenizer(path, dtype="int8")
    with pytest.raises(TypeError, match="MagvitTokenizer"):
        save_image_tokenizer(torch.nn.Linear(2, 2), tmp_path / "x")
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError, match="is a file"):
        save_image_tokenizer(first, tmp_path / "file")


def test_decode_with_an_explicit_grid(tmp_path, tiny_state):
    tokenizer = load_image_tokenizer(write_tokenizer(tmp_path / "tok", TINY, tiny_state))
    codes = torch.arange(0, 8192, 512).reshape(1, 16)
    assert tokenizer.decode(codes, grid=(2, 8)).shape == (1, 3, 8, 32)
    torch.testing.assert_close(tokenizer.decode(codes, grid=(4, 4)), tokenizer.decode(codes))


def test_buffers_are_optional_but_checked(tmp_path, tiny_state):
    learned = {k: v for k, v in tiny_state.items() if not k.startswith("quantize.")}
    tokenizer = load_image_tokenizer(write_tokenizer(tmp_path / "a", TINY, learned))
    assert torch.equal(tokenizer.quantize.embedding, tiny_state["quantize.embedding"])
    reversed_bits = dict(tiny_state, **{"quantize.embedding": tiny_state["quantize.embedding"].flip(1)})
    with pytest.raises(ValueError, match=r"quantize.embedding\[1\].*bit order"):
        load_image_tokenizer(write_tokenizer(tmp_path / "b", TINY, reversed_bits))
    lsb_first = dict(tiny_state, **{"quantize.power_vals": tiny_state["quantize.power_vals"].flip(0)})
    with pytest.raises(ValueError, match=r"quantize.power_vals\[0\]"):
        load_image_tokenizer(write_tokenizer(tmp_path / "c", TINY, lsb_first))


def test_config_mapping(recwarn):
    base = dict(TINY)
    assert config_from_json({**base, "out_ch": 3, "codebook_dim": 13, "codebook_size": 8192, "num_codebook_entry": -1,
                             "num_resolutions": 3, "double_z": False, "attn_resolutions": [], "dropout": 0.1,
                             "_class_name": "MAGVITv2", "_diffusers_version": "0.30.0"}) == config_from_json(base)
    assert config_from_json({k: v for k, v in base.items() if k != "out_channels"} | {"out_ch": 1}).out_channels == 1
    assert not recwarn.list
    with pytest.warns(UserWarning, match=r"unknown config field\(s\) \['colour'\]"):
        config_from_json({**base, "colour": 1})
    assert config_from_json({}) == MagvitConfig()


@pytest.mark.parametrize("fields, match", [
    ({"out_ch": 4}, "out_ch=4 contradicts out_channels=3"),
    ({"codebook_dim": 12}, "codebook_dim=12 contradicts z_channels=13"),
    ({"codebook_size": 4096}, "codebook_size=4096 contradicts z_channels=13"),
    ({"num_codebook_entry": 100}, "num_codebook_entry=100 contradicts"),
    ({"num_resolutions": 5}, "num_resolutions=5 contradicts encoder_ch_mult"),
    ({"ch_mult": [1, 2]}, "'ch_mult' is a taming-VQGAN field"),
    ({"num_res_blocks": 2}, "'num_res_blocks' is a taming-VQGAN field"),
    ({"attn_resolutions": [4]}, r"attn_resolutions=\[4\] is not implemented"),
    ({"double_z": True}, "double_z=True is not implemented"),
    ({"model_type": "mmada"}, "model_type 'mmada' is not a MAGVIT-v2 tokenizer"),
    ({"_class_name": "VQModel"}, "_class_name 'VQModel' is not supported"),
    ({"ch": 0}, r"MagvitConfig.ch=0 must be a positive integer"),
    ({"z_channels": "13"}, r"MagvitConfig.z_channels='13' must be a positive integer"),
    ({"z_channels": 63}, "at most 62 bits"),
    ({"eps": 0}, "eps=0 must be a positive number"),
    ({"encoder_ch_mult": [1, 0, 2]}, r"encoder_ch_mult=\[1, 0, 2\] must be a non-empty list"),
    ({"decoder_num_res_blocks": [1, 1]}, "decoder_ch_mult has 3 levels but decoder_num_res_blocks has 2"),
    ({"decoder_ch_mult": [1, 2], "decoder_num_res_blocks": [1, 1]}, "encoder has 3 levels, decoder 2"),
    ({"num_groups": 3}, "num_groups=3 does not divide the channel width 8"),
])
def test_bad_config_values(fields, match):
    with pytest.raises(ValueError, match=match):
        config_from_json({**TINY, **fields}, "cfg.json")
    with pytest.raises(ValueError, match="cfg.json: expected a JSON object"):
        config_from_json([1], "cfg.json")


def test_loading_errors(tmp_path, tiny_state):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_tokenizer(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("")
    with pytest.raises(FileNotFoundError, match=r"no tokenizer weights .* found \['notes.txt'\]"):
        load_image_tokenizer(tmp_path / "empty")
    bad_json = write_tokenizer(tmp_path / "j", TINY, tiny_state)
    (bad_json / "config.json").write_text("{oops")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        load_image_tokenizer(bad_json)
    missing = {k: v for k, v in tiny_state.items() if k != "decoder.up.2.block.0.conv1.weight"}
    with pytest.raises(KeyError, match=r"missing 1 weight\(s\).*decoder.up.2.block.0.conv1.weight"):
        load_image_tokenizer(write_tokenizer(tmp_path / "m", TINY, missing))
    extra = {**tiny_state, "discriminator.conv.weight": torch.zeros(1), "loss.logvar": torch.zeros(1)}
    with pytest.raises(KeyError, match=r"2 unexpected key\(s\): discriminator.conv.weight, loss.logvar.*training-only"):
        load_image_tokenizer(write_tokenizer(tmp_path / "u", TINY, extra))
    wrong = {**tiny_state, "encoder.mid.attn_1.q.weight": torch.zeros(16, 16, 3, 3)}
    with pytest.raises(ValueError, match=r"encoder.mid.attn_1.q.weight has shape \[16, 16, 3, 3\], expected \[16, 16, 1, 1\]"):
        load_image_tokenizer(write_tokenizer(tmp_path / "w", TINY, wrong, name="pytorch_model.bin"))
    integer = {**tiny_state, "encoder.conv_in.bias": torch.zeros(8, dtype=torch.long)}
    with pytest.raises(ValueError, match="encoder.conv_in.bias has dtype torch.int64"):
        load_image_tokenizer(write_tokenizer(tmp_path / "i", TINY, integer))
    # no config.json: the published full-size architecture is assumed, and tiny weights do not fit it
    with pytest.raises(KeyError, match=r"missing \d+ weight\(s\).*encoder.down.0.block.1"):
        load_image_tokenizer(write_tokenizer(tmp_path / "n", None, tiny_state))
    nested = tmp_path / "nested"
    nested.mkdir()
    torch.save({"state_dict": {"a": torch.zeros(1)}, "epoch": 3}, nested / "pytorch_model.bin")
    with pytest.raises(ValueError, match="entry 'state_dict' is a dict, not a tensor"):
        load_image_tokenizer(nested)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="model.safetensors: cannot be read as a state dict"):
        load_image_tokenizer(corrupt)
    listed = tmp_path / "listed"
    listed.mkdir()
    torch.save([torch.zeros(1)], listed / "pytorch_model.bin")
    with pytest.raises(ValueError, match="holds a list, expected a dict"):
        load_image_tokenizer(listed)


def test_encode_decode_errors(tmp_path, tiny_state):
    tokenizer = load_image_tokenizer(write_tokenizer(tmp_path / "tok", TINY, tiny_state))
    good = torch.zeros(1, 3, 16, 16)
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 8192\) \(13 bits\); got values in \[0, 8192\]"):
        tokenizer.decode(torch.tensor([[0] * 15 + [8192]]))
    with pytest.raises(ValueError, match=r"got values in \[-1, 0\]"):
        tokenizer.decode(torch.tensor([[-1] + [0] * 15]))
    with pytest.raises(TypeError, match="integer tensor, got torch.float32"):
        tokenizer.decode(torch.zeros(1, 16))
    with pytest.raises(ValueError, match=r"\[batch, tokens\] tensor, got \(16,\)"):
        tokenizer.decode(torch.zeros(16, dtype=torch.long))
    with pytest.raises(ValueError, match="12 codes per image is not a square number; pass grid"):
        tokenizer.decode(torch.zeros(1, 12, dtype=torch.long))
    with pytest.raises(ValueError, match=r"grid=\(3, 5\) must be two positive integers"):
        tokenizer.decode(torch.zeros(1, 16, dtype=torch.long), grid=(3, 5))
    with pytest.raises(ValueError, match=r"last dimension \(2, 12\) must be z_channels=13"):
        tokenizer.vectors_to_codes(torch.zeros(2, 12))
    with pytest.raises(ValueError, match=r"pixels lie in \[-1, 1.5\], expected \[-1, 1\]"):
        tokenizer.encode(torch.cat([good[:, :, :8] - 1, good[:, :, 8:] + 1.5], dim=2))
    with pytest.raises(ValueError, match="NaN or infinite"):
        tokenizer.encode(torch.full((1, 3, 16, 16), float("nan")))
    for shape in ((3, 16, 16), (1, 4, 16, 16), (1, 3, 18, 16), (1, 3, 16, 6)):
        with pytest.raises(ValueError, match=rf"pixels have shape \[{', '.join(map(str, shape))}\]; expected \[B, 3, H, W\]"):
            tokenizer.encode(torch.zeros(shape))
    with pytest.raises(TypeError, match="float tensor"):
        tokenizer.encode(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    assert tokenizer.encode(good + 1.0005).shape == (1, 16)  # within the rounding tolerance


def test_no_warnings_on_a_clean_load(tmp_path, tiny_state):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image_tokenizer(write_tokenizer(tmp_path / "tok", TINY, tiny_state))
