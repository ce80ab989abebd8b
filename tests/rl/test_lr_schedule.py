"""rl/lr_schedule.py against values worked out by hand from the formula in its docstring, the three trainers
that use it (each keeps the factors it had), and every error branch."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from rl.lr_schedule import DECAYS, check_schedule, learning_rate, set_learning_rate

CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs"


def rate(step, **kw):
    return learning_rate(step, **kw)


def test_cosine_warmup_then_decay_to_min_at_total_steps():
    kw = dict(total_steps=110, warmup_steps=10, decay="cosine", min_ratio=0.1)
    assert rate(0, **kw) == pytest.approx(0.1)  # (0 + 1) / 10: the first step already moves
    assert rate(4, **kw) == pytest.approx(0.5)
    assert rate(9, **kw) == 1.0  # end of warm-up
    assert rate(10, **kw) == 1.0  # cosine start, progress 0
    assert rate(60, **kw) == pytest.approx(0.55)  # progress 1/2: 0.1 + 0.9 * 0.5
    # last step 109: progress 0.99, 1 + cos(0.99 pi) = 1 - cos(0.01 pi) = 4.9344e-4
    assert rate(109, **kw) == pytest.approx(0.1 + 0.45 * 4.9344e-4, rel=1e-5)
    assert rate(110, **kw) == pytest.approx(0.1) and rate(10_000, **kw) == pytest.approx(0.1)  # held at the end


def test_linear_decay_and_base_multiplier():
    kw = dict(total_steps=110, warmup_steps=10, decay="linear", min_ratio=0.2)
    assert learning_rate(0, 2e-3, **kw) == pytest.approx(2e-4)
    assert learning_rate(9, 2e-3, **kw) == pytest.approx(2e-3)
    assert learning_rate(35, 2e-3, **kw) == pytest.approx(2e-3 * 0.8)  # progress 1/4: 0.2 + 0.8 * 3/4
    assert learning_rate(60, 2e-3, **kw) == pytest.approx(2e-3 * 0.6)
    assert learning_rate(110, 2e-3, **kw) == pytest.approx(2e-3 * 0.2)
    assert rate(5, total_steps=10, decay="linear") == pytest.approx(0.5)  # no warm-up, min 0


def test_constant_with_and_without_warmup():
    assert rate(0, total_steps=None) == 1.0 and rate(10**6, total_steps=None) == 1.0
    assert learning_rate(0, 1e-6, total_steps=None) == 1e-6  # the RL learner's default: exactly lr
    kw = dict(total_steps=None, warmup_steps=4)
    assert [rate(s, **kw) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_min_at_last_step_reaches_the_minimum_on_the_last_step():
    kw = dict(total_steps=200, warmup_steps=50, decay="cosine", min_at_last_step=True)
    assert rate(0, **kw) == pytest.approx(1 / 50) and rate(49, **kw) == 1.0
    assert rate(50, **kw) == pytest.approx(0.5 * (1 + math.cos(math.pi / 150)))  # decays from the first step
    assert rate(124, **kw) == pytest.approx(0.5)  # progress 75/150
    assert rate(199, **kw) == pytest.approx(0.0, abs=1e-15)
    # a 2-step linear run without warm-up: progress 1/2 then 1, so the last step runs at the minimum 0.25
    assert [rate(s, total_steps=2, decay="linear", min_ratio=0.25, min_at_last_step=True) for s in range(2)] == \
        pytest.approx([0.625, 0.25])


def test_warmup_longer_than_the_run_and_a_degenerate_span():
    assert rate(2, total_steps=3, warmup_steps=10, decay="cosine") == pytest.approx(0.3)  # never reaches the peak
    # total <= warm-up: span 1; the step right after warm-up runs at the peak, the next at the minimum
    assert rate(3, total_steps=3, warmup_steps=3, decay="cosine", min_ratio=0.1) == 1.0
    assert rate(4, total_steps=3, warmup_steps=3, decay="cosine", min_ratio=0.1) == pytest.approx(0.1)


def _sft_published(step, max_steps, warmup, min_ratio, base):
    """jobs/sft.py's formula as its docstring published it before SFT read the learner's schedule (`sft.warmup_steps`,
    `sft.min_lr_ratio`, always cosine; written out here, not imported)."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def sft_rate(step, cfg):
    """The rate jobs.sft sets for its loop step `step` (0-based): the learner's schedule at rl_step step + 1."""
    from actors.learner import scheduled_lr

    return scheduled_lr(cfg.learner, step + 1, cfg.sft.max_steps)


@pytest.mark.parametrize(("config", "warmup", "min_ratio"), [
    ("sft_demo.yaml", 100, 0.1),  # the old sft.warmup_steps / sft.min_lr_ratio of each shipped config
    ("sft_sign_slip.yaml", 0, 1.0),  # a constant rate: learner.lr_decay constant now, a cosine to 1.0 before
])
def test_sft_keeps_its_learning_rate_at_every_step(config, warmup, min_ratio):
    from actors.learner import has_lr_schedule
    from jobs.config import load_config

    cfg = load_config(CONFIGS / config)
    steps, base = cfg.sft.max_steps, cfg.learner.lr
    assert [sft_rate(s, cfg) for s in range(steps)] == [_sft_published(s, steps, warmup, min_ratio, base)
                                                        for s in range(steps)]
    assert has_lr_schedule(cfg.learner) == (config == "sft_demo.yaml")  # else the learner leaves lr as it is


