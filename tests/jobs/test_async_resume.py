"""The next step's samples saved with an async-mode checkpoint (`pending_rollouts.pt`) and read back on resume.

Unit tests of the pieces (no Ray actors): `jobs/train_parts.py: pending_payload` writes delivered shards,
`jobs/checkpoint.py: CheckpointManager` saves the file with its sha256 and loads it with
`torch.load(weights_only=True)` after the digests are checked, `jobs/train_parts.py: saved_pending` gives the
shards back or refuses them naming the file. The whole run, killed and resumed, is
tests/jobs/test_resume.py::test_async_sigkill_after_a_checkpoint_with_samples_in_flight_resumes_exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from actors.rollout_pool import PendingShard
from jobs.checkpoint import MARKER, PENDING_FILE, CheckpointError, CheckpointManager
from jobs.config import load_config
from jobs.train_parts import pending_payload, saved_pending
from rl.batch import RolloutBatch

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "tests/jobs/configs/tiny_lengths.yaml"


def config(prompts: int = 3, group: int = 2):
    return load_config(CONFIG, [f"run.prompts_per_step={prompts}", f"algo.group_size={group}"])


def text_shard(seed: int, uids: list[str], version: int) -> RolloutBatch:
    """Two samples per uid, rows of 4 prompt + 3 response tokens, as a text worker returns them."""
    g = torch.Generator().manual_seed(seed)
    rows = 2 * len(uids)
    meta = {u: {"source": u, "level": [1, 2]} for u in uids}  # one dict per group, as build_requests shares it
    return RolloutBatch.from_sampler(
        torch.randint(10, 50, (rows, 7), generator=g), torch.randint(0, 3, (rows, 3), generator=g), [4, 3] * len(uids),
        eos_ids=[2], kind="text", uid=[u for u in uids for _ in range(2)], sample_index=[0, 1] * len(uids),
        policy_version=version, task=["arith"] * rows, prompt=[f"what is {u}?" for u in uids for _ in range(2)],
        answer=["4", None] * len(uids), response=[f"r{seed}.{i}" for i in range(rows)],
        meta=[meta[u] for u in uids for _ in range(2)], forwards=[3, 5] * len(uids))


def image_shard(seed: int, version: int) -> RolloutBatch:
    """An mmu group (both rows share one input image array, as the worker makes them) and a t2i group
    (a generated image per row; scored over the image-code columns [60, 70))."""
    rng = np.random.default_rng(seed)
    shared = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    generated = [rng.integers(0, 256, (4, 4, 3), dtype=np.uint8) for _ in range(2)]
    ids = torch.tensor([[11, 12, 13, 2, 20, 21], [11, 12, 13, 22, 2, 2],
                        [30, 31, 32, 60, 61, 62], [30, 31, 32, 63, 64, 65]])  # [4, 3 prompt + 3 response]
    reveal = torch.tensor([[0, 1, 1], [1, 0, 2], [0, 0, 1], [1, 1, 0]])  # [4, 3]
    return RolloutBatch.from_sampler(
        ids, reveal, [3] * 4, eos_ids=[2], kind=["mmu", "mmu", "t2i", "t2i"], uid=["cap", "cap", "pic", "pic"],
        sample_index=[0, 1, 0, 1], policy_version=version, score_vocab=[None, None, (60, 70), (60, 70)],
        task=["captioning", "captioning", "t2i", "t2i"], prompt=["describe", "describe", "a cat", "a cat"],
        response=["a dog", "two dogs", "", ""], image=[shared, shared, *generated], forwards=[4, 4, None, None])


def delivered(version: int = 6) -> list[PendingShard]:
    """Step 3's shards, sampled at `version` (one behind the checkpoint's version in async mode)."""
    return [PendingShard.delivered(0, text_shard(0, ["a", "b"], version), version),
            PendingShard.delivered(1, image_shard(1, version), version)]


@pytest.fixture
def manager(tmp_path):
    """One run's checkpoints in `<tmp>/checkpoints`."""
    return CheckpointManager(tmp_path / "checkpoints", load_config(CONFIG).checkpoint)


def save(manager: CheckpointManager, step: int, *, pending_step: int | None = None, payload=None) -> Path:
    """A checkpoint as jobs/train.py `save` writes it (no learner: the manager does not need one)."""
    state = {"policy_version": 7, "data": {"epoch": 0, "position": 6}, "rng": {}}
    if pending_step is not None:
        state["pending_step"] = pending_step
    return manager.save(step, driver_state=state, config_text="run: {}\n", pending_rollouts=payload)


def resumed(path: Path):
    return CheckpointManager(path.parent, dataclasses.replace(load_config(CONFIG).checkpoint, resume=str(path))).resume()


def assert_same_rows(got: RolloutBatch, expected: RolloutBatch) -> None:
    for field in dataclasses.fields(RolloutBatch):
        a, b = getattr(got, field.name), getattr(expected, field.name)
        if isinstance(b, torch.Tensor):
            assert a.dtype == b.dtype and torch.equal(a, b), field.name
        elif field.name == "image":
            assert [type(x) for x in a] == [type(x) for x in b], field.name
            assert all(x is None or (x.dtype == y.dtype and np.array_equal(x, y)) for x, y in zip(a, b)), field.name
        else:
            assert a == b, field.name


