"""Masked-diffusion supervised fine-tuning (the cold-start stage), on the DeepSpeed learner group.

    python -m jobs.sft --config jobs/configs/sft_demo.yaml [--set sft.max_steps=500 ...]

The objective is LLaDA's SFT loss (LLaDA paper §2.3 / its SFT guidelines). For a batch of B
(prompt, response) pairs, response i occupying the L_i positions R_i (its tokens, then EOS padding up
to `sampler.gen_length`; the padding is a target, so the model learns to stop):

    t_i ~ U(0, 1),   p_i = eps + (1 - eps) * t_i                     (mask ratio of sequence i)
    m_ij ~ Bernoulli(p_i) for j in R_i, m_ij = 0 on the prompt      (the prompt is never masked)
    x~_i = x_i with every m_ij = 1 position replaced by [MASK]
    loss = (1/B) * sum_i (1/L_i) * sum_{j in R_i, m_ij = 1} -log p_theta(x_ij | x~_i) / p_i

The 1/p_i weight makes it an upper bound of the response's negative log-likelihood (the ELBO); the
1/L_i normaliser is LLaDA SFT's "answer length" normaliser. On n data-parallel ranks each rank computes
`sum over its rows / B` (B the global batch) and the learner group turns the sum over ranks into the
gradient of the loss above (actors/learner.py).

Where the randomness lives: the driver draws (t_i, m_ij) from a generator seeded with (run.seed, step),
so a step's masks do not depend on the number of ranks; the step function `jobs.sft:sft_step` (passed to
the learner group in its "module:function" form, which every rank process can import) only computes.

Every `sft.eval_every` steps the driver pulls the weights from learner rank 0 and decodes the first
`sft.eval_size` held-out prompts `sft.eval_samples` times each with the LLaDA sampler (`sampler` section:
the settings the RL rollouts use, temperature included; greedy when it is 0), seeded by `run.seed`; pass@1 is
the mean over those responses, decoded and judged by jobs/evaluate.py (the `correctness` and `format` rewards),
the code of `python -m jobs.eval` and of in-training evaluation, so the numbers are comparable across the three.
The best checkpoint by pass@1 is kept in the published format (`<run dir>/best_policy/`, tokenizer included, and
its scored responses in `best_samples.jsonl`); training stops after
`sft.patience` evaluations without an improvement of more than `sft.min_delta` (not before
`sft.min_steps`), or at `sft.max_steps`. That checkpoint is the run's policy (`run.export_to` copies it)
unless `sft.select` is "last": then it is the weights after the last step, saved to `<run dir>/last_policy/`.
The curve goes to `<run dir>/sft_metrics.jsonl` (one line per logged train step and per evaluation).

Deviations from LLaDA's recipe: `sft.mask_eps` defaults to LLaDA's 1e-3, but the demo config uses 0.1 — with
batches of 32, a row with p ~ 1e-3 weights its few masked tokens x1000 and dominates the clipped gradient of
most steps (docs/demo.md); the learning rate is a linear warm-up then a cosine decay to
`min_lr_ratio` (LLaDA: warm-up, constant, linear decay over a known number of steps); prompts are
left-padded to the longest prompt of the batch and the padding is hidden by the attention mask, as in
the sampler (LLaDA packs same-length batches).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from actors.config import ClusterConfig, LearnerConfig
from model.sampling import TextSamplerConfig
from rl.lr_schedule import learning_rate as schedule_rate
from rl.lr_schedule import set_learning_rate


# -- config -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SFTRunConfig:
    """Where the outputs go and what seeds the run."""

    name: str = "sft"
    """Run name: outputs go to `<output_dir>/<name>/`."""
    output_dir: str = "runs"
    """Parent directory of run directories."""
    seed: int = 0
    """Seeds the data order and every step's masks."""
    torch_threads: int = 1
    """torch threads of the driver (evaluation); the learner ranks get `learner.cpus_per_rank` from Ray."""
    export_to: str | None = None
    """Also copy the run's policy (`sft.select`) here at the end (e.g. model/assets/demo_policy); None: don't."""

    def __post_init__(self):
        if not self.name or "/" in self.name:
            raise ValueError(f"name: {self.name!r} must be a non-empty directory name without '/'")
        if self.torch_threads < 1:
            raise ValueError(f"torch_threads: {self.torch_threads}; need at least 1")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


