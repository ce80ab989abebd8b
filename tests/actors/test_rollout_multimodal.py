"""RolloutWorker with an image tokenizer: text + mmu + t2i requests mixed in one call, one RolloutBatch.

The worker holds the tiny MMaDA twin (600 text ids, 64 image codes at ids 600..663, 16 image slots) and a
tiny random MAGVIT tokenizer (6 bits = 64 codes, ×2 downsample: 8 px images <-> 4×4 = 16 codes) written
to a temporary directory. Expected prompts, codes and images are computed here from the tokenizer loaded
separately, not from the worker.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from PIL import Image

from actors.config import RolloutConfig
from actors.rollout import PromptRequest, RolloutWorker
from model.image_processing import preprocess_image, to_uint8
from model.image_sampling import ImageSamplerConfig
from model.magvit import MagvitConfig, load_image_tokenizer, random_image_tokenizer, save_image_tokenizer
from model.sampling import TextSamplerConfig
from model.templates import chat_prompt_ids
from model.tiny import tiny_mmada_model
from rl.batch import RolloutBatch

TEXT = TextSamplerConfig(gen_length=8, steps=4, block_length=4, temperature=1.0)
IMAGE = ImageSamplerConfig(steps=4, guidance_scale=2.0, text_length=8)
MMU, SOI, EOI, T2I, BOS, EOS = 595, 592, 593, 594, 586, 587


def magvit_config(bits: int = 6) -> MagvitConfig:
    return MagvitConfig(ch=8, z_channels=bits, encoder_ch_mult=(1, 1), encoder_num_res_blocks=(1, 1),
                        decoder_ch_mult=(1, 1), decoder_num_res_blocks=(1, 1), num_groups=4)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return str(save_image_tokenizer(random_image_tokenizer(magvit_config(), seed=1),
                                    tmp_path_factory.mktemp("magvit") / "tokenizer"))


@pytest.fixture(scope="module")
def worker(tokenizer_dir):
    return RolloutWorker(functools.partial(tiny_mmada_model, 0), policy_version=2, image_tokenizer=tokenizer_dir)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("images") / "wide.png"
    Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(path)  # resized and cropped to 8×8
    return array, str(path)


def mixed_requests(tokenizer, images):
    array, path = images
    chat = lambda text: tuple(chat_prompt_ids(tokenizer, text, thinking=False))  # noqa: E731
    plain = lambda text: tuple(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    return [
        PromptRequest(plain("a red circle"), "img-0", 0, "t2i", prompt="a red circle", answer="red"),
        PromptRequest(chat("What is 2 + 2?"), "txt-0", 0, "text", prompt="What is 2 + 2?", answer="4"),
        PromptRequest(chat("Describe the image."), "cap-0", 0, "mmu", task="captioning", answer="noise", image=array),
        PromptRequest(plain("a blue square on a green background"), "img-1", 0, "t2i", task="shapes",
                      meta={"shape": "square"}),
        PromptRequest(chat("What colour dominates?"), "cap-1", 0, "mmu", image=path),
        PromptRequest(chat("What is 3 + 4?"), "txt-1", 1, "text"),
        PromptRequest(plain("a red circle"), "img-0", 1, "t2i"),
    ]


def same_rows(mixed: RolloutBatch, rows: list[int], alone: RolloutBatch) -> bool:
    """True if `rows` of `mixed` are `alone`'s rows, up to the extra left padding that concat added."""
    picked, width = mixed.select(rows), alone.seq_len
    assert not picked.attention_mask[:, : picked.seq_len - width].any()
    return (torch.equal(picked.input_ids[:, -width:], alone.input_ids)
            and torch.equal(picked.reveal_step[:, -width:], alone.reveal_step)
            and torch.equal(picked.scored_mask[:, -width:], alone.scored_mask)
            and torch.equal(picked.protected_mask[:, -width:], alone.protected_mask))


