"""`python -m jobs.bench sampler`: text-sampler throughput and overhead over the bare forward passes.

For each model size and temperature it runs `model.sampling.generate_text` on a batch of left-padded
prompts of mixed lengths. The network is wrapped so that just before each of the sampler's forward
passes, on the very same input ids and attention mask, one full forward `network(ids, mask)` is timed
and its time taken out of the sampler's wall: the reference forwards run side by side with the
sampler's own, under the same load (machines are often shared), at the same [batch, prompt+gen] shape.
Reported:

- tokens/s: generated tokens (batch × gen_length) per second of sampler wall time;
- overhead ratio = sampler wall ÷ (forward passes × mean wall of the full forward) — the issue's
  definition (target ≤ 1.10). The sampler runs the LM head only at the current block's masked
  positions, so this ratio can fall below 1;
- inner ratio = sampler wall ÷ time spent inside the sampler's own network calls (hidden states +
  LM head): everything else the sampler does (float64 Gumbel noise, softmax, top-k, bookkeeping) as a
  fraction of its real forward cost. The stricter of the two.

Each row is the median over the repeats, after a short warmup run at the same shapes.

With `--modes none,prefix,dual,dual@0.9,...` it compares the block KV cache and threshold decoding with the
exact sampler instead (`jobs/bench/sampler_modes.py`; `--policy-eval N` adds held-out pass@1 of the demo
policy per mode). docs/sampling.md quotes both tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from jobs.bench.sampler_modes import parse_modes, policy_rows, print_policy, print_speed, speed_rows
from model.sampling import generate_text, reveal_schedule
from model.tiny import tiny_backbone, tiny_model

# Model and shape per size: the tiny twin of the checked-in tokenizer, and a ~100M LLaDA-shaped network.
SIZES = {
    "tiny": dict(
        model=dict(),
        batch=8, prompt_length=64, gen_length=128, steps=64, block_length=32, repeats=5,
    ),
    "60m": dict(  # the issue-14 shape: generation 256, block 32, 128 steps
        model=dict(vocab_size=32000, d_model=512, n_layers=8, n_heads=8, mlp_hidden_size=1536),
        batch=4, prompt_length=64, gen_length=256, steps=128, block_length=32, repeats=1,
    ),
    "100m": dict(
        model=dict(vocab_size=32000, d_model=768, n_layers=8, n_heads=12, mlp_hidden_size=2048),
        batch=4, prompt_length=64, gen_length=64, steps=32, block_length=32, repeats=2,
    ),
}


class SideBySideNetwork:
    """Wraps a network for the sampler: times its calls, and before each `hidden_states` call (one per
    sampler forward pass) times one full forward on the same input as the reference.

    Before, not after: the sampler's own hidden states -> LM head -> sampling then run back to back, with
    the caches as in an unwrapped run (a reference forward in between would evict them).
    """

    def __init__(self, network):
        self.network, self.config = network, network.config
        self.network_s = self.reference_s = 0.0
        self.reference_forwards = 0

    def parameters(self):
        return self.network.parameters()

    def hidden_states(self, input_ids, attention_mask=None):
        start = time.perf_counter()
        self.network(input_ids, attention_mask)  # the reference: logits [N, T, V] at every position
        middle = time.perf_counter()
        out = self.network.hidden_states(input_ids, attention_mask)
        self.reference_s += middle - start
        self.network_s += time.perf_counter() - middle
        self.reference_forwards += 1
        return out

    def lm_head(self, hidden):
        start = time.perf_counter()
        out = self.network.lm_head(hidden)
        self.network_s += time.perf_counter() - start
        return out


def build_network(size: str, seed: int = 0):
    """(network, mask_id, pad_id) for a size name."""
    spec = SIZES[size]["model"]
    if not spec:
        loaded = tiny_model(seed=seed)
        cfg = loaded.config
        return loaded.network, cfg.mask_token_id, cfg.pad_token_id
    vocab = spec["vocab_size"]
    size_args = {k: v for k, v in spec.items() if k != "vocab_size"}
    network = tiny_backbone(vocab, mask_token_id=vocab - 1, eos_token_id=vocab - 2, seed=seed, **size_args)
    return network, vocab - 1, vocab - 2


def make_prompts(batch: int, prompt_length: int, vocab: int, mask_id: int, seed: int = 0) -> list[list[int]]:
    """Random prompts of lengths prompt_length, prompt_length-3, ... (so the batch is left-padded)."""
    generator = torch.Generator().manual_seed(seed)
    prompts = []
    for row in range(batch):
        length = max(1, prompt_length - 3 * row)
        ids = torch.randint(0, vocab - 3, (length,), generator=generator)
        prompts.append(torch.where(ids == mask_id, ids + 1, ids).tolist())
    return prompts


def forward_passes(gen_length: int, steps: int, block_length: int) -> int:
    """Forward passes generate_text makes: one per step that reveals at least one token."""
    per_block = steps // (gen_length // block_length)
    return (gen_length // block_length) * sum(1 for k in reveal_schedule(block_length, per_block) if k)


def bench_one(network, mask_id, pad_id, *, batch, prompt_length, gen_length, steps, block_length,
              temperature, repeats) -> dict:
    prompts = make_prompts(batch, prompt_length, network.config.vocab_size, mask_id)
    knobs = dict(gen_length=gen_length, steps=steps, block_length=block_length, temperature=temperature,
                 mask_id=mask_id, pad_id=pad_id)
    # Warmup at the same prompt shape: one block, two steps (two forwards of each kind).
    generate_text(SideBySideNetwork(network), prompts, **{**knobs, "gen_length": block_length, "steps": 2})
    n_forwards = forward_passes(gen_length, steps, block_length)
    runs = []
    for _ in range(repeats):
        wrapped = SideBySideNetwork(network)
        start = time.perf_counter()
        generate_text(wrapped, prompts, **knobs)
        sampler_s = time.perf_counter() - start - wrapped.reference_s
        assert wrapped.reference_forwards == n_forwards, (wrapped.reference_forwards, n_forwards)
        runs.append(dict(sampler_s=sampler_s, forward_s=wrapped.reference_s / n_forwards,
                         inner_network_s=wrapped.network_s,
                         overhead_ratio=sampler_s / wrapped.reference_s, inner_ratio=sampler_s / wrapped.network_s))
    medians = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    return dict(
        batch=batch, prompt_length=max(map(len, prompts)), gen_length=gen_length, steps=steps,
        block_length=block_length, temperature=temperature, repeats=repeats, n_forwards=n_forwards,
        **medians, tokens_per_s=batch * gen_length / medians["sampler_s"],
        overhead_ratios=[run["overhead_ratio"] for run in runs], inner_ratios=[run["inner_ratio"] for run in runs],
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.bench sampler", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="tiny,100m", help=f"comma-separated, from {list(SIZES)}")
    parser.add_argument("--temperatures", default="0,0.9", help="comma-separated sampling temperatures")
    parser.add_argument("--repeats", type=int, default=None, help="timed sampler runs per row (default per size)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    for knob in ("batch", "prompt_length", "gen_length", "steps", "block_length"):
        parser.add_argument(f"--{knob.replace('_', '-')}", type=int, default=None, help="override every size's")
    parser.add_argument("--modes", default=None,
                        help="compare sampler modes instead: CACHE[@THRESHOLD],... e.g. none,prefix,dual,dual@0.9")
    parser.add_argument("--policy-eval", type=int, default=0, metavar="N",
                        help="with --modes: also held-out pass@1 of the demo policy on N problems per mode")
    parser.add_argument("--policy-batch", type=int, default=64, help="prompts per sampler call in --policy-eval")
    parser.add_argument("--lora", type=int, default=None, metavar="RANK",
                        help="compare a LoRA policy unmerged vs merged instead (jobs/bench/sampler_lora.py)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"--sizes: unknown {unknown}; valid sizes are {list(SIZES)}")
    temperatures = [float(t) for t in args.temperatures.split(",") if t]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.modes is not None:
        try:
            modes = parse_modes(args.modes)
        except ValueError as exc:
            parser.error(str(exc))
        if args.policy_eval < 0 or args.policy_batch < 1:
            parser.error(f"--policy-eval: got {args.policy_eval} (expected >= 0); --policy-batch: got "
                         f"{args.policy_batch} (expected >= 1)")
        return compare_modes(args, sizes, temperatures, modes)
    if args.policy_eval:
        parser.error("--policy-eval needs --modes (it compares pass@1 across sampler modes)")
    if args.lora is not None:
        if args.lora < 1:
            parser.error(f"--lora: got {args.lora}; the adapter rank must be >= 1")
        return compare_lora_sizes(args, sizes, temperatures)

    rows = []
    header = (f"{'size':>5} {'params':>11} {'B':>2} {'P':>4} {'L':>4} {'S':>4} {'blk':>4} {'temp':>4} "
              f"{'fwds':>4} {'fwd ms':>9} {'sampler s':>9} {'tok/s':>8} {'ratio':>6} {'inner':>6}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(header)
    for size in sizes:
        torch.manual_seed(0)
        network, mask_id, pad_id = build_network(size)
        params = sum(p.numel() for p in network.parameters())
        shape = {k: getattr(args, k) if getattr(args, k) is not None else SIZES[size][k]
                 for k in ("batch", "prompt_length", "gen_length", "steps", "block_length", "repeats")}
        for temperature in temperatures:
            result = bench_one(network, mask_id, pad_id, temperature=temperature, **shape)
            cfg = network.config
            result.update(size=size, params=params, model=dict(
                d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                mlp_hidden_size=cfg.mlp_hidden_size, vocab_size=cfg.vocab_size))
            rows.append(result)
            print(f"{size:>5} {params:>11,} {result['batch']:>2} {result['prompt_length']:>4} "
                  f"{result['gen_length']:>4} {result['steps']:>4} {result['block_length']:>4} "
                  f"{temperature:>4.2g} {result['n_forwards']:>4} {1e3 * result['forward_s']:>9.2f} "
                  f"{result['sampler_s']:>9.3f} {result['tokens_per_s']:>8.1f} "
                  f"{result['overhead_ratio']:>6.3f} {result['inner_ratio']:>6.3f}", flush=True)
    worst = max(rows, key=lambda r: r["overhead_ratio"])
    print(f"max overhead ratio {worst['overhead_ratio']:.3f} ({worst['size']}, temperature {worst['temperature']:g}); "
          f"target <= 1.10; max inner ratio {max(r['inner_ratio'] for r in rows):.3f}")
    write_json(args.out, {"results": rows})
    return 0


def compare_modes(args: argparse.Namespace, sizes: list[str], temperatures: list[float], modes) -> int:
    """The --modes run: speed rows per size and temperature, then the policy's pass@1 rows."""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    speed = []
    for size in sizes:
        torch.manual_seed(0)
        network, mask_id, pad_id = build_network(size)
        network.eval()
        params = sum(p.numel() for p in network.parameters())
        shape = {k: getattr(args, k) if getattr(args, k) is not None else SIZES[size][k]
                 for k in ("batch", "prompt_length", "gen_length", "steps", "block_length")}
        prompts = make_prompts(shape["batch"], shape["prompt_length"], network.config.vocab_size, mask_id)
        knobs = {k: shape[k] for k in ("gen_length", "steps", "block_length")}
        for temperature in temperatures:
            rows = speed_rows(network, prompts, modes, mask_id=mask_id, pad_id=pad_id, temperature=temperature,
                              **knobs)
            for row in rows:
                row.update(size=size, params=params, batch=shape["batch"], temperature=temperature,
                           prompt_length=max(map(len, prompts)), **knobs)
            speed.extend(rows)
            print_speed(rows, f"\n{size} ({params:,} parameters), batch {shape['batch']}, prompts <= "
                              f"{max(map(len, prompts))}, gen {knobs['gen_length']}, block {knobs['block_length']}, "
                              f"{knobs['steps']} steps, temperature {temperature:g}")
    policy = []
    if args.policy_eval:
        policy = policy_rows(modes, problems=args.policy_eval, batch_size=args.policy_batch)
        print_policy(policy, f"\ndemo policy, {policy[0]['problems']} held-out problems, greedy, gen 40, block 8, "
                             "20 steps (fwd x: forwards saved vs none)")
    write_json(args.out, {"modes": speed, "policy": policy})
    return 0


