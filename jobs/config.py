"""The one config tree of every job on a policy, its loader, and the command line that reads it.

    cfg = load_config("jobs/configs/demo.yaml", ["algo.mu=4", "learner.num_ranks=2"])

Sections (each owned by the package that uses it): `run`, `data`, `model`, `eval`, `sample`, `generate`, `sft`
(here), `rollout`, `learner`, `cluster`, `checkpoint`, `logging`, `reward_actors` (`actors.config`), `algo`
(`rl.config`), `rewards` (`rewards.config`). `jobs.train`, `jobs.eval`, `jobs.sample`, `jobs.rollout` and `jobs.sft`
read this tree (`--config`, `--set`, `--print-config`; `job_parser` and `job_main`). Importing this module imports no
Ray (tests/jobs/test_config_imports.py): the config is read, checked and printed before, and without, any cluster.
The whole tree is validated before anything starts: an unknown key or a bad value is a `ConfigError` naming the
dotted key and what would be right. `write_resolved` stores the resolved tree next to the run's outputs, and
that file loads back to the same tree.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from actors.config import (
    CheckpointConfig,
    ClusterConfig,
    LearnerConfig,
    LoggingConfig,
    RewardActorsConfig,
    RolloutConfig,
)
from jobs.configtree import ConfigError, apply_overrides, build, commented_yaml, read_yaml, write_yaml
from jobs.paths import resolve_input, resolve_inputs
from rewards.config import RewardsConfig
from rl.config import AlgoConfig
from rl.kinds import KINDS, Kind

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "demo.yaml"
"""The config a job reads without `--config`: the demo (docs/demo.md §6)."""


class NamedRun:
    """The output location `<output_dir>/<name>` of a run (jobs.train's `run`, jobs.sft's `run` section)."""

    def check_name(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"name: {self.name!r} must be a non-empty directory name without '/'")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


@dataclass(frozen=True)
class RunConfig(NamedRun):
    """What to run and where its outputs go."""

    name: str = "unigrpo"
    """Run name: outputs go to `<output_dir>/<name>/`."""
    output_dir: str = "runs"
    """Parent directory of run directories."""
    seed: int = 0
    """Run seed: masking, sampling and data order are pure functions of it (and step, uid, ...)."""
    steps: int = 100
    """Number of RL steps (outer iterations: rollout, reward, update, sync)."""
    prompts_per_step: int = 8
    """Prompts drawn per step; each is sampled `algo.group_size` times."""
    mode: Literal["sync", "async"] = "sync"
    """sync: rollouts of step s use the weights after step s-1. async: rollouts for step s+1 are made
    while the learner trains on step s, never from weights older than `max_policy_lag` versions."""
    max_policy_lag: int = 1
    """async only: the largest allowed gap between the learner's version and a sample's version."""

    def __post_init__(self):
        self.check_name()
        if self.steps < 1:
            raise ValueError(f"steps: {self.steps}; need at least 1")
        if self.prompts_per_step < 1:
            raise ValueError(f"prompts_per_step: {self.prompts_per_step}; need at least 1")
        if self.max_policy_lag < 1:
            raise ValueError(f"max_policy_lag: {self.max_policy_lag}; need at least 1")


@dataclass(frozen=True)
class DataSource:
    """One file of a weighted training mixture (`data.train`)."""

    path: str = ""
    """The prompts file (.jsonl or .parquet)."""
    weight: float = 1.0
    """Its share of the drawn prompts: weight / the sum of the weights (> 0)."""


@dataclass(frozen=True)
class DataConfig:
    """Prompt datasets (jsonl or parquet rows: prompt, answer, task, image, uid, extra fields; docs/data.md)."""

    train: str | list[str | DataSource] = ""
    """Training prompts: a file (.jsonl or .parquet), a list of files (their union), or a list of `{path,
    weight}` (a weighted mixture: each prompt drawn comes from a file with probability proportional to its
    weight). Read it through `train_files` and `train_weights`."""
    fields: dict[str, str] = field(default_factory=dict)
    """Column names in the files for our fields named differently there, e.g. `{prompt: question}`: prompt,
    answer, task, image, uid, and response (SFT's reference response)."""
    eval: str | None = None
    """Held-out prompts file for periodic evaluation (None: no evaluation)."""
    shuffle: bool = True
    """Shuffle each epoch with a seed derived from (run.seed, epoch)."""
    thinking: bool = True
    """Prepend the thinking instruction (reason in <think> </think>, then answer) to reasoning prompts."""
    default_task: Kind = "text"
    """Task of rows that name none."""
    task_kinds: dict[str, Kind] = field(default_factory=lambda: {"captioning": "mmu"})
    """How each dataset task is sampled, for tasks not named after a kind. Kinds: `text` (chat prompt ->
    text), `mmu` (the row's `image` + chat prompt -> text; rows need an image), `t2i` (the plain prompt
    text -> an image). Tasks named `text`, `mmu`, `t2i` are their own kind; a task listed nowhere is `mmu`
    when its row has an image and `text` otherwise. The task name itself selects the reward terms."""

    def __post_init__(self):
        from jobs.data import check_fields

        problems = check_fields(self.fields)
        train = [self.train] if isinstance(self.train, str) else self.train
        weighted = [isinstance(item, DataSource) for item in train]
        if any(weighted) and not all(weighted):
            problems.append("train: mixes plain files and {path, weight} entries; give every file a weight, or none")
        named = [(f"train[{i}]" if isinstance(self.train, list) else "train", getattr(item, "path", item))
                 for i, item in enumerate(train)]
        for key, value in [*named, ("eval", self.eval)]:
            if value and not value.endswith((".jsonl", ".parquet")):
                problems.append(f"{key}: {value!r} must be a .jsonl or .parquet file")
        for index, item in enumerate(train):
            if isinstance(self.train, list) and not getattr(item, "path", item).strip():
                problems.append(f"train[{index}]: no file; give a .jsonl or .parquet path")
            if isinstance(item, DataSource) and item.weight <= 0:
                problems.append(f"train[{index}].weight: {item.weight}; need a weight > 0 (remove the file to skip it)")
            if getattr(item, "path", item) in [path for _, path in named[:index]]:
                problems.append(f"train[{index}]: {getattr(item, 'path', item)!r} is listed twice")
        for task, kind in self.task_kinds.items():
            if not task.strip():
                problems.append(f"task_kinds: empty task name (mapped to {kind!r}); use the dataset's task names")
            elif task in KINDS and kind != task:
                problems.append(f"task_kinds.{task}: {kind!r}; the task {task!r} is always sampled as {task!r} "
                                f"(remove the entry, or give your task another name)")
        if problems:
            raise ValueError("\n".join(problems))

    @property
    def train_files(self) -> list[str]:
        """The training files, in order, whichever form `train` takes."""
        train = [self.train] if isinstance(self.train, str) else self.train
        return [getattr(item, "path", item) for item in train]

    @property
    def train_weights(self) -> list[float] | None:
        """The mixture weights, one per file of `train_files` (None: the files are one union)."""
        if isinstance(self.train, str) or not self.train or not isinstance(self.train[0], DataSource):
            return None
        return [item.weight for item in self.train]

    def kind_of(self, task: str, has_image: bool) -> str:
        """The sampler kind (text, mmu, t2i) of a row of `task`; see `task_kinds`."""
        if task in KINDS:
            return task
        return self.task_kinds.get(task, "mmu" if has_image else "text")


@dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation of the policy on `data.eval` (jobs/heldout.py), during training and by `python -m jobs.eval`."""

    every: int = 0
    """Steps between evaluations; the starting policy and the final one are always evaluated when
    `data.eval` is set (0: only those two)."""
    limit: int | None = None
    """Evaluate only the first N held-out problems (None: all of them)."""
    temperature: float = 0.0
    """Sampling temperature of the evaluation (0: greedy); the other sampler knobs are `rollout.sampler`'s."""
    samples: int = 1
    """Responses per held-out problem; `eval/pass@1` is their mean (the unbiased pass@1 of that many samples).
    More than 1 only makes sense with temperature > 0 (greedy decoding repeats itself)."""
    batch_size: int = 128
    """Prompts per sampler call."""
    where: Literal["rollout_workers", "driver"] = "rollout_workers"
    """Where `jobs.train` decodes its evaluations: "rollout_workers" (the calls spread over the workers, which hold
    the step's weights already: their device, in learner.dtype, which eval.dtype must equal), or "driver" (a copy of
    learner rank 0's weights in the driver, in eval.dtype on eval.device). jobs.sft, jobs.eval and jobs.sample
    always decode in their own process. docs/sampling.md §Where evaluation runs."""
    torch_threads: int = 2
    """CPU threads the evaluation may use when it decodes in this process (the learner and workers are idle
    while it runs)."""
    dtype: Literal["fp32", "bf16"] = "fp32"
    """Weights and activations of the evaluated policy (a checkpoint stored in another dtype is cast), in
    training and in `python -m jobs.eval` / `jobs.sample`; also the rollout workers' of `jobs.rollout`."""
    pass_at_k: tuple[int, ...] = ()
    """`python -m jobs.eval`: the k of the pass@k it reports, each in [1, samples] (empty: 1, 2, 4, ... up to
    `samples`, and `samples`); training logs pass@1."""
    out: str | None = None
    """`python -m jobs.eval`: the summary JSON file, every sample going to `<stem>.samples.jsonl` beside it (null:
    print the summary only). Training writes its evaluations to `<run dir>/eval/`."""
    device: str = "cpu"
    """Where the evaluated policy and its sampler run when they run in this process (`python -m jobs.eval` /
    `jobs.sample`, jobs.sft, training with eval.where: driver): "cpu", "cuda", "cuda:N", or "auto" (the first CUDA
    device when torch sees one, else the CPU)."""

    def __post_init__(self):
        if not re.fullmatch(r"cpu|auto|cuda(:\d+)?", self.device):
            raise ValueError(f"device: {self.device!r} is not a device; use 'cpu', 'cuda', 'cuda:N' (N = 0, 1, ...) "
                             "or 'auto' (cuda when torch sees one, else cpu)")
        if self.every < 0:
            raise ValueError(f"every: {self.every} is negative; use 0 (start and end only) or a step count")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit: {self.limit}; use a positive number of problems or null for all")
        if self.temperature < 0:
            raise ValueError(f"temperature: {self.temperature} is negative; use 0 (greedy) or more")
        if self.samples < 1:
            raise ValueError(f"samples: {self.samples}; need at least 1 response per problem")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: {self.batch_size}; need at least 1")
        if self.torch_threads < 1:
            raise ValueError(f"torch_threads: {self.torch_threads}; need at least 1")
        if not all(1 <= k <= self.samples for k in self.pass_at_k):
            raise ValueError(f"pass_at_k: {list(self.pass_at_k)}; every k must be in [1, samples={self.samples}] "
                             "(pass@k needs at least k samples per problem)")


@dataclass(frozen=True)
class SampleConfig:
    """`python -m jobs.sample`: what it asks the policy and where it writes; it samples as the evaluation does."""

    prompts: tuple[str, ...] = ()
    """User messages to answer (empty: the first three problems of `data.eval`, shown with their gold answers)."""
    out: str | None = None
    """Output directory of samples.jsonl and the resolved config.yaml (null: runs/sample-<date>-<time>)."""


@dataclass(frozen=True)
class GenerateConfig:
    """`python -m jobs.rollout`: which prompts it samples, how often, how the rows are cut into shards, and where
    they go; the policy, samplers, workers and reward terms are those of the rest of the tree."""

    prompts: str | None = None
    """Prompt file (.jsonl or .parquet, rows as in `data.train`); null: `data.train` itself."""
    out: str | None = None
    """Output directory (shards, rollouts.<format>, manifest.json, summary.json); rerun into it to resume.
    Required: null is refused when the job starts."""
    samples_per_prompt: int = 1
    """Responses sampled per prompt (rows per prompt)."""
    shard_size: int = 64
    """Prompts per shard: shard k holds the usable prompts [k*S, (k+1)*S) in file order."""
    batch_size: int = 64
    """Rows per sampler call within a shard."""
    max_attempts: int = 3
    """Tries per shard, each on a fresh worker, when its worker dies or overruns `rollout.sample_timeout_s`."""
    format: Literal["jsonl", "parquet"] = "jsonl"
    """Format of the shard files and of rollouts.<format>."""
    score: bool = False
    """Score every row with its task's terms in `rewards.tasks`, as training would (heavy terms on reward
    actors, `reward_actors`)."""

    def __post_init__(self):
        problems = []
        if self.prompts is not None and not self.prompts.endswith((".jsonl", ".parquet")):
            problems.append(f"prompts: {self.prompts!r} must be a .jsonl or .parquet file (or null: data.train)")
        if self.out is not None and not self.out.strip():
            problems.append("out: empty string; give an output directory")
        for key in ("samples_per_prompt", "shard_size", "batch_size", "max_attempts"):
            if getattr(self, key) < 1:
                problems.append(f"{key}: {getattr(self, key)}; need at least 1")
        if problems:
            raise ValueError("\n".join(problems))


@dataclass(frozen=True)
class SFTConfig:
    """`python -m jobs.sft` (masked-diffusion SFT, docs/demo.md §2): its optimisation and early stopping. The rest
    of an SFT run is the tree's: `run`, `data` (`train` rows with a reference response, in the column that
    `data.fields.response` names; held-out `eval`), `model`, `rollout.sampler` (responses are padded to its
    `gen_length`) and `eval` for held-out pass@1, `learner` (its lr schedule spans `max_steps`), `cluster`."""

    max_steps: int = 4000
    """Optimizer steps at most; `learner.lr_decay` reaches `learner.min_lr_ratio` here."""
    batch_size: int = 32
    """Sequences per optimizer step (global: a multiple of `learner.num_ranks`, checked when jobs.sft starts)."""
    mask_eps: float = 1e-3
    """eps: mask ratios are p = eps + (1 - eps) t, t ~ U(0, 1)."""
    log_every: int = 25
    """Write a train line (mean loss since the last line) every N steps."""
    patience: int = 4
    """Stop after this many evaluations (`eval.every`) in a row without a pass@1 gain above `min_delta`..."""
    min_steps: int = 0
    """...but never before this step (a policy from scratch sits at 0% for its first evaluations)."""
    min_delta: float = 0.0
    """Smallest pass@1 gain that counts as an improvement."""
    select: Literal["best", "last"] = "best"
    """The run's policy (what `export_to` copies): "best", the checkpoint of the best held-out evaluation
    (`<run dir>/best_policy/`), or "last", the weights after the last step (`<run dir>/last_policy/`; for a
    fine-tune meant to change a policy's behaviour, such as a weak-teacher cold start, whose held-out accuracy
    may go down)."""
    export_to: str | None = None
    """Also copy the run's policy (`select`) here at the end (e.g. model/assets/demo_policy); null: don't."""

    def __post_init__(self):
        problems = [f"{name}: {getattr(self, name)}; need at least 1"
                    for name in ("max_steps", "batch_size", "log_every", "patience") if getattr(self, name) < 1]
        if not 0 < self.mask_eps < 1:
            problems.append(f"mask_eps: {self.mask_eps} must lie in (0, 1), e.g. 1e-3")
        if self.min_steps < 0:
            problems.append(f"min_steps: {self.min_steps} must be >= 0")
        if problems:
            raise ValueError("\n".join(problems))


TINY_SIZES = {
    "tiny": ("d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden_size", "rope_theta"),
    "tiny-mmada": ("d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden_size", "rope_theta", "codebook_size",
                   "num_vq_tokens"),
}
"""`model.path` values that build a random tiny twin -> the `model.tiny_size` keys each accepts."""


@dataclass(frozen=True)
class ModelConfig:
    """The policy to train (the frozen reference starts as the same weights)."""

    path: str = "tiny"
    """A checkpoint directory in the published format, or a random tiny twin seeded by `run.seed` (tests,
    demos): 'tiny' (LLaDA layout) or 'tiny-mmada' (MMaDA layout: image codes after the text vocabulary).
    Weights are cast to `learner.dtype` on the learner and the rollout workers."""
    tiny_size: dict[str, int | float] = field(default_factory=dict)
    """Sizes of a tiny twin (model.tiny.tiny_model / tiny_mmada_model keywords): d_model, n_layers, n_heads,
    n_kv_heads, mlp_hidden_size (whole numbers), rope_theta (the RoPE base, a float; model/resolve.py
    `tiny_twin`); for 'tiny-mmada' also codebook_size and num_vq_tokens, which must match the image tokenizer
    (its number of codes, and codes per image). Empty: model.tiny's defaults."""

    def __post_init__(self):
        if not self.tiny_size:
            return
        if self.path not in TINY_SIZES:
            raise ValueError(f"tiny_size: {self.tiny_size!r} is only for path 'tiny' or 'tiny-mmada' "
                             f"(path is {self.path!r}); remove it")
        unknown = sorted(set(self.tiny_size) - set(TINY_SIZES[self.path]))
        if unknown:
            raise ValueError(f"tiny_size: unknown key(s) {unknown} for path {self.path!r}; valid: "
                             f"{', '.join(TINY_SIZES[self.path])}")
        bad = {k: v for k, v in self.tiny_size.items() if k != "rope_theta" and (not isinstance(v, int) or v < 1)}
        if bad:
            raise ValueError(f"tiny_size: {bad} must be positive integers")
        if self.tiny_size.get("rope_theta", 1.0) <= 0:
            raise ValueError(f"tiny_size.rope_theta: {self.tiny_size['rope_theta']} must be a positive RoPE base, "
                             "e.g. 10000.0")


@dataclass(frozen=True)
class TrainConfig:
    """The root of the tree."""

    run: RunConfig = field(default_factory=RunConfig)
    """What to run (steps, batch, sync or async) and where its outputs go."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training and held-out prompt files, and how their tasks are sampled."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy to train (a checkpoint directory or a tiny twin)."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Rollout workers: resources, weight sync and the samplers they run."""
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    """UniGRPO and its relatives: estimator, masking, loss, KL, advantages (rl/config.py)."""
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    """Data-parallel DeepSpeed learner ranks and their optimizer."""
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    """Reward terms per task, with weights, options and deadlines."""
    reward_actors: RewardActorsConfig = field(default_factory=RewardActorsConfig)
    """How the reward terms are spread over Ray actors."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Atomic checkpoints, resume and policy exports."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Where metrics go (metrics.jsonl, TensorBoard, W&B, sample tables)."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """Where Ray runs and how actors are placed."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Held-out evaluation of the policy, during training and by `python -m jobs.eval`."""
    sample: SampleConfig = field(default_factory=SampleConfig)
    """The prompts and output directory of `python -m jobs.sample`."""
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    """The prompt file, samples per prompt, shards and output directory of `python -m jobs.rollout`."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """The steps, batch, masking, early stopping and export of `python -m jobs.sft`."""

    def __post_init__(self):
        # Cross-section checks; each line names the key to change.
        problems = []
        rows = self.run.prompts_per_step * self.algo.group_size
        if rows % self.learner.num_ranks:
            problems.append(
                f"learner.num_ranks: {self.learner.num_ranks} does not divide the {rows} sequences of a step "
                f"(run.prompts_per_step {self.run.prompts_per_step} x algo.group_size {self.algo.group_size})"
            )
        filtering = self.algo.advantage.drop_groups_above is not None or self.algo.advantage.drop_groups_below is not None
        if filtering and self.algo.group_size % self.learner.num_ranks:
            problems.append(
                f"algo.group_size: {self.algo.group_size} is not a multiple of learner.num_ranks {self.learner.num_ranks}; "
                "with algo.advantage.drop_groups_* set, the kept groups must split evenly over the ranks"
            )
        from rewards.registry import check  # names only: built-ins are not imported, one-offs are loaded
        from rewards.remote import judge_server_problems

        for task, terms in self.rewards.tasks.items():
            for index, term in enumerate(terms):
                try:
                    check(term.name)
                except ValueError as exc:
                    problems.append(f"rewards.tasks.{task}[{index}].name: {exc}")
        # terms that say url: judge_server vs the section that runs that server
        problems += judge_server_problems(self.rewards, served=self.reward_actors.judge_server is not None)
        if (self.eval.samples > 1 and self.eval.temperature == 0
                and self.rollout.sampler.remasking == "low_confidence"):
            problems.append(f"eval.samples: {self.eval.samples} with eval.temperature 0 and low-confidence remasking: "
                            "every sample of a problem is the same greedy response; set eval.temperature > 0 or "
                            "eval.samples to 1")
        if self.eval.every and not self.data.eval:
            problems.append(f"eval.every: {self.eval.every} needs a held-out file; set data.eval to a .jsonl or "
                            ".parquet file, or eval.every to 0")
        if not self.data.train:
            problems.append("data.train: no training prompts file; set it to a .jsonl or .parquet file")
        if (0 < self.learner.gpus_per_rank < 1 and self.rollout.gpus_per_worker > 0
                and self.rollout.weight_sync.backend == "broadcast"):
            problems.append(f"rollout.weight_sync.backend: broadcast with learner.gpus_per_rank "
                            f"{self.learner.gpus_per_rank:g}: a learner rank and a rollout worker may share a GPU, "
                            "and NCCL refuses two members of one group on a GPU; use object_store")
        if problems:
            raise ValueError("\n".join(problems))


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """YAML file (None: all defaults) + dotted overrides -> validated TrainConfig, or one ConfigError.

    Relative input paths (the file itself, `jobs.paths.INPUT_KEYS`) are found from the current directory, else
    in the installed project (jobs/paths.py)."""
    raw = read_yaml(resolve_input(str(path))) if path is not None else {}
    return build(TrainConfig, resolve_inputs(apply_overrides(raw, list(overrides))), source=str(path) if path else None)


def write_resolved(cfg: TrainConfig, run_dir: str | Path) -> Path:
    """Write the resolved tree as `<run_dir>/config.yaml`."""
    return write_yaml(cfg, Path(run_dir) / "config.yaml")


# ------------------------------------------------------------------------------------------- command line
_ALIAS = "set:"  # argparse dest prefix of an alias flag: "set:<dotted key>"


def job_parser(prog: str, description: str, default_config: Path = DEFAULT_CONFIG) -> argparse.ArgumentParser:
    """The arguments of a job that reads the tree: `--config` (`default_config` when not given), repeatable
    `--set`, `--print-config`."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=default_config, metavar="FILE",
                        help=f"YAML config (default: {default_config.relative_to(CONFIG_DIR.parent.parent)})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set rollout.sampler.steps=40 (repeatable)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config, each key with its doc as a comment, and exit")
    return parser


