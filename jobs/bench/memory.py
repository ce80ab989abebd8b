"""`python -m jobs.bench memory`: the GPU memory a run needs, per learner rank and per rollout worker.

    python -m jobs.bench memory --config jobs/configs/llada8b_gsm8k_lora_1gpu.yaml [--set ...] [--gpu-gib 80] [--json]
    python -m jobs.bench memory --gpu-bench      # the two set-ups measured in docs/gpu.md, predicted vs measured

Nothing is loaded: the parameter shapes come from the network built on the meta device from the backbone config
(a checkpoint's config.json, a tiny twin's, or a published shape when `model.path` is not downloaded yet:
`resolve_shape`). The terms (weights, trainable parameters, gradients, optimizer state, reference, activations of
one micro-batch with or without gradient checkpointing, the sampler's working set) and the formulas behind each
are in docs/gpu.md §Memory planner; `activation_bytes` is checked against torch's measured CPU peak on the tiny
model and the whole plan against the two GPU measurements (tests/jobs/test_bench_memory.py). A learner rank and
a rollout worker that share a GPU (`learner.gpus_per_rank` < 1) add up: each process keeps what its allocator
reserved.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

GIB = 2**30
PROMPT_LENGTH = 256
"""Prompt tokens planned for (`--prompt-length`): the planner does not tokenize the data, so give the longest
prompt of yours, chat template included, when it is longer."""
PUBLISHED = {"LLaDA-8B-Instruct": "llada-8b", "LLaDA-8B-Base": "llada-8b", "MMaDA-8B-Base": "mmada-8b",
             "MMaDA-8B-MixCoT": "mmada-8b"}
"""Checkpoint directory names (the last component of `model.path`) -> the published shape they have."""
MEASUREMENTS = Path(__file__).resolve().parents[2] / "docs" / "measurements" / "gpu_h200_8b.json"
FP32 = 4


def published_shapes() -> dict[str, Any]:
    """The published LLaDA-8B and MMaDA-8B backbone configs (docs/models.md §1.1, §1.4)."""
    from jobs.bench.gpu import LLADA_8B

    mmada = {"new_vocab_size": 134656, "llm_vocab_size": 126464, "codebook_size": 8192, "num_vq_tokens": 1024,
             "num_new_special_tokens": 0}
    return {"llada-8b": LLADA_8B,
            "mmada-8b": dataclasses.replace(LLADA_8B, vocab_size=134656, embedding_size=134656, model_type="mmada",
                                            mmada=mmada)}


class PlanError(ValueError):
    """A model the planner cannot size; the message names the key and what would be right."""


def resolve_shape(path: str, tiny_size: dict | None = None, *, key: str = "model.path") -> tuple[Any, str]:
    """(BackboneConfig, where it came from) for `model.path`, without reading a weight.

    A checkpoint directory: its config.json. 'tiny' / 'tiny-mmada': the twin's config. A path that does not
    exist yet whose last component names a published checkpoint (`PUBLISHED`, e.g. .../LLaDA-8B-Instruct): that
    checkpoint's published shape, so a recipe can be planned before its weights are downloaded."""
    from model.resolve import DEMO_POLICY, TINY_NAMES, tiny_twin

    if path in TINY_NAMES:
        return tiny_twin(path, **dict(tiny_size or {})).config, f"the {path} twin"
    directory = DEMO_POLICY if path == "demo" else Path(path)
    if (directory / "config.json").is_file():
        from model.checkpoint import config_from_json, read_json

        try:
            return config_from_json(read_json(directory / "config.json"), str(directory / "config.json")), \
                f"{directory / 'config.json'}"
        except ValueError as exc:
            raise PlanError(f"{key}: {exc}") from exc
    name = directory.name
    if name in PUBLISHED:
        return published_shapes()[PUBLISHED[name]], f"the published {name} shape ({path} is not downloaded yet)"
    raise PlanError(f"{key}: {path!r} has no config.json and its name is none of the published checkpoints "
                    f"{', '.join(PUBLISHED)}; give a checkpoint directory, 'tiny' or 'tiny-mmada', or name the "
                    "directory after the checkpoint it will hold")


