"""Prompt datasets (jsonl / parquet) validated on load, and a deterministic, checkpointable prompt stream.

Every row is checked when its file loads (fields, images, unique uids; prompt length once the tokenizer and the
model are known, by `PromptDataset.check_prompts` or `check_prompt_records`), and a bad row is reported with
file and row and skipped, so no step can draw a row that kills it. The stream's order is a pure function of the
seed and its cursor, so a resumed run draws the same prompts. The `data` config section (jobs/config.py)
supplies the arguments. Fields, `data.fields` and the bad rows: docs/data.md §1–§2; chat prompts:
docs/data.md §3; shuffling, several files and mixtures: docs/data.md §4; why bad rows are caught at load:
docs/reliability.md §7.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RECORD_FIELDS = ("prompt", "answer", "task", "image", "uid")
META_FIELDS = ("response",)  # read from `meta` by the job that needs them (SFT's reference response)
FIELDS = RECORD_FIELDS + META_FIELDS  # the names `fields` (data.fields) may rename
MAX_REPORTED = 20  # problems listed in full in a log line or error; the rest are counted


@dataclass(frozen=True)
class PromptRecord:
    uid: str
    task: str
    prompt: str  # text, or a model.templates.ChatPrompt (chat messages; as a str, the last user message)
    answer: str | None = None
    image: str | None = None  # absolute path
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # "<file>:<row>"


class DataError(ValueError):
    """A dataset that cannot be used at all (missing file, no good rows, changed under a checkpoint)."""


FORMATS = ("auto", "jsonl", "parquet")


def _format_of(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if path.suffix == ".jsonl":
        return "jsonl"
    if path.suffix == ".parquet":
        return "parquet"
    raise DataError(f"{path}: cannot tell the format from the suffix {path.suffix!r}; "
                    "use .jsonl or .parquet, or pass format='jsonl' / 'parquet'")


def raw_rows(path: Path, fmt: str, problems: list[str]):
    """Yield (row number, dict) for every record; rows that are not objects go to `problems`."""
    if fmt == "jsonl":
        with path.open("rb") as handle:  # decoded line by line: one bad byte spoils one row, not the file
            for line_no, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    problems.append(f"{path}:{line_no}: not UTF-8 (byte 0x{raw[exc.start]:02x} at column "
                                    f"{exc.start + 1}); save the file as UTF-8")
                    continue
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    problems.append(f"{path}:{line_no}: not valid JSON ({exc.msg} at column {exc.colno})")
                    continue
                if not isinstance(row, dict):
                    problems.append(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
                    continue
                yield line_no, row
    else:
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for unreadable files
            raise DataError(f"{path}: not a readable parquet file ({exc})") from exc
        for index, row in enumerate(table.to_pylist(), start=1):
            yield index, row


def _text(value: Any, name: str, *, required: bool) -> str | None:
    """Validate one text field; numbers become text. Raises ValueError saying what is wrong."""
    if value is None:
        if required:
            raise ValueError(f"missing '{name}'")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"'{name}' must be text, got {type(value).__name__} {value!r:.60}")
    text = str(value)
    if required and not text.strip():
        raise ValueError(f"'{name}' is empty")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate: JSON "\ud800" without its pair
        raise ValueError(f"'{name}' holds a lone surrogate U+{ord(text[exc.start]):04X} at character {exc.start + 1}, "
                         "which no tokenizer can encode; write the character itself, or both halves of its "
                         "surrogate pair (e.g. \"\\ud83d\\ude00\")") from None
    return text


def _prompt(value: Any, name: str) -> str:
    """The prompt column: text, or a list of chat messages (a ChatPrompt). Raises ValueError saying what is wrong."""
    if not isinstance(value, list):
        return _text(value, name, required=True)
    from model.templates import ChatPrompt

    for index, message in enumerate(value):  # a lone surrogate in a message is as bad as in text
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            _text(message["content"], f"{name}[{index}].content", required=False)
    try:
        return ChatPrompt(value)
    except ValueError as exc:
        raise ValueError(f"'{name}': {exc}") from None


def check_fields(fields: Mapping[str, str]) -> list[str]:
    """What is wrong with a `fields` mapping (our field -> column name), one line per problem."""
    problems = []
    if unknown := sorted(set(fields) - set(FIELDS)):
        problems.append(f"fields: unknown field(s) {unknown}; valid: {', '.join(FIELDS)}")
    for name, column in fields.items():
        if not isinstance(column, str) or not column.strip():
            problems.append(f"fields.{name}: {column!r}; give the column name in the data files")
    columns: dict[str, list[str]] = {}
    for name in FIELDS:
        columns.setdefault(fields.get(name, name), []).append(name)
    for column, names in columns.items():
        if len(names) > 1:
            problems.append(f"fields: {' and '.join(names)} both read the column {column!r}; map each to its own")
    return problems


def _record(path: Path, row_no: int, row: dict, column: dict[str, str], default_task: str | None,
            image_tasks: Collection[str] = (), read_image: Callable[[Path], None] | None = None) -> PromptRecord:
    prompt = _prompt(row.get(column["prompt"]), column["prompt"])
    answer = _text(row.get(column["answer"]), column["answer"], required=False)
    task = row.get(column["task"])
    if task is None:
        if default_task is None:
            raise ValueError(f"missing '{column['task']}' (or set data.default_task)")
        task = default_task
    task = _text(task, column["task"], required=True)
    image = _text(row.get(column["image"]), column["image"], required=False)
    if image is not None:
        image_path = Path(image) if Path(image).is_absolute() else path.parent / image
        if not image_path.is_file():
            raise ValueError(f"image file {str(image_path)!r} does not exist")
        image = str(image_path.resolve())
        if read_image is not None:
            read_image(Path(image))
    elif task in image_tasks:
        raise ValueError(f"task {task!r} needs an image (it is sampled as image understanding); "
                         f"'{column['image']}' is missing")
    uid = _text(row.get(column["uid"]), column["uid"], required=False)
    if uid is None:
        uid = f"{path.name}:{row_no}"
    elif not uid.strip():
        raise ValueError(f"'{column['uid']}' is empty")
    renamed = {column[name]: name for name in META_FIELDS}  # kept in meta under our name
    meta = {renamed.get(k, k): v for k, v in row.items() if k not in column.values() or k in renamed}
    meta.update({name: row[col] for col, name in renamed.items() if col in row})  # over a column of that name
    return PromptRecord(uid, task, prompt, answer, image, meta, f"{path}:{row_no}")


class PromptDataset:
    """All good records of `paths`, in file order; `problems` lists the skipped rows.

    paths: one data file or several (.jsonl / .parquet), read in order (`paths` keeps them).
    default_task: task of rows without one (None: such rows are bad).
    fields: our field (one of FIELDS) -> column name in the files, for the fields named differently there.
    format: "auto" (from each file's suffix), "jsonl" or "parquet".
    image_tasks: tasks whose rows must have an image (rows without one are bad rows).
    read_images: read every row's image at load (False: only check that the file exists; for jobs that
        sample text only and refuse image rows anyway).
    """

    def __init__(self, paths: str | Path | Sequence[str | Path], *, default_task: str | None = None,
                 fields: Mapping[str, str] | None = None, format: str = "auto", image_tasks: Collection[str] = (),
                 read_images: bool = True):
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        if not paths or not all(str(p) for p in paths):
            raise DataError("no data file given; set data.train to a .jsonl or .parquet file")
        if format not in FORMATS:
            raise ValueError(f"format {format!r}; valid: {', '.join(FORMATS)}")
        fields = dict(fields or {})
        if problems := check_fields(fields):
            raise ValueError("\n".join(problems))
        if default_task is not None and not default_task.strip():
            raise ValueError("default_task: empty string; use None or a task name such as 'text'")
        column = {name: fields.get(name, name) for name in FIELDS}
        self.paths = [str(Path(p)) for p in paths]  # as in each record's `source`
        self.records: list[PromptRecord] = []
        self.problems: list[str] = []
        seen: dict[str, str] = {}
        read_image = _image_checker() if read_images else None
        for name in paths:
            path = Path(name)
            if not path.is_file():
                raise DataError(f"data file {str(path)!r} does not exist")
            for row_no, row in raw_rows(path, _format_of(path, format), self.problems):
                try:
                    record = _record(path, row_no, row, column, default_task, image_tasks, read_image)
                except ValueError as exc:
                    self.problems.append(f"{path}:{row_no}: {exc}")
                    continue
                if record.uid in seen:
                    hint = "" if record.uid != f"{path.name}:{row_no}" else (
                        f"; a row without '{column['uid']}' is <file name>:<row>: rename one of the files, or "
                        "give the rows uids")
                    self.problems.append(f"{path}:{row_no}: duplicate uid {record.uid!r} (first at "
                                         f"{seen[record.uid]}){hint}")
                    continue
                seen[record.uid] = record.source
                self.records.append(record)
        if not self.records:
            raise DataError(f"no usable rows in {', '.join(map(str, paths))}:\n  " + _listing(self.problems))
        if self.problems:
            log.warning("skipped %d bad row(s):\n  %s", len(self.problems), _listing(self.problems))

    def __len__(self) -> int:
        return len(self.records)

    def check_prompts(self, tokenizer: Any, *, max_sequence_length: int, gen_length: int, thinking: bool = False,
                      kind_of: Callable[[PromptRecord], str] | None = None, image_tokens: int = 0) -> list[str]:
        """Drop the records whose prompt the model cannot take (see `check_prompt_records` for the arguments);
        their problems are logged and added to `problems`, and returned. DataError when no record is left."""
        self.records, problems = check_prompt_records(
            self.records, tokenizer, max_sequence_length=max_sequence_length, gen_length=gen_length,
            thinking=thinking, kind_of=kind_of, image_tokens=image_tokens)
        self.problems += problems
        return problems

    def fingerprint(self) -> str:
        """Identifies the record set and its file order (a checkpoint refuses a different one)."""
        digest = hashlib.blake2b(digest_size=8)
        for record in self.records:
            digest.update(record.uid.encode() + b"\0")
        return digest.hexdigest()


def check_prompt_records(records: Sequence[PromptRecord], tokenizer: Any, *, max_sequence_length: int,
                         gen_length: int, thinking: bool = False, kind_of: Callable[[PromptRecord], str] | None = None,
                         image_tokens: int = 0) -> tuple[list[PromptRecord], list[str]]:
    """(the records whose prompt the model can take, one `file:row: reason` per other record); the problems
    are logged, and DataError lists them when no record is left.

    A prompt is built as the driver builds it (jobs/multitask.py: build_requests): kind `text` and `mmu` get
    the chat template (`model.templates.chat_prompt_ids`, with the thinking instruction when `thinking`), and
    must fit `max_sequence_length - gen_length` tokens, an mmu prompt with its `image_tokens` (`<|mmu|>`,
    `<|soi|>`, the image codes, `<|eoi|>`) included; kind `t2i` gets the plain text ids (the worker cuts them
    to its text length), so its prompt must be text, not chat messages. No prompt may fail to tokenize or hold
    the mask token.
    kind_of: the sampler kind of a record (None: every record is `text`).
    """
    from model.templates import MASK_TOKEN, ChatPrompt, chat_prompt_ids, special_ids

    mask_id = special_ids(tokenizer).mask
    room = max_sequence_length - gen_length
    kept, problems = [], []
    for record in records:
        kind = "text" if kind_of is None else kind_of(record)
        if kind == "t2i" and isinstance(record.prompt, ChatPrompt):
            problems.append(f"{record.source}: a t2i prompt is the text the image is drawn from; give text, not "
                            f"{len(record.prompt.messages)} chat messages")
            continue
        try:
            if kind == "t2i":
                ids = list(tokenizer(record.prompt, add_special_tokens=False)["input_ids"])
            else:
                ids = chat_prompt_ids(tokenizer, record.prompt, thinking=thinking)
        except Exception as exc:  # tokenizers raise TypeError, ValueError, their own types
            problems.append(f"{record.source}: the tokenizer cannot encode the prompt ({type(exc).__name__}: "
                            f"{exc}); give plain UTF-8 text")
            continue
        extra = image_tokens if kind == "mmu" else 0
        if kind != "t2i" and len(ids) + extra > room:
            what = f"{len(ids)} tokens" + (f" + {extra} image tokens" if extra else "")
            problems.append(f"{record.source}: the {'mmu' if extra else 'chat'} prompt has {what}"
                            f"{' (thinking instruction included)' if thinking else ''}, but max_sequence_length "
                            f"{max_sequence_length} - gen_length {gen_length} leaves {room}; shorten the prompt by "
                            f"{len(ids) + extra - room} tokens or lower gen_length")
            continue
        if mask_id in ids:
            problems.append(f"{record.source}: the prompt holds the mask token {MASK_TOKEN} (id {mask_id}); "
                            "prompts must be fully known, remove it")
            continue
        kept.append(record)
    if problems:
        log.warning("skipped %d row(s) whose prompt the model cannot take:\n  %s", len(problems), _listing(problems))
    if records and not kept:
        raise DataError("no prompt the model can take:\n  " + _listing(problems))
    return kept, problems


def check_training_prompts(dataset: PromptDataset, cfg: Any, tokenizer: Any, backbone: Any) -> list[str]:
    """`dataset.check_prompts` with a training run's settings: the `TrainConfig` `cfg` (data.thinking,
    data.kind_of, rollout.sampler.gen_length), the driver's tokenizer and the policy's BackboneConfig
    (max_sequence_length; an MMaDA one's num_vq_tokens for mmu prompts). Returns the new problems."""
    vq_tokens = (getattr(backbone, "mmada", None) or {}).get("num_vq_tokens")
    return dataset.check_prompts(
        tokenizer, max_sequence_length=backbone.max_sequence_length, gen_length=cfg.rollout.sampler.gen_length,
        thinking=cfg.data.thinking, kind_of=lambda r: cfg.data.kind_of(r.task, r.image is not None),
        image_tokens=0 if vq_tokens is None else int(vq_tokens) + 3)  # <|mmu|> <|soi|> codes <|eoi|>


def _image_checker() -> Callable[[Path], None]:
    """`load_image` of each file once (rows share images); raises its DataError again for a repeated bad file."""
    errors: dict[Path, DataError | None] = {}

    def read(path: Path) -> None:
        if path not in errors:
            try:
                load_image(path)
                errors[path] = None
            except DataError as exc:
                errors[path] = exc
        if errors[path] is not None:
            raise DataError(f"{errors[path]}; replace it with a PNG, JPEG or other image file PIL reads")

    return read


def load_image(path: str | Path):
    """The image file at `path` as a read-only HxWx3 uint8 RGB numpy array (any mode PIL reads is converted;
    read-only because the driver shares one array between a prompt's requests and reward samples);
    DataError naming the file when it cannot be read."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise DataError(f"image {str(path)!r} cannot be read as an image: {exc}") from exc
    array.flags.writeable = False
    return array


def _listing(problems: list[str]) -> str:
    shown = problems[:MAX_REPORTED]
    more = len(problems) - len(shown)
    return "\n  ".join(shown + ([f"... and {more} more"] if more else []))


class PromptStream:
    """Draws batches of records epoch after epoch; `(epoch, position)` is the checkpointable cursor.

    weights: one per data file of `dataset` (`dataset.paths`, in order), each > 0, for a weighted mixture
    (module docstring; each file then has its own cursor); None: the files are one union.
    """

    def __init__(self, dataset: PromptDataset, *, seed: int = 0, shuffle: bool = True,
                 weights: Sequence[float] | None = None):
        self.dataset, self.seed, self.shuffle = dataset, seed, shuffle
        self.epoch, self.position = 0, 0
        self._order_epoch, self._order = -1, []
        self.weights = None if weights is None else [float(w) for w in weights]
        if self.weights is not None:
            self._mixture_sources()

    def _mixture_sources(self) -> None:
        """Per file: the indices of its records, (epoch, position) and its epoch order, cached."""
        paths = self.dataset.paths
        if len(self.weights) != len(paths) or not all(w > 0 for w in self.weights):
            raise ValueError(f"weights {self.weights}: need one weight > 0 per data file ({len(paths)}: {paths})")
        by_path: dict[str, list[int]] = {path: [] for path in paths}
        for index, record in enumerate(self.dataset.records):
            by_path[record.source.rpartition(":")[0]].append(index)
        if empty := [path for path, members in by_path.items() if not members]:
            raise DataError(f"mixture: no usable rows left in {', '.join(empty)}, which has weight > 0; fix its "
                            "rows (the reasons were logged) or remove it from data.train")
        self._members = list(by_path.values())
        self._cursors = [[0, 0] for _ in paths]
        self._drawn = 0
        self._member_orders: dict[tuple[int, int], list[int]] = {}

    def epoch_order(self, epoch: int, members: Sequence[int] | None = None) -> list[int]:
        """Record indices (of `members`, default all records) in the order epoch `epoch` visits them."""
        indices = list(range(len(self.dataset))) if members is None else list(members)
        if not self.shuffle:
            return indices

        def key(index: int) -> bytes:
            text = f"{self.seed}\0{epoch}\0{self.dataset.records[index].uid}"
            return hashlib.blake2b(text.encode(), digest_size=16).digest()

        return sorted(indices, key=key)

    def _order_of_current_epoch(self) -> list[int]:
        if self._order_epoch != self.epoch:
            self._order, self._order_epoch = self.epoch_order(self.epoch), self.epoch
        return self._order

    def next_batch(self, size: int) -> list[PromptRecord]:
        """The next `size` records; crosses into the next epoch when this one runs out."""
        if size < 1:
            raise ValueError(f"batch size {size}; need at least 1")
        if self.weights is not None:
            return [self._next_of_mixture() for _ in range(size)]
        batch: list[PromptRecord] = []
        while len(batch) < size:
            order = self._order_of_current_epoch()
            take = order[self.position:self.position + size - len(batch)]
            batch.extend(self.dataset.records[i] for i in take)
            self.position += len(take)
            if self.position == len(order):
                self.epoch, self.position = self.epoch + 1, 0
        return batch

    def source_of_draw(self, draw: int) -> int:
        """The file the `draw`-th prompt of a mixture comes from: blake2b(seed, draw) as u in [0, 1), against
        the cumulative weights."""
        digest = hashlib.blake2b(f"{self.seed}\0mixture\0{draw}".encode(), digest_size=8).digest()
        u = int.from_bytes(digest, "big") / 2**64 * sum(self.weights)
        cumulative = list(itertools.accumulate(self.weights))
        return min(bisect.bisect_right(cumulative, u), len(cumulative) - 1)  # min: u within rounding of the total

    def _next_of_mixture(self) -> PromptRecord:
        source = self.source_of_draw(self._drawn)
        epoch, position = self._cursors[source]
        if (source, epoch) not in self._member_orders:  # the current epoch's order of each file, cached
            self._member_orders = {k: v for k, v in self._member_orders.items() if k[0] != source}
            self._member_orders[source, epoch] = self.epoch_order(epoch, self._members[source])
        order = self._member_orders[source, epoch]
        record = self.dataset.records[order[position]]
        self._cursors[source] = [epoch + 1, 0] if position + 1 == len(order) else [epoch, position + 1]
        self._drawn += 1
        self.epoch = min(cursor[0] for cursor in self._cursors)  # epochs every file has completed
        return record

    def state_dict(self) -> dict[str, Any]:
        state = {"epoch": self.epoch, "position": self.position, "seed": self.seed, "shuffle": self.shuffle,
                 "num_records": len(self.dataset), "fingerprint": self.dataset.fingerprint()}
        if self.weights is not None:
            state.update(weights=list(self.weights), drawn=self._drawn, cursors=[list(c) for c in self._cursors])
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the cursor; refuses a state saved for a different dataset, shuffle or mixture."""
        mine = self.state_dict()
        for key in ("fingerprint", "num_records", "seed", "shuffle", "weights"):
            if state.get(key) != mine.get(key):
                raise DataError(f"data cursor: saved {key}={state.get(key)!r} but the current data has "
                                f"{key}={mine.get(key)!r}; resume with the same data files (and weights), "
                                "data.seed and data.shuffle")
        if self.weights is not None:
            cursors = state["cursors"]
            for source, (epoch, position) in enumerate(cursors):
                if not 0 <= position < len(self._members[source]) or epoch < 0:
                    raise DataError(f"data cursor: {self.dataset.paths[source]}: epoch={epoch}, position={position} "
                                    f"is outside 0 <= position < {len(self._members[source])}")
            self._cursors = [[int(e), int(p)] for e, p in cursors]
            self._drawn, self.epoch = int(state["drawn"]), int(state["epoch"])
            return
        position = state["position"]
        if not 0 <= position < len(self.dataset) or state["epoch"] < 0:
            raise DataError(f"data cursor: epoch={state['epoch']}, position={position} is outside "
                            f"0 <= position < {len(self.dataset)}")
        self.epoch, self.position = int(state["epoch"]), int(position)