def test_a_mixed_call_returns_one_batch_in_request_order(worker, tokenizer_dir, images):
    requests = mixed_requests(worker.tokenizer, images)
    batch = worker.sample(requests, text=TEXT, image=IMAGE, seed=5)
    assert isinstance(batch, RolloutBatch) and batch.validate() is batch
    assert batch.kind == ["t2i", "text", "mmu", "t2i", "mmu", "text", "t2i"]
    assert batch.uid == [r.uid for r in requests] and batch.sample_index == [0, 0, 0, 0, 0, 1, 1]
    assert batch.policy_version == [2] * 7
    assert batch.task == ["t2i", "text", "captioning", "shapes", "mmu", "text", "t2i"]
    assert batch.answer == ["red", "4", "noise", None, None, None, None]
    assert batch.prompt == ["a red circle", "What is 2 + 2?", "", "", "", "", ""]
    assert batch.meta == [None, None, None, {"shape": "square"}, None, None, None]
    assert batch.forwards == [None, 4, 4, None, 4, 4, None]  # text and mmu: 4 steps, one forward each
    assert batch.image[1] is None and batch.image[5] is None  # text rows have no image
    assert batch.score_vocab == [(600, 664), None, None, (600, 664), None, None, (600, 664)]
    image_tokenizer = load_image_tokenizer(tokenizer_dir)

    for row in (0, 3, 6):  # t2i: prompt, 16 slots scored over the image columns, <|eoi|> suffix, decoded image
        start, end = int(batch.response_start[row]), int(batch.response_end[row])
        assert end - start == 16 and int(batch.input_ids[row, end]) == EOI and end + 1 == batch.seq_len
        assert batch.scored_mask[row].nonzero().flatten().tolist() == list(range(start, end))
        slots = batch.input_ids[row, start:end]
        assert ((slots >= 600) & (slots < 664)).all()
        assert sorted(batch.reveal_step[row, start:end].tolist()) == sorted([0] * 2 + [1] * 3 + [2] * 5 + [3] * 6)
        text = list(requests[row].prompt_ids)
        part = [T2I, BOS, *text, EOS] if len(text) + 3 <= 8 else [T2I, BOS, *text[:5], EOS]
        assert batch.input_ids[row, start - 9 : start].tolist() == [596] * (8 - len(part)) + part + [SOI]
        assert int(batch.attention_mask[row].sum()) == len(part) + 1 + 16 + 1  # [iPAD]s are not attended
        assert batch.protected_mask[row].nonzero().flatten().tolist() == [start - 9 + (8 - len(part)) + i for i in
                                                                           (0, 1, len(part) - 1, len(part))]
        expected = to_uint8(image_tokenizer.decode(slots[None] - 600))[0]
        image = batch.image[row]
        assert image.dtype == np.uint8 and image.shape == (8, 8, 3) and np.array_equal(image, expected)
        assert batch.response[row] == ""

    array, path = images
    for row, image in ((2, array), (4, path)):  # mmu: <|mmu|> <|soi|> codes <|eoi|> chat prompt, image protected
        codes = image_tokenizer.encode(preprocess_image(image, 8)[None])[0]
        prompt = [MMU, SOI, *(codes + 600).tolist(), EOI, *requests[row].prompt_ids]
        start = int(batch.response_start[row])
        assert batch.input_ids[row, start - len(prompt) : start].tolist() == prompt
        assert int(batch.attention_mask[row].sum()) == len(prompt) + 8
        protected = batch.protected_mask[row, start - len(prompt) : start]
        assert protected[:19].all()  # <|mmu|> <|soi|> 16 codes <|eoi|>
        assert batch.scored_mask[row, start:].any()
        response = batch.input_ids[row, start:].tolist()
        cut = next((i for i, t in enumerate(response) if t in (EOS, 591)), len(response))
        assert batch.response[row] == worker.tokenizer.decode(response[:cut])
    # mmu rows carry their input image (what the rewards score): the request's own array, or the file's pixels
    assert batch.image[2] is array
    assert np.array_equal(batch.image[4], np.asarray(Image.open(path).convert("RGB"))) and batch.image[4].shape == (10, 12, 3)


def test_each_kind_is_sampled_as_if_alone(worker, images):
    requests = mixed_requests(worker.tokenizer, images)
    mixed = worker.sample(requests, text=TEXT, image=IMAGE, seed=5)
    for kind in ("text", "mmu", "t2i"):
        rows = [i for i, r in enumerate(requests) if r.kind == kind]
        alone = worker.sample([requests[i] for i in rows], text=TEXT, image=IMAGE, seed=5)
        assert same_rows(mixed, rows, alone)
    text_rows = [1, 5]  # the text group uses the call's seed itself: the older keyword form gives the same rows
    old = worker.sample([requests[i] for i in text_rows], seed=5, gen_length=8, steps=4, block_length=4,
                        temperature=1.0)
    assert same_rows(mixed, text_rows, old)
    again = worker.sample(requests, text=TEXT, image=IMAGE, seed=5)
    assert torch.equal(again.input_ids, mixed.input_ids)
    other = worker.sample(requests, text=TEXT, image=IMAGE, seed=6)
    assert not torch.equal(other.input_ids, mixed.input_ids)


