"""The driver's mixed-task plumbing (jobs/multitask.py) without Ray: task -> kind, typed requests with their
images, per-task metrics worked out by hand, the t2i grid, the scorer choice and the data/config checks."""

from __future__ import annotations

import dataclasses
import json
import types

import numpy as np
import torch

from jobs.config import load_config
from jobs.data import PromptDataset, load_image
from jobs.multitask import (
    GRID_SAMPLES,
    build_requests,
    check_tasks,
    image_loader,
    image_tasks,
    record_kinds,
    reward_scorer,
    t2i_grid,
    task_metrics,
    uses_reward_actors,
)
from rl.batch import RolloutBatch

TRAIN = "data.train=prompts.jsonl"


def write_data(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((4, 6, 3), 200, np.uint8)).save(tmp_path / "cat.png")
    rows = [
        {"uid": "q", "task": "text", "prompt": "Compute 2+2.", "answer": "4"},
        {"uid": "c", "task": "captioning", "prompt": "Describe the image.", "image": "cat.png", "kw": 1},
        {"uid": "s", "task": "t2i", "prompt": "a red circle", "rgb": [255, 0, 0]},
        {"uid": "v", "task": "vqa", "prompt": "What colour?", "image": "cat.png", "answer": "grey"},
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def batch_of(rows: list[tuple[str, str, int, list[int], dict]]) -> RolloutBatch:
    """(kind, uid, sample index, response token ids, row columns) per row -> a RolloutBatch; EOS = 9, prompt
    [1, 2]. Row columns: task (default: the kind), prompt, image."""
    width = max(len(r[3]) for r in rows)
    sequences = torch.tensor([[1, 2] + r[3] + [9] * (width - len(r[3])) for r in rows])  # [B, 2 + L]
    return RolloutBatch.from_sampler(
        sequences, torch.zeros(len(rows), width, dtype=torch.long), [2] * len(rows), eos_ids={9},
        kind=[r[0] for r in rows], uid=[r[1] for r in rows], sample_index=[r[2] for r in rows], policy_version=0,
        task=[r[4].get("task", r[0]) for r in rows], prompt=[r[4].get("prompt", "") for r in rows],
        image=[r[4].get("image") for r in rows])


def with_totals(batch: RolloutBatch, totals: list[float | None]) -> RolloutBatch:
    """`batch` with the totals a reward service would have written (no per-term columns needed here)."""
    return dataclasses.replace(batch, total=totals).validate()


def test_kinds_and_image_tasks(tmp_path):
    cfg = load_config(None, [f"data.train={write_data(tmp_path)}"])
    assert image_tasks(cfg.data) == {"mmu", "captioning"}
    dataset = PromptDataset(cfg.data.train, image_tasks=image_tasks(cfg.data))
    assert record_kinds(dataset.records, cfg.data) == {"q": "text", "c": "mmu", "s": "t2i", "v": "mmu"}
    path = str((tmp_path / "cat.png").resolve())
    cached = image_loader(cache_size=2)
    assert cached(path) is cached(path)  # one read per image while it stays in the cache


def test_requests_per_kind(tmp_path):
    from model.templates import chat_prompt_ids
    from model.tiny import tiny_model

    cfg = load_config(None, [f"data.train={write_data(tmp_path)}", "algo.group_size=2", "data.thinking=false"])
    records = PromptDataset(cfg.data.train, image_tasks=image_tasks(cfg.data)).records
    tokenizer = tiny_model(0).tokenizer
    calls = []

    def load(path):
        calls.append(path)
        return load_image(path)

    requests = build_requests(records, tokenizer, cfg, load, samples=2)
    assert calls == [str((tmp_path / "cat.png").resolve())] * 2  # once per mmu record (c, v), not per request
    assert [(r.uid, r.sample_index, r.task, r.kind) for r in requests] == [
        ("q", 0, "text", "text"), ("q", 1, "text", "text"), ("c", 0, "captioning", "mmu"),
        ("c", 1, "captioning", "mmu"), ("s", 0, "t2i", "t2i"), ("s", 1, "t2i", "t2i"),
        ("v", 0, "vqa", "mmu"), ("v", 1, "vqa", "mmu")]
    by_uid = {r.uid: r for r in requests}
    chat = list(chat_prompt_ids(tokenizer, "Compute 2+2.", thinking=False))
    assert list(by_uid["q"].prompt_ids) == chat and by_uid["q"].image is None
    assert list(by_uid["c"].prompt_ids) == list(chat_prompt_ids(tokenizer, "Describe the image.", thinking=False))
    assert list(by_uid["s"].prompt_ids) == tokenizer("a red circle", add_special_tokens=False)["input_ids"]
    assert by_uid["s"].image is None
    # the row's fields a reward reads (rewards.samples_of, once the worker copied them into the row)
    assert [(r.prompt, r.answer, r.meta) for r in requests[::2]] == [
        ("Compute 2+2.", "4", {}), ("Describe the image.", None, {"kw": 1}), ("a red circle", None, {"rgb": [255, 0, 0]}),
        ("What colour?", "grey", {})]
    understanding = [r for r in requests if r.kind == "mmu"]
    for request in understanding:  # the row's input image, HxWx3 uint8
        assert request.image.shape == (4, 6, 3) and request.image.dtype == np.uint8 and (request.image == 200).all()
    assert understanding[0].image is understanding[1].image  # one array per prompt (pickled once)
    assert requests[2].meta is requests[3].meta  # one meta dict per prompt too


def test_task_metrics_per_task_by_hand():
    batch = batch_of([
        ("text", "a", 0, [5, 9, 9, 9], {}),   # 2 scored tokens (through the EOS)
        ("text", "a", 1, [5, 5, 5, 9], {}),   # 4
        ("mmu", "b", 0, [5, 5, 5, 5], {"task": "captioning"}),    # 4 (no EOS)
        ("mmu", "b", 1, [9, 9, 9, 9], {"task": "captioning"}),    # 1
    ])
    batch = with_totals(batch, [1.0, 0.0, None, 2.0])
    advantages = torch.tensor([0.7, -0.7, 0.0, 0.0])  # kept rows = all; the captioning group has one scored row
    metrics = task_metrics(batch, batch, advantages)
    assert metrics == {
        "rollout/text/rows": 2.0, "rollout/text/response_tokens_mean": 3.0,
        "health/text/rows_unscorable": 0.0, "health/text/rows_zero_advantage": 0.0,
        "rollout/captioning/rows": 2.0, "rollout/captioning/response_tokens_mean": 2.5,
        "health/captioning/rows_unscorable": 1.0, "health/captioning/rows_zero_advantage": 2.0,
    }
    dropped = task_metrics(batch, batch.select([2, 3]), torch.tensor([0.0, 0.0]))
    assert dropped["health/text/rows_zero_advantage"] == 0.0 and dropped["health/captioning/rows_zero_advantage"] == 2.0


def test_t2i_grid_one_row_per_prompt_in_sample_order_and_without_images():
    def image(value):
        return np.full((2, 2, 3), value, np.uint8)

    def shapes(prompt, value):
        return {"task": "shapes", "prompt": prompt, "image": image(value)}

    rows = [("t2i", "p", 1, [7], shapes("a red circle", 11)),
            ("text", "q", 0, [7], {"prompt": "2+2"}),
            ("t2i", "p", 0, [7], shapes("a red circle", 10)),
            ("t2i", "r", 0, [7], shapes("a blue square", 20))]
    rows += [("t2i", "p", i, [7], shapes("a red circle", i)) for i in range(2, 2 + GRID_SAMPLES)]
    batch = with_totals(batch_of(rows), [0.5, 1.0, 0.25, None] + [0.0] * GRID_SAMPLES)
    grid, captions = t2i_grid(batch)
    assert [[int(cell[0, 0, 0]) for cell in row] for row in grid] == [[10, 11, *range(2, GRID_SAMPLES)], [20]]
    assert captions == ["[shapes] a red circle | rewards: 0.250 0.500 " + " ".join(["0.000"] * (GRID_SAMPLES - 2)),
                        "[shapes] a blue square | rewards: -"]
    assert t2i_grid(batch_of([("text", "q", 0, [7], {})])) == ([], [])
    stripped = batch.for_learner()  # what the update sends to the learner ranks
    assert stripped.image == [None] * batch.num_rows and stripped.kind == batch.kind
    assert batch.image[0] is not None  # the original keeps them (the grid is drawn after the update)


def test_scorer_is_in_process_without_heavy_terms():
    cfg = load_config(None, [TRAIN, "rewards.tasks={text: [{name: format}], t2i: [{name: clip, options: {path: x}}]}"])
    assert uses_reward_actors(cfg.rewards, ["t2i"], cfg.reward_actors.heavy_terms)
    assert not uses_reward_actors(cfg.rewards, ["text"], cfg.reward_actors.heavy_terms)
    assert not uses_reward_actors(cfg.rewards, ["t2i"], ())  # nothing declared heavy: no actors
    from rewards import RewardService

    with reward_scorer(cfg, ["text"]) as scorer:
        assert isinstance(scorer, RewardService) and scorer.tasks == ["text"]


def test_check_tasks_names_every_problem(tmp_path):
    data = write_data(tmp_path)
    text_model = types.SimpleNamespace(mmada={})
    mmada_model = types.SimpleNamespace(mmada={"codebook_size": 64, "num_vq_tokens": 16})
    records = PromptDataset(data).records
    cfg = load_config(None, [f"data.train={data}"])
    problems = check_tasks(cfg, records, text_model)
    assert problems[0].startswith("rewards.tasks: no reward terms for the data task 'vqa' (1 row(s), e.g. ")
    assert problems[0].endswith("add rewards.tasks.vqa (configured: captioning, mmu, t2i, text)")
    assert problems[1].startswith("model.path: 'tiny' has no image vocabulary") and \
        "the data has image tasks (captioning, t2i, vqa)" in problems[1]
    assert problems[2].startswith("rollout.image_tokenizer: not set, but the data has image tasks")
    assert len(problems) == 3
    every = "{" + ", ".join(f"{t}: [{{name: format}}]" for t in ("text", "captioning", "t2i", "vqa")) + "}"
    ok = load_config(None, [f"data.train={data}", f"rewards.tasks={every}"])
    assert [p.split(":")[0] for p in check_tasks(ok, records, mmada_model)] == ["rollout.image_tokenizer"]
    text_only = [r for r in records if r.task == "text"]
    assert check_tasks(cfg, text_only, text_model) == []


TINY_VQ = dict(ch=8, z_channels=6, encoder_ch_mult=(1, 1), encoder_num_res_blocks=(1, 1), decoder_ch_mult=(1, 1),
               decoder_num_res_blocks=(1, 1), num_groups=4)  # 64 codes, x2 downsampling


def test_check_tasks_image_tokenizer_against_the_model(tmp_path):
    from model.magvit import MagvitConfig, random_image_tokenizer, save_image_tokenizer

    data = write_data(tmp_path)
    records = [r for r in PromptDataset(data).records if r.task != "vqa"]
    vq = save_image_tokenizer(random_image_tokenizer(MagvitConfig(**TINY_VQ)), tmp_path / "vq")

    def problems(tokenizer_dir, codebook=64, tokens=16):
        cfg = load_config(None, [f"data.train={data}", f"rollout.image_tokenizer={tokenizer_dir}"])
        return check_tasks(cfg, records, types.SimpleNamespace(mmada={"codebook_size": codebook, "num_vq_tokens": tokens}))

    assert problems(vq) == []
    (missing,) = problems(tmp_path / "nope")
    assert missing.startswith(f"rollout.image_tokenizer: '{tmp_path / 'nope'}' is not a directory")
    (codebook,) = problems(vq, codebook=32)
    assert codebook == (f"rollout.image_tokenizer: '{vq}' has 64 codes (2^z_channels, z_channels=6) but the model's "
                        "codebook_size is 32; use the tokenizer the model was trained with")
    (grid,) = problems(vq, tokens=12)
    assert grid == "model.path: num_vq_tokens=12 is not a square number; images are square grids of codes"
    (vq / "config.json").write_text("{}")
    (full,) = problems(vq)  # without its fields the config is the published architecture: 8192 codes
    assert "has 8192 codes" in full
    (vq / "config.json").write_text('{"z_channels": "six"}')
    (broken,) = problems(vq)
    assert broken.startswith("rollout.image_tokenizer: ") and "z_channels" in broken


def test_tiny_mmada_source_has_the_configured_sizes():
    from jobs.train_parts import policy_parts

    cfg = load_config(None, [TRAIN, "model.path=tiny-mmada", "run.seed=4",
                             "model.tiny_size={codebook_size: 32, num_vq_tokens: 4, d_model: 32, n_layers: 1}"])
    parts = policy_parts(cfg)
    loaded, tokenizer, config = parts.source(), parts.tokenizer, parts.config
    assert config == loaded.config and len(tokenizer) == len(loaded.tokenizer)
    assert config.vocab_size == len(tokenizer) + 32 and (config.d_model, config.n_layers) == (32, 1)
    assert config.mmada == {"new_vocab_size": len(tokenizer) + 32, "llm_vocab_size": len(tokenizer),
                            "codebook_size": 32, "num_vq_tokens": 4, "num_new_special_tokens": 0}
    again = policy_parts(cfg).source()  # seeded by run.seed: every process builds the same weights
    assert all(torch.equal(a, b) for a, b in zip(loaded.network.state_dict().values(), again.network.state_dict().values()))
