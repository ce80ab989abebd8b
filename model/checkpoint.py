"""Loading and saving checkpoints in the published LLaDA / MMaDA directory layout.

A checkpoint directory holds `config.json` (upstream field names, `model_type` "llada" or
"mmada"), the weights as `model.safetensors.index.json` + shards or a single `model.safetensors`,
with the published key names (`model.transformer.*`, docs/models.md §1.2), and the tokenizer
files. `load` builds the network on the meta device and assigns the tensors shard by shard, so an
8B checkpoint needs its own size in memory, not twice that. Everything is checked before a tensor
is read, by `check` (which reads config.json, the index and each shard's safetensors header, never the
tensor data, so every job can run it before it starts anything: model/resolve.py): a missing file, key
or field, a truncated shard, an unexpected key, a wrong shape, an unknown model type or a config value
this backbone does not implement is an error that names the file and what is wrong.

Deviations from upstream, on purpose:
- A config.json that omits an architecture field (`rope`, `weight_tying`, ...) is read with the
  value of the published LLaDA-8B config (which is what we implement), not the upstream class
  default; unknown fields are ignored with a warning.
- A config.json without `bos_token_id` takes it from generation_config.json, else from the
  tokenizer's bos token, else leaves it None: never the LLaDA-8B id, which a smaller vocabulary lacks.
- MMaDA's config is [unverified]: the rows of `wte`/`ff_out` are taken from the weights when they
  equal `new_vocab_size` rather than `embedding_size`/`vocab_size`.
- `save` writes remote code of its own (`configuration_unigrpo.py`, `modeling_unigrpo.py`, model/hf_remote.py)
  and its `auto_map`, not upstream's (which fails on transformers 5.x): `AutoModel.from_pretrained(export,
  trust_remote_code=True)` builds our network (docs/models.md §1.5).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import sys
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from model.network import MODEL_TYPES, BackboneConfig, MaskedDiffusionLM

log = logging.getLogger("unigrpo.model")
CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"
INDEX_NAME = "model.safetensors.index.json"
SINGLE_FILE_NAME = "model.safetensors"
DEFAULT_MAX_SHARD_BYTES = 5_000_000_000  # as transformers' save_pretrained
ARCHITECTURES = {"llada": "LLaDAModelLM", "mmada": "MMadaModelLM"}
MMADA_FIELDS = ("new_vocab_size", "llm_vocab_size", "codebook_size", "num_vq_tokens", "num_new_special_tokens")
DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}
_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}

# Architecture fields and the values this backbone implements (those of LLaDA-8B's config.json).
IMPLEMENTED_VALUES: dict[str, tuple] = {
    "rope": (True,),
    "rope_full_precision": (True,),
    "layer_norm_type": ("rms",),
    "layer_norm_with_affine": (True,),
    "bias_for_layer_norm": (False, None),
    "activation_type": ("silu",),
    "block_type": ("llama",),
    "include_bias": (False,),
    "include_qkv_bias": (False,),
    "weight_tying": (False,),
    "scale_logits": (False,),
    "alibi": (False,),
    "attention_layer_norm": (False,),
    "clip_qkv": (None,),
    "input_emb_norm": (False,),
    "block_group_size": (1,),
    "attention_dropout": (0.0,),
    "residual_dropout": (0.0,),
    "embedding_dropout": (0.0,),
}
_REQUIRED_INTS = ("d_model", "n_heads", "n_layers", "vocab_size")
_OPTIONAL_FIELDS = (
    "n_kv_heads",
    "embedding_size",
    "max_sequence_length",
    "rope_theta",
    "rms_norm_eps",
    "mask_token_id",
    "eos_token_id",
    "pad_token_id",
)
# Fields read elsewhere or that do not change the computation.
_KNOWN_METADATA = {
    "model_type", "architectures", "auto_map", "torch_dtype", "dtype", "transformers_version", "use_cache",
    "mlp_hidden_size", "mlp_ratio", "init_device", "init_fn", "init_std", "init_cutoff_factor", "precision",
    "flash_attention", "alibi_bias_max", "attention_layer_norm_with_affine", "_name_or_path",
    "multi_query_attention",
    "tie_word_embeddings",
}  # fmt: skip


@dataclass(frozen=True)
class CheckedCheckpoint:
    """What `check` read from a checkpoint directory, all from config.json, the index and the headers."""

    config: BackboneConfig
    raw_config: dict  # config.json as parsed
    files: dict[str, Path]  # published key -> the safetensors file holding it
    headers: dict[str, tuple[tuple[int, ...], str, str]]  # key -> (shape, safetensors dtype, file name)


@dataclass
class LoadedModel:
    """A network with its tokenizer (None when loaded with tokenizer=False) and where it came from."""

    network: MaskedDiffusionLM
    tokenizer: object | None
    config: BackboneConfig
    path: Path | None = None


# ---------------------------------------------------------------------------------------------- config


def config_from_json(raw: dict, where: str = CONFIG_NAME) -> BackboneConfig:
    """BackboneConfig from the fields of an upstream config.json; `where` names the file in errors."""
    model_type = raw.get("model_type")
    if model_type is None:
        raise ValueError(f"{where} has no model_type; supported model types: {', '.join(MODEL_TYPES)}")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"{where}: model_type {model_type!r} is not supported; supported: {', '.join(MODEL_TYPES)}")
    known_architectures = set(ARCHITECTURES.values())
    for name in raw.get("architectures") or []:
        if name not in known_architectures:
            raise ValueError(
                f"{where}: architectures entry {name!r} is not supported; expected {sorted(known_architectures)}"
            )
    for field, allowed in IMPLEMENTED_VALUES.items():
        if field in raw and raw[field] not in allowed:
            raise ValueError(
                f"{where}: {field}={raw[field]!r} is not implemented; this backbone supports "
                f"{field} in {list(allowed)} (a LLaDA-8B-style bidirectional llama block)"
            )
    fields: dict = {"model_type": model_type}
    for name in _REQUIRED_INTS:
        if name not in raw:
            raise ValueError(f"{where} is missing the required field {name!r}")
        fields[name] = raw[name]
    if raw.get("mlp_hidden_size") is not None:
        fields["mlp_hidden_size"] = raw["mlp_hidden_size"]
    elif raw.get("mlp_ratio") is not None:  # upstream: hidden = mlp_ratio * d_model when not given
        fields["mlp_hidden_size"] = int(raw["mlp_ratio"] * raw["d_model"])
    else:
        raise ValueError(f"{where} is missing the required field 'mlp_hidden_size' (or 'mlp_ratio')")
    for name in _OPTIONAL_FIELDS:
        if raw.get(name) is not None:
            fields[name] = raw[name]
    fields["bos_token_id"] = raw.get("bos_token_id")  # None here: `check` looks further (bos_from_other_files)
    if raw.get("multi_query_attention"):  # upstream: one key/value head; n_kv_heads may only agree
        if raw.get("n_kv_heads") not in (None, 1):
            raise ValueError(
                f"{where}: multi_query_attention=true means one key/value head, but n_kv_heads={raw['n_kv_heads']}"
            )
        fields["n_kv_heads"] = 1
    for name in ("n_kv_heads", "embedding_size", "max_sequence_length", "mlp_hidden_size", *_REQUIRED_INTS):
        if name in fields and (not isinstance(fields[name], int) or isinstance(fields[name], bool) or fields[name] < 1):
            raise ValueError(f"{where}: {name}={fields[name]!r} must be a positive integer")
    if model_type == "mmada":
        fields["mmada"] = {name: raw[name] for name in MMADA_FIELDS if name in raw}
    unknown = sorted(set(raw) - set(IMPLEMENTED_VALUES) - set(fields) - _KNOWN_METADATA - set(MMADA_FIELDS))
    if unknown:
        warnings.warn(f"{where}: ignoring unknown config field(s) {unknown}", stacklevel=3)
    try:
        return BackboneConfig(**fields)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from error


def config_to_json(config: BackboneConfig, torch_dtype: torch.dtype) -> dict:
    """The upstream config.json of `config` (every architecture field written out)."""
    raw = {
        "architectures": [ARCHITECTURES[config.model_type]],
        "model_type": config.model_type,
        "torch_dtype": _DTYPE_NAMES[torch_dtype],
        "d_model": config.d_model,
        "n_heads": config.n_heads,
        "n_kv_heads": config.kv_heads,
        "n_layers": config.n_layers,
        "mlp_hidden_size": config.mlp_hidden_size,
        "vocab_size": config.vocab_size,
        "embedding_size": config.num_embeddings,
        "max_sequence_length": config.max_sequence_length,
        "rope_theta": config.rope_theta,
        "rms_norm_eps": config.rms_norm_eps,
        "mask_token_id": config.mask_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "bos_token_id": config.bos_token_id,
    }
    raw.update({field: allowed[0] for field, allowed in IMPLEMENTED_VALUES.items()})
    raw.update(
        {"multi_query_attention": None, "flash_attention": False, "init_std": 0.02, "mlp_ratio": 4, "use_cache": False}
    )
    if config.model_type == "mmada":
        raw.update(config.mmada)
    return raw


def expected_shapes(config: BackboneConfig) -> dict[str, tuple[int, ...]]:
    """Published key -> shape for `config` (computed on the meta device, free for any size)."""
    with torch.device("meta"):
        network = MaskedDiffusionLM(config)
    return {key: tuple(tensor.shape) for key, tensor in network.state_dict().items()}


def check_weights(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[tuple[int, ...], str]], where: str
) -> None:
    """Raise naming the missing keys, then the unexpected keys, then the first wrong shape.

    found: key -> (shape, the file it is in). `where` names the checkpoint in the messages.
    """
    missing = [key for key in expected if key not in found]
    if missing:
        raise KeyError(f"{where} is missing {len(missing)} weight(s): {_names(missing)}")
    unexpected = [key for key in found if key not in expected]
    if unexpected:
        raise KeyError(f"{where} has {len(unexpected)} unexpected weight(s): {_names(unexpected)}")
    for key, shape in expected.items():
        found_shape, file = found[key]
        if tuple(found_shape) != shape:
            raise ValueError(
                f"{where}: weight {key} in {file} has shape {list(found_shape)}, expected {list(shape)} "
                f"from the config"
            )


def _names(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def resolve_dtype(dtype, default: torch.dtype) -> torch.dtype:
    """None -> `default`; a torch dtype or one of DTYPES' names -> that dtype."""
    if dtype is None:
        return default
    if isinstance(dtype, torch.dtype) and dtype in _DTYPE_NAMES:
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype {dtype!r} is not supported; use None, torch.float32, torch.bfloat16 or one of {list(DTYPES)}")


