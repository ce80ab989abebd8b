"""SFT's training data (jobs/sft.py): tokenised (prompt, response) pairs, batches in the sampler's layout with a
step's masks, and their split over the learner ranks.

A response is its tokens then EOS up to `rollout.sampler.gen_length` (the padding is a target: the policy learns to stop);
prompts are left-padded to the batch's longest, as the sampler lays them out, and hidden by the attention mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from jobs.config import TrainConfig
from rl.sft import mask_responses, mask_seed


@dataclass(frozen=True)
class Example:
    """One tokenised training pair."""

    uid: str
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]  # reference response + EOS padding, exactly gen_length ids
    answer: str | None


def tokenize_examples(records, tokenizer, *, column: str, thinking: bool, gen_length: int,
                      eos_id: int) -> list[Example]:
    """Chat-template prompts and EOS-padded responses; a response longer than gen_length is an error.

    The reference response is `meta["response"]` (jobs.data keeps it there, read from the file's column
    `column`, `data.fields.response`); `column` names it in the error of a row without one."""
    from model.templates import chat_prompt_ids

    examples = []
    for record in records:
        response = record.meta.get("response")
        if not isinstance(response, str) or not response.strip():
            raise ValueError(f"{record.source}: no reference response in column {column!r} (got {response!r:.60}); "
                             "SFT rows need one (data.fields.response names the column)")
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
        if len(response_ids) >= gen_length:
            raise ValueError(f"{record.source}: the response has {len(response_ids)} tokens, but rollout.sampler."
                             f"gen_length={gen_length} leaves no room for an EOS; raise it above that")
        padded = tuple(response_ids) + (eos_id,) * (gen_length - len(response_ids))
        prompt = tuple(chat_prompt_ids(tokenizer, record.prompt, thinking=thinking))
        examples.append(Example(record.uid, prompt, padded, record.answer))
    return examples


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor | None]:
    """Left-pad the prompts to the longest one and append the responses (the sampler's layout).

    Returns input_ids [B, T] long, response_mask [B, T] bool (the response positions) and
    attention_mask [B, T] bool (False on left padding) or None when no row is padded.
    """
    longest = max(len(e.prompt_ids) for e in examples)
    gen_length = len(examples[0].response_ids)
    input_ids = torch.full((len(examples), longest + gen_length), pad_id, dtype=torch.long)  # [B, T]
    attention_mask = torch.ones_like(input_ids, dtype=torch.bool)  # [B, T]
    for row, example in enumerate(examples):
        start = longest - len(example.prompt_ids)
        input_ids[row, start:longest] = torch.tensor(example.prompt_ids)
        input_ids[row, longest:] = torch.tensor(example.response_ids)
        attention_mask[row, :start] = False
    response_mask = torch.zeros_like(attention_mask)  # [B, T]
    response_mask[:, longest:] = True
    return {"input_ids": input_ids, "response_mask": response_mask,
            "attention_mask": None if bool(attention_mask.all()) else attention_mask}


def make_batch(examples: list[Example], *, step: int, cfg: TrainConfig, mask_id: int, pad_id: int) -> dict:
    """Collated tensors plus step `step`'s masks, drawn from (run.seed, step) at `sft.mask_eps`
    (rl.sft.mask_responses)."""
    batch = collate(examples, pad_id)
    generator = torch.Generator().manual_seed(mask_seed(cfg.run.seed, step))
    noisy, masked, ratio = mask_responses(batch["input_ids"], batch["response_mask"], mask_id=mask_id,
                                          eps=cfg.sft.mask_eps, generator=generator)
    return {**batch, "noisy_ids": noisy, "masked": masked, "mask_ratio": ratio}


def shard(batch: dict, num_ranks: int) -> list[dict]:
    """Split every [B, ...] tensor of `batch` into num_ranks equal row blocks (None stays None)."""
    size = next(v for v in batch.values() if v is not None).shape[0] // num_ranks
    return [{k: None if v is None else v[r * size:(r + 1) * size] for k, v in batch.items()} for r in range(num_ranks)]
