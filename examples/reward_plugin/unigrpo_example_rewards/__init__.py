"""Example unigrpo reward plugin: the fraction of a sample's keywords that its response mentions.

Installed with `pip install -e examples/reward_plugin`, it is available as `rewards.get("keyword_coverage")`
through the `unigrpo.rewards` entry point declared in this package's pyproject.toml.
"""

from __future__ import annotations


class KeywordCoverage:
    """Score = (keywords found in the response) / (keywords listed in `sample.meta[field]`).

    Returns None for a sample without keywords: it cannot be scored, which is not the same as scoring 0.
    Options: `case_sensitive` (default False) and `field`, the meta key holding the list (default "keywords").
    The object holds only plain values, so it pickles and can run in a worker process or a Ray actor.
    """

    def __init__(self, *, case_sensitive: bool = False, field: str = "keywords"):
        if not isinstance(field, str) or not field:
            raise ValueError(f"field: got {field!r}; expected the name of a meta key")
        self.case_sensitive = case_sensitive
        self.field = field

    def __call__(self, samples) -> list[float | None]:
        scores: list[float | None] = []
        for sample in samples:
            keywords = (sample.meta or {}).get(self.field)
            if not keywords:
                scores.append(None)
                continue
            text = sample.response if self.case_sensitive else sample.response.lower()
            found = sum(1 for word in keywords if (word if self.case_sensitive else word.lower()) in text)
            scores.append(found / len(keywords))
        return scores