def compare_lora_sizes(args: argparse.Namespace, sizes: list[str], temperatures: list[float]) -> int:
    """The --lora run: unmerged vs merged per size and temperature, then the LLaDA-8B sync bytes."""
    from jobs.bench.sampler_lora import compare_lora, llada_8b_sync_bytes, print_row

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []
    for size in sizes:
        network, mask_id, pad_id = build_network(size)
        shape = {k: getattr(args, k) if getattr(args, k) is not None else SIZES[size][k]
                 for k in ("batch", "prompt_length", "gen_length", "steps", "block_length", "repeats")}
        prompts = make_prompts(shape["batch"], shape["prompt_length"], network.config.vocab_size, mask_id)
        for temperature in temperatures:
            rows.append({"size": size, **compare_lora(shape, network, mask_id, pad_id, prompts, args.lora,
                                                      temperature)})
            print_row(size, rows[-1])
    big = llada_8b_sync_bytes(args.lora)
    print(f"LLaDA-8B shape, rank {args.lora}, bf16: adapter-only sync {big['adapter_sync_bytes']:,} bytes, full "
          f"{big['full_sync_bytes']:,} bytes: {100 * big['ratio']:.2f} % (target <= 5 %)")
    write_json(args.out, {"lora": rows, "llada_8b_sync": big})
    return 0


def write_json(path: str | None, results: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), **results}, f, indent=2)
        print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
