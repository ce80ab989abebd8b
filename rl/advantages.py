"""Group-relative advantages by prompt uid (docs/algorithm.md §2.4) and the dynamic-sampling group filter.

    Â_i = (r_i − mean_G r) / (std_G r + eps)     scale="std"   (GRPO / UniGRPO)
    Â_i =  r_i − mean_G r                        scale="none"  (mean-centring: d1, wd1, SPG)

Decisions:
- std is the POPULATION standard deviation (divide by n, not n − 1): it is defined for a group of one and
  makes the z-scores of a group have unit variance. (TRL uses the sample std; with G = 8 the two differ by
  a factor √(8/7) ≈ 1.07 in scale only.)
- A group whose scorable rewards are all equal gets Â = 0 exactly (tested on max == min, not on a
  floating-point std, so 0.1 + 0.1 + 0.1 rounding never leaks a ±1e-17 advantage).
- `None` (unscorable) rewards are left out of the mean and std of their group and get Â = 0; the caller
  also drops them from the loss (update.py), so they never train as if their reward were 0.
- Statistics are computed in float64 on the group divided by a power of two s ≈ max |r| (so every |r/s| < 2):
  Â = (r/s − mean(r/s)) / (std(r/s) + eps/s). Any finite rewards then give finite z-scores (|Â| ≤ √(n−1)):
  unscaled, a sum of 1e308s overflows to inf (NaN advantages) and the squares of 1e200s make the std inf
  (every advantage silently 0). A power of two rounds nothing, so ordinary rewards get the same bits as
  the plain formula. Scaling beats a finiteness check here because these groups have a well-defined answer.
- scale="none" keeps the reward's unit, and the result is float32 (max ≈ 3.4e38): a centred reward beyond
  that cannot be represented and raises ValueError naming the group, never an inf advantage.
The result is float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from rl.batch import RolloutBatch
from rl.config import AdvantageConfig

SCALES = ("std", "none")
_FLOAT32_MAX = torch.finfo(torch.float32).max


def _groups(group_ids: Sequence[str]) -> dict[str, list[int]]:
    rows: dict[str, list[int]] = {}
    for row, key in enumerate(group_ids):
        rows.setdefault(key, []).append(row)
    return rows


def group_advantages(
    rewards: Sequence[float | None],
    group_ids: Sequence[str],
    scale: str = "std",
    eps: float = 1e-6,
) -> torch.Tensor:
    """Â [B] float32: per-group z-score (or centring) of `rewards`; None and constant groups -> 0."""
    if scale not in SCALES:
        raise ValueError(f"advantage scale {scale!r} is unknown; valid scales: {', '.join(SCALES)}")
    if len(rewards) != len(group_ids):
        raise ValueError(f"rewards has {len(rewards)} entries but group_ids has {len(group_ids)}; need one per row")
    if eps < 0:
        raise ValueError(f"eps {eps} is negative")
    for row, value in enumerate(rewards):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            raise ValueError(f"rewards[{row}] = {value!r} (group {group_ids[row]!r}): need a finite number or None")
    advantages = torch.zeros(len(rewards), dtype=torch.float64)  # [B]
    for key, rows in _groups(group_ids).items():
        scorable = [r for r in rows if rewards[r] is not None]
        if not scorable:
            continue
        values = torch.tensor([float(rewards[r]) for r in scorable], dtype=torch.float64)  # [n]
        if bool(values.max() == values.min()):
            continue  # zero spread: no signal, Â = 0 for the whole group
        # the power of two 2^k <= max |r| < 2^(k+1) (2^(k+1) itself overflows for the largest doubles)
        scale_by = math.ldexp(1.0, math.frexp(float(values.abs().max()))[1] - 1)
        scaled = values / scale_by  # [n], every |value| < 2: no sum or square below can overflow
        centred = scaled - scaled.mean()  # [n]
        if scale == "std":
            centred = centred / (scaled.std(correction=0) + eps / scale_by)  # = (r − mean) / (std + eps)
        else:
            centred = centred * scale_by  # back to the reward's unit
            peak = float(centred.abs().max())
            if not peak <= _FLOAT32_MAX:
                raise ValueError(f"group {key!r}: centred rewards reach {peak:.3g}, beyond float32 (±3.4e+38); "
                                 "use scale='std' (z-scores are bounded) or smaller reward weights")
        advantages[torch.tensor(scorable)] = centred
    return advantages.to(torch.float32)


def groups_to_keep(
    correctness: Sequence[float | None],
    group_ids: Sequence[str],
    *,
    drop_above: float | None = None,
    drop_below: float | None = None,
) -> list[str]:
    """Group ids (first-seen order) that survive the mean-correctness filter (dynamic sampling).

    A group is dropped when the mean of its scorable correctness values is strictly above `drop_above`
    or strictly below `drop_below`. A group with no scorable value has no mean and is kept (it trains
    on nothing anyway; dropping it would hide it from the metrics).
    """
    if len(correctness) != len(group_ids):
        raise ValueError(f"correctness has {len(correctness)} entries but group_ids has {len(group_ids)}")
    kept = []
    for key, rows in _groups(group_ids).items():
        values = [float(correctness[r]) for r in rows if correctness[r] is not None]
        if values:
            mean = sum(values) / len(values)
            if (drop_above is not None and mean > drop_above) or (drop_below is not None and mean < drop_below):
                continue
        kept.append(key)
    return kept


def batch_advantages(batch: RolloutBatch, cfg: AdvantageConfig) -> tuple[RolloutBatch, torch.Tensor, dict[str, float]]:
    """Filter groups (when thresholds are set), then Â [B'] of the kept rows from their `total` (the weighted
    total the reward service wrote; None = unscorable); plus counts for the metrics.
    Returns (kept batch, advantages [B'] float32, stats).
    """
    filtering = cfg.drop_groups_above is not None or cfg.drop_groups_below is not None
    if filtering and cfg.correctness_term not in batch.rewards:
        raise KeyError(f"advantage.correctness_term {cfg.correctness_term!r} is not a reward term of the batch "
                       f"(terms: {sorted(batch.rewards)}); the group filter needs it")
    num_groups = len(dict.fromkeys(batch.uid))
    if filtering:
        keep = set(groups_to_keep(batch.rewards[cfg.correctness_term], batch.uid,
                                  drop_above=cfg.drop_groups_above, drop_below=cfg.drop_groups_below))
        batch = batch.select([row for row, key in enumerate(batch.uid) if key in keep])
    totals = batch.total
    advantages = group_advantages(totals, batch.uid, cfg.scale, cfg.eps)  # [B']
    stats = {
        "groups_total": float(num_groups),
        "groups_dropped": float(num_groups - len(dict.fromkeys(batch.uid))),
        "rows_unscorable": float(sum(t is None for t in totals)),
        "rows_zero_advantage": float((advantages == 0).sum()),
    }
    return batch, advantages, stats