def meta_parts(config):
    """(one block, the rest) of `config`'s network on the meta device: shapes only, no memory. Blocks are alike, so
    one is built (a network of one layer) and counted n_layers times: 8B shapes in a fraction of a second."""
    import torch

    from model.network import MaskedDiffusionLM

    with torch.device("meta"):
        network = MaskedDiffusionLM(dataclasses.replace(config, n_layers=1))
    block = network.transformer.blocks[0]
    rest = [p for name, p in network.named_parameters() if not name.startswith("model.transformer.blocks.")]
    return block, rest


def parameter_count(config) -> int:
    block, rest = meta_parts(config)
    return config.n_layers * sum(p.numel() for p in block.parameters()) + sum(p.numel() for p in rest)


def lora_parameter_count(config, rank: int, targets) -> int:
    """Adapter parameters: rank × (in + out) for every targeted linear layer of every block (A is [r, in],
    B is [out, r]); the LM head never gets one."""
    block, _ = meta_parts(config)
    per_block = sum(rank * (getattr(block, t).in_features + getattr(block, t).out_features) for t in targets)
    return per_block * config.n_layers


# -- activations --------------------------------------------------------------------------------------------------
def block_saved_bytes(config, tokens: int, act: int) -> int:
    """Bytes one block keeps for backward over `tokens` = rows × T (model/network.py `Block.forward`).

    `act` bytes per activation (2 bf16, 4 fp32). Per token, d = d_model, kv = n_kv_heads × head_dim:
      attn_norm: 4·d, its input in fp32 (in bf16 an fp32 copy, and the bf16 input is not kept; in fp32 the input
      itself) + act·d (normalised) + act·d (h, the q/k/v input)
      RoPE(q), RoPE(k): act·d, act·kv (the SDPA inputs; the rotation saves only its cos/sin tables)
      v: act·kv; SDPA: act·d output (laid out [B, T, H, hd], so merging the heads is a view) + 4·n_heads
      (log-sum-exp); ff_norm of x + attn: 4·d + 2·act·d; MLP: 4·act·mlp (gate, SiLU, up, product)
    With grouped-query heads SDPA saves repeat_interleave's copies of k and v (act·d each) instead."""
    d, kv, heads = config.d_model, config.kv_heads * config.head_dim, config.n_heads
    norms = 2 * (FP32 + 2 * act) * d  # attn_norm on x; ff_norm on x + attn
    keys_values = 2 * act * (d if kv != d else kv)
    attention = act * d + keys_values + act * d + FP32 * heads  # q, k, v, output, log-sum-exp
    return tokens * (norms + attention + 4 * act * config.mlp_hidden_size)


def head_saved_bytes(config, tokens: int, scored: int, act: int) -> int:
    """Bytes kept for backward past the blocks (rl/logprobs.py `token_logprobs`): ln_f (its input in fp32, 4·d, as
    in `block_saved_bytes`, and the normalised act·d per token) and each chunk's gathered features (act·d per scored token,
    kept for the chunk's recomputation); the chunks' logits are recomputed in backward."""
    return tokens * (FP32 + act) * config.d_model + scored * act * config.d_model


def head_transient_bytes(config, chunk: int, act: int) -> int:
    """The largest temporary of the log-prob head: one chunk's [chunk, V] logits in backward, recomputed (act),
    their fp32 copy (up), two fp32 gradients (log-sum-exp's and gather's) and their sum in the logits' dtype
    (act): 16 bytes per logit in fp32 and in bf16, as measured on CPU (tests/jobs/test_bench_memory.py)."""
    up = 0 if act == FP32 else FP32
    return chunk * config.num_embeddings * (2 * act + up + 2 * FP32)


