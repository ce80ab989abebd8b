"""`python -m jobs.train --print-config` (and `jobs.eval`'s, `jobs.sample`'s, `jobs.rollout`'s, `jobs.sft`'s: the same tree): every field of the
resolved tree printed with its doc as a YAML comment, read from the dataclasses' source
(`jobs.configtree.field_docs`); the text loads back to the same config, and no field of any section is left
without a doc."""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field

import pytest

from jobs.config import CONFIG_DIR, TrainConfig, load_config
from jobs.configtree import commented_yaml, field_docs, to_dict
from jobs.eval import main as eval_main
from jobs.sample import main as sample_main
from jobs.train import main

DEMO = CONFIG_DIR / "demo.yaml"
# Values YAML could misread if written carelessly: '#', ': ', a leading '*', a number-like string, a line break.
TRICKY = [
    "data.train='dir # with: hash/*x.jsonl'",
    "run.name='0.5'",
    "model.path=tiny",
    "model.tiny_size={d_model: 32, n_layers: 1}",
    "rewards.tasks.text=[{name: format, options: {k: '# a: b', lines: \"one\\ntwo\"}}]",
]


def printed(capsys, argv: list[str]) -> str:
    assert main([*argv, "--print-config"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("config, overrides", [(DEMO, []), (CONFIG_DIR / "toy_t2i.yaml", []), (DEMO, TRICKY),
                                               (CONFIG_DIR / "sft_demo.yaml", [])])
def test_printed_config_loads_back_to_the_same_config(capsys, tmp_path, config, overrides):
    text = printed(capsys, ["--config", str(config), *[a for o in overrides for a in ("--set", o)]])
    (tmp_path / "printed.yaml").write_text(text)
    expected = load_config(config, overrides)
    again = load_config(tmp_path / "printed.yaml")
    assert to_dict(again) == to_dict(expected) and again == expected


def test_known_keys_carry_their_doc(capsys):
    lines = printed(capsys, ["--config", str(DEMO)]).splitlines()
    for line in [  # docstring convention (actors/config.py, jobs/config.py), comment convention (rl/config.py)
        "  eps: 1.0e-08  # AdamW epsilon.",
        "  betas: [0.9, 0.999]  # AdamW betas.",
        "  mu: 2  # μ, inner gradient steps per batch, each on its own masked copy.",
        "    p_min: 0.05  # Lower clamp of every mask ratio.",
        "  kl:  # KL estimator against the reference.",
        "run:  # What to run (steps, batch, sync or async) and where its outputs go.",
        "        weight: 2.0  # Multiplies the term's raw score in the task's total reward.",
    ]:
        assert line in lines
    # a multi-line docstring becomes one line
    mode = next(line for line in lines if line.startswith("  mode: "))
    assert mode == ("  mode: sync  # sync: rollouts of step s use the weights after step s-1. async: rollouts for "
                    "step s+1 are made while the learner trains on step s, never from weights older than "
                    "`max_policy_lag` versions.")


def test_eval_and_sample_print_the_same_tree_with_their_keys(capsys):
    argv = ["--set", "eval.pass_at_k=[1, 2]", "--set", "eval.samples=2", "--set", "eval.temperature=0.5"]
    assert eval_main([*argv, "--model", "demo", "--out", "e.json", "--print-config"]) == 0
    from_eval = capsys.readouterr().out
    assert sample_main([*argv, "--model", "demo", "--prompt", "a", "--prompt", "b: c", "--print-config"]) == 0
    from_sample = capsys.readouterr().out
    assert printed(capsys, [*argv, "--set", "model.path=demo"]) == from_eval.replace(
        "  out: e.json  #", "  out: null  #")  # jobs.train's print of the same settings, bar the aliases given
    lines = from_sample.splitlines()
    for line in [
        "eval:  # Held-out evaluation of the policy, during training and by `python -m jobs.eval`.",
        "  dtype: fp32  # Weights and activations of the evaluated policy (a checkpoint stored in another dtype is "
        "cast), in training and in `python -m jobs.eval` / `jobs.sample`; also the rollout workers' of `jobs.rollout`.",
        "  pass_at_k: [1, 2]  # `python -m jobs.eval`: the k of the pass@k it reports, each in [1, samples] (empty: 1, "
        "2, 4, ... up to `samples`, and `samples`); training logs pass@1.",
        "sample:  # The prompts and output directory of `python -m jobs.sample`.",
        "  prompts: [a, 'b: c']  # User messages to answer (empty: the first three problems of `data.eval`, shown "
        "with their gold answers).",
        "  out: null  # Output directory of samples.jsonl and the resolved config.yaml (null: "
        "runs/sample-<date>-<time>).",
    ]:
        assert line in lines
    assert ("  out: e.json  # `python -m jobs.eval`: the summary JSON file, every sample going to "
            "`<stem>.samples.jsonl` beside it (null: print the summary only). Training writes its evaluations to "
            "`<run dir>/eval/`.") in from_eval.splitlines()


def test_rollout_prints_the_same_tree_with_its_generate_section(capsys):
    from jobs.rollout import main as rollout_main

    argv = ["--set", "generate.shard_size=16", "--set", "generate.format=parquet"]
    assert rollout_main([*argv, "--out", "gen", "--samples-per-prompt", "4", "--print-config"]) == 0
    from_rollout = capsys.readouterr().out
    assert printed(capsys, [*argv, "--set", "generate.out=gen", "--set", "generate.samples_per_prompt=4"]) == from_rollout
    lines = from_rollout.splitlines()
    for line in [
        "generate:  # The prompt file, samples per prompt, shards and output directory of `python -m jobs.rollout`.",
        "  prompts: null  # Prompt file (.jsonl or .parquet, rows as in `data.train`); null: `data.train` itself.",
        "  out: gen  # Output directory (shards, rollouts.<format>, manifest.json, summary.json); rerun into it to "
        "resume. Required: null is refused when the job starts.",
        "  samples_per_prompt: 4  # Responses sampled per prompt (rows per prompt).",
        "  shard_size: 16  # Prompts per shard: shard k holds the usable prompts [k*S, (k+1)*S) in file order.",
        "  batch_size: 64  # Rows per sampler call within a shard.",
        "  max_attempts: 3  # Tries per shard, each on a fresh worker, when its worker dies or overruns "
        "`rollout.sample_timeout_s`.",
        "  format: parquet  # Format of the shard files and of rollouts.<format>.",
        "  score: false  # Score every row with its task's terms in `rewards.tasks`, as training would (heavy terms on "
        "reward actors, `reward_actors`).",
    ]:
        assert line in lines


def dataclasses_in(tp: object, seen: set) -> None:
    """Every dataclass reachable from the annotation `tp` (through fields, lists, dicts, unions)."""
    if dataclasses.is_dataclass(tp) and tp not in seen:
        seen.add(tp)
        for hint in typing.get_type_hints(tp).values():
            dataclasses_in(hint, seen)
    for arg in typing.get_args(tp):
        dataclasses_in(arg, seen)


def test_no_key_prints_without_a_doc(capsys):
    sections: set = set()
    dataclasses_in(TrainConfig, sections)
    assert len(sections) >= 20  # the whole tree was walked, not just the root
    missing = [f"{cls.__name__}.{name}" for cls in sections for name, doc in field_docs(cls).items() if not doc]
    assert not missing, f"fields without a doc: {missing}"
    # and in the printed text: the only lines without a comment are the task names under rewards.tasks (data)
    cfg = load_config(DEMO)
    bare = [line for line in printed(capsys, ["--config", str(DEMO)]).splitlines() if "  # " not in line]
    assert bare == [f"    {task}:" for task in cfg.rewards.tasks]


@dataclass(frozen=True)
class _Base:
    inherited: int = 0
    """From the base."""


@dataclass(frozen=True)
class _Both(_Base):
    # A comment above,
    # on two lines.
    above: int = 1
    after: str = "x"
    """A docstring after,
    on two lines."""
    inline: float = 2.0  # an inline comment
    nothing: list[int] = field(default_factory=list)
    # a comment above the docstring's field does not count when a docstring follows
    both: bool = True
    """The docstring wins."""


def test_field_docs_reads_both_conventions():
    assert field_docs(_Both) == {
        "inherited": "From the base.",
        "above": "A comment above, on two lines.",
        "after": "A docstring after, on two lines.",
        "inline": "an inline comment",
        "nothing": "",
        "both": "The docstring wins.",
    }
    text = commented_yaml(_Both())
    assert re.findall(r"^nothing: \[\]$", text, re.M) == ["nothing: []"]  # no doc: no comment
    assert "inline: 2.0  # an inline comment\n" in text
