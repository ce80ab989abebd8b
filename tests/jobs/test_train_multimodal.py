"""Multimodal UniGRPO, learner side: the log-probs of a text-to-image row are taken over the image-code columns
[image_lo, image_hi) only, as the image sampler draws them (algorithm.md §4).

A mixed batch (one t2i row, one text row) of the tiny MMaDA twin (fp64, so comparisons are exact) goes through
what the learner runs: `rl.estimators.build_views` and `rl.update.score_views`, then a whole
`rl.update.unigrpo_update`. Checked against an independent computation (one full forward per masked copy,
then `log_softmax` over the image columns) and by perturbing the LM-head rows of the non-image columns:
- t2i log-probs equal the independent ones and do not move when non-image logits change; the text row's do
  (the check can fail);
- the gradient of the t2i log-probs is exactly zero on every LM-head row outside the image columns, so an
  update on a t2i-only batch leaves those rows bit for bit unchanged (AdamW, no weight decay).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.templates import special_ids
from model.tiny import tiny_mmada_model
from rl.batch import RolloutBatch
from rl.config import AlgoConfig
from rl.estimators import build_views
from rl.update import PlainEngine, score_views, unigrpo_update

CODEBOOK, NUM_VQ = 64, 16
REPO = Path(__file__).resolve().parents[2]
HEAD = "model.transformer.ff_out.weight"


@pytest.fixture(scope="module")
def mmada():
    torch.set_num_threads(1)
    return tiny_mmada_model(seed=3, codebook_size=CODEBOOK, num_vq_tokens=NUM_VQ, dtype=torch.float64)


def mixed_batch(loaded) -> tuple[RolloutBatch, int, int]:
    """Row 0: t2i (`[iPAD]x2 <|t2i|> BOS text EOS <|soi|>` + 16 image ids + `<|eoi|>`); row 1: a text row (chat-ish
    prompt + 16 response tokens ending in EOS). Returns the batch and the image column range."""
    tok = loaded.tokenizer
    ids = special_ids(tok)
    lo, hi = len(tok), len(tok) + CODEBOOK
    generator = torch.Generator().manual_seed(0)
    text_ids = tok("a red circle", add_special_tokens=False)["input_ids"]
    t2i_prompt = [ids.ipad, ids.ipad, ids.t2i, ids.bos, *text_ids, ids.eos, ids.soi]
    image = torch.randint(lo, hi, (NUM_VQ,), generator=generator).tolist()
    t2i = torch.tensor(t2i_prompt + image + [ids.eoi])  # [P + N + 1]
    P = len(t2i_prompt)
    t2i_batch = RolloutBatch.from_sampler(
        t2i[None], torch.arange(NUM_VQ)[None], [P - 2], eos_ids=(), kind="t2i", uid=["img"], sample_index=[0],
        policy_version=0, prompt_width=P, score_vocab=(lo, hi), protected_ids={ids.t2i, ids.bos, ids.eos, ids.soi},
        protected_id_range=(lo, hi), pad_token_id=ids.pad)
    text_prompt = [ids.bos, ids.start_header, *tok("Compute 2+2.", add_special_tokens=False)["input_ids"], ids.eot]
    response = torch.randint(10, 500, (NUM_VQ,), generator=generator)
    response[-3] = ids.eos
    text = torch.tensor(text_prompt + response.tolist())
    text_batch = RolloutBatch.from_sampler(
        text[None], torch.arange(NUM_VQ)[None], [len(text_prompt)], eos_ids={ids.eos}, kind="text", uid=["txt"],
        sample_index=[0], policy_version=0, pad_token_id=ids.pad)
    return RolloutBatch.concat([t2i_batch, text_batch]), lo, hi


def independent_logprobs(network, batch, views, lo, hi) -> dict[tuple[int, int, int], float]:
    """(copy, row, column) -> log p at every loss position, one full forward per masked copy and row."""
    out = {}
    with torch.no_grad():
        for k in range(views.num_copies):
            for row in range(batch.num_rows):
                logits = network(views.input_ids[k, row][None], batch.attention_mask[row][None])[0]  # [T, V]
                for col in views.loss_mask[k, row].nonzero().flatten().tolist():
                    target = int(batch.input_ids[row, col])
                    if batch.kind[row] == "t2i":
                        out[k, row, col] = float(torch.log_softmax(logits[col, lo:hi], dim=-1)[target - lo])
                    else:
                        out[k, row, col] = float(torch.log_softmax(logits[col], dim=-1)[target])
    return out


def learner_logprobs(network, batch, views) -> dict[tuple[int, int, int], float]:
    """The same positions through `score_views` (what `unigrpo_update` calls), laid out [B, K·T]."""
    T = batch.seq_len
    with torch.no_grad():
        logp, loss_mask = score_views(network, batch, views, torch.arange(batch.num_rows), chunk_size=5)
    return {(k, row, col % T): float(logp[row, col]) for row in range(batch.num_rows)
            for col in loss_mask[row].nonzero().flatten().tolist() for k in [col // T]}


def test_t2i_logprobs_come_from_the_image_columns_only(mmada):
    network = mmada.network
    batch, lo, hi = mixed_batch(mmada)
    assert batch.kind == ["t2i", "text"] and batch.score_vocab == [(lo, hi), None]
    cfg = AlgoConfig(mu=2)
    views = build_views(batch, cfg, iteration=1, step=1, run_seed=0, mask_token_id=network.config.mask_token_id)
    image_slots = batch.scored_mask[0].nonzero().flatten()
    assert views.loss_mask[0, 0].any() and set(views.loss_mask[0, 0].nonzero().flatten().tolist()) <= set(
        image_slots.tolist())  # only image slots of the t2i row are scored, never its prompt or <|eoi|>

    expected = independent_logprobs(network, batch, views, lo, hi)
    got = learner_logprobs(network, batch, views)
    assert got.keys() == expected.keys() and {row for _, row, _ in got} == {0, 1}
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key

    perturbed = copy.deepcopy(network)
    with torch.no_grad():  # change the logits of every non-image column, keep the image columns' rows
        head = dict(perturbed.named_parameters())[HEAD]  # [V, d]
        noise = torch.randn(head.shape, generator=torch.Generator().manual_seed(1), dtype=head.dtype)
        noise[lo:hi] = 0
        head += noise
    moved = learner_logprobs(perturbed, batch, views)
    t2i_keys = [key for key in got if key[1] == 0]
    text_keys = [key for key in got if key[1] == 1]
    assert all(moved[key] == pytest.approx(got[key], abs=1e-12) for key in t2i_keys)
    assert all(abs(moved[key] - got[key]) > 1e-6 for key in text_keys)  # full-vocabulary rows do see them

    network.zero_grad(set_to_none=True)
    logp, loss_mask = score_views(network, batch.select([0]), views_of_row(views, 0), torch.arange(1), chunk_size=5)
    logp[loss_mask].sum().backward()
    grad = dict(network.named_parameters())[HEAD].grad  # [V, d]
    assert torch.count_nonzero(grad[:lo]) == 0 and torch.count_nonzero(grad[hi:]) == 0
    assert (grad[lo:hi].abs().sum(dim=1) > 0).all()  # the softmax spreads gradient over every image column
    network.zero_grad(set_to_none=True)


def views_of_row(views, row):
    """MaskedViews of one row of a batch (the copies of that row only)."""
    from rl.estimators import MaskedViews

    return MaskedViews(views.input_ids[:, row:row + 1], views.loss_mask[:, row:row + 1], views.mask_ratio[row:row + 1])


def test_an_update_on_a_t2i_batch_leaves_the_text_columns_of_the_head_unchanged(mmada):
    batch, lo, hi = mixed_batch(mmada)
    t2i = batch.select([0])
    t2i = RolloutBatch.concat([t2i, dataclasses.replace(t2i, uid=["img2"])])  # the same row as another prompt's
    t2i = dataclasses.replace(t2i, total=[1.0, 0.0])  # scorable rows
    policy = copy.deepcopy(mmada.network).train()
    reference = copy.deepcopy(mmada.network)
    before = dict(policy.named_parameters())[HEAD].detach().clone()  # [V, d]
    engine = PlainEngine(policy, torch.optim.AdamW(policy.parameters(), lr=1e-2, weight_decay=0.0))
    stats = unigrpo_update(engine, reference, t2i, torch.tensor([1.0, -1.0], dtype=torch.float64), AlgoConfig(mu=2),
                           step=1, run_seed=0, micro_batch_size=1)
    after = dict(policy.named_parameters())[HEAD].detach()
    assert stats["pg_loss"] != 0
    assert torch.equal(after[:lo], before[:lo]) and torch.equal(after[hi:], before[hi:])
    assert (after[lo:hi] != before[lo:hi]).any(dim=1).all()  # every image column's row trained


# ------------------------------------------------------------------------------------------------ driver end to end
TINY_VQ = dict(ch=8, z_channels=6, encoder_ch_mult=(1, 1), encoder_num_res_blocks=(1, 1), decoder_ch_mult=(1, 1),
               decoder_num_res_blocks=(1, 1), num_groups=4)  # 64 codes, x2 downsampling: 16 codes = 8 px images
LENGTH = "tests/jobs/helpers/length_reward.py:response_length"


def write_mixed_run(root: Path) -> list[str]:
    """A tiny MMaDA checkpoint, a random image tokenizer, tiny CLIP / ImageReward, 6 prompts (2 text, 2 captioning
    with images, 2 t2i); returns the config overrides of a 2-step run on them."""
    from PIL import Image

    from model.checkpoint import save
    from model.magvit import MagvitConfig, random_image_tokenizer, save_image_tokenizer
    from rewards.blip.tiny import write_tiny_clip, write_tiny_image_reward

    save(tiny_mmada_model(seed=1, codebook_size=CODEBOOK, num_vq_tokens=NUM_VQ), root / "policy")
    save_image_tokenizer(random_image_tokenizer(MagvitConfig(**TINY_VQ), seed=2), root / "vq")
    write_tiny_clip(root / "clip", seed=5)
    write_tiny_image_reward(root / "image_reward", seed=0)
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(root / f"{name}.png")
    rows = [{"uid": "t1", "task": "text", "prompt": "Compute 2+3.", "answer": "5"},
            {"uid": "t2", "task": "text", "prompt": "Compute 4*4.", "answer": "16"},
            {"uid": "c1", "task": "captioning", "prompt": "Describe the image.", "image": "cat.png"},
            {"uid": "c2", "task": "captioning", "prompt": "What is shown?", "image": "dog.png"},
            {"uid": "i1", "task": "t2i", "prompt": "a cat"},
            {"uid": "i2", "task": "t2i", "prompt": "the dog"}]
    (root / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    clip = {"backend": "transformers", "path": str(root / "clip")}
    rewards = {"text": [{"name": LENGTH, "weight": 1.0, "isolation": "thread"}],
               "captioning": [{"name": "format", "weight": 0.5},
                              {"name": "clip", "weight": 0.1, "options": {**clip, "text_field": "response"}}],
               "t2i": [{"name": "clip", "weight": 0.1, "options": clip},
                       {"name": "image_reward", "weight": 0.1, "options": {"path": str(root / "image_reward")}}]}
    return [f"run.output_dir={root}", "run.name=mixed", "run.steps=2", "run.prompts_per_step=6",
            f"data.train={root / 'mixed.jsonl'}", "data.thinking=false", f"model.path={root / 'policy'}",
            "rollout.cpus_per_worker=0.5", f"rollout.image_tokenizer={root / 'vq'}",
            "rollout.sampler={gen_length: 8, steps: 4, block_length: 4, temperature: 1.0}",
            "rollout.image_sampler={steps: 4, guidance_scale: 1.0, text_length: 12}",
            "algo={group_size: 2, mu: 2, beta: 0.01}",
            "learner={num_ranks: 1, cpus_per_rank: 0.5, zero_stage: 0, micro_batch_size: 6, lr: 1.0e-3}",
            f"rewards.tasks={json.dumps(rewards)}", "reward_actors.cpus_per_actor=0.5",
            "checkpoint={every: 0, resume: never}", "logging={sample_table_every: 1, sample_table_rows: 12}"]


@pytest.mark.slow
def test_tiny_mmada_trains_on_a_mixed_batch_with_per_task_metrics(tmp_path, ray_session, monkeypatch):
    from PIL import Image

    from jobs.config import load_config
    from jobs.metrics import GRID_GAP
    from jobs.train import train
    from rewards import RewardsConfig, RewardService, RewardTermConfig, Sample
    from rewards.service import metric_term
    from tests.rewards.batches import batch_of

    monkeypatch.chdir(REPO)  # the length reward is named by a path relative to the repository
    cfg = load_config(None, write_mixed_run(tmp_path))
    summary = train(cfg)
    run = tmp_path / "mixed"
    assert summary["policy_version"] == 2 and summary["worker_versions"] == [2]

    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rollouts = [json.loads(line) for line in (run / "rollouts.jsonl").read_text().splitlines()]
    samples = {json.loads(line)["step"]: json.loads(line)["rows"] for line in (run / "samples.jsonl").read_text().splitlines()}
    assert [m["step"] for m in metrics] == [r["step"] for r in rollouts] == [1, 2]
    terms = {"text": [metric_term(LENGTH)], "captioning": ["format", "clip"], "t2i": ["clip", "image_reward"]}
    for m, step in zip(metrics, rollouts):
        assert m["loss/pg_loss"] != 0 and m["health/reward_actor_restarts"] == 0.0
        rows = step["rows"]
        for task, names in terms.items():
            mine = [r for r in rows if r["task"] == task]
            assert m[f"rollout/{task}/rows"] == len(mine) == 4 and m[f"reward/{task}/total/count"] == 4
            scored = [r["reward"] for r in mine if r["reward"] is not None]  # None: unscorable (e.g. an empty caption)
            assert m[f"reward/{task}/total/none"] == 4 - len(scored)
            if scored:
                assert m[f"reward/{task}/total/mean"] == pytest.approx(sum(scored) / len(scored), rel=1e-9)
            assert all(m[f"reward/{task}/{name}/count"] == 4 and f"reward/{task}/{name}/mean" in m for name in names)
            assert f"health/{task}/rows_zero_advantage" in m
        assert m["rollout/t2i/response_tokens_mean"] == NUM_VQ  # every image slot is scored

    records = {json.loads(line)["uid"]: json.loads(line) for line in (tmp_path / "mixed.jsonl").read_text().splitlines()}
    clip = {"backend": "transformers", "path": str(tmp_path / "clip")}
    check = RewardsConfig(tasks={
        "captioning": [RewardTermConfig("format", 0.5), RewardTermConfig("clip", 0.1, {**clip, "text_field": "response"})],
        "t2i": [RewardTermConfig("clip", 0.1, clip),
                RewardTermConfig("image_reward", 0.1, {"path": str(tmp_path / "image_reward")})]})
    with RewardService(check) as service:
        for step in (1, 2):
            total = {(r["uid"], r["sample"]): r["reward"] for r in rollouts[step - 1]["rows"]}
            table = samples[step]
            assert {(r["uid"], r["sample"]) for r in table} == set(total)  # the table has all 12 rows
            for row in table:  # text: the response's length; captioning: format + clip of the *input* image
                if row["task"] == "text":
                    assert total[row["uid"], row["sample"]] == len(row["response"])
            captions = [r for r in table if r["task"] == "captioning"]
            inputs = [np.asarray(Image.open(tmp_path / records[r["uid"]]["image"]).convert("RGB")) for r in captions]
            scored, _ = service.score(batch_of([Sample("captioning", r["prompt"], r["response"], image=image)
                                                for r, image in zip(captions, inputs)]))
            logged = [total[r["uid"], r["sample"]] for r in captions]
            assert [t is None for t in scored.total] == [t is None for t in logged]
            assert [t for t in scored.total if t is not None] == pytest.approx([t for t in logged if t is not None],
                                                                               rel=1e-5)

            # t2i: the grid holds the generated images exactly; scoring them again gives the logged totals
            grid = np.asarray(Image.open(run / "samples" / f"step_{step}.png").convert("RGB"))
            side = 8 + GRID_GAP
            assert grid.shape == (2 * side + GRID_GAP, 2 * side + GRID_GAP, 3)
            legend = json.loads((run / "samples" / f"step_{step}.json").read_text())["rows"]
            assert sorted(caption.split(" | ")[0] for caption in legend) == ["[t2i] a cat", "[t2i] the dog"]
            uid_of = {"[t2i] a cat": "i1", "[t2i] the dog": "i2"}
            images, keys = [], []
            for r, caption in enumerate(legend):
                for c in range(2):
                    top, left = GRID_GAP + r * side, GRID_GAP + c * side
                    images.append(grid[top:top + 8, left:left + 8].copy())
                    keys.append((uid_of[caption.split(" | ")[0]], c))
            rescored, _ = service.score(batch_of([Sample("t2i", records[uid]["prompt"], "", image=image)
                                                  for (uid, _), image in zip(keys, images)]))
            assert rescored.total == pytest.approx([total[key] for key in keys], rel=1e-5)
