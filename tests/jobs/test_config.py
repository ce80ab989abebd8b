"""The root config tree: defaults, YAML + overrides, the resolved file, and each cross-section check."""

from __future__ import annotations

import pytest

from jobs.config import (
    CONFIG_DIR,
    DEFAULT_CONFIG,
    TrainConfig,
    add_alias,
    job_main,
    job_overrides,
    job_parser,
    load_config,
    write_resolved,
)
from jobs.configtree import ConfigError, build, read_yaml

TRAIN = "data.train=prompts.jsonl"


def test_defaults_follow_the_spec():
    cfg = load_config(None, [TRAIN])
    assert (cfg.algo.group_size, cfg.algo.mu, cfg.algo.clip_eps, cfg.algo.beta) == (8, 4, 0.2, 0.01)
    assert cfg.algo.masking.schedule == "stratified" and cfg.algo.kl.estimator == "k3"
    assert [(t.name, t.weight) for t in cfg.rewards.tasks["text"]] == [("correctness", 2.0), ("format", 0.5)]
    assert cfg.rollout.sampler.gen_length == 256 and cfg.run.run_dir.as_posix() == "runs/unigrpo"


def test_resolved_config_loads_back_identically(tmp_path):
    cfg = load_config(None, [TRAIN, "algo.mu=2", "rollout.sampler.temperature=0.5", "learner.betas=[0.9, 0.95]"])
    path = write_resolved(cfg, tmp_path)
    assert path == tmp_path / "config.yaml"
    assert build(TrainConfig, read_yaml(path)) == cfg
    assert load_config(path) == cfg


def test_shipped_configs_load():
    paths = sorted(CONFIG_DIR.glob("*.yaml"))
    assert {"demo.yaml", "sft_demo.yaml", "sft_sign_slip.yaml"} <= {p.name for p in paths}
    for path in paths:  # training and SFT configs alike: one tree
        load_config(path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], "data.train: no training prompts file"),
        ([TRAIN, "learner.num_ranks=3"], "learner.num_ranks: 3 does not divide the 64 sequences of a step"),
        ([TRAIN, "learner.num_ranks=16", "run.prompts_per_step=2", "algo.advantage.drop_groups_above=0.9"],
         "algo.group_size: 8 is not a multiple of learner.num_ranks 16"),
        ([TRAIN, "rewards.tasks={text: [{name: correctnes}]}"],
         "rewards.tasks.text[0].name: unknown reward 'correctnes'; available: clip (built-in), correctness"),
        (["data.train=prompts.csv"], "data.train: 'prompts.csv' must be a .jsonl or .parquet file"),
        ([TRAIN, "run.name=a/b"], "run.name: 'a/b' must be a non-empty directory name"),
        ([TRAIN, "run.steps=0"], "run.steps: 0; need at least 1"),
        ([TRAIN, "run.prompts_per_step=0"], "run.prompts_per_step: 0; need at least 1"),
        ([TRAIN, "run.max_policy_lag=0"], "run.max_policy_lag: 0; need at least 1"),
        ([TRAIN, "run.mode=offline"], "run.mode: 'offline' is not one of the valid choices 'sync', 'async'"),
        ([TRAIN, "model.dtype=bf16"], "model.dtype: unknown key; valid keys here: path"),
        ([TRAIN, "model.path=ckpt", "model.tiny_size={d_model: 32}"],
         "model.tiny_size: {'d_model': 32} is only for path 'tiny' or 'tiny-mmada' (path is 'ckpt')"),
        ([TRAIN, "model.tiny_size={codebook_size: 64}"],
         "model.tiny_size: unknown key(s) ['codebook_size'] for path 'tiny'; valid: d_model, n_layers"),
        ([TRAIN, "model.path=tiny-mmada", "model.tiny_size={codebook_size: 0}"],
         "model.tiny_size: {'codebook_size': 0} must be positive integers"),
        ([TRAIN, "data.task_kinds={t2i: text}"],
         "data.task_kinds.t2i: 'text'; the task 't2i' is always sampled as 't2i'"),
        ([TRAIN, "data.task_kinds={'': mmu}"], "data.task_kinds: empty task name (mapped to 'mmu')"),
        ([TRAIN, "data.task_kinds={shapes: image}"],
         "data.task_kinds.shapes: 'image' is not one of the valid choices 'text', 'mmu', 't2i'"),
        ([TRAIN, "reward_actors.cpus_per_actor=0"], "reward_actors.cpus_per_actor: 0.0; each reward actor needs > 0 CPU"),
        ([TRAIN, "reward_actors.heavy_terms=['']"], "reward_actors.heavy_terms: ('',); expected a list of term names"),
        ([TRAIN, "rollout.sampler.cache=full"],
         "rollout.sampler.cache: 'full' is not one of the valid choices 'none', 'prefix', 'dual'"),
        ([TRAIN, "rollout.sampler.threshold=0"], "rollout.sampler.threshold: got 0.0; expected a confidence in (0, 1]"),
        ([TRAIN, "rollout.sampler.threshold=1.01"], "rollout.sampler.threshold: got 1.01; expected a confidence in"),
        ([TRAIN, "rollout.sampler.threshold=.nan"], "rollout.sampler.threshold: got nan; expected a finite number"),
        ([TRAIN, "rollout.sampler.threshold=0.9", "rollout.sampler.remasking=random"],
         "rollout.sampler.threshold: 0.9 needs remasking='low_confidence'"),
    ],
)
def test_bad_configs_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert any(p.startswith(message) for p in err.value.problems), err.value.problems