@dataclass(frozen=True)
class SFTDataConfig:
    """Rows with `prompt`, `answer` and a reference `response` (jobs/tasks/arithmetic.py writes them)."""

    train: str = "data/arithmetic/train.jsonl"
    """Training rows (.jsonl or .parquet)."""
    heldout: str = "data/arithmetic/heldout.jsonl"
    """Held-out rows for pass@1 (the first `sft.eval_size` are used)."""
    response_field: str = "response"
    """Column holding the reference response."""
    thinking: bool = False
    """Prepend the thinking instruction to prompts; must match what the RL run uses (`data.thinking`)."""

    def __post_init__(self):
        for key, value in (("train", self.train), ("heldout", self.heldout)):
            if not value.endswith((".jsonl", ".parquet")):
                raise ValueError(f"{key}: {value!r} must be a .jsonl or .parquet file")


@dataclass(frozen=True)
class SFTModelConfig:
    """The starting policy: a published-format checkpoint, or a fresh random tiny twin of this size."""

    path: str = "tiny"
    """Checkpoint directory, 'demo' (the shipped policy), or 'tiny' / 'tiny-mmada' for a random-weight twin sized
    by the fields below (model/resolve.py)."""
    d_model: int = 128
    """tiny only: hidden size."""
    n_layers: int = 4
    """tiny only: transformer blocks."""
    n_heads: int = 4
    """tiny only: attention heads (d_model / n_heads must be even)."""
    mlp_hidden_size: int = 384
    """tiny only: gated-MLP width."""
    rope_theta: float = 500000.0
    """tiny only: RoPE base (LLaDA's 500000 leaves few useful frequencies in a 32-wide head at short range)."""
    init_seed: int = 0
    """tiny only: seed of the random initial weights."""


@dataclass(frozen=True)
class SFTConfig:
    """The optimisation and early stopping."""

    max_steps: int = 4000
    """Optimizer steps at most."""
    batch_size: int = 32
    """Sequences per optimizer step (global, over all ranks)."""
    mask_eps: float = 1e-3
    """eps: mask ratios are p = eps + (1 - eps) t, t ~ U(0, 1)."""
    warmup_steps: int = 100
    """Linear warm-up of the learning rate from 0 to learner.lr."""
    min_lr_ratio: float = 0.1
    """The cosine decay ends at min_lr_ratio * learner.lr at max_steps."""
    log_every: int = 25
    """Write a train line (mean loss since the last line) every N steps."""
    eval_every: int = 250
    """Evaluate held-out pass@1 every N steps (and at step 0 and the last step)."""
    eval_size: int = 256
    """Held-out prompts evaluated (the first N rows of data.heldout)."""
    eval_batch_size: int = 64
    """Prompts decoded together during evaluation."""
    eval_samples: int = 1
    """Responses per held-out prompt; pass@1 is their mean (use > 1 with `sampler.temperature` > 0)."""
    patience: int = 4
    """Stop after this many evaluations in a row without a pass@1 gain above min_delta..."""
    min_steps: int = 0
    """...but never before this step (a policy from scratch sits at 0% for its first evaluations)."""
    min_delta: float = 0.0
    """Smallest pass@1 gain that counts as an improvement."""
    select: str = "best"
    """The run's policy (what run.export_to copies): "best", the checkpoint of the best held-out evaluation
    (`<run dir>/best_policy/`), or "last", the weights after the last step (`<run dir>/last_policy/`; for a
    fine-tune meant to change a policy's behaviour, such as a weak-teacher cold start, whose held-out accuracy
    may go down)."""

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "log_every", "eval_every", "eval_size", "eval_batch_size", "eval_samples",
                     "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: {getattr(self, name)}; need at least 1")
        if not 0 < self.mask_eps < 1:
            raise ValueError(f"mask_eps: {self.mask_eps} must lie in (0, 1), e.g. 1e-3")
        if self.min_steps < 0:
            raise ValueError(f"min_steps: {self.min_steps} must be >= 0")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps: {self.warmup_steps} must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio: {self.min_lr_ratio} must lie in [0, 1]")
        if self.select not in ("best", "last"):
            raise ValueError(f"select: {self.select!r}; use 'best' (the best held-out evaluation) or 'last'")


def _demo_sampler() -> TextSamplerConfig:
    return TextSamplerConfig(gen_length=48, steps=24, block_length=16, temperature=0.0)


def _sft_learner() -> LearnerConfig:
    return LearnerConfig(num_ranks=1, zero_stage=0, lr=1e-3, weight_decay=0.01, micro_batch_size=32)


