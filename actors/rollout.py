"""Rollout workers: each holds a policy copy at a `policy_version` and samples rollout batches.

A worker is the only place a response is sampled: `sample` takes requests of the three kinds (rl.kinds.KINDS:
text, mmu, t2i) in any mix and returns one `rl.batch.RolloutBatch` tagged with the version of the weights that
made it, the requests' typed fields copied into the rows' columns. Weights arrive only as complete versions, and a
worker without a valid one refuses to sample, so no sample comes from stale or half-written weights; seeds are
per kind group, so a request's sample never depends on the requests of the other kinds. Versions, the columns a
worker adds and the seeds: docs/architecture.md §4.1; what each kind samples: docs/multimodal.md §1.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
import torch

from actors.cluster import bundle_strategy
from actors.config import RolloutConfig
from actors.network_source import NetworkSource, build_network
from actors.rendezvous import pin_interfaces
from actors.weight_sync import (
    BroadcastGroup,
    WeightManifest,
    WeightReceiver,
    WeightSyncError,
    checksum,
    named_state,
    open_payload,
)
from model.image_sampling import ImageSamplerConfig
from model.sampling import TextSamplerConfig
from rl.kinds import KINDS


@dataclass(frozen=True)
class PromptRequest:
    """One response to sample: the prompt's token ids and the row's fields, which the worker copies into the
    batch row's columns (module docstring). A prompt's `algo.group_size` requests share one `meta` dict and
    one image array, so pickling the request list sends each once (pickle memoises repeated objects), and the
    rows of the group share them on the way back."""

    prompt_ids: tuple[int, ...]
    """text / mmu: the chat prompt ids (mmu: without the image); t2i: the plain prompt ids (no template)."""
    uid: str
    sample_index: int
    kind: str
    """The sampler kind, one of rl.kinds.KINDS: the prompt layout and the sampler."""
    task: str | None = None
    """The dataset task (selects the reward terms, e.g. "captioning"); None: the kind's name."""
    prompt: str = ""
    """The prompt text (for the rewards and the logs)."""
    answer: str | None = None
    """The gold answer, if any."""
    meta: dict[str, Any] | None = field(default=None, compare=False)
    """The dataset row's extra fields (what reward plugins read as `Sample.meta`)."""
    image: Any = field(default=None, compare=False)
    """mmu only: an image path, an H x W x 3 uint8 array or a PIL image. (Not compared: arrays have no
    single truth value.)"""

    def __post_init__(self):
        where = f"PromptRequest(uid={self.uid!r}, sample_index={self.sample_index})"
        kind = self.kind
        if kind not in KINDS:
            raise ValueError(f"{where}: kind {kind!r} is not one of {list(KINDS)}")
        if self.task is None:
            object.__setattr__(self, "task", kind)
        if kind == "mmu" and self.image is None:
            raise ValueError(f"{where}: an mmu request needs image= (a path or an H x W x 3 uint8 array)")
        if kind != "mmu" and self.image is not None:
            raise ValueError(f"{where}: a {kind} request takes no image; only mmu requests do")