def test_the_three_trainers_keep_their_numbers():
    from jobs.config import load_config
    from jobs.tasks.shapes_sft import learning_rate_factor
    from jobs.tasks.train_shapes_vq import TrainSettings
    from jobs.tasks.train_shapes_vq import learning_rate as vq_rate

    def sft(steps, warmup, ratio, base):
        return load_config(CONFIGS / "sft_demo.yaml", [f"sft.max_steps={steps}", f"learner.lr_warmup_steps={warmup}",
                                                       f"learner.min_lr_ratio={ratio}", f"learner.lr={base}"])

    cfg = sft(110, 10, 0.1, 3e-3)
    assert [sft_rate(s, cfg) for s in (0, 9, 10, 60, 109)] == pytest.approx(
        [3e-4, 3e-3, 3e-3, 3e-3 * 0.55, 3e-3 * (0.1 + 0.45 * 4.9344e-4)], rel=1e-5)
    for steps, warmup, ratio, base in ((110, 10, 0.1, 3e-3), (2000, 100, 0.1, 1e-3), (7, 0, 0.25, 1.0)):
        cfg = sft(steps, warmup, ratio, base)
        assert all(sft_rate(s, cfg) == _sft_published(s, steps, warmup, ratio, base) for s in range(steps + 1))

    # shapes_sft: warm-up min(50, steps // 2), cosine to 0 on the last step
    assert [learning_rate_factor(s, 600) for s in (0, 49, 50, 324, 599)] == pytest.approx(
        [1 / 50, 1.0, 0.5 * (1 + math.cos(math.pi / 550)), 0.5, 0.0], abs=1e-12)
    assert [learning_rate_factor(s, 3) for s in range(3)] == pytest.approx([1.0, 0.5, 0.0])

    # train_shapes_vq: warm-up, cosine to 10% at `steps`
    settings = TrainSettings(steps=3000, warmup=50, lr=2e-3)
    assert [vq_rate(s, settings) for s in (0, 49, 50, 1525, 2999)] == pytest.approx(
        [2e-3 / 50, 2e-3, 2e-3, 2e-3 * 0.55, 2e-3 * (0.1 + 0.45 * (1 - math.cos(math.pi / 2950)))], rel=1e-9)


def test_set_learning_rate_on_a_torch_optimizer_and_a_wrapper():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    inner = torch.optim.AdamW([{"params": [a]}, {"params": [b], "lr": 5.0}], lr=1.0)
    set_learning_rate(inner, 0.25)
    assert [g["lr"] for g in inner.param_groups] == [0.25, 0.25]

    class Wrapper:  # the shape of a DeepSpeed ZeRO / bf16 optimizer: own groups plus the wrapped optimizer
        def __init__(self, optimizer):
            self.optimizer = optimizer
            self.param_groups = [{"lr": 1.0}]

    wrapper = Wrapper(inner)
    set_learning_rate(wrapper, 0.5)
    assert wrapper.param_groups[0]["lr"] == 0.5 and [g["lr"] for g in inner.param_groups] == [0.5, 0.5]
    with pytest.raises(RuntimeError, match="object has no param_groups"):
        set_learning_rate(object(), 0.1)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(warmup_steps=0, decay="exp", min_ratio=0.0),
     "lr_decay: got 'exp'; expected one of constant, cosine, linear"),
    (dict(warmup_steps=-1, decay="cosine", min_ratio=0.0), r"lr_warmup_steps: got -1; expected a whole number"),
    (dict(warmup_steps=2.5, decay="cosine", min_ratio=0.0), r"lr_warmup_steps: got 2.5"),
    (dict(warmup_steps=True, decay="cosine", min_ratio=0.0), r"lr_warmup_steps: got True"),
    (dict(warmup_steps=0, decay="cosine", min_ratio=-0.1), r"min_lr_ratio: got -0.1; expected a fraction of lr in \[0, 1\]"),
    (dict(warmup_steps=0, decay="cosine", min_ratio=1.5), r"min_lr_ratio: got 1.5"),
    (dict(warmup_steps=0, decay="cosine", min_ratio=0.0, total_steps=0), r"total_steps: got 0; expected at least 1"),
])
def test_check_schedule_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_schedule(**kwargs)


def test_check_schedule_accepts_the_edges():
    for decay in DECAYS:
        check_schedule(warmup_steps=0, decay=decay, min_ratio=0.0, total_steps=1)
        check_schedule(warmup_steps=5, decay=decay, min_ratio=1.0)


def test_learning_rate_errors():
    with pytest.raises(ValueError, match="step: got -1; steps count from 0"):
        rate(-1, total_steps=10)
    with pytest.raises(ValueError, match="a cosine decay needs total_steps"):
        rate(3, total_steps=None, decay="cosine")
    with pytest.raises(ValueError, match="decay: got 'step'; expected one of constant, cosine, linear"):
        rate(3, total_steps=10, decay="step")
