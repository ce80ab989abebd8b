"""Loading tokenizers from a checkpoint directory, offline, through `transformers`.

Only the tokenizer API of transformers is used (it must work with 4.x and 5.x): the files are read
with the generic `PreTrainedTokenizerFast`, which takes tokenizer.json as it is, reads no model
config.json and runs no remote code (AutoTokenizer would read config.json and warn about the
unknown `llada` model type). The tiny twin of
the LLaDA tokenizer is checked in at `model/assets/tiny_tokenizer/` and rebuilt by
`python -m model.assets.build_tiny_tokenizer`.

Saving goes through `save_pretrained` and then rewrites tokenizer_config.json in the 4.x form:
transformers 5 writes its own class name (`TokenizersBackend`) and key names
(`extra_special_tokens`) that 4.x cannot read, and a checkpoint we train must load back into the
upstream code, which runs on 4.x. The class is always written as `PreTrainedTokenizerFast`, so both
versions take `tokenizer.json` as the single source of truth.
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_TOKENIZER_DIR = Path(__file__).resolve().parent / "assets" / "tiny_tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")  # a fast tokenizer needs these


def has_tokenizer(path: str | Path) -> bool:
    """True if `path` holds the files of a fast tokenizer."""
    return all((Path(path) / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(path: str | Path):
    """The fast tokenizer saved in directory `path` (local files only, never downloads)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory {path} does not exist")
    missing = [name for name in TOKENIZER_FILES if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"no tokenizer in {path}: missing {', '.join(missing)} (a fast tokenizer needs "
            f"{', '.join(TOKENIZER_FILES)}); pass tokenizer=False to model.load to load the weights only"
        )
    from transformers import PreTrainedTokenizerFast

    try:  # the generic fast class reads tokenizer.json as is (no model config, no remote code)
        return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
    except Exception as error:  # re-raised with the directory named
        raise ValueError(f"could not load the tokenizer in {path}: {error}") from error


def load_tiny_tokenizer():
    """The tiny byte-level BPE twin of the LLaDA tokenizer (~600 tokens, upstream special strings)."""
    return load_tokenizer(TINY_TOKENIZER_DIR)


_V5_ONLY_KEYS = ("backend", "is_local", "local_files_only")


def save_tokenizer(tokenizer, directory: str | Path) -> None:
    """Write the tokenizer files into `directory` in a form transformers 4.x and 5.x both load."""
    directory = Path(directory)
    tokenizer.save_pretrained(str(directory))
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    for key in _V5_ONLY_KEYS:
        config.pop(key, None)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = config.pop("extra_special_tokens", None)
    if isinstance(extra, list):  # transformers 5's name for additional_special_tokens
        config.setdefault("additional_special_tokens", extra)
    elif extra:  # 4.x's dict of named model-specific tokens
        config["extra_special_tokens"] = extra
    template = tokenizer.chat_template  # 5.x writes it to chat_template.jinja only; 4.x reads it from here
    if isinstance(template, dict):  # named templates: 4.x's list form
        config["chat_template"] = [{"name": name, "template": text} for name, text in template.items()]
    elif template is not None:
        config["chat_template"] = template
    config.setdefault(
        "added_tokens_decoder",
        {
            str(token_id): {
                "content": token.content,
                "lstrip": token.lstrip,
                "normalized": token.normalized,
                "rstrip": token.rstrip,
                "single_word": token.single_word,
                "special": token.special,
            }
            for token_id, token in sorted(tokenizer.added_tokens_decoder.items())
        },
    )
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    special_map_path = directory / "special_tokens_map.json"
    if not special_map_path.exists():
        names = ("bos_token", "eos_token", "unk_token", "pad_token", "mask_token", "additional_special_tokens")
        special_map = {name: config[name] for name in names if config.get(name) is not None}
        special_map_path.write_text(json.dumps(special_map, indent=2, ensure_ascii=False) + "\n")
