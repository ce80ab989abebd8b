"""RewardService: the reward columns it writes into a batch, weighted totals, None propagation, metrics, batching
per term, deadlines and containment."""

from __future__ import annotations

import time

import numpy as np
import pytest

from rewards import RewardsConfig, RewardService, RewardTermConfig, Sample
from rewards.service import THREAD_GRACE_S, metric_term, validate_output
from tests.rewards.batches import batch_of

THOUGHT = "<think>2 and 2 make 4</think>"


def test_default_text_task_weighted_total_and_metrics():
    samples = [
        Sample("text", "2+2?", THOUGHT + "\\boxed{4}", "4"),  # correct, formatted: 2.0*1 + 0.5*1 = 2.5
        Sample("text", "2+2?", "\\boxed{5}", "4"),  # wrong, unformatted: 0.0
        Sample("text", "2+2?", THOUGHT + "\\boxed{4}", None),  # no gold: correctness None -> total None
    ]
    with RewardService(RewardsConfig(), tasks=["text"]) as service:
        batch, metrics = service.score(batch_of(samples))
    assert batch.total == [2.5, 0.0, None]
    assert batch.rewards == {"correctness": [1.0, 0.0, None], "format": [1.0, 0.0, 1.0]}
    assert batch.reward_reasons == {"correctness": [None, None, "no_gold"], "format": [None, None, None]}
    m = metrics
    assert m["reward/text/correctness/mean"] == 0.5  # (1 + 0) / 2 scorable
    assert batch.total_reason == [None, None, "unscored: term 'correctness' is None (no_gold)"]
    assert m["reward/text/correctness/count"] == 3.0
    assert m["reward/text/correctness/none"] == 1.0 and m["reward/text/correctness/none/no_gold"] == 1.0
    assert m["reward/text/correctness/timeouts"] == 0.0 and m["reward/text/correctness/errors"] == 0.0
    assert m["reward/text/format/mean"] == pytest.approx(2 / 3)
    assert m["reward/text/total/mean"] == 1.25 and m["reward/text/total/none"] == 1.0
    assert m["reward/text/correctness/latency_s"] >= 0.0


def test_the_service_writes_into_the_batch_and_plugins_read_its_rows(misbehaving):
    image = np.full((2, 3, 3), 9, np.uint8)
    samples = [Sample("t2i", "a red circle", "", image=image, meta={"score": 0.5}),
               Sample("text", "2+2?", "\\boxed{4}", "4", meta={"score": 0.25}), Sample("t2i", "x", "", image=image)]
    config = RewardsConfig(tasks={"t2i": [RewardTermConfig(misbehaving("meta_score"), 2.0, isolation="thread")],
                                  "text": [RewardTermConfig(misbehaving("meta_score"), -1.0, isolation="thread"),
                                           RewardTermConfig("format", 0.5)]})
    batch = batch_of(samples)
    with RewardService(config) as service:
        scored, metrics = service.score(batch)
    name = misbehaving("meta_score")
    # by hand: t2i 2 × 0.5 = 1.0; text -1 × 0.25 + 0.5 × 0 (no <think>) = -0.25; the last row has no meta: None
    assert scored.total == [1.0, -0.25, None]
    assert scored.total_reason == [None, None, f"unscored: term {name!r} is None (unscorable)"]
    assert scored.rewards == {name: [0.5, 0.25, None], "format": [None, 0.0, None]}
    assert scored.reward_reasons == {name: [None, None, "unscorable"], "format": ["absent", None, "absent"]}
    assert scored is not batch and batch.total == [None] * 3 and batch.rewards == {}  # a new batch; the input stays
    assert scored.input_ids is batch.input_ids and scored.image[0] is image and scored.prompt == batch.prompt
    assert scored.validate() is scored and scored.scorable().tolist() == [True, True, False]
    assert metrics["reward/t2i/total/mean"] == 1.0 and metrics["reward/text/total/mean"] == -0.25


