"""RolloutWorker in-process: sampling into a RolloutBatch at its version, sources, weight refusals."""

from __future__ import annotations

import copy

import pytest
import torch

from actors.network_source import build_network
from actors.rollout import PromptRequest, RolloutWorker
from actors.weight_sync import WeightSyncError, checksum, named_state
from rl.batch import RolloutBatch

SAMPLING = {"gen_length": 8, "steps": 4, "block_length": 4, "temperature": 1.0}


@pytest.fixture(scope="module")
def worker(kit):
    return RolloutWorker(kit.sampler_source(0), policy_version=3)


def requests_for(tokenizer, groups=2, samples=2):
    from model.templates import chat_prompt_ids

    prompts = [chat_prompt_ids(tokenizer, text, thinking=False) for text in ("Hi", "What is 12 times 7?")]
    return [PromptRequest(tuple(prompts[g % 2]), f"g{g}", s, "text", task="arithmetic", prompt=f"prompt {g}",
                          answer=str(g), meta={"row": g}) for g in range(groups) for s in range(samples)]


def test_sample_returns_a_valid_batch_tagged_with_the_version(worker):
    from model.templates import special_ids

    ids = special_ids(worker.tokenizer)
    requests = requests_for(worker.tokenizer)
    batch = worker.sample(requests, seed=1, **SAMPLING)
    assert isinstance(batch, RolloutBatch) and batch.validate() is batch
    assert batch.policy_version == [3] * 4 and batch.uid == ["g0", "g0", "g1", "g1"]
    assert batch.sample_index == [0, 1, 0, 1] and batch.kind == ["text"] * 4 and batch.task == ["arithmetic"] * 4
    widest = max(len(r.prompt_ids) for r in requests)
    assert batch.seq_len == widest + 8 and batch.response_start.tolist() == [widest] * 4
    for row, request in enumerate(requests):  # left padding, then the prompt exactly
        assert batch.input_ids[row, widest - len(request.prompt_ids):widest].tolist() == list(request.prompt_ids)
        assert (batch.prompt[row], batch.answer[row], batch.meta[row]) == (request.prompt, request.answer, request.meta)
        assert batch.meta[row] is request.meta and batch.image[row] is None  # the request's own dict; text: no image
        assert batch.forwards[row] == 4  # 4 steps, one forward each
        response = batch.input_ids[row, widest:].tolist()  # decoded up to the first EOS / end-of-turn
        cut = next((i for i, t in enumerate(response) if t in (ids.eos, ids.eot)), len(response))
        assert batch.response[row] == worker.tokenizer.decode(response[:cut])
        assert batch.scored_mask[row].sum() == min(cut + 1, 8)
    again = worker.sample(requests, seed=1, **SAMPLING)
    assert torch.equal(again.input_ids, batch.input_ids)  # a pure function of weights, prompts and seed
    with pytest.raises(ValueError, match="no requests"):
        worker.sample([], **SAMPLING)


def test_full_state_dicts_are_applied_only_when_newer_and_complete(worker, kit):
    other, _ = build_network(kit.policy_source(seed=4))
    state = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(WeightSyncError, match="refused weight version 3: this worker already holds version 3"):
        worker.load_state_dict(3, state)
    partial = dict(list(state.items())[1:])
    with pytest.raises(WeightSyncError, match="refused partial weight version 4"):
        worker.load_state_dict(4, partial)
    assert worker.load_state_dict(4, state) == 4 and worker.version() == 4
    assert worker.checksum() == checksum(named_state(other))


def test_a_worker_without_valid_weights_refuses_to_sample_or_decode(kit):
    worker = RolloutWorker(kit.policy_source(0))
    worker.receiver.version = None  # what a sync that failed half-way leaves behind
    with pytest.raises(WeightSyncError, match="holds no valid weights"):
        worker.sample([PromptRequest((1, 2, 3), "u", 0, "text")], **SAMPLING)
    with pytest.raises(WeightSyncError, match="holds no valid weights"):  # held-out evaluation's calls too
        worker.decode([[1, 2, 3]], {"gen_length": 8, "steps": 4, "block_length": 8}, seed=0, mask_id=0, pad_id=None)


def test_worker_from_a_checkpoint_directory(kit, tmp_path):
    import model

    model.save(kit.tiny_loaded(), tmp_path / "policy")
    worker = RolloutWorker(str(tmp_path / "policy"), policy_version=0, dtype="bf16")
    assert worker.tokenizer is not None and next(worker.network.parameters()).dtype == torch.bfloat16
    reference = copy.deepcopy(kit.tiny_loaded().network).to(torch.bfloat16)
    assert worker.checksum() == checksum(named_state(reference))


def test_network_source_errors():
    with pytest.raises(ValueError, match="dtype 'fp16'; valid: fp32, bf16"):
        build_network(lambda: torch.nn.Linear(1, 1), "fp16")
    with pytest.raises(TypeError, match="returned int, not an nn.Module"):
        build_network(lambda: 3)
    with pytest.raises(TypeError, match="expected a checkpoint path or a callable"):
        build_network(3)
