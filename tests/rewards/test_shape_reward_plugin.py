"""The image-reward plugin example (examples/shape_reward): hand-computed scores, None where it cannot score, and
the two ways to plug it in: pip-installed (entry point `shape_match`) and by file path."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "examples" / "shape_reward"
FILE_NAME = "examples/shape_reward/unigrpo_shape_reward/shape_match.py:ShapeMatch"
WHITE, RED = [255, 255, 255], [255, 0, 0]

sys.path.insert(0, str(PLUGIN))
from unigrpo_shape_reward.shape_match import ShapeMatch, template  # noqa: E402

sys.path.remove(str(PLUGIN))


def canvas(size: int = 4) -> np.ndarray:
    return np.full((size, size, 3), 255, np.uint8)


def drawn(shape: str, rgb, size: int = 32, center=(16, 16), half=8) -> np.ndarray:
    """`shape` anti-aliased onto a white canvas (the reward's own template as coverage)."""
    cover = template(shape, center, half, size, size)[..., None]  # [H, W, 1]
    return (255 * (1 - cover) + np.asarray(rgb, float) * cover).round().astype(np.uint8)


def test_hand_computed_scores_with_the_rows_geometry():
    reward = ShapeMatch()
    meta = {"shape": "square", "rgb": RED, "background": WHITE, "center": [2, 2], "size": 1}
    # the template is pixels [1, 3) x [1, 3), fully covered: 4 pixels of weight 1
    exact = canvas()
    exact[1:3, 1:3] = RED
    assert reward.score_one(exact, meta) == 1.0
    half = canvas()
    half[1, 1:3] = RED  # 2 of the 4: min sums to 2, max to 4
    assert reward.score_one(half, meta) == 0.5
    quarter = canvas()
    # a pixel a quarter of the way from red to white: distance = 0.25·contrast, m = 1 − 0.25/0.5 = 0.5
    quarter[1:3, 1:3] = [255, 64, 64]  # 64/255 ≈ 0.251 of the way
    assert reward.score_one(quarter, meta) == pytest.approx(4 * (1 - (64 / 255) / 0.5) / 4, abs=1e-12)
    outside = exact.copy()
    outside[0, 0] = RED  # one extra red pixel outside the template: IoU 4 / 5
    assert reward.score_one(outside, meta) == pytest.approx(0.8)
    assert ShapeMatch(tolerance=1.0).score_one(quarter, meta) == pytest.approx(1 - (64 / 255) / 1.0)


def test_fitted_template_tells_colours_and_shapes_apart():
    reward = ShapeMatch()
    scores = {(drawn_shape, asked): reward.score_one(drawn(drawn_shape, RED), {"shape": asked, "rgb": RED})
              for drawn_shape in ("circle", "square", "triangle") for asked in ("circle", "square", "triangle")}
    for shape in ("circle", "square", "triangle"):
        assert scores[shape, shape] > 0.95  # anti-aliased edges: not exactly 1
        assert all(scores[shape, shape] > scores[shape, other] + 0.1 for other in ("circle", "square", "triangle")
                   if other != shape)
    assert reward.score_one(drawn("circle", RED), {"shape": "circle", "rgb": [0, 0, 255]}) == 0.0  # wrong colour
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    assert reward.score_one(noise, {"shape": "circle", "rgb": RED}) < 0.05
    dot = np.full((32, 32, 3), 255, np.uint8)
    dot[16, 16:18] = RED  # two red pixels are not a perfect tiny circle: the fit is at least min_area
    assert reward.score_one(dot, {"shape": "circle", "rgb": RED}) == pytest.approx(2 / (0.05 * 32 * 32), rel=0.05)
    assert ShapeMatch(min_area=0.0).score_one(dot, {"shape": "circle", "rgb": RED}) > 0.3
    assert reward.score_one(canvas(32), {"shape": "circle", "rgb": RED}) == 0.0  # no red at all


def test_score_rises_as_the_image_approaches_the_target():
    reward = ShapeMatch()
    target, start = drawn("circle", RED).astype(float), np.full((32, 32, 3), 255.0)
    start[4:12, 20:28] = [0, 0, 255]  # a blue square elsewhere
    blends = [((1 - a) * start + a * target).round().astype(np.uint8) for a in np.linspace(0, 1, 6)]
    scores = [reward.score_one(image, {"shape": "circle", "rgb": RED}) for image in blends]
    assert scores[0] == 0.0 and scores[-1] > 0.95
    assert all(b >= a for a, b in zip(scores, scores[1:])), scores
    assert scores[2] == 0.0 < scores[3]  # pixels less than halfway to red (tolerance 0.5) do not count
    wide = [ShapeMatch(tolerance=1.0).score_one(image, {"shape": "circle", "rgb": RED}) for image in blends]
    assert wide[0] == 0.0 and all(b > a for a, b in zip(wide, wide[1:])), wide  # every step counts


def test_unscorable_samples_are_none_never_zero():
    from rewards import Sample

    reward = ShapeMatch()
    image = drawn("circle", RED)
    cases = [
        Sample("t2i", "a red circle", "", image=None, meta={"shape": "circle", "rgb": RED}),  # no image
        Sample("t2i", "a red circle", "", image=image, meta=None),
        Sample("t2i", "a red circle", "", image=image, meta={"shape": "circle"}),  # no rgb
        Sample("t2i", "a red circle", "", image=image, meta={"rgb": RED}),  # no shape
        Sample("t2i", "a red star", "", image=image, meta={"shape": "star", "rgb": RED}),  # unknown shape
        Sample("t2i", "a white circle", "", image=image, meta={"shape": "circle", "rgb": [250, 250, 250]}),
        Sample("t2i", "a red circle", "", image=np.zeros((1, 5, 3), np.uint8), meta={"shape": "circle", "rgb": RED}),
        Sample("t2i", "a red circle", "", image=image, meta={"shape": "circle", "rgb": RED}),  # fine
    ]
    scores = reward(cases)
    assert scores[:-1] == [None] * 7 and scores[-1] > 0.95


@pytest.mark.parametrize(("options", "words"), [({"tolerance": 0}, "tolerance: 0"), ({"tolerance": 1.5}, "tolerance"),
                                                ({"min_area": 1.0}, "min_area: 1.0"), ({"min_area": -0.1}, "min_area")])
def test_bad_options_name_the_option(options, words):
    with pytest.raises(ValueError, match=words):
        ShapeMatch(**options)


def test_by_file_path_through_the_service(monkeypatch):
    from rewards import RewardsConfig, RewardService, RewardTermConfig, Sample
    from tests.rewards.batches import batch_of

    monkeypatch.chdir(REPO)
    config = RewardsConfig(tasks={"t2i": [RewardTermConfig(FILE_NAME, 2.0, {"tolerance": 0.5})]})
    samples = [Sample("t2i", "a red square", "", image=drawn("square", RED), meta={"shape": "square", "rgb": RED}),
               Sample("t2i", "a red square", "", image=None, meta={"shape": "square", "rgb": RED})]
    with RewardService(config) as service:  # a plugin without an `isolation` runs in a worker process
        batch, _ = service.score(batch_of(samples))
    assert batch.total == [pytest.approx(2.0), None] and batch.reward_reasons[FILE_NAME] == [None, "unscorable"]


CHECK = textwrap.dedent(
    """
    import numpy as np
    import rewards
    from rewards import Sample

    print(rewards.available()["shape_match"])
    image = np.full((8, 8, 3), 255, np.uint8)
    image[2:6, 2:6] = [0, 128, 0]
    meta = {"shape": "square", "rgb": [0, 128, 0], "center": [4, 4], "size": 2}
    print(rewards.get("shape_match")([Sample("t2i", "a green square", "", image=image, meta=meta)]))
    """
)


def test_entry_point_after_pip_install(tmp_path):
    import os

    source = tmp_path / "src"
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(tmp_path / "site"), str(source)], check=True, capture_output=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), str(REPO)]))
    done = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "entry point unigrpo-shape-reward: unigrpo_shape_reward.shape_match:ShapeMatch", "[1.0]"]