# --------------------------------------------------------------------------------------------- weights


def read_json(file: Path) -> dict:
    """A JSON object from `file`; an error naming the file when it is not one."""
    try:
        raw = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{file} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{file} holds a JSON {type(raw).__name__}; expected an object")
    return raw


def weight_files(path: Path) -> dict[str, Path]:
    """Key -> file, through the index when there is one, else from the single model.safetensors."""
    index_path = path / INDEX_NAME
    if index_path.is_file():
        weight_map = read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index_path} has no weight_map")
        for shard in sorted(set(weight_map.values())):
            if not (path / shard).is_file():
                raise FileNotFoundError(f"shard {shard} referenced by {index_path} does not exist in {path}")
        return {key: path / shard for key, shard in weight_map.items()}
    single = path / SINGLE_FILE_NAME
    if single.is_file():
        return dict.fromkeys(read_header(single), single)
    others = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
    hint = f"; found {others}: convert them to safetensors" if others else ""
    raise FileNotFoundError(f"no weights in {path}: expected {INDEX_NAME} with its shards or {SINGLE_FILE_NAME}{hint}")


def read_header(file: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Tensor name -> (shape, safetensors dtype) from one safetensors file's header, the only part read.

    The format: an 8-byte little-endian header length, the header (JSON: name -> {dtype, shape,
    data_offsets [begin, end) into the data after the header}), the data. A file cut short (a copy or a
    download that stopped) is an error naming it: its header, or some tensor's bytes, would lie past its end.
    """
    size = file.stat().st_size
    with file.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{file} is truncated: {size} bytes, shorter than the 8-byte header length of a "
                             "safetensors file")
        (header_size,) = struct.unpack("<Q", prefix)
        if 8 + header_size > size:
            raise ValueError(f"{file} is truncated: its header needs bytes 8..{8 + header_size}, the file has {size}")
        text = handle.read(header_size)
    try:
        header = json.loads(text)  # JSONDecodeError, UnicodeDecodeError: ValueErrors
        if not isinstance(header, dict):
            raise ValueError(f"a JSON {type(header).__name__}")
    except ValueError as exc:
        raise ValueError(f"{file} is not a safetensors file: its header is not a JSON object ({exc})") from exc
    data_size = size - 8 - header_size
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            shape, dtype, (begin, end) = tuple(int(n) for n in entry["shape"]), str(entry["dtype"]), entry["data_offsets"]
        except (TypeError, KeyError, ValueError) as exc:
            raise ValueError(f"{file}: the header entry of {name} is not {{dtype, shape, data_offsets}}: "
                             f"{entry!r}") from exc
        if end > data_size:
            raise ValueError(f"{file} is truncated: tensor {name} needs data bytes {begin}..{end}, the file holds "
                             f"{data_size} after its header")
        tensors[name] = (shape, dtype)
    return tensors


def read_headers(files: dict[str, Path]) -> dict[str, tuple[tuple[int, ...], str, str]]:
    """Key -> (shape, safetensors dtype, file name), from the headers only (no tensor is read)."""
    found = {}
    for file in sorted(set(files.values())):
        stored = read_header(file)
        for key in (key for key, key_file in files.items() if key_file == file):
            if key not in stored:
                raise KeyError(f"{INDEX_NAME} puts weight {key} in {file.name}, but {file} does not contain it")
            found[key] = (*stored[key], file.name)
    return found


def check(path) -> CheckedCheckpoint:
    """Everything `load` checks before it reads a tensor, reading only config.json, the index and the
    safetensors headers (milliseconds for any size: docs/reliability.md §13; generation_config.json and the
    tokenizer too when config.json has no bos_token_id): config.json parses and is implemented, every shard
    the index names exists, is complete and holds its tensors, and the tensors' names and shapes are those
    the config implies. Errors name the file and what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    config_path = path / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{path} has no {CONFIG_NAME}; a checkpoint directory holds {CONFIG_NAME}, the weights "
            f"({INDEX_NAME} + shards or {SINGLE_FILE_NAME}) and the tokenizer files"
        )
    raw = read_json(config_path)
    config = config_from_json(raw, where=str(config_path))
    files = weight_files(path)
    found = read_headers(files)
    config = _resolve_embedding_rows(config, found)
    _check_token_ids(config, raw, str(config_path))
    if config.bos_token_id is None:
        config = replace(config, bos_token_id=bos_from_other_files(path, config.num_embeddings))
    check_weights(expected_shapes(config), {key: (shape, file) for key, (shape, _, file) in found.items()}, str(path))
    return CheckedCheckpoint(config, raw, files, found)


