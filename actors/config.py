"""Config sections owned by `actors/` (composed into the root tree by `jobs/config.py`).

Sections: `rollout` (the resources part: how many rollout workers and what each holds, plus weight
sync), `learner` (data-parallel DeepSpeed ranks and the optimizer), `cluster` (where Ray runs and how
actors are placed), `checkpoint`, `logging` and `reward_actors` (how `actors.rewards` spreads the reward terms
over Ray actors).

Every field has a default and says what it is; cross-field checks raise
`ValueError("<field>: <what is wrong>; <what is right>")` and the loader prefixes the dotted path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from model.image_sampling import ImageSamplerConfig
from model.sampling import TextSamplerConfig
from rl.lr_schedule import check_schedule

PlacementStrategy = Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]


def _check_resources(prefix: str, cpus: float, gpus: float) -> None:
    if cpus < 0:
        raise ValueError(f"cpus_per_{prefix}: {cpus} is negative; use 0 or more CPUs")
    if gpus < 0:
        raise ValueError(f"gpus_per_{prefix}: {gpus} is negative; use 0 (CPU) or more GPUs")
    if gpus > 1 and gpus != int(gpus):
        raise ValueError(f"gpus_per_{prefix}: {gpus} is a fraction above 1; use a whole number or a fraction <= 1")


def _check_deadline(name: str, seconds: float) -> None:
    """A deadline (docs/reliability.md §14) is a finite number of seconds > 0."""
    if not 0 < seconds < math.inf:
        raise ValueError(f"{name}: {seconds}; expected a finite number of seconds > 0")


@dataclass(frozen=True)
class WeightSyncConfig:
    """How new policy weights travel from learner rank 0 to the rollout workers."""

    backend: Literal["object_store", "broadcast"] = "object_store"
    """object_store: bucketed through Ray's object store (CPU, cross-node); broadcast: a torch.distributed
    group of learner rank 0 + the workers (NCCL when they hold GPUs, gloo otherwise)."""
    bucket_mb: float = 256.0
    """Largest bucket of packed tensors, in MiB (a single larger tensor travels alone)."""
    timeout_s: float = 600.0
    """Deadline, in seconds, for a worker to apply a version (broadcast: for the whole collective); a worker past
    it is replaced at that version (broadcast: the sync fails naming it)."""

    def __post_init__(self):
        if self.bucket_mb <= 0:
            raise ValueError(f"bucket_mb: {self.bucket_mb} must be positive; e.g. 256")
        _check_deadline("timeout_s", self.timeout_s)


@dataclass(frozen=True)
class RolloutConfig:
    """Rollout workers: resources, weight sync and the sampler they run."""

    num_workers: int = 1
    """Number of RolloutWorker actors."""
    cpus_per_worker: float = 1.0
    """Ray CPUs reserved by each worker."""
    gpus_per_worker: float = 0.0
    """GPUs per worker: 0 runs on CPU; a fraction <= 1 shares a GPU."""
    start_timeout_s: float = 600.0
    """Deadline, in seconds, for a worker to start (build its network, load the checkpoint), at the start of a run
    and when it replaces one; past it the run stops."""
    sample_timeout_s: float = 1800.0
    """Deadline, in seconds from dispatch, for a worker to sample its shard of a step; a worker past it is treated
    as dead: killed, replaced with the current weights, its shard re-sampled (health/worker_timeouts)."""
    weight_sync: WeightSyncConfig = field(default_factory=WeightSyncConfig)
    """How weights reach the workers after each update."""
    sampler: TextSamplerConfig = field(default_factory=TextSamplerConfig)
    """Text sampler knobs (docs/models.md §3.1): gen_length, steps, block_length, temperature, remasking,
    cfg_scale."""
    image_sampler: ImageSamplerConfig = field(default_factory=ImageSamplerConfig)
    """Text-to-image sampler knobs (docs/models.md §3.2): steps, guidance_scale, temperature,
    temperature_schedule, text_length. Used by t2i requests only."""
    image_tokenizer: str | None = None
    """Directory of the MAGVIT-v2 image tokenizer every worker loads (needed for mmu and t2i requests; its
    codebook must match the MMaDA model's); None: the workers sample text only."""

    def __post_init__(self):
        if self.num_workers < 1:
            raise ValueError(f"num_workers: {self.num_workers}; need at least 1 rollout worker")
        if self.image_tokenizer is not None and not str(self.image_tokenizer).strip():
            raise ValueError("image_tokenizer: empty string; use null (no image tokenizer) or a directory path")
        _check_resources("worker", self.cpus_per_worker, self.gpus_per_worker)
        _check_deadline("start_timeout_s", self.start_timeout_s)
        _check_deadline("sample_timeout_s", self.sample_timeout_s)


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")
"""The linear layers of a transformer block (model/network.py `Block`) that LoRA adapters may wrap."""


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapters (peft) trained instead of the full weights; the reference is the base with adapters off."""

    rank: int = 8
    """Adapter rank r (d1 / diffu-GRPO train LLaDA-8B at 128)."""
    alpha: float = 16.0
    """Scaling numerator: the adapter's update is (alpha / rank) * B A x."""
    dropout: float = 0.0
    """Dropout on the adapter's input during training (0: none, so rollouts and updates see the same policy)."""
    target_modules: tuple[str, ...] = LORA_TARGETS
    """Which linear layers of every block get an adapter; names from LORA_TARGETS (the LM head never does)."""

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"rank: {self.rank}; need a positive adapter rank, e.g. 8 or 128")
        if self.alpha <= 0:
            raise ValueError(f"alpha: {self.alpha} must be positive, e.g. 2 x rank")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout: {self.dropout} must lie in [0, 1)")
        unknown = [name for name in self.target_modules if name not in LORA_TARGETS]
        if unknown or not self.target_modules:
            raise ValueError(f"target_modules: {list(self.target_modules)}; use a non-empty list of "
                             f"{', '.join(LORA_TARGETS)}")


