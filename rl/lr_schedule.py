"""The learning-rate schedule every trainer here uses: linear warm-up, then constant, cosine or linear decay.

For optimizer step `step` (0-based) of a run of `total_steps`, with W = `warmup_steps`, m = `min_ratio`:

    step < W:   base * (step + 1) / W                        (never 0: the first step already moves)
    otherwise:  p = min(1, (step - W + e) / max(1, total_steps - W)),   e = 1 if min_at_last_step else 0
                constant: base
                cosine:   base * (m + (1 - m) * 0.5 * (1 + cos(pi * p)))
                linear:   base * (m + (1 - m) * (1 - p))

`min_at_last_step` picks where the decay ends. False (jobs/sft.py, jobs/tasks/train_shapes_vq.py, the RL
learner): the first step after warm-up runs at the full rate and the decay reaches m at step `total_steps`,
one past the last step. True (jobs/tasks/shapes_sft.py): the decay starts right after the warm-up's last
step (which already runs at the full rate) and the last step, `total_steps - 1`, runs at exactly m.
The two are kept because each reproduces a published training run to the bit; new code should use the
default.

`learning_rate` multiplies by `base` in the same order the trainers always did (`base * (step + 1) / W`,
not `base * ((step + 1) / W)`), so the floats are unchanged; `base=1.0` gives the factor (for LambdaLR).
Pure Python: no torch at import (`set_learning_rate` only touches `param_groups`).
"""

from __future__ import annotations

import math
from typing import Any

DECAYS = ("constant", "cosine", "linear")


def check_schedule(*, warmup_steps: int, decay: str, min_ratio: float, total_steps: int | None = None) -> None:
    """Raise ValueError naming the first bad argument (field names as the learner config spells them)."""
    if decay not in DECAYS:
        raise ValueError(f"lr_decay: got {decay!r}; expected one of {', '.join(DECAYS)}")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"lr_warmup_steps: got {warmup_steps!r}; expected a whole number of steps >= 0 (0: no warm-up)")
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio: got {min_ratio!r}; expected a fraction of lr in [0, 1]")
    if total_steps is not None and total_steps < 1:
        raise ValueError(f"total_steps: got {total_steps!r}; expected at least 1 step")


def learning_rate(step: int, base: float = 1.0, *, total_steps: int | None, warmup_steps: int = 0,
                  decay: str = "constant", min_ratio: float = 0.0, min_at_last_step: bool = False) -> float:
    """The rate for optimizer step `step` (0-based); see the module docstring for the formula.

    `total_steps` may be None only for a constant schedule (nothing decays towards an end)."""
    if step < 0:
        raise ValueError(f"step: got {step}; steps count from 0")
    if step < warmup_steps:
        return base * (step + 1) / warmup_steps
    if decay == "constant":
        return base
    if total_steps is None:
        raise ValueError(f"a {decay} decay needs total_steps (the step where it ends)")
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps + (1 if min_at_last_step else 0)) / span)
    if decay == "cosine":
        return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
    if decay == "linear":
        return base * (min_ratio + (1 - min_ratio) * (1 - progress))
    raise ValueError(f"decay: got {decay!r}; expected one of {', '.join(DECAYS)}")


def set_learning_rate(optimizer: Any, lr: float) -> None:
    """Set `lr` on every param group of a torch optimizer or of a DeepSpeed wrapper and the optimizer it wraps
    (ZeRO and bf16 wrappers keep the fp32 groups that step on the inner one)."""
    groups = list(getattr(optimizer, "param_groups", []))
    inner = getattr(optimizer, "optimizer", None)
    if inner is not None and inner is not optimizer:
        groups += list(getattr(inner, "param_groups", []))
    if not groups:
        raise RuntimeError(f"optimizer {type(optimizer).__name__} has no param_groups to set the learning rate on")
    for group in groups:
        group["lr"] = lr