@dataclass(frozen=True)
class SFTJobConfig:
    """The root of `python -m jobs.sft`'s config tree."""

    run: SFTRunConfig = field(default_factory=SFTRunConfig)
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    model: SFTModelConfig = field(default_factory=SFTModelConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    sampler: TextSamplerConfig = field(default_factory=_demo_sampler)
    """Evaluation decoding; `gen_length` is also the length responses are padded to with EOS."""
    learner: LearnerConfig = field(default_factory=_sft_learner)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def __post_init__(self):
        if self.sft.batch_size % self.learner.num_ranks:
            raise ValueError(f"sft.batch_size: {self.sft.batch_size} is not divisible by learner.num_ranks="
                             f"{self.learner.num_ranks}; every rank needs an equal shard")


def load_sft_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> SFTJobConfig:
    """YAML file (None: all defaults) + dotted overrides -> validated SFTJobConfig, or one ConfigError."""
    from jobs.configtree import apply_overrides, build, read_yaml

    raw = read_yaml(path) if path is not None else {}
    return build(SFTJobConfig, apply_overrides(raw, list(overrides)), source=str(path) if path else None)


# -- data ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Example:
    """One tokenised training pair."""

    uid: str
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]  # reference response + EOS padding, exactly gen_length ids
    answer: str | None


def tokenize_examples(records, tokenizer, *, response_field: str, thinking: bool, gen_length: int,
                      eos_id: int) -> list[Example]:
    """Chat-template prompts and EOS-padded responses; a response longer than gen_length is an error."""
    from model.templates import chat_prompt_ids

    examples = []
    for record in records:
        response = record.meta.get(response_field)
        if not isinstance(response, str) or not response.strip():
            raise ValueError(f"{record.source}: no reference response in column {response_field!r} "
                             f"(got {response!r:.60}); SFT rows need one (set data.response_field)")
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
        if len(response_ids) >= gen_length:
            raise ValueError(f"{record.source}: the response has {len(response_ids)} tokens, but sampler.gen_length="
                             f"{gen_length} leaves no room for an EOS; raise sampler.gen_length above it")
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