def block_backward_transient_bytes(config, tokens: int, act: int) -> int:
    """Gradients alive while a block runs backward on top of what it saved: the [tokens, mlp] gradient of the
    MLP's product and two [tokens, d] ones (the residual stream's and the one being added to it)."""
    return tokens * act * (config.mlp_hidden_size + 2 * config.d_model)


def activation_bytes(config, *, rows: int, seq_len: int, scored: int, act: int, checkpointing: bool,
                     chunk: int) -> dict[str, int]:
    """{"retained": kept from the end of the forward pass to backward, "peak": the most above the weights at once}
    for one micro-batch of `rows` sequences of `seq_len` tokens, `scored` of them scored by the head.

    Without checkpointing every block keeps `block_saved_bytes`; with it a block keeps only its input and one block
    at a time recomputes the rest in backward. The peak is reached in backward: at the head (every activation
    still kept, plus one chunk's logits) or, with checkpointing, at a recomputed block."""
    tokens = rows * seq_len
    block = block_saved_bytes(config, tokens, act)
    kept_per_block = tokens * act * config.d_model if checkpointing else block
    retained = config.n_layers * kept_per_block + head_saved_bytes(config, tokens, scored, act)
    in_block = (block if checkpointing else 0) + block_backward_transient_bytes(config, tokens, act)
    peak = retained + max(head_transient_bytes(config, min(chunk, max(scored, 1)), act), in_block)
    return {"retained": retained, "peak": peak}


def forward_bytes(config, tokens: int, act: int) -> int:
    """The most a no-grad forward pass over `tokens` holds at once, counted per token: four [d] tensors in act (the
    residual stream, the normalised input, the attention's q/k/v and output as they come and go), four fp32 [d]
    temporaries of RMSNorm and RoPE, and the MLP's three [mlp] tensors (SiLU's, up's, their product); the sampler
    measurement on the H200 (docs/gpu.md) agrees within 1 %."""
    return tokens * (4 * act * config.d_model + 4 * FP32 * config.d_model + 3 * act * config.mlp_hidden_size)


def sampler_bytes(config, *, rows: int, seq_len: int, block_length: int, act: int, temperature: float,
                  cfg_scale: float = 0.0, cache: str = "none") -> int:
    """The text sampler's working set above its weights (model/sampling.py, no grad): one forward over
    copies × rows × T tokens (`forward_bytes`), then the current block's logits
    [rows, block, V] (act), their fp32 softmax and, at τ > 0, the float64 logits and Gumbel noise (2 × 8 bytes);
    with a KV cache (`cache` prefix / dual), 2 × layers × kv keys and values per token."""
    copies = 2 if cfg_scale > 0 else 1
    tokens = copies * rows * seq_len
    forward = forward_bytes(config, tokens, act)
    logits = rows * block_length * config.num_embeddings * (copies * act + FP32 + (16 if temperature > 0 else 0))
    cache_bytes = 0 if cache == "none" else tokens * 2 * config.n_layers * config.kv_heads * config.head_dim * act
    return cache_bytes + max(forward, logits + tokens * act * config.d_model)


def image_sampler_bytes(config, *, rows: int, seq_len: int, act: int, guidance: float) -> int:
    """The t2i sampler's working set (model/image_sampling.py): one forward over copies × rows × T tokens
    (`forward_bytes`), then the image-code logits [copies × rows, slots, codebook] (act), their fp32 combination and
    one row's float64 log-softmax and Gumbel noise."""
    copies = 2 if guidance > 0 else 1
    tokens = copies * rows * seq_len
    slots, codes = config.mmada["num_vq_tokens"], config.mmada["codebook_size"]
    forward = forward_bytes(config, tokens, act)
    logits = copies * rows * slots * codes * act + rows * slots * codes * FP32 + 2 * slots * codes * 8
    return max(forward, logits + tokens * act * config.d_model)


