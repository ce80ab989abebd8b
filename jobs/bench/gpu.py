"""`python -m jobs.bench gpu`: the LLaDA-8B backbone with random weights on one GPU — build, sample, update.

    python -m jobs.bench gpu --size 8b --out gpu.json        # one GPU; --size tiny --device cpu is its CPU test
    python -m jobs.bench gpu --size 8b --lora 128 --out gpu_lora.json   # the one-GPU LoRA recipe's learner

It measures what an 8B run costs on one GPU (build time, sampler throughput, one UniGRPO update's wall and peak
memory) without a checkpoint, Ray or DeepSpeed: it imports only torch, `model/` and `rl/` (and peft with
`--lora`), and builds the weights on the device from a seed. The sampler and the update run once as a warm-up at
the same shapes, and every phase is timed between CUDA synchronizes. With `--lora R` the network carries rank-R
adapters (alpha R/2, every block linear, unmerged, as a rollout worker runs them), the update trains them only
against the same network with adapters disabled as π_ref (no second network), and a sync phase times the adapter
tensors' copy to the host and counts their bytes against a full sync's. The phases and every reported column:
docs/gpu.md §Phases and columns; the measured results: docs/gpu.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import torch

from jobs.bench.sampler import SideBySideNetwork, forward_passes
from jobs.bench.sampler_modes import parse_modes, print_speed, speed_rows
from model.lora import adapter_state, add_lora, has_lora
from model.network import BackboneConfig, MaskedDiffusionLM, RMSNorm
from model.sampling import TextSamplerConfig, generate_text
from model.tiny import INIT_STD, tiny_model
from rl.advantages import group_advantages
from rl.batch import RolloutBatch
from rl.config import AlgoConfig
from rl.update import PlainEngine, unigrpo_update

# LLaDA-8B-Instruct's config.json (docs/models.md §1.2; the layout tests/model/test_checkpoint.py checks
# against 8,015,581,184 parameters). Token ids and the rest are BackboneConfig's defaults, which are LLaDA's.
LLADA_8B = BackboneConfig(d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32, mlp_hidden_size=12288,
                          vocab_size=126464, embedding_size=126464)
SIZES = ("8b", "tiny")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
LR = 1e-6  # actors.config's default learning rate
BETA = 0.01  # AlgoConfig's default: the update scores π_ref as well


def backbone_config(size: str) -> BackboneConfig:
    """The published 8B layout, or the tiny twin's (model.tiny.tiny_model, sized to the tiny tokenizer)."""
    return LLADA_8B if size == "8b" else tiny_model().config


def build_network(config: BackboneConfig, *, device, dtype: torch.dtype, seed: int = 0) -> MaskedDiffusionLM:
    """`config`'s network straight on `device` with model.tiny's init; on "meta" nothing is allocated."""
    with torch.device("meta"):
        network = MaskedDiffusionLM(config).to(dtype)
    device = torch.device(device)
    if device.type == "meta":
        return network.eval()
    network.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    norm_weights = {id(module.weight) for module in network.modules() if isinstance(module, RMSNorm)}
    with torch.no_grad():
        for _, parameter in sorted(network.named_parameters()):  # model.tiny.random_network's order
            if id(parameter) in norm_weights:
                parameter.fill_(1.0)
            else:
                parameter.normal_(0.0, INIT_STD, generator=generator)
    return network.eval()


def parameter_count(network: torch.nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def checksum(network: torch.nn.Module) -> float:
    """Sum of every weight, accumulated in float64 (no float64 copy of the weights is made)."""
    return float(sum(p.detach().sum(dtype=torch.float64) for p in network.parameters()))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, run):
    """(run(), wall seconds), the device idle at both ends."""
    synchronize(device)
    start = time.perf_counter()
    out = run()
    synchronize(device)
    return out, time.perf_counter() - start


def allocated_gib(device: torch.device) -> float | None:
    return torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


class _WaitAfterEachCall:
    """Network proxy that synchronizes after every call, so SideBySideNetwork's clocks time the kernels."""

    def __init__(self, network):
        self.network, self.config = network, network.config

    def parameters(self):
        return self.network.parameters()

    @staticmethod
    def _waited(out):
        torch.cuda.synchronize()
        return out

    def __call__(self, input_ids, attention_mask=None):
        return self._waited(self.network(input_ids, attention_mask))

    def hidden_states(self, input_ids, attention_mask=None):
        return self._waited(self.network.hidden_states(input_ids, attention_mask))

    def lm_head(self, hidden):
        return self._waited(self.network.lm_head(hidden))


