"""The reward contract: what a reward receives (`Sample`), what it returns, and the optional richer form.

A reward is any callable `reward(samples: list[Sample]) -> list[float | None]`, one entry per sample, in
order. `None` means "this sample cannot be scored" (gold answer missing, scorer timed out, remote judge
down, ...). It is never the same as 0.0: the trainer leaves an unscorable sample out of its group's
mean/std and gives it advantage 0 (docs/algorithm.md §2.4), and counts it in the metrics.

Rewards must be picklable (they travel to worker processes and Ray actors) and must ignore fields they do
not use: everything a dataset row carries beyond task/prompt/answer/image goes into `Sample.meta`.
In training a `Sample` is a read-only view of one row of the rollout batch, built by `samples_of`; the
service writes the scores back into the batch (rewards/service.py, docs/architecture.md §2).

Built-ins also implement `score_detailed(samples, *, timeout_s=None) -> list[Scored]`, which says *why* a
value is `None`; `RewardService` uses it for its counted reasons. Plain plugins don't need it: a `None`
from them is counted as reason `unscorable`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from rl.batch import RolloutBatch

Isolation = Literal["process", "thread"]
"""How `RewardService` runs a term: in a killable worker process, or in a thread of the caller's process
(for rewards that bound their own time, or that hold a model on the caller's GPU)."""


@dataclass(frozen=True, eq=False)
class Sample:
    """One response to score. `eq=False`: an image array has no single truth value, so samples compare by
    identity."""

    task: str
    """The dataset task the sample belongs to; selects the reward terms (e.g. "text", "captioning", "t2i")."""
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


def samples_of(batch: RolloutBatch) -> list[Sample]:
    """One `Sample` per row of a rollout batch, from its columns: what the reward plugins read. The image is
    the row's (t2i: the generated one, mmu: the input one); `meta` the dataset row's extra fields."""
    return [Sample(task=task, prompt=prompt, response=response, answer=answer, image=image, meta=meta)
            for task, prompt, response, answer, image, meta
            in zip(batch.task, batch.prompt, batch.response, batch.answer, batch.image, batch.meta)]


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
