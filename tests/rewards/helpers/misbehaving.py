"""Rewards that misbehave on purpose, for the deadline and service tests (loaded by file path)."""

import os
import signal
import time


class CustomBaseError(BaseException):
    """A BaseException that `except Exception` in reward code would not catch."""


def constant(samples, value=1.0):
    return [value] * len(samples)


def square(x):
    return x * x


def infinite_loop(samples):
    while True:
        pass


def sleep_then_score(samples, seconds=1.0):
    time.sleep(seconds)
    return [1.0] * len(samples)


def swallow_alarm_loop(samples):
    """Ignores the worker's timer: only a hard kill stops it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    while True:
        pass


def raise_base_exception(samples):
    raise CustomBaseError("reward code raised a BaseException")


def raise_system_exit(samples):
    raise SystemExit(3)


def raise_keyboard_interrupt(samples):
    raise KeyboardInterrupt


def hard_exit(samples):
    os._exit(7)


def wrong_length(samples):
    return [1.0] * (len(samples) + 1)


def not_a_number(samples):
    return ["high"] * len(samples)


def non_finite(samples):
    return [float("nan"), float("inf")] + [1.0] * (len(samples) - 2)


def none_for_odd(samples):
    return [None if i % 2 else 1.0 for i in range(len(samples))]


def item_behaviour(item):
    """Per-item function for DeadlinePool tests: the item says what to do."""
    kind, arg = item
    if kind == "value":
        return arg
    if kind == "sleep":
        time.sleep(arg)
        return arg
    if kind == "loop":
        while True:
            pass
    if kind == "blocked_loop":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        while True:
            pass
    if kind == "exit":
        os._exit(arg)
    if kind == "base":
        raise CustomBaseError(arg)
    if kind == "system_exit":
        raise SystemExit(arg)
    if kind == "unpicklable":
        return lambda: None
    raise ValueError(f"unknown kind {kind!r}")


class FailsToPrepare:
    """Its `prepare` (run by the worker before the first item) fails, like a reward whose model is missing."""

    def prepare(self):
        raise RuntimeError("model file missing")

    def __call__(self, item):
        return item


def batch_size(samples):
    """Every sample scores the size of the batch it arrived in (shows how the service batches)."""
    return [float(len(samples))] * len(samples)


def meta_score(samples):
    """Reads a meta field it knows, ignores the others; None where the field is missing."""
    return [None if not s.meta or "score" not in s.meta else float(s.meta["score"]) for s in samples]


class ThreadedSleeper:
    """Declares thread isolation and then sleeps: the service must stop waiting for it."""

    isolation = "thread"

    def __init__(self, seconds=2.0):
        self.seconds = seconds

    def __call__(self, samples):
        time.sleep(self.seconds)
        return [1.0] * len(samples)


class ThreadedBaseException:
    isolation = "thread"

    def __call__(self, samples):
        raise CustomBaseError("raised in the caller's process")


class Threshold:
    """A plugin with an option it validates (no isolation declared: runs in a worker process)."""

    def __init__(self, threshold=0.5):
        if threshold < 0:
            raise ValueError(f"threshold: got {threshold}; expected >= 0")
        self.threshold = threshold

    def __call__(self, samples):
        return [1.0 if len(s.response) / 10 >= self.threshold else 0.0 for s in samples]
