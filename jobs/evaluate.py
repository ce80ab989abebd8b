"""The one decode + judge of held-out evaluation: `python -m jobs.eval`, in-training evaluation (jobs/heldout.py)
and SFT's evaluation (jobs/sft.py) all call `evaluate_policy`, so the same model and settings give the same numbers.

Decode: every problem gets K samples from the LLaDA text sampler (`model.generate_text`) on its chat prompt; the
response is the whole `gen_length` window decoded with special tokens skipped. The sampler calls run where the
caller's `decode` says: in this process (`local_decoder`), or on the rollout workers during training
(`RolloutPool.decode`, docs/sampling.md §Where evaluation runs); each call's answer depends only on its prompts,
seed and weights, so both places give the same rows. Judge: the registered `correctness`
and `format` rewards (the ones training uses). pass@k is the unbiased estimator of Chen et al. 2021 (Codex),
averaged over problems: with n = K samples of which c are correct,

    pass@k = 1 - C(n - c, k) / C(n, k)

A sample the correctness reward cannot score (None, e.g. a row without a gold answer) counts as not correct and is
counted in `unscorable`.

Seeds: sample k of the problems in the batch starting at problem s is drawn with seed
`stable_seed(seed, "eval", k, s)` and `generate_text` derives each row's generator from (that seed, row), so a
run is reproducible from (seed, batch size); a different batch size draws different (equally valid) samples.
Greedy low-confidence decoding draws nothing random: with K > 1 all K samples are identical.

Progress goes to stderr (stdout keeps the callers' result lines): a bar over the answers in a terminal, else a
line per batch ("eval: 128/256 answers"), and a line when the evaluation starts and when it ends.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable

log = logging.getLogger("unigrpo.eval")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) is correct."""
    if not 0 <= c <= n:
        raise ValueError(f"c: got {c} correct of n={n}; expected 0 <= c <= n")
    if not 1 <= k <= n:
        raise ValueError(f"k: got {k} with n={n} samples; expected 1 <= k <= n")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def default_ks(samples: int) -> list[int]:
    """1, 2, 4, ... up to `samples`, and `samples` itself."""
    ks = [2**i for i in range(samples.bit_length()) if 2**i <= samples]
    return ks + ([samples] if ks[-1] != samples else [])


def response_length(ids: list[int], stop_ids: set[int]) -> int:
    """Tokens before the first end-of-text / pad token (the whole response if there is none)."""
    return next((i for i, token in enumerate(ids) if token in stop_ids), len(ids))


Decode = Callable[..., Iterable[tuple[list[list[int]], int]]]
"""Where an evaluation's sampler calls run: `decode(calls, sampler, mask_id=, pad_id=)` with `calls` a list of
(prompt ids [b][P], seed) yields (response window ids [b][L], forward passes) per call, in order. `local_decoder`
runs them in this process; `actors.rollout_pool.RolloutPool.decode` on the rollout workers."""


def local_decoder(network) -> Decode:
    """A `Decode` running the calls one after another on `network`, in this process."""
    from model.sampling import response_ids

    def decode(calls, sampler: dict, *, mask_id: int, pad_id: int | None):
        network.eval()
        for prompts, seed in calls:
            yield response_ids(network, prompts, sampler, mask_id=mask_id, pad_id=pad_id, seed=seed)

    return decode


