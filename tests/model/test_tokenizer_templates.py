"""The tiny tokenizer (checked in, rebuilt reproducibly) and the chat templates of models.md §2."""

from __future__ import annotations

import json
import shutil

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from model import templates
from model.assets import build_tiny_tokenizer
from model.resolve import REPO
from model.templates import SpecialTokens, chat_prompt_ids, chat_prompt_text, special_ids
from model.tokenizer import TINY_TOKENIZER_DIR, load_tiny_tokenizer, load_tokenizer, save_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tiny_tokenizer()


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


ROUND_TRIP_TEXTS = [
    "What is (37 + 485) * 12 - 9?",
    "<think>Step 1: 37 + 485 = 522. Step 2: 522 * 12 = 6264.</think> The answer is \\boxed{6255}.",
    "$$\\frac{1}{2} + \\sqrt{16} = 4.5$$ and x^2 - 3x + 2 = 0",
    "Émile a mangé 3 crêpes 🥞 — naïve café, ünïcödé, 数学.",
    "  leading spaces\n\n\ttabs and\r\nwindows line ends  ",
    "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|mdm_mask|><|mdm_mask|>",
    "",
]


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_round_trip(tokenizer, text):
    assert tokenizer.decode(encode(tokenizer, text)) == text


def test_size_and_no_bos_added(tokenizer):
    assert len(tokenizer) == 600
    assert encode(tokenizer, "hello") == tokenizer("hello")["input_ids"]  # add_bos_token false
    assert tokenizer.bos_token_id not in tokenizer("hello")["input_ids"]


