"""Warm start of the toy text-to-image task: a short supervised run that teaches a random tiny MMaDA-layout policy
to draw coloured shapes, before UniGRPO makes the drawings match their prompts (docs/multimodal.md).

    python -m jobs.tasks.shapes_sft --out runs/toy_t2i/sft --seed 0          # ~30-60 s on one CPU thread

Why a warm start: from random weights, UniGRPO on this task only found a degenerate optimum within minutes
(docs/multimodal.md has the measurement); MMaDA itself is pre-trained on text-to-image before its RL stage.

Data: the image stream of jobs/tasks/shapes.py (`shape_images(n, seed=SFT_STREAM + seed)`: random colour, shape,
size and position), encoded with the toy VQ tokenizer (model/assets/shapes_vq by default), paired with their
prompts ("a red circle"). Rows are laid out exactly as the image sampler lays them out
(`model.mmada.t2i_prompt` with `text_length`, then the image slots and `<|eoi|>`; [iPAD] excluded by the
attention mask), so `text_length` must equal the RL config's `rollout.image_sampler.text_length`.

Objective: MMaDA's masked-token loss on images: per row a ratio t ~ U(0, 1], each image slot masked with
probability t (at least one), and the cross-entropy of the masked slots over the image-code columns only
(the distribution the sampler draws from), averaged over the masked slots of the batch. AdamW, learning rate
warmed up linearly over WARMUP steps then cosine-decayed to 0 (with a constant rate the final weights are a
random point of a noisy trajectory, and the warm start's quality varied a lot from seed to seed: measured,
docs/multimodal.md), gradient clipping 1.0, one CPU thread; deterministic under --seed (private generators).

Output (`--out`): the policy in the published checkpoint format (model.load reads it; `model.path` of the RL
config), plus `training.json` (settings, loss every 50 steps, seconds).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from rl.lr_schedule import learning_rate as schedule_rate

WARMUP = 50  # learning-rate warm-up steps
SFT_STREAM = 7_000  # image stream seeds SFT_STREAM + seed: disjoint from the tokenizer's training stream
TOY_SIZE = {"d_model": 64, "n_layers": 2, "n_heads": 4, "mlp_hidden_size": 128}
"""The toy policy (~0.2 M parameters with the 664-row vocabulary)."""
DEFAULT_VQ = Path(__file__).resolve().parents[2] / "model" / "assets" / "shapes_vq"


def training_rows(layout, tokenizer, specs, codes: torch.Tensor, text_length: int
                  ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(ids [B, P + N + 1], attention [B, P + N + 1] bool, P) for `specs` with image `codes` [B, N]."""
    from jobs.tasks.shapes import prompt_of
    from model.mmada import t2i_prompt

    prompts = [t2i_prompt(layout, tokenizer(prompt_of(s.colour, s.shape), add_special_tokens=False)["input_ids"],
                          text_length) for s in specs]
    width = len(prompts[0].ids)  # text_length + 1, the same for every row
    image = codes + layout.image_lo  # [B, N]
    eoi = torch.full((len(specs), 1), layout.eoi, dtype=torch.long)
    ids = torch.cat([torch.tensor([p.ids for p in prompts], dtype=torch.long), image, eoi], dim=1)  # [B, P+N+1]
    attention = torch.ones_like(ids, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        attention[row, :prompt.num_pads] = False  # [iPAD] positions are not attended
    return ids, attention, width


def masked_image_loss(network, layout, ids: torch.Tensor, attention: torch.Tensor, width: int,
                      generator: torch.Generator) -> torch.Tensor:
    """Mean cross-entropy over the image columns of the masked image slots (module docstring)."""
    B, N = ids.shape[0], layout.num_vq_tokens
    ratio = torch.rand(B, 1, generator=generator)  # [B, 1]
    masked = torch.rand(B, N, generator=generator) < ratio  # [B, N]
    masked[torch.arange(B), torch.randint(N, (B,), generator=generator)] = True  # at least one per row
    inputs = ids.clone()
    inputs[:, width:width + N][masked] = layout.mask
    hidden = network.hidden_states(inputs, attention)[:, width:width + N][masked]  # [M, d]
    logits = network.lm_head(hidden)[:, layout.image_lo:layout.image_hi].float()  # [M, codebook]
    targets = ids[:, width:width + N][masked] - layout.image_lo  # [M]
    return torch.nn.functional.cross_entropy(logits, targets)


def learning_rate_factor(step: int, steps: int) -> float:
    """Multiplier of the base rate at optimizer step `step` (0-based) of `steps`: linear warm-up over
    min(WARMUP, steps // 2) steps, then a cosine from 1 to 0 reached after the last step."""
    return schedule_rate(step, total_steps=steps, warmup_steps=min(WARMUP, steps // 2), decay="cosine",
                         min_ratio=0.0, min_at_last_step=True)


def train_sft(vq_dir: str | Path = DEFAULT_VQ, *, seed: int = 0, steps: int = 600, batch_size: int = 32,
              lr: float = 3e-3, text_length: int = 16, size: dict | None = None, log=print):
    """Train the warm-start policy; returns (LoadedModel, training record)."""
    from jobs.tasks.shapes import IMAGE_SIZE, shape_images
    from model.magvit import load_image_tokenizer
    from model.mmada import MMaDALayout
    from model.tiny import tiny_mmada_model

    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"steps={steps}, batch_size={batch_size}, lr={lr}: need steps, batch_size >= 1 and lr > 0")
    vq = load_image_tokenizer(vq_dir)
    grid = IMAGE_SIZE // vq.downsample
    loaded = tiny_mmada_model(seed, codebook_size=vq.num_codes, num_vq_tokens=grid * grid, **(size or TOY_SIZE))
    network, tokenizer = loaded.network.train(), loaded.tokenizer
    layout = MMaDALayout.from_model(loaded.config, tokenizer)
    images, specs = shape_images(steps * batch_size, seed=SFT_STREAM + seed)
    with torch.no_grad():
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # [n, 3, H, W] in [-1, 1]
        codes = torch.cat([vq.encode(chunk) for chunk in pixels.split(256)])  # [n, N]
    optimizer = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_factor(step, steps))
    generator = torch.Generator().manual_seed(seed)
    history, started = [], time.perf_counter()
    for step in range(steps):
        rows = slice(step * batch_size, (step + 1) * batch_size)
        ids, attention, width = training_rows(layout, tokenizer, specs[rows], codes[rows], text_length)
        loss = masked_image_loss(network, layout, ids, attention, width, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == steps - 1:
            history.append({"step": step, "loss": round(float(loss.detach()), 4)})
            log(f"step {step:5d}  loss {float(loss.detach()):.4f}  {time.perf_counter() - started:.0f} s")
    network.eval()
    record = {"settings": {"vq": str(vq_dir), "seed": seed, "steps": steps, "batch_size": batch_size, "lr": lr,
                           "text_length": text_length, "size": size or TOY_SIZE},
              "loss": history, "seconds": round(time.perf_counter() - started, 1)}
    return loaded, record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.tasks.shapes_sft", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--vq", default=str(DEFAULT_VQ), help="image tokenizer directory (default: the shipped toy VQ)")
    parser.add_argument("--seed", type=int, default=0, help="weights, data stream and masking seed")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--text-length", type=int, default=16,
                        help="t2i text part length; must equal rollout.image_sampler.text_length of the RL config")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(1)
    from model.checkpoint import save

    loaded, record = train_sft(args.vq, seed=args.seed, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                               text_length=args.text_length)
    out = save(loaded, args.out)
    (Path(out) / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"trained {args.steps} steps in {record['seconds']} s; final loss {record['loss'][-1]['loss']}; saved to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