def load(path, dtype=None, *, tokenizer: bool = True, device="cpu") -> LoadedModel:
    """Load a published-layout checkpoint directory (`check`ed first).

    dtype: None (as stored: config.json's torch_dtype, else the weights' dtype), torch.float32,
    torch.bfloat16, or "fp32"/"bf16". tokenizer=False skips the tokenizer (LoadedModel.tokenizer is
    None). device: where the tensors are materialised (safetensors reads them straight there).
    """
    path = Path(path)
    checked = check(path)
    stored_dtype = checked.raw_config.get("torch_dtype") or checked.raw_config.get("dtype")
    default = DTYPES.get(stored_dtype) if isinstance(stored_dtype, str) else None
    if default is None:
        wte_dtype = checked.headers["model.transformer.wte.weight"][1]
        default = _SAFETENSORS_DTYPES.get(wte_dtype, torch.float32)
    target_dtype = resolve_dtype(dtype, default)

    shards, started = sorted(set(checked.files.values())), time.perf_counter()
    log.info("loading %s: %d weight file(s), %.2f GB, as %s", path, len(shards),
             sum(f.stat().st_size for f in shards) / 1e9, str(target_dtype).removeprefix("torch."))
    network = _assign_weights(checked.config, checked.files, target_dtype, device)
    log.info("loaded the weights of %s in %.1f s", path, time.perf_counter() - started)
    loaded_tokenizer = None
    if tokenizer:
        from model.tokenizer import load_tokenizer

        loaded_tokenizer = load_tokenizer(path)
    return LoadedModel(network=network, tokenizer=loaded_tokenizer, config=checked.config, path=path)