@dataclass(frozen=True)
class LearnerConfig:
    """Data-parallel learner ranks, each a Ray actor running a DeepSpeed engine."""

    num_ranks: int = 1
    """Data-parallel ranks (one torch.distributed process each)."""
    cpus_per_rank: float = 1.0
    """Ray CPUs reserved by each rank."""
    gpus_per_rank: float = 0.0
    """0 = CPU ranks with gloo; a fraction in (0, 1] = a GPU per rank with NCCL, shared with a rollout worker
    when below 1 (colocation, docs/gpu.md §Colocation)."""
    start_timeout_s: float = 1800.0
    """Deadline, in seconds, for the ranks to start (build the network and the engine, join the group)."""
    call_timeout_s: float = 1800.0
    """Deadline, in seconds, for every other call on the ranks (a step's update, weight publishing, ...); a rank
    past it aborts jobs.train with exit status 4, naming the last complete checkpoint."""
    zero_stage: Literal[0, 1, 2, 3] = 2
    """DeepSpeed ZeRO stage: 0 plain DP, 1 optimizer states, 2 + gradients, 3 + parameters partitioned."""
    optimizer: Literal["adamw", "deepspeed_adamw"] = "adamw"
    """adamw: a client torch.optim.AdamW handed to DeepSpeed; deepspeed_adamw: DeepSpeed builds AdamW from
    its config with torch_adam=true. Both avoid the JIT build of DeepSpeed's CPU/fused Adam."""
    lr: float = 1e-6
    """Peak learning rate (constant unless lr_warmup_steps / lr_decay say otherwise)."""
    lr_warmup_steps: int = 0
    """RL steps of linear warm-up: step s (1-based) of the first ones runs at lr * s / lr_warmup_steps."""
    lr_decay: str = "constant"
    """constant | cosine | linear: after warm-up, decay per RL step towards min_lr_ratio * lr, reached at the
    end of run.steps (rl/lr_schedule.py has the formula)."""
    min_lr_ratio: float = 0.0
    """Where cosine / linear decay ends, as a fraction of lr (in [0, 1])."""
    weight_decay: float = 0.0
    """Decoupled AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float = 1.0
    """Max global gradient L2 norm; 0 disables clipping."""
    micro_batch_size: int = 4
    """Sequences per forward/backward on one rank (gradient accumulation covers the rest)."""
    dtype: Literal["fp32", "bf16"] = "fp32"
    """Weights and activations dtype; bf16 keeps fp32 master weights in the optimizer."""
    gradient_checkpointing: bool = False
    """Recompute block activations in backward to save memory."""
    lora: LoraConfig | None = None
    """Train LoRA adapters instead of every weight (null: full fine-tuning), docs/lora.md."""
    max_nonfinite_steps: int = 3
    """A step whose loss or gradient is NaN/inf on any rank is skipped on every rank; this many RL steps in a
    row whose update was skipped entirely stop jobs.train with a checkpoint and exit status 3 (jobs.sft: this many
    SFT steps, status 3, its best policy kept; docs/reliability.md §12)."""

    def __post_init__(self):
        if self.num_ranks < 1:
            raise ValueError(f"num_ranks: {self.num_ranks}; need at least 1 learner rank")
        _check_resources("rank", self.cpus_per_rank, self.gpus_per_rank)
        if self.gpus_per_rank > 1:
            raise ValueError(f"gpus_per_rank: {self.gpus_per_rank}; a learner rank holds 0 (CPU) or a GPU, whole or "
                             "a fraction in (0, 1] of it")
        if self.num_ranks > 1 and 0 < self.gpus_per_rank <= 0.5:
            raise ValueError(f"gpus_per_rank: {self.gpus_per_rank} with num_ranks {self.num_ranks} lets Ray put two "
                             "ranks on one GPU, which NCCL refuses; use more than 0.5 (a rollout worker may take "
                             "the rest)")
        _check_deadline("start_timeout_s", self.start_timeout_s)
        _check_deadline("call_timeout_s", self.call_timeout_s)
        if self.lr <= 0:
            raise ValueError(f"lr: {self.lr} must be positive")
        check_schedule(warmup_steps=self.lr_warmup_steps, decay=self.lr_decay, min_ratio=self.min_lr_ratio)
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay: {self.weight_decay} must be >= 0")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas: {self.betas}; each must lie in [0, 1)")
        if self.eps <= 0:
            raise ValueError(f"eps: {self.eps} must be positive")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip: {self.grad_clip} must be >= 0 (0 disables clipping)")
        if self.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size: {self.micro_batch_size}; need at least 1")
        if self.max_nonfinite_steps < 1:
            raise ValueError(f"max_nonfinite_steps: {self.max_nonfinite_steps}; need at least 1 (the RL steps in a "
                             "row whose update is skipped for non-finite numbers before the run stops)")


@dataclass(frozen=True)
class ClusterConfig:
    """Where Ray runs and how actors are placed."""

    address: str | None = None
    """None: start a local Ray instance; "auto" or "host:port": join that cluster."""
    num_cpus: int | None = None
    """Logical CPUs of a locally started Ray (None: all cores). Ignored when joining a cluster."""
    num_gpus: int | None = None
    """GPUs of a locally started Ray (None: auto-detect). Ignored when joining a cluster."""
    placement_strategy: PlacementStrategy = "PACK"
    """Ray placement-group strategy for each role's bundles (learner ranks, rollout workers)."""
    loopback: bool = True
    """Keep a local Ray on 127.0.0.1 (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0); set false on multi-node clusters."""
    dashboard: bool = False
    """Start Ray's dashboard with a local instance (needed for `ray job submit` against it)."""
    placement_timeout_s: float = 60.0
    """How long to wait for placement groups to be placed before failing."""

    def __post_init__(self):
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"num_cpus: {self.num_cpus}; need at least 1 (or null for all cores)")
        if self.num_gpus is not None and self.num_gpus < 0:
            raise ValueError(f"num_gpus: {self.num_gpus}; need 0 or more (or null to auto-detect)")
        if self.placement_timeout_s <= 0:
            raise ValueError(f"placement_timeout_s: {self.placement_timeout_s} must be positive")


