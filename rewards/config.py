"""Config section `rewards`: which reward terms score which task, with which weights, options and deadlines.

Defaults are docs/algorithm.md §5.1 (paper §2.3.2):

| task         | terms (weight)                                   |
|--------------|--------------------------------------------------|
| `text`       | correctness 2.0, format 0.5                      |
| `mmu`        | correctness 2.0, format 0.5                      |
| `captioning` | correctness 2.0, format 0.5, clip 0.1            |
| `t2i`        | clip 0.1, image_reward 0.1                       |

Scales the weights multiply (the paper does not say; this is our reading, stated so runs are comparable):
- `correctness` and `format` return 0.0/1.0, so they contribute 0 or their weight.
- `clip` returns the *CLIP score* convention, 100 · max(cos(E_image, E_text), 0) in [0, 100] (torchmetrics'
  CLIPScore), not the raw cosine. Typical matched image/text pairs score 25–35, so weight 0.1 gives 2.5–3.5:
  the same order as a correct answer (2.0). With a raw-cosine scale 0.1 would make CLIP negligible.
- `image_reward` returns ImageReward-v1.0's normalised score (roughly standard normal over its training
  prompts), so weight 0.1 adds about ±0.1–0.2.

The `clip`/`image_reward` defaults carry no options: point them at local weights with
`--set` / YAML (`options: {...}`, see docs/custom_rewards.md and the vision rewards' docstrings).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class RewardTermConfig:
    """One weighted reward term of a task."""

    name: str = "correctness"
    """Reward to use: a built-in, an entry-point plugin name, `package.module:function` or `path/file.py:function`."""
    weight: float = 1.0
    """Multiplies the term's raw score in the task's total reward."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword options passed to the reward's factory (e.g. `{"sample_timeout_s": 3.0}` for correctness)."""
    timeout_s: float = 60.0
    """Deadline for one batch call of this term; on overrun its samples are None with reason `timeout`."""
    isolation: Literal["auto", "process", "thread"] = "auto"
    """Where the term runs: `process` = a killable worker process (hard deadline); `thread` = the caller's
    process (for rewards that bound their own time or hold a GPU model); `auto` = what the reward declares
    (its `isolation` attribute; plugins without one run in a process)."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"name: got {self.name!r}; expected a reward name such as 'correctness'")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or not math.isfinite(self.weight):
            raise ValueError(f"weight: got {self.weight!r}; expected a finite number")
        if not isinstance(self.options, dict) or not all(isinstance(k, str) for k in self.options):
            raise ValueError(f"options: got {self.options!r}; expected a mapping of option name -> value")
        if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, (int, float)) or not self.timeout_s > 0:
            raise ValueError(f"timeout_s: got {self.timeout_s!r}; expected a number of seconds > 0")
        if self.isolation not in ("auto", "process", "thread"):
            raise ValueError(f"isolation: got {self.isolation!r}; expected one of auto, process, thread")


def default_tasks() -> dict[str, list[RewardTermConfig]]:
    """docs/algorithm.md §5.1 as config."""
    correctness = RewardTermConfig("correctness", 2.0)
    format_term = RewardTermConfig("format", 0.5)
    return {
        "text": [correctness, format_term],
        "mmu": [correctness, format_term],
        # Captioning scores the model's caption (the response) against the image, not the instruction.
        "captioning": [correctness, format_term, RewardTermConfig("clip", 0.1, {"text_field": "response"})],
        "t2i": [RewardTermConfig("clip", 0.1), RewardTermConfig("image_reward", 0.1)],
    }


@dataclass(frozen=True)
class RewardsConfig:
    """Reward terms per task; a sample's total is the weighted sum of its task's terms."""

    tasks: dict[str, list[RewardTermConfig]] = field(default_factory=default_tasks)
    """Task name (the `task` of a `Sample`) -> its weighted terms; defaults from docs/algorithm.md §5.1."""

    def __post_init__(self) -> None:
        if not isinstance(self.tasks, dict) or not self.tasks:
            raise ValueError("tasks: expected a non-empty mapping of task name -> list of reward terms")
        for task, terms in self.tasks.items():
            if not isinstance(task, str) or not task:
                raise ValueError(f"tasks: task name {task!r} must be a non-empty string")
            if not isinstance(terms, (list, tuple)) or not terms:
                raise ValueError(f"tasks.{task}: got {terms!r}; expected a non-empty list of reward terms")
            names = []
            for index, term in enumerate(terms):
                if not isinstance(term, RewardTermConfig):
                    raise ValueError(f"tasks.{task}[{index}]: got {type(term).__name__}; expected RewardTermConfig")
                names.append(term.name)
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(
                    f"tasks.{task}: term(s) {', '.join(duplicates)} appear more than once; "
                    "give each term once (merge the weights)"
                )

    def terms_for(self, task: str) -> list[RewardTermConfig]:
        """The terms of `task`; an unknown task is an error listing the configured ones."""
        try:
            return list(self.tasks[task])
        except KeyError:
            raise ValueError(
                f"task {task!r} has no reward terms; configured tasks: {', '.join(sorted(self.tasks))}"
            ) from None