def generate_all(tokenizer, records, *, samples: int, sampler: dict, thinking: bool, seed: int, batch_size: int,
                 decode: Decode):
    """One row per (problem, sample index): dicts with the response text, its token ids and length."""
    from tqdm import tqdm

    from model.templates import chat_prompt_ids, special_ids
    from rl.masking import stable_seed

    special = special_ids(tokenizer)
    stop_ids = {i for i in (special.eos, special.pad, special.eot) if i is not None}
    prompts = [chat_prompt_ids(tokenizer, r.prompt, thinking=thinking) for r in records]
    starts = [(sample_index, start) for sample_index in range(samples) for start in range(0, len(records), batch_size)]
    calls = [(prompts[start:start + batch_size], stable_seed(seed, "eval", sample_index, start))
             for sample_index, start in starts]
    rows: list[dict] = [None] * (len(records) * samples)  # type: ignore[list-item]
    bar = tqdm(total=len(rows), desc="eval", unit=" answers", file=sys.stderr, disable=None, leave=False,
               dynamic_ncols=True)  # shown in a terminal only (disable=None)
    done = 0
    results = decode(calls, sampler, mask_id=special.mask, pad_id=special.pad)
    for (sample_index, start), (responses, forwards) in zip(starts, results, strict=True):
        for offset, ids in enumerate(responses):  # ids: [L] on the host
            problem = start + offset
            record = records[problem]
            rows[problem * samples + sample_index] = {
                "uid": record.uid, "task": record.task, "sample_index": sample_index, "prompt": record.prompt,
                "answer": record.answer,
                "response": tokenizer.decode(ids, skip_special_tokens=True),
                "response_tokens": response_length(ids, stop_ids), "sampler_forwards": forwards,
            }
        done += len(responses)
        bar.update(len(responses))
        if bar.disable:  # no terminal (a log file, a submitted job): a line per batch instead of the bar
            log.info("eval: %d/%d answers", done, len(rows))
    bar.close()
    return rows


def score_rows(rows: list[dict]) -> None:
    """Add `correct` (1.0 / 0.0 / None) and `format` to every row, one batch per reward."""
    import rewards

    samples = [rewards.Sample(task=r["task"], prompt=r["prompt"], response=r["response"], answer=r["answer"])
               for r in rows]
    for name in ("correctness", "format"):
        reward = rewards.get(name)
        try:
            values = reward(samples)
        finally:
            if hasattr(reward, "close"):
                reward.close()
        for row, value in zip(rows, values):
            row["correct" if name == "correctness" else "format"] = value


def summarise(rows: list[dict], *, samples: int, ks: list[int]) -> dict:
    """pass@k, format rate, unscorable count and mean response tokens over `rows`, and per task."""

    def metrics(group: list[dict]) -> dict:
        correct_by_uid: dict[str, int] = defaultdict(int)
        for row in group:
            correct_by_uid[row["uid"]] += row["correct"] == 1.0
        problems = len(correct_by_uid)
        return {
            "n_problems": problems,
            "pass_at_k": {str(k): sum(pass_at_k(samples, c, k) for c in correct_by_uid.values()) / problems
                          for k in ks},
            "format_rate": sum(row["format"] or 0.0 for row in group) / len(group),
            "unscorable": sum(row["correct"] is None for row in group),
            "mean_response_tokens": sum(row["response_tokens"] for row in group) / len(group),
            "mean_sampler_forwards": sum(row["sampler_forwards"] for row in group) / len(group),
        }

    by_task: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_task[row["task"]].append(row)
    return {**metrics(rows), "per_task": {task: metrics(group) for task, group in sorted(by_task.items())}}


def evaluate_policy(tokenizer, config, records, *, decode: Decode, samples: int, sampler: dict, thinking: bool,
                    seed: int, batch_size: int, ks: list[int] | tuple[int, ...] = (1,)) -> tuple[list[dict], dict]:
    """Decode (with `decode`) and judge a policy with `tokenizer` and BackboneConfig `config` on text `records`:
    (scored rows, `summarise` summary)."""
    from jobs.data import check_prompt_records  # prompts longer than the model takes: logged and skipped

    records, _ = check_prompt_records(records, tokenizer, max_sequence_length=config.max_sequence_length,
                                      gen_length=sampler["gen_length"], thinking=thinking)
    started = time.perf_counter()
    log.info("eval: %d problems x %d sample(s), %d-token responses, batches of %d", len(records), samples,
             sampler["gen_length"], batch_size)
    rows = generate_all(tokenizer, records, samples=samples, sampler=sampler, thinking=thinking, seed=seed,
                        batch_size=batch_size, decode=decode)
    score_rows(rows)
    summary = summarise(rows, samples=samples, ks=list(ks))
    log.info("eval: done in %.1f s: %s on %d problems", time.perf_counter() - started,
             ", ".join(f"pass@{k} {value:.3f}" for k, value in summary["pass_at_k"].items()), summary["n_problems"])
    return rows, summary
