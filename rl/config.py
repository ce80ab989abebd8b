"""The `algo` section of the run config: every knob of UniGRPO and its relatives (docs/algorithm.md).

Frozen dataclasses following the project's config convention: every field has a default and a comment,
fixed choices are `Literal`s, cross-field checks live in `__post_init__` and raise
`ValueError("<field>: <what is wrong>; <what is right>")` (the loader prefixes the dotted path).
Defaults are the [decision]s of docs/algorithm.md; each alternative it names is a knob here.

Three choices are open, so they are strings checked against a registry instead of `Literal`s:
`estimator` (rl/estimators.py), `kl.estimator` (rl/losses.py) and `masking.schedule` (rl/masking.py). Each
is a registered name or a plugin, `package.module:function` or `path/to/file.py:function` (resolved like
reward plugins). Checking the config loads the plugin and registers it under that very string; any other
process (a learner rank) resolves the same string the same way when it first looks it up (`lookup`).
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

PLUGIN_FORMS = "a plugin 'pkg.mod:fn' / 'path/to/file.py:fn'"
Fn = TypeVar("Fn", bound=Callable)


def adder(registry: dict[str, Fn], name: str, what: str) -> Callable[[Fn], Fn]:
    """The decorator each `register_*(name)` returns: adds a function under `name`, refusing a second one."""

    def add(fn: Fn) -> Fn:
        if name in registry:
            raise ValueError(f"{what} {name!r} is already registered (by {registry[name].__module__})")
        registry[name] = fn
        return fn

    return add


def lookup(registry: dict[str, Fn], name: str, key: str, what: str | None = None) -> Fn:
    """`registry[name]`; a plugin name not registered yet is imported and registered under `name`.

    Errors are `ValueError("<key>: got 'x'; expected one of [...] or a plugin ...")`, or why the plugin
    did not load; `what` (default: `key`) names the kind in plugin errors ("KL estimator file not found")."""
    if name in registry:
        return registry[name]
    if not isinstance(name, str) or ":" not in name:
        named = sorted(n for n in registry if ":" not in n)  # the plugins loaded so far are not suggestions
        raise ValueError(f"{key}: got {name!r}; expected one of {named} or {PLUGIN_FORMS}")
    from rewards.registry import load_plugin  # the resolution reward plugins use; lazy: plain names need none

    try:
        fn = load_plugin(name, what=what or key)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from exc
    registry.setdefault(name, fn)  # another thread may have got here first; both hold the same function
    return registry[name]


def _check_choice(name: str, value: object, choices: object) -> None:
    """Literal check for direct construction (the YAML loader checks too, before we get here)."""
    valid = typing.get_args(choices)
    if value not in valid:
        raise ValueError(f"{name}: {value!r} is not one of the valid choices {', '.join(map(repr, valid))}")


@dataclass(frozen=True)
class MaskingConfig:
    """Structured masking of response tokens (docs/algorithm.md §3)."""

    # How the μ mask ratios p_1..p_μ of one update are drawn: stratified (default), ramp (Alg. 1), random,
    # or a plugin 'pkg.mod:fn' / 'path/to/file.py:fn', fn(mu, T, generator, t1) -> μ timesteps (rl/masking.py).
    schedule: str = "stratified"
    # T, the number of discrete timesteps; a timestep t maps to the mask ratio p = t / T.
    timesteps: int = 1000
    # Lower clamp of every mask ratio.
    p_min: float = 0.05
    # Upper clamp of every mask ratio.
    p_max: float = 1.0
    # exact: mask exactly max(1, round(p·L)) scored tokens; bernoulli: mask each one with probability p.
    count: Literal["exact", "bernoulli"] = "exact"
    # The G responses of one prompt share the schedule (Alg. 1); False draws one schedule per response.
    share_across_group: bool = True
    # Response positions after the first EOS (never scored): mask = [MASK] in the model input, clean = as generated.
    tail: Literal["mask", "clean"] = "mask"
    # Text-to-image rows: p = t/T (linear) or p = cos(π/2 · (1 − t/T)) (cosine, MaskGIT-style).
    image_ratio: Literal["linear", "cosine"] = "linear"

    def __post_init__(self):
        from rl.masking import SCHEDULES  # the registry; lazy: rl.masking imports this module

        lookup(SCHEDULES, self.schedule, "schedule", "masking schedule")
        _check_choice("count", self.count, Literal["exact", "bernoulli"])
        _check_choice("tail", self.tail, Literal["mask", "clean"])
        _check_choice("image_ratio", self.image_ratio, Literal["linear", "cosine"])
        if self.timesteps < 1:
            raise ValueError(f"timesteps: {self.timesteps} is not a positive integer; use e.g. 1000")
        if not 0 < self.p_min <= self.p_max <= 1:
            raise ValueError(
                f"p_min: need 0 < p_min <= p_max <= 1, got p_min={self.p_min}, p_max={self.p_max}"
            )


@dataclass(frozen=True)
class KLConfig:
    """The per-token KL estimator against the frozen reference policy."""

    # k3 = exp(Δ) − Δ − 1 with Δ = ℓ_ref − ℓ_θ (GRPO's, default); k1 = −Δ; k2 = Δ²/2; or a plugin
    # 'pkg.mod:fn' / 'path/to/file.py:fn', fn(logp [B, L], ref_logp [B, L]) -> [B, L] (rl/losses.py).
    estimator: str = "k3"

    def __post_init__(self):
        from rl.losses import KL_ESTIMATORS  # the registry, imported when a config is checked

        lookup(KL_ESTIMATORS, self.estimator, "estimator", "KL estimator")


@dataclass(frozen=True)
class AdvantageConfig:
    """Group-relative advantages (docs/algorithm.md §2.4)."""

    # std: (r − mean) / (std + eps) per group; none: r − mean (mean-centring only, as d1/wd1/SPG).
    scale: Literal["std", "none"] = "std"
    # Added to the (population) standard deviation before dividing.
    eps: float = 1e-6
    # Dynamic sampling: drop a group whose mean correctness is strictly above this (None: never).
    drop_groups_above: float | None = None
    # Dynamic sampling: drop a group whose mean correctness is strictly below this (None: never).
    drop_groups_below: float | None = None
    # The reward term whose per-group mean the two thresholds above compare against.
    correctness_term: str = "correctness"

    def __post_init__(self):
        _check_choice("scale", self.scale, Literal["std", "none"])
        if self.eps < 0:
            raise ValueError(f"eps: {self.eps} is negative; use a small non-negative number such as 1e-6")
        lo, hi = self.drop_groups_below, self.drop_groups_above
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(
                f"drop_groups_below: {lo} is above drop_groups_above={hi}, which would drop every group; "
                "need drop_groups_below <= drop_groups_above"
            )


@dataclass(frozen=True)
class DiffuGRPOConfig:
    """The d1 (diffu-GRPO) estimator: whole response masked, prompt partly masked."""

    # Probability of masking each (non-protected, non-padding) prompt token, fresh seed per iteration.
    prompt_mask_prob: float = 0.15

    def __post_init__(self):
        if not 0 <= self.prompt_mask_prob < 1:
            raise ValueError(f"prompt_mask_prob: {self.prompt_mask_prob} is outside [0, 1)")


@dataclass(frozen=True)
class RandomMaskingConfig:
    """The random-masking estimator: response Bernoulli(t), t ~ U[t_min, t_max], m copies."""

    # Lower end of the uniform range of the per-copy mask probability t.
    t_min: float = 0.1
    # Upper end of that range.
    t_max: float = 0.9
    # m, independent masked copies per inner iteration; the score averages over all their masked tokens.
    copies: int = 1

    def __post_init__(self):
        if not 0 < self.t_min <= self.t_max <= 1:
            raise ValueError(f"t_min: need 0 < t_min <= t_max <= 1, got t_min={self.t_min}, t_max={self.t_max}")
        if self.copies < 1:
            raise ValueError(f"copies: {self.copies} is not a positive integer")


@dataclass(frozen=True)
class AlgoConfig:
    """UniGRPO and the estimators sharing its loss (docs/algorithm.md §2–§6)."""

    # Which masking/scoring function builds the inputs whose log-probs enter the loss (docs/algorithm.md §6):
    # unigrpo, diffu_grpo, random_masking, coupled, or a plugin 'pkg.mod:fn' / 'path/to/file.py:fn'.
    estimator: str = "unigrpo"
    # G, responses drawn per prompt (read by the rollout driver; groups are keyed by prompt uid).
    group_size: int = 8
    # μ, inner gradient steps per batch, each on its own masked copy.
    mu: int = 4
    # ε of the clipped ratio: r is clipped to [1 − ε, 1 + ε].
    clip_eps: float = 0.2
    # β, the weight of the per-token KL to the reference policy (0 disables it; no reference needed then).
    beta: float = 0.01
    # Structured masking of responses (unigrpo; coupled draws its first mask with the same schedule).
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    # KL estimator against the reference.
    kl: KLConfig = field(default_factory=KLConfig)
    # Group advantages and dynamic-sampling filter.
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    # Settings of the `diffu_grpo` estimator.
    diffu_grpo: DiffuGRPOConfig = field(default_factory=DiffuGRPOConfig)
    # Settings of the `random_masking` estimator.
    random_masking: RandomMaskingConfig = field(default_factory=RandomMaskingConfig)
    # Tokens per LM-head chunk when computing log-probs (bounds the [chunk, V] fp32 logits kept at once).
    logprob_chunk_size: int = 1024

    def __post_init__(self):
        from rl.estimators import ESTIMATORS  # the registry; lazy: rl.estimators imports this module

        lookup(ESTIMATORS, self.estimator, "estimator")
        if self.group_size < 1:
            raise ValueError(f"group_size: {self.group_size} is not a positive integer")
        if self.mu < 1:
            raise ValueError(f"mu: {self.mu} is not a positive integer; the paper uses 4-5 inner steps")
        if not 0 < self.clip_eps < 1:
            raise ValueError(f"clip_eps: {self.clip_eps} is outside (0, 1); the usual value is 0.2")
        if self.beta < 0:
            raise ValueError(f"beta: {self.beta} is negative; use 0 to disable the KL term")
        if self.logprob_chunk_size < 1:
            raise ValueError(f"logprob_chunk_size: {self.logprob_chunk_size} is not a positive integer")
