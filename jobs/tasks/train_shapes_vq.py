"""Train the toy MAGVIT-v2 tokenizer shipped in model/assets/shapes_vq/ on coloured-shape images.

    python -m jobs.tasks.train_shapes_vq --out model/assets/shapes_vq --steps 1500 --seed 0

TOY_CONFIG: 32 px images, 3 levels (x4) -> an 8 x 8 grid = 64 codes per image, 6 bits -> a 64-code book,
ch 16, one residual block per level (~200k parameters, 0.8 MB in float32). The images are the stream of
jobs/tasks/shapes.py (`shape_images(seed=seed)`, indices 0 .. steps * batch_size - 1); the held-out images
of `evaluate` are indices from HELDOUT_START on, which training never reaches.

Training: the decoder reconstructs from the quantised encoder latents and the loss is
    mean |decoded - pixels| + mean (decoded - pixels)^2                       (pixels in [-1, 1])
    + commit_weight * mean (z - q)^2 + entropy_weight * lfq_entropy(z)
q is the LFQ of model/magvit_net.py (+1 if z > 0 else -1) with a straight-through gradient; lfq_entropy is
MAGVIT-v2's entropy term (decisive codes, whole codebook used); the commitment term keeps latents away from
0, where a code would flip under small input changes. Adam, linear warm-up then cosine decay to 10%. No GAN
or perceptual loss: plain colours and hard edges do not need them. CPU, one thread, deterministic under
--seed (private generators, no dropout).

Why these terms, and what the shipped files measure: docs/multimodal.md §4.1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from jobs.tasks.shapes import IMAGE_SIZE, PALETTE, classify_image, nearest_colour, shape_images, shape_mask
from model.image_processing import to_uint8
from model.magvit import MagvitConfig, MagvitTokenizer, random_image_tokenizer, save_image_tokenizer
from rl.lr_schedule import learning_rate as schedule_rate

TOY_CONFIG = MagvitConfig(ch=16, z_channels=6, encoder_ch_mult=(1, 2, 2), encoder_num_res_blocks=(1, 1, 1),
                          decoder_ch_mult=(1, 2, 2), decoder_num_res_blocks=(1, 1, 1), num_groups=8)
HELDOUT_START = 10**9  # first stream index of the held-out images
ASSET_DIR = Path(__file__).resolve().parents[2] / "model" / "assets" / "shapes_vq"


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 1500
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 50  # linear warm-up steps, then cosine decay to 10% of lr
    commit_weight: float = 0.05
    entropy_weight: float = 0.05
    seed: int = 0  # image stream and weight init

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.warmup < 0:
            raise ValueError(f"steps={self.steps} and batch_size={self.batch_size} must be >= 1, warmup={self.warmup} >= 0")
        if not self.lr > 0 or self.commit_weight < 0 or self.entropy_weight < 0:
            raise ValueError(f"lr={self.lr} must be > 0, commit_weight={self.commit_weight} and "
                             f"entropy_weight={self.entropy_weight} >= 0")


def pixels_of(images: np.ndarray) -> torch.Tensor:
    """[B, H, W, 3] uint8 -> [B, 3, H, W] float32 in [-1, 1] (x / 127.5 - 1, as preprocess_image)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def straight_through_sign(latents: torch.Tensor) -> torch.Tensor:
    """latents [B, bits, h, w] -> +-1 of the same shape (forward: LFQ sign, 0 -> -1; backward: identity)."""
    signs = torch.where(latents > 0, 1.0, -1.0).to(latents.dtype)
    return latents + (signs - latents).detach()


def lfq_entropy(latents: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
    """MAGVIT-v2's entropy term: mean per-position code entropy minus the entropy of the mean code distribution.

    latents [B, bits, h, w]; embedding [codes, bits] (+-1). Soft assignment p = softmax(2 z . c) over codes
    (= softmax(-|z - c|^2) up to a per-position constant). Low per-position entropy makes each code decisive;
    high batch entropy spreads the images over the whole codebook (no dead bits).
    """
    flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])  # [P, bits]
    log_probs = torch.log_softmax(2.0 * flat @ embedding.T, dim=-1)  # [P, codes]
    per_position = -(log_probs.exp() * log_probs).sum(-1).mean()
    mean_probs = log_probs.exp().mean(0)  # [codes]
    return per_position + (mean_probs * torch.log(mean_probs + 1e-12)).sum()


def learning_rate(step: int, settings: TrainSettings) -> float:
    """Linear warm-up over `settings.warmup` steps, then a cosine from lr to 0.1 * lr at `settings.steps`."""
    return schedule_rate(step, settings.lr, total_steps=settings.steps, warmup_steps=settings.warmup,
                         decay="cosine", min_ratio=0.1)


