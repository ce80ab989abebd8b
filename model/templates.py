"""Special tokens and prompt templates of LLaDA / MMaDA (docs/models.md §2).

The token strings are the upstream ones, so the same code works on the real 126k tokenizer and on
the tiny checked-in twin. Ids are always looked up in the tokenizer at run time, never hard-coded.

A prompt uses the checkpoint's own chat template when its tokenizer has one (`chat_template`, read from
tokenizer_config.json or chat_template.jinja), else this one, LLaDA-8B-Instruct's (the tiny and shipped
tokenizers have none):

    <|startoftext|><|start_header_id|>user<|end_header_id|>\\n\\n{text}<|eot_id|>
    <|start_header_id|>assistant<|end_header_id|>\\n\\n

(without the line break after `<|eot_id|>`). A prompt given as chat messages (`ChatPrompt`: system, user and
assistant turns, the last from the user) gets one `<|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>`
per message after the BOS, then the assistant's opening; a text prompt is the one user message. The thinking
instruction goes in front of the first user message. The prompt string is tokenised as a whole, as
upstream's `apply_chat_template(..., tokenize=True)` does; the special tokens are added tokens, so
they are matched before the byte-level BPE runs on the text between them.

Deviations: MMaDA's demo scripts use a single "\\n" after the headers; the fallback uses LLaDA's "\\n\\n"
for both model types. The thinking instruction is our own wording of the MMaDA/R1-style instruction
("reason inside <think> </think>, then answer"), with the answer asked for in \\boxed{} so that
the math reward can read it.
"""

from __future__ import annotations

from dataclasses import dataclass

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"  # also the pad token
MASK_TOKEN = "<|mdm_mask|>"
START_HEADER_TOKEN = "<|start_header_id|>"
END_HEADER_TOKEN = "<|end_header_id|>"
EOT_TOKEN = "<|eot_id|>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
# MMaDA task tokens (reserved ids of the LLaDA tokenizer).
SOI_TOKEN = "<|soi|>"  # start of image
EOI_TOKEN = "<|eoi|>"  # end of image
T2I_TOKEN = "<|t2i|>"  # text-to-image task
MMU_TOKEN = "<|mmu|>"  # multimodal understanding task
IPAD_TOKEN = "[iPAD]"  # left pad of the text-to-image prompt
R2I_TOKEN = "<|r2i|>"  # reasoning-to-image task

BOXED_PREFIX = "\\boxed{"  # the final answer is written as \boxed{...}