def test_prompt_request_errors():
    with pytest.raises(ValueError, match=r"PromptRequest\(uid='u', sample_index=0\): kind 'captioning' is not one "
                                         r"of \['text', 'mmu', 't2i'\]"):
        PromptRequest((1,), "u", 0, "captioning", image="x.png")  # a task where the kind belongs
    with pytest.raises(ValueError, match="kind 'video' is not one of"):
        PromptRequest((1,), "u", 0, kind="video")
    with pytest.raises(ValueError, match="an mmu request needs image="):
        PromptRequest((1,), "u", 0, "mmu", task="captioning")
    with pytest.raises(ValueError, match="a t2i request takes no image; only mmu requests do"):
        PromptRequest((1,), "u", 0, "t2i", image="x.png")
    with pytest.raises(ValueError, match="a text request takes no image"):
        PromptRequest((1,), "u", 0, "text", image=np.zeros((2, 2, 3), np.uint8))
    assert PromptRequest((1,), "u", 0, "mmu", image="x.png").task == "mmu"  # the task defaults to the kind
    assert PromptRequest((1,), "u", 0, "text", task="gsm8k").task == "gsm8k"


def test_sample_errors(worker, kit, tokenizer_dir, images):
    requests = mixed_requests(worker.tokenizer, images)
    with pytest.raises(ValueError, match=r"t2i requests need image=ImageSamplerConfig\(...\), got NoneType"):
        worker.sample(requests, text=TEXT, seed=0)
    with pytest.raises(ValueError, match=r"text/mmu requests need text=TextSamplerConfig\(...\)"):
        worker.sample(requests, image=IMAGE)
    with pytest.raises(ValueError, match=r"pass either text=TextSamplerConfig\(...\) or the keywords \['gen_length'\]"):
        worker.sample(requests, text=TEXT, image=IMAGE, gen_length=8)
    with pytest.raises(ValueError, match=r"keyword form needs gen_length, steps and block_length; missing \['steps'"):
        worker.sample(requests[1:2], gen_length=8, block_length=4)
    with pytest.raises(TypeError, match="text must be a TextSamplerConfig, got dict"):
        worker.sample(requests, text={"gen_length": 8}, image=IMAGE)
    with pytest.raises(TypeError, match=r"requests\[1\] is a tuple, not a PromptRequest"):
        worker.sample([requests[0], (1, 2)], text=TEXT, image=IMAGE)
    missing = PromptRequest(requests[2].prompt_ids, "gone", 0, "mmu", image="/nonexistent/picture.png")
    with pytest.raises(ValueError, match=r"mmu request \(uid 'gone', sample 0\): cannot use its image: image file "
                                         "/nonexistent/picture.png does not exist"):
        worker.sample([missing], text=TEXT)
    bad_array = PromptRequest(requests[2].prompt_ids, "bad", 1, "mmu", image=np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"uid 'bad', sample 1\): cannot use its image: image array must be H x W x 3"):
        worker.sample([bad_array], text=TEXT)

    text_only = RolloutWorker(functools.partial(tiny_mmada_model, 0))  # an MMaDA model, no image tokenizer
    for request, kind in ((requests[0], "t2i"), (requests[2], "mmu")):
        with pytest.raises(ValueError, match=f"sample: {kind} requests need an image tokenizer; start the worker "
                                             r"with image_tokenizer=<directory> \(config: rollout.image_tokenizer\)"):
            text_only.sample([request], text=TEXT, image=IMAGE)
    assert text_only.sample(requests[1:2], text=TEXT).kind == ["text"]
    llada = RolloutWorker(kit.sampler_source(0))
    with pytest.raises(ValueError, match="t2i requests need an MMaDA network with its tokenizer; this worker holds "
                                         "a llada network"):
        llada.sample(requests[:1], image=IMAGE)


