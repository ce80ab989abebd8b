"""The sampler kinds a row can have, defined once (docs/architecture.md §4).

A row's *kind* selects the prompt layout and the sampler: `text` (chat prompt -> text), `mmu` (an input
image + chat prompt -> text), `t2i` (plain prompt text -> an image). Its *task* (the dataset task, e.g.
`captioning`) is a separate name that selects the reward terms. Plain Python, no torch, so that the config
(jobs/config.py) can import it without loading the algorithm.
"""

from __future__ import annotations

from typing import Literal, get_args

Kind = Literal["text", "mmu", "t2i"]
KINDS: tuple[str, ...] = get_args(Kind)