def test_terms_are_batched_across_tasks_and_weighted_per_task(misbehaving):
    size = RewardTermConfig(misbehaving("batch_size"), weight=1.0)
    config = RewardsConfig(tasks={
        "a": [RewardTermConfig("format", 1.0), size],
        "b": [RewardTermConfig(misbehaving("batch_size"), weight=-0.5)],  # same spec -> same unit, other weight
    })
    samples = [Sample("a", "q", "<think>x</think>y"), Sample("b", "q", "r"), Sample("a", "q", "y")]
    with RewardService(config) as service:
        assert len(service._units) == 2
        batch, metrics = service.score(batch_of(samples))
    # batch_size saw all 3 samples in one call: a -> 1*fmt + 1*3, b -> -0.5*3
    assert batch.total == [1.0 + 3.0, -1.5, 0.0 + 3.0]
    assert batch.rewards["format"] == [1.0, None, 0.0] and batch.reward_reasons["format"] == [None, "absent", None]
    assert metrics["reward/a/total/mean"] == 3.5 and metrics["reward/b/total/mean"] == -1.5


def test_plugins_read_meta_they_know_and_none_is_counted(misbehaving):
    config = RewardsConfig(tasks={"t": [RewardTermConfig(misbehaving("meta_score"), 2.0)]})
    samples = [Sample("t", "q", "r", meta={"score": 0.25, "unrelated": [1, 2]}), Sample("t", "q", "r", meta={"x": 1})]
    with RewardService(config) as service:
        batch, metrics = service.score(batch_of(samples))
    assert batch.total == [0.5, None]
    assert batch.reward_reasons[misbehaving("meta_score")] == [None, "unscorable"]
    assert metrics[f"reward/t/{metric_term(misbehaving('meta_score'))}/none/unscorable"] == 1.0


def test_infinite_loop_plugin_is_cut_off_and_other_terms_survive(misbehaving):
    config = RewardsConfig(tasks={"t": [RewardTermConfig("format", 1.0),
                                        RewardTermConfig(misbehaving("infinite_loop"), 1.0, timeout_s=0.5)]})
    with RewardService(config) as service:
        service.score(batch_of([Sample("t", "q", "warm-up")]))  # first call also starts the worker process
        started = time.monotonic()
        batch, metrics = service.score(batch_of([Sample("t", "q", "<think>a</think>b"), Sample("t", "q", "b")]))
        elapsed = time.monotonic() - started
        again, _ = service.score(batch_of([Sample("t", "q", "b")]))  # the killed/interrupted worker is usable again
    name = misbehaving("infinite_loop")
    assert batch.rewards["format"] == [1.0, 0.0] and batch.rewards[name] == [None, None]
    assert batch.total == [None, None]
    assert batch.reward_reasons[name][0].startswith("timeout: exceeded 0.5 s")
    assert metrics[f"reward/t/{metric_term(name)}/timeouts"] == 2.0
    assert elapsed < 0.5 + 1.0
    assert again.reward_reasons[name][0].startswith("timeout")


@pytest.mark.parametrize(
    ("helper", "isolation", "category", "detail"),
    [
        ("raise_base_exception", "process", "error", "CustomBaseError: reward code raised a BaseException"),
        ("raise_system_exit", "process", "error", "SystemExit: 3"),
        ("raise_keyboard_interrupt", "process", "error", "KeyboardInterrupt"),
        ("hard_exit", "process", "crash", "worker exited with code 7"),
        ("ThreadedBaseException", "auto", "error", "CustomBaseError: raised in the caller's process"),
        ("raise_system_exit", "thread", "error", "SystemExit: 3"),
    ],
)
def test_every_failure_is_contained_as_none_with_a_reason(misbehaving, helper, isolation, category, detail):
    config = RewardsConfig(tasks={"t": [RewardTermConfig(misbehaving(helper), 1.0, isolation=isolation)]})
    with RewardService(config) as service:
        batch, metrics = service.score(batch_of([Sample("t", "q", "r"), Sample("t", "q", "s")]))
    name = misbehaving(helper)
    assert batch.total == [None, None]
    assert batch.reward_reasons[name][0] == f"{category}: {detail}"
    key = "errors" if category in ("error", "crash") else "timeouts"
    assert metrics[f"reward/t/{metric_term(name)}/{key}"] == 2.0


def test_thread_term_that_overruns_is_abandoned_at_its_deadline(misbehaving):
    config = RewardsConfig(tasks={"t": [RewardTermConfig(misbehaving("ThreadedSleeper"), 1.0, timeout_s=0.2,
                                                         options={"seconds": 3.0})]})
    with RewardService(config) as service:
        started = time.monotonic()
        batch, metrics = service.score(batch_of([Sample("t", "q", "r")]))
        elapsed = time.monotonic() - started
    assert batch.total == [None]
    assert batch.reward_reasons[misbehaving("ThreadedSleeper")] == ["timeout: exceeded 0.2 s (thread abandoned)"]
    assert elapsed < 0.2 + THREAD_GRACE_S + 1.0