def test_image_tokenizer_errors(kit, tokenizer_dir, tmp_path):
    with pytest.raises(ValueError, match="image_tokenizer=.* given, but the network is not an MMaDA model"):
        RolloutWorker(kit.sampler_source(0), image_tokenizer=tokenizer_dir)
    with pytest.raises(TypeError, match="image_tokenizer: got MagvitTokenizer; expected a directory path or None"):
        RolloutWorker(functools.partial(tiny_mmada_model, 0),
                      image_tokenizer=random_image_tokenizer(magvit_config(), seed=1))
    with pytest.raises(FileNotFoundError, match="image tokenizer directory .*nowhere does not exist"):
        RolloutWorker(functools.partial(tiny_mmada_model, 0), image_tokenizer=str(tmp_path / "nowhere"))
    small = save_image_tokenizer(random_image_tokenizer(magvit_config(bits=5)), tmp_path / "small")
    with pytest.raises(ValueError, match="image tokenizer .*small has 32 codes, but the network's codebook_size is 64"):
        RolloutWorker(functools.partial(tiny_mmada_model, 0), image_tokenizer=str(small))
    with pytest.raises(ValueError, match="num_vq_tokens=12 is not a square"):
        RolloutWorker(functools.partial(tiny_mmada_model, 0, num_vq_tokens=12), image_tokenizer=tokenizer_dir)


def test_rollout_config_fields():
    cfg = RolloutConfig()
    assert cfg.image_sampler == ImageSamplerConfig() and cfg.image_tokenizer is None
    assert RolloutConfig(image_tokenizer="/models/magvit").image_tokenizer == "/models/magvit"
    with pytest.raises(ValueError, match="image_tokenizer: empty string; use null"):
        RolloutConfig(image_tokenizer=" ")


def test_the_pool_passes_the_image_sampler_and_tokenizer_to_its_workers(ray_session, worker, tokenizer_dir, images):
    from actors.rollout_pool import RolloutPool, shard_seed

    cfg = RolloutConfig(num_workers=2, sampler=TEXT, image_sampler=IMAGE, image_tokenizer=tokenizer_dir)
    pool = RolloutPool(cfg, functools.partial(tiny_mmada_model, 0))
    try:
        requests = mixed_requests(worker.tokenizer, images)
        batches, _ = pool.collect(pool.dispatch(requests, step=3, run_seed=7))
    finally:
        pool.shutdown()
    assert [len(b) for b in batches] == [4, 3]  # shards [0, 4) and [4, 7)
    for shard, (batch, rows) in enumerate(zip(batches, ([0, 1, 2, 3], [4, 5, 6]))):
        local = worker.sample([requests[i] for i in rows], text=TEXT, image=IMAGE, seed=shard_seed(7, 3, shard))
        assert (batch.kind, batch.task, batch.uid) == (local.kind, local.task, local.uid)
        assert torch.equal(batch.input_ids, local.input_ids) and torch.equal(batch.reveal_step, local.reveal_step)
        assert batch.response == local.response and batch.forwards == local.forwards
        for got, want in zip(batch.image, local.image):
            assert (got is None) == (want is None) and (want is None or np.array_equal(got, want))


@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
def test_mmu_rows_with_the_block_kv_cache(worker, images, cfg_scale):
    """The image codes are part of the cached prefix. One step per block: a block's only forward is the full
    one, so prefix and dual equal exact row for row; with several steps and a threshold every response
    position is still revealed, block by block, in at most the fixed schedule's forwards."""
    requests = [r for r in mixed_requests(worker.tokenizer, images) if r.kind == "mmu"]
    one_step = dict(gen_length=8, steps=2, block_length=4, temperature=1.0, cfg_scale=cfg_scale)
    exact = worker.sample(requests, text=TextSamplerConfig(**one_step), seed=5)
    for cache in ("prefix", "dual"):
        cached = worker.sample(requests, text=TextSamplerConfig(**one_step, cache=cache), seed=5)
        assert same_rows(cached, [0, 1], exact), cache

    fast = worker.sample(requests, text=TextSamplerConfig(gen_length=8, steps=8, block_length=4, temperature=0.0,
                                                          cfg_scale=cfg_scale, cache="dual", threshold=0.05), seed=5)
    mask_id = worker.network.config.mask_token_id
    for row in range(2):
        start = int(fast.response_start[row])
        assert not (fast.input_ids[row, start:] == mask_id).any()  # every position revealed
        steps = fast.reveal_step[row, start:]
        assert steps[:4].max() < steps[4:].min()  # block by block
        assert 2 <= fast.forwards[row] <= 8
        assert int(fast.response_end[row] - fast.response_start[row]) == 8  # the tokens the forwards made
