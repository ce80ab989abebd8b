"""The config tree of `python -m jobs.sft` (masked-diffusion SFT, jobs/sft.py): frozen dataclasses, each field
documented by the string under it, every value checked when `load_sft_config` builds the tree.

A tree of its own rather than a part of jobs/config.py's RL run: SFT has no rollout, reward or algorithm section
and needs `run`, `data` and `model` fields the RL run does not. The `learner`, `cluster` and `sampler` sections
are the RL run's classes (actors/config.py, model/sampling.py), with SFT defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.config import ClusterConfig, LearnerConfig
from jobs.config import NamedRun
from model.sampling import TextSamplerConfig
from rl.lr_schedule import learning_rate as schedule_rate


@dataclass(frozen=True)
class SFTRunConfig(NamedRun):
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
        self.check_name()
        if self.torch_threads < 1:
            raise ValueError(f"torch_threads: {self.torch_threads}; need at least 1")


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


def tiny_size(cfg: SFTModelConfig) -> dict[str, Any]:
    """The tiny twin's size from the `model` section (model.resolve.tiny_twin keywords; checkpoints ignore it)."""
    return {"d_model": cfg.d_model, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
            "mlp_hidden_size": cfg.mlp_hidden_size, "rope_theta": cfg.rope_theta}


def learning_rate(step: int, cfg: SFTConfig, base_lr: float) -> float:
    """Linear warm-up over warmup_steps, then cosine from base_lr to min_lr_ratio * base_lr at max_steps."""
    return schedule_rate(step, base_lr, total_steps=cfg.max_steps, warmup_steps=cfg.warmup_steps, decay="cosine",
                         min_ratio=cfg.min_lr_ratio)
