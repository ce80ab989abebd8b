"""Reward actors: the router answers exactly what an in-process RewardService answers, survives actors
killed mid-batch (ray.kill, os._exit inside), gives None with a reason when it cannot, and fails early."""

from __future__ import annotations

import os
import threading
import time

import pytest
import ray

from actors.cluster import check_resources
from actors.rewards import (
    CPU_GROUP,
    RewardActor,
    RewardActorError,
    RewardActorsConfig,
    RewardRouter,
    on_device,
    reward_roles,
    split_config,
)
from rewards import RewardsConfig, RewardService, RewardTermConfig, Sample
from rewards.service import metric_term
from tests.actors.test_group import ends_as_died
from tests.rewards.batches import batch_of

PLUGINS = '''
import os
import time


def slow_length(samples, delay_s=0.0, started=None):
    """len(response); touches `started` first, then sleeps, so a test can kill its actor mid-batch."""
    if started:
        open(started, "a").close()
    time.sleep(delay_s)
    return [float(len(s.response)) for s in samples]


def exit_once(samples, flag):
    """Kills its process (os._exit) when `flag` exists, deleting it first; else counts the a's."""
    if os.path.exists(flag):
        os.remove(flag)
        os._exit(1)
    return [float(s.response.count("a")) for s in samples]


def always_exit(samples):
    os._exit(1)


def placed(samples, device="cpu"):
    return [1.0] * len(samples)
'''


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("reward_plugins")
    (directory / "plugins.py").write_text(PLUGINS)
    (directory / "exits_on_import.py").write_text("import os\nos._exit(3)\n\ndef score(samples):\n    return []\n")
    return directory


def plugin(plugin_dir, function: str) -> str:
    return f"{plugin_dir / 'plugins.py'}:{function}"


def text_samples() -> list[Sample]:
    return [
        Sample("text", "What is 2+3?", "<think>add</think> \\boxed{5}", answer="5"),
        Sample("text", "What is 2+3?", "<think>guess</think> \\boxed{6}", answer="5"),
        Sample("text", "Say hi", "a banana", answer=None),  # no gold: correctness None, reason no_gold
        Sample("text", "What is 7*6?", "<think>6*7</think> The answer is \\boxed{42}.", answer="42"),
    ]


def comparable(answer):
    """What `score(batch)` answers (the scored batch, the metrics), without the wall-time metrics."""
    batch, metrics = answer
    return (batch.total, batch.total_reason, batch.rewards, batch.reward_reasons,
            {k: v for k, v in metrics.items() if not k.endswith("/latency_s")})


def health(restarts: int, failures: int, timeouts: int = 0) -> dict[str, float]:
    return {"health/reward_actor_restarts": float(restarts), "health/reward_actor_timeouts": float(timeouts),
            "health/reward_actor_failures": float(failures)}


def wait_for(path, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout_s} s"
        time.sleep(0.05)


