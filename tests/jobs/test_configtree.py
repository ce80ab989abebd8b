"""The generic config machinery: types, Literal choices, nesting, overrides, one error naming the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from jobs.configtree import (
    ConfigError,
    apply_overrides,
    build,
    parse_override,
    read_yaml,
    to_dict,
    write_yaml,
)


@dataclass(frozen=True)
class Masking:
    schedule: Literal["stratified", "ramp", "random"] = "stratified"
    p_min: float = 0.05
    p_max: float = 1.0

    def __post_init__(self):
        if not 0 < self.p_min <= self.p_max <= 1:
            raise ValueError(f"p_min: need 0 < p_min <= p_max <= 1, got p_min={self.p_min}, p_max={self.p_max}")


@dataclass(frozen=True)
class Term:
    name: str = "correctness"
    weight: float = 1.0


@dataclass(frozen=True)
class Algo:
    mu: int = 4
    beta: float = 0.01
    masking: Masking = field(default_factory=Masking)
    tag: str | None = None
    terms: dict[str, list[Term]] = field(default_factory=dict)
    sizes: tuple[int, ...] = (1, 2)


@dataclass(frozen=True)
class Root:
    algo: Algo = field(default_factory=Algo)
    debug: bool = False


def test_defaults_and_nested_values():
    cfg = build(Root, {"algo": {"mu": 5, "masking": {"schedule": "ramp"}, "terms": {"text": [{"weight": 2}]}}})
    assert cfg.algo.mu == 5 and cfg.algo.masking.schedule == "ramp" and cfg.algo.masking.p_min == 0.05
    assert cfg.algo.terms == {"text": [Term("correctness", 2.0)]}
    assert isinstance(cfg.algo.terms["text"][0].weight, float)  # ints are accepted where floats are due
    assert cfg.algo.sizes == (1, 2) and cfg == build(Root, to_dict(cfg))


def test_unknown_key_names_it_and_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        build(Root, {"algo": {"masking": {"shedule": "ramp"}}})
    assert err.value.problems == ["algo.masking.shedule: unknown key; valid keys here: p_max, p_min, schedule"]


def test_bad_literal_lists_choices():
    with pytest.raises(ConfigError, match=r"algo\.masking\.schedule: 'linear' is not one of the valid choices "
                                          r"'stratified', 'ramp', 'random'"):
        build(Root, {"algo": {"masking": {"schedule": "linear"}}})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"algo": {"mu": "four"}}, "algo.mu: expected an integer, got 'four'"),
        ({"algo": {"mu": True}}, "algo.mu: expected an integer, got True"),
        ({"algo": {"beta": "x"}}, "algo.beta: expected a number, got 'x'"),
        ({"debug": 1}, "debug: expected true or false, got 1"),
        ({"algo": {"tag": 3}}, "algo.tag: 3 is not a valid str | null"),
        ({"algo": {"masking": 3}}, "algo.masking: expected a mapping of Masking fields, got 3"),
        ({"algo": {"terms": {"text": "x"}}}, "algo.terms.text: expected a list, got 'x'"),
        ({"algo": {"terms": ["x"]}}, "algo.terms: expected a mapping, got ['x']"),
        ({"algo": {"terms": {"t": [{"weight": "w"}]}}}, "algo.terms.t[0].weight: expected a number, got 'w'"),
        ({"algo": {"masking": {"p_min": 0.0}}}, "algo.masking.p_min: need 0 < p_min <= p_max <= 1"),
    ],
)
def test_bad_values_name_the_key(raw, message):
    with pytest.raises(ConfigError) as err:
        build(Root, raw)
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith(message)


def test_all_problems_reported_together():
    with pytest.raises(ConfigError) as err:
        build(Root, {"algo": {"mu": "x", "nope": 1}, "debug": "y"})
    assert sorted(p.split(":")[0] for p in err.value.problems) == ["algo.mu", "algo.nope", "debug"]


def test_overrides_parse_yaml_values_and_create_sections():
    raw = apply_overrides({"algo": {"mu": 2}}, ["algo.mu=6", "algo.masking.p_max=0.9", "algo.tag=null", "debug=true"])
    cfg = build(Root, raw)
    assert (cfg.algo.mu, cfg.algo.masking.p_max, cfg.algo.tag, cfg.debug) == (6, 0.9, None, True)
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert build(Root, apply_overrides({}, ["algo.beta=3e-3"])).algo.beta == 0.003  # YAML 1.1 reads 3e-3 as str
    assert parse_override("a=") == (["a"], "")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("algo.mu", "expected KEY=VALUE"),
        ("algo..mu=1", "empty key segment"),
        ("algo.mu.x=1", "algo.mu is a value (2), not a section"),
        ("algo.mu=[1", "value is not valid YAML"),
    ],
)
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        apply_overrides({"algo": {"mu": 2}}, [override])


def test_unknown_override_key_fails_at_build():
    with pytest.raises(ConfigError, match=r"algo\.muu: unknown key"):
        build(Root, apply_overrides({}, ["algo.muu=3"]))


def test_yaml_round_trip_and_file_errors(tmp_path):
    cfg = build(Root, {"algo": {"masking": {"schedule": "random"}, "terms": {"t2i": [{"name": "clip"}]}}})
    path = write_yaml(cfg, tmp_path / "run" / "config.yaml")
    assert build(Root, read_yaml(path)) == cfg
    with pytest.raises(ConfigError, match="does not exist"):
        read_yaml(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        read_yaml(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(tmp_path / "bad.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert read_yaml(tmp_path / "empty.yaml") == {}


# ------------------------------------------------------------------ non-finite floats (issue 18, finding 6)
# No float field of the training tree means "infinite" (docs and shipped configs searched), so NaN and ±inf
# are rejected everywhere a float is due; a typed float inside an Optional, a tuple, a list or a mapping too.
TRAIN = "data.train=prompts.jsonl"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("algo.beta=.nan", "algo.beta: got nan; expected a finite number"),  # YAML's NaN
        ("learner.lr=.inf", "learner.lr: got inf; expected a finite number"),
        ("algo.clip_eps=-.inf", "algo.clip_eps: got -inf; expected a finite number"),
        ("algo.beta=nan", "algo.beta: got 'nan'; expected a finite number"),  # YAML leaves these strings
        ("learner.lr=inf", "learner.lr: got 'inf'; expected a finite number"),
        ("learner.lr=1e999", "learner.lr: got '1e999'; expected a finite number"),  # float() overflows to inf
        ("learner.lr=1.0e+999", "learner.lr: got inf; expected a finite number"),  # YAML's own float overflows
        # Optional[float]
        ("algo.advantage.drop_groups_above=.nan", "algo.advantage.drop_groups_above: got nan; expected a finite number"),
        # tuple[float, float]
        ("learner.betas=[0.9, .inf]", "learner.betas[1]: got inf; expected a finite number"),
        # a float field of a dataclass inside dict[str, list[...]]
        ("rewards.tasks={text: [{name: format, weight: .nan}]}", "rewards.tasks.text[0].weight: got nan; expected a finite number"),
    ],
)
def test_non_finite_floats_are_rejected_naming_the_key(override, message):
    from jobs.config import load_config

    with pytest.raises(ConfigError) as err:
        load_config(None, [TRAIN, override])
    assert err.value.problems == [message]


def test_non_finite_floats_are_reported_with_the_other_problems():
    from jobs.config import load_config

    with pytest.raises(ConfigError) as err:
        load_config(None, [TRAIN, "algo.beta=.nan", "learner.lr=-.inf", "algo.mu=four", "algo.advantage.eps=inf"])
    assert sorted(err.value.problems) == [
        "algo.advantage.eps: got 'inf'; expected a finite number",
        "algo.beta: got nan; expected a finite number",
        "algo.mu: expected an integer, got 'four'",
        "learner.lr: got -inf; expected a finite number",
    ]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"algo": {"beta": float("nan")}}, "algo.beta: got nan; expected a finite number"),
        ({"algo": {"masking": {"p_max": float("inf")}}}, "algo.masking.p_max: got inf; expected a finite number"),
        ({"algo": {"terms": {"t": [{"weight": float("-inf")}]}}}, "algo.terms.t[0].weight: got -inf; expected a finite number"),
    ],
)
def test_non_finite_floats_in_a_plain_tree(raw, message):
    with pytest.raises(ConfigError) as err:
        build(Root, raw)
    assert err.value.problems == [message]


def test_finite_floats_and_other_types_are_untouched():
    cfg = build(Root, {"algo": {"beta": 1e308, "tag": "nan", "masking": {"p_min": "1e-3"}}})
    assert (cfg.algo.beta, cfg.algo.tag, cfg.algo.masking.p_min) == (1e308, "nan", 0.001)  # a str field keeps "nan"
    with pytest.raises(ConfigError) as err:
        build(Root, {"algo": {"mu": float("inf")}})
    assert err.value.problems == ["algo.mu: expected an integer, got inf"]


# ------------------------------------------------------------------ duplicate YAML keys (issue 18, finding 8)
def test_a_key_given_twice_is_an_error_naming_file_line_and_key(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("algo:\n  mu: 2\n  beta: 0.1\n  mu: 3\ndebug: true\n")
    with pytest.raises(ConfigError) as err:
        read_yaml(path)
    assert err.value.problems == [f"{path}:4: key 'mu' given twice (first at line 2); YAML keeps only the last, "
                                  "so remove one"]


def test_every_duplicate_is_reported_top_level_and_nested(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(
        "algo:\n"                       # 1
        "  masking:\n"                  # 2
        "    p_min: 0.1\n"              # 3
        "    p_min: 0.2\n"              # 4  nested two levels down
        "  terms: {t: [{weight: 1, weight: 2}]}\n"  # 5  flow mapping inside a list
        "debug: false\n"                # 6
        "algo: {}\n"                    # 7  a whole section twice
    )
    with pytest.raises(ConfigError) as err:
        read_yaml(path)
    assert [p.split(" (first")[0] for p in err.value.problems] == [
        f"{path}:4: key 'p_min' given twice",
        f"{path}:5: key 'weight' given twice",
        f"{path}:7: key 'algo' given twice",
    ]
    assert "(first at line 1)" in err.value.problems[2]


def test_same_key_in_different_mappings_and_merge_keys_are_fine(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(
        "base: &base {p_min: 0.1, p_max: 0.9}\n"
        "algo:\n"
        "  masking: {<<: *base, p_min: 0.2}\n"  # an explicit key overriding a merged one is YAML's intent
        "  terms: {a: [{weight: 1}], b: [{weight: 1}]}\n"
    )
    assert read_yaml(path) == {"base": {"p_min": 0.1, "p_max": 0.9},
                               "algo": {"masking": {"p_min": 0.2, "p_max": 0.9},
                                        "terms": {"a": [{"weight": 1}], "b": [{"weight": 1}]}}}


def test_an_unhashable_key_is_still_reported_as_bad_yaml(tmp_path):
    path = tmp_path / "unhashable.yaml"
    path.write_text("algo:\n  [1, 2]: 3\n")  # skipped by the duplicate check, refused by YAML itself
    with pytest.raises(ConfigError, match="(?s)not valid YAML: .*unhashable key"):
        read_yaml(path)


@dataclass(frozen=True)
class Sources:
    files: str | list[str | Term] = "a.jsonl"
    masking: Masking | None = None


@pytest.mark.parametrize(("raw", "message"), [
    ({"masking": {"p_min": 2.0}}, "masking.p_min: need 0 < p_min <= p_max <= 1"),  # an optional section
    ({"masking": {"shedule": "ramp"}}, "masking.shedule: unknown key; valid keys here: p_max, p_min, schedule"),
    ({"files": [{"name": "x", "wieght": 2}]}, "files[0].wieght: unknown key; valid keys here: name, weight"),
    ({"files": ["b.jsonl", {"weight": "heavy"}]}, "files[1].weight: expected a number, got 'heavy'"),
    ({"files": [3]}, "files[0]: 3 is not a valid str | mapping (Term)"),  # no shape to look into: the union
    ({"files": 5}, "files: 5 is not a valid str | list[str | "),
    ({"masking": 5}, "masking: 5 is not a valid mapping (Masking) | null"),
])
def test_a_union_names_the_bad_field_inside_the_member_of_the_values_shape(raw, message):
    with pytest.raises(ConfigError) as caught:
        build(Sources, raw)
    assert message in str(caught.value) and len(caught.value.problems) == 1, str(caught.value)