# -- the plan -----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Row:
    """One line of a plan: what, how many bytes, and how it was counted."""

    what: str
    bytes: int
    how: str


@dataclasses.dataclass(frozen=True)
class LearnerSetup:
    """What decides a learner rank's memory (from the config: `learner_setup`)."""

    params: int                 # the network's parameters
    trainable: int              # parameters the optimizer updates (LoRA: the adapters)
    weight_bytes: int           # per base parameter (2 bf16, 4 fp32)
    trainable_bytes: int        # per trainable parameter and per gradient element
    optimizer_bytes: int        # per trainable parameter: AdamW moments (+ fp32 master weights under bf16)
    ranks: int
    zero_stage: int
    reference: str              # "copy": a full frozen copy per rank, "partitioned": sharded like the weights
                                # under ZeRO-3, "adapters_off": LoRA's base with adapters disabled, "none": β = 0
    activations: dict[str, int]
    optimizer_how: str


def learner_rows(setup: LearnerSetup) -> list[Row]:
    """A rank's memory as ZeRO partitions it (stage 1: optimizer state / N, 2: + gradients, 3: + weights)."""
    n = setup.ranks
    share = {k: (n if setup.zero_stage >= s else 1) for k, s in (("opt", 1), ("grad", 2), ("weights", 3))}
    lora = setup.trainable != setup.params
    base = setup.params * setup.weight_bytes // share["weights"]
    rows = [Row("base weights", base, f"{setup.params:,} params × {setup.weight_bytes} B"
                + (f" / {n} ranks (ZeRO-3)" if share["weights"] > 1 else ""))]
    if lora:
        rows.append(Row("trainable (LoRA adapters)", setup.trainable * setup.trainable_bytes // share["weights"],
                        f"{setup.trainable:,} params × {setup.trainable_bytes} B"))
    rows.append(Row("gradients", setup.trainable * setup.trainable_bytes // share["grad"],
                    f"{setup.trainable:,} × {setup.trainable_bytes} B" + (f" / {n}" if share["grad"] > 1 else "")))
    rows.append(Row("optimizer state", setup.trainable * setup.optimizer_bytes // share["opt"],
                    f"{setup.trainable:,} × {setup.optimizer_bytes} B ({setup.optimizer_how})"
                    + (f" / {n}" if share["opt"] > 1 else "")))
    reference = {"copy": setup.params * setup.weight_bytes, "partitioned": base, "adapters_off": 0, "none": 0}
    rows.append(Row("reference", reference[setup.reference], {
        "copy": "a full frozen copy on every rank", "partitioned": "partitioned like the weights (ZeRO-3)",
        "adapters_off": "the base with adapters disabled: no copy", "none": "algo.beta = 0: none"}[setup.reference]))
    rows.append(Row("activations (peak of a micro-batch)", setup.activations["peak"],
                    f"{setup.activations['retained'] / GIB:.2f} GiB kept for backward + the largest temporary"))
    return rows


def optimizer_bytes(dtype: str) -> tuple[int, str]:
    """DeepSpeed's AdamW: two fp32 moments, plus fp32 master weights when the weights are bf16."""
    return (12, "fp32 master + 2 fp32 moments") if dtype == "bf16" else (8, "2 fp32 moments")


def sequence_length(cfg, config, prompt_length: int) -> int:
    """The longest row a step can hold: text (prompt + response), and with an image tokenizer on an MMaDA model
    also understanding (<|mmu|> <|soi|> image <|eoi|> + prompt + response) and t2i (text part + <|soi|> image
    <|eoi|>)."""
    text = prompt_length + cfg.rollout.sampler.gen_length
    if cfg.rollout.image_tokenizer is None or not config.mmada:
        return text
    slots = config.mmada["num_vq_tokens"]
    return max(text + slots + 3, cfg.rollout.image_sampler.text_length + slots + 2)


