"""Structured masking of response tokens (docs/algorithm.md §3): schedules, seeds, exact-count masks.

- `timestep_schedule` / `ratio_schedule` draw the μ timesteps t_1..t_μ of one update and map them to mask
  ratios p = t / T, clamped to [p_min, p_max]:
    stratified  t_1 ~ U{1..T}; t_n = ((t_1 − 1 + ⌊(n−1)·T/μ⌋) mod T) + 1     [decision: default]
    ramp        t_1 = ⌊r·T⌋, r ~ U(0,1); t_n = t_1 + ⌊(n−1)·(T − t_1)/(μ−1)⌋  (Alg. 1, ends at t = T)
    random      every t_n ~ U{1..T} independently
  The paper writes (n−1)·T/μ; we floor it so timesteps stay integers when μ does not divide T.
  Schedules live in the `SCHEDULES` registry (`register_schedule`); `algo.masking.schedule` may also name
  a plugin `pkg.mod:fn` / `path/to/file.py:fn` with the same signature (rl/config.py `lookup`).
- Every random choice comes from a `torch.Generator` seeded by `stable_seed(...)`, a hash (blake2b) of
  (purpose, run seed, step, prompt uid, sample index, iteration): the masks of a response do not depend on
  which rank, micro-batch or batch composition it lands in, and any masked copy can be rebuilt later.
  The schedule seed omits the sample index when `share_across_group` (the G responses of a prompt share
  it) and omits the iteration (one draw covers all μ iterations).
- Exact count: k = max(1, ⌊p·L + ½⌋) of the L scored positions (round half up, not Python's banker's
  rounding), capped at L; a row with L = 0 masks nothing. Bernoulli: each scored position with prob. p.
- Only scored response positions are ever chosen; prompt, image, special, padding and suffix columns are
  untouched. `tail="mask"` writes [MASK] into the unscored response tail (after the first EOS).
"""

from __future__ import annotations

import hashlib
import math
import operator
from collections.abc import Callable

import torch

from rl.batch import RolloutBatch
from rl.config import MaskingConfig, adder, lookup