def test_router_answers_exactly_what_the_service_answers(ray_session, plugin_dir):
    slow = plugin(plugin_dir, "slow_length")
    config = RewardsConfig(tasks={
        "text": [RewardTermConfig("correctness", 2.0, options={"num_workers": 1}), RewardTermConfig("format", 0.5),
                 RewardTermConfig(slow, 0.25)],
        "other": [RewardTermConfig(slow, 1.0)],
    })
    samples = text_samples() + [Sample("other", "p", "abc"), Sample("other", "q", "")]
    samples.insert(1, Sample("other", "r", "xy"))  # tasks interleaved: scattering back must keep the order
    with RewardRouter(config, RewardActorsConfig(heavy_terms=(slow,)), tasks=["text", "other"]) as router:
        assert sorted(router.groups) == sorted([CPU_GROUP, slow])
        assert router.groups[CPU_GROUP].term_names == ["correctness", "format"]
        assert router.groups[slow].gpus == 0.0  # no GPU in this cluster: the heavy actor runs on CPU
        batch = batch_of(samples)
        routed = router.score(batch)
        with pytest.raises(ValueError, match=r"row 0: task 't2i' has no reward terms in this service; "
                                             "built tasks: text, other"):
            router.score(batch_of([Sample("t2i", "p", "")]))
        assert comparable(router.score(batch_of([]))) == ([], [], {}, {}, {})
    with RewardService(config) as service:
        local = service.score(batch)
    assert comparable(routed) == comparable(local)
    assert set(routed[1]) == set(local[1])  # the same metric keys, latencies included
    routed = routed[0]
    assert routed is not batch and routed.input_ids is batch.input_ids and batch.total == [None] * 7
    # by hand: correct & well formatted -> 2.0 + 0.5 + 0.25 * len(response)
    assert routed.total[0] == 2.0 + 0.5 + 0.25 * len(samples[0].response)
    assert routed.rewards["correctness"][1] is None and routed.reward_reasons["correctness"][1] == "absent"
    assert routed.rewards["correctness"][3] is None and routed.reward_reasons["correctness"][3].startswith("no_gold")
    assert routed.total[3] is None  # unscorable, never 0
    assert routed.rewards[slow][5:] == [3.0, 0.0] and routed.total[5:] == [3.0, 0.0]
    actor = RewardActor(config)  # the actor itself (in-process) refuses what is not a Sample
    with pytest.raises(ValueError, match=r"samples\[1\]: got str; expected rewards.Sample"):
        actor.score([samples[0], "not a sample"])
    actor.close()
    assert router.health_metrics() == health(restarts=0, failures=0)


def test_router_and_service_share_one_weighted_total_and_its_overflow(ray_session, plugin_dir):
    # issue 18 finding 9: one function writes the scores and sums the totals for both (no second copy to drift) ...
    import actors.rewards
    import rewards.service

    assert actors.rewards.write_scores is rewards.service.write_scores
    # ... so a finite reward of 1e308 with weight 2 is None with the same reason in an actor as in-process
    slow = plugin(plugin_dir, "slow_length")
    config = RewardsConfig(tasks={"text": [RewardTermConfig("format", 1e308), RewardTermConfig(slow, 2.0)]})
    batch = batch_of([Sample("text", "q", "<think>x</think>y"), Sample("text", "q", "no think tags")])
    with RewardRouter(config, RewardActorsConfig(heavy_terms=(slow,)), tasks=["text"]) as router:
        routed, _ = router.score(batch)
    with RewardService(config) as service:
        local, _ = service.score(batch)
    # by hand: 1e308 × format 1 + 2 × 17 characters = 1e308 (34 is below its precision); format 0: 2 × 13 = 26
    assert routed.total == local.total == [1e308, 26.0]
    config = RewardsConfig(tasks={"text": [RewardTermConfig("format", 1.5e308), RewardTermConfig(slow, 1e307)]})
    with RewardRouter(config, RewardActorsConfig(heavy_terms=(slow,)), tasks=["text"]) as router:
        routed = router.score(batch)
    with RewardService(config) as service:
        local = service.score(batch)
    # 1.5e308 × 1 + 1e307 × 17 = 1.5e308 + 1.7e308 > 1.798e308 (the largest float): None; 0 + 1e307 × 13
    assert routed[0].total == local[0].total == [None, 1e307 * 13]
    assert routed[0].total_reason == local[0].total_reason
    assert routed[0].total_reason[0] == ("overflow: the weighted total 1.5e+308 × 1 (format) + 1e+307 × 17 "
                                         f"({slow}) is not a finite float")
    assert comparable(routed) == comparable(local) and routed[1]["reward/text/total/none/overflow"] == 1.0