def views_per_row(algo) -> int:
    """K, the masked copies of a row scored side by side (rl/estimators.py)."""
    return algo.random_masking.copies if algo.estimator == "random_masking" else 1


def activation_dtype_bytes(cfg) -> int:
    """Bytes per weight and activation: the learner and the workers run in `learner.dtype`."""
    return 2 if cfg.learner.dtype == "bf16" else FP32


def learner_setup(cfg, config, prompt_length: int) -> LearnerSetup:
    """The learner of `cfg` (a TrainConfig) on the backbone `config`."""
    learner, act = cfg.learner, activation_dtype_bytes(cfg)
    params = parameter_count(config)
    lora = learner.lora
    trainable = lora_parameter_count(config, lora.rank, lora.target_modules) if lora else params
    rows_per_rank = cfg.run.prompts_per_step * cfg.algo.group_size // learner.num_ranks
    micro = min(learner.micro_batch_size, rows_per_rank) * views_per_row(cfg.algo)
    seq_len = sequence_length(cfg, config, prompt_length)
    scored = micro * cfg.rollout.sampler.gen_length
    per_param, how = optimizer_bytes(learner.dtype)
    if cfg.algo.beta == 0:
        reference = "none"
    elif lora:
        reference = "adapters_off"
    else:  # actors/learner.py: under ZeRO-3 the frozen copy is partitioned like the policy
        reference = "partitioned" if learner.zero_stage == 3 else "copy"
    return LearnerSetup(
        params=params, trainable=trainable, weight_bytes=act, trainable_bytes=act, optimizer_bytes=per_param,
        ranks=learner.num_ranks, zero_stage=learner.zero_stage, reference=reference,
        activations=activation_bytes(config, rows=micro, seq_len=seq_len, scored=scored, act=act,
                                     checkpointing=learner.gradient_checkpointing,
                                     chunk=cfg.algo.logprob_chunk_size),
        optimizer_how=how)


def worker_rows(cfg, config, prompt_length: int) -> list[Row]:
    """A rollout worker: its weights in `learner.dtype` and the largest of the samplers' working sets: text and t2i
    for a whole shard (the prompts of a step × G / workers, sampled in one call), and the text sampler for a batch
    of the held-out evaluation when the workers run it (`eval.where`)."""
    act = activation_dtype_bytes(cfg)
    params = parameter_count(config)
    rows = cfg.run.prompts_per_step * cfg.algo.group_size // cfg.rollout.num_workers
    sampler = cfg.rollout.sampler
    seq_len = sequence_length(cfg, config, prompt_length)
    working = sampler_bytes(config, rows=rows, seq_len=seq_len,
                            block_length=sampler.block_length, act=act, temperature=sampler.temperature,
                            cfg_scale=sampler.cfg_scale, cache=sampler.cache)
    how = f"{rows} rows × {seq_len} tokens, blocks of {sampler.block_length}, cache {sampler.cache}"
    if cfg.data.eval and cfg.eval.where == "rollout_workers" and cfg.eval.batch_size > rows:
        working = max(working, sampler_bytes(config, rows=cfg.eval.batch_size, seq_len=seq_len,
                                             block_length=sampler.block_length, act=act,
                                             temperature=cfg.eval.temperature, cfg_scale=sampler.cfg_scale,
                                             cache=sampler.cache))
        how += f"; held-out batches of {cfg.eval.batch_size}"
    if cfg.rollout.image_tokenizer is not None and config.mmada:
        image = cfg.rollout.image_sampler
        t2i = image_sampler_bytes(config, rows=rows, seq_len=image.text_length + config.mmada["num_vq_tokens"] + 2,
                                  act=act, guidance=image.guidance_scale)
        working, how = max(working, t2i), how + f"; t2i {config.mmada['num_vq_tokens']} slots"
    return [Row("weights", params * act, f"{params:,} params × {act} B"),
            Row("sampler working set", working, how)]