def stable_seed(*parts: object) -> int:
    """A 63-bit seed that depends only on the parts' text (unlike `hash()`, stable across processes)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") & (2**63 - 1)


def generator_for(*parts: object) -> torch.Generator:
    """A CPU generator seeded with `stable_seed(*parts)`."""
    return torch.Generator().manual_seed(stable_seed(*parts))


ScheduleFn = Callable[..., list[int]]
SCHEDULES: dict[str, ScheduleFn] = {}
"""Masking schedule name -> fn(mu, T, generator, t1) -> the μ timesteps (ints in [0, T]) of one update.
`t1` (None: draw it) fixes the first one, for tests and worked examples; a schedule may refuse it."""


def register_schedule(name: str) -> Callable[[ScheduleFn], ScheduleFn]:
    """Decorator: `@register_schedule("name")` adds a masking schedule (`algo.masking.schedule`)."""
    return adder(SCHEDULES, name, "masking schedule")


def get_schedule(name: str) -> ScheduleFn:
    """The schedule registered as `name`, or the plugin `pkg.mod:fn` / `path/to/file.py:fn` it names
    (imported and registered on first use, in whichever process looks it up first)."""
    return lookup(SCHEDULES, name, "masking schedule")


@register_schedule("stratified")
def stratified_schedule(mu: int, T: int, generator: torch.Generator, t1: int | None) -> list[int]:
    first = int(torch.randint(1, T + 1, (1,), generator=generator)) if t1 is None else int(t1)
    if not 1 <= first <= T:
        raise ValueError(f"t1 = {first}: a stratified start must lie in [1, {T}]")
    return [((first - 1 + (n * T) // mu) % T) + 1 for n in range(mu)]


@register_schedule("ramp")
def ramp_schedule(mu: int, T: int, generator: torch.Generator, t1: int | None) -> list[int]:
    first = int(math.floor(float(torch.rand((), generator=generator, dtype=torch.float64)) * T)) \
        if t1 is None else int(t1)
    if not 0 <= first <= T:
        raise ValueError(f"t1 = {first}: a ramp start must lie in [0, {T}]")
    if mu == 1:
        return [first]
    return [first + (n * (T - first)) // (mu - 1) for n in range(mu)]


@register_schedule("random")
def random_schedule(mu: int, T: int, generator: torch.Generator, t1: int | None) -> list[int]:
    if t1 is not None:
        raise ValueError("t1 fixes the first timestep of 'stratified' or 'ramp'; 'random' draws every one")
    return [int(t) for t in torch.randint(1, T + 1, (mu,), generator=generator)]


def timestep_schedule(kind: str, mu: int, T: int, generator: torch.Generator, *, t1: int | None = None) -> list[int]:
    """The μ timesteps (ints; 0 <= t <= T) of one update by schedule `kind`. `t1` fixes the first draw."""
    schedule = get_schedule(kind)
    if mu < 1 or T < 1:
        raise ValueError(f"need mu >= 1 and T >= 1, got mu={mu}, T={T}")
    drawn = list(schedule(mu, T, generator, t1))
    try:
        steps = [operator.index(t) for t in drawn]  # ints, numpy or 0-d torch integers; never floats
    except TypeError:
        steps = []
    if len(steps) != mu or not all(0 <= t <= T for t in steps):  # a plugin's bug, caught before it masks
        raise ValueError(f"masking schedule {kind!r} returned {drawn!r}; expected {mu} integer timesteps in [0, {T}]")
    return steps


def timestep_to_ratio(t: int, T: int, curve: str = "linear") -> float:
    """p(t): linear t/T, or cosine cos(π/2 · (1 − t/T)) (MaskGIT-style; same endpoints 0 and 1)."""
    if curve == "linear":
        return t / T
    if curve == "cosine":
        return math.cos(math.pi / 2 * (1 - t / T))
    raise ValueError(f"ratio curve {curve!r} is unknown; valid curves: linear, cosine")


def ratio_schedule(
    kind: str,
    mu: int,
    T: int,
    generator: torch.Generator,
    *,
    p_min: float = MaskingConfig.p_min,
    p_max: float = MaskingConfig.p_max,
    t1: int | None = None,
    curve: str = "linear",
) -> list[float]:
    """The μ mask ratios of one update, each clamped to [p_min, p_max] (defaults: MaskingConfig's)."""
    if not 0 < p_min <= p_max <= 1:
        raise ValueError(f"need 0 < p_min <= p_max <= 1, got p_min={p_min}, p_max={p_max}")
    steps = timestep_schedule(kind, mu, T, generator, t1=t1)
    return [min(max(timestep_to_ratio(t, T, curve), p_min), p_max) for t in steps]


def mask_count(ratio: float, num_scored: int) -> int:
    """Exact count: max(1, round-half-up(ratio · L)), at most L; 0 when L = 0."""
    if num_scored <= 0:
        return 0
    return min(num_scored, max(1, math.floor(ratio * num_scored + 0.5)))


def choose_masked(num_scored: int, ratio: float, count: str, generator: torch.Generator) -> torch.Tensor:
    """[L] bool over a row's L scored positions: which ones to mask (exact count or Bernoulli)."""
    if count == "exact":
        chosen = torch.zeros(num_scored, dtype=torch.bool)
        chosen[torch.randperm(num_scored, generator=generator)[: mask_count(ratio, num_scored)]] = True
        return chosen
    if count == "bernoulli":
        return torch.rand(num_scored, generator=generator, dtype=torch.float64) < ratio
    raise ValueError(f"mask count mode {count!r} is unknown; valid modes: exact, bernoulli")


def row_ratios(batch: RolloutBatch, cfg: MaskingConfig, mu: int, *, step: int, run_seed: int,
               row: int) -> list[float]:
    """The μ clamped ratios of one row; shared by its group when `cfg.share_across_group`."""
    who = (batch.uid[row],) if cfg.share_across_group else (batch.uid[row], batch.sample_index[row])
    generator = generator_for("schedule", run_seed, step, *who)
    curve = cfg.image_ratio if batch.kind[row] == "t2i" else "linear"
    return ratio_schedule(cfg.schedule, mu, cfg.timesteps, generator, p_min=cfg.p_min, p_max=cfg.p_max,
                          curve=curve)


def scored_mask_of_ratio(
    batch: RolloutBatch,
    ratios: list[float],  # one ratio per row
    count: str,
    seed_parts: tuple,
) -> torch.Tensor:
    """[B, T] bool: for each row, a random subset of its scored positions at the row's ratio.

    The row's generator is seeded by (*seed_parts, uid, sample_index), so the choice is a pure
    function of those and of the row's own scored positions.
    """
    masked = torch.zeros_like(batch.scored_mask)  # [B, T]
    for row in range(batch.num_rows):
        columns = batch.scored_mask[row].nonzero().flatten()  # [L]
        generator = generator_for(*seed_parts, batch.uid[row], batch.sample_index[row])
        chosen = choose_masked(int(columns.numel()), ratios[row], count, generator)  # [L]
        masked[row, columns[chosen]] = True
    return masked


def structured_mask(
    batch: RolloutBatch, cfg: MaskingConfig, mu: int, *, iteration: int, step: int, run_seed: int,
    purpose: str = "unigrpo",
) -> tuple[torch.Tensor, torch.Tensor]:
    """UniGRPO's mask for inner iteration n = `iteration` (1-based).

    Returns (masked [B, T] bool ⊆ scored_mask, ratio [B] float: the ratio p_n each row used).
    """
    if not 1 <= iteration <= mu:
        raise ValueError(f"iteration {iteration} is outside 1..mu={mu}")
    ratios = [row_ratios(batch, cfg, mu, step=step, run_seed=run_seed, row=row)[iteration - 1]
              for row in range(batch.num_rows)]  # cheap: one tiny draw per row
    masked = scored_mask_of_ratio(batch, ratios, cfg.count, (purpose, run_seed, step, iteration))
    return masked, torch.tensor(ratios, dtype=torch.float64)


def masked_input(batch: RolloutBatch, masked: torch.Tensor, *, mask_token_id: int, tail: str) -> torch.Tensor:
    """[B, T] model input: `masked` [B, T] columns set to [MASK]; the unscored tail too when tail='mask'."""
    if tail not in ("mask", "clean"):
        raise ValueError(f"tail {tail!r} is unknown; valid values: mask, clean")
    if masked.shape != batch.input_ids.shape:
        raise ValueError(f"masked has shape {tuple(masked.shape)}, need {tuple(batch.input_ids.shape)}")
    forbidden = masked & (batch.protected_mask | ~batch.attention_mask)  # [B, T]
    if forbidden.any():
        row, col = (int(i) for i in forbidden.nonzero()[0])
        raise ValueError(f"row {row}, column {col}: a protected or padding position was chosen for masking")
    to_mask = masked.clone()  # [B, T]
    if tail == "mask":
        to_mask |= batch.response_mask() & ~batch.scored_mask
    return torch.where(to_mask, torch.full_like(batch.input_ids, mask_token_id), batch.input_ids)