def test_an_actor_killed_mid_batch_is_restarted_and_the_batch_rescored(ray_session, plugin_dir, tmp_path):
    started, flag = str(tmp_path / "started"), tmp_path / "exit-now"
    config = RewardsConfig(tasks={"text": [
        RewardTermConfig("format", 0.5),
        RewardTermConfig(plugin(plugin_dir, "slow_length"), 1.0, options={"delay_s": 0.5, "started": started},
                         isolation="process"),  # runs in the actor's deadline pool
        RewardTermConfig(plugin(plugin_dir, "exit_once"), 1.0, options={"flag": str(flag)}, isolation="thread"),
    ]})
    samples = text_samples()
    batch = batch_of(samples)
    with RewardRouter(config, tasks=["text"]) as router:
        undisturbed = router.score(batch)
        assert undisturbed[0].total[0] == 0.5 + len(samples[0].response) + 1.0  # by hand: format, length, one 'a'

        os.remove(started)  # 1. ray.kill while the batch is in the slow reward's worker process
        victim = router.actor(CPU_GROUP)
        result = {}
        scoring = threading.Thread(target=lambda: result.update(batch=router.score(batch)))
        scoring.start()
        wait_for(started)
        ray.kill(victim)
        scoring.join(timeout=120)
        assert not scoring.is_alive()
        assert comparable(result["batch"]) == comparable(undisturbed)
        assert router.actor(CPU_GROUP) is not victim
        assert router.health_metrics() == health(restarts=1, failures=0)

        flag.touch()  # 2. os._exit inside a thread-isolated reward: the actor's own process dies
        assert comparable(router.score(batch)) == comparable(undisturbed)
        assert not flag.exists()
        assert router.health_metrics() == health(restarts=2, failures=0)


def test_a_term_that_cannot_be_scored_is_none_with_a_reason_after_bounded_retries(ray_session, plugin_dir):
    dying = f"{plugin_dir / 'dying.py'}:always_exit"
    (plugin_dir / "dying.py").write_text(PLUGINS)
    config = RewardsConfig(tasks={"text": [RewardTermConfig("format", 0.5),
                                           RewardTermConfig(dying, 1.0, isolation="thread")]})
    samples = text_samples()
    with RewardRouter(config, RewardActorsConfig(heavy_terms=(dying,), max_attempts=2), tasks=["text"]) as router:
        (plugin_dir / "dying.py").unlink()  # so the restart fails too: attempt 1 dies, attempt 2 can't start
        scored, metrics = router.score(batch_of(samples))
        assert scored.rewards[dying] == [None] * 4 and scored.total == [None] * 4  # never 0
        reason = scored.reward_reasons[dying][0]
        assert reason.startswith(f"crash: reward actor {dying!r} failed 2 time(s) (reward_actors.max_attempts=2)")
        assert "reward file not found" in reason
        assert scored.rewards["format"] == [1.0, 1.0, 0.0, 1.0]  # the CPU actor is untouched
        assert metrics[f"reward/text/{metric_term(dying)}/none/crash"] == 4.0
        assert metrics[f"reward/text/{metric_term(dying)}/errors"] == 4.0
        assert "reward/text/total/mean" not in metrics
        assert router.health_metrics() == health(restarts=1, failures=1)
        given_up = router.actor(dying)  # killed now, replaced at the next call (before its first attempt)
        assert ends_as_died(given_up.start, within_s=30)
        again, _ = router.score(batch_of(samples))
        assert again.reward_reasons[dying][0] == reason
        assert router.health_metrics() == health(restarts=3, failures=2)  # both tries were failed starts
        with pytest.raises(KeyError, match="no reward actor 'clip'; actors: "):
            router.actor("clip")


def test_startup_failures_are_errors_before_any_scoring(ray_session, plugin_dir):
    bad_options = RewardsConfig(tasks={"text": [RewardTermConfig("format", 0.5, options={"bogus": 1})]})
    with pytest.raises(ValueError, match=r"rewards.tasks.text: term 'format'.*unknown option\(s\) bogus"):
        RewardRouter(bad_options, tasks=["text"])
    exits = RewardsConfig(tasks={"text": [RewardTermConfig(f"{plugin_dir / 'exits_on_import.py'}:score")]})
    with pytest.raises(RewardActorError, match="reward actor 'cpu' .* died while starting"):
        RewardRouter(exits, tasks=["text"])
    greedy = RewardActorsConfig(cpus_per_actor=64, start_timeout_s=1.0)
    with pytest.raises(RewardActorError, match=r"did not start within reward_actors.start_timeout_s=1 s; "
                                               "it needs 64 CPU and 0 GPU"):
        RewardRouter(RewardsConfig(tasks={"text": [RewardTermConfig("format")]}), greedy, tasks=["text"])
    with pytest.raises(ValueError, match="task 'nope' has no reward terms; configured tasks: "):
        RewardRouter(RewardsConfig(), tasks=["nope"])


