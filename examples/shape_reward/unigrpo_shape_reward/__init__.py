"""Example unigrpo image-reward plugin: `shape_match` scores whether a generated image shows the prompt's
shape in the prompt's colour (the toy text-to-image task, docs/multimodal.md).

Installed with `pip install -e examples/shape_reward`, it is available as `rewards.get("shape_match")` through the
`unigrpo.rewards` entry point in this package's pyproject.toml; without installing, a config can name the file:
`examples/shape_reward/unigrpo_shape_reward/shape_match.py:ShapeMatch`.
"""

from unigrpo_shape_reward.shape_match import ShapeMatch

__all__ = ["ShapeMatch"]
