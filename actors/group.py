"""`ActorGroup` and `wait`: the one way the driver starts, waits on, replaces and stops a role's Ray actors.

The roles using them: learner ranks (actors/learner.py), rollout workers (actors/rollout_pool.py), reward
actors (actors/rewards.py) and the rollout job's workers (jobs/rollout_shards.py). Every wait has a
deadline: a call whose actor died, or that is still running when the deadline passes (a hung or stopped
process), comes back as a failed `Outcome`, never as a hang. What a failure means is the owner's policy:
the rollout pool and job replace the actor (with the current weights) and re-sample its shard, the reward router
re-sends the batch up to `reward_actors.max_attempts`, and the learner group aborts the run (a rank's
optimizer state cannot be rebuilt by a fresh actor). The deadlines, per role: docs/reliability.md §14.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

ACTOR_FAILURES = (RayActorError, ActorDiedError, ActorUnavailableError)
"""What `ray.get` raises when the actor behind a call is gone (killed, crashed, its node lost)."""

Key = TypeVar("Key", bound=Hashable)


@dataclass(frozen=True)
class Outcome:
    """How one call ended: `ok` (its `value`), `error` (the method raised `error`; the actor lives), `died`
    (the actor is gone: `error` says how) or `timeout` (still running at the deadline: the actor may be hung;
    it is NOT killed here, the owner decides)."""

    status: Literal["ok", "error", "died", "timeout"]
    value: Any = None
    error: BaseException | None = None

    @property
    def actor_failed(self) -> bool:
        """The actor can no longer be trusted with work: it died or overran its deadline."""
        return self.status in ("died", "timeout")

    def describe(self, timeout_s: float | None, key: str | None = None) -> str:
        """One line for logs and errors; `key`: the config key that set `timeout_s`."""
        if self.status == "timeout":
            return f"no answer within {timeout_s:g} s{f' ({key})' if key else ''} (hung or stopped?)"
        text = str(self.error).strip().splitlines()
        return f"{type(self.error).__name__}: {text[-1] if text else ''}".rstrip(": ")


def wait(refs: Mapping[Key, ray.ObjectRef], timeout_s: float | None) -> Iterator[tuple[Key, Outcome]]:
    """(key, Outcome) of every call in `refs`, in the order they finish; the calls still running
    `timeout_s` seconds after this starts come back as `timeout` (None: no deadline)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    pending = {ref: key for key, ref in refs.items()}
    while pending:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        done, _ = ray.wait(list(pending), num_returns=1, timeout=remaining)
        if not done:
            for key in pending.values():
                yield key, Outcome("timeout")
            return
        key = pending.pop(done[0])
        try:
            yield key, Outcome("ok", ray.get(done[0]))
        except ACTOR_FAILURES as exc:
            yield key, Outcome("died", error=exc)
        except Exception as exc:  # noqa: BLE001 - the method raised: reported, never swallowed (see owners)
            yield key, Outcome("error", error=getattr(exc, "cause", None) or exc)


def wait_one(ref: ray.ObjectRef, timeout_s: float | None) -> Outcome:
    """How one call ends within `timeout_s` seconds (`wait` of a single call)."""
    ((_, outcome),) = wait({0: ref}, timeout_s)
    return outcome


def unfinished(refs: Mapping[Key, ray.ObjectRef], timeout_s: float) -> list[Key]:
    """The keys of the calls still running `timeout_s` seconds from now; the others' results (or failures)
    are left in the object store, unread (for a caller that needs the actors free, not the results)."""
    keys = {ref: key for key, ref in refs.items()}
    _, running = ray.wait(list(keys), num_returns=len(keys), timeout=max(0.0, timeout_s), fetch_local=False)
    return [keys[ref] for ref in running]


def gather(refs: Sequence[ray.ObjectRef], what: str, who: str, timeout_s: float | None,
           key: str | None = None) -> list[Any]:
    """Every call's value, in order. Raises as soon as one fails (the others may be waiting for it in a
    collective for ever), naming the call (`what`), the actor (`who` and its index) and how it failed; at
    the deadline it names every actor that has not answered (`key`: the config key of `timeout_s`). An actor
    that died or overran raises `ActorLost`, a method that raised `ActorCallError`."""
    results: list[Any] = [None] * len(refs)
    late: list[int] = []
    for index, outcome in wait(dict(enumerate(refs)), timeout_s):
        if outcome.status == "timeout":
            late.append(index)
        elif outcome.status != "ok":
            error = ActorLost if outcome.actor_failed else ActorCallError
            raise error(f"{what} failed on {who} {index} of {len(refs)}: {outcome.describe(timeout_s, key)}",
                        outcome) from outcome.error
        else:
            results[index] = outcome.value
    if late:
        raise ActorLost(f"{what} failed on {who} {', '.join(map(str, late))} of {len(refs)}: "
                        f"{Outcome('timeout').describe(timeout_s, key)}", Outcome("timeout"))
    return results


class ActorCallError(RuntimeError):
    """A call of `gather` failed; `outcome` says how."""

    def __init__(self, message: str, outcome: Outcome):
        super().__init__(message)
        self.outcome = outcome


class ActorLost(ActorCallError):
    """A call of `gather` whose actor died or overran its deadline (`outcome.status` "died" or "timeout": a hung
    actor may still be running). Where the actor cannot be replaced (a learner rank) the run cannot go on."""

    exit_code = 4  # jobs.train's exit status: not an input error (2), a non-finite abort (3) or a signal (128 + n)


class ActorGroup:
    """`count` actors of one role in numbered slots. `start(index, generation)` creates the actor of a slot
    (generation 0 first, +1 per replacement, e.g. to name it); `replace` kills a slot's actor and starts a
    fresh one there."""

    def __init__(self, role: str, count: int, start: Callable[[int, int], Any]):
        self.role, self._start = role, start
        self.generations = [0] * count
        """Per slot: 0 for the first actor, +1 per replacement (a call sent to an older one is stale)."""
        self.restarts = 0
        """Replacements so far, over every slot."""
        self.actors: list[Any] = []
        try:
            for index in range(count):
                self.actors.append(start(index, 0))
        except BaseException:
            self.shutdown()
            raise

    def __len__(self) -> int:
        return len(self.actors)

    def __getitem__(self, index: int) -> Any:
        return self.actors[index]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.actors)

    def replace(self, index: int) -> Any:
        """Kill slot `index`'s actor (dead, hung or healthy) and put a freshly started one there."""
        self.kill(index)
        self.generations[index] += 1
        self.restarts += 1
        self.actors[index] = self._start(index, self.generations[index])
        return self.actors[index]

    def kill(self, index: int) -> None:
        """Stop slot `index`'s actor now (no Ray restart); one already gone is fine."""
        try:
            ray.kill(self.actors[index], no_restart=True)
        except Exception:  # noqa: BLE001 - already dead, or its node is gone
            pass

    def shutdown(self) -> None:
        """Kill every actor; the group is empty afterwards."""
        for index in range(len(self.actors)):
            self.kill(index)
        self.actors = []