@pytest.mark.parametrize(
    ("helper", "reasons"),
    [
        ("wrong_length", ["invalid: reward '{name}' returned 3 scores for 2 samples"] * 2),
        ("not_a_number", ["invalid: reward '{name}' returned 'high' at position 0; expected a float or None",
                          "invalid: reward '{name}' returned 'high' at position 1; expected a float or None"]),
        ("non_finite", ["invalid: reward '{name}' returned non-finite nan at 0",
                        "invalid: reward '{name}' returned non-finite inf at 1"]),
    ],
)
def test_broken_outputs_are_invalid(misbehaving, helper, reasons):
    config = RewardsConfig(tasks={"t": [RewardTermConfig(misbehaving(helper), 1.0, isolation="thread")]})
    with RewardService(config) as service:
        batch, metrics = service.score(batch_of([Sample("t", "q", "r"), Sample("t", "q", "s")]))
    name = misbehaving(helper)
    assert batch.reward_reasons[name] == [r.format(name=name) for r in reasons]
    assert metrics[f"reward/t/{metric_term(name)}/errors"] == 2.0


def test_validate_output_directly():
    assert [s.value for s in validate_output((1, 0.5, None), 3, "r")] == [1.0, 0.5, None]
    assert validate_output("ab", 2, "r")[0].reason == "invalid: reward 'r' returned str; expected a list of 2 floats or None"
    assert validate_output(None, 1, "r")[0].reason.startswith("invalid: reward 'r' returned NoneType")
    assert validate_output([True], 1, "r")[0].reason.startswith("invalid: reward 'r' returned True")


def test_input_and_config_errors_name_the_culprit(misbehaving):
    with RewardService(RewardsConfig(), tasks=["text"]) as service:
        with pytest.raises(ValueError, match=r"row 1: task 't2i' has no reward terms in this service; built tasks: text"):
            service.score(batch_of([Sample("text", "q", "r"), Sample("t2i", "q", "")]))
        with pytest.raises(ValueError, match=r"samples\[0\]: got dict; expected rewards.Sample"):
            service.score_terms([{"task": "text"}])
        empty, metrics = service.score(batch_of([]))
        assert (empty.total, empty.rewards, metrics) == ([], {}, {})
    with pytest.raises(ValueError, match="task 'nope' has no reward terms; configured tasks: captioning, mmu, t2i, text"):
        RewardService(RewardsConfig(), tasks=["nope"])
    bad = RewardsConfig(tasks={"x": [RewardTermConfig("nope")]})
    with pytest.raises(ValueError, match="rewards.tasks.x: term 'nope': unknown reward 'nope'; available:"):
        RewardService(bad)
    bad_options = RewardsConfig(tasks={"x": [RewardTermConfig("correctness", options={"timeout": 1})]})
    with pytest.raises(ValueError, match=r"rewards.tasks.x: term 'correctness': .*unknown option\(s\) timeout"):
        RewardService(bad_options)
    bad_value = RewardsConfig(tasks={"x": [RewardTermConfig("correctness", options={"sample_timeout_s": -1})]})
    with pytest.raises(ValueError, match=r"cannot build it: .*sample_timeout_s: got -1.*RewardService\(config, tasks="):
        RewardService(bad_value)


def test_process_plugins_are_built_in_their_worker_when_the_service_is_built(misbehaving):
    good = RewardsConfig(tasks={"t": [RewardTermConfig(misbehaving("Threshold"), 1.0, options={"threshold": 0.5})]})
    with RewardService(good) as service:
        unit = next(iter(service._units.values()))
        assert unit.isolation == "process" and len(unit.pool._workers) == 1  # started and loaded already
        assert service.score(batch_of([Sample("t", "q", "x" * 5), Sample("t", "q", "x" * 4)]))[0].total == [1.0, 0.0]
    bad = RewardsConfig(tasks={"t": [RewardTermConfig(misbehaving("Threshold"), 1.0, options={"threshold": -1})]})
    with pytest.raises(ValueError, match=r"rewards.tasks.t: term '.*Threshold': error: cannot load the reward in the "
                                         r"worker: ValueError: .*bad options \{'threshold': -1\}: threshold: got -1"):
        RewardService(bad)