class CudaSideBySideNetwork(SideBySideNetwork):
    """SideBySideNetwork for CUDA: the previous step's sampler work finishes before the reference's clock."""

    def __init__(self, network):
        super().__init__(_WaitAfterEachCall(network))

    def hidden_states(self, input_ids, attention_mask=None):
        torch.cuda.synchronize()
        return super().hidden_states(input_ids, attention_mask)


def plain_ids(config: BackboneConfig) -> int:
    """Ids below this one are ordinary tokens (no [MASK], EOS, pad or BOS)."""
    specials = (config.mask_token_id, config.eos_token_id, config.pad_token_id, config.bos_token_id)
    return min(i for i in specials if i is not None)  # a checkpoint may name no BOS


def bench_sampler(network, *, device, batch, prompt_length, gen_length, steps, block_length, temperature) -> dict:
    cfg = network.config
    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, plain_ids(cfg), (batch, prompt_length), generator=generator).tolist()
    knobs = dict(gen_length=gen_length, steps=steps, block_length=block_length, temperature=temperature,
                 mask_id=cfg.mask_token_id, pad_id=cfg.pad_token_id)
    timed(device, lambda: generate_text(network, prompts, **{**knobs, "steps": gen_length // block_length}))
    reset_peak(device)
    (sequences, _, _), wall = timed(device, lambda: generate_text(network, prompts, **knobs))
    peak = peak_gib(device)
    generated = int((sequences[:, prompt_length:] != cfg.mask_token_id).sum())

    wrapped = CudaSideBySideNetwork(network) if device.type == "cuda" else SideBySideNetwork(network)
    _, side_by_side_wall = timed(device, lambda: generate_text(wrapped, prompts, **knobs))
    sampler_s = side_by_side_wall - wrapped.reference_s
    n_forwards = forward_passes(gen_length, steps, block_length)
    assert wrapped.reference_forwards == n_forwards, (wrapped.reference_forwards, n_forwards)
    forward_s = wrapped.reference_s / n_forwards
    matmul_params = parameter_count(network) - network.transformer.wte.weight.numel()
    return dict(
        temperature=temperature, batch=batch, prompt_length=prompt_length, gen_length=gen_length, steps=steps,
        block_length=block_length, wall_s=wall, generated_tokens=generated, tokens_per_s=generated / wall,
        peak_gib=peak, n_forwards=n_forwards, forward_s=forward_s,
        forward_tflops=2 * matmul_params * batch * (prompt_length + gen_length) / forward_s / 1e12,
        side_by_side_sampler_s=sampler_s, overhead_ratio=sampler_s / wrapped.reference_s,
        inner_ratio=sampler_s / wrapped.network_s,
    )


def rollout_batch(config: BackboneConfig, *, groups, samples, prompt_length, gen_length, steps) -> RolloutBatch:
    """groups × samples random text rows, scored as the reward service would with one term of weight 1:
    correctness (= total) 1, 0, 1, ... within each group (non-zero advantages)."""
    generator = torch.Generator().manual_seed(0)
    rows = groups * samples
    sequences = torch.randint(0, plain_ids(config), (rows, prompt_length + gen_length), generator=generator)
    reveal_step = torch.randint(0, steps, (rows, gen_length), generator=generator)  # [G, L]
    batch = RolloutBatch.from_sampler(
        sequences, reveal_step, [prompt_length] * rows, eos_ids=[config.eos_token_id], kind="text",
        uid=[f"prompt-{r // samples}" for r in range(rows)], sample_index=[r % samples for r in range(rows)],
        policy_version=0, pad_token_id=config.pad_token_id,
    )
    correctness = [float(r % 2 == 0) for r in range(rows)]
    return dataclasses.replace(batch, rewards={"correctness": correctness}, reward_reasons={"correctness": [None] * rows},
                               total=correctness)


def bench_update(network, ref_network, batch: RolloutBatch, *, device, mu: int) -> dict:
    """One warm-up update, then one timed; the network is left with the weights after both. With adapters
    (`add_lora`) only they train, and `ref_network` is `network` itself (the update disables its adapters)."""
    network.gradient_checkpointing = True
    network.train()
    trainable = [p for p in network.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LR, fused=device.type == "cuda")
    engine = PlainEngine(network, optimizer, grad_clip=1.0)
    cfg = AlgoConfig(mu=mu, beta=BETA)
    advantages = group_advantages(batch.total, batch.uid)  # [G]

    def update(step):
        return unigrpo_update(engine, ref_network, batch, advantages, cfg, step=step, run_seed=0,
                              micro_batch_size=batch.num_rows)

    timed(device, lambda: update(0))
    before = checksum(network)
    reset_peak(device)
    stats, wall = timed(device, lambda: update(1))
    peak = peak_gib(device)
    after = checksum(network)
    network.gradient_checkpointing = False
    network.eval()
    return dict(
        rows=batch.num_rows, seq_len=batch.seq_len, mu=mu, beta=BETA, micro_batch_size=batch.num_rows,
        gradient_checkpointing=True, trainable_params=sum(p.numel() for p in trainable),
        reference="the policy with adapters disabled" if ref_network is network else "a second network",
        wall_s=wall, wall_per_optimizer_step_s=wall / mu, peak_gib=peak,
        allocated_gib_after=allocated_gib(device), loss=stats["loss"], grad_norm=stats.get("grad_norm"),
        checksum_before=before, checksum_after=after, weights_changed=before != after,
        optimizer=f"torch.optim.AdamW(lr={LR:g}, fused={device.type == 'cuda'}), grad clip 1.0; weights, grads "
                  f"and moments in {next(network.parameters()).dtype}",
    )


def bench_adapter_sync(network, *, device) -> dict:
    """What a LoRA weight sync moves (actors/weight_sync.py sends the adapter tensors only): their bytes against
    the base's, and the time to copy them to the host, which the learner's publish starts with."""
    adapters = adapter_state(network)
    adapter_bytes = sum(t.numel() * t.element_size() for t in adapters.values())
    full_bytes = sum(t.numel() * t.element_size() for name, t in network.state_dict().items()
                     if ".lora_" not in name)  # the base, as a full sync sends it
    timed(device, lambda: {name: t.to("cpu") for name, t in adapters.items()})  # warm-up: pinned buffers etc.
    _, wall = timed(device, lambda: {name: t.to("cpu") for name, t in adapters.items()})
    return dict(tensors=len(adapters), adapter_bytes=adapter_bytes, full_bytes=full_bytes,
                fraction=adapter_bytes / full_bytes, to_host_s=wall)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, torch.device, list[float], list]:
    """The command line, checked: (args, device, sampler temperatures, sampler modes)."""
    parser = argparse.ArgumentParser(prog="python -m jobs.bench gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=SIZES, default="8b", help="the LLaDA-8B layout or the tiny twin")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="weights, grads and AdamW moments")
    parser.add_argument("--batch", type=int, default=8, help="sampler prompts")
    parser.add_argument("--prompt-length", type=int, default=128, help="sampler and update prompt tokens")
    parser.add_argument("--gen-length", type=int, default=256, help="sampler and update response tokens")
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=128, help="sampler denoising steps")
    parser.add_argument("--temperatures", default="0,0.9", help="comma-separated sampling temperatures")
    parser.add_argument("--modes", default="none,dual,dual@0.9",
                        help="sampler modes compared at temperature 0, CACHE[@THRESHOLD],... ('' for none)")
    parser.add_argument("--groups", type=int, default=2, help="update batch: prompts")
    parser.add_argument("--samples", type=int, default=4, help="update batch: responses per prompt")
    parser.add_argument("--mu", type=int, default=2, help="inner optimizer steps of the update")
    parser.add_argument("--skip-update", action="store_true", help="sampler only (no π_ref, no optimizer)")
    parser.add_argument("--lora", type=int, default=0, metavar="RANK",
                        help="rank-RANK adapters on every block linear, alpha RANK/2 (0: full fine-tuning)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here; use --device cpu")
    temperatures = [float(t) for t in args.temperatures.split(",") if t]
    try:
        for temperature in temperatures:
            TextSamplerConfig(gen_length=args.gen_length, steps=args.steps, block_length=args.block_length,
                              temperature=temperature)
        modes = parse_modes(args.modes) if args.modes else []
    except ValueError as error:
        parser.error(str(error))
    for name in ("batch", "prompt_length", "groups", "samples", "mu"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: {getattr(args, name)} is not a positive integer")
    if args.lora < 0:
        parser.error(f"--lora: {args.lora}; give an adapter rank >= 1, or 0 for full fine-tuning")
    return args, device, temperatures, modes


def sampler_phase(network, args: argparse.Namespace, device: torch.device, temperatures: list[float]) -> list[dict]:
    """`bench_sampler` at each temperature, printed as a table row each."""
    shape = dict(batch=args.batch, prompt_length=args.prompt_length, gen_length=args.gen_length,
                 steps=args.steps, block_length=args.block_length)
    print("\n| temp | B | P | L | S | blk | wall s | tok/s | peak GiB | fwd ms | fwd TFLOP/s | overhead | inner |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for temperature in temperatures:
        row = bench_sampler(network, device=device, temperature=temperature, **shape)
        rows.append(row)
        print(f"| {temperature:g} | {args.batch} | {args.prompt_length} | {args.gen_length} | {args.steps} | "
              f"{args.block_length} | {row['wall_s']:.3f} | {row['tokens_per_s']:.1f} | "
              f"{_fmt(row['peak_gib'], '.2f')} | {1e3 * row['forward_s']:.2f} | {row['forward_tflops']:.3g} | "
              f"{row['overhead_ratio']:.3f} | {row['inner_ratio']:.3f} |", flush=True)
    return rows


def modes_phase(network, args: argparse.Namespace, modes: list) -> list[dict]:
    """The fast sampler modes side by side at temperature 0 (jobs/bench/sampler_modes.py), printed."""
    if not modes:
        return []
    cfg = network.config
    prompts = torch.randint(0, plain_ids(cfg), (args.batch, args.prompt_length),
                            generator=torch.Generator().manual_seed(0)).tolist()
    rows = speed_rows(network, prompts, modes, mask_id=cfg.mask_token_id, pad_id=cfg.pad_token_id,
                      temperature=0.0, gen_length=args.gen_length, steps=args.steps, block_length=args.block_length)
    print_speed(rows, f"\nsampler modes at temperature 0 (batch {args.batch}, prompt {args.prompt_length})")
    return rows


def update_phase(network, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    """`bench_update` against a second random network as π_ref (with adapters: the network itself), printed."""
    config = network.config
    ref_network = network if has_lora(network) else build_network(config, device=device, dtype=dtype,
                                                                     seed=1).requires_grad_(False)
    batch = rollout_batch(config, groups=args.groups, samples=args.samples, prompt_length=args.prompt_length,
                          gen_length=args.gen_length, steps=args.steps)
    update = bench_update(network, ref_network, batch, device=device, mu=args.mu)
    del ref_network
    print(f"\n| update rows | T | μ | wall s | s/step | peak GiB | loss | grad norm | weights changed |\n"
          f"|---|---|---|---|---|---|---|---|---|\n"
          f"| {update['rows']} | {update['seq_len']} | {args.mu} | {update['wall_s']:.3f} | "
          f"{update['wall_per_optimizer_step_s']:.3f} | {_fmt(update['peak_gib'], '.2f')} | "
          f"{update['loss']:.4g} | {_fmt(update['grad_norm'], '.4g')} | {update['weights_changed']} |\n"
          f"optimizer: {update['optimizer']}; activation checkpointing on; β = {BETA} against "
          f"{update['reference']}")
    return update


def sync_phase(network, args: argparse.Namespace, device: torch.device) -> dict:
    """`bench_adapter_sync`, printed."""
    sync = bench_adapter_sync(network, device=device)
    print(f"\n| LoRA rank | adapter tensors | adapter MB | full MB | fraction | to host s |\n|---|---|---|---|---|---|\n"
          f"| {args.lora} | {sync['tensors']} | {sync['adapter_bytes'] / 1e6:.1f} | {sync['full_bytes'] / 1e6:.1f} | "
          f"{sync['fraction']:.2%} | {sync['to_host_s']:.3f} |")
    return sync


def main(argv: list[str]) -> int:
    args, device, temperatures, modes = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    config = backbone_config(args.size)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {name}, {args.dtype}, {torch.get_num_threads()} threads", flush=True)

    torch.empty(1, device=device)  # CUDA context outside the build's clock
    network, build_s = timed(device, lambda: build_network(config, device=device, dtype=dtype, seed=0))
    build = dict(params=parameter_count(network), wall_s=build_s, allocated_gib=allocated_gib(device))
    lora = None
    if args.lora:
        from actors.config import LoraConfig  # plain dataclasses: no Ray

        add_lora(network, LoraConfig(rank=args.lora, alpha=args.lora / 2))
        lora = dict(rank=args.lora, alpha=args.lora / 2, adapter_params=sum(
            p.numel() for p in network.parameters() if p.requires_grad), allocated_gib=allocated_gib(device))
    print(f"\n| build | params | wall s | allocated GiB |\n|---|---|---|---|\n"
          f"| {args.size} | {build['params']:,} | {build_s:.2f} | {_fmt(build['allocated_gib'], '.2f')} |",
          flush=True)

    sampler_rows = sampler_phase(network, args, device, temperatures)
    mode_rows = modes_phase(network, args, modes)
    update = None if args.skip_update else update_phase(network, args, device, dtype)
    sync = sync_phase(network, args, device) if has_lora(network) else None
    report = dict(torch=torch.__version__, device=str(device), device_name=name, dtype=args.dtype, size=args.size,
                  model=dict(d_model=config.d_model, n_layers=config.n_layers, n_heads=config.n_heads,
                             mlp_hidden_size=config.mlp_hidden_size, vocab_size=config.num_embeddings),
                  build=build, sampler=sampler_rows, modes=mode_rows, update=update, lora=lora, sync=sync)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