@dataclasses.dataclass(frozen=True)
class Plan:
    """Per learner rank and per rollout worker; `gpu_gib` is the memory of one GPU."""

    shape: str
    learner: list[Row]
    worker: list[Row]
    learner_on_gpu: bool
    worker_on_gpu: bool
    colocated: bool
    gpu_gib: float

    @property
    def learner_bytes(self) -> int:
        return sum(r.bytes for r in self.learner)

    @property
    def worker_bytes(self) -> int:
        return sum(r.bytes for r in self.worker)

    def per_gpu(self) -> dict[str, int]:
        """What each kind of GPU holds: a learner rank's, a worker's, or both when they share one."""
        if self.colocated:
            return {"learner rank + rollout worker": self.learner_bytes + self.worker_bytes}
        return {name: total for name, total, on in (("learner rank", self.learner_bytes, self.learner_on_gpu),
                                                    ("rollout worker", self.worker_bytes, self.worker_on_gpu)) if on}

    @property
    def fits(self) -> bool:
        return all(total <= self.gpu_gib * GIB for total in self.per_gpu().values())

    def to_dict(self) -> dict[str, Any]:
        def rows(items: list[Row]) -> list[dict[str, Any]]:
            return [dict(what=r.what, gib=r.bytes / GIB, bytes=r.bytes, how=r.how) for r in items]

        return dict(shape=self.shape, gpu_gib=self.gpu_gib, colocated=self.colocated,
                    learner=rows(self.learner), worker=rows(self.worker),
                    learner_gib=self.learner_bytes / GIB, worker_gib=self.worker_bytes / GIB,
                    per_gpu_gib={k: v / GIB for k, v in self.per_gpu().items()}, fits=self.fits)


def plan_for(cfg, *, gpu_gib: float = 80.0, prompt_length: int = PROMPT_LENGTH) -> Plan:
    """The plan of a TrainConfig; raises PlanError when `model.path` cannot be sized."""
    config, shape = resolve_shape(cfg.model.path, cfg.model.tiny_size)
    learner_gpus, worker_gpus = cfg.learner.gpus_per_rank, cfg.rollout.gpus_per_worker
    return Plan(shape=shape, learner=learner_rows(learner_setup(cfg, config, prompt_length)),
                worker=worker_rows(cfg, config, prompt_length), learner_on_gpu=learner_gpus > 0,
                worker_on_gpu=worker_gpus > 0, colocated=0 < learner_gpus < 1 and 0 < worker_gpus < 1
                and learner_gpus + worker_gpus <= 1, gpu_gib=gpu_gib)


def format_plan(plan: Plan) -> str:
    """The plan as a readable table."""
    lines = [f"memory plan ({plan.shape}), GiB:"]
    for title, rows, total in (("learner rank", plan.learner, plan.learner_bytes),
                               ("rollout worker", plan.worker, plan.worker_bytes)):
        lines.append(f"  {title}")
        lines += [f"    {r.what:<38} {r.bytes / GIB:8.2f}   {r.how}" for r in rows]
        lines.append(f"    {'total':<38} {total / GIB:8.2f}")
    for name, total in plan.per_gpu().items():
        verdict = "fits" if total <= plan.gpu_gib * GIB else "does NOT fit"
        lines.append(f"  one GPU holds a {name}: {total / GIB:.2f} GiB, {verdict} in {plan.gpu_gib:g} GiB")
    if not plan.per_gpu():
        lines.append("  no GPU requested (learner.gpus_per_rank and rollout.gpus_per_worker are 0)")
    return "\n".join(lines)