def test_special_ids(tokenizer):
    ids = special_ids(tokenizer)
    strings = {
        "bos": "<|startoftext|>", "eos": "<|endoftext|>", "pad": "<|endoftext|>", "mask": "<|mdm_mask|>",
        "start_header": "<|start_header_id|>", "end_header": "<|end_header_id|>", "eot": "<|eot_id|>",
        "think_open": "<think>", "think_close": "</think>", "soi": "<|soi|>", "eoi": "<|eoi|>", "t2i": "<|t2i|>",
        "mmu": "<|mmu|>", "ipad": "[iPAD]", "r2i": "<|r2i|>",
    }  # fmt: skip
    for name, text in strings.items():
        token_id = getattr(ids, name)
        assert tokenizer.convert_ids_to_tokens(token_id) == text, name
        assert encode(tokenizer, text) == [token_id], name  # one token, also inside text
    assert len({getattr(ids, name) for name in strings}) == 14  # all distinct but pad = eos
    assert (ids.bos, ids.eos, ids.pad) == (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert ids.mask == tokenizer.mask_token_id
    assert min(getattr(ids, name) for name in strings) == 586  # added after the 586 BPE tokens, as upstream


def test_digits_are_split_individually(tokenizer):
    ids = encode(tokenizer, "1234567890")
    assert [tokenizer.decode([i]) for i in ids] == list("1234567890")
    pieces = [tokenizer.decode([i]) for i in encode(tokenizer, "x=37+485, so 522 and -60.")]
    assert [piece for piece in pieces if any(c.isdigit() for c in piece)] == list("37485522") + ["6", "0"]


def test_think_tags_survive_skipping_special_tokens(tokenizer):
    text = "<|startoftext|><think>3 + 4 = 7</think> \\boxed{7}<|eot_id|><|endoftext|>"
    assert tokenizer.decode(encode(tokenizer, text), skip_special_tokens=True) == "<think>3 + 4 = 7</think> \\boxed{7}"


def test_chat_prompt_text_is_the_llada_template():
    assert chat_prompt_text("What is 2 + 3?", thinking=False) == (
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2 + 3?"
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert chat_prompt_text("What is 2 + 3?", thinking=True) == (
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\n"
        + templates.THINKING_INSTRUCTION
        + "\nWhat is 2 + 3?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert "<think> </think>" in templates.THINKING_INSTRUCTION and "\\boxed{}" in templates.THINKING_INSTRUCTION


@pytest.mark.parametrize("thinking", [False, True])
def test_chat_prompt_ids_exact_sequence(tokenizer, thinking):
    ids = special_ids(tokenizer)
    question = "What is 12 * (3 + 4)?"
    user = (templates.THINKING_INSTRUCTION + "\n" + question) if thinking else question
    # built by hand: special tokens are single ids; the text between them is BPE-encoded piece by piece
    expected = (
        [ids.bos, ids.start_header]
        + encode(tokenizer, "user")
        + [ids.end_header]
        + encode(tokenizer, "\n\n" + user)
        + [ids.eot, ids.start_header]
        + encode(tokenizer, "assistant")
        + [ids.end_header]
        + encode(tokenizer, "\n\n")
    )
    prompt = chat_prompt_ids(tokenizer, question, thinking=thinking)
    assert prompt == expected
    assert prompt[:2] == [ids.bos, ids.start_header] and prompt[-2] == ids.end_header
    assert tokenizer.decode(prompt) == chat_prompt_text(question, thinking=thinking)
    digits = [tokenizer.decode([i]) for i in prompt if tokenizer.decode([i]).strip().isdigit()]
    assert digits == ["1", "2", "3", "4"]


# A checkpoint's own template, unlike LLaDA's (one "\n" after the headers, as MMaDA's demo scripts), so a prompt
# shows which of the two built it.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n{{ m['content'] }}"
    "<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n{% endif %}"
)


@pytest.fixture
def templated(tmp_path):
    """The tiny tokenizer with CHAT_TEMPLATE in its tokenizer_config.json, where transformers 4.x writes it."""
    directory = tmp_path / "templated"
    shutil.copytree(TINY_TOKENIZER_DIR, directory)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    (directory / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": CHAT_TEMPLATE}))
    return load_tokenizer(directory)


@pytest.mark.parametrize("thinking", [False, True])
def test_chat_prompt_ids_use_the_checkpoint_template(tokenizer, templated, thinking):
    question = "What is 12 * (3 + 4)?"
    user = (templates.THINKING_INSTRUCTION + "\n" + question) if thinking else question
    prompt = chat_prompt_ids(templated, question, thinking=thinking)
    turn = [{"role": "user", "content": user}]
    assert prompt == templated.apply_chat_template(turn, add_generation_prompt=True, tokenize=True, return_dict=False)
    rendered = ("<|startoftext|><|start_header_id|>user<|end_header_id|>\n" + user
                + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n")  # CHAT_TEMPLATE by hand
    assert prompt == encode(tokenizer, rendered)
    assert prompt != chat_prompt_ids(tokenizer, question, thinking=thinking)  # the fallback is not what ran


def test_shipped_tokenizers_have_no_template_so_prompts_stay_llada():
    """The tiny tokenizer and the shipped policies' take the LLaDA template (the demo's numbers depend on it)."""
    for directory in (TINY_TOKENIZER_DIR, REPO / "model/assets/demo_policy", REPO / "model/assets/sign_slip_policy"):
        assert load_tokenizer(directory).chat_template is None, directory


def test_special_ids_names_a_missing_token():
    from transformers import PreTrainedTokenizerFast

    words = ["<|startoftext|>", "<|endoftext|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "a"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="a"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    partial = PreTrainedTokenizerFast(tokenizer_object=backend)
    with pytest.raises(ValueError, match=r"lacks the special token\(s\) \['<\|mdm_mask\|>'\]"):
        special_ids(partial)
    backend.add_tokens(["<|mdm_mask|>"])
    ids = special_ids(PreTrainedTokenizerFast(tokenizer_object=backend))
    assert ids == SpecialTokens(bos=0, eos=1, pad=1, mask=6, start_header=2, end_header=3, eot=4)  # no optional ones


def test_build_script_reproduces_the_checked_in_files(tmp_path):
    build_tiny_tokenizer.build(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / name).read_text() == (TINY_TOKENIZER_DIR / name).read_text(), (
            f"{name} differs from the checked-in one: rerun python -m model.assets.build_tiny_tokenizer"
        )


def test_save_tokenizer_writes_files_that_load_back_the_same(tokenizer, tmp_path):
    save_tokenizer(tokenizer, tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert not {"backend", "is_local", "local_files_only"} & set(config)
    assert json.loads((tmp_path / "special_tokens_map.json").read_text())["eos_token"] == "<|endoftext|>"
    reloaded = load_tokenizer(tmp_path)
    for text in ROUND_TRIP_TEXTS:
        assert encode(reloaded, text) == encode(tokenizer, text)
    assert special_ids(reloaded) == special_ids(tokenizer)


@pytest.mark.parametrize("form", ["single", "named"])
def test_save_tokenizer_writes_the_chat_template_where_4x_reads_it(templated, tmp_path, form):
    """tokenizer_config.json carries it (transformers 5 writes chat_template.jinja files only): a string, or
    4.x's list of {name, template} for named templates; it loads back from tokenizer_config.json alone."""
    templated.chat_template = CHAT_TEMPLATE if form == "single" else {"default": CHAT_TEMPLATE, "short": "{{ 1 }}"}
    save_tokenizer(templated, tmp_path / "saved")
    written = json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text())["chat_template"]
    assert written == (CHAT_TEMPLATE if form == "single" else
                       [{"name": "default", "template": CHAT_TEMPLATE}, {"name": "short", "template": "{{ 1 }}"}])
    (tmp_path / "saved" / "chat_template.jinja").unlink(missing_ok=True)  # the files 4.x does not read
    shutil.rmtree(tmp_path / "saved" / "additional_chat_templates", ignore_errors=True)
    assert load_tokenizer(tmp_path / "saved").chat_template == templated.chat_template


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"tokenizer directory {tmp_path / 'nope'} does not exist"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="missing tokenizer_config.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ValueError, match=f"could not load the tokenizer in {tmp_path}"):
        load_tokenizer(tmp_path)


CHAT = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "5"}, {"role": "user", "content": "And 12 * 7?"}]


@pytest.mark.parametrize("thinking", [False, True])
def test_chat_messages_take_the_llada_template_with_their_roles(tokenizer, thinking):
    from model.templates import ChatPrompt

    prompt = ChatPrompt(CHAT)
    first = (templates.THINKING_INSTRUCTION + "\n" + "What is 2 + 3?") if thinking else "What is 2 + 3?"
    assert chat_prompt_text(prompt, thinking=thinking) == (  # the instruction goes to the first user message only
        "<|startoftext|><|start_header_id|>system<|end_header_id|>\n\nAnswer briefly.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n" + first + "<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n5<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nAnd 12 * 7?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = chat_prompt_ids(tokenizer, prompt, thinking=thinking)
    assert ids == encode(tokenizer, chat_prompt_text(prompt, thinking=thinking))
    assert ids.count(special_ids(tokenizer).start_header) == 5 and ids[0] == special_ids(tokenizer).bos
    # one user message is exactly the text prompt's path (the demo's prompts do not move)
    single = ChatPrompt([{"role": "user", "content": "What is 2 + 3?"}])
    assert chat_prompt_ids(tokenizer, single, thinking=thinking) == chat_prompt_ids(tokenizer, "What is 2 + 3?",
                                                                                     thinking=thinking)
    assert prompt == "And 12 * 7?"  # as text (rewards, logs): the last user message


@pytest.mark.parametrize("thinking", [False, True])
def test_chat_messages_use_the_checkpoint_template(templated, thinking):
    from model.templates import ChatPrompt

    messages = [dict(m) for m in CHAT]
    if thinking:
        messages[1]["content"] = templates.THINKING_INSTRUCTION + "\n" + messages[1]["content"]
    prompt = chat_prompt_ids(templated, ChatPrompt(CHAT), thinking=thinking)
    assert prompt == templated.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                   return_dict=False)
    rendered = "<|startoftext|>" + "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n{m['content']}<|eot_id|>"
                                           for m in messages) + "<|start_header_id|>assistant<|end_header_id|>\n"
    assert templated.decode(prompt) == rendered  # CHAT_TEMPLATE by hand


def test_a_chat_prompt_pickles_with_its_messages():
    import pickle

    from model.templates import ChatPrompt

    copy = pickle.loads(pickle.dumps(ChatPrompt(CHAT)))  # as requests travel to rollout workers
    assert type(copy) is ChatPrompt and list(copy.messages) == CHAT and copy == "And 12 * 7?"
    assert json.dumps({"prompt": copy}) == '{"prompt": "And 12 * 7?"}'