class RolloutWorker:
    """Holds a policy copy; run it as a Ray actor (`ray.remote(RolloutWorker)`) or in-process."""

    def __init__(self, network_source: NetworkSource, *, policy_version: int = 0, dtype: str | None = None,
                 device: str = "auto", image_tokenizer: str | os.PathLike | None = None, lora: Any = None):
        """image_tokenizer: directory of a MAGVIT-v2 tokenizer (`model.load_image_tokenizer`), needed for
        mmu and t2i requests; its codebook must be the network's and num_vq_tokens a square. lora: the
        learner's `learner.lora` (`actors.config.LoraConfig` or None): the worker holds the base once with the
        same adapters, unmerged, and syncs carry the adapter tensors only (docs/lora.md)."""
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        network, self.tokenizer = build_network(network_source, dtype, lora)
        self.network = network.to(self.device).eval().requires_grad_(False)
        self.receiver = WeightReceiver(self.network, policy_version)
        self.broadcast: BroadcastGroup | None = None
        self.layout = None  # MMaDALayout of an MMaDA network with its tokenizer
        config = getattr(self.network, "config", None)
        if getattr(config, "model_type", None) == "mmada" and self.tokenizer is not None:
            from model.mmada import MMaDALayout

            self.layout = MMaDALayout.from_model(config, self.tokenizer)
        self.image_tokenizer = None
        self.image_resolution: int | None = None  # pixels per side of an mmu image
        if image_tokenizer is not None:
            self._load_image_tokenizer(image_tokenizer)

    def _load_image_tokenizer(self, path) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"image_tokenizer: got {type(path).__name__}; expected a directory path or None")
        if self.layout is None:
            raise ValueError(f"image_tokenizer={os.fspath(path)!r} given, but the network is not an MMaDA model "
                             "with a tokenizer (model_type 'mmada' and a text tokenizer are needed for images)")
        from model.magvit import load_image_tokenizer

        tokenizer = load_image_tokenizer(path, device=self.device)
        if tokenizer.num_codes != self.layout.codebook_size:
            raise ValueError(f"image tokenizer {os.fspath(path)} has {tokenizer.num_codes} codes, but the network's "
                             f"codebook_size is {self.layout.codebook_size}; use the tokenizer the model was "
                             "trained with")
        side = math.isqrt(self.layout.num_vq_tokens)
        if side * side != self.layout.num_vq_tokens:
            raise ValueError(f"num_vq_tokens={self.layout.num_vq_tokens} is not a square; images need a square grid")
        self.image_tokenizer = tokenizer.requires_grad_(False)
        self.image_resolution = side * tokenizer.downsample

    # -- weights --------------------------------------------------------------------------------
    def version(self) -> int | None:
        """The policy version held, or None when the last apply failed half-way."""
        return self.receiver.version

    def checksum(self) -> str:
        return checksum(named_state(self.network))

    def load_state_dict(self, version: int, state_dict: dict[str, torch.Tensor]) -> int:
        return self.receiver.apply_state_dict(version, state_dict)

    def check_weights(self, manifest: WeightManifest) -> None:
        """Raise if `manifest` would be refused (called before a broadcast starts)."""
        self.receiver.check(manifest)

    def set_weights(self, manifest: WeightManifest, bucket_refs: Sequence[ray.ObjectRef]) -> int:
        """Apply a version published to the object store, fetching one bucket at a time."""

        def fetch(spec):
            return open_payload(manifest, spec, ray.get(bucket_refs[spec.index]))

        return self.receiver.apply(manifest, fetch, bucket_count=len(bucket_refs))

    def join_broadcast(self, backend: str, host: str, port: int, rank: int, world_size: int) -> None:
        pin_interfaces(ray.util.get_node_ip_address())
        self.broadcast = BroadcastGroup(backend, host, port, rank, world_size)

    def receive_weights(self, manifest: WeightManifest) -> int:
        if self.broadcast is None:
            raise WeightSyncError("receive_weights before join_broadcast")
        return self.broadcast.receive(self.receiver, manifest)

    # -- sampling -------------------------------------------------------------------------------
    def valid_version(self) -> int:
        """The version of the weights held, which sampling and decoding tag their output with; a WeightSyncError
        when there is none (a sync failed half-way), so nothing comes from half-written weights."""
        version = self.receiver.version
        if version is None:
            raise WeightSyncError("this worker holds no valid weights (a sync failed half-way); "
                                  "send a complete version before sampling")
        return version

    def _special_ids(self) -> tuple[set[int], set[int]]:
        """(ids that end a response, special ids never masked in a prompt)."""
        config = self.network.config
        if self.tokenizer is None:
            return {config.eos_token_id}, {config.bos_token_id}
        from model.templates import special_ids

        ids = special_ids(self.tokenizer)
        protected = {ids.bos, ids.eos, ids.start_header, ids.end_header, ids.eot}
        protected |= {v for v in (ids.soi, ids.eoi, ids.t2i, ids.mmu, ids.ipad, ids.r2i) if v is not None}
        return {ids.eos, ids.eot}, protected

    def sample(self, requests: Sequence[PromptRequest], *, text: TextSamplerConfig | None = None,
               image: ImageSamplerConfig | None = None, seed: int = 0, gen_length: int | None = None,
               steps: int | None = None, block_length: int | None = None, temperature: float | None = None,
               remasking: str | None = None, cfg_scale: float | None = None) -> Any:
        """Sample one response per request; returns an `rl.batch.RolloutBatch` at this worker's version.

        text: knobs for text and mmu requests (or the older keyword form gen_length=, steps=, ...);
        image: knobs for t2i requests. Rows come back in request order (module docstring).
        """
        from rl.batch import RolloutBatch
        from rl.masking import stable_seed

        version = self.valid_version()
        if not requests:
            raise ValueError("sample: no requests")
        bad = next((i for i, r in enumerate(requests) if not isinstance(r, PromptRequest)), None)
        if bad is not None:
            raise TypeError(f"sample: requests[{bad}] is a {type(requests[bad]).__name__}, not a PromptRequest")
        text = _text_config(text, gen_length=gen_length, steps=steps, block_length=block_length,
                            temperature=temperature, remasking=remasking, cfg_scale=cfg_scale)
        groups: dict[str, list[int]] = {kind: [] for kind in KINDS}
        for index, request in enumerate(requests):
            groups[request.kind].append(index)
        if (groups["text"] or groups["mmu"]) and text is None:
            raise ValueError("sample: text/mmu requests need text=TextSamplerConfig(...) "
                             "(or gen_length=, steps=, block_length=)")
        if groups["t2i"] and not isinstance(image, ImageSamplerConfig):
            raise ValueError(f"sample: t2i requests need image=ImageSamplerConfig(...), got {type(image).__name__}")
        batches, order = [], []
        for kind, indices in groups.items():
            if not indices:
                continue
            chosen = [requests[i] for i in indices]
            kind_seed = seed if kind == "text" else stable_seed(kind, seed)
            if kind == "t2i":
                batches.append(self._sample_images(chosen, image, kind_seed, version))
            else:
                batches.append(self._sample_text(chosen, kind, text, kind_seed, version))
            order += indices
        batch = batches[0] if len(batches) == 1 else RolloutBatch.concat(batches)
        if order != sorted(order):
            batch = batch.select(sorted(range(len(order)), key=order.__getitem__))  # request order (rows validated when built)
        return batch

    def decode(self, prompts: list[list[int]], sampler: dict[str, Any], *, seed: int, mask_id: int,
               pad_id: int | None) -> tuple[int, list[list[int]], int]:
        """One sampler call of held-out evaluation on this worker's weights (jobs/evaluate.py, via
        `RolloutPool.decode`): (this worker's version, response window ids [b][L], forward passes)."""
        from model.sampling import response_ids

        return (self.valid_version(), *response_ids(self.network, prompts, sampler, mask_id=mask_id, pad_id=pad_id, seed=seed))

    def _sample_text(self, requests: list[PromptRequest], kind: str, cfg: TextSamplerConfig, seed: int,
                     version: int) -> Any:
        """text / mmu requests -> RolloutBatch rows (mmu: image codes spliced in front of the chat prompt)."""
        from model.sampling import generate_text_with
        from rl.batch import RolloutBatch

        config = self.network.config
        image_range, images = None, None
        if kind == "mmu":
            prompts, images = self._mmu_prompts(requests)
            image_range = (self.layout.image_lo, self.layout.image_hi)
        else:
            prompts = [list(r.prompt_ids) for r in requests]
        sample = generate_text_with(self.network, prompts, cfg, mask_id=config.mask_token_id,
                                    pad_id=config.pad_token_id, seed=seed)
        sequences, reveal_step = sample.sequences.cpu(), sample.reveal_step.cpu()  # [n, P+L], [n, L]
        end_ids, protected = self._special_ids()
        responses = []
        for row in range(len(requests)):
            response = sequences[row, sequences.shape[1] - cfg.gen_length:].tolist()
            cut = next((i for i, t in enumerate(response) if t in end_ids), len(response))
            responses.append(self.tokenizer.decode(response[:cut]) if self.tokenizer is not None else "")
        return RolloutBatch.from_sampler(
            sequences, reveal_step, [len(p) for p in prompts], eos_ids=end_ids, kind=kind, policy_version=version,
            protected_ids=protected, protected_id_range=image_range, response=responses, image=images,
            forwards=sample.forwards, pad_token_id=config.pad_token_id, **_request_columns(requests))

    def _mmu_prompts(self, requests: list[PromptRequest]) -> tuple[list[list[int]], list[Any]]:
        """`<|mmu|> <|soi|>` codes `<|eoi|>` + chat prompt per request, and the row's image: the request's own
        array when it sent one, else the file or PIL image as an H x W x 3 uint8 array. An image shared by
        requests is read and encoded once, and its rows share one array."""
        import numpy as np

        from model.image_processing import load_rgb, preprocess_image
        from model.mmada import mmu_prompt

        self._need_images("mmu")
        encoded: dict[Any, tuple[list[int], Any]] = {}  # image key -> (codes, the rows' array)
        prompts, images = [], []
        for request in requests:
            key = request.image if isinstance(request.image, (str, os.PathLike)) else id(request.image)
            if key not in encoded:
                try:
                    rgb = load_rgb(request.image)
                    pixels = preprocess_image(rgb, self.image_resolution)  # [3, R, R]
                except (OSError, ValueError, TypeError) as error:
                    raise ValueError(f"mmu request (uid {request.uid!r}, sample {request.sample_index}): cannot use "
                                     f"its image: {error}") from error
                array = request.image if isinstance(request.image, np.ndarray) else np.asarray(rgb, dtype=np.uint8)
                encoded[key] = (self.image_tokenizer.encode(pixels[None])[0].tolist(), array)  # codes [N]
            codes, array = encoded[key]
            prompts.append(mmu_prompt(self.layout, codes, request.prompt_ids))
            images.append(array)
        return prompts, images

    def _sample_images(self, requests: list[PromptRequest], cfg: ImageSamplerConfig, seed: int, version: int) -> Any:
        """t2i requests -> RolloutBatch rows; the decoded image of each row goes to its `image` column."""
        from model.image_processing import to_uint8
        from model.image_sampling import codes_of, generate_images
        from rl.batch import RolloutBatch

        self._need_images("t2i")
        layout = self.layout
        sample = generate_images(self.network, layout, [list(r.prompt_ids) for r in requests], cfg, seed=seed)
        sequences, reveal_step = sample.sequences.cpu(), sample.reveal_step.cpu()  # [n, P+N+1], [n, N]
        codes = codes_of(sequences, layout, sample.prompt_width)  # [n, N]
        images = []
        for row in range(len(requests)):  # one image at a time: a 512 px decode is large
            pixels = self.image_tokenizer.decode(codes[row : row + 1].to(self.device))  # [1, 3, H, W]
            images.append(to_uint8(pixels[0]))  # H x W x 3 uint8
        _, protected = self._special_ids()
        return RolloutBatch.from_sampler(
            sequences, reveal_step, sample.prompt_lengths, eos_ids=(), kind="t2i", policy_version=version,
            prompt_width=sample.prompt_width, score_vocab=(layout.image_lo, layout.image_hi), protected_ids=protected,
            protected_id_range=(layout.image_lo, layout.image_hi), image=images,
            pad_token_id=self.network.config.pad_token_id, **_request_columns(requests))

    def _need_images(self, kind: str) -> None:
        if self.layout is None:
            raise ValueError(f"sample: {kind} requests need an MMaDA network with its tokenizer; this worker holds a "
                             f"{getattr(getattr(self.network, 'config', None), 'model_type', 'non-MMaDA')} network"
                             f"{'' if self.tokenizer is not None else ' without a tokenizer'}")
        if self.image_tokenizer is None:
            raise ValueError(f"sample: {kind} requests need an image tokenizer; start the worker with "
                             "image_tokenizer=<directory> (config: rollout.image_tokenizer)")