def test_fast_sampler_knobs_load():
    cfg = load_config(None, [TRAIN, "rollout.sampler.cache=dual", "rollout.sampler.threshold=0.9"])
    assert (cfg.rollout.sampler.cache, cfg.rollout.sampler.threshold) == ("dual", 0.9)
    assert (load_config(None, [TRAIN]).rollout.sampler.cache, load_config(None, [TRAIN]).rollout.sampler.threshold) \
        == ("none", None)


def test_task_kinds_map_dataset_tasks_to_sampler_kinds():
    cfg = load_config(None, [TRAIN, "data.task_kinds={captioning: mmu, shapes: t2i, vqa: mmu}"])
    kind_of = cfg.data.kind_of
    assert [kind_of(task, False) for task in ("text", "mmu", "t2i")] == ["text", "mmu", "t2i"]
    assert (kind_of("captioning", True), kind_of("shapes", False), kind_of("shapes", True)) == ("mmu", "t2i", "t2i")
    assert (kind_of("arith", False), kind_of("arith", True)) == ("text", "mmu")  # unlisted: by the row's image
    assert load_config(None, [TRAIN]).data.task_kinds == {"captioning": "mmu"}
    assert load_config(None, [TRAIN]).reward_actors.heavy_terms == ("clip", "image_reward")


def alias_parser():
    parser = job_parser("python -m jobs.x", "a job on the tree")
    add_alias(parser, "--model", "model.path", text=True)
    add_alias(parser, "--limit", "eval.limit")
    add_alias(parser, "--prompt", "sample.prompts", text=True, repeat=True)
    return parser


def test_aliases_are_set_overrides_applied_before_every_set():
    args = alias_parser().parse_args(["--set", "eval.limit=4", "--prompt", 'b, "c"', "--model", "0.5", "--limit", "3",
                                      "--prompt", "null"])
    assert job_overrides(args) == ['model.path="0.5"', "eval.limit=3", 'sample.prompts=["b, \\"c\\"", "null"]',
                                   "eval.limit=4"]
    cfg = load_config(DEFAULT_CONFIG, job_overrides(args))
    # a text alias stays a string (a --set would read 0.5 as a number); the --set given first still wins
    assert (cfg.model.path, cfg.eval.limit, cfg.sample.prompts) == ("0.5", 4, ('b, "c"', "null"))
    plain = alias_parser().parse_args(["--limit", "null"])
    assert job_overrides(plain) == ["eval.limit=null"] and load_config(DEFAULT_CONFIG, job_overrides(plain)).eval.limit is None


def test_job_main_runs_prints_or_exits_2(capsys):
    seen = []

    def job(cfg):
        seen.append(cfg)
        if cfg.eval.limit == 13:
            raise LookupError("row 13 is unlucky")
        return 7

    assert job_main(alias_parser(), ["--limit", "5"], job) == 7
    assert seen[-1] == load_config(DEFAULT_CONFIG, ["eval.limit=5"])  # --config defaults to the demo config
    assert job_main(alias_parser(), ["--limit", "13"], job, errors=(LookupError,)) == 2
    assert capsys.readouterr().err == "error: row 13 is unlucky\n"
    with pytest.raises(LookupError):  # an error the job did not declare is not swallowed
        job_main(alias_parser(), ["--limit", "13"], job)
    count = len(seen)
    assert job_main(alias_parser(), ["--set", "eval.limit=-2"], job) == 2
    assert "eval.limit: -2; use a positive number of problems or null for all" in capsys.readouterr().err
    assert job_main(alias_parser(), ["--limit", "5", "--print-config"], job) == 0
    assert "  limit: 5  # " in capsys.readouterr().out and len(seen) == count  # printed, not run
