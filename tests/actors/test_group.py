"""actors/group.py: deadlines on every wait, and slots whose actors are replaced (real Ray actors, loopback)."""

from __future__ import annotations

import os
import signal
import time

import pytest
import ray

from actors.group import ActorCallError, ActorGroup, gather, wait

pytestmark = pytest.mark.usefixtures("ray_session")


class Probe:
    """A tiny actor whose methods end in each way a real one can."""

    def __init__(self, label: str):
        self.label = label

    def echo(self, value):
        return (self.label, value)

    def pid(self) -> int:
        return os.getpid()

    def sleep(self, seconds: float) -> str:
        time.sleep(seconds)
        return "woke"

    def fail(self) -> None:
        raise KeyError("no such thing")

    def die(self) -> None:
        os._exit(1)


def start_probe(labels: list[str]):
    """`start` for ActorGroup: slot i gets an actor labelled '<i>.<generation>' (recorded in `labels`)."""
    def start(index: int, generation: int):
        label = f"{index}.{generation}"
        labels.append(label)
        return ray.remote(Probe).options(num_cpus=0.1).remote(label)
    return start


def test_wait_reports_each_ending_with_its_key():
    actor = ray.remote(Probe).options(num_cpus=0.1).remote("a")
    dying = ray.remote(Probe).options(num_cpus=0.1).remote("b")
    refs = {"ok": actor.echo.remote(7), "error": actor.fail.remote(), "died": dying.die.remote(),
            "slow": actor.sleep.remote(30)}
    started = time.monotonic()
    outcomes = dict(wait(refs, timeout_s=3.0))
    elapsed = time.monotonic() - started
    assert set(outcomes) == set(refs)
    assert outcomes["ok"].status == "ok" and outcomes["ok"].value == ("a", 7)
    assert outcomes["error"].status == "error" and isinstance(outcomes["error"].error, KeyError)
    assert not outcomes["error"].actor_failed
    assert outcomes["died"].status == "died" and outcomes["died"].actor_failed
    assert outcomes["slow"].status == "timeout" and outcomes["slow"].actor_failed
    assert "within 3 s" in outcomes["slow"].describe(3.0)
    assert 2.5 < elapsed < 20  # returned at the deadline, not when the sleep ends (30 s)
    ray.kill(actor)


def test_wait_without_deadline_waits_for_the_call():
    actor = ray.remote(Probe).options(num_cpus=0.1).remote("a")
    (key, outcome), = list(wait({"k": actor.sleep.remote(0.5)}, timeout_s=None))
    assert key == "k" and outcome.status == "ok" and outcome.value == "woke"
    ray.kill(actor)


def test_a_stopped_process_times_out_instead_of_hanging():
    """SIGSTOP, as the reliability probe did: the call never ends, the deadline ends the wait."""
    actor = ray.remote(Probe).options(num_cpus=0.1).remote("a")
    pid = ray.get(actor.pid.remote())
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(ActorCallError, match=r"echo failed on probe 0 of 1: no answer within 2 s") as info:
            gather([actor.echo.remote(1)], "echo", "probe", timeout_s=2.0)
        assert info.value.outcome.status == "timeout"
    finally:
        os.kill(pid, signal.SIGCONT)
        ray.kill(actor)


def test_gather_keeps_order_and_names_the_failing_actor():
    actors = [ray.remote(Probe).options(num_cpus=0.1).remote(str(i)) for i in range(3)]
    assert gather([a.echo.remote(i) for i, a in enumerate(actors)], "echo", "probe", 30) == [
        ("0", 0), ("1", 1), ("2", 2)]
    with pytest.raises(ActorCallError, match=r"fail failed on probe 1 of 2: KeyError") as info:
        gather([actors[0].sleep.remote(0.1), actors[1].fail.remote()], "fail", "probe", 30)
    assert info.value.outcome.status == "error"
    with pytest.raises(ActorCallError, match=r"die failed on probe 0 of 1: .*Actor") as info:
        gather([actors[2].die.remote()], "die", "probe", 30)
    assert info.value.outcome.status == "died"
    for actor in actors:
        ray.kill(actor)


def test_group_replaces_a_slot_and_counts_it():
    labels: list[str] = []
    group = ActorGroup("probe", 2, start_probe(labels))
    assert len(group) == 2 and labels == ["0.0", "1.0"] and group.generations == [0, 0]
    old = group[1]
    dead_ref = old.die.remote()
    assert dict(wait({"x": dead_ref}, 30))["x"].status == "died"
    fresh = group.replace(1)
    assert fresh is group[1] and group.generations == [0, 1] and group.restarts == 1 and labels[-1] == "1.1"
    assert ray.get(fresh.echo.remote("hi")) == ("1.1", "hi")
    hung = group[0]  # a live actor is killed when replaced: its pending call then fails as died
    pending = hung.sleep.remote(60)
    group.replace(0)
    assert dict(wait({"x": pending}, 30))["x"].status == "died"
    assert [ray.get(a.echo.remote(0))[0] for a in group] == ["0.1", "1.1"] and group.restarts == 2
    group.shutdown()
    assert len(group) == 0
    assert ends_as_died(fresh.echo, 0, within_s=30)


def ends_as_died(method, *args, within_s: float) -> bool:
    """True once a new call `method.remote(*args)` fails as died. ray.kill only sends the kill: a call
    made right after it can still be served before the actor exits (seen on CI), so ask until the deadline."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        outcome = dict(wait({"x": method.remote(*args)}, max(0.0, deadline - time.monotonic())))["x"]
        if outcome.status == "died":
            return True
        time.sleep(0.2)
    return False


def test_a_start_that_fails_stops_the_actors_already_started():
    started = []

    def start(index: int, generation: int):
        if index == 2:
            raise ValueError("slot 2 cannot start")
        actor = ray.remote(Probe).options(num_cpus=0.1).remote(str(index))
        started.append(actor)
        return actor

    with pytest.raises(ValueError, match="slot 2 cannot start"):
        ActorGroup("probe", 3, start)
    assert len(started) == 2
    for actor in started:
        assert ends_as_died(actor.echo, 0, within_s=30)