def _resolve_embedding_rows(config: BackboneConfig, found: dict) -> BackboneConfig:
    """MMaDA: the resized wte has `new_vocab_size` rows, whatever embedding_size says [unverified]."""
    new_vocab_size = config.mmada.get("new_vocab_size")
    wte = found.get("model.transformer.wte.weight")
    if config.model_type == "mmada" and new_vocab_size and wte and wte[0][0] == new_vocab_size:
        return replace(config, embedding_size=new_vocab_size)
    return config


def _check_token_ids(config: BackboneConfig, raw: dict, where: str) -> None:
    """The special ids of config.json (or the LLaDA defaults of the absent ones; never for bos) in the vocabulary."""
    for name in ("mask_token_id", "eos_token_id", "pad_token_id", "bos_token_id"):
        value = getattr(config, name)
        if value is not None:
            default = "" if raw.get(name) is not None else " (the LLaDA default: the field is absent)"
            _check_token_id(value, config.num_embeddings, f"{where}: {name}={value!r}{default}")


def _check_token_id(value, num_embeddings: int, what: str) -> int:
    """`value` if it is a row of the embedding; else an error that starts with `what` (the file and key)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < num_embeddings:
        raise ValueError(f"{what} is not a token id of the vocabulary: expected an integer in 0..{num_embeddings - 1}")
    return value


def bos_from_other_files(path: Path, num_embeddings: int) -> int | None:
    """bos_token_id for a config.json without one: generation_config.json's, else the tokenizer's bos token.

    Upstream checkpoints do not all write it into config.json, and the LLaDA-8B id (126080) is not a row of
    a smaller vocabulary, so it is never assumed. None when no file names one: model/ reads BOS from the
    tokenizer by its string (model/templates.py); docs/models.md §2.2.
    """
    generation = path / GENERATION_CONFIG_NAME
    if generation.is_file():
        value = read_json(generation).get("bos_token_id")
        if value is not None:
            return _check_token_id(value, num_embeddings, f"{generation}: bos_token_id={value!r}")
    from model.tokenizer import has_tokenizer, load_tokenizer

    if has_tokenizer(path):
        tokenizer = load_tokenizer(path)
        if tokenizer.bos_token_id is not None:
            what = f"the tokenizer in {path}: bos_token {tokenizer.bos_token!r} (id {tokenizer.bos_token_id})"
            return _check_token_id(tokenizer.bos_token_id, num_embeddings, what)
    return None


def _assign_weights(config: BackboneConfig, files: dict[str, Path], dtype: torch.dtype, device) -> MaskedDiffusionLM:
    """Build on meta, then assign each shard's tensors (peak memory: the model plus one tensor)."""
    from safetensors import safe_open
    from tqdm import tqdm

    with torch.device("meta"):
        network = MaskedDiffusionLM(config)
    shards = sorted(set(files.values()))  # a bar in a terminal (stderr) for a sharded checkpoint; the log says the rest
    for file in tqdm(shards, desc="weights", unit="file", file=sys.stderr, disable=None if len(shards) > 1 else True,
                     leave=False):
        with safe_open(str(file), framework="pt", device=str(device)) as handle:
            shard = {key: handle.get_tensor(key).to(dtype) for key, key_file in files.items() if key_file == file}
        network.load_state_dict(shard, strict=False, assign=True)
        del shard
    still_meta = [name for name, tensor in network.state_dict().items() if tensor.is_meta]
    if still_meta:  # unreachable after check_weights; kept so a bug cannot leave meta tensors behind
        raise RuntimeError(f"weights never assigned: {_names(still_meta)}")
    return network.eval()


