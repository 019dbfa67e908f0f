"""`bench/batch_throughput.py --medgemma-shapes`: what an item costs at MedGemma 1.5 4B's real sizes.

A randomly initialised `Gemma3ForConditionalGeneration` with MedGemma 1.5 4B's shapes
(`bench.explain_speed.MEDGEMMA`: 34 language layers, hidden 2,560, 8 query / 4 key-value heads of
dim 256, sliding window 1,024, vocabulary 262,208; SigLIP 27 layers, hidden 1,152, 896-pixel images,
256 soft tokens each; its 131,072-token context), nothing downloaded. Prompts are built as
`bench/long_prompt_memory.py` builds them: N random images and its question, through the chat
template (1 image ≈ 300 tokens, 8 ≈ 2,100, 85 ≈ 22,100: a CT volume). For each image count, in
this one process (the model is built once):

- **generation**: one greedy `generate` call on the attention path the explainer picks for
  prompt + answer (`attention`, default the engine's `auto`), forced to exactly `--new-tokens`
  tokens inside the tokenizer's vocabulary (a random model would stop or leave it at random). A
  logits processor timestamps every step: the first step is the prefill (the vision tower on every
  image and the language model on the prompt: one forward), the others one answer token each;
  seconds per answer token is their mean.
- **relevance**: `Explainer.relevance(..., "chefer")` on the prompt + answer for the whole answer
  and the first `--targets - 1` answer tokens (distinct targets, their gradients batched as the
  engine batches them); seconds per explained target is the call's time over the targets, and
  forward-equivalents per target that over the prefill's time.
- peak memory of each phase above the built model (CPU: the resident set's high-water mark, reset
  before each phase; CUDA: the allocator's peak), beside the estimate the explainer plans with.

An image count whose relevance cannot fit in the device's memory by the explainer's own estimate
(`Explainer.attention_path` raises `RelevanceMemoryError`) is reported as not run, with the
estimate. On CPU the process's address space is capped at what the machine has free, so a phase
that needs more fails with an allocation error (reported) instead of waking the OOM killer.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import sys
import time

import numpy as np
import torch
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList

from bench._memory import _rss_bytes
from bench.explain_speed import MEDGEMMA  # google/medgemma-1.5-4b-it's sizes
from bench.long_prompt_memory import (
    CORPUS,
    QUESTION,
    REDUCED,
    VOCABULARY,
    limit_to_available_memory,
    out_of_memory,
    release_freed_memory,
    reset_peak_rss,
    synchronize,
)
from explainer import Explainer
from explainer.engine import ExplainRequest
from explainer.generation import build_prompt, full_sequence, generate_answers
from explainer.memory import RelevanceMemoryError, blockwise_bytes, device_memory_bytes, eager_attention_bytes
from explainer.targets import Target
from phantom.build import random_gemma3

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CONTEXT = 131_072  # MedGemma 1.5 4B's max_position_embeddings (the builder's default is 2,048)


class StepClock(LogitsProcessor):
    """Timestamps every generation step (called once its logits exist) and keeps the answer inside
    the tokenizer's vocabulary and off its special tokens (stop tokens included), so that a random
    model writes exactly `max_new_tokens` decodable tokens. Also reads the memory peak so far."""

    def __init__(self, vocabulary: int, specials: list[int], device: torch.device) -> None:
        self.vocabulary, self.specials, self.device = vocabulary, specials, device
        self.times: list[float] = []
        self.peak_bytes = 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        synchronize(self.device)
        self.times.append(time.perf_counter())
        self.peak_bytes = max(self.peak_bytes, peak_now(self.device))
        scores = scores.clone()
        scores[:, self.vocabulary :] = -float("inf")
        scores[:, self.specials] = -float("inf")
        return scores


def drop_pooling_head(model) -> bool:
    """Remove SigLIP's attention-pooling head, which `SiglipVisionConfig` builds by default and
    MedGemma's checkpoint does not have (its config: `vision_use_head: false`): Gemma3 never reads
    its output, but SiglipVisionTransformer still computes it on every image (on this CPU its
    key-value projection asked for 2.7 GB per 896-pixel image)."""
    vision = model.model.vision_tower
    vision = getattr(vision, "vision_model", vision)  # transformers 4.x nests it
    if not getattr(vision, "use_head", False):
        return False
    vision.use_head = False
    del vision.head
    model.config.vision_config.vision_use_head = False
    return True


def peak_now(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def start_phase(device: torch.device) -> int:
    """Reset the memory high-water mark; the level it starts from."""
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    release_freed_memory()
    reset_peak_rss()
    return _rss_bytes()


def random_images(n: int, side: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((side, side, 3)) * 255).astype("uint8")) for _ in range(n)]


def measure(explainer: Explainer, n_images: int, args: argparse.Namespace, baseline: int) -> dict:
    """Generation and relevance of one prompt of `n_images` images (see the module docstring)."""
    model, processor, device = explainer.model, explainer.processor, explainer.device
    tokenizer = processor.tokenizer
    spec_side = model.config.vision_config.image_size
    prompt = build_prompt(processor, random_images(n_images, spec_side, args.seed + n_images), QUESTION)
    row: dict = {"images": n_images, "prompt_tokens": prompt.length, "new_tokens": args.new_tokens}
    length = prompt.length + args.new_tokens
    row["eager_estimate_mib"] = eager_attention_bytes(model, length) / 2**20
    row["blockwise_estimate_mib"] = blockwise_bytes(model, length, explainer.max_chunk_bytes) / 2**20
    try:
        path = explainer.attention_path(length, args.attention)
    except RelevanceMemoryError as error:
        row["not_run"] = str(error)
        return row
    row["path"] = path

    clock = StepClock(len(tokenizer), sorted(set(tokenizer.all_special_ids)), device)
    start = start_phase(device)
    started = time.perf_counter()
    try:
        from explainer._capture import relevance_mode

        with relevance_mode(model, path):
            [answer_ids] = generate_answers(
                model,
                [prompt],
                max_new_tokens=args.new_tokens,
                generation_kwargs={"logits_processor": LogitsProcessorList([clock])},
            )
    except (MemoryError, RuntimeError) as error:
        if not out_of_memory(error):
            raise
        row["failed"] = f"generation ran out of memory at {(peak_now(device) - baseline) / 2**30:,.1f} GiB"
        return row
    synchronize(device)
    generate_seconds = time.perf_counter() - started
    steps = np.diff(clock.times)
    row.update(
        generate_seconds=generate_seconds,
        prefill_seconds=clock.times[0] - started,
        decode_steps=steps.tolist(),
        seconds_per_answer_token=float(steps.mean()) if len(steps) else None,
        generate_peak_mib=(max(clock.peak_bytes, peak_now(device)) - start) / 2**20,
        answer_tokens=len(answer_ids),
    )
    inputs = full_sequence(prompt, answer_ids)
    seq_len = inputs["input_ids"].shape[1]
    positions = tuple(range(prompt.length, seq_len))
    targets = [Target(positions, "answer", "answer")]
    targets += [Target((position,)) for position in positions[: args.targets - 1]]
    row.update(tokens=seq_len, targets=len(targets))
    start = start_phase(device)
    started = time.perf_counter()
    try:
        explainer.relevance(inputs, targets, "chefer", attention=path)
    except (MemoryError, RuntimeError) as error:
        if not out_of_memory(error):
            raise
        row["failed"] = f"relevance ran out of memory at {(peak_now(device) - start) / 2**30:,.1f} GiB"
        return row
    synchronize(device)
    seconds = time.perf_counter() - started
    peak = peak_now(device) - start
    row.update(
        relevance_seconds=seconds,
        seconds_per_target=seconds / len(targets),
        forward_equivalents_per_target=seconds / len(targets) / row["prefill_seconds"],
        relevance_peak_mib=peak / 2**20,
        relevance_kib_per_token=peak / 1024 / seq_len,
        peak_reset=device.type == "cuda" or reset_peak_rss(),
    )
    return row


def measure_batch(explainer: Explainer, batch_size: int, args: argparse.Namespace) -> dict:
    """`batch_size` one-image items through `Explainer.explain_batch` (what a shard runs at
    `--batch-size`): one left-padded `generate`, then one batched Chefer pass for the whole answer
    of every item; items per second and the peak memory above the model."""
    model, processor, device = explainer.model, explainer.processor, explainer.device
    tokenizer = processor.tokenizer
    side = model.config.vision_config.image_size
    images = random_images(batch_size, side, args.seed + 1000 + batch_size)
    requests = [ExplainRequest([image], QUESTION) for image in images]
    clock = StepClock(len(tokenizer), sorted(set(tokenizer.all_special_ids)), device)
    start = start_phase(device)
    started = time.perf_counter()
    outcomes = explainer.explain_batch(
        requests,
        batch_size=batch_size,
        max_new_tokens=args.new_tokens,
        targets="answer",
        generation_kwargs={"logits_processor": LogitsProcessorList([clock])},
        attention=args.attention,
    )
    synchronize(device)
    seconds = time.perf_counter() - started
    failed = [repr(outcome) for outcome in outcomes if isinstance(outcome, Exception)]
    timings = [outcome.timings for outcome in outcomes if not isinstance(outcome, Exception)]
    return {
        "batch_size": batch_size,
        "seconds": seconds,
        "items_per_second": batch_size / seconds,
        "generate_seconds": sum(timing["generate_seconds"] for timing in timings),
        "explain_seconds": sum(timing["explain_seconds"] for timing in timings),
        "peak_mib": (peak_now(device) - start) / 2**20,
        "failed": failed,
    }


def print_row(row: dict) -> None:
    head = f"{row['images']} image(s), {row['prompt_tokens']:,} prompt tokens"
    if "not_run" in row:
        print(f"{head}: not run: {row['not_run']}", flush=True)
        return
    if "prefill_seconds" in row:
        per_token = row["seconds_per_answer_token"]
        print(
            f"{head}, {row['path']}: generation: prefill {row['prefill_seconds']:.1f} s, "
            f"{per_token:.2f} s per answer token ({row['answer_tokens']} tokens), peak "
            f"{row['generate_peak_mib']:,.0f} MiB above the model",
            flush=True,
        )
    if "relevance_seconds" in row:
        print(
            f"{head}, {row['path']}: relevance: {row['relevance_seconds']:.1f} s for {row['targets']} "
            f"targets = {row['seconds_per_target']:.1f} s per target "
            f"({row['forward_equivalents_per_target']:.2f} forward-equivalents), peak "
            f"{row['relevance_peak_mib']:,.0f} MiB above the model "
            f"({row['relevance_kib_per_token']:,.0f} KiB per token; estimate "
            f"{row[row['path'] + '_estimate_mib']:,.0f} MiB)",
            flush=True,
        )
    if "failed" in row:
        print(f"{head}: FAILED: {row['failed']}", flush=True)


def run(args: argparse.Namespace) -> None:
    """The --medgemma-shapes bench (the module docstring)."""
    dtype_name = args.dtype or "bfloat16"
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    spec = REDUCED if args.shapes_check else MEDGEMMA
    counts = [int(count) for count in args.images.split(",")]
    started = time.perf_counter()
    model, processor = random_gemma3(
        spec, CORPUS, vocab_size=VOCABULARY, seed=args.seed, device=device, dtype=DTYPES[dtype_name]
    )
    model.config.text_config.max_position_embeddings = CONTEXT
    dropped_head = drop_pooling_head(model)
    explainer = Explainer(model, processor)
    build_seconds = time.perf_counter() - started
    params = sum(parameter.numel() for parameter in model.parameters())
    available = device_memory_bytes(device)
    machine = (
        f"{torch.cuda.get_device_name(device)}, {available / 2**30:.0f} GiB"
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{available / 2**30:.1f} GiB, {torch.get_num_threads()} torch threads"
    )
    print(
        f"model: {'reduced MedGemma layout (--shapes-check)' if args.shapes_check else 'MedGemma 1.5 4B shapes'}, "
        f"random weights, {params / 1e9:.2f}B parameters, {dtype_name}, built in {build_seconds:.0f} s; "
        f"machine: {machine}; {args.new_tokens} new tokens, {args.targets} targets, attention {args.attention}",
        flush=True,
    )
    synchronize(device)
    if device.type == "cuda":
        baseline = torch.cuda.memory_allocated(device)
    else:
        release_freed_memory()
        baseline = _rss_bytes()
        limit_to_available_memory()
    rows = []
    for count in counts:
        row = measure(explainer, count, args, baseline)
        print_row(row)
        rows.append(row)
    batches = []
    for size in args.medgemma_batch_sizes:
        result = measure_batch(explainer, size, args)
        print(
            f"batch {size} (one image each, {args.new_tokens} tokens, the whole answer explained): "
            f"{result['seconds']:.1f} s, {result['items_per_second']:.2f} items/s (generate "
            f"{result['generate_seconds']:.1f} s, explain {result['explain_seconds']:.1f} s), peak "
            f"{result['peak_mib']:,.0f} MiB above the model"
            + (f"; FAILED {result['failed']}" if result["failed"] else ""),
            flush=True,
        )
        batches.append(result)
    total = time.perf_counter() - started
    print(f"whole run: {total / 60:.1f} min", flush=True)
    if args.json:
        document = {
            "date": datetime.date.today().isoformat(),
            "command": "python bench/batch_throughput.py " + " ".join(sys.argv[1:]),
            "machine": machine,
            "device": str(device),
            "dtype": dtype_name,
            "model": "reduced (--shapes-check)" if args.shapes_check else "MedGemma 1.5 4B shapes, random",
            "parameters": params,
            "siglip_pooling_head_removed": dropped_head,
            "baseline_mib": baseline / 2**20,
            "build_seconds": build_seconds,
            "new_tokens": args.new_tokens,
            "targets": args.targets,
            "attention": args.attention,
            "threads": torch.get_num_threads(),
            "rows": rows,
            "batches": batches,
            "seconds": total,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=1) + "\n")
        print(f"wrote {args.json}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("--medgemma-shapes")
    group.add_argument(
        "--medgemma-shapes",
        action="store_true",
        help="seconds per answer token and per explained target, and peak memory, on a random model of "
        "MedGemma 1.5 4B's shapes (default dtype bfloat16); batch 1",
    )
    group.add_argument(
        "--images",
        default="1,8,85",
        help="image counts (256 tokens each), comma-separated: ≈ 300, 2,100, 22,100",
    )
    group.add_argument("--new-tokens", type=int, default=4, help="answer tokens generated (exactly)")
    group.add_argument("--targets", type=int, default=3, help="the whole answer and the first N-1 tokens")
    group.add_argument("--attention", default="auto", choices=["auto", "eager", "blockwise"])
    group.add_argument(
        "--medgemma-batch-sizes",
        type=int,
        nargs="*",
        default=[],
        help="also one-image items through Explainer.explain_batch at these batch sizes (a GPU)",
    )
    group.add_argument("--shapes-check", action="store_true", help=argparse.SUPPRESS)  # tiny: a smoke test