def test_pending_samples_round_trip_through_a_checkpoint(manager):
    shards = delivered()
    path = save(manager, 2, pending_step=3, payload=pending_payload(3, shards))
    marker = json.loads((path / MARKER).read_text())
    assert marker["sha256"][PENDING_FILE] == hashlib.sha256((path / PENDING_FILE).read_bytes()).hexdigest()
    loaded = resumed(path)
    back = saved_pending(loaded, config(prompts=4, group=2))  # uids a, b (text), cap (mmu), pic (t2i)
    assert [(s.index, s.dispatched_version, s.future) for s in back] == [(0, 6, None), (1, 6, None)]
    for got, original in zip(back, shards):
        assert_same_rows(got.batch, original.batch)
    mmu = back[1].batch.image
    assert mmu[0] is mmu[1] and mmu[2] is not mmu[3]  # the mmu group's one array is one array again
    assert back[0].batch.meta[0] is back[0].batch.meta[1]  # a group's meta dict too (pickled once per shard)


def test_an_image_shared_by_rows_is_saved_once():
    shards = delivered()
    payload = pending_payload(3, shards)
    images = payload["batches"][1]["image"]
    assert images[0] is images[1] and images[0].dtype == torch.uint8 and tuple(images[0].shape) == (5, 6, 3)
    assert payload["batches"][0]["image"] == [None] * 4
    assert (payload["step"], payload["dispatched_version"]) == (3, 6)


def test_a_tampered_pending_file_is_refused_by_its_digest_before_it_is_loaded(manager):
    shards = delivered()
    path = save(manager, 2, pending_step=3, payload=pending_payload(3, shards))
    file = path / PENDING_FILE
    data = bytearray(file.read_bytes())
    generated = shards[1].batch.image[2].tobytes()  # the first t2i image: its bytes lie in the file as they are
    offset = data.find(generated)
    assert offset > 0 and data.count(generated) == 1
    data[offset] ^= 0x01
    file.write_bytes(bytes(data))
    # the loader alone would take it: same size, a valid file, one wrong pixel
    tampered = torch.load(file, weights_only=True)["batches"][1]["image"][2]
    assert int(tampered[0, 0, 0]) == int(shards[1].batch.image[2][0, 0, 0]) ^ 0x01
    with pytest.raises(CheckpointError, match=rf"cannot be loaded: listed file {PENDING_FILE} has sha256 [0-9a-f]{{64}}, "
                                              "the marker says"):
        resumed(path)


def test_pending_samples_that_do_not_fit_the_run_are_refused_naming_the_file_and_each_mismatch(manager):
    root = manager.root
    fits = resumed(save(manager, 2, pending_step=3, payload=pending_payload(3, delivered())))
    with pytest.raises(CheckpointError) as err:
        saved_pending(fits, config(prompts=8, group=4))
    assert str(err.value) == (
        f"{root / 'step_2' / PENDING_FILE} does not fit this run: 4 prompts, run.prompts_per_step is 8; [2] samples "
        f"per prompt, algo.group_size is 4. Resume it with the settings it was written with "
        f"({root / 'step_2' / 'config.yaml'}), or start a fresh run")
    other_step = resumed(save(manager, 5, pending_step=4, payload=pending_payload(4, delivered())))
    with pytest.raises(CheckpointError, match=r"step_5/pending_rollouts.pt does not fit this run: it holds step 4's "
                                              r"samples, driver_state.json names step 4, and the step after this "
                                              r"checkpoint is 6\. Resume"):
        saved_pending(other_step, config(prompts=4, group=2))


def test_unreadable_or_missing_pending_samples_are_refused_naming_the_file(manager):
    payload = pending_payload(3, delivered())
    del payload["batches"][0]["reveal_step"]  # as a RolloutBatch of another version of the code would lack it
    older = resumed(save(manager, 2, pending_step=3, payload=payload))
    with pytest.raises(CheckpointError, match=r"step_2/pending_rollouts.pt cannot be read as a step's samples "
                                              r"\(ValueError: RolloutBatch.from_dict: unknown keys \[\], missing keys "
                                              r"\['reveal_step'\]\); was it written by another version"):
        saved_pending(older, config(prompts=4))
    other = resumed(save(manager, 3, pending_step=4, payload={"step": 4, "shards": []}))
    with pytest.raises(CheckpointError, match=r"cannot be read as a step's samples \(ValueError: keys \['shards', "
                                              r"'step'\], expected \['step', 'dispatched_version', 'batches'\]\)"):
        saved_pending(other, config(prompts=4))
    without = resumed(save(manager, 4, pending_step=5))  # driver_state names samples the checkpoint does not have
    with pytest.raises(CheckpointError, match=r"step_4/driver_state.json says step 5's samples were saved, but the "
                                              r"checkpoint lists no pending_rollouts.pt"):
        saved_pending(without, config(prompts=4))


def test_a_checkpoint_without_pending_samples_resumes_as_before(manager):
    """Sync mode, the last step, and every checkpoint written before samples were saved: no file, no
    `pending_step`; the resumed run draws the next step's prompts from the saved cursor."""
    path = save(manager, 2)
    assert PENDING_FILE not in json.loads((path / MARKER).read_text())["files"]
    loaded = resumed(path)
    assert loaded.pending_rollouts is None and "pending_step" not in loaded.driver_state
    assert saved_pending(loaded, config()) is None