def test_split_config_roles_and_devices(plugin_dir):
    config = RewardsConfig()  # algorithm.md §5 defaults
    groups = split_config(config, ["text", "captioning", "t2i"], ("clip", "image_reward"))
    assert [t.name for t in groups[CPU_GROUP].tasks["text"]] == ["correctness", "format"]
    assert [t.name for t in groups[CPU_GROUP].tasks["captioning"]] == ["correctness", "format"]
    assert sorted(groups["clip"].tasks) == ["captioning", "t2i"] and list(groups["image_reward"].tasks) == ["t2i"]
    assert list(split_config(config, ["text"], ("clip",))) == [CPU_GROUP]

    cfg = RewardActorsConfig(cpus_per_actor=2, gpus_per_heavy_actor=0.5)
    roles = reward_roles(config, cfg, tasks=["text", "t2i"], has_gpus=True)
    assert [(r.count, r.cpus, r.gpus) for r in roles] == [(1, 2, 0.0), (2, 2, 0.5)]
    assert [(r.count, r.gpus) for r in reward_roles(config, cfg, tasks=["t2i"], has_gpus=False)] == [(2, 0.0)]
    check_resources(roles, [{"CPU": 6.0, "GPU": 1.0}])
    with pytest.raises(ValueError, match=r"rewards.tasks × reward_actors.cpus_per_actor = 1 × 2 \+ "
                                         r"reward_actors.heavy_terms × reward_actors.cpus_per_actor = 2 × 2: "
                                         "6 CPU requested but the cluster has 4"):
        check_resources(roles, [{"CPU": 4.0, "GPU": 1.0}])

    takes_device = plugin(plugin_dir, "placed")
    placed_config = on_device(RewardsConfig(tasks={"t2i": [
        RewardTermConfig(takes_device), RewardTermConfig("format"),
        RewardTermConfig(plugin(plugin_dir, "slow_length")),
    ], "text": [RewardTermConfig(f"{plugin_dir / 'missing.py'}:f")]}), "cuda")
    t2i = placed_config.tasks["t2i"]
    assert t2i[0].options == {"device": "cuda"} and t2i[1].options == {} and t2i[2].options == {}
    assert placed_config.tasks["text"][0].options == {}  # unresolvable: left for the service to report
    explicit = on_device(RewardsConfig(tasks={"t2i": [RewardTermConfig(takes_device, options={"device": "cuda:1"})]}),
                         "cuda")
    assert explicit.tasks["t2i"][0].options == {"device": "cuda:1"}


@pytest.mark.parametrize("field, value, message", [
    ("heavy_terms", ("clip", ""), "heavy_terms: .*expected a list of term names"),
    ("heavy_terms", ["clip"], "heavy_terms: .*expected a list of term names"),
    ("cpus_per_actor", 0, "cpus_per_actor: 0; each reward actor needs > 0 CPU"),
    ("gpus_per_heavy_actor", -1, "gpus_per_heavy_actor: -1; use 0, a fraction"),
    ("gpus_per_heavy_actor", 1.5, "gpus_per_heavy_actor: 1.5; use 0, a fraction"),
    ("max_attempts", 0, "max_attempts: 0; need at least 1"),
    ("start_timeout_s", 0, "start_timeout_s: 0 must be positive"),
])
def test_config_errors(field, value, message):
    with pytest.raises(ValueError, match=message):
        RewardActorsConfig(**{field: value})
    assert RewardActorsConfig(gpus_per_heavy_actor=2).gpus_per_heavy_actor == 2