def add_alias(parser: argparse.ArgumentParser, flag: str, key: str, *, text: bool = False,
              repeat: bool = False) -> None:
    """`flag VALUE` as the short form of `--set key=VALUE`; every `--set` is applied after it (and wins).

    `text`: VALUE is the string itself (a path stays a string even when it reads as a number or `null`); otherwise
    it is parsed as YAML, as a `--set` value is. `repeat`: each use adds one item to the list `key`."""
    parser.add_argument(flag, dest=_ALIAS + key, type=json.dumps if text else str, action="append" if repeat else None,
                        metavar="VALUE", help=f"= --set {key}=VALUE" + (" (repeatable: one item each)" if repeat else ""))


def job_overrides(args: argparse.Namespace) -> list[str]:
    """The aliases given on the command line as `--set` overrides, then the `--set` overrides themselves."""
    aliases = [f"{dest.removeprefix(_ALIAS)}=" + (f"[{', '.join(value)}]" if isinstance(value, list) else value)
               for dest, value in vars(args).items() if dest.startswith(_ALIAS) and value is not None]
    return [*aliases, *args.overrides]


def job_main(parser: argparse.ArgumentParser, argv: list[str] | None,
             job: Callable[[TrainConfig], int], errors: tuple[type[Exception], ...] = ()) -> int:
    """A job's `main`: read the tree from the command line, print it (`--print-config`) or run `job(cfg)`.

    A ConfigError, or one of `errors` (bad data, an unusable model), is printed as `error: ...` and exits 2; an
    exception that carries an `exit_code` (a run that cannot go on and says why: a lost actor, 4; a diverged run,
    3) is printed as `aborted: ...` and exits with that code."""
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(args.config, job_overrides(args))
        if args.print_config:
            print(commented_yaml(cfg), end="")
            return 0
        return job(cfg)
    except (ConfigError, *errors) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if not isinstance(getattr(exc, "exit_code", None), int):
            raise
        print(f"aborted: {exc}", file=sys.stderr)
        return exc.exit_code