THINKING_INSTRUCTION = (
    "You should first think about the reasoning process in the mind and then provide the user with "
    "the answer. The reasoning process is enclosed within <think> </think> tags, i.e. "
    "<think> reasoning process here </think> answer here. Put the final answer in \\boxed{}."
)
THINKING_SEPARATOR = "\n"  # between the instruction and the user's text


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the special tokens in one tokenizer. The optional ones are None when absent."""

    bos: int  # <|startoftext|>
    eos: int  # <|endoftext|>
    pad: int  # the tokenizer's pad token, else eos (upstream: pad = eos)
    mask: int  # <|mdm_mask|>
    start_header: int  # <|start_header_id|>
    end_header: int  # <|end_header_id|>
    eot: int  # <|eot_id|>
    think_open: int | None = None  # <think>, when it is a single token
    think_close: int | None = None  # </think>, when it is a single token
    soi: int | None = None  # MMaDA <|soi|>
    eoi: int | None = None  # MMaDA <|eoi|>
    t2i: int | None = None  # MMaDA <|t2i|>
    mmu: int | None = None  # MMaDA <|mmu|>
    ipad: int | None = None  # MMaDA [iPAD]
    r2i: int | None = None  # MMaDA <|r2i|>


_REQUIRED = {
    "bos": BOS_TOKEN,
    "eos": EOS_TOKEN,
    "mask": MASK_TOKEN,
    "start_header": START_HEADER_TOKEN,
    "end_header": END_HEADER_TOKEN,
    "eot": EOT_TOKEN,
}
_OPTIONAL = {
    "think_open": THINK_OPEN,
    "think_close": THINK_CLOSE,
    "soi": SOI_TOKEN,
    "eoi": EOI_TOKEN,
    "t2i": T2I_TOKEN,
    "mmu": MMU_TOKEN,
    "ipad": IPAD_TOKEN,
    "r2i": R2I_TOKEN,
}


def special_ids(tokenizer) -> SpecialTokens:
    """Look up the special ids by their upstream strings; a missing required token raises, naming it."""
    vocab = tokenizer.get_vocab()  # includes the added tokens
    missing = [text for text in _REQUIRED.values() if text not in vocab]
    if missing:
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} (name_or_path={getattr(tokenizer, 'name_or_path', '?')!r}) "
            f"lacks the special token(s) {missing}; a LLaDA/MMaDA tokenizer has all of "
            f"{list(_REQUIRED.values())}"
        )
    ids = {name: vocab[text] for name, text in _REQUIRED.items()}
    ids.update({name: vocab.get(text) for name, text in _OPTIONAL.items()})
    pad = tokenizer.pad_token_id
    return SpecialTokens(pad=ids["eos"] if pad is None else pad, **ids)


ROLES = ("system", "user", "assistant")  # the roles a chat prompt's messages may have


class ChatPrompt(str):
    """A prompt given as chat messages (`[{"role": "system" | "user" | "assistant", "content": str}, ...]`, the
    OpenAI / HF chat format), validated here: at least one message, each with exactly `role` and non-empty
    text `content`, the last one from the user.

    As a str it is the last user message's text: what rewards, logs and the batch's `prompt` column read (a
    record's prompt has one type, str, on every path); `messages` keeps the whole conversation, which
    `chat_prompt_ids` formats (docs/data.md §3). Pickles (to rollout workers) with its messages.
    """

    messages: tuple[dict[str, str], ...]

    def __new__(cls, messages) -> ChatPrompt:
        if not isinstance(messages, (list, tuple)) or not messages:
            raise ValueError(f"chat messages: got {messages!r:.60}; need a non-empty list of "
                             '{"role": ..., "content": ...} objects')
        checked = []
        for index, message in enumerate(messages):
            where = f"message {index + 1}"
            if not isinstance(message, dict):
                raise ValueError(f"{where}: expected an object with 'role' and 'content', got {message!r:.60}")
            if extra := sorted(set(message) - {"role", "content"}):
                raise ValueError(f"{where}: unknown key(s) {extra}; a message has 'role' and 'content' only")
            role, content = message.get("role"), message.get("content")
            if role not in ROLES:
                raise ValueError(f"{where}: role {role!r}; valid: {', '.join(ROLES)}")
            if not isinstance(content, str) or not content.strip():
                raise ValueError(f"{where} ({role}): content {content!r:.60} must be non-empty text")
            checked.append({"role": role, "content": content})
        if checked[-1]["role"] != "user":
            raise ValueError(f"message {len(checked)}: the last message is from the {checked[-1]['role']}; "
                             "a prompt ends with a user message (the policy writes the assistant's answer)")
        prompt = super().__new__(cls, checked[-1]["content"])
        prompt.messages = tuple(checked)
        return prompt

    def __reduce__(self):
        return ChatPrompt, (list(self.messages),)

    def __repr__(self) -> str:
        return f"ChatPrompt({list(self.messages)!r})"


def user_text(text: str, *, thinking: bool) -> str:
    """The user turn's content: the thinking instruction (if asked) prepended to `text`."""
    return f"{THINKING_INSTRUCTION}{THINKING_SEPARATOR}{text}" if thinking else text


def chat_messages(prompt: str, *, thinking: bool) -> list[dict[str, str]]:
    """The conversation of `prompt` (a `ChatPrompt`'s messages; a text prompt: one user message), with the
    thinking instruction (if asked) in front of the first user message."""
    messages = [dict(m) for m in prompt.messages] if isinstance(prompt, ChatPrompt) else [
        {"role": "user", "content": prompt}]
    first_user = next(m for m in messages if m["role"] == "user")
    first_user["content"] = user_text(first_user["content"], thinking=thinking)
    return messages


def chat_prompt_text(prompt: str, *, thinking: bool) -> str:
    """`chat_messages(prompt)` in the LLaDA chat template, ending where the assistant's answer starts."""
    turns = "".join(f"{START_HEADER_TOKEN}{m['role']}{END_HEADER_TOKEN}\n\n{m['content']}{EOT_TOKEN}"
                    for m in chat_messages(prompt, thinking=thinking))
    return f"{BOS_TOKEN}{turns}{START_HEADER_TOKEN}assistant{END_HEADER_TOKEN}\n\n"


def chat_prompt_ids(tokenizer, prompt: str, *, thinking: bool) -> list[int]:
    """`chat_messages(prompt, thinking=thinking)` and the assistant's opening, as token ids.

    Through the tokenizer's chat template when it has one (as the upstream scripts call it), else the ids
    of `chat_prompt_text` (BOS included, nothing else added).
    """
    if tokenizer.chat_template is None:
        return list(tokenizer(chat_prompt_text(prompt, thinking=thinking), add_special_tokens=False)["input_ids"])
    messages = chat_messages(prompt, thinking=thinking)
    # return_dict=False: a plain id list on transformers 4.x and 5.x alike (5.x returns a BatchEncoding by default)
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