def train(settings: TrainSettings, config: MagvitConfig = TOY_CONFIG, log=print) -> tuple[MagvitTokenizer, list]:
    """A tokenizer trained on the shape stream, and the history [(step, loss, reconstruction), ...] (every 100 steps)."""
    if IMAGE_SIZE % config.downsample:
        raise ValueError(f"{IMAGE_SIZE} px images do not split into x{config.downsample} cells; use fewer levels")
    tokenizer = random_image_tokenizer(config, seed=settings.seed).train()
    optimiser = torch.optim.Adam(tokenizer.parameters(), lr=settings.lr)
    history = []
    for step in range(settings.steps):
        images, _ = shape_images(settings.batch_size, seed=settings.seed, start=step * settings.batch_size)
        pixels = pixels_of(images)  # [B, 3, H, W]
        latents = tokenizer.encoder(pixels)  # [B, bits, h, w]
        quantised = straight_through_sign(latents)
        error = tokenizer.decoder(quantised) - pixels  # [B, 3, H, W]
        reconstruction = error.abs().mean() + error.pow(2).mean()
        loss = (reconstruction + settings.commit_weight * (latents - quantised.detach()).pow(2).mean()
                + settings.entropy_weight * lfq_entropy(latents, tokenizer.quantize.embedding))
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(step, settings)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % 100 == 0 or step == settings.steps - 1:
            history.append((step, loss.item(), reconstruction.item()))
            log(f"step {step:5d}  loss {loss.item():.4f}  reconstruction {reconstruction.item():.4f}")
    return tokenizer.eval(), history


@torch.no_grad()
def evaluate(tokenizer: MagvitTokenizer, *, count: int = 500, seed: int = 0) -> dict:
    """Reconstruction of held-out images (stream indices from HELDOUT_START).

    mean_abs_error: mean |decoded - original| in uint8 levels (0..255), decoded through to_uint8;
    colour_accuracy: fraction whose decoded pixels under the true shape mask average nearest to the true
    palette colour; shape_accuracy / both_accuracy: classify_image of the decoded image gives the true
    shape / the true (colour, shape); codes_used: distinct codes over all images.
    """
    images, specs = shape_images(count, seed=seed, start=HELDOUT_START)
    codes = torch.cat([tokenizer.encode(pixels_of(images[i:i + 100])) for i in range(0, count, 100)])
    decoded = np.stack(to_uint8(torch.cat([tokenizer.decode(codes[i:i + 100]) for i in range(0, count, 100)])))
    colour_hits = shape_hits = both_hits = 0
    for image, spec in zip(decoded, specs):
        region = image[shape_mask(spec)].mean(axis=0)
        colour_hits += nearest_colour(region) == spec.colour
        seen = classify_image(image)
        shape_hits += seen is not None and seen[1] == spec.shape
        both_hits += seen == (spec.colour, spec.shape)
    return {
        "images": count,
        "mean_abs_error": float(np.abs(decoded.astype(np.float64) - images).mean()),
        "colour_accuracy": colour_hits / count,
        "shape_accuracy": shape_hits / count,
        "both_accuracy": both_hits / count,
        "codes_used": len(set(codes.flatten().tolist())),
        "palette": {name: list(rgb) for name, rgb in PALETTE.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.tasks.train_shapes_vq", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ASSET_DIR), help="output directory (config.json, model.safetensors)")
    defaults = TrainSettings()
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--commit-weight", type=float, default=defaults.commit_weight)
    parser.add_argument("--entropy-weight", type=float, default=defaults.entropy_weight)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--eval-images", type=int, default=500, help="held-out images for the printed numbers")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(1)
    settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                             commit_weight=args.commit_weight, entropy_weight=args.entropy_weight, seed=args.seed)
    started = time.perf_counter()
    tokenizer, history = train(settings)
    seconds = time.perf_counter() - started
    metrics = evaluate(tokenizer, count=args.eval_images, seed=args.seed)
    out = save_image_tokenizer(tokenizer, args.out)
    record = {"settings": asdict(settings), "train_seconds": round(seconds, 1), "final_loss": history[-1][1],
              "heldout": metrics}
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"trained {settings.steps} steps in {seconds:.0f} s; held-out {metrics['images']} images: "
          f"mean abs error {metrics['mean_abs_error']:.2f}/255, colour {metrics['colour_accuracy']:.3f}, "
          f"shape {metrics['shape_accuracy']:.3f}, both {metrics['both_accuracy']:.3f}, "
          f"codes used {metrics['codes_used']}/{tokenizer.num_codes}; saved to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
