"""The reward contract: what a reward receives (`Sample`), what it returns, and the optional richer form.

A reward is any callable `reward(samples: list[Sample]) -> list[float | None]`, one entry per sample, in
order. `None` means "this sample cannot be scored" (gold answer missing, scorer timed out, remote judge
down, ...). It is never the same as 0.0: the trainer leaves an unscorable sample out of its group's
mean/std and gives it advantage 0 (docs/algorithm.md §2.4), and counts it in the metrics.

Rewards must be picklable (they travel to worker processes and Ray actors) and must ignore fields they do
not use: everything a dataset row carries beyond task/prompt/answer/image goes into `Sample.meta`.

Built-ins also implement `score_detailed(samples, *, timeout_s=None) -> list[Scored]`, which says *why* a
value is `None`; `RewardService` uses it for its counted reasons. Plain plugins don't need it: a `None`
from them is counted as reason `unscorable`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Isolation = Literal["process", "thread"]
"""How `RewardService` runs a term: in a killable worker process, or in a thread of the caller's process
(for rewards that bound their own time, or that hold a model on the caller's GPU)."""


@dataclass(frozen=True, eq=False)
class Sample:
    """One response to score. `eq=False`: an image array has no single truth value, so samples compare by
    identity."""

    task: str
    """Task kind the sample belongs to; selects the reward terms (e.g. "text", "mmu", "captioning", "t2i")."""
    prompt: str
    """The prompt text the policy saw (for image tasks, the text part)."""
    response: str
    """The decoded response text (for text-to-image, usually empty or the caption)."""
    answer: str | None = None
    """Gold answer from the dataset, if any (GSM8K `#### n` solutions and MATH `\\boxed{}` solutions work)."""
    image: Any = None
    """For image tasks: the image as an HxWx3 uint8 numpy array (generated image for t2i, input image for
    understanding/captioning); None otherwise."""
    meta: Mapping[str, Any] | None = None
    """Every other dataset field (row id, keywords, ...). Rewards read what they know and ignore the rest."""

    def __post_init__(self) -> None:
        if not isinstance(self.task, str) or not self.task:
            raise ValueError(f"Sample.task: got {self.task!r}; expected a non-empty task name such as 'text'")
        for name in ("prompt", "response"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ValueError(f"Sample.{name}: got {type(value).__name__}; expected str (decode bytes first)")
        if self.answer is not None and not isinstance(self.answer, str):
            raise ValueError(f"Sample.answer: got {type(self.answer).__name__}; expected str or None")
        if self.image is not None:
            shape = getattr(self.image, "shape", None)
            dtype = str(getattr(self.image, "dtype", ""))
            if shape is None or len(shape) != 3 or shape[2] != 3 or dtype != "uint8":
                raise ValueError(
                    f"Sample.image: got {type(self.image).__name__} shape={shape} dtype={dtype or None}; "
                    "expected an HxWx3 uint8 numpy array or None"
                )
        if self.meta is not None and not isinstance(self.meta, Mapping):
            raise ValueError(f"Sample.meta: got {type(self.meta).__name__}; expected a dict or None")


@dataclass(frozen=True)
class Scored:
    """A score with the reason it is missing. `reason` is `"<category>"` or `"<category>: <detail>"`;
    metrics count by category (`timeout`, `error`, `crash`, `no_gold`, `unparseable_gold`, ...)."""

    value: float | None
    reason: str | None = None

    @property
    def category(self) -> str | None:
        """The part of the reason before the first colon (None when the sample was scored)."""
        return None if self.reason is None else self.reason.split(":", 1)[0].strip()


def unscorable(count: int, reason: str) -> list[Scored]:
    """`count` copies of `Scored(None, reason)`: what a whole batch gets when its call fails."""
    return [Scored(None, reason)] * count


@runtime_checkable
class Reward(Protocol):
    """The contract every reward satisfies."""

    def __call__(self, samples: list[Sample]) -> list[float | None]: ...


@runtime_checkable
class DetailedReward(Protocol):
    """Optional: rewards that explain their `None`s and honour a time budget for the whole batch."""

    def __call__(self, samples: list[Sample]) -> list[float | None]: ...

    def score_detailed(self, samples: Sequence[Sample], *, timeout_s: float | None = None) -> list[Scored]: ...


@dataclass(frozen=True)
class ScoredBatch:
    """What `RewardService.score` returns; every list is aligned with the input samples."""

    total: list[float | None]
    """Weighted sum of the sample's task terms; None when any of its terms is None or the sum is not a
    finite float (the sample is unscorable, docs/algorithm.md §2.4); `total_reasons` says which."""
    terms: dict[str, list[float | None]]
    """Term name -> raw (unweighted) score per sample. None where unscorable or where the sample's task has
    no such term (see `reasons`)."""
    reasons: dict[str, list[str | None]]
    """Term name -> why the score is None (`absent` when the sample's task has no such term); None where
    the sample was scored."""
    metrics: dict[str, float] = field(default_factory=dict)
    """`reward/<task>/<term>/<stat>` and `reward/<task>/total/<stat>`, see `rewards.service`."""
    total_reasons: list[str | None] = field(default_factory=list)
    """Why `total` is None per sample (`unscored: ...` a term is None, `overflow: ...` the weighted sum is
    not finite); None where the total is a number. From `rewards.service.weighted_totals`."""