# -- the two GPU measurements of docs/gpu.md -----------------------------------------------------------------------
def gpu_bench_predictions(measured: dict) -> list[dict[str, Any]]:
    """The planner on the set-ups `python -m jobs.bench gpu` measured (its JSON, `measured`): the update (plain
    torch AdamW on bf16 weights: weights, gradients and both moments bf16; a second random network as π_ref, or
    with `--lora` the adapters trained against the network with adapters disabled; one micro-batch of every row,
    checkpointing on) and the exact sampler at each temperature."""
    from actors.config import LORA_TARGETS  # `jobs.bench gpu --lora` adapts every block linear
    from jobs.bench.gpu import LLADA_8B

    config, update, lora = LLADA_8B, measured["update"], measured.get("lora")
    params = parameter_count(config)
    adapters = 0 if lora is None else lora_parameter_count(config, lora["rank"], LORA_TARGETS)
    gen = measured["sampler"][0]["gen_length"]
    setup = LearnerSetup(
        params=params, trainable=adapters or params, weight_bytes=2, trainable_bytes=2, optimizer_bytes=4, ranks=1,
        zero_stage=0, reference="adapters_off" if lora else "copy", optimizer_how="torch AdamW, 2 bf16 moments",
        activations=activation_bytes(config, rows=update["rows"], seq_len=update["seq_len"],
                                     scored=update["rows"] * gen, act=2, checkpointing=True, chunk=1024))
    out = [dict(what="update", predicted_gib=sum(r.bytes for r in learner_rows(setup)) / GIB,
                measured_gib=update["peak_gib"])]
    for run in measured["sampler"]:
        working = sampler_bytes(config, rows=run["batch"], seq_len=run["prompt_length"] + run["gen_length"],
                                block_length=run["block_length"], act=2, temperature=run["temperature"])
        out.append(dict(what=f"sampler τ {run['temperature']:g}",
                        predicted_gib=((params + adapters) * 2 + working) / GIB, measured_gib=run["peak_gib"]))
    for row in out:
        row["error"] = row["predicted_gib"] / row["measured_gib"] - 1
    return out


def main(argv: list[str]) -> int:
    from jobs.config import DEFAULT_CONFIG, load_config
    from jobs.configtree import ConfigError

    parser = argparse.ArgumentParser(prog="python -m jobs.bench memory", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, metavar="FILE", help="the run's YAML config (default: the demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value (repeatable), as jobs.train's --set")
    parser.add_argument("--gpu-gib", type=float, default=80.0, help="memory of one GPU, GiB (default 80)")
    parser.add_argument("--prompt-length", type=int, default=PROMPT_LENGTH, help="prompt tokens planned for")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--gpu-bench", action="store_true",
                        help="predict the set-ups `python -m jobs.bench gpu` measured (--measured)")
    parser.add_argument("--measured", type=Path, default=MEASUREMENTS, metavar="JSON",
                        help="that run's --out file (default: "
                             f"{MEASUREMENTS.relative_to(MEASUREMENTS.parents[2])})")
    args = parser.parse_args(argv)
    if args.gpu_gib <= 0 or args.prompt_length < 1:
        parser.error(f"--gpu-gib {args.gpu_gib:g} and --prompt-length {args.prompt_length} must be positive")
    if args.gpu_bench:
        try:
            rows = gpu_bench_predictions(json.loads(args.measured.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"error: --measured {args.measured}: not a `python -m jobs.bench gpu --out` file of the 8B shape "
                  f"with an update ({type(exc).__name__}: {exc})", file=sys.stderr)
            return 2
        if args.json:
            print(json.dumps(rows, indent=2))
        for row in [] if args.json else rows:
            print(f"{row['what']:<14} predicted {row['predicted_gib']:6.2f} GiB, measured {row['measured_gib']:6.2f} "
                  f"GiB ({100 * row['error']:+.1f} %)")
        return 0
    try:
        cfg = load_config(args.config or DEFAULT_CONFIG, args.overrides)
        plan = plan_for(cfg, gpu_gib=args.gpu_gib, prompt_length=args.prompt_length)
    except (ConfigError, PlanError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(plan.to_dict(), indent=2) if args.json else format_plan(plan))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