@dataclass(frozen=True)
class CheckpointConfig:
    """Atomic checkpoints under runs/<name>/checkpoints/step_N/ and policy exports."""

    every: int = 50
    """Save every N steps (0: only at the end of the run)."""
    keep_last: int = 3
    """Complete checkpoints kept; older ones are deleted only after a newer one is complete."""
    resume: str = "auto"
    """auto: continue this run's newest complete checkpoint if any; never: start fresh (refused when the run
    directory holds another run's checkpoints); else a step_N path (docs/reliability.md §8)."""
    export_every: int = 0
    """Export the policy in the published format every N steps (0: only at the end)."""
    timeout_s: float = 1800.0
    """Deadline, in seconds, for the learner ranks to save or load their state; past it jobs.train aborts (exit 4)."""

    def __post_init__(self):
        if self.every < 0:
            raise ValueError(f"every: {self.every} must be >= 0 (0 = only at the end)")
        if self.keep_last < 1:
            raise ValueError(f"keep_last: {self.keep_last}; keep at least 1 complete checkpoint")
        if not self.resume:
            raise ValueError("resume: empty; use auto, never or the path of a step_N checkpoint")
        if self.export_every < 0:
            raise ValueError(f"export_every: {self.export_every} must be >= 0 (0 = only at the end)")
        _check_deadline("timeout_s", self.timeout_s)