def mask_responses(input_ids: torch.Tensor, response_mask: torch.Tensor, *, mask_id: int, eps: float,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LLaDA's forward process on the response only.

    input_ids [B, T], response_mask [B, T] bool -> (noisy_ids [B, T], masked [B, T] bool,
    mask_ratio [B] float: p_i = eps + (1 - eps) t_i, t_i ~ U(0, 1)). Each response position is masked
    independently with probability p_i; prompt and padding positions never are.
    """
    t = torch.rand(input_ids.shape[0], generator=generator)  # [B]
    mask_ratio = eps + (1 - eps) * t  # [B]
    draws = torch.rand(input_ids.shape, generator=generator)  # [B, T]
    masked = (draws < mask_ratio[:, None]) & response_mask  # [B, T]
    return input_ids.masked_fill(masked, mask_id), masked, mask_ratio


def sft_loss(network, input_ids: torch.Tensor, noisy_ids: torch.Tensor, masked: torch.Tensor,
             mask_ratio: torch.Tensor, response_mask: torch.Tensor, attention_mask: torch.Tensor | None,
             num_sequences_global: int) -> torch.Tensor:
    """sum_i (1/L_i) sum_{masked j} CE_ij / p_i, divided by num_sequences_global (module docstring).

    input_ids, noisy_ids [b, T] long; masked, response_mask [b, T] bool; mask_ratio [b];
    attention_mask [b, T] bool or None. Logits are computed only at the masked positions.
    """
    hidden = network.hidden_states(noisy_ids, attention_mask)  # [b, T, d]
    logits = network.lm_head(hidden[masked]).float()  # [n_masked, V]
    token_ce = torch.nn.functional.cross_entropy(logits, input_ids[masked], reduction="none")  # [n_masked]
    response_length = response_mask.sum(1).to(torch.float32)  # [b] = L_i
    weight = 1.0 / (mask_ratio.to(torch.float32)[:, None] * response_length[:, None])  # [b, 1]
    token_weight = weight.expand_as(masked)[masked]  # [n_masked]
    return (token_ce * token_weight).sum() / num_sequences_global


def sft_step(ctx, *, input_ids, noisy_ids, masked, mask_ratio, response_mask, attention_mask,
             num_sequences_global: int, lr: float) -> dict[str, float]:
    """One optimizer step on this rank's shard, in micro-batches of learner.micro_batch_size.

    Returns this rank's share of the loss (the global loss is the sum over ranks) and its masked count.
    """
    set_learning_rate(engine_optimizer(ctx.engine), lr)
    network = ctx.engine.module
    device = ctx.device
    total, rows = 0.0, torch.arange(input_ids.shape[0])
    for part in rows.split(ctx.config.micro_batch_size):
        loss = sft_loss(network, input_ids[part].to(device), noisy_ids[part].to(device), masked[part].to(device),
                        mask_ratio[part].to(device), response_mask[part].to(device),
                        None if attention_mask is None else attention_mask[part].to(device), num_sequences_global)
        ctx.engine.backward(loss)
        total += float(loss.detach())
    ctx.engine.step()
    return {"loss": total, "masked_tokens": float(masked.sum())}


def engine_optimizer(engine: Any) -> Any:
    """The optimizer behind an `rl.update.Engine`: a DeepSpeed adapter's engine's, or a PlainEngine's."""
    deepspeed_engine = getattr(engine, "engine", None)
    return deepspeed_engine.optimizer if deepspeed_engine is not None else engine.optimizer


def learning_rate(step: int, cfg: SFTConfig, base_lr: float) -> float:
    """Linear warm-up over warmup_steps, then cosine from base_lr to min_lr_ratio * base_lr at max_steps."""
    return schedule_rate(step, base_lr, total_steps=cfg.max_steps, warmup_steps=cfg.warmup_steps, decay="cosine",
                         min_ratio=cfg.min_lr_ratio)


def step_seed(run_seed: int, step: int) -> int:
    """Seed of step `step`'s mask draws: a pure function of (run seed, step)."""
    return (run_seed * 1_000_003 + step) & 0x7FFF_FFFF_FFFF_FFFF


def make_batch(examples: list[Example], *, step: int, cfg: SFTJobConfig, mask_id: int, pad_id: int) -> dict:
    """Collated tensors plus step `step`'s masks (see `mask_responses`)."""
    batch = collate(examples, pad_id)
    generator = torch.Generator().manual_seed(step_seed(cfg.run.seed, step))
    noisy, masked, ratio = mask_responses(batch["input_ids"], batch["response_mask"], mask_id=mask_id,
                                          eps=cfg.sft.mask_eps, generator=generator)
    return {**batch, "noisy_ids": noisy, "masked": masked, "mask_ratio": ratio}


def shard(batch: dict, num_ranks: int) -> list[dict]:
    """Split every [B, ...] tensor of `batch` into num_ranks equal row blocks (None stays None)."""
    size = next(v for v in batch.values() if v is not None).shape[0] // num_ranks
    return [{k: None if v is None else v[r * size:(r + 1) * size] for k, v in batch.items()} for r in range(num_ranks)]


# -- driver -------------------------------------------------------------------------------------
def tiny_size(cfg: SFTModelConfig) -> dict[str, Any]:
    """The tiny twin's size from the `model` section (model.resolve.tiny_twin keywords; checkpoints ignore it)."""
    return {"d_model": cfg.d_model, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
            "mlp_hidden_size": cfg.mlp_hidden_size, "rope_theta": cfg.rope_theta}


def _log(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def run(cfg: SFTJobConfig) -> dict[str, Any]:
    """Train until pass@1 plateaus; returns {best_pass1, best_step, steps, seconds, best_policy, policy}."""
    import model
    from actors.cluster import create_placement_groups, init_ray, learner_role, remove_placement_groups
    from actors.learner import LearnerGroup
    from actors.network_source import build_network
    from jobs.configtree import write_yaml
    from jobs.data import PromptDataset, PromptStream
    from jobs.evaluate import evaluate_policy
    from model.checkpoint import LoadedModel
    from model.resolve import model_parts
    from model.templates import special_ids

    torch.set_num_threads(cfg.run.torch_threads)
    run_dir = cfg.run.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    write_yaml(cfg, run_dir / "config.yaml")
    metrics_path = run_dir / "sft_metrics.jsonl"
    metrics_path.write_text("")
    parts = model_parts(cfg.model.path, key="model.path", seed=cfg.model.init_seed, size=tiny_size(cfg.model))
    tokenizer = parts.tokenizer
    ids = special_ids(tokenizer)
    gen_length = cfg.sampler.gen_length
    prepare = functools.partial(tokenize_examples, tokenizer=tokenizer, response_field=cfg.data.response_field,
                                thinking=cfg.data.thinking, gen_length=gen_length, eos_id=ids.eos)
    train_set = PromptDataset(cfg.data.train, default_task="text")
    train_examples = {e.uid: e for e in prepare(train_set.records)}
    heldout = PromptDataset(cfg.data.heldout, default_task="text").records[:cfg.sft.eval_size]
    eval_sampler = dataclasses.asdict(cfg.sampler)
    stream = PromptStream(train_set, seed=cfg.run.seed, shuffle=True)

    eval_network, _ = build_network(parts.source, cfg.learner.dtype)
    print(f"[sft] {len(train_examples)} training rows, {len(heldout)} held-out; policy "
          f"{sum(p.numel() for p in eval_network.parameters()) / 1e6:.2f}M parameters; run dir {run_dir}", flush=True)

    role = learner_role(cfg.learner)
    init_ray(cfg.cluster, [role])
    groups = create_placement_groups([role], cfg.cluster)
    group = LearnerGroup(cfg.learner, parts.source, placement_group=groups[role.name])
    best = {"pass1": -1.0, "step": -1}
    started = time.perf_counter()
    evals_without_gain, losses, step = 0, [], 0

    def evaluate_now(step: int) -> bool:
        """Evaluate, keep the best checkpoint; True when patience has run out."""
        nonlocal evals_without_gain
        eval_network.load_state_dict(group.state_dict_for_sync())
        eval_started = time.perf_counter()
        policy = LoadedModel(network=eval_network, tokenizer=tokenizer, config=eval_network.config)
        rows, scores = evaluate_policy(policy, heldout, samples=cfg.sft.eval_samples, sampler=eval_sampler,
                                       thinking=cfg.data.thinking, seed=cfg.run.seed,
                                       batch_size=cfg.sft.eval_batch_size)
        pass1 = scores["pass_at_k"]["1"]
        record = {"step": step, "heldout_pass1": pass1, "format_rate": scores["format_rate"],
                  "eval_seconds": round(time.perf_counter() - eval_started, 2),
                  "wall_seconds": round(time.perf_counter() - started, 1)}
        if pass1 > best["pass1"] + cfg.sft.min_delta:
            best.update(pass1=pass1, step=step)
            model.save((eval_network, tokenizer), run_dir / "best_policy", max_shard_bytes=None)
            (run_dir / "best_samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            evals_without_gain = 0
        else:
            evals_without_gain += 1
        record["best_pass1"] = best["pass1"]
        _log(metrics_path, {"kind": "eval", **record})
        print(f"[sft] eval step {step}: held-out pass@1 {pass1:.3f} (best {best['pass1']:.3f} at "
              f"{best['step']}), format {scores['format_rate']:.3f}, {record['wall_seconds']:.0f}s", flush=True)
        return evals_without_gain >= cfg.sft.patience and step >= cfg.sft.min_steps

    try:
        stop = evaluate_now(0)
        while not stop and step < cfg.sft.max_steps:
            records = stream.next_batch(cfg.sft.batch_size)
            batch = make_batch([train_examples[r.uid] for r in records], step=step, cfg=cfg, mask_id=ids.mask,
                               pad_id=ids.pad)
            lr = learning_rate(step, cfg.sft, cfg.learner.lr)
            stats = group.train_step("jobs.sft:sft_step", shard(batch, cfg.learner.num_ranks),
                                     num_sequences_global=cfg.sft.batch_size, lr=lr)
            losses.append(sum(s["loss"] for s in stats))
            step += 1
            if step % cfg.sft.log_every == 0:
                _log(metrics_path, {"kind": "train", "step": step, "loss": sum(losses) / len(losses), "lr": lr,
                                    "grad_norm": stats[0].get("grad_norm"), "epoch": stream.epoch,
                                    "wall_seconds": round(time.perf_counter() - started, 1)})
                print(f"[sft] step {step}: loss {sum(losses) / len(losses):.4f} lr {lr:.2e}", flush=True)
                losses = []
            if step % cfg.sft.eval_every == 0 or step == cfg.sft.max_steps:
                stop = evaluate_now(step)
        if cfg.sft.select == "last":
            eval_network.load_state_dict(group.state_dict_for_sync())
            model.save((eval_network, tokenizer), run_dir / "last_policy", max_shard_bytes=None)
    finally:
        group.shutdown()
        remove_placement_groups(groups)
    seconds = time.perf_counter() - started
    policy = run_dir / f"{cfg.sft.select}_policy"
    summary = {"best_pass1": best["pass1"], "best_step": best["step"], "steps": step, "seconds": round(seconds, 1),
               "best_policy": str(run_dir / "best_policy"), "policy": str(policy)}
    if cfg.run.export_to:
        target = Path(cfg.run.export_to)
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(policy, target)
        summary["exported_to"] = str(target)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"[sft] done: best held-out pass@1 {best['pass1']:.3f} at step {best['step']} after {step} steps, "
          f"{seconds / 60:.1f} min; the {cfg.sft.select} policy is in {summary.get('exported_to', policy)}", flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.sft", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="YAML config (default: all defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override, e.g. sft.max_steps=500 (repeatable)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    run(load_sft_config(args.config, args.overrides))
    return 0


if __name__ == "__main__":
    sys.exit(main())
