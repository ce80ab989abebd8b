"""`RolloutBatch`: one row per sampled response, the same object from the rollout worker to the learner.

A row holds the tensors of one sampled response laid out as the model sees it (left-padded prompt, response,
suffix; `scored_mask`: the response tokens whose log-prob may enter the loss; `protected_mask`: prompt
positions no estimator may mask) and typed columns: its `kind` (rl/kinds.py: the layout and sampler), its
dataset `task` (the reward terms), the prompt text, gold answer, decoded response, image and extra dataset fields
(`meta`) that the rewards read (rewards/base.py: `samples_of`), and the reward columns the reward service writes
(`rewards`, `reward_reasons`, `total`, `total_reason`). One type with named columns means a row is never
rebuilt or looked up by uid on its way. The layout: docs/architecture.md §2.4; what is scored:
docs/algorithm.md §3.1; the flow of a row through one step: docs/architecture.md §2. Deviations from a plain
"bag of columns":
- the rewards are columns of the batch, not a second object: `total` is the one number advantages and the
  loss read (None = unscorable), written by rewards/service.py `weighted_totals` and never recomputed here;
- a learner rank gets `for_learner()`: the text, image and per-term columns emptied (None in every row, or
  no terms), so no prompt, response or image is pickled to it (what it needs: tensors, uid and sample index
  (mask seeds), kind, score_vocab, total). `validate` accepts that form: `prompt` and `response` are a str in
  every row, or None in every row, never a mix.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from rl.kinds import KINDS

_TENSOR_FIELDS = ("input_ids", "attention_mask", "response_start", "response_end", "scored_mask",
                  "protected_mask", "reveal_step")
_ROW_FIELDS = ("kind", "score_vocab", "uid", "sample_index", "policy_version", "task", "prompt", "answer",
               "response", "image", "meta", "forwards", "total", "total_reason")
"""The per-row list columns (one entry per row)."""
_TERM_FIELDS = ("rewards", "reward_reasons")
"""The per-term columns: reward term -> one entry per row."""


@dataclass(frozen=True, eq=False)
class RolloutBatch:
    input_ids: torch.Tensor  # [B, T] long: left-padded prompt + response (+ suffix)
    attention_mask: torch.Tensor  # [B, T] bool: False on left padding
    response_start: torch.Tensor  # [B] long: first response column
    response_end: torch.Tensor  # [B] long: one past the last response column
    scored_mask: torch.Tensor  # [B, T] bool: response tokens through the first EOS, inclusive
    protected_mask: torch.Tensor  # [B, T] bool: prompt positions never masked (special tokens, image codes)
    reveal_step: torch.Tensor  # [B, T] long: sampler step that revealed the token, -1 outside responses
    kind: list[str]  # per row, one of rl.kinds.KINDS: the prompt layout and the sampler
    score_vocab: list[tuple[int, int] | None]  # per row: None = full vocabulary, (lo, hi) = column range
    uid: list[str]  # per row: prompt uid (the group key)
    sample_index: list[int]  # per row: index of the response within its group
    policy_version: list[int]  # per row: version of the weights that sampled it
    task: list[str]  # per row: the dataset task (selects the reward terms, names the per-task metrics)
    prompt: list[str | None]  # per row: the prompt text (t2i: the text the image is drawn from); None: for_learner
    answer: list[str | None]  # per row: the gold answer, if the dataset row has one
    response: list[str | None]  # per row: decoded response text up to the first EOS ("" for t2i); None: for_learner
    image: list[Any]  # per row: H x W x 3 uint8 array: t2i the generated image, mmu the input image; text None
    meta: list[dict | None]  # per row: the dataset row's extra fields (what rewards read as Sample.meta)
    forwards: list[int | None]  # per row: forward passes of the sampler call that made it (None: t2i)
    rewards: dict[str, list[float | None]]  # reward term -> raw value per row (None: unscorable or absent)
    reward_reasons: dict[str, list[str | None]]  # reward term -> why the value is None ("absent": not its task's)
    total: list[float | None]  # per row: the task's weighted total; None = unscorable (or not scored yet)
    total_reason: list[str | None]  # per row: why the total is None once scored (None: a number, or not scored)
    pad_token_id: int = 0  # id written into left padding (never attended)

    # ---- shape -------------------------------------------------------------------------------------
    @property
    def num_rows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    def __len__(self) -> int:
        return self.num_rows

    def response_mask(self) -> torch.Tensor:
        """[B, T] bool: columns in [response_start, response_end)."""
        cols = torch.arange(self.seq_len, device=self.input_ids.device)  # [T]
        return (cols >= self.response_start[:, None]) & (cols < self.response_end[:, None])

    def prompt_mask(self) -> torch.Tensor:
        """[B, T] bool: attended columns before the response."""
        cols = torch.arange(self.seq_len, device=self.input_ids.device)  # [T]
        return self.attention_mask & (cols < self.response_start[:, None])

    def scorable(self) -> torch.Tensor:
        """[B] bool: rows with a total (an unscorable row trains on nothing). The total is None exactly when
        a term of the row's task is None or the weighted sum overflows (rewards/service.py)."""
        return torch.tensor([total is not None for total in self.total], dtype=torch.bool)

    def for_learner(self) -> RolloutBatch:
        """This batch as a learner rank receives it: `prompt`, `response`, `answer`, `image`, `meta` and
        `total_reason` None in every row, no per-term `rewards` / `reward_reasons`. The learner reads only the
        tensors, uid and sample index (mask seeds), kind, score_vocab and total; the text and the 512 px images
        would be most of what is pickled to every rank. The result is a valid batch (`validate` accepts it), and
        one that cannot be scored by mistake (`rewards.samples_of` refuses a None prompt)."""
        B = self.num_rows
        return dataclasses.replace(self, prompt=[None] * B, answer=[None] * B, response=[None] * B, image=[None] * B,
                                   meta=[None] * B, rewards={}, reward_reasons={}, total_reason=[None] * B)

    # ---- checks ------------------------------------------------------------------------------------
    def validate(self) -> RolloutBatch:
        """Raise ValueError naming the field, row and value that break an invariant; return self."""
        ids = self.input_ids
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype != torch.long:
            raise ValueError(f"input_ids: need a [B, T] long tensor, got {_describe(ids)}")
        B, T = ids.shape
        for name, dtype in (("attention_mask", torch.bool), ("scored_mask", torch.bool),
                            ("protected_mask", torch.bool), ("reveal_step", torch.long)):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != (B, T) or value.dtype != dtype:
                raise ValueError(f"{name}: need a [{B}, {T}] {dtype} tensor like input_ids, got {_describe(value)}")
        for name in ("response_start", "response_end"):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != (B,) or value.dtype != torch.long:
                raise ValueError(f"{name}: need a [{B}] long tensor, got {_describe(value)}")
        for name in _ROW_FIELDS:
            if not isinstance(getattr(self, name), list) or len(getattr(self, name)) != B:
                raise ValueError(f"{name}: need a list with one entry per row ({B}), got {getattr(self, name)!r:.80}")
        for name in _TERM_FIELDS:
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name}: need a dict of reward term -> per-row list, got {getattr(self, name)!r:.80}")
            for term, values in getattr(self, name).items():
                if not isinstance(values, list) or len(values) != B:
                    raise ValueError(f"{name}[{term!r}]: need a list with one value per row ({B}), got {values!r:.80}")
        if set(self.reward_reasons) != set(self.rewards):
            raise ValueError(f"reward_reasons has the terms {sorted(self.reward_reasons)}, rewards has "
                             f"{sorted(self.rewards)}; each term needs its values and its reasons")
        for row in range(B):
            start, end = int(self.response_start[row]), int(self.response_end[row])
            if not 0 <= start <= end <= T:
                raise ValueError(f"row {row}: response span [{start}, {end}) is not inside [0, {T}]")
        response = self.response_mask()  # [B, T]
        _first_violation(self.scored_mask & ~response, "scored_mask is True outside the response span")
        _first_violation(response & ~self.attention_mask, "attention_mask is False inside the response span")
        _first_violation(self.protected_mask & response, "protected_mask is True inside the response span")
        _first_violation(self.scored_mask & (self.reveal_step < 0), "scored token has reveal_step < 0")
        dropped = {name for name in ("prompt", "response") if all(v is None for v in getattr(self, name))}
        for row in range(B):
            self._validate_row(row, dropped)
        _check_unique_keys(self.uid, self.sample_index)
        for term, values in self.rewards.items():
            for row, value in enumerate(values):
                _check_reward(f"rewards[{term!r}][{row}]", value)
                reason = self.reward_reasons[term][row]
                if (value is None) != isinstance(reason, str):
                    raise ValueError(f"reward_reasons[{term!r}][{row}] = {reason!r:.80} with rewards[{term!r}][{row}] "
                                     f"= {value!r}: need a str (why) exactly where the value is None")
        return self

    def _validate_row(self, row: int, dropped: set[str]) -> None:
        """`dropped`: the text columns that are None in every row (a learner's batch, `for_learner`)."""
        kind = self.kind[row]
        if kind not in KINDS:
            raise ValueError(f"kind[{row}] = {kind!r}: need one of {KINDS}")
        vocab = self.score_vocab[row]
        if vocab is not None:
            if (not isinstance(vocab, (tuple, list)) or len(vocab) != 2
                    or not all(isinstance(v, int) for v in vocab) or not 0 <= vocab[0] < vocab[1]):
                raise ValueError(f"score_vocab[{row}] = {vocab!r}: need None or (lo, hi) ints with 0 <= lo < hi")
            targets = self.input_ids[row][self.scored_mask[row]]  # [n]
            outside = (targets < vocab[0]) | (targets >= vocab[1])
            if outside.any():
                raise ValueError(f"row {row}: scored token id {int(targets[outside][0])} is outside "
                                 f"score_vocab [{vocab[0]}, {vocab[1]})")
        if not isinstance(self.uid[row], str):
            raise ValueError(f"uid[{row}] = {self.uid[row]!r}: need a str")
        for name in ("sample_index", "policy_version"):
            value = getattr(self, name)[row]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}[{row}] = {value!r}: need a non-negative int")
        if not isinstance(self.task[row], str) or not self.task[row]:
            raise ValueError(f"task[{row}] = {self.task[row]!r:.80}: need a non-empty str (the dataset task)")
        for name in ("prompt", "response"):
            if name not in dropped and not isinstance(getattr(self, name)[row], str):
                raise ValueError(f"{name}[{row}] = {getattr(self, name)[row]!r:.80}: need a str (or None in every "
                                 "row: a learner's batch, for_learner)")
        if self.answer[row] is not None and not isinstance(self.answer[row], str):
            raise ValueError(f"answer[{row}] = {self.answer[row]!r:.80}: need a str or None")
        image = self.image[row]
        if image is not None:
            shape, dtype = getattr(image, "shape", None), str(getattr(image, "dtype", ""))
            if kind == "text":
                raise ValueError(f"image[{row}]: a text row has no image, got {type(image).__name__}; only mmu "
                                 "(the input image) and t2i (the generated one) rows carry one")
            if shape is None or len(shape) != 3 or shape[2] != 3 or dtype != "uint8":
                raise ValueError(f"image[{row}]: need None or an H x W x 3 uint8 array, got {type(image).__name__} "
                                 f"shape={shape} dtype={dtype or None}")
        if self.meta[row] is not None and not isinstance(self.meta[row], dict):
            raise ValueError(f"meta[{row}] = {self.meta[row]!r:.80}: need a dict or None")
        forwards = self.forwards[row]
        if forwards is not None and (isinstance(forwards, bool) or not isinstance(forwards, int) or forwards < 1):
            raise ValueError(f"forwards[{row}] = {forwards!r}: need None or a positive int")
        _check_reward(f"total[{row}]", self.total[row])
        reason = self.total_reason[row]
        if reason is not None and (not isinstance(reason, str) or self.total[row] is not None):
            raise ValueError(f"total_reason[{row}] = {reason!r:.80} with total[{row}] = {self.total[row]!r}: need None, "
                             "or a str (why) where the total is None")

    # ---- construction ------------------------------------------------------------------------------
    @classmethod
    def from_sampler(
        cls,
        sequences: torch.Tensor,  # [B, P + L + S] long: left-padded prompts, responses, suffix
        reveal_step: torch.Tensor,  # [B, L] long: sampler step that revealed each response token
        prompt_lengths: Sequence[int],  # real (unpadded) prompt length per row, <= P
        *,
        eos_ids: Collection[int],
        kind: str | Sequence[str],
        uid: Sequence[str],
        sample_index: Sequence[int],
        policy_version: int | Sequence[int],
        prompt_width: int | None = None,
        score_vocab: tuple[int, int] | None | Sequence[tuple[int, int] | None] = None,
        protected_ids: Collection[int] = (),
        protected_id_range: tuple[int, int] | None = None,
        task: Sequence[str] | None = None,
        prompt: Sequence[str] | None = None,
        answer: Sequence[str | None] | None = None,
        response: Sequence[str] | None = None,
        image: Sequence[Any] | None = None,
        meta: Sequence[dict | None] | None = None,
        forwards: int | Sequence[int | None] | None = None,
        pad_token_id: int = 0,
    ) -> RolloutBatch:
        """Build a batch from a sampler's output and compute the scored and protected masks.

        The response occupies columns [P, P + L) where P = `prompt_width` (default T − L: no suffix) and
        L = reveal_step.shape[1]. A row's scored tokens run from P through the first token in `eos_ids`
        (inclusive), or to P + L when there is none (t2i: pass `eos_ids=()`). Prompt tokens whose id is in
        `protected_ids` or in `protected_id_range` = [lo, hi) (image codes) are protected.
        `kind`, `policy_version`, `forwards`: one value for every row or a sequence with one per row.
        `score_vocab`: None (full vocabulary) or one (lo, hi) tuple for every row, or a *list* with one entry
        per row. The row columns `task` (default: the kind), `prompt`, `response` (default ""), `answer`,
        `image`, `meta` (default None): a sequence with one entry per row. No row is scored yet: no reward
        terms, every total None (the reward service fills them).
        """
        if sequences.dim() != 2 or reveal_step.dim() != 2 or reveal_step.shape[0] != sequences.shape[0]:
            raise ValueError(f"sequences {tuple(sequences.shape)} and reveal_step {tuple(reveal_step.shape)} "
                             "need shapes [B, T] and [B, L] with the same B")
        B, T = sequences.shape
        L = int(reveal_step.shape[1])
        P = T - L if prompt_width is None else int(prompt_width)
        if not 0 <= P <= T - L:
            raise ValueError(f"prompt_width {P}: the response of length {L} must fit in [P, {T}]")
        if len(prompt_lengths) != B or any(not 0 <= int(n) <= P for n in prompt_lengths):
            raise ValueError(f"prompt_lengths {list(prompt_lengths)!r:.80}: need {B} values in [0, {P}]")
        cols = torch.arange(T)  # [T]
        prompt_begin = P - torch.tensor([int(n) for n in prompt_lengths], dtype=torch.long)  # [B]
        attention_mask = cols >= prompt_begin[:, None]  # [B, T]
        generated = sequences[:, P:P + L]  # [B, L]
        is_eos = torch.zeros_like(generated, dtype=torch.bool)  # [B, L]
        for eos in eos_ids:
            is_eos |= generated == int(eos)
        # tokens strictly after the first EOS: at least one EOS among the earlier positions
        after_eos = (torch.cumsum(is_eos.long(), dim=1) - is_eos.long()) > 0  # [B, L]
        scored_mask = torch.zeros(B, T, dtype=torch.bool)
        scored_mask[:, P:P + L] = ~after_eos
        is_protected = torch.zeros(B, T, dtype=torch.bool)
        for special in protected_ids:
            is_protected |= sequences == int(special)
        if protected_id_range is not None:
            is_protected |= (sequences >= protected_id_range[0]) & (sequences < protected_id_range[1])
        protected_mask = is_protected & attention_mask & (cols < P)  # [B, T]
        full_reveal = torch.full((B, T), -1, dtype=torch.long)
        full_reveal[:, P:P + L] = reveal_step.long()
        kinds = [kind] * B if isinstance(kind, str) else list(kind)
        versions = [int(policy_version)] * B if isinstance(policy_version, int) else [int(v) for v in policy_version]
        vocabs = (list(score_vocab) if isinstance(score_vocab, list)
                  else [tuple(score_vocab) if score_vocab is not None else None] * B)
        batch = cls(
            input_ids=sequences.long().clone(), attention_mask=attention_mask,
            response_start=torch.full((B,), P, dtype=torch.long),
            response_end=torch.full((B,), P + L, dtype=torch.long),
            scored_mask=scored_mask, protected_mask=protected_mask, reveal_step=full_reveal,
            kind=kinds, score_vocab=vocabs, uid=[str(u) for u in uid], sample_index=[int(i) for i in sample_index],
            policy_version=versions, task=list(kinds if task is None else task),
            prompt=[""] * B if prompt is None else list(prompt), answer=[None] * B if answer is None else list(answer),
            response=[""] * B if response is None else list(response),
            image=[None] * B if image is None else list(image), meta=[None] * B if meta is None else list(meta),
            forwards=[forwards] * B if forwards is None or isinstance(forwards, int) else list(forwards),
            rewards={}, reward_reasons={}, total=[None] * B, total_reason=[None] * B,
            pad_token_id=int(pad_token_id),
        )
        return batch.validate()

    def select(self, rows: Sequence[int] | torch.Tensor) -> RolloutBatch:
        """A new batch with the given rows (indices, or a [B] bool mask), in that order."""
        if isinstance(rows, torch.Tensor) and rows.dtype == torch.bool:
            rows = rows.nonzero().flatten().tolist()
        index = [int(r) for r in (rows.tolist() if isinstance(rows, torch.Tensor) else rows)]
        bad = [r for r in index if not -self.num_rows <= r < self.num_rows]
        if bad:
            raise IndexError(f"rows {bad} are out of range for a batch of {self.num_rows} rows")
        picked = torch.tensor(index, dtype=torch.long)  # [b]
        data = {name: getattr(self, name)[picked] for name in _TENSOR_FIELDS}
        data.update({name: [getattr(self, name)[r] for r in index] for name in _ROW_FIELDS})
        data.update({name: {k: [v[r] for r in index] for k, v in getattr(self, name).items()} for name in _TERM_FIELDS})
        return RolloutBatch(**data, pad_token_id=self.pad_token_id)

    def split_by_group(self) -> list[RolloutBatch]:
        """One batch per prompt uid, in order of first appearance; rows keep their order."""
        groups: dict[str, list[int]] = {}
        for row, key in enumerate(self.uid):
            groups.setdefault(key, []).append(row)
        return [self.select(rows) for rows in groups.values()]

    @staticmethod
    def concat(batches: Sequence[RolloutBatch]) -> RolloutBatch:
        """Stack rows of several batches, left-padding narrower ones to the widest T. The parts are trusted
        (validated when built); what only the union can break is checked: padding id, reward terms, unique keys."""
        if not batches:
            raise ValueError("concat: need at least one batch, got none")
        first = batches[0]
        for k, other in enumerate(batches):
            if other.pad_token_id != first.pad_token_id:
                raise ValueError(f"concat: batch {k} pads with {other.pad_token_id}, batch 0 with {first.pad_token_id}")
            if set(other.rewards) != set(first.rewards):
                raise ValueError(f"concat: batch {k} has reward terms {sorted(other.rewards)}, "
                                 f"batch 0 has {sorted(first.rewards)}; every batch needs the same terms "
                                 "(concatenate before scoring, or score every batch with the same service)")
        width = max(b.seq_len for b in batches)
        fill = {"input_ids": first.pad_token_id, "attention_mask": False, "scored_mask": False,
                "protected_mask": False, "reveal_step": -1}
        data: dict = {}
        for name, value in fill.items():
            parts = []
            for b in batches:
                tensor = getattr(b, name)  # [b, T_b]
                pad = torch.full((b.num_rows, width - b.seq_len), value, dtype=tensor.dtype)
                parts.append(torch.cat([pad, tensor], dim=1))  # [b, width]
            data[name] = torch.cat(parts, dim=0)  # [sum b, width]
        for name in ("response_start", "response_end"):
            data[name] = torch.cat([getattr(b, name) + (width - b.seq_len) for b in batches])  # [sum b]
        for name in _ROW_FIELDS:
            data[name] = [item for b in batches for item in getattr(b, name)]
        for name in _TERM_FIELDS:
            data[name] = {k: [v for b in batches for v in getattr(b, name)[k]] for k in getattr(first, name)}
        _check_unique_keys(data["uid"], data["sample_index"])  # each part was validated when it was built
        return RolloutBatch(**data, pad_token_id=first.pad_token_id)

    # ---- serialisation -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain tensors and Python lists (no custom classes): safe for pickling, Ray and torch.save."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["score_vocab"] = [list(v) if v is not None else None for v in self.score_vocab]
        for name in _TERM_FIELDS:
            out[name] = {k: list(v) for k, v in getattr(self, name).items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> RolloutBatch:
        names = {f.name for f in fields(cls)}
        unknown, missing = sorted(set(data) - names), sorted(names - set(data) - {"pad_token_id"})
        if unknown or missing:
            raise ValueError(f"RolloutBatch.from_dict: unknown keys {unknown}, missing keys {missing}")
        values = dict(data)
        values["score_vocab"] = [tuple(v) if v is not None else None for v in values["score_vocab"]]
        return cls(**values).validate()


def drop_repeated_rows(batches: Sequence[RolloutBatch]) -> tuple[list[RolloutBatch], int]:
    """`batches` without every row whose (uid, sample_index) an earlier row already has, and how many went.

    Collection is idempotent by key: a retried Ray task, or a shard delivered twice, brings the same rows
    again (rollouts are pure functions of the run seed, step, uid and sample index), and a row trained twice
    would weigh double in its group's statistics and in the loss. A repeated key whose row differs in
    anything (tokens, masks, kind, version, text, image, rewards) is no retry but two responses claiming one
    key, a bug: ValueError naming the key, both places and the field. Batches left empty are omitted."""
    first: dict[tuple[str, int], tuple[int, int]] = {}  # key -> (batch, row) that delivered it first
    kept: list[RolloutBatch] = []
    dropped = 0
    for k, batch in enumerate(batches):
        rows = []
        for row, key in enumerate(zip(batch.uid, batch.sample_index)):
            if key not in first:
                first[key] = (k, row)
                rows.append(row)
                continue
            j, other = first[key]
            differs = _row_difference(batches[j], other, batch, row)
            if differs is not None:
                raise ValueError(f"(uid, sample_index) {key} is delivered twice with different rows (batch {j} "
                                 f"row {other}, batch {k} row {row}: {differs} differs); a repeated delivery must be "
                                 "identical, so this is a bug in whatever produced them")
            dropped += 1
        if len(rows) == batch.num_rows:
            kept.append(batch)
        elif rows:
            kept.append(batch.select(rows))
    return kept, dropped


def _row_difference(a: RolloutBatch, i: int, b: RolloutBatch, j: int) -> str | None:
    """The first field in which row i of `a` and row j of `b` differ (None: the same row). Left padding does
    not count: tensors are compared right-aligned, as `concat` would place them."""
    if a.pad_token_id != b.pad_token_id:
        return "pad_token_id"
    width = max(a.seq_len, b.seq_len)
    fill = {"input_ids": a.pad_token_id, "attention_mask": False, "scored_mask": False,
            "protected_mask": False, "reveal_step": -1}
    for name, value in fill.items():
        x, y = getattr(a, name)[i], getattr(b, name)[j]  # [T_a], [T_b]
        x = torch.cat([torch.full((width - a.seq_len,), value, dtype=x.dtype), x])  # [width]
        y = torch.cat([torch.full((width - b.seq_len,), value, dtype=y.dtype), y])  # [width]
        if x.dtype != y.dtype or not torch.equal(x, y):
            return name
    for name in ("response_start", "response_end"):  # columns counted from the right edge
        if a.seq_len - int(getattr(a, name)[i]) != b.seq_len - int(getattr(b, name)[j]):
            return name
    for name in _ROW_FIELDS:
        if not _same(getattr(a, name)[i], getattr(b, name)[j]):
            return name
    for name in _TERM_FIELDS:
        if set(getattr(a, name)) != set(getattr(b, name)):
            return f"{name} (terms)"
        for term in getattr(a, name):
            if not _same(getattr(a, name)[term][i], getattr(b, name)[term][j]):
                return f"{name}[{term!r}]"
    return None


def _same(x: object, y: object) -> bool:
    """Deep equality of row data that may hold arrays or tensors (images, meta), where `==` is
    elementwise; NaN equals NaN."""
    if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
        return (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.dtype == y.dtype
                and x.shape == y.shape and bool(torch.equal(x, y)))
    if hasattr(x, "__array__") or hasattr(y, "__array__"):  # numpy arrays (imported only when present)
        import numpy as np

        return (type(x) is type(y) and np.shape(x) == np.shape(y) and np.asarray(x).dtype == np.asarray(y).dtype
                and bool(np.array_equal(x, y, equal_nan=np.asarray(x).dtype.kind in "fc")))
    if isinstance(x, dict) or isinstance(y, dict):
        return isinstance(x, dict) and isinstance(y, dict) and x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)) or isinstance(y, (list, tuple)):
        return type(x) is type(y) and len(x) == len(y) and all(_same(u, v) for u, v in zip(x, y))
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    return type(x) is type(y) and bool(x == y)


def _check_reward(where: str, value: object) -> None:
    """A reward value (a term's or a total) is a finite number or None."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
        raise ValueError(f"{where} = {value!r:.80}: need a finite number or None")


def _check_unique_keys(uid: Sequence[str], sample_index: Sequence[int]) -> None:
    """ValueError naming the first (uid, sample_index) that two rows share: each response needs its own key."""
    seen: set[tuple[str, int]] = set()
    for key in zip(uid, sample_index):
        if key in seen:
            raise ValueError(f"(uid, sample_index) {key} appears more than once; each response needs its own key")
        seen.add(key)


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"{type(value).__name__}"


def _first_violation(bad: torch.Tensor, message: str) -> None:
    """bad [B, T] bool: raise naming the first (row, column) that is True."""
    if bad.any():
        row, col = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"row {row}, column {col}: {message}")