@dataclass(frozen=True)
class LoggingConfig:
    """Where metrics go."""

    tensorboard: bool = True
    """Write TensorBoard event files to runs/<name>/tensorboard/."""
    jsonl: bool = True
    """Write one JSON object per step to runs/<name>/metrics.jsonl."""
    wandb_project: str | None = None
    """Also log to this Weights & Biases project (needs the `wandb` extra); None: off."""
    sample_table_every: int = 10
    """Write a table of sample generations every K steps (0: never)."""
    sample_table_rows: int = 8
    """Rows in each sample table."""
    rollout_text: bool = True
    """`rollouts.jsonl` rows carry each sample's prompt, response, rewards by term, advantage and reveal order
    (`python -m jobs.show` prints them); false: only uid, sample, task, version and total (huge runs)."""

    def __post_init__(self):
        if self.sample_table_every < 0:
            raise ValueError(f"sample_table_every: {self.sample_table_every} must be >= 0 (0 = never)")
        if self.sample_table_rows < 1:
            raise ValueError(f"sample_table_rows: {self.sample_table_rows}; need at least 1")
        if self.wandb_project is not None and not self.wandb_project.strip():
            raise ValueError("wandb_project: empty string; use null to turn W&B off or a project name")


JUDGE_COMMAND = ("{python}", "-m", "vllm.entrypoints.cli.main", "serve", "{model}", "--host", "{host}",
                 "--port", "{port}")
"""`vllm serve {model} --host {host} --port {port}`, run by the interpreter of vLLM's own environment."""
JUDGE_PLACEHOLDERS = ("model", "host", "port", "python")