def _request_columns(requests: Sequence[PromptRequest]) -> dict[str, list]:
    """The row columns a batch copies from its requests, as `RolloutBatch.from_sampler` keywords."""
    return {"uid": [r.uid for r in requests], "sample_index": [r.sample_index for r in requests],
            "task": [r.task for r in requests], "prompt": [r.prompt for r in requests],
            "answer": [r.answer for r in requests], "meta": [r.meta for r in requests]}


def _text_config(text: TextSamplerConfig | None, **knobs) -> TextSamplerConfig | None:
    """`text`, or a TextSamplerConfig from the older keyword form (gen_length, steps, block_length, ...)."""
    given = {name: value for name, value in knobs.items() if value is not None}
    if text is not None:
        if given:
            raise ValueError(f"sample: pass either text=TextSamplerConfig(...) or the keywords {sorted(given)}, "
                             "not both")
        if not isinstance(text, TextSamplerConfig):
            raise TypeError(f"sample: text must be a TextSamplerConfig, got {type(text).__name__}")
        return text
    if not given:
        return None
    missing = [name for name in ("gen_length", "steps", "block_length") if name not in given]
    if missing:
        raise ValueError(f"sample: the keyword form needs gen_length, steps and block_length; missing {missing}")
    return TextSamplerConfig(**{"temperature": 0.0, **given})


def start_workers(cfg: RolloutConfig, network_source: NetworkSource, *, policy_version: int = 0,
                  dtype: str | None = None, placement_group: Any = None, lora: Any = None) -> list[Any]:
    """`cfg.num_workers` RolloutWorker actors, each on its bundle of `placement_group` when given (lora: the
    learner's adapters, see `RolloutWorker`)."""
    actor = ray.remote(RolloutWorker)
    workers = []
    for index in range(cfg.num_workers):
        options: dict[str, Any] = {"num_cpus": cfg.cpus_per_worker, "num_gpus": cfg.gpus_per_worker}
        if placement_group is not None:
            options["scheduling_strategy"] = bundle_strategy(placement_group, index)
        workers.append(actor.options(**options).remote(network_source, policy_version=policy_version, dtype=dtype,
                                                        image_tokenizer=cfg.image_tokenizer, lora=lora))
    return workers
