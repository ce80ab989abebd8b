"""`format`: 1.0 when the response is exactly one non-empty `<think>…</think>` block followed by a non-empty
answer, else 0.0. Never None (every response has a format).

Precisely: after optional leading whitespace the response starts with `<think>`; `<think>` and `</think>`
each occur exactly once, in that order; the text between them and the text after `</think>` are non-empty
after stripping whitespace.

[decision] Thinking chat templates often end the *prompt* with `<think>` so that the model starts inside
its thinking. When the prompt (stripped) ends with `<think>`, the response is scored as if it began with
it, so the same rule applies with either template.
"""

from __future__ import annotations

from collections.abc import Sequence

from rewards.base import Sample, Scored
from rewards.registry import register

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def well_formatted(prompt: str, response: str) -> bool:
    """The rule in the module docstring (linear time: `count`/`find` only)."""
    text = response.lstrip()
    if prompt.rstrip().endswith(THINK_OPEN) and not text.startswith(THINK_OPEN):
        text = THINK_OPEN + text
    if not text.startswith(THINK_OPEN) or text.count(THINK_OPEN) != 1 or text.count(THINK_CLOSE) != 1:
        return False
    close_at = text.find(THINK_CLOSE)
    thinking = text[len(THINK_OPEN):close_at]
    answer = text[close_at + len(THINK_CLOSE):]
    return bool(thinking.strip()) and bool(answer.strip())


@register("format")
class FormatReward:
    """`<think>…</think>answer` format check (no options)."""

    isolation = "thread"  # pure string code, linear time

    def __call__(self, samples: list[Sample]) -> list[float | None]:
        return [1.0 if well_formatted(s.prompt, s.response) else 0.0 for s in samples]

    def score_detailed(self, samples: Sequence[Sample], *, timeout_s: float | None = None) -> list[Scored]:
        return [Scored(value) for value in self(list(samples))]

    def __repr__(self) -> str:
        return "FormatReward()"
