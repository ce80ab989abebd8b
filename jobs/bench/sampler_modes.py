"""`python -m jobs.bench sampler --modes ...`: the fast sampler modes side by side with the exact sampler.

A mode is `CACHE` or `CACHE@THRESHOLD` (`none`, `prefix`, `dual`, `dual@0.9`, ...; docs/sampling.md). Two
measurements, each in one run on the same weights and prompts:

- speed (random weights, any size of `jobs.bench.sampler.SIZES`): per mode the sampler wall time, tokens/s,
  forward passes per generated token, speed ratio against `none`, and at temperature 0 the fraction of
  response tokens equal to `none`'s. Random weights show what the cache saves (compute); they are never
  confident, so a threshold reveals one token a step there.
- policy (`--policy-eval N`): the shipped gold-SFT demo policy answers the first N held-out problems of the demo
  config greedily with its evaluation sampler (jobs.eval's code: `generate_all`, `score_rows`, `summarise`) in
  every mode: pass@1, its difference to `none` in points, the fraction of responses identical to `none`'s,
  forwards per token, wall time and speed ratio. This is where a threshold is judged.

The modes run in turn after one warmup each; `none` always runs (first) as the reference.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from model.sampling import CACHE_CHOICES, check_schedule, generate_text


def parse_modes(text: str) -> list[tuple[str, float | None]]:
    """'none,dual,dual@0.9' -> [('none', None), ('dual', None), ('dual', 0.9)], with ('none', None) first."""
    modes: list[tuple[str, float | None]] = [("none", None)]
    for part in (p.strip() for p in text.split(",") if p.strip()):
        cache, _, threshold_text = part.partition("@")
        if cache not in CACHE_CHOICES:
            raise ValueError(f"--modes: {part!r}; expected CACHE or CACHE@THRESHOLD with CACHE one of "
                             f"{list(CACHE_CHOICES)} and THRESHOLD in (0, 1], e.g. dual@0.9")
        try:
            threshold = float(threshold_text) if threshold_text else None
        except ValueError:
            raise ValueError(f"--modes: {part!r}; the threshold after '@' must be a number in (0, 1]") from None
        check_schedule(gen_length=1, steps=1, block_length=1, temperature=0, remasking="low_confidence",
                       cfg_scale=0, cache=cache, threshold=threshold)
        if (cache, threshold) not in modes:
            modes.append((cache, threshold))
    return modes


def mode_name(cache: str, threshold: float | None) -> str:
    return cache if threshold is None else f"{cache}@{threshold:g}"


def speed_rows(network, prompts: list[list[int]], modes, *, mask_id: int, pad_id: int, **knobs) -> list[dict]:
    """One row per mode: wall, tokens/s, forwards per token, ratio to `none`, token agreement (temperature 0).
    On CUDA the clock starts and stops after a synchronize (jobs.bench gpu)."""
    gen_length, block_length = knobs["gen_length"], knobs["block_length"]
    device = next(network.parameters()).device
    wait = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows, reference = [], None
    for cache, threshold in modes:
        mode = dict(cache=cache, threshold=threshold, mask_id=mask_id, pad_id=pad_id)
        generate_text(network, prompts, **{**knobs, "gen_length": block_length, "steps": 2}, **mode)  # warmup
        wait()
        started = time.perf_counter()
        with torch.no_grad():
            sample = generate_text(network, prompts, **knobs, **mode)
        wait()
        seconds = time.perf_counter() - started
        responses = sample.sequences[:, -gen_length:]  # [B, L]
        if reference is None:
            reference = (responses, seconds)
        row: dict[str, Any] = dict(mode=mode_name(cache, threshold), cache=cache, threshold=threshold,
                                   sampler_s=seconds, tokens_per_s=responses.numel() / seconds,
                                   forwards=sample.forwards, forwards_per_token=sample.forwards / gen_length,
                                   speed_ratio=reference[1] / seconds)
        if knobs["temperature"] == 0:
            row["agreement"] = (responses == reference[0]).float().mean().item()
        rows.append(row)
    return rows


def print_speed(rows: list[dict], header: str) -> None:
    print(header)
    print(f"{'mode':>10} {'sampler s':>9} {'tok/s':>8} {'fwds':>5} {'fwd/tok':>7} {'x none':>7} {'agree':>6}")
    for row in rows:
        agreement = f"{row['agreement']:>6.3f}" if "agreement" in row else f"{'-':>6}"
        print(f"{row['mode']:>10} {row['sampler_s']:>9.2f} {row['tokens_per_s']:>8.1f} {row['forwards']:>5} "
              f"{row['forwards_per_token']:>7.3f} {row['speed_ratio']:>7.2f} {agreement}", flush=True)


def policy_rows(modes, *, problems: int, batch_size: int) -> list[dict]:
    """pass@1 of the shipped gold-SFT demo policy on the first `problems` held-out problems of the demo config
    (`data.eval`), per mode, sampled as the demo's evaluation samples (`jobs.heldout.eval_sampler`, `data.thinking`,
    `run.seed`) but for the mode's cache and threshold."""
    import model
    from jobs.config import DEFAULT_CONFIG, load_config
    from jobs.evaluate import generate_all, local_decoder, score_rows, summarise
    from jobs.heldout import eval_sampler, heldout_records
    from model.resolve import DEMO_POLICY

    cfg = load_config(DEFAULT_CONFIG)
    loaded = model.load(DEMO_POLICY)
    records = heldout_records(cfg)[0][:problems]
    rows, reference = [], None
    for cache, threshold in modes:
        sampler = {**eval_sampler(cfg), "cache": cache, "threshold": threshold}
        started = time.perf_counter()
        samples = generate_all(loaded.tokenizer, records, samples=1, sampler=sampler, thinking=cfg.data.thinking,
                               seed=cfg.run.seed, batch_size=batch_size, decode=local_decoder(loaded.network))
        seconds = time.perf_counter() - started
        score_rows(samples)
        summary = summarise(samples, samples=1, ks=[1])
        pass_at_1 = summary["pass_at_k"]["1"]
        responses = [row["response"] for row in samples]
        if reference is None:
            reference = (pass_at_1, seconds, responses)
        same = sum(a == b for a, b in zip(responses, reference[2])) / len(responses)
        rows.append(dict(mode=mode_name(cache, threshold), cache=cache, threshold=threshold,
                         problems=len(records), pass_at_1=pass_at_1, points_vs_none=100 * (pass_at_1 - reference[0]),
                         same_response=same,
                         forwards_per_token=summary["mean_sampler_forwards"] / sampler["gen_length"],
                         sampler_s=seconds, speed_ratio=reference[1] / seconds,
                         format_rate=summary["format_rate"]))
    return rows


def print_policy(rows: list[dict], header: str) -> None:
    print(header)
    print(f"{'mode':>10} {'pass@1':>7} {'pts':>6} {'same':>5} {'fwd/tok':>7} {'fwd x':>6} {'wall s':>7} {'x none':>7}")
    for row in rows:
        print(f"{row['mode']:>10} {row['pass_at_1']:>7.3f} {row['points_vs_none']:>+6.1f} {row['same_response']:>5.2f} "
              f"{row['forwards_per_token']:>7.3f} {rows[0]['forwards_per_token'] / row['forwards_per_token']:>6.2f} "
              f"{row['sampler_s']:>7.2f} {row['speed_ratio']:>7.2f}", flush=True)