def test_a_one_off_reward_by_absolute_path_gives_valid_metric_keys(tmp_path):
    """`/abs/path/file.py:fn` holds '/', which would split (or empty) a metric key component."""
    from jobs.metrics import check_key
    from rewards.service import metric_term

    plugin = tmp_path / "sevens.py"
    plugin.write_text("def sevens(samples):\n    return [float(s.response.count('7')) for s in samples]\n")
    name = f"{plugin}:sevens"
    config = RewardsConfig(tasks={"text": [RewardTermConfig(name, 1.0, isolation="thread")]})
    with RewardService(config, tasks=["text"]) as service:
        batch, metrics = service.score(batch_of([Sample("text", "q", "77"), Sample("text", "q", "1")]))
    assert batch.rewards[name] == [2.0, 0.0]  # the batch keeps the configured name
    term = str(plugin).lstrip("/").replace("/", ".") + ":sevens"
    assert metric_term(name) == term and "/" not in term
    assert metrics[f"reward/text/{term}/mean"] == 1.0
    for key in metrics:
        check_key(key)


# ------------------------------------------------ totals that overflow (issue 18, finding 9)
def test_weighted_totals_by_hand():
    from rewards.service import weighted_totals

    task_terms = {"t": [RewardTermConfig("a", 2.0), RewardTermConfig("b", 1.0)]}
    terms = {"a": [1e308, 1e200, 1.0, None, 1e308], "b": [0.0, 1e200, 0.5, 1.0, -1e308]}
    reasons = {"a": [None, None, None, "timeout: exceeded 1 s", None], "b": [None] * 5}
    total, why = weighted_totals(["t"] * 5, task_terms, terms, reasons)
    # 2 × 1e308 = inf: no float holds it; 2 × 1e200 + 1e200 = 3e200; 2 × 1 + 0.5 = 2.5; a None term;
    # 2 × 1e308 overflows before -1e308 is added: summed in config order, exactly as before, so inf
    assert total == [None, 3e200, 2.5, None, None]
    assert why == ["overflow: the weighted total 2 × 1e+308 (a) + 1 × 0 (b) is not a finite float", None, None,
                   "unscored: term 'a' is None (timeout: exceeded 1 s)",
                   "overflow: the weighted total 2 × 1e+308 (a) + 1 × -1e+308 (b) is not a finite float"]


def test_a_total_that_overflows_is_none_with_a_reason_never_inf(misbehaving):
    meta = RewardTermConfig(misbehaving("meta_score"), 2.0, isolation="thread")
    config = RewardsConfig(tasks={"t": [meta]})
    scores = [1e308, 1e200, 0.25, 1e308]
    samples = [Sample("t", "q", "r", meta={"score": s}) for s in scores] + [Sample("t", "q", "r")]
    with RewardService(config) as service:
        batch, metrics = service.score(batch_of(samples))
    assert batch.total == [None, 2e200, 0.5, None, None]
    assert batch.rewards[meta.name] == scores + [None]  # the raw terms stay: they are finite and valid
    assert batch.total_reason[0].startswith("overflow: the weighted total 2 × 1e+308")
    assert batch.total_reason[1:3] == [None, None]
    assert batch.total_reason[4] == f"unscored: term {meta.name!r} is None (unscorable)"
    m = metrics
    assert (m["reward/t/total/none"], m["reward/t/total/none/overflow"], m["reward/t/total/none/unscored"]) == (3, 2, 1)
    assert m["reward/t/total/mean"] == pytest.approx((2e200 + 0.5) / 2)
    # the term's mean over 1e308, 1e200, 0.25, 1e308 sums past the largest float; it is still finite
    assert m[f"reward/t/{metric_term(meta.name)}/mean"] == pytest.approx(1e308 / 2)  # (2 × 1e308 + 1e200 + 0.25) / 4


def test_total_reasons_are_none_exactly_where_the_total_is_a_number():
    samples = [Sample("text", "2+2?", THOUGHT + "\\boxed{4}", "4"), Sample("text", "2+2?", "\\boxed{4}", None)]
    with RewardService(RewardsConfig(), tasks=["text"]) as service:
        batch, metrics = service.score(batch_of(samples))
    assert batch.total == [2.5, None]
    assert batch.total_reason == [None, "unscored: term 'correctness' is None (no_gold)"]
    assert metrics["reward/text/total/none/unscored"] == 1.0 and "reward/text/total/none/overflow" not in metrics