# ---------------------------------------------------------------------------------------------- saving


def save(obj, path, *, max_shard_bytes: int | None = DEFAULT_MAX_SHARD_BYTES) -> Path:
    """Save a LoadedModel, a (network, tokenizer) pair or a bare network in the published layout.

    max_shard_bytes: shard size limit (shards + index); None writes a single model.safetensors.
    """
    if isinstance(obj, LoadedModel):
        network, tokenizer = obj.network, obj.tokenizer
    elif isinstance(obj, MaskedDiffusionLM):
        network, tokenizer = obj, None
    elif isinstance(obj, tuple | list) and len(obj) == 2 and isinstance(obj[0], MaskedDiffusionLM):
        network, tokenizer = obj
    else:
        raise TypeError(
            f"model.save takes a LoadedModel, a (MaskedDiffusionLM, tokenizer) pair or a MaskedDiffusionLM, "
            f"not {type(obj).__name__}"
        )
    return save_state_dict(network.state_dict(), network.config, tokenizer, path, max_shard_bytes=max_shard_bytes)


def save_state_dict(
    state_dict: dict[str, torch.Tensor],
    config: BackboneConfig,
    tokenizer,
    path,
    *,
    max_shard_bytes: int | None = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Write config.json, the weights, transformers' remote code (model/hf_remote.py) and the tokenizer files (if
    a tokenizer is given) into `path`.

    state_dict: published key -> tensor (e.g. gathered from ZeRO-3 shards), checked against the
    config first. The directory is written under a temporary name next to `path` and renamed into
    place; an existing directory at `path` is replaced.
    """
    from safetensors.torch import save_file

    from model.hf_remote import write_remote_code

    path = Path(path)
    state_dict = {key: tensor.detach() for key, tensor in state_dict.items()}
    found = {key: (tuple(tensor.shape), "the state dict") for key, tensor in state_dict.items()}
    check_weights(expected_shapes(config), found, "state dict to save")
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"cannot save a checkpoint to {path}: it is a file")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        torch_dtype = state_dict["model.transformer.wte.weight"].dtype
        raw = config_to_json(config, torch_dtype)
        raw["auto_map"] = write_remote_code(staging, config.model_type)  # transformers' AutoModel loads it
        (staging / CONFIG_NAME).write_text(json.dumps(raw, indent=2) + "\n")
        shards = _plan_shards(state_dict, max_shard_bytes)
        for file_name, keys in shards.items():
            tensors = {key: state_dict[key].to("cpu").contiguous() for key in keys}
            save_file(tensors, str(staging / file_name), metadata={"format": "pt"})
        if max_shard_bytes is not None:
            index = {
                "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state_dict.values())},
                "weight_map": {key: file_name for file_name, keys in shards.items() for key in keys},
            }
            (staging / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        if tokenizer is not None:
            from model.tokenizer import save_tokenizer

            save_tokenizer(tokenizer, staging)
        _move_into_place(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def _plan_shards(state_dict: dict[str, torch.Tensor], max_shard_bytes: int | None) -> dict[str, list[str]]:
    """File name -> keys, filled greedily in state-dict order (a tensor larger than the limit gets its own)."""
    if max_shard_bytes is None:
        return {SINGLE_FILE_NAME: list(state_dict)}
    groups: list[list[str]] = [[]]
    group_bytes = 0
    for key, tensor in state_dict.items():
        size = tensor.numel() * tensor.element_size()
        if groups[-1] and group_bytes + size > max_shard_bytes:
            groups.append([])
            group_bytes = 0
        groups[-1].append(key)
        group_bytes += size
    count = len(groups)
    return {f"model-{i + 1:05d}-of-{count:05d}.safetensors": keys for i, keys in enumerate(groups)}


def _move_into_place(staging: Path, path: Path) -> None:
    """Rename `staging` to `path`; an existing `path` is renamed aside first and removed after."""
    if not path.exists():
        os.rename(staging, path)
        return
    old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(path, old)
    os.rename(staging, path)
    shutil.rmtree(old, ignore_errors=True)