@dataclass(frozen=True)
class JudgeServerConfig:
    """An OpenAI-compatible judge server (vLLM by default) that a Ray actor runs for the judge terms whose url is
    `judge_server` (actors/judge_server.py, docs/custom_rewards.md §6)."""

    model: str = ""
    """What the server serves ({model}): a Hugging Face id or a local directory; also the `model` the judge terms
    send when they name none."""
    python: str = ""
    """The Python interpreter ({python}) of the environment vLLM is installed in (it pins its own torch), e.g.
    /opt/vllm-env/bin/python."""
    command: tuple[str, ...] = JUDGE_COMMAND
    """The server's command line, one argument per item, with {model}, {host} (127.0.0.1), {port} (a free port)
    and {python} filled in; it must serve GET /health (200 when ready) and POST /v1/chat/completions there."""
    cpus: float = 1.0
    """Ray CPUs reserved by the server's actor (the server process runs inside this reservation)."""
    gpus: float = 1.0
    """GPUs reserved by the server's actor on the driver's node; the server sees them (CUDA_VISIBLE_DEVICES)."""
    start_timeout_s: float = 1200.0
    """Deadline, in seconds, for the server to answer GET /health with 200 after it is launched (model load)."""
    max_restarts: int = 3
    """Times per run a server that died is started again; once they are spent the run stops at its next step."""

    def __post_init__(self):
        if not self.model.strip():
            raise ValueError("model: empty; name the judge model to serve (a Hugging Face id or a local directory)")
        if not self.python.strip():
            raise ValueError("python: empty; give the Python interpreter of vLLM's environment, e.g. "
                             "/opt/vllm-env/bin/python")
        if not self.command:
            raise ValueError("command: empty; give the server's command line as a list of arguments")
        for index, arg in enumerate(self.command):
            try:
                arg.format(**dict.fromkeys(JUDGE_PLACEHOLDERS, ""))
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"command[{index}]: {arg!r} ({type(exc).__name__}: {exc}); placeholders: "
                                 f"{', '.join('{' + p + '}' for p in JUDGE_PLACEHOLDERS)} (double literal braces)"
                                 ) from None
        for needed in ("{host}", "{port}"):
            if not any(needed in arg for arg in self.command):
                raise ValueError(f"command: {list(self.command)} has no {needed}; the server must listen where the "
                                 "actor looks for it")
        if self.cpus <= 0:
            raise ValueError(f"cpus: {self.cpus}; the server's actor needs > 0 CPU")
        if self.gpus < 0 or (self.gpus > 1 and self.gpus != int(self.gpus)):
            raise ValueError(f"gpus: {self.gpus}; use 0 (a CPU server), a fraction <= 1 or a whole number of GPUs")
        _check_deadline("start_timeout_s", self.start_timeout_s)
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts: {self.max_restarts}; use 0 (never restart) or more")


@dataclass(frozen=True)
class RewardActorsConfig:
    """How the reward terms are spread over Ray actors and what each actor reserves."""

    heavy_terms: tuple[str, ...] = ("clip", "image_reward")
    """Term names (as written in `rewards.tasks`) that each get an actor of their own; the other terms
    share one CPU actor."""
    cpus_per_actor: float = 1.0
    """Ray CPUs reserved by each reward actor (the CPU actor's process pools run inside this reservation)."""
    gpus_per_heavy_actor: float = 1.0
    """GPUs of each heavy-term actor when the cluster has GPUs (0 is used on a cluster without GPUs)."""
    max_attempts: int = 3
    """Tries per batch and actor when the actor dies or overruns mid-batch; after that its terms are None
    (`crash` / `timeout`)."""
    score_grace_s: float = 300.0
    """An actor has the longest `timeout_s` of its terms plus this many seconds to answer a batch; past that it is
    treated as hung: killed, replaced and the batch re-sent."""
    start_timeout_s: float = 600.0
    """How long to wait for a reward actor to be placed and to build its rewards (model loads included)."""
    judge_server: JudgeServerConfig | None = None
    """A judge server to run for the judge terms whose url is `judge_server` (null: none)."""

    def __post_init__(self):
        if not isinstance(self.heavy_terms, tuple) or not all(isinstance(t, str) and t for t in self.heavy_terms):
            raise ValueError(f"heavy_terms: {self.heavy_terms!r}; expected a list of term names such as [clip]")
        if self.cpus_per_actor <= 0:
            raise ValueError(f"cpus_per_actor: {self.cpus_per_actor}; each reward actor needs > 0 CPU")
        if self.gpus_per_heavy_actor < 0 or (self.gpus_per_heavy_actor > 1
                                             and self.gpus_per_heavy_actor != int(self.gpus_per_heavy_actor)):
            raise ValueError(f"gpus_per_heavy_actor: {self.gpus_per_heavy_actor}; use 0, a fraction <= 1 "
                             "or a whole number of GPUs")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts: {self.max_attempts}; need at least 1 try per batch")
        if self.start_timeout_s <= 0:
            raise ValueError(f"start_timeout_s: {self.start_timeout_s} must be positive")
        _check_deadline("score_grace_s", self.score_grace_s)
